"""Heterogeneous image-pair mining with hard negatives (MegaPairs §3.1).

>>> import megapairs as mp
>>> spaces = {"clip_image": clip_emb, "dino": dino_emb, "caption": caption_emb}  # doctest: +SKIP
>>> result = mp.mining.mine_pairs(spaces, band=(0.8, 0.96), k=50)                 # doctest: +SKIP
>>> result.table.num_rows, result.stats["queries_without_pair"]                  # doctest: +SKIP
>>> records = mp.mining.to_records(result.table, image_paths)                    # doctest: +SKIP

Every space holds one embedding per image, rows aligned across spaces. Each space is
self-joined with :func:`megapairs.knn.band` (the pair candidates) and
:func:`megapairs.knn.search` (the retrieved set the hard negatives come from); this module
only composes those results. The rules (quotas, de-duplication, negatives, padding) are
stated in :func:`mine_pairs` and in ``docs/mining.md``.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import _args, knn

__all__ = ["MiningResult", "mine_pairs", "modality_aware_negatives", "to_records"]

logger = logging.getLogger("megapairs")

# Above this many images, progress=None shows tqdm bars.
PROGRESS_MIN_IMAGES = 10_000

SCHEMA = pa.schema([
    ("query", pa.int64()),
    ("target", pa.int64()),
    ("spaces", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("hard_negatives", pa.list_(pa.int64())),
])


@dataclass
class MiningResult:
    """What :func:`mine_pairs` returns.

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


# --------------------------------------------------------------------------- validation


def _positive_int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_band(band) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in band)
    except (TypeError, ValueError):
        raise ValueError(f"band must be a pair of numbers (lo, hi), got {band!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"band needs lo < hi, got lo={lo!r}, hi={hi!r}")
    return lo, hi


def _check_spaces(spaces, normalize: bool) -> dict[str, np.ndarray]:
    """The embeddings as the kNN calls take them: 2-D float, rows aligned, finite, and
    (when ``normalize``) divided by their L2 norm, stored as float32."""
    if not isinstance(spaces, Mapping):
        raise TypeError("spaces must be a mapping of space name -> (M, d) embeddings, "
                        f"got {type(spaces).__name__}")
    if len(spaces) == 0:
        raise ValueError("spaces must be a non-empty mapping of space name -> (M, d) embeddings")
    out, rows, first = {}, None, None
    for name, emb in spaces.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"space names must be non-empty strings, got {name!r}")
        a = np.asarray(emb)
        if a.ndim != 2:
            raise ValueError(f"space {name!r}: embeddings must be 2-D (M, d), got shape {a.shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"space {name!r}: embeddings must be a float array, got dtype {a.dtype}")
        if a.shape[1] == 0:
            raise ValueError(f"space {name!r}: embeddings of dimension 0")
        if rows is None:
            rows, first = a.shape[0], name
        elif a.shape[0] != rows:
            raise ValueError(f"space {name!r} has {a.shape[0]} rows but space {first!r} has {rows}: "
                             "every space must embed the same images, rows aligned")
        finite = np.isfinite(a).all(axis=1)
        if not finite.all():
            raise ValueError(f"space {name!r}: row {int(np.argmin(finite))} holds a non-finite value")
        if normalize:
            a = a.astype(np.float32, copy=False)
            norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
            if (norms == 0).any():
                raise ValueError(f"space {name!r}: row {int(np.argmin(norms))} is all zeros and cannot be "
                                 "L2-normalised")
            a = (a / norms[:, None]).astype(np.float32)
        out[name] = a
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


# --------------------------------------------------------------------------- per-query rules


def _choose_targets(hit_lists: dict[str, list[int]], quotas: dict[str, int]) -> list[tuple[int, str]]:
    """The targets of one query as (image, space that chose it), in choice order.

    Pass 1: each space, in mapping order, takes its band hits in rank order, skipping images
    an earlier space already took, until it has ``quotas[space]`` new targets. Pass 2: the
    slots left over by spaces that ran out are dealt round-robin, one per round to each space
    with a non-zero quota (mapping order) that still has an untaken hit.
    """
    taken: set[int] = set()
    chosen: list[tuple[int, str]] = []
    cursor = dict.fromkeys(hit_lists, 0)

    def next_untaken(space):
        hits, i = hit_lists[space], cursor[space]
        while i < len(hits) and hits[i] in taken:
            i += 1
        cursor[space] = i + 1
        return hits[i] if i < len(hits) else None

    leftover = 0
    for space, quota in quotas.items():
        for _ in range(quota):
            t = next_untaken(space)
            if t is None:
                leftover += 1
                continue
            taken.add(t)
            chosen.append((t, space))
    donors = [space for space, quota in quotas.items() if quota > 0]
    while leftover and donors:
        for space in list(donors):
            if not leftover:
                break
            t = next_untaken(space)
            if t is None:
                donors.remove(space)
                continue
            taken.add(t)
            chosen.append((t, space))
            leftover -= 1
    return chosen


def _sample_negatives(query: int, target: int, pool: np.ndarray, n: int, rng: np.random.Generator):
    """``[query] + n - 1`` others from ``pool`` (sorted, excludes the query) minus the target,
    drawn uniformly without replacement; padded cyclically when the pool is too small.
    Returns (list, padded)."""
    want = n - 1
    if want == 0:
        return [query], False
    others = pool[pool != target]
    if len(others) >= want:
        return [query, *rng.choice(others, size=want, replace=False).tolist()], False
    picked = rng.permutation(others).tolist()
    cycle = picked or [query]
    return [query, *picked, *(cycle[j % len(cycle)] for j in range(want - len(picked)))], True


def _progress(iterable, show: bool, **kwargs):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _list_array(offsets: array, values, value_type) -> pa.Array:
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} list entries do not fit a pyarrow list column; "
                         "mine fewer images at once")
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, np.int32)), pa.array(values, value_type))


# --------------------------------------------------------------------------- public API


def mine_pairs(
    spaces: Mapping[str, np.ndarray],
    band: tuple[float, float] = (0.8, 0.96),
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

    For each space, the embeddings are L2-normalised and self-joined twice: the band join
    ``knn.band(E, E, lo, hi, k, exclude_self=True)`` lists, per query image, up to ``k``
    other images with ``lo < cosine < hi`` (the pair candidates), and
    ``knn.search(E, E, k, exclude_self=True)`` lists its ``k`` nearest other images.

    **Targets.** Each space has a quota of targets per query. By default
    ``targets_per_query`` is split evenly across the spaces, the remainder going one each
    to the first spaces in mapping order (7 over 3 spaces: 3, 2, 2); ``quotas`` replaces
    that split (spaces it leaves out get 0, and the number of targets per query becomes
    the sum). Spaces take targets in mapping order, each walking its own band hits in rank
    order (descending score) and skipping images already taken for this query, so a pair
    appears once even when several spaces find it. If a space runs out of hits before its
    quota is met, the missing slots are dealt round-robin to the spaces with a non-zero
    quota, in mapping order, each taking its next untaken band hit, until the slots are
    used or every list is exhausted. A space with quota 0 never chooses a target, but it
    still annotates pairs and feeds the hard-negative pool. A query is never its own
    target (``exclude_self``).

    **Spaces and scores.** A pair's ``spaces`` lists every space whose band hits for the
    query contain the target: first the space that chose it, then the others in mapping
    order. ``scores`` holds each of those spaces' cosine similarity, aligned with ``spaces``.

    **Hard negatives.** Each pair gets exactly ``hard_negatives`` images. The first is the
    query image itself (mandatory: MegaPairs' ablation shows the model otherwise learns to
    return the query). The rest are drawn uniformly, without replacement, from the query's
    retrieved set, meaning the union over all spaces of its ``search`` and ``band`` lists,
    minus the query and this pair's target. Other targets of the same query may be drawn
    (the paper's {I_tj | tj != ti}). Sampling rather than taking the top-ranked ones keeps
    negatives from all spaces and all ranks, instead of mostly the near-duplicates at the top
    of one space. One ``np.random.default_rng(seed)`` stream is consumed pair by pair, in table
    order, so the same inputs and seed give the same table. If the pool is too small, the
    list is padded by cycling through the negatives already drawn (or repeating the query
    when none were), and ``stats["padded_pairs"]`` counts such pairs.

    Parameters
    ----------
    spaces : mapping of str to (M, d_s) float arrays
        Embeddings of the same M images in each similarity space (e.g. ``"clip_image"``,
        ``"dino"``, ``"caption"``), rows aligned across spaces. Row i is image i.
    band : (lo, hi)
        Strict similarity band for pair candidates; MegaPairs uses (0.8, 0.96) to drop weak
        links and near-duplicates. One band for every space.
    k : int
        Neighbours per query for both the band and the search join.
    targets_per_query : int
        Targets per query image, split across spaces when ``quotas`` is None.
    quotas : mapping of str to int, optional
        Targets per query for each named space (non-negative, not all 0).
    hard_negatives : int
        Length of each negative list, query image included; at least 1.
    seed : int
        Seed of the negative sampler.
    normalize : bool
        L2-normalise each space's rows first (an all-zero row is an error). With False the
        arrays go to the kNN calls as given, and scores are raw inner products.
    num_threads : int, optional
        Threads for the kNN calls; default :func:`megapairs.get_num_threads`.
    progress : bool, optional
        Show tqdm bars (one step per space, then per query); None shows them when
        M > 10,000.

    Returns
    -------
    MiningResult
        ``.table`` as described in :class:`MiningResult`; ``.stats`` with ``images``,
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
        ``lo >= hi``, ``k``, ``targets_per_query`` or ``hard_negatives`` below 1, or bad quotas.
    """
    lo, hi = _check_band(band)
    k = _positive_int(k, "k")
    hard_negatives = _positive_int(hard_negatives, "hard_negatives")
    _args.threads(num_threads)
    embeddings = _check_spaces(spaces, normalize)
    names = list(embeddings)
    quota = _quotas(names, targets_per_query, quotas)
    M = next(iter(embeddings.values())).shape[0]
    show = M > PROGRESS_MIN_IMAGES if progress is None else bool(progress)

    band_hits, band_scores, retrieved = {}, {}, {}
    for name in _progress(names, show, desc="kNN per space", unit="space"):
        E = embeddings[name]
        if M == 0:  # nothing to join; keep the kernels out of the empty case
            band_hits[name] = retrieved[name] = np.empty((0, k), np.int64)
            band_scores[name] = np.empty((0, k), np.float32)
            continue
        scores, ids = knn.band(E, E, lo, hi, k, exclude_self=True, num_threads=num_threads)
        band_hits[name], band_scores[name] = ids, scores
        retrieved[name] = knn.search(E, E, k, exclude_self=True, num_threads=num_threads)[1]

    rng = np.random.default_rng(seed)
    # compact typed buffers: at 20 M images, Python int lists would cost several times more
    queries, targets, negative_values = array("q"), array("q"), array("q")
    space_values, score_values = [], array("f")
    space_offsets, negative_offsets = array("q", [0]), array("q", [0])
    chosen_by = dict.fromkeys(names, 0)
    found_by = dict.fromkeys(names, 0)
    multi = padded = without_pair = 0
    for i in _progress(range(M), show, desc="pairs", unit="query", total=M):
        hit_lists, hit_scores = {}, {}
        for name in names:
            row = band_hits[name][i]
            n = int(np.count_nonzero(row >= 0))  # valid hits come first, padding (-1) after
            hit_lists[name] = row[:n].tolist()
            hit_scores[name] = dict(zip(hit_lists[name], band_scores[name][i, :n].tolist()))
        chosen = _choose_targets(hit_lists, quota)
        if not chosen:
            without_pair += 1
            continue
        pool = np.unique(np.concatenate([band_hits[s][i] for s in names] + [retrieved[s][i] for s in names]))
        pool = pool[(pool >= 0) & (pool != i)]
        for t, by in chosen:
            found = [by] + [s for s in names if s != by and t in hit_scores[s]]
            negatives, was_padded = _sample_negatives(i, t, pool, hard_negatives, rng)
            queries.append(i)
            targets.append(t)
            space_values += found
            score_values.extend(hit_scores[s][t] for s in found)
            space_offsets.append(len(space_values))
            negative_values.extend(negatives)
            negative_offsets.append(len(negative_values))
            chosen_by[by] += 1
            for s in found:
                found_by[s] += 1
            multi += len(found) > 1
            padded += was_padded

    settings = {"spaces": names, "band": [lo, hi], "k": k, "quotas": quota, "hard_negatives": hard_negatives,
                "seed": int(seed) if isinstance(seed, numbers.Integral) else repr(seed),
                "normalize": bool(normalize)}
    table = pa.Table.from_arrays(
        [pa.array(np.asarray(queries, np.int64)), pa.array(np.asarray(targets, np.int64)),
         _list_array(space_offsets, space_values, pa.string()),
         _list_array(space_offsets, np.asarray(score_values, np.float32), pa.float32()),
         _list_array(negative_offsets, np.asarray(negative_values, np.int64), pa.int64())],
        schema=SCHEMA.with_metadata({"megapairs.mining": json.dumps(settings)}),
    )
    stats = {
        "images": M,
        "pairs": len(queries),
        "queries_without_pair": without_pair,
        "pairs_per_space": chosen_by,
        "found_per_space": found_by,
        "multi_space_pairs": multi,
        "band_occupancy": {s: float((band_hits[s] >= 0).sum(axis=1).mean()) if M else 0.0 for s in names},
        "band_full": {s: float((band_hits[s][:, -1] >= 0).mean()) if M else 0.0 for s in names},
        "padded_pairs": padded,
    }
    logger.info("mining: %d images, %d pairs, %d queries without a pair, %d pairs found by several spaces, "
                "%d pairs with padded negatives", M, stats["pairs"], without_pair, multi, padded)
    for s in names:
        logger.info("mining: space %r chose %d pairs, found %d; %.2f band hits per query (k=%d, %.1f%% full)",
                    s, chosen_by[s], found_by[s], stats["band_occupancy"][s], k, 100 * stats["band_full"][s])
    return MiningResult(table, stats)


def to_records(table: pa.Table | MiningResult, keys: Sequence) -> list[dict]:
    """MegaPairs training records from a mined table.

    Parameters
    ----------
    table : pyarrow.Table or MiningResult
        The output of :func:`mine_pairs` (or a Parquet round trip of it).
    keys : sequence, length >= M
        ``keys[i]`` names image i, typically its relative file path as in the released
        MegaPairs data.

    Returns
    -------
    list of dict
        One ``{"q_img": keys[query], "t_img": keys[target], "hns": [keys[h], ...]}`` per row,
        in table order; ``hns[0]`` is the query image. The ``q_text`` field (the
        instructions) is not set here: the annotation step adds it.
    """
    if isinstance(table, MiningResult):
        table = table.table
    missing = [c for c in ("query", "target", "hard_negatives") if c not in table.column_names]
    if missing:
        raise ValueError(f"table has no column {missing[0]!r}; expected the output of mine_pairs")
    keys = list(keys)
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
