"""Exact inner-product nearest neighbours.

>>> import megapairs as mp
>>> scores, ids = mp.knn.search(queries, corpus, k=50)                       # doctest: +SKIP
>>> scores, ids = mp.knn.search(emb, emb, k=50, exclude_self=True)           # a self-join
>>> scores, ids = mp.knn.band(emb, emb, 0.8, 0.96, k=20, exclude_self=True)  # MegaPairs' band

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

__all__ = ["search", "band"]


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


def _run(q, c, k, lo, hi, exclude_self, precision, exact, num_threads, what):
    precision = _args.precision(precision)
    if exclude_self and len(q) > len(c):
        raise ValueError(f"{what}: exclude_self needs the queries to be (a prefix of) the corpus")
    scores, indices, _ = _core.knn_search(q, c, int(k), float(lo), float(hi), exclude_self=bool(exclude_self),
                                          precision=precision, exact=bool(exact),
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
           num_threads: int | None = None):
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

    Returns
    -------
    scores : (Q, k) float32, descending; indices : (Q, k) int64 (ties: lower index first)
    """
    q, c = _check(queries, corpus, k)
    _finite(q, "queries", "search"), _finite(c, "corpus", "search")
    return _run(q, c, k, -np.inf, np.inf, exclude_self, precision, exact, num_threads, "search")


def band(queries, corpus, lo: float, hi: float, k: int, exclude_self: bool = False, precision: str = "bf16",
         exact: bool = True, num_threads: int | None = None):
    """Per query, the top-k corpus rows whose inner product s satisfies ``lo < s < hi``
    (both ends excluded: MegaPairs keeps (0.8, 0.96) to drop weak links and near-duplicates).
    Same returns as :func:`search`."""
    q, c = _check(queries, corpus, k, "band")
    if not (np.isfinite(lo) or lo == -np.inf) or not (np.isfinite(hi) or hi == np.inf) or not lo < hi:
        raise ValueError(f"band: need lo < hi, got lo={lo!r}, hi={hi!r}")
    _finite(q, "queries", "band"), _finite(c, "corpus", "band")
    return _run(q, c, k, lo, hi, exclude_self, precision, exact, num_threads, "band")
