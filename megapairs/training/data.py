"""What a trainer reads from a pipeline output folder: records, the held-out split,
training examples addressed by ``(epoch, index)``, and the cached embeddings.

Everything here is a pure function of its inputs and the seed, and nothing imports torch:
a ``DataLoader`` with workers draws the same examples as one without, and a resumed run draws
the same examples as an uninterrupted one.

>>> from megapairs.training import data
>>> records = data.read_dataset("out")                                   # doctest: +SKIP
>>> train, heldout = data.split_records(records, holdout=0.1, seed=0)    # doctest: +SKIP
>>> examples = data.Examples(train, num_negatives=4, seed=0)             # doctest: +SKIP
>>> examples[0, 17]   # epoch 0, record 17: one instruction, 4 negatives (the query image first)  # doctest: +SKIP
>>> batches = data.StepBatches(len(train), batch_size=64, seed=0, steps=300)  # doctest: +SKIP
>>> DataLoader(examples, batch_sampler=batches, collate_fn=model.collate_fn(images))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..dataset import InstructionSampler, read_records
from ..pipeline.config import Config
from ..pipeline.layout import Output
from ..pipeline.stages import StageFailed
from ._checks import positive_int

__all__ = ["Examples", "StepBatches", "heldout_mask", "image_table", "instruction_model", "read_dataset", "split_records",
           "text_encoder"]


def read_dataset(out: str | os.PathLike) -> list[dict]:
    """The records ``megapairs export`` wrote in ``out/dataset`` (Parquet, else JSONL)."""
    folder = Path(out) / "dataset"
    for name in ("records.parquet", "records.jsonl"):
        if (folder / name).is_file():
            records = read_records(folder / name)
            if not records:
                raise ValueError(f"{folder / name} holds no records: nothing to train on")
            return records
    raise FileNotFoundError(f"no dataset in {folder}: run `megapairs build` (or `megapairs export`) first")


def _unit(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``(key, seed)``, the same in every process and on every machine."""
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def heldout_mask(records: Sequence[Mapping], holdout: float, seed: int = 0) -> list[bool]:
    """Which records are held out: those whose *query image* falls in the ``holdout``
    fraction of a seeded hash. Splitting by query image keeps every pair of a held-out query
    out of training, so evaluation never sees a query the model trained on."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    return [_unit(r["q_img"], seed) < holdout for r in records]


def split_records(records: Sequence[Mapping], holdout: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)``: the records split by :func:`heldout_mask`, each in its original order."""
    mask = heldout_mask(records, holdout, seed)
    train = [dict(r) for r, held in zip(records, mask) if not held]
    held = [dict(r) for r, held in zip(records, mask) if held]
    if not train:
        raise ValueError(f"holdout={holdout} leaves no record to train on ({len(records)} records)")
    return train, held


class Examples:
    """Training examples of ``records``, addressed by ``(epoch, index)``: item ``(e, i)`` is
    :class:`megapairs.dataset.InstructionSampler`'s example ``i`` at epoch ``e`` (one of the
    record's instructions drawn at random; ``num_negatives`` hard negatives, the query image
    first), a pure function of ``(seed, e, i)``. Map-style: a ``DataLoader`` with workers
    fetches items from copies of this object and gets the same examples."""

    def __init__(self, records: Sequence[Mapping], num_negatives: int = 4, seed: int = 0):
        self.sampler = InstructionSampler(records, num_negatives=num_negatives, seed=seed, shuffle=False)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.sampler.epoch = int(epoch)
        return self.sampler[index]


class StepBatches:
    """A batch sampler for optimiser steps ``start .. steps - 1``: step ``s`` takes
    ``batch_size`` consecutive positions of epoch ``s // steps_per_epoch``'s seeded shuffle
    (``steps_per_epoch = n // batch_size``; the remainder of an epoch is dropped, so every
    step has a full batch of negatives). Yields lists of ``(epoch, index)`` keys for
    :class:`Examples`. Resuming at ``start`` yields exactly what an uninterrupted run would."""

    def __init__(self, n: int, batch_size: int, seed: int, steps: int, start: int = 0):
        self.n, self.batch_size = positive_int(n, "n"), positive_int(batch_size, "batch_size")
        if self.batch_size > self.n:
            raise ValueError(f"batch_size={batch_size} is larger than the {n} training records; "
                             f"lower train.batch_size")
        self.seed, self.steps, self.start = int(seed), positive_int(steps, "steps"), int(start)
        if not 0 <= self.start <= self.steps:
            raise ValueError(f"start={start} is outside [0, {steps}]")
        self.steps_per_epoch = self.n // self.batch_size

    def order(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s order of the records."""
        idx = list(range(self.n))
        random.Random(hashlib.sha256(f"order\0{self.seed}\0{epoch}".encode()).digest()).shuffle(idx)
        return idx

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, []
        for step in range(self.start, self.steps):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.order(e)
            yield [(e, i) for i in order[k * self.batch_size:(k + 1) * self.batch_size]]


# --------------------------------------------------------------------------- cached embeddings


def image_table(o: Output, space_name: str) -> tuple[np.ndarray, list[str]]:
    """The cached embeddings of a space, only the rows of images that were embedded, and their keys."""
    import pyarrow.parquet as pq

    path = o.embedding(space_name)
    if not path.is_file():
        raise StageFailed(f"no embeddings of space {space_name!r} in {o.embeddings}: run `megapairs encode` first")
    table = np.load(path, mmap_mode="r")
    keys = pq.read_table(o.manifest, columns=["key"]).column("key").to_pylist()
    if len(keys) != len(table):
        raise StageFailed(f"{path} has {len(table)} rows but the manifest {len(keys)}: run `megapairs encode` again")
    kept = np.flatnonzero(np.any(np.asarray(table) != 0, axis=1))
    return np.ascontiguousarray(table[kept], dtype=np.float32), [keys[i] for i in kept]


def instruction_model(cfg: Config) -> str:
    """The adapter's instruction encoder: ``train.text_model``, else the model of the
    adapter's space when it embeds text (a caption space, or a CLIP whose text tower sits
    beside its image tower)."""
    t = cfg.train
    space = cfg.space(t.space) if t.space else cfg.spaces[0]
    name = t.text_model or (space.model if space.kind in ("caption", "clip_image") else "")
    if not name:
        raise StageFailed(f"space {space.name!r} ({space.kind}) has no text tower: set train.text_model to an "
                          "instruction encoder whose space matches it")
    return name


def text_encoder(model: str, precision: str = "fp32", num_threads: int | None = None
                 ) -> Callable[[list[str]], np.ndarray]:
    """``texts -> (n, E)`` unit rows from a sentence-transformers model or a CLIP text tower
    (the encoders the pipeline's caption spaces use)."""
    from ..pipeline.config import SpaceConfig
    from ..pipeline.stages import _load_model

    _, run = _load_model(SpaceConfig(name="instructions", kind="caption", model=model, precision=precision))

    def encode(texts: list[str]) -> np.ndarray:
        emb, _ = run(texts, 256, num_threads, "raise")
        return np.ascontiguousarray(emb, dtype=np.float32)
    return encode
