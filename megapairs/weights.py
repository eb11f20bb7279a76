"""Reading model weights from safetensors files, single or sharded.

The reader is the C core's: the file is memory-mapped, its header is validated in full
(every malformed file raises :class:`megapairs.FormatError` naming the problem and the
tensor), and arrays are zero-copy read-only views wherever NumPy has the stored dtype.

>>> from megapairs.weights import SafetensorsFile
>>> with SafetensorsFile("clip/model.safetensors") as f:          # doctest: +SKIP
...     proj = f.get("visual_projection.weight")                  # (E, D) float32 view
...     f.dtype("vision_model.embeddings.patch_embedding.weight")  # 'BF16'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np

from . import _args, _core
from ._hub import read_json
from .errors import FormatError

PathLike = Union[str, "os.PathLike[str]"]

INDEX_SUFFIX = ".safetensors.index.json"

#: Most tensors (plus ``__metadata__`` entries) one file may declare; real shards hold a
#: few thousand. Read at open time: raise it for a legitimately larger file.
MAX_TENSORS = 100_000

#: Largest JSON header one file may have, in bytes (the format's own reader allows 100 MB).
MAX_HEADER_BYTES = 100_000_000

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "SafetensorsFile", "load_safetensors", "resolve_checkpoint"]


def _open(path: Path) -> _core.SafetensorsReader:
    return _core.SafetensorsReader(path, max_tensors=MAX_TENSORS, max_header_bytes=MAX_HEADER_BYTES)


def _dtype_arg(dtype) -> str | None:
    """None, 'float32' or 'bfloat16' from the spellings users write."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.lower() in ("bfloat16", "bf16"):
        return "bfloat16"
    try:
        if np.dtype(dtype) == np.float32:
            return "float32"
    except TypeError:
        pass
    raise ValueError(f"dtype must be None, 'float32' or 'bfloat16', got {dtype!r}")


def resolve_checkpoint(path: PathLike) -> Path:
    """The file to open for ``path``: a ``.safetensors`` file, a ``*.safetensors.index.json``
    file, or a directory holding ``model.safetensors.index.json``, ``model.safetensors`` or
    exactly one of either kind."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: '{path}'")
        return path
    for name in ("model" + INDEX_SUFFIX, "model.safetensors"):
        if (path / name).is_file():
            return path / name
    for pattern in ("*" + INDEX_SUFFIX, "*.safetensors"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"'{path}' holds several checkpoints ({names}); pass the file to open")
    raise FileNotFoundError(f"no .safetensors file or {INDEX_SUFFIX} index in '{path}'")


def _read_index(index_path: Path) -> dict[str, str]:
    """weight_map of a sharded checkpoint's index, checked for shape and safe shard names."""
    index = read_json(index_path, kind=None)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index_path}: the index has no 'weight_map' object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise FormatError(f"{index_path}: weight_map entry {name!r} is not a file name: {shard!r}")
        if os.path.isabs(shard) or os.path.normpath(shard) != shard or shard.startswith(".."):
            raise FormatError(
                f"{index_path}: shard {shard!r} of tensor {name!r} is not a plain file name beside the index"
            )
    return weight_map


class SafetensorsFile:
    """A safetensors checkpoint opened for reading: one file or a sharded index.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file, a ``*.safetensors.index.json`` index of shards, or a
        directory holding one of them (see :func:`resolve_checkpoint`).

    Notes
    -----
    Arrays returned by :meth:`get` view the memory-mapped file and stay valid after
    :meth:`close`; the mapping is released when the last of them is. Do not modify or
    truncate a file while it is open: the mapping would see it (as with any mmap).
    """

    def __init__(self, path: PathLike):
        self.path = resolve_checkpoint(path)
        self._readers: dict[str, _core.SafetensorsReader] = {}
        if self.path.name.endswith(INDEX_SUFFIX):
            weight_map = _read_index(self.path)
            for shard in sorted(set(weight_map.values())):
                self._readers[shard] = _open(self.path.parent / shard)
            self._where = {}
            for name in sorted(weight_map):
                reader = self._readers[weight_map[name]]
                try:
                    reader.info(name)
                except KeyError:
                    raise FormatError(
                        f"{self.path}: tensor {name!r} is mapped to shard {weight_map[name]!r}, which does not hold it"
                    ) from None
                self._where[name] = reader
            self._metadata = {}
        else:
            reader = _open(self.path)
            self._readers[self.path.name] = reader
            self._where = {name: reader for name in reader.keys()}
            self._metadata = reader.metadata()

    @property
    def readers(self) -> list[_core.SafetensorsReader]:
        """The open files (one per shard): what the C core binds a model's weights from."""
        self._check_open()
        return list(self._readers.values())

    # -- mapping-like access
    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        self._check_open()
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def _reader(self, name: str) -> _core.SafetensorsReader:
        self._check_open()
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` as stored."""
        return self._reader(name).info(name)[1]

    def dtype(self, name: str) -> str:
        """Stored dtype of ``name`` in safetensors spelling: 'F32', 'F16', 'BF16', 'I64', ..."""
        return self._reader(name).info(name)[0]

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of a single file (empty for a sharded index)."""
        return dict(self._metadata)

    def get(self, name: str, dtype=None, *, num_threads: int | None = None) -> np.ndarray:
        """Tensor ``name`` as a NumPy array.

        Parameters
        ----------
        dtype : None, 'float32' or 'bfloat16'
            None returns the stored dtype as a read-only view of the file (no copy), except
            BF16, which NumPy lacks: it is widened to float32 (exactly). 'float32' converts
            any floating dtype (a view when already F32). 'bfloat16' returns bfloat16 bit
            patterns as uint16, rounding to nearest even from wider types.
        num_threads : int, optional
            Threads for the conversion; defaults to :func:`megapairs.get_num_threads`.
        """
        return self._reader(name).get(name, _dtype_arg(dtype), num_threads=_args.threads(num_threads))

    # -- lifetime
    @property
    def closed(self) -> bool:
        return all(reader.closed for reader in self._readers.values())

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed safetensors file {self.path}")

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors"
        return f"SafetensorsFile('{self.path}', {state})"


def load_safetensors(path: PathLike, dtype=None, *, num_threads: int | None = None) -> dict[str, np.ndarray]:
    """All tensors of a safetensors checkpoint (file, index or directory) by name.

    Arrays are read-only views of the memory-mapped file where the stored dtype allows
    (see :meth:`SafetensorsFile.get` for ``dtype``), so loading costs no copy.

    >>> state = load_safetensors("dinov2-base/")       # doctest: +SKIP
    >>> state["embeddings.cls_token"].shape             # doctest: +SKIP
    (1, 1, 768)
    """
    with SafetensorsFile(path) as f:
        return {name: f.get(name, dtype, num_threads=num_threads) for name in f.keys()}
