"""Corpora: a folder of images, a folder of WebDataset shards, or a CSV/Parquet listing.

:func:`scan` lists a corpus (cheap: names, sizes and times) and gives its digest;
:func:`check_images` decodes each image once to mark the unreadable ones;
:func:`image_source` gives the ``key -> bytes`` access the later stages use. Keys are
POSIX paths relative to the corpus root (for shards, member names); an absolute path, a
``..`` component or a repeated key is refused here, naming the entry, so that no later stage
has to check again.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .. import dataset
from .._dataset_records import open_parquet
from .config import ConfigError, CorpusConfig
from .layout import digest

__all__ = ["Corpus", "Entry", "MANIFEST_SCHEMA", "check_images", "image_source", "manifest_table", "scan"]

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),  # "ok" | "error"
    ("error", pa.string()),
    ("size", pa.int64()),
])
IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
LISTING_SUFFIXES = (".csv", ".parquet")


@dataclass
class Entry:
    key: str
    caption: str | None = None
    size: int = 0
    error: str | None = None


@dataclass
class Corpus:
    """A listed corpus: where it is, what kind, its entries in key order, and a digest of
    everything that identifies its content (names, sizes, modification times, captions)."""

    kind: str
    root: Path
    entries: list[Entry]
    digest: str
    shards: list[Path] = field(default_factory=list)


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _kind(cfg: CorpusConfig, path: Path) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if path.is_file() and path.suffix.lower() in LISTING_SUFFIXES:
        return "listing"
    if path.is_dir() and any(p.suffix == ".tar" for p in path.iterdir()):
        return "shards"
    return "folder"


def _sidecar_caption(path: Path) -> str | None:
    """The first non-empty line of ``<stem>.txt`` beside the image (img2dataset's layout;
    later lines, such as translations, are ignored)."""
    txt = path.with_suffix(".txt")
    try:
        text = txt.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def _walk(root: Path, captions: bool) -> tuple[list[Entry], list]:
    extensions = _image_extensions()
    entries, stats = [], []
    for folder, dirs, files in os.walk(root, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            st = path.stat()
            caption = _sidecar_caption(path) if captions else None
            entries.append(Entry(key, caption, st.st_size))
            stats.append((key, st.st_size, st.st_mtime_ns, caption))
    entries.sort(key=lambda e: e.key)
    return entries, sorted(stats, key=lambda s: s[0])


def _raise(error: OSError):
    raise error


def _read_listing(path: Path, cfg: CorpusConfig) -> pa.Table:
    try:
        if path.suffix.lower() == ".parquet":
            return open_parquet(path).read()
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={cfg.path_column: pa.string(), cfg.caption_column: pa.string()}))
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"listing {path}: cannot be read: {e}") from None


def _listing(path: Path, cfg: CorpusConfig) -> tuple[Path, list[Entry], list]:
    table = _read_listing(path, cfg)
    if cfg.path_column not in table.column_names:
        raise ValueError(f"listing {path}: no column {cfg.path_column!r} (columns: {', '.join(table.column_names)}); "
                         "set corpus.path_column")
    use_captions = cfg.captions == "column"
    if use_captions and cfg.caption_column not in table.column_names:
        raise ValueError(f"listing {path}: no caption column {cfg.caption_column!r} "
                         f"(columns: {', '.join(table.column_names)}); set corpus.caption_column")
    root = Path(cfg.root) if cfg.root else path.parent
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: '{root}' (corpus.root)")
    paths = table[cfg.path_column].to_pylist()
    captions = table[cfg.caption_column].to_pylist() if use_captions else [None] * len(paths)
    entries, stats, seen = [], [], {}
    for row, (p, caption) in enumerate(zip(paths, captions)):
        where = f"listing {path} row {row + 1}"
        if not isinstance(p, str) or not p:
            raise ValueError(f"{where}: empty path")
        if os.path.isabs(p) or p.startswith("/"):
            raise ValueError(f"{where}: absolute path {p!r}; paths must be relative to the corpus root "
                             f"({root}, set with corpus.root)")
        key = dataset.check_member_name(p.replace(os.sep, "/"), where)
        if key in seen:
            raise ValueError(f"{where}: {key!r} is listed again (first at row {seen[key] + 1})")
        seen[key] = row
        full = root / key
        try:
            st = full.stat()
            entry = Entry(key, caption if caption else None, st.st_size)
            stats.append((key, st.st_size, st.st_mtime_ns, caption))
        except FileNotFoundError:
            entry = Entry(key, caption if caption else None, 0, f"no such file: {full}")
            stats.append((key, None, None, caption))
        entries.append(entry)
    return root, entries, stats


def _shard_samples(shards: list[Path], captions: bool) -> Iterator[Entry]:
    seen: dict[str, Path] = {}
    for shard in shards:
        for key, members in dataset.iter_shard(shard):
            ext = next((e for e in members if e.lower() in IMAGE_MEMBER_EXTENSIONS), None)
            if ext is None:
                continue
            name = f"{key}.{ext}"
            if name in seen:
                raise ValueError(f"shard {shard}: image {name!r} is also in {seen[name]}")
            seen[name] = shard
            caption = None
            if captions and "txt" in members:
                caption = members["txt"].decode("utf-8", errors="replace").strip() or None
            yield Entry(name, caption, len(members[ext]))


def scan(cfg: CorpusConfig) -> Corpus:
    """List the corpus ``cfg`` names. Raises FileNotFoundError for a missing path and
    ValueError for an unsafe or repeated key, naming it."""
    if not cfg.path:
        raise ConfigError("no corpus: give the images folder (megapairs build IMAGES OUT) or set corpus.path")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: '{path}' (the corpus)")
    kind = _kind(cfg, path)
    if cfg.captions == "column" and kind != "listing":
        raise ConfigError(f"corpus.captions = 'column' needs a .csv/.parquet listing, but {path} is a {kind}")
    sidecar = cfg.captions == "sidecar"
    if kind == "listing":
        if not path.is_file():
            raise ValueError(f"corpus {path}: a listing must be a .csv or .parquet file")
        root, entries, stats = _listing(path, cfg)
        st = path.stat()
        fingerprint = digest(kind, str(path.resolve()), str(root.resolve()), st.st_size, st.st_mtime_ns, stats)
        return Corpus(kind, root, entries, fingerprint)
    if not path.is_dir():
        raise ValueError(f"corpus {path}: expected a folder (images or .tar shards) or a .csv/.parquet listing")
    if kind == "shards":
        shards = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
        if not shards:
            raise ValueError(f"corpus {path}: no .tar shards in it")
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
        entries = sorted(_shard_samples(shards, sidecar), key=lambda e: e.key)
        return Corpus(kind, path, entries, digest(kind, str(path.resolve()), stats, cfg.captions), shards)
    entries, stats = _walk(path, sidecar)
    return Corpus(kind, path, entries, digest(kind, str(path.resolve()), stats, cfg.captions))


class _ShardImages(Mapping):
    """Image bytes by key from shards holding several image extensions."""

    def __init__(self, shards: list[Path], keys: list[str]):
        exts = sorted({posixpath.splitext(k)[1].lstrip(".") for k in keys})
        self._readers = {ext: dataset.ShardReader(shards, extension=ext) for ext in exts}

    def __getitem__(self, key: str) -> bytes:
        return self._readers[posixpath.splitext(key)[1].lstrip(".")][key]

    def __iter__(self):
        for r in self._readers.values():
            yield from r

    def __len__(self) -> int:
        return sum(len(r) for r in self._readers.values())


def image_source(kind: str, root: Path, keys: list[str]) -> Callable[[str], bytes]:
    """``key -> bytes`` for a corpus of this kind."""
    if kind == "shards":
        shards = sorted(p for p in root.iterdir() if p.suffix == ".tar" and p.is_file())
        return dataset.image_loader(_ShardImages(shards, keys))
    return dataset.image_loader(root)


def _check_one(load: Callable[[str], bytes], key: str) -> str | None:
    """None if the image decodes, else why not. JPEGs decode at 1/8 scale (the DCT draft
    mode reads every byte, so a truncated file still fails, at a fraction of the cost)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = load(key)
        if not data:
            return "empty file (0 bytes)"
        with Image.open(io.BytesIO(data)) as im:
            if im.width < 1 or im.height < 1:
                return f"image of size {im.width} x {im.height}"
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnidentifiedImageError:
        return "not an image in a format megapairs or Pillow can read"
    except (OSError, ValueError, SyntaxError, KeyError, EOFError, Image.DecompressionBombError) as exc:
        return f"cannot decode image: {exc}"
    return None


def check_images(corpus: Corpus, progress: bool | None = None, num_threads: int | None = None) -> None:
    """Decode each image once (Pillow, threads in parallel) and mark those that fail, so that
    no later stage meets an unreadable image."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [e for e in corpus.entries if e.error is None]
    load = image_source(corpus.kind, corpus.root, [e.key for e in todo])
    show = len(todo) > 2048 if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="ingest", unit="img")
    try:
        with ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
            for e, error in zip(todo, pool.map(lambda e: _check_one(load, e.key), todo, chunksize=16)):
                e.error = error
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def manifest_table(entries: list[Entry], metadata: dict | None = None) -> pa.Table:
    import json

    table = pa.table({
        "key": [e.key for e in entries],
        "caption": [e.caption for e in entries],
        "status": ["error" if e.error else "ok" for e in entries],
        "error": [e.error for e in entries],
        "size": [e.size for e in entries],
    }, schema=MANIFEST_SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({"megapairs.manifest": json.dumps(metadata)})
    return table
