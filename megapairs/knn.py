"""Exact inner-product nearest neighbours.

>>> import megapairs as mp
>>> scores, ids = mp.knn.search(queries, corpus, k=50)                       # doctest: +SKIP
>>> scores, ids = mp.knn.search(emb, emb, k=50, exclude_self=True)           # a self-join
>>> scores, ids = mp.knn.band(emb, emb, 0.8, 0.96, k=20, exclude_self=True)  # MegaPairs' band

A corpus too big for one machine is searched shard by shard and the results merged; the
merge is exact (equal to one search over the whole corpus) when the shards return their
scores as ranked, before rounding (``float64=True``):

>>> parts = [mp.knn.search(q, shard, k, float64=True) for shard in shards]    # doctest: +SKIP
>>> parts = [(s, i + start) for (s, i), start in zip(parts, starts)]         # global rows
>>> scores, ids = mp.knn.merge(parts, k)                                      # doctest: +SKIP

Results are exact: equal to a float64 brute force over the float32 inputs, ranked by
descending score with ties broken by the lower corpus index. Rows with fewer than k
neighbours are padded with score -inf and index -1.

The C core scores blocks of the corpus with a bf16 GEMM (AMX where the CPU has it; or fp32),
keeps every candidate whose score, within the GEMM's proven error bound, could still be in
the top-k, and rescores those in double precision (docs/knn.md). ``exact=False`` returns the
GEMM's own ranking instead (faster only by the rescoring, which is small).
"""

from __future__ import annotations

import numpy as np

from . import _args, _core

__all__ = ["search", "band", "merge"]


def _check(queries, corpus, k, what="search"):
    q = np.asarray(queries)
    c = np.asarray(corpus)  # an np.memmap stays a view: the C core streams it block by block
    for name, a in (("queries", q), ("corpus", c)):
        if a.dtype.kind != "f":
            raise ValueError(f"{what}: {name} must be a float array, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{what}: {name} must be 2-D (n, d), got shape {a.shape}")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"{what}: queries have dimension {q.shape[1]} but the corpus has {c.shape[1]}")
    if q.shape[1] == 0:
        raise ValueError(f"{what}: vectors of dimension 0")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"{what}: k must be a positive int, got {k!r}")
    return q, c


def _run(q, c, k, lo, hi, exclude_self, precision, exact, float64, num_threads, what):
    precision = _args.precision(precision)
    if exclude_self and len(q) > len(c):
        raise ValueError(f"{what}: exclude_self needs the queries to be (a prefix of) the corpus")
    if float64 and not exact:
        raise ValueError(f"{what}: float64 scores need exact=True (they are the double-precision rescores)")
    scores, indices, _ = _core.knn_search(q, c, int(k), float(lo), float(hi), exclude_self=bool(exclude_self),
                                          precision=precision, exact=bool(exact), float64=bool(float64),
                                          num_threads=_args.threads(num_threads))
    return scores, indices


def _finite(a, name, what, rows=65536):
    """ValueError naming the first NaN/inf; checked in row blocks so a memmap is not loaded whole."""
    for r0 in range(0, len(a), rows):
        block = a[r0:r0 + rows]
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"{what}: {name} holds a non-finite value at row {r0 + bad[0]}, column {bad[1]}")


def search(queries, corpus, k: int, exclude_self: bool = False, precision: str = "bf16", exact: bool = True,
           num_threads: int | None = None, float64: bool = False):
    """The k corpus rows with the largest inner product with each query.

    Parameters
    ----------
    queries : (Q, d) float array
    corpus : (M, d) float array
        Used in place when it is C-contiguous float32 (an ``np.memmap`` larger than RAM works:
        it is read block by block); other float dtypes are converted first, which copies.
    k : int
        Neighbours per query; rows are padded with -inf / -1 when the corpus has fewer.
    exclude_self : bool
        Drop corpus index i from query i's results (a self-join: queries are the corpus).
    precision : {'bf16', 'fp32'}
        Precision of the scoring GEMM. The answer is the same (exact) either way; bf16 is
        faster where the CPU has AMX.
    exact : bool
        False skips the double-precision rescoring and returns the GEMM's ranking.
    num_threads : int, optional
    float64 : bool
        Return the scores in float64, exactly as they were ranked (the float32 scores are
        these rounded). What :func:`merge` needs to combine shards' results exactly.

    Returns
    -------
    scores : (Q, k) float32 (float64 with ``float64``), descending; indices : (Q, k) int64
    (ties: lower index first)
    """
    q, c = _check(queries, corpus, k)
    _finite(q, "queries", "search"), _finite(c, "corpus", "search")
    return _run(q, c, k, -np.inf, np.inf, exclude_self, precision, exact, float64, num_threads, "search")


def band(queries, corpus, lo: float, hi: float, k: int, exclude_self: bool = False, precision: str = "bf16",
         exact: bool = True, num_threads: int | None = None, float64: bool = False):
    """Per query, the top-k corpus rows whose inner product s satisfies ``lo < s < hi``
    (both ends excluded: MegaPairs keeps (0.8, 0.96) to drop weak links and near-duplicates).
    Same returns as :func:`search`."""
    q, c = _check(queries, corpus, k, "band")
    if not (np.isfinite(lo) or lo == -np.inf) or not (np.isfinite(hi) or hi == np.inf) or not lo < hi:
        raise ValueError(f"band: need lo < hi, got lo={lo!r}, hi={hi!r}")
    _finite(q, "queries", "band"), _finite(c, "corpus", "band")
    return _run(q, c, k, lo, hi, exclude_self, precision, exact, float64, num_threads, "band")


def merge(parts, k: int, exclude=None):
    """Merge the results of several searches over disjoint parts of one corpus into the
    results of one search over all of it.

    Each part is ``(scores, indices)`` for the same Q queries, indices already global (a
    shard's row plus the shard's first row) and -1 for padding, as :func:`search` or
    :func:`band` returned them with ``float64=True``. Rows are ranked by descending score,
    ties to the lower index, which is :func:`search`'s own order: since each part holds its
    shard's best ``k`` in that order, the merge equals one search over the whole corpus,
    indices and scores alike. (With float32 scores two candidates whose float64 scores
    differ can round equal and be ordered by index instead: pass ``float64=True``.)

    Parameters
    ----------
    parts : sequence of (scores (Q, k_i), indices (Q, k_i))
    k : int
        Neighbours to keep per query.
    exclude : (Q,) int array, optional
        A global index to drop per query (-1: none), e.g. the query's own row in a self-join
        run shard by shard: search each shard for ``k + 1`` without ``exclude_self`` and
        exclude the query's row here.

    Returns
    -------
    scores : (Q, k) float32, descending; indices : (Q, k) int64, padded with -inf / -1.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"merge: k must be a positive int, got {k!r}")
    parts = list(parts)
    if not parts:
        raise ValueError("merge: no parts to merge")
    scores, ids = [], []
    for n, part in enumerate(parts):
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise ValueError(f"merge: part {n} must be a (scores, indices) pair")
        s, i = np.asarray(part[0]), np.asarray(part[1])
        if s.ndim != 2 or s.shape != i.shape:
            raise ValueError(f"merge: part {n} has scores of shape {s.shape} and indices of shape {i.shape}")
        if s.dtype.kind != "f" or i.dtype.kind not in "iu":
            raise ValueError(f"merge: part {n} needs float scores and integer indices, got {s.dtype}, {i.dtype}")
        if s.shape[0] != np.shape(parts[0][0])[0]:
            raise ValueError(f"merge: part {n} has {s.shape[0]} queries, part 0 has {np.shape(parts[0][0])[0]}")
        scores.append(s.astype(np.float64, copy=False)), ids.append(i.astype(np.int64, copy=False))
    S, I = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
    drop = I < 0
    if exclude is not None:
        ex = np.asarray(exclude, np.int64).reshape(-1)
        if ex.shape[0] != S.shape[0]:
            raise ValueError(f"merge: exclude has {ex.shape[0]} entries for {S.shape[0]} queries")
        drop |= I == ex[:, None]
    S = np.where(drop, -np.inf, S)
    I = np.where(drop, np.iinfo(np.int64).max, I)
    order = np.lexsort((I, -S), axis=1)[:, :k]  # score descending, then index ascending
    S, I = np.take_along_axis(S, order, 1), np.take_along_axis(I, order, 1)
    if S.shape[1] < k:  # fewer candidates than k in all: pad
        pad = k - S.shape[1]
        S = np.pad(S, ((0, 0), (0, pad)), constant_values=-np.inf)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    I[~np.isfinite(S)] = -1
    return S.astype(np.float32), I
