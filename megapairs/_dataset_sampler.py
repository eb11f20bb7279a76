"""The training sampler over MegaPairs records (:class:`InstructionSampler`, re-exported by
:mod:`megapairs.dataset`): one instruction and a fixed number of hard negatives per example,
drawn as a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import random
from collections.abc import Iterator, Mapping, Sequence

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
