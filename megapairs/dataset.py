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
import io
import json
import logging
import numbers
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The records (JSONL / Parquet) and the training sampler live in private modules; the image
# sources and the WebDataset shards are here. The names are imported in their source order,
# which is the order of the reference page (members_order: source).
from . import _args

# isort: off
from ._dataset_records import (
    FIELDS,
    SCHEMA,  # noqa: F401 (SCHEMA, METADATA_KEY: names of this module before the split)
    METADATA_KEY,  # noqa: F401
    MAX_LINE_BYTES,
    PathLike,
    normalize_record,
    write_jsonl,
    iter_jsonl,
    read_jsonl,
    records_to_table,
    records_from_table,
    write_parquet,
    iter_parquet,
    read_parquet,
    read_parquet_metadata,
    read_records,
    write_records,
    image_keys,
)
# isort: on

__all__ = [
    "FIELDS",
    "MAX_LINE_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_SHARD_MEMBERS",
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

#: Largest tar member :func:`iter_shard` and :class:`ShardReader` accept (an image, not a bomb).
MAX_MEMBER_BYTES = 256 << 20

#: Most members one tar shard may hold (WebDataset shards hold ~10,000 samples of a few
#: members each); the member index costs ~200 bytes a member.
MAX_SHARD_MEMBERS = 100_000

ImageSource = PathLike | Callable[[str], bytes] | Mapping


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


def _members(tar: tarfile.TarFile, where: str, max_size: int,
             max_members: int) -> Iterator[tuple[tarfile.TarInfo, str]]:
    _args.positive(max_size, "max_member_size")
    _args.positive(max_members, "max_members")
    for count, info in enumerate(tar, start=1):
        tar.members = []  # tarfile keeps every header it has read; memory stays flat instead
        if count > max_members:
            raise ValueError(f"{where}: more than {max_members} members (raise max_members to read it)")
        name = check_member_name(info.name, where)
        if info.isdir():
            continue
        if not info.isfile():
            raise ValueError(f"{where}: member {info.name!r} is not a regular file (link or device)")
        if info.issparse():  # its stored bytes are not its content (ShardReader would read garbage)
            raise ValueError(f"{where}: member {info.name!r} is a sparse file")
        if info.size > max_size:
            raise ValueError(f"{where}: member {info.name!r} has {info.size} bytes, more than {max_size} "
                             "(raise max_member_size to read it)")
        yield info, name


def _check_complete(tar: tarfile.TarFile, where: str) -> None:
    """tarfile stops without a word when a shard is cut at (or inside) a member header: a
    complete archive ends with two zero blocks right after its last member."""
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE or any(tail):
        raise ValueError(f"{where}: truncated or damaged after byte {tar.offset} (no end-of-archive blocks); "
                         "re-download or rewrite the shard")


def iter_shard(path: PathLike, max_member_size: int = MAX_MEMBER_BYTES,
               max_members: int = MAX_SHARD_MEMBERS) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one WebDataset tar: ``(key, {extension: bytes})``, members grouped by key
    in file order.

    Parameters
    ----------
    max_member_size : int
        Largest member, and largest sample (its members together), in bytes.
    max_members : int
        Most members in the shard.

    Raises
    ------
    ValueError
        Naming the shard, for an unsafe member path (absolute, ``..``), a link, device or
        sparse member, a member or sample over ``max_member_size`` bytes, more than
        ``max_members`` members, a key whose members are not adjacent, or a shard cut short
        (no end-of-archive blocks).
    """
    path = Path(path)
    done: set[str] = set()
    key, sample, size = None, {}, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for info, name in _members(tar, str(path), max_member_size, max_members):
                k, ext = _split_key(name)
                if k != key:
                    if key is not None:
                        yield key, sample
                        done.add(key)
                    if k in done:
                        raise ValueError(f"{path}: members of sample {k!r} are not adjacent")
                    key, sample, size = k, {}, 0
                size += info.size - len(sample.get(ext, b""))
                if size > max_member_size:  # a gzip shard can inflate many members of one key
                    raise ValueError(f"{path}: sample {k!r} holds more than {max_member_size} bytes "
                                     "(raise max_member_size to read it)")
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
    max_members : int
        Most members in one shard.
    """

    def __init__(self, paths: Iterable[PathLike], extension: str = "jpg", max_member_size: int = MAX_MEMBER_BYTES,
                 max_members: int = MAX_SHARD_MEMBERS):
        self.paths = [Path(p) for p in paths]
        self.extension = extension
        self._index: dict[str, tuple[int, int, int]] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        for i, path in enumerate(self.paths):
            try:
                with tarfile.open(path, "r:") as tar:
                    for info, name in _members(tar, str(path), max_member_size, max_members):
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


# Imported last so the reference page (members in source order) keeps the sampler after the shards.
from ._dataset_sampler import InstructionSampler
