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
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from . import _args, knn
from ._mining_checks import (
    _check_band,
    _check_bands,
    _check_embeddings,
    _check_name,
    _check_neighbours,
    _check_spaces,
    _positive_int,
    _quotas,
    _seed_word,
)
from ._mining_kernel import _select_block
from ._mining_types import SCHEMA, MiningResult, SpaceNeighbours
from .dataset import check_member_name

__all__ = ["MiningResult", "SpaceNeighbours", "mine_pairs", "modality_aware_negatives", "select_pairs",
           "space_neighbours", "to_records"]

logger = logging.getLogger("megapairs")

# Above this many images, progress=None shows tqdm bars.
PROGRESS_MIN_IMAGES = 10_000

# Queries per block of the vectorised selection: its largest temporaries (a block's pool
# keys, 4 bytes x the sum of all list widths per query) stay a few MB, in cache.
SELECT_BLOCK = 4096


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


# Imported last so the reference page (members in source order) keeps it after the MegaPairs
# functions: MM-Embed's negatives are a separate method (_mining_modality).
from ._mining_modality import modality_aware_negatives
