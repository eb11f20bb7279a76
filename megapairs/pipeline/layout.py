"""The output folder: its file names, crash-safe writes, and what each stage has done.

Every name a user or a test relies on is a property of :class:`Output` (and in
``docs/pipeline.md``). Files are written under a temporary name and renamed into place, so
a killed run leaves either the old file or the new one, never half of one.

Each finished stage leaves ``.megapairs/<stage>.json`` with its *fingerprint*: a digest of its
own config section and of the fingerprints of what it consumed. A stage is up to date when
its recorded fingerprint equals the one it would have now and its outputs exist; otherwise it
runs again, and so does everything downstream (as ``make`` does, with digests for times).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import DiskFullError

__all__ = ["DiskFullError", "Output", "atomic_folder", "atomic_write_bytes", "digest", "disk_errors"]

STATE_VERSION = 1


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside into :class:`DiskFullError` naming ``what``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(e.errno, f"no space left on the device while writing {what}; free some space "
                                         "and run the same command again to resume") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(str(path)):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Build a folder whole: yields an empty ``.<name>.tmp`` beside ``path`` to fill, and on a
    clean exit swaps it in for ``path`` (the old one goes aside, then away). A run killed
    before the swap leaves ``path`` as it was; the next run starts the temporary anew."""
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))


def digest(*parts) -> str:
    """A short, stable hex digest of JSON-able parts."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class Output:
    """The file names of one output folder (``docs/pipeline.md``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # user-facing files
    @property
    def config(self) -> Path:
        return self.root / "megapairs.toml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def embedding(self, space: str) -> Path:
        return self.embeddings / f"{space}.npy"

    def embedding_info(self, space: str) -> Path:
        return self.embeddings / f"{space}.json"

    def embedding_partial(self, space: str) -> Path:
        return self.embeddings / f".{space}.partial.npy"

    def embedding_progress(self, space: str) -> Path:
        return self.embeddings / f".{space}.progress.json"

    def embedding_parts(self, space: str) -> Path:
        """Per-task results of a Ray encode (``<first row>.npy`` + ``.json``), assembled
        into :meth:`embedding` in manifest order when every part is there."""
        return self.embeddings / f".{space}.parts"

    @property
    def captions_journal(self) -> Path:
        return self.root / "captions.jsonl"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.parquet"

    @property
    def pairs_stats(self) -> Path:
        return self.root / "pairs.stats.json"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations.jsonl"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def records_jsonl(self) -> Path:
        return self.dataset / "records.jsonl"

    @property
    def records_parquet(self) -> Path:
        return self.dataset / "records.parquet"

    @property
    def shards(self) -> Path:
        return self.dataset / "shards"

    # bookkeeping
    @property
    def state_dir(self) -> Path:
        return self.root / ".megapairs"

    def state_file(self, stage: str) -> Path:
        return self.state_dir / f"{stage.replace(':', '.')}.json"  # encode:<space> -> encode.<space>.json

    def read_state(self, stage: str) -> dict | None:
        """The record a finished stage left, or None (never run, or from another format)."""
        try:
            state = json.loads(self.state_file(stage).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None

    def write_state(self, stage: str, fingerprint: str, outputs: list[Path], stats: dict | None = None,
                    **extra) -> dict:
        """Record that ``stage`` finished with ``fingerprint``; written last, after its outputs."""
        state = {"version": STATE_VERSION, "stage": stage, "fingerprint": fingerprint,
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "outputs": {str(p.relative_to(self.root)): p.stat().st_size if p.is_file() else None
                             for p in outputs},
                 "stats": stats or {}, **extra}
        atomic_write_json(self.state_file(stage), state)
        return state

    def clear_state(self, stage: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_file(stage).unlink()

    def is_current(self, stage: str, fingerprint: str) -> bool:
        """Whether ``stage`` finished with this fingerprint and its outputs are still there,
        with the sizes they had."""
        state = self.read_state(stage)
        if state is None or state.get("fingerprint") != fingerprint:
            return False
        for rel, size in state.get("outputs", {}).items():
            p = self.root / rel
            if not p.exists() or (size is not None and (not p.is_file() or p.stat().st_size != size)):
                return False
        return True
