"""MM-Embed's modality-aware hard negatives for a mixed text/image candidate pool
(:func:`modality_aware_negatives`, re-exported by :mod:`megapairs.mining`). Independent of
the MegaPairs pair selection: one search, then a rule on ranks and modalities.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from . import knn
from ._mining_checks import _positive_int


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
