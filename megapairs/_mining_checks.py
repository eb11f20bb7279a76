"""Argument checks of pair mining: bands, embeddings, precomputed neighbour lists, quotas
and the sampler's seed word. Each raises ValueError (or TypeError) naming the space and row
at fault; :mod:`megapairs.mining` calls them before any work is done.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._mining_types import SpaceNeighbours


def _positive_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_band(band, name: str = "band") -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in band)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (lo, hi), got {band!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"{name} needs lo < hi, got lo={lo!r}, hi={hi!r}")
    return lo, hi


def _check_bands(band, names: list[str], precomputed: list[str]) -> dict[str, tuple[float, float]]:
    """``band`` as one (lo, hi) per space in ``names`` (the spaces mine_pairs searches):
    one pair for all, or a mapping naming each of them exactly once."""
    if not isinstance(band, Mapping):
        lo_hi = _check_band(band)
        return dict.fromkeys(names, lo_hi)
    given = [n for n in band if n in precomputed]
    if given:
        raise ValueError(f"band names space(s) {given} whose neighbours are given precomputed; their band "
                         "is the one they were computed with (SpaceNeighbours.band)")
    unknown = [n for n in band if n not in names]
    missing = [n for n in names if n not in band]
    if unknown or missing:
        problems = ([f"unknown space(s) {unknown}"] if unknown else []) + \
                   ([f"no entry for space(s) {missing}"] if missing else [])
        raise ValueError(f"band mapping has {' and '.join(problems)}; it must give one (lo, hi) for each "
                         f"of the spaces {names}")
    return {n: _check_band(band[n], f"band[{n!r}]") for n in names}


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"space names must be non-empty strings, got {name!r}")
    return name


def _check_embeddings(emb, what: str, normalize: bool) -> np.ndarray:
    """One space's embeddings as the kNN calls take them: 2-D float, finite, and (when
    ``normalize``) divided by their L2 norm, stored as float32."""
    a = np.asarray(emb)
    if a.ndim != 2:
        raise ValueError(f"{what}: embeddings must be 2-D (M, d), got shape {a.shape}")
    if a.dtype.kind != "f":
        raise ValueError(f"{what}: embeddings must be a float array, got dtype {a.dtype}")
    if a.shape[1] == 0:
        raise ValueError(f"{what}: embeddings of dimension 0")
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what}: row {int(np.argmin(finite))} holds a non-finite value")
    if normalize:
        a = a.astype(np.float32, copy=False)
        norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
        if (norms == 0).any():
            raise ValueError(f"{what}: row {int(np.argmin(norms))} is all zeros and cannot be L2-normalised")
        a = (a / norms[:, None]).astype(np.float32)
    return a


def _check_spaces(spaces: Mapping, normalize: bool) -> dict[str, np.ndarray]:
    """Every space's embeddings checked, with the same row count in all."""
    out, rows, first = {}, None, None
    for name, emb in spaces.items():
        a = _check_embeddings(emb, f"space {name!r}", normalize)
        if rows is None:
            rows, first = a.shape[0], name
        elif a.shape[0] != rows:
            raise ValueError(f"space {name!r} has {a.shape[0]} rows but space {first!r} has {rows}: "
                             "every space must embed the same images, rows aligned")
        out[name] = a
    return out


def _check_neighbours(neighbours: Mapping) -> dict[str, SpaceNeighbours]:
    """Each space's lists as int64 ids / float32 scores, with consistent shapes and ids
    in range; raises ValueError naming the space (and the row where one is at fault)."""
    out, M, first = {}, None, None
    for name, nb in neighbours.items():
        _check_name(name)
        if isinstance(nb, (tuple, list)) and len(nb) == 3:
            nb = SpaceNeighbours(*nb)
        if not isinstance(nb, SpaceNeighbours):
            raise TypeError(f"space {name!r}: expected SpaceNeighbours or a (band_scores, band_ids, "
                            f"retrieved_ids) tuple, got {type(nb).__name__}")
        arrays = {}
        for field_name in ("band_scores", "band_ids", "retrieved_ids"):
            a = np.asarray(getattr(nb, field_name))
            kind = "f" if field_name == "band_scores" else "iu"
            if a.ndim != 2 or a.dtype.kind not in kind:
                want = "float" if kind == "f" else "integer"
                raise ValueError(f"space {name!r}: {field_name} must be a 2-D {want} array, "
                                 f"got {a.dtype} of shape {a.shape}")
            arrays[field_name] = a
        scores, ids, retrieved = arrays["band_scores"], arrays["band_ids"], arrays["retrieved_ids"]
        if scores.shape != ids.shape:
            raise ValueError(f"space {name!r}: band_scores has shape {scores.shape} but band_ids {ids.shape}")
        if ids.shape[1] == 0:
            raise ValueError(f"space {name!r}: band lists of width 0 (k must be at least 1)")
        if M is None:
            M, first = ids.shape[0], name
        for what, a in (("band_ids", ids), ("retrieved_ids", retrieved)):
            if a.shape[0] != M:
                raise ValueError(f"space {name!r}: {what} has {a.shape[0]} rows but space {first!r} has {M} "
                                 "queries: every space must list neighbours of the same images, rows aligned")
            if a.size and (a.min() < -1 or a.max() >= M):
                bad = a.min() if a.min() < -1 else a.max()
                row = int(np.argmax((a == bad).any(axis=1)))
                raise ValueError(f"space {name!r}: {what} row {row} holds id {int(bad)}; ids must be image "
                                 f"rows 0..{M - 1}, or -1 for padding")
        ids = ids.astype(np.int64, copy=False)
        valid = ids >= 0
        late = (valid[:, 1:] & ~valid[:, :-1]).any(axis=1)
        if late.any():
            raise ValueError(f"space {name!r}: band_ids row {int(np.argmax(late))} has a hit after -1 "
                             "padding; hits come first, in rank order")
        own = (ids == np.arange(M)[:, None]).any(axis=1)
        if own.any():
            row = int(np.argmax(own))
            raise ValueError(f"space {name!r}: band_ids row {row} lists image {row} itself; a query cannot "
                             "be its own target (use exclude_self=True)")
        band = None if nb.band is None else _check_band(nb.band, f"space {name!r}: band")
        out[name] = SpaceNeighbours(scores.astype(np.float32, copy=False), ids,
                                    retrieved.astype(np.int64, copy=False), band)
    return out


def _quotas(names: list[str], targets_per_query, quotas) -> dict[str, int]:
    if quotas is None:
        total = _positive_int(targets_per_query, "targets_per_query")
        share, extra = divmod(total, len(names))
        return {name: share + (i < extra) for i, name in enumerate(names)}
    if not isinstance(quotas, Mapping):
        raise TypeError(f"quotas must be a mapping of space name -> int, got {type(quotas).__name__}")
    unknown = [name for name in quotas if name not in names]
    if unknown:
        raise ValueError(f"quotas name unknown space {unknown[0]!r}; the spaces are {names}")
    out = {}
    for name in names:
        q = quotas.get(name, 0)
        if not isinstance(q, numbers.Integral) or isinstance(q, bool) or q < 0:
            raise ValueError(f"quotas[{name!r}] must be a non-negative int, got {q!r}")
        out[name] = int(q)
    if sum(out.values()) == 0:
        raise ValueError("quotas ask for no targets at all (every quota is 0)")
    return out


def _seed_word(seed) -> np.uint64:
    """The sampler's 64-bit base: the first uint64 word of ``np.random.SeedSequence(seed)``."""
    if seed is None:
        raise ValueError("seed must be an int (or a sequence of ints), not None: the negatives must be "
                         "reproducible")
    try:
        return np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
    except (TypeError, ValueError) as e:
        raise ValueError(f"seed must be a non-negative int or a sequence of them, got {seed!r} ({e})") \
            from None
