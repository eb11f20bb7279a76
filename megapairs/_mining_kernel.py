"""The selection kernel of pair mining, vectorised over a block of queries: the
counter-based keys of the hard-negative sampler (SplitMix64, lowbias32), each query's pool
in key order, the negatives read from it, and the documented target rule
(:func:`megapairs.mining.select_pairs` states the rules; ``docs/mining.md`` gives every
constant). :mod:`megapairs.mining` runs it block by block and assembles the table.
"""

from __future__ import annotations

import numpy as np

from ._mining_types import SpaceNeighbours

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
