"""MegaPairs records: JSONL / Parquet files, WebDataset image shards, a training sampler.

A record is one (query image, target image) pair with its instructions and hard negatives,
as in the released MegaPairs data::

    {"q_img": "train-00100-to-00199/02280/022803773.jpg",
     "q_text": ["Find a similar vehicle indoors ...", ...],      # >= 3 instructions
     "t_img": "train-00100-to-00199/01574/015747381.jpg",
     "hns": ["train-00100-to-00199/02280/022803773.jpg", ...]}  # hns[0] is the query image

Image fields are keys, usually paths relative to an image root or keys inside tar shards.
Readers also accept the ``q_texts`` spelling of ``q_text`` (seen in copies of the data).

>>> import megapairs as mp
>>> records = mp.dataset.read_records("megapairs.jsonl")                       # doctest: +SKIP
>>> mp.dataset.write_parquet(records, "megapairs.parquet")                     # doctest: +SKIP
>>> shards = mp.dataset.write_shards(mp.dataset.image_keys(records), "images/",
...                                  "shards/", resize=512)                    # doctest: +SKIP
>>> store = mp.dataset.ShardReader(shards.paths)                              # doctest: +SKIP
>>> sampler = mp.dataset.InstructionSampler(records, num_negatives=4, seed=0)  # doctest: +SKIP
>>> example = sampler[0]   # {"q_img", "q_text": str, "t_img", "hns": 4 keys, hns[0] = q_img}
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import numbers
import os
import posixpath
import random
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

__all__ = [
    "FIELDS",
    "MAX_MEMBER_BYTES",
    "InstructionSampler",
    "ShardReader",
    "ShardWriteResult",
    "check_member_name",
    "image_keys",
    "image_loader",
    "iter_jsonl",
    "iter_parquet",
    "iter_shard",
    "normalize_record",
    "read_jsonl",
    "read_parquet",
    "read_parquet_metadata",
    "read_records",
    "records_from_table",
    "records_to_table",
    "write_jsonl",
    "write_parquet",
    "write_records",
    "write_shards",
]

logger = logging.getLogger("megapairs")

FIELDS = ("q_img", "q_text", "t_img", "hns")
SCHEMA = pa.schema([
    ("q_img", pa.string()),
    ("q_text", pa.list_(pa.string())),
    ("t_img", pa.string()),
    ("hns", pa.list_(pa.string())),
])
METADATA_KEY = b"megapairs.dataset"
#: Largest tar member :func:`iter_shard` and :class:`ShardReader` accept (an image, not a bomb).
MAX_MEMBER_BYTES = 256 << 20

PathLike = str | os.PathLike
ImageSource = PathLike | Callable[[str], bytes] | Mapping


# --------------------------------------------------------------------------- records


def normalize_record(record: Mapping, where: str = "record") -> dict:
    """A record as ``{"q_img": str, "q_text": list[str], "t_img": str, "hns": list[str]}``.

    ``q_texts`` is accepted for ``q_text``; a missing ``q_text`` becomes ``[]`` (records
    straight from :func:`megapairs.mining.to_records` have none yet). Other keys are dropped.

    Raises
    ------
    ValueError
        Naming ``where`` (e.g. ``"data.jsonl:17"``) and the field, for a missing or
        mistyped field, or both ``q_text`` and ``q_texts``.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: a record must be a mapping, got {type(record).__name__}")  # noqa: TRY004 (data)
    if "q_text" in record and "q_texts" in record:
        raise ValueError(f"{where}: has both 'q_text' and 'q_texts'")
    out = {}
    for name in ("q_img", "t_img"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: {name!r} must be a non-empty string, got {value!r}")
        out[name] = value
    texts = record.get("q_text", record.get("q_texts", []))
    if texts is None:
        texts = []
    if isinstance(texts, str) or not isinstance(texts, Sequence) and not _is_array(texts):
        raise ValueError(f"{where}: 'q_text' must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: 'q_text' must hold only strings")
    hns = record.get("hns", [])
    if hns is None:
        hns = []
    if isinstance(hns, str) or not isinstance(hns, Sequence) and not _is_array(hns):
        raise ValueError(f"{where}: 'hns' must be a list of strings, got {type(hns).__name__}")
    hns = list(hns)
    if not all(isinstance(h, str) and h for h in hns):
        raise ValueError(f"{where}: 'hns' must hold only non-empty strings")
    return {"q_img": out["q_img"], "q_text": texts, "t_img": out["t_img"], "hns": hns}


def _is_array(value) -> bool:
    return hasattr(value, "__array__") and hasattr(value, "tolist")


def _open_text(path: Path, mode: str, compressed: bool | None = None):
    if path.name.endswith(".gz") if compressed is None else compressed:
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_jsonl(records: Iterable[Mapping], path: PathLike) -> int:
    """Write records, one JSON object a line (``.gz`` suffix: gzip).

    The file is written beside ``path`` and renamed into place, so an interrupted write
    never leaves a partial file under the final name. Returns the number of records.
    """
    path = Path(path)
    tmp = _atomic_target(path)
    n = 0
    try:
        with _open_text(tmp, "w", compressed=path.name.endswith(".gz")) as f:
            for n, record in enumerate(records, start=1):
                f.write(json.dumps(normalize_record(record, f"records[{n - 1}]"), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def iter_jsonl(path: PathLike) -> Iterator[dict]:
    """Records of a JSONL file (``.gz`` allowed), normalised; blank lines are skipped.

    Raises
    ------
    ValueError
        Naming ``file:line`` for a line that is not JSON or not a valid record.
    """
    path = Path(path)
    with _open_text(path, "r") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            yield normalize_record(obj, f"{path}:{lineno}")


def read_jsonl(path: PathLike) -> list[dict]:
    """All records of a JSONL file, see :func:`iter_jsonl`."""
    return list(iter_jsonl(path))


def records_to_table(records: Iterable[Mapping], metadata: Mapping | None = None) -> pa.Table:
    """A pyarrow table with columns ``q_img`` string, ``q_text`` list<string>, ``t_img``
    string, ``hns`` list<string>. ``metadata`` (JSON-serialisable) goes to the schema
    metadata under ``b"megapairs.dataset"``."""
    columns: dict[str, list] = {name: [] for name in FIELDS}
    for i, record in enumerate(records):
        r = normalize_record(record, f"records[{i}]")
        for name in FIELDS:
            columns[name].append(r[name])
    schema = SCHEMA
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(dict(metadata), ensure_ascii=False)})
    return pa.Table.from_pydict(columns, schema=schema)


def records_from_table(table: pa.Table, where: str = "table") -> list[dict]:
    """Records from a table with columns ``q_img``, ``q_text`` (or ``q_texts``), ``t_img``
    and ``hns``; other columns are ignored."""
    names = table.column_names
    text_col = "q_text" if "q_text" in names else "q_texts" if "q_texts" in names else None
    missing = [c for c in ("q_img", "t_img", "hns") if c not in names]
    if missing:
        raise ValueError(f"{where}: no column {missing[0]!r}; columns are {names}")
    cols = {"q_img": table["q_img"].to_pylist(), "t_img": table["t_img"].to_pylist(),
            "hns": table["hns"].to_pylist(),
            "q_text": table[text_col].to_pylist() if text_col else [[]] * table.num_rows}
    return [normalize_record({name: cols[name][i] for name in FIELDS}, f"{where} row {i}")
            for i in range(table.num_rows)]


def write_parquet(records: Iterable[Mapping], path: PathLike, metadata: Mapping | None = None,
                  row_group_size: int = 100_000) -> int:
    """Write records to Parquet (schema of :func:`records_to_table`), atomically.
    Returns the number of records."""
    import pyarrow.parquet as pq

    table = records_to_table(records, metadata)
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return table.num_rows


def iter_parquet(path: PathLike, batch_size: int = 65_536) -> Iterator[dict]:
    """Records of a Parquet file, read ``batch_size`` rows at a time (the released
    26M-record file need not fit in memory as Python objects)."""
    import pyarrow.parquet as pq

    path = Path(path)
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    wanted = [c for c in ("q_img", "q_text", "q_texts", "t_img", "hns") if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
        yield from records_from_table(pa.Table.from_batches([batch]), str(path))


def read_parquet(path: PathLike) -> list[dict]:
    """All records of a Parquet file (``q_texts`` accepted)."""
    import pyarrow.parquet as pq

    return records_from_table(pq.read_table(path), str(path))


def read_parquet_metadata(path: PathLike) -> dict | None:
    """The ``megapairs.dataset`` schema metadata of a Parquet file written here, or None."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: cannot tell the format from the name; use .jsonl, .jsonl.gz or .parquet")


def read_records(path: PathLike) -> list[dict]:
    """Records from ``.jsonl`` / ``.jsonl.gz`` / ``.parquet``, chosen by the file name."""
    path = Path(path)
    return read_jsonl(path) if _format(path) == "jsonl" else read_parquet(path)


def write_records(records: Iterable[Mapping], path: PathLike, metadata: Mapping | None = None) -> int:
    """Write records as ``.jsonl`` / ``.jsonl.gz`` / ``.parquet``, chosen by the file name.
    ``metadata`` is kept in Parquet schema metadata; JSONL holds records only."""
    path = Path(path)
    return write_jsonl(records, path) if _format(path) == "jsonl" else write_parquet(records, path, metadata)


def image_keys(records: Iterable[Mapping]) -> list[str]:
    """Every image a set of records refers to (``q_img``, ``t_img``, ``hns``), once each,
    in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r["q_img"])
        seen.setdefault(r["t_img"])
        for h in r.get("hns") or ():
            seen.setdefault(h)
    return list(seen)


# --------------------------------------------------------------------------- image sources


def check_member_name(name: str, where: str = "archive") -> str:
    """``name`` if it is a safe relative path, else ValueError naming ``where``.

    Unsafe: empty, absolute (``/x``, ``C:\\x``), containing a ``..`` component, a
    backslash or a NUL byte. A leading ``./`` is removed.
    """
    if not isinstance(name, str):
        raise TypeError(f"{where}: member name must be a string, got {type(name).__name__}")
    clean = name
    while clean.startswith("./"):
        clean = clean[2:]
    parts = clean.split("/")
    if (not clean or clean.startswith("/") or "\\" in clean or "\x00" in clean
            or (len(clean) > 1 and clean[1] == ":") or ".." in parts):
        raise ValueError(f"{where}: unsafe member path {name!r} (absolute, '..', backslash or empty)")
    return clean


def image_loader(images: ImageSource) -> Callable[[str], bytes]:
    """A function key -> image bytes.

    Parameters
    ----------
    images : path, mapping or callable
        A folder: keys are relative paths inside it (absolute keys and ``..`` are refused);
        a mapping such as :class:`ShardReader` or a dict: ``images[key]``; a callable:
        ``images(key)``, returning bytes.
    """
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            raise ValueError(f"image root {str(root)!r} is not a folder")

        def load(key: str) -> bytes:
            return (root / check_member_name(key, f"image key {key!r}")).read_bytes()

        return load
    if isinstance(images, Mapping):
        return lambda key: bytes(images[key])
    if callable(images):
        return lambda key: bytes(images(key))
    raise TypeError(f"images must be a folder, a mapping or a callable, got {type(images).__name__}")


# --------------------------------------------------------------------------- WebDataset shards


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: key = up to the first dot of the last path
    component, extension = the rest."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext


def _sample_key(image: str) -> str:
    key = check_member_name(image, f"image {image!r}")
    stem = posixpath.splitext(key)[0]
    if not posixpath.basename(stem) or "." in posixpath.basename(stem):
        raise ValueError(f"image {image!r}: a WebDataset key may not contain a dot in its file name "
                         "(readers split the key from the extension at the first dot)")
    return stem


@dataclass
class ShardWriteResult:
    """What :func:`write_shards` returns: the shard paths, the number of images written,
    and ``(key, reason)`` for each image skipped (``errors="skip"``)."""

    paths: list[Path]
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _encode_image(data: bytes, resize, quality: int) -> tuple[bytes, list[int], list[int]]:
    from PIL import Image

    from .images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        original = list(im.size)
        if resize is None and im.format == "JPEG":
            return data, original, original
        im = to_rgb(im)  # transparent images on white, as the processors see them
        if resize is not None:
            im = im.resize(resize, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return buf.getvalue(), original, list(im.size)


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(payload))


def write_shards(keys: Iterable[str], images: ImageSource, out_dir: PathLike, *, prefix: str = "images",
                 max_count: int = 10_000, max_bytes: int | None = None, resize: int | tuple[int, int] | None = None,
                 quality: int = 90, metadata: bool = True, errors: str = "raise",
                 progress: bool | None = None) -> ShardWriteResult:
    """Pack images into WebDataset tar shards ``<out_dir>/<prefix>-000000.tar``, ...

    Each image becomes the member ``<key>.jpg``, where the key is its path without the
    extension (``a/0001.png`` -> ``a/0001.jpg``), plus ``<key>.json`` with
    ``{"image": original key, "size": [w, h], "original_size": [w, h]}`` when ``metadata``.
    JPEG inputs are copied byte for byte unless resized; other formats are re-encoded as
    JPEG, transparent images composited over white (as the image processors see them). Members carry mtime 0, so the same input gives the same bytes. Each shard is
    written under a temporary name and renamed when complete.

    Parameters
    ----------
    keys : iterable of str
        Image keys, e.g. :func:`image_keys` of the records.
    images : folder, mapping or callable
        Where the bytes come from, see :func:`image_loader`.
    out_dir : path
        Created if missing.
    max_count, max_bytes : int
        A new shard starts after ``max_count`` images, or once a shard holds ``max_bytes``.
    resize : int or (width, height), optional
        Resize every image to exactly this size (bicubic, aspect not kept), as the released
        MegaPairs images are at 512 x 512.
    quality : int
        JPEG quality of re-encoded images.
    errors : {"raise", "skip"}
        What to do with an image that cannot be read or decoded.

    Raises
    ------
    ValueError
        For an unsafe key (absolute, ``..``), a key with a dot in its file name, two
        images with the same key, or an unreadable image with ``errors="raise"``.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if not isinstance(max_count, numbers.Integral) or max_count < 1:
        raise ValueError(f"max_count must be a positive int, got {max_count!r}")
    if isinstance(resize, numbers.Integral):
        resize = (int(resize), int(resize))
    if resize is not None and (len(resize) != 2 or min(resize) < 1):
        raise ValueError(f"resize must be a positive int or (width, height), got {resize!r}")
    if not prefix or "/" in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    load = image_loader(images)
    keys = list(keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ShardWriteResult([], 0)
    seen: dict[str, str] = {}
    tar = tmp = final = None
    count = size = 0

    def close_shard():
        nonlocal tar
        if tar is not None:
            tar.close()
            os.replace(tmp, final)
            result.paths.append(final)
            tar = None

    bar = None
    if progress or (progress is None and len(keys) > 10_000):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), desc="writing shards", unit="img")
    try:
        for image in keys:
            key = _sample_key(image)
            if key in seen:
                raise ValueError(f"images {seen[key]!r} and {image!r} map to the same shard key {key!r}")
            seen[key] = image
            try:
                payload, original, final_size = _encode_image(load(image), resize, quality)
            except (OSError, KeyError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
                if errors == "raise":
                    raise ValueError(f"image {image!r}: cannot be read or decoded ({type(e).__name__}: {e})") from e
                result.skipped.append((image, f"{type(e).__name__}: {e}"))
                if bar is not None:
                    bar.update(1)
                continue
            if tar is not None and (count >= max_count or (max_bytes is not None and size >= max_bytes)):
                close_shard()
            if tar is None:
                final = out / f"{prefix}-{len(result.paths):06d}.tar"
                tmp = final.with_name(final.name + ".tmp")
                tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close_shard)
                count = size = 0
            _add_member(tar, key + ".jpg", payload)
            if metadata:
                meta = {"image": image, "size": final_size, "original_size": original}
                _add_member(tar, key + ".json", json.dumps(meta).encode())
            count += 1
            size += len(payload)
            result.images += 1
            if bar is not None:
                bar.update(1)
        close_shard()
    finally:
        if bar is not None:
            bar.close()
        if tar is not None:  # an error midway: drop the unfinished shard
            tar.close()
            Path(tmp).unlink(missing_ok=True)
    return result


def _members(tar: tarfile.TarFile, where: str, max_size: int) -> Iterator[tuple[tarfile.TarInfo, str]]:
    for info in tar:
        name = check_member_name(info.name, where)
        if info.isdir():
            continue
        if not info.isfile():
            raise ValueError(f"{where}: member {info.name!r} is not a regular file (link or device)")
        if info.issparse():  # its stored bytes are not its content (ShardReader would read garbage)
            raise ValueError(f"{where}: member {info.name!r} is a sparse file")
        if info.size > max_size:
            raise ValueError(f"{where}: member {info.name!r} has {info.size} bytes, more than {max_size}")
        yield info, name


def _check_complete(tar: tarfile.TarFile, where: str) -> None:
    """tarfile stops without a word when a shard is cut at (or inside) a member header: a
    complete archive ends with two zero blocks right after its last member."""
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE or any(tail):
        raise ValueError(f"{where}: truncated or damaged after byte {tar.offset} (no end-of-archive blocks); "
                         "re-download or rewrite the shard")


def iter_shard(path: PathLike, max_member_size: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one WebDataset tar: ``(key, {extension: bytes})``, members grouped by key
    in file order.

    Raises
    ------
    ValueError
        Naming the shard, for an unsafe member path (absolute, ``..``), a link, device or
        sparse member, a member over ``max_member_size`` bytes, a key whose members are
        not adjacent, or a shard cut short (no end-of-archive blocks).
    """
    path = Path(path)
    done: set[str] = set()
    key, sample = None, {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info, name in _members(tar, str(path), max_member_size):
                k, ext = _split_key(name)
                if k != key:
                    if key is not None:
                        yield key, sample
                        done.add(key)
                    if k in done:
                        raise ValueError(f"{path}: members of sample {k!r} are not adjacent")
                    key, sample = k, {}
                sample[ext] = tar.extractfile(info).read()
            _check_complete(tar, str(path))
    except (tarfile.TarError, EOFError) as e:  # cut inside a member, a bad header, a broken gzip stream
        raise ValueError(f"{path}: not a readable tar shard: {e}") from None
    if key is not None:
        yield key, sample


class ShardReader(Mapping):
    """Random access to the images in WebDataset tar shards, by image key.

    On creation every shard's member list is read once (and checked, see
    :func:`iter_shard`); an image is then one ``pread`` of its bytes. Look-ups accept the
    key with or without an extension: ``store["a/0001.png"]``, ``store["a/0001.jpg"]`` and
    ``store["a/0001"]`` all return the ``.jpg`` member of key ``a/0001``. Safe to share
    between threads.

    Parameters
    ----------
    paths : iterable of paths
        The shards, e.g. ``ShardWriteResult.paths`` or ``sorted(Path(d).glob("*.tar"))``.
    extension : str
        Which member of a sample holds the image.
    max_member_size : int
        Largest member accepted, in bytes.
    """

    def __init__(self, paths: Iterable[PathLike], extension: str = "jpg", max_member_size: int = MAX_MEMBER_BYTES):
        self.paths = [Path(p) for p in paths]
        self.extension = extension
        self._index: dict[str, tuple[int, int, int]] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        for i, path in enumerate(self.paths):
            try:
                with tarfile.open(path, "r:") as tar:
                    for info, name in _members(tar, str(path), max_member_size):
                        key, ext = _split_key(name)
                        if ext.lower() != extension.lower():  # .JPG from other writers too
                            continue
                        if key in self._index:
                            other = self.paths[self._index[key][0]]
                            raise ValueError(f"{path}: image {key!r} is also in {other}")
                        self._index[key] = (i, info.offset_data, info.size)
                    _check_complete(tar, str(path))
            except tarfile.TarError as e:
                raise ValueError(f"{path}: not a readable uncompressed tar shard: {e}") from None

    def _key(self, image: str) -> str:
        if image in self._index:
            return image
        return posixpath.splitext(check_member_name(image, f"image key {image!r}"))[0]

    def __getitem__(self, image: str) -> bytes:
        try:
            shard, offset, size = self._index[self._key(image)]
        except KeyError:
            raise KeyError(image) from None
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.paths[shard]}: short read for {image!r}")
        return data

    def __contains__(self, image) -> bool:
        return isinstance(image, str) and self._key(image) in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        """Close the shard files (reopened on the next look-up)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        with contextlib.suppress(OSError):
            self.close()


# --------------------------------------------------------------------------- training sampler


class InstructionSampler(Sequence):
    """Training examples from records: one instruction and ``num_negatives`` hard negatives each.

    Item ``i`` of epoch ``e`` is ``{"q_img", "q_text": str, "t_img", "hns": list[str]}``
    built from record ``i``: ``q_text`` is one of the record's instructions drawn uniformly;
    ``hns[0]`` is the record's ``hns[0]``, the query image, always (MegaPairs: training
    without it teaches the model to return the query); the other ``num_negatives - 1`` are
    drawn without replacement from ``hns[1:]``, or, when there are too few, all of them
    followed by draws with replacement (VISTA's ``random.choices``), or ``hns[0]`` repeated
    when there are none. The draws are a pure function of ``(seed, epoch, i)``, so a
    map-style ``DataLoader`` over this object is reproducible whatever its workers.
    Iterating yields one epoch in a shuffled order (also a function of seed and epoch) when
    ``shuffle``.

    Parameters
    ----------
    records : sequence of records
        Each needs at least one instruction, ``hns[0] == q_img`` (or empty ``hns``, then the
        query image stands in), and no ``t_img`` among its ``hns``.
    num_negatives : int
        Negatives per example, the query image included (the paper: 4 for CLIP, 3 for the MLLM).
    seed : int
    shuffle : bool

    Raises
    ------
    ValueError
        On access to a record that breaks the rules above, naming its index.
    """

    def __init__(self, records: Sequence[Mapping], num_negatives: int = 4, seed: int = 0, shuffle: bool = True):
        if not isinstance(num_negatives, numbers.Integral) or isinstance(num_negatives, bool) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive int (it includes the query image), "
                             f"got {num_negatives!r}")
        if not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.records = records
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw instructions, negatives and order anew for ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.records)
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"index must be an int or a slice, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"index {i!r} out of range for {n} records")
        i = int(i) % n
        r = self.records[i]
        texts = r.get("q_text", r.get("q_texts"))
        if not texts:
            raise ValueError(f"record {i} has no instructions (q_text is empty)")
        hns = list(r.get("hns") or [r["q_img"]])
        if hns[0] != r["q_img"]:
            raise ValueError(f"record {i}: hns[0] must be the query image {r['q_img']!r}, got {hns[0]!r}")
        if r["t_img"] in hns:
            raise ValueError(f"record {i}: the target image {r['t_img']!r} is among its hard negatives")
        rng = random.Random(_mix(self.seed, self.epoch, i))
        text = texts[rng.randrange(len(texts))]
        want, pool = self.num_negatives - 1, hns[1:]
        if len(pool) >= want:
            picked = rng.sample(pool, want)
        elif pool:
            picked = rng.sample(pool, len(pool)) + rng.choices(pool, k=want - len(pool))
        else:
            picked = [hns[0]] * want
        return {"q_img": r["q_img"], "q_text": text, "t_img": r["t_img"], "hns": [hns[0], *picked]}

    def order(self) -> list[int]:
        """The record order of the current epoch."""
        idx = list(range(len(self.records)))
        if self.shuffle:
            random.Random(_mix(self.seed, self.epoch, -1)).shuffle(idx)
        return idx

    def __iter__(self) -> Iterator[dict]:
        for i in self.order():
            yield self[i]


def _mix(*values: int) -> int:
    """A 64-bit seed from integers, the same in every process."""
    return int.from_bytes(hashlib.sha256(json.dumps(values).encode()).digest()[:8], "big")
