"""Heterogeneous image-pair mining with hard negatives (MegaPairs §3.1).

>>> import megapairs as mp
>>> spaces = {"clip_image": clip_emb, "dino": dino_emb, "caption": caption_emb}  # doctest: +SKIP
>>> result = mp.mining.mine_pairs(spaces, band=(0.8, 0.96), k=50)                 # doctest: +SKIP
>>> result.table.num_rows, result.stats["queries_without_pair"]                  # doctest: +SKIP
>>> records = mp.mining.to_records(result.table, image_paths)                    # doctest: +SKIP

Every space holds one embedding per image, rows aligned across spaces. Each space is
self-joined with :func:`megapairs.knn.band` (the pair candidates) and
:func:`megapairs.knn.search` (the retrieved set the hard negatives come from), giving one
:class:`SpaceNeighbours` per space (:func:`space_neighbours`); :func:`select_pairs` applies
the rules (quotas, de-duplication, negatives, padding) to those lists, vectorised over
queries. The rules are stated in :func:`select_pairs` and in ``docs/mining.md``.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import _args, knn
from .dataset import check_member_name

__all__ = ["MiningResult", "SpaceNeighbours", "mine_pairs", "modality_aware_negatives", "select_pairs",
           "space_neighbours", "to_records"]

logger = logging.getLogger("megapairs")

# Above this many images, progress=None shows tqdm bars.
PROGRESS_MIN_IMAGES = 10_000

# Queries per block of the vectorised selection: its largest temporaries (a block's pool
# keys, 4 bytes x the sum of all list widths per query) stay a few MB, in cache.
SELECT_BLOCK = 4096

SCHEMA = pa.schema([
    ("query", pa.int64()),
    ("target", pa.int64()),
    ("spaces", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("hard_negatives", pa.list_(pa.int64())),
])


@dataclass
class MiningResult:
    """What :func:`mine_pairs` and :func:`select_pairs` return.

    Attributes
    ----------
    table : pyarrow.Table
        One row per (query, target) pair, columns ``query`` int64, ``target`` int64,
        ``spaces`` list<string>, ``scores`` list<float32> (aligned with ``spaces``) and
        ``hard_negatives`` list<int64>. Rows are sorted by query, then in the order the
        targets were chosen. The schema metadata key ``b"megapairs.mining"`` holds the
        mining settings as JSON.
    stats : dict
        Counts and rates, see :func:`mine_pairs`.
    """

    table: pa.Table
    stats: dict = field(default_factory=dict)


@dataclass(eq=False)
class SpaceNeighbours:
    """The kNN results of one similarity space: what :func:`select_pairs` works from.

    Row i belongs to query image i; ids are row indices of the same M images, -1 padding.
    :func:`space_neighbours` computes one from embeddings; a pipeline can store the three
    arrays (e.g. ``np.savez``) and rebuild the object to run the selection alone.

    Attributes
    ----------
    band_scores : (M, k_band) float array
        Similarity of each band hit (anything at padded positions).
    band_ids : (M, k_band) int array
        Per query, its band hits (the pair candidates) in rank order, best first, then -1
        padding: ``knn.band(E, E, lo, hi, k, exclude_self=True)[1]``. A row never holds its
        own query.
    retrieved_ids : (M, k_retrieved) int array
        Per query, its nearest images whatever their score (-1 padding allowed):
        ``knn.search(E, E, k, exclude_self=True)[1]``. With the band hits of every space
        they form the pool hard negatives are drawn from.
    band : (lo, hi), optional
        The band the hits were found with; only recorded in the table metadata.
    """

    band_scores: np.ndarray
    band_ids: np.ndarray
    retrieved_ids: np.ndarray
    band: tuple[float, float] | None = None


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- selection kernel

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# lowbias32 (C. Wellons): a bijection of 32-bit words, and the inverses of its multipliers
_LB1, _LB2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_LB1_INV, _LB2_INV = np.uint32(0x1D69E2A5), np.uint32(0x43021123)
_NONE = np.uint32(0xFFFFFFFF)  # an id of -1 as a 32-bit word
_S15, _S16, _S30, _S32 = np.uint32(15), np.uint32(16), np.uint32(30), np.uint64(32)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, in place on a uint64 array."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """In place on a uint32 array."""
    x ^= x >> _S16
    x *= _LB1
    x ^= x >> _S15
    x *= _LB2
    x ^= x >> _S16
    return x


def _lowbias32_inverse(x: np.ndarray) -> np.ndarray:
    x ^= x >> _S16
    x *= _LB2_INV
    x ^= (x >> _S15) ^ (x >> _S30)
    x *= _LB1_INV
    x ^= x >> _S16
    return x


def _query_keys(base: np.uint64, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two 32-bit words (a, b) keying each query's permutation, each (c, 1):
    h = mix64(base + (q + 1) * golden), a = its low word, b = its high word."""
    h = _mix64(base + (query.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None], (h >> _S32).astype(np.uint32)[:, None]


def _key(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """key_q(j) = lowbias32(lowbias32(j + a) ^ b) on 32-bit words: a bijection of ids, one per
    query, so the keys of distinct images never tie. ``ids`` is consumed (uint32)."""
    ids += a
    _lowbias32(ids)
    ids ^= b
    return _lowbias32(ids)


def _unkey(keys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = _lowbias32_inverse(keys)
    x ^= b
    _lowbias32_inverse(x)
    x -= a
    return x


def _pool_keys(lists: list[np.ndarray], a: np.ndarray, b: np.ndarray, query: np.ndarray):
    """Each query's pool (the distinct images of ``lists``, minus -1 and the query) as sorted
    keys: returns (keys, size), row r's pool being ``keys[r, :size[r]]`` in key order.

    The ids are keyed, then sorted; duplicates of an image have equal keys, so they are
    adjacent and all but the first are dropped, as are the keys of -1 and of the query.
    The dropped entries are set to all ones and a second sort moves them behind the pool
    (a pool key that is itself all ones then still sits at position size - 1).
    """
    W = sum(x.shape[1] for x in lists)
    keys = np.empty((len(query), W), np.uint32)
    col = 0
    for x in lists:  # int64 -> uint32: -1 becomes 0xFFFFFFFF, keyed like any other word
        keys[:, col:col + x.shape[1]] = x
        col += x.shape[1]
    _key(keys, a, b)
    drop_none = _key(np.full((len(query), 1), _NONE), a, b)
    drop_self = _key(query.astype(np.uint32)[:, None], a, b)
    keys.sort(axis=1)
    keep = (keys != drop_none) & (keys != drop_self)
    keep[:, 1:] &= keys[:, 1:] != keys[:, :-1]
    size = keep.sum(axis=1)
    keys |= keep.view(np.uint8).astype(np.uint32) - np.uint32(1)  # dropped -> all ones
    keys.sort(axis=1)
    return keys, size


def _negatives(keys, size, a, b, query, target, slot, n: int):
    """Each pair's n - 1 sampled negatives and whether they were padded. ``query`` is the
    pair's row in the block, ``slot`` its place in the query's choice order.

    The pair reads the query's pool in key order, cyclically from position
    ``slot * (n - 1) mod size``, skipping its target. The first n positions from there (a
    window) always suffice: the m-th image read (m < size - 1) lies at window offset m, or
    m + 1 once past the target; when the pool has fewer than n - 1 other images, m counts
    modulo their number (the reading goes round again).
    """
    size_p = size[query]
    offset = slot * (n - 1) % size_p
    window = keys[query[:, None], (offset[:, None] + np.arange(n)) % size_p[:, None]]
    is_target = window == _key(target.astype(np.uint32)[:, None], a[query], b[query])
    d = np.where(is_target.any(axis=1), is_target.argmax(axis=1), n)  # the target's window offset
    m = np.arange(n - 1) % np.maximum(size_p - 1, 1)[:, None]
    picked = np.take_along_axis(window, m + (m >= d[:, None]), axis=1)
    ids = _unkey(picked, a[query], b[query]).astype(np.int64)
    return ids, size_p - 1 < n - 1


def _choose(band_ids: list[np.ndarray], quota: list[int]):
    """Targets of a block of queries by the documented rule, vectorised over queries.

    Returns (targets, chooser), both (c, sum(quota)): per query its targets in choice order
    then -1, and the index of the space that chose each.

    A space's next target is its first band hit not yet taken for the query. (A cursor
    that moves past skipped hits would give the same image: everything before it is taken,
    and taken stays taken.) ``avail[s]`` marks, per query, the hits of space s still
    untaken; every choice clears the chosen image in every space's mask.
    """
    c, T = band_ids[0].shape[0], sum(quota)
    targets = np.full((c, T), -1, np.int64)
    chooser = np.zeros((c, T), np.int32)
    count = np.zeros(c, np.intp)
    avail = [b >= 0 for b in band_ids]

    def take(s, rows, avail, ids, active=None):
        """Space s takes its next untaken hit in each row of ``rows`` (where ``active``)."""
        pos = avail[s].argmax(axis=1)
        local = np.arange(len(rows))
        has = avail[s][local, pos]
        if active is not None:
            has &= active
        if not has.any():
            return has
        t = np.where(has, ids[s][local, pos], -1)  # -1 never clears anything: padding is not available
        r = rows[has]
        targets[r, count[r]] = t[has]
        chooser[r, count[r]] = s
        count[r] += 1
        for u in range(len(ids)):
            avail[u] &= ids[u] != t[:, None]
        return has

    rows = np.arange(c)
    for s, q in enumerate(quota):  # pass 1: quotas, spaces in mapping order
        for _ in range(q):
            take(s, rows, avail, band_ids)
    left = T - count  # pass 2: the shortfall, dealt round-robin to spaces with a quota
    donors = [s for s, q in enumerate(quota) if q > 0]
    rows = np.flatnonzero(left > 0)
    while rows.size:
        sub_avail = [a[rows] for a in avail]
        sub_ids = [b[rows] for b in band_ids]
        sub_left = left[rows]
        took = False
        for s in donors:
            has = take(s, rows, sub_avail, sub_ids, sub_left > 0)
            sub_left -= has
            took |= bool(has.any())
        if not took:  # every donor is exhausted for every row still short
            break
        left[rows] = sub_left
        for a, sa in zip(avail, sub_avail):
            a[rows] = sa
        rows = rows[sub_left > 0]
    return targets, chooser


def _select_block(nb: list[SpaceNeighbours], first: int, last: int, quota: list[int], n: int,
                  base: np.uint64) -> dict:
    c, S = last - first, len(nb)
    band_ids = [x.band_ids[first:last] for x in nb]
    targets, chooser = _choose(band_ids, quota)
    valid = targets >= 0
    # every space's band hits: does it list the pair's target, with which score
    found = np.empty((S, c, targets.shape[1]), bool)
    scores = np.empty((S, c, targets.shape[1]), np.float32)
    rows = np.arange(c)[:, None]
    for u in range(S):
        match = band_ids[u][:, None, :] == targets[:, :, None]
        found[u] = match.any(axis=2) & valid
        scores[u] = nb[u].band_scores[first:last][rows, match.argmax(axis=2)]
    local, slot = np.nonzero(valid)  # row-major: by query, then choice order
    target = targets[local, slot]
    by = chooser[local, slot]
    found = found[:, local, slot].T
    scores = scores[:, local, slot].T
    # spaces of a pair: the chooser first, then the other finders in mapping order
    order_key = np.where(found, np.where(np.arange(S) == by[:, None], -1, np.arange(S)), S)
    order = np.argsort(order_key, axis=1, kind="stable")
    n_spaces = found.sum(axis=1)
    listed = np.arange(S) < n_spaces[:, None]
    out = {"query": local + first, "target": target, "chooser": by, "n_spaces": n_spaces.astype(np.int32),
           "spaces": order[listed].astype(np.int32), "scores": np.take_along_axis(scores, order, axis=1)[listed],
           "found": found.sum(axis=0)}
    if n == 1:
        out["negatives"] = out["query"][:, None]
        out["padded"] = 0
        return out
    query = np.arange(first, last)
    a, b = _query_keys(base, query)
    keys, size = _pool_keys([x.band_ids[first:last] for x in nb] + [x.retrieved_ids[first:last] for x in nb],
                            a, b, query)
    picked, padded = _negatives(keys, size, a, b, local, target, slot, n)
    alone = size[local] == 1  # the target is the whole pool: repeat the query
    picked[alone] = (local + first)[alone, None]
    out["negatives"] = np.concatenate([(local + first)[:, None], picked], axis=1)
    out["padded"] = int(padded.sum())
    return out


def _progress(iterable, show: bool, **kwargs):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _list_array(lengths: np.ndarray, values, value_type) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} list entries do not fit a pyarrow list column; "
                         "mine fewer images at once")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, value_type))


def _select(nb: dict[str, SpaceNeighbours], quota: dict[str, int], hard_negatives: int, seed,
            show: bool, extra_settings: dict | None = None) -> MiningResult:
    """select_pairs on checked arguments; ``extra_settings`` join the table metadata."""
    names = list(nb)
    spaces = list(nb.values())
    M = spaces[0].band_ids.shape[0]
    if M >= 2**32 - 1:  # the sampler keys ids as 32-bit words, 0xFFFFFFFF standing for -1
        raise ValueError(f"{M} images: select at most 4,294,967,294 at once")
    base = _seed_word(seed)
    quota_list = [quota[s] for s in names]
    blocks = []
    bar = _progress(None, show, desc="pairs", unit="query", total=M) if show else None
    for first in range(0, M, SELECT_BLOCK):
        last = min(M, first + SELECT_BLOCK)
        blocks.append(_select_block(spaces, first, last, quota_list, hard_negatives, base))
        if bar is not None:
            bar.update(last - first)
    if bar is not None:
        bar.close()

    def cat(key, dtype, width=None):  # the blocks' parts are dropped as they are joined
        parts = [b.pop(key) for b in blocks]
        if not parts:
            return np.empty((0,) if width is None else (0, width), dtype)
        return np.concatenate(parts).astype(dtype, copy=False)

    query, target = cat("query", np.int64), cat("target", np.int64)
    chooser, n_spaces = cat("chooser", np.int32), cat("n_spaces", np.int32)
    negatives = cat("negatives", np.int64, hard_negatives)
    P = len(query)
    has_pair = np.zeros(M, bool)
    has_pair[query] = True
    chosen = np.bincount(chooser, minlength=len(names))
    found = sum((b["found"] for b in blocks), np.zeros(len(names), np.int64))
    multi = int((n_spaces > 1).sum())
    padded = sum(b["padded"] for b in blocks)
    without_pair = int(M - has_pair.sum())

    space_names = pa.array(names, pa.string()).take(pa.array(cat("spaces", np.int32)))
    bands = {s: None if x.band is None else list(x.band) for s, x in nb.items()}
    common = list(bands.values())
    widths = {s: [x.band_ids.shape[1], x.retrieved_ids.shape[1]] for s, x in nb.items()}
    all_widths = {w for pair in widths.values() for w in pair}
    settings = {"spaces": names,
                "band": common[0] if all(b == common[0] for b in common) else None,
                "bands": bands,
                "k": all_widths.pop() if len(all_widths) == 1 else None,
                "k_per_space": widths,
                "quotas": quota, "hard_negatives": hard_negatives,
                "seed": int(seed) if isinstance(seed, numbers.Integral) else repr(seed),
                **(extra_settings or {})}
    table = pa.Table.from_arrays(
        [pa.array(query), pa.array(target),
         _list_array(n_spaces, space_names, pa.string()),
         _list_array(n_spaces, cat("scores", np.float32), pa.float32()),
         _list_array(np.full(P, hard_negatives), negatives.ravel(), pa.int64())],
        schema=SCHEMA.with_metadata({"megapairs.mining": json.dumps(settings)}),
    )
    stats = {
        "images": M,
        "pairs": P,
        "queries_without_pair": without_pair,
        "pairs_per_space": {s: int(chosen[i]) for i, s in enumerate(names)},
        "found_per_space": {s: int(found[i]) for i, s in enumerate(names)},
        "multi_space_pairs": multi,
        "band_occupancy": {s: float((x.band_ids >= 0).sum(axis=1).mean()) if M else 0.0
                           for s, x in nb.items()},
        "band_full": {s: float((x.band_ids[:, -1] >= 0).mean()) if M else 0.0 for s, x in nb.items()},
        "padded_pairs": padded,
    }
    logger.info("mining: %d images, %d pairs, %d queries without a pair, %d pairs found by several spaces, "
                "%d pairs with padded negatives", M, P, without_pair, multi, padded)
    for s, x in nb.items():
        logger.info("mining: space %r chose %d pairs, found %d; %.2f band hits per query (k=%d, %.1f%% full)",
                    s, stats["pairs_per_space"][s], stats["found_per_space"][s], stats["band_occupancy"][s],
                    x.band_ids.shape[1], 100 * stats["band_full"][s])
    return MiningResult(table, stats)


def _knn_neighbours(E: np.ndarray, band: tuple[float, float], k: int, num_threads) -> SpaceNeighbours:
    M = E.shape[0]
    if M == 0:  # nothing to join; keep the kernels out of the empty case
        return SpaceNeighbours(np.empty((0, k), np.float32), np.empty((0, k), np.int64),
                               np.empty((0, k), np.int64), band)
    scores, ids = knn.band(E, E, band[0], band[1], k, exclude_self=True, num_threads=num_threads)
    retrieved = knn.search(E, E, k, exclude_self=True, num_threads=num_threads)[1]
    return SpaceNeighbours(scores, ids, retrieved, band)


# --------------------------------------------------------------------------- public API


def space_neighbours(
    embeddings: np.ndarray,
    band: tuple[float, float] = (0.8, 0.96),
    k: int = 50,
    normalize: bool = True,
    num_threads: int | None = None,
) -> SpaceNeighbours:
    """The kNN results of one space that :func:`select_pairs` needs.

    ``knn.band(E, E, lo, hi, k, exclude_self=True)`` (the pair candidates) and
    ``knn.search(E, E, k, exclude_self=True)`` (the retrieved set), on the rows of
    ``embeddings`` L2-normalised first unless ``normalize`` is False. This is what
    :func:`mine_pairs` computes for each space given as embeddings; computing it yourself
    lets a pipeline store it and re-run the selection without the joins.

    Raises
    ------
    ValueError
        As :func:`mine_pairs` does for one space's embeddings, ``band`` or ``k``.
    """
    band = _check_band(band)
    k = _positive_int(k, "k")
    _args.threads(num_threads)
    return _knn_neighbours(_check_embeddings(embeddings, "space_neighbours", normalize), band, k, num_threads)


def select_pairs(
    neighbours: Mapping[str, SpaceNeighbours | tuple],
    targets_per_query: int = 3,
    quotas: Mapping[str, int] | None = None,
    hard_negatives: int = 5,
    seed: int = 0,
    progress: bool | None = None,
) -> MiningResult:
    """Choose targets and hard negatives from each space's neighbour lists.

    The selection step of :func:`mine_pairs`, on kNN results computed before (see
    :class:`SpaceNeighbours` and :func:`space_neighbours`). It runs vectorised over blocks
    of queries; the result depends only on the lists, the quotas, ``hard_negatives`` and
    ``seed``.

    **Targets.** Each space has a quota of targets per query. By default
    ``targets_per_query`` is split evenly across the spaces, the remainder going one each
    to the first spaces in mapping order (7 over 3 spaces: 3, 2, 2); ``quotas`` replaces
    that split (spaces it leaves out get 0, and the number of targets per query becomes
    the sum). Pass 1: spaces take targets in mapping order, each walking its own band hits
    in rank order and skipping images already taken for this query, until its quota is met,
    so a pair appears once even when several spaces find it. Pass 2: if spaces ran out of
    hits, the missing slots are dealt round-robin: in each round, every space with a
    non-zero quota, in mapping order, takes its next untaken band hit, until the slots are
    used or every list is exhausted. A space with quota 0 never chooses a target, but it
    still annotates pairs and feeds the hard-negative pool.

    **Spaces and scores.** A pair's ``spaces`` lists every space whose band hits for the
    query contain the target: first the space that chose it, then the others in mapping
    order. ``scores`` holds each of those spaces' band score, aligned with ``spaces``.

    **Hard negatives.** Each pair gets exactly ``hard_negatives`` images. The first is the
    query image itself (mandatory: MegaPairs' ablation shows the model otherwise learns to
    return the query). The rest are drawn uniformly, without replacement, from the query's
    pool: the distinct images of its band and retrieved lists in every space, minus the
    query and this pair's target (other targets of the same query may be drawn, the
    paper's {I_tj | tj != ti}). The draw is a pure function of (lists, seed), from a
    counter-based generator: each pool image x of query q gets the key
    ``L(L(x + a) ^ b)`` on 32-bit words, where (a, b) are the two halves of SplitMix64's
    output for (seed, q) and L is the lowbias32 bijection (``docs/mining.md`` gives every
    constant), so distinct images never tie; the pool is put in key order, and the pair
    chosen j-th for the query (j = 0, 1, ...) reads ``hard_negatives - 1`` images
    cyclically from position ``j * (hard_negatives - 1) mod len(pool)`` of that order,
    skipping its target. So each pair's sample is uniform, and one query's pairs read
    consecutive stretches of the same random order (overlapping little). If the pool holds fewer than
    ``hard_negatives - 1`` images besides the target, the reading goes round again
    (padding by cycling through the negatives already drawn), or repeats the query when
    there are none; ``stats["padded_pairs"]`` counts such pairs.

    Parameters
    ----------
    neighbours : mapping of str to SpaceNeighbours or (band_scores, band_ids, retrieved_ids)
        Each space's lists over the same M query images, rows aligned; mapping order is
        the order of the target rules. List widths may differ between spaces.
    targets_per_query, quotas, hard_negatives, seed, progress
        As in :func:`mine_pairs`; ``seed`` is an int (or sequence of ints) as
        ``np.random.SeedSequence`` takes it.

    Returns
    -------
    MiningResult
        As :func:`mine_pairs` returns. The metadata records spaces, band (the common one
        or null), bands (each space's :attr:`SpaceNeighbours.band`), k (the common list
        width or null), k_per_space ([band width, retrieved width]), quotas,
        hard_negatives and seed.

    Raises
    ------
    ValueError
        For no spaces, lists that are not 2-D integer (ids) or float (scores) arrays, band
        scores and ids of different shapes, row counts that differ between spaces, ids
        outside -1..M-1, band hits after padding or a query listed as its own band hit
        (each naming the space and row), bad quotas, ``targets_per_query`` or
        ``hard_negatives`` below 1, or a seed SeedSequence refuses.
    """
    if not isinstance(neighbours, Mapping):
        raise TypeError("neighbours must be a mapping of space name -> SpaceNeighbours, "
                        f"got {type(neighbours).__name__}")
    if len(neighbours) == 0:
        raise ValueError("neighbours must be a non-empty mapping of space name -> SpaceNeighbours")
    hard_negatives = _positive_int(hard_negatives, "hard_negatives")
    nb = _check_neighbours(neighbours)
    quota = _quotas(list(nb), targets_per_query, quotas)
    M = next(iter(nb.values())).band_ids.shape[0]
    show = M > PROGRESS_MIN_IMAGES if progress is None else bool(progress)
    return _select(nb, quota, hard_negatives, seed, show)


def mine_pairs(
    spaces: Mapping[str, np.ndarray | SpaceNeighbours],
    band: tuple[float, float] | Mapping[str, tuple[float, float]] = (0.8, 0.96),
    k: int = 50,
    targets_per_query: int = 3,
    quotas: Mapping[str, int] | None = None,
    hard_negatives: int = 5,
    seed: int = 0,
    normalize: bool = True,
    num_threads: int | None = None,
    progress: bool | None = None,
) -> MiningResult:
    """Mine (query, target) image pairs from several similarity spaces, with hard negatives.

    For each space given as embeddings, the rows are L2-normalised and self-joined twice
    (:func:`space_neighbours`): the band join ``knn.band(E, E, lo, hi, k,
    exclude_self=True)`` lists, per query image, up to ``k`` other images with
    ``lo < cosine < hi`` (the pair candidates), and ``knn.search(E, E, k,
    exclude_self=True)`` lists its ``k`` nearest other images. A space given as a
    :class:`SpaceNeighbours` is used as it is (its kNN was run before, e.g. cached on disk).
    Then :func:`select_pairs` chooses the targets and negatives.

    **Targets.** Each space has a quota of targets per query (``targets_per_query`` split
    evenly in mapping order, or ``quotas``). Pass 1: spaces take targets in mapping order,
    each walking its band hits in rank order (descending score) and skipping images already
    taken for the query, so a pair appears once even when several spaces find it. Pass 2:
    slots left by spaces that ran out are dealt round-robin to the spaces with a non-zero
    quota, in mapping order, each taking its next untaken band hit. A query is never its
    own target (``exclude_self``). Details in :func:`select_pairs`.

    **Spaces and scores.** A pair's ``spaces`` lists every space whose band hits for the
    query contain the target, the chooser first, then mapping order; ``scores`` holds each
    of those spaces' cosine similarity, aligned with ``spaces``.

    **Hard negatives.** Each pair gets exactly ``hard_negatives`` images: the query image
    itself, then images drawn uniformly without replacement from the query's retrieved set
    (the union over all spaces of its ``search`` and ``band`` lists, minus the query and the
    pair's target), with a counter-based generator keyed by (seed, query), so the same
    inputs and seed give the same table; padded cyclically when the set is too small
    (``stats["padded_pairs"]``). The exact stream is in :func:`select_pairs`.

    Parameters
    ----------
    spaces : mapping of str to (M, d_s) float arrays or SpaceNeighbours
        Embeddings of the same M images in each similarity space (e.g. ``"clip_image"``,
        ``"dino"``, ``"caption"``), rows aligned across spaces, row i = image i; or, for
        any space, its precomputed neighbour lists.
    band : (lo, hi) or mapping of str to (lo, hi)
        Strict similarity band for pair candidates; MegaPairs uses (0.8, 0.96) to drop weak
        links and near-duplicates. One pair for every space, or a mapping giving each space
        its own band (it must name every space given as embeddings, and no other). Spaces
        given as SpaceNeighbours keep the band they were computed with.
    k : int
        Neighbours per query for both the band and the search join.
    targets_per_query : int
        Targets per query image, split across spaces when ``quotas`` is None.
    quotas : mapping of str to int, optional
        Targets per query for each named space (non-negative, not all 0).
    hard_negatives : int
        Length of each negative list, query image included; at least 1.
    seed : int
        Seed of the negative sampler (an int or sequence of ints, as
        ``np.random.SeedSequence`` takes it).
    normalize : bool
        L2-normalise each space's rows first (an all-zero row is an error). With False the
        arrays go to the kNN calls as given, and scores are raw inner products.
    num_threads : int, optional
        Threads for the kNN calls; default :func:`megapairs.get_num_threads`.
    progress : bool, optional
        Show tqdm bars (one step per space, then per block of queries); None shows them
        when M > 10,000.

    Returns
    -------
    MiningResult
        ``.table`` as described in :class:`MiningResult`, its metadata as in
        :func:`select_pairs` plus ``normalize``; ``.stats`` with ``images``,
        ``pairs``, ``queries_without_pair``, ``pairs_per_space`` (pairs each space chose),
        ``found_per_space`` (pairs whose ``spaces`` include it), ``multi_space_pairs``,
        ``band_occupancy`` (mean band hits per query, at most k), ``band_full`` (fraction
        of queries with k band hits: raise k if this is large) and ``padded_pairs``. The
        stats are also logged at INFO level on the ``"megapairs"`` logger.

    Raises
    ------
    ValueError
        For no spaces, a non-2-D or non-float space, row counts that differ between spaces,
        non-finite values or (with ``normalize``) an all-zero row (each naming the space),
        ``lo >= hi``, a band mapping with unknown or missing spaces (naming them), ``k``,
        ``targets_per_query`` or ``hard_negatives`` below 1, bad quotas, or precomputed
        lists that :func:`select_pairs` refuses.
    """
    if not isinstance(spaces, Mapping):
        raise TypeError("spaces must be a mapping of space name -> (M, d) embeddings, "
                        f"got {type(spaces).__name__}")
    if len(spaces) == 0:
        raise ValueError("spaces must be a non-empty mapping of space name -> (M, d) embeddings")
    names = [_check_name(name) for name in spaces]
    given = [n for n in names if isinstance(spaces[n], SpaceNeighbours)]
    searched = [n for n in names if n not in given]
    bands = _check_bands(band, searched, given)
    k = _positive_int(k, "k")
    hard_negatives = _positive_int(hard_negatives, "hard_negatives")
    _args.threads(num_threads)
    _seed_word(seed)
    precomputed = _check_neighbours({n: spaces[n] for n in given})
    embeddings = _check_spaces({n: spaces[n] for n in searched}, normalize)
    rows = {n: a.shape[0] for n, a in embeddings.items()}
    rows |= {n: x.band_ids.shape[0] for n, x in precomputed.items()}
    if len(set(rows.values())) > 1:
        first = names[0]
        other = next(n for n in names if rows[n] != rows[first])
        raise ValueError(f"space {other!r} has {rows[other]} rows but space {first!r} has {rows[first]}: "
                         "every space must hold the same images, rows aligned")
    quota = _quotas(names, targets_per_query, quotas)
    M = rows[names[0]]
    show = M > PROGRESS_MIN_IMAGES if progress is None else bool(progress)

    nb = {}
    for name in _progress(names, show, desc="kNN per space", unit="space"):
        nb[name] = precomputed[name] if name in precomputed else \
            _knn_neighbours(embeddings[name], bands[name], k, num_threads)
    return _select(nb, quota, hard_negatives, seed, show, {"normalize": bool(normalize)})


def to_records(table: pa.Table | MiningResult, keys: Sequence[str]) -> list[dict]:
    """MegaPairs training records from a mined table.

    Parameters
    ----------
    table : pyarrow.Table or MiningResult
        The output of :func:`mine_pairs` (or a Parquet round trip of it).
    keys : sequence of str, length >= M
        ``keys[i]`` names image i, typically its relative file path as in the released
        MegaPairs data. Every key must be a safe relative path
        (:func:`megapairs.dataset.check_member_name`: not empty, not absolute, no ``..``
        component, no backslash or NUL) and keys must be distinct (``./a.jpg`` is
        ``a.jpg``); the records keep the keys as given.

    Returns
    -------
    list of dict
        One ``{"q_img": keys[query], "t_img": keys[target], "hns": [keys[h], ...]}`` per row,
        in table order; ``hns[0]`` is the query image. The ``q_text`` field (the
        instructions) is not set here: the annotation step adds it.

    Raises
    ------
    ValueError
        For a table without the mined columns, an index outside ``keys``, or an unsafe or
        repeated key (naming the key and its index). TypeError for a key that is not a str.
    """
    if isinstance(table, MiningResult):
        table = table.table
    missing = [c for c in ("query", "target", "hard_negatives") if c not in table.column_names]
    if missing:
        raise ValueError(f"table has no column {missing[0]!r}; expected the output of mine_pairs")
    keys = list(keys)
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        clean = check_member_name(key, f"keys[{i}]")
        j = seen.setdefault(clean, i)
        if j != i:
            raise ValueError(f"keys[{i}] = {key!r} repeats keys[{j}] = {keys[j]!r}: each image needs its "
                             "own key")
    q = table["query"].to_numpy()
    t = table["target"].to_numpy()
    hns = table["hard_negatives"].combine_chunks()
    if isinstance(hns, pa.ChunkedArray):  # a table with no rows has no chunks
        hns = pa.array([], pa.list_(pa.int64()))
    flat = hns.flatten().to_numpy()
    offsets = hns.offsets.to_numpy()
    for name, ids in (("query", q), ("target", t), ("hard_negatives", flat)):
        if len(ids) and (ids.min() < 0 or ids.max() >= len(keys)):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise ValueError(f"{name} holds image {int(bad)} but there are {len(keys)} keys")
    flat_keys = [keys[h] for h in flat.tolist()]
    return [{"q_img": keys[qi], "t_img": keys[ti], "hns": flat_keys[offsets[r]:offsets[r + 1]]}
            for r, (qi, ti) in enumerate(zip(q.tolist(), t.tolist()))]


def modality_aware_negatives(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    cand_modality: Sequence[str],
    positives: Sequence[Iterable[int] | int],
    want_modality: str | Sequence[str],
    k: int = 50,
    rank_threshold: int = 45,
    n: int | None = None,
    num_threads: int | None = None,
) -> list[np.ndarray]:
    """Modality-aware hard negatives for a mixed text/image candidate pool (MM-Embed, §4).

    Definition. Retrieve each query's top ``k`` candidates by inner product (rank 1 is the
    best). Let ``r+`` be the rank of the query's best-ranked positive, or ``k + 1`` when
    no positive is retrieved. A retrieved candidate that is not a positive is a negative
    when either

    1. its modality differs from the query's wanted modality and it ranks above the
       positive (rank < ``r+``): the retriever preferred the wrong kind of item; or
    2. its modality is the wanted one and it ranks below ``rank_threshold``
       (rank > ``rank_threshold``): right kind, wrong content. The ranks up to the threshold
       are skipped because unlabelled true matches collect there.

    MM-Embed uses k = 50 and rank_threshold = 45. This definition is reconstructed from
    secondary descriptions of the paper (its §4 text was not available to check against).
    Modality strings are compared exactly (``"image,text"`` is not ``"image"``).

    Parameters
    ----------
    query_emb : (Q, d) float array
    cand_emb : (C, d) float array
        Embeddings from the retriever being mined (MM-Embed's first-stage model); pass
        L2-normalised rows for cosine ranking. Ties rank the lower index first.
    cand_modality : sequence of C str
        Each candidate's modality, e.g. ``"text"``, ``"image"``, ``"image,text"``.
    positives : sequence of Q ints or iterables of ints
        The labelled positive candidate(s) of each query; never returned as negatives.
    want_modality : str or sequence of Q str
        The modality each query's task asks for.
    k : int
        Candidates retrieved per query.
    rank_threshold : int
        Right-modality negatives must rank strictly below this (0 <= rank_threshold <= k).
    n : int, optional
        Keep at most the first n negatives of each query; default all.
    num_threads : int, optional
        Threads for the search.

    Returns
    -------
    list of Q int64 arrays
        Each query's negatives (candidate indices), in rank order. The result is a pure
        function of the inputs: nothing is sampled.
    """
    k = _positive_int(k, "k")
    if not isinstance(rank_threshold, numbers.Integral) or isinstance(rank_threshold, bool) \
            or not 0 <= rank_threshold <= k:
        raise ValueError(f"rank_threshold must be an int in [0, k={k}], got {rank_threshold!r}")
    if n is not None:
        n = _positive_int(n, "n")
    cand = np.asarray(cand_emb)
    C = cand.shape[0] if cand.ndim == 2 else None
    _, ids = knn.search(query_emb, cand_emb, k, num_threads=num_threads)
    Q = ids.shape[0]
    modality = [str(m) for m in cand_modality]
    if len(modality) != C:
        raise ValueError(f"cand_modality has {len(modality)} entries but there are {C} candidates")
    want = [want_modality] * Q if isinstance(want_modality, str) else [str(m) for m in want_modality]
    if len(want) != Q:
        raise ValueError(f"want_modality has {len(want)} entries but there are {Q} queries")
    if len(positives) != Q:
        raise ValueError(f"positives has {len(positives)} entries but there are {Q} queries")

    out = []
    for q in range(Q):
        given = positives[q]
        pos = {int(given)} if isinstance(given, numbers.Integral) else {int(p) for p in given}
        bad = [p for p in pos if not 0 <= p < C]
        if bad:
            raise ValueError(f"positives[{q}] holds candidate {bad[0]} but there are {C} candidates")
        row = [int(c) for c in ids[q] if c >= 0]
        ranks = [r for r, c in enumerate(row, start=1) if c in pos]
        pos_rank = ranks[0] if ranks else k + 1
        negatives = [c for r, c in enumerate(row, start=1) if c not in pos and (
            (modality[c] != want[q] and r < pos_rank) or (modality[c] == want[q] and r > rank_threshold))]
        out.append(np.asarray(negatives[:n] if n is not None else negatives, dtype=np.int64))
    return out
