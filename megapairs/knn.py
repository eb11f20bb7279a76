"""Exact inner-product nearest neighbours.

>>> import megapairs as mp
>>> scores, ids = mp.knn.search(queries, corpus, k=50)                       # doctest: +SKIP
>>> scores, ids = mp.knn.search(emb, emb, k=50, exclude_self=True)           # a self-join
>>> scores, ids = mp.knn.band(emb, emb, 0.8, 0.96, k=20, exclude_self=True)  # MegaPairs' band

Results are exact: equal to a float64 brute force over the float32 inputs, ranked by
descending score with ties broken by the lower corpus index. Rows with fewer than k
neighbours are padded with score -inf and index -1.
"""

from __future__ import annotations

import numpy as np

from . import _args

__all__ = ["search", "band"]


def _check(queries, corpus, k, what="search"):
    q = np.asarray(queries)
    c = np.asarray(corpus)
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


def _finite(a, name, what):
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{what}: {name} holds a non-finite value at row {bad[0]}, column {bad[1]}")


def _reference(q, c, k, lo, hi, exclude_self, block=1024):
    """float64 brute force, corpus in blocks: the definition the C kernel must equal."""
    Q = len(q)
    best_s = np.full((Q, k), -np.inf)
    best_i = np.full((Q, k), -1, np.int64)
    q64 = q.astype(np.float64)
    for j0 in range(0, len(c), block):
        s = q64 @ c[j0:j0 + block].astype(np.float64).T
        idx = np.broadcast_to(np.arange(j0, j0 + s.shape[1]), s.shape)
        keep = (s > lo) & (s < hi)
        if exclude_self:
            keep &= idx != np.arange(Q)[:, None]
        s = np.where(keep, s, -np.inf)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.where(keep, idx, -1)], axis=1)
        order = np.lexsort((np.where(all_i < 0, np.iinfo(np.int64).max, all_i), -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, 1)
        best_i = np.take_along_axis(all_i, order, 1)
    best_i[~np.isfinite(best_s)] = -1
    return best_s.astype(np.float32), best_i


def search(queries, corpus, k: int, exclude_self: bool = False, num_threads: int | None = None):
    """The k corpus rows with the largest inner product with each query.

    Parameters
    ----------
    queries : (Q, d) float array
    corpus : (M, d) float array (an ``np.memmap`` larger than RAM works)
    k : int
        Neighbours per query; rows are padded with -inf / -1 when the corpus has fewer.
    exclude_self : bool
        Drop corpus index i from query i's results (a self-join: queries are the corpus).
    num_threads : int, optional

    Returns
    -------
    scores : (Q, k) float32, descending; indices : (Q, k) int64 (ties: lower index first)
    """
    q, c = _check(queries, corpus, k)
    _finite(q, "queries", "search"), _finite(c, "corpus", "search")
    _args.threads(num_threads)
    return _reference(q, c, int(k), -np.inf, np.inf, exclude_self)


def band(queries, corpus, lo: float, hi: float, k: int, exclude_self: bool = False,
         num_threads: int | None = None):
    """Per query, the top-k corpus rows whose inner product s satisfies ``lo < s < hi``
    (both ends excluded: MegaPairs keeps (0.8, 0.96) to drop weak links and near-duplicates).
    Same returns as :func:`search`."""
    q, c = _check(queries, corpus, k, "band")
    if not (np.isfinite(lo) or lo == -np.inf) or not (np.isfinite(hi) or hi == np.inf) or not lo < hi:
        raise ValueError(f"band: need lo < hi, got lo={lo!r}, hi={hi!r}")
    _finite(q, "queries", "band"), _finite(c, "corpus", "band")
    _args.threads(num_threads)
    return _reference(q, c, int(k), float(lo), float(hi), exclude_self)
