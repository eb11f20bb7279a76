"""Combining spaces: weighted sums of embeddings (a composed query) or of scores, in the C core.

>>> import megapairs as mp
>>> query = mp.fusion.fuse([image_emb, text_emb])                     # doctest: +SKIP
>>> # = normalise(image_emb + text_emb): the composed query of BGE-VL / MegaPairs
>>> query = mp.fusion.fuse([image_emb, text_emb], weights=[0.7, 0.3])  # doctest: +SKIP
>>> score = mp.fusion.fuse_scores([clip_s, dino_s, caption_s], weights=[0.5, 0.3, 0.2])  # doctest: +SKIP

Both run one pass over the inputs with the rows split among threads, and write into ``out``
when given (which may be one of the inputs: in place). Sums are float32 in input order;
the L2 norm is accumulated in double, and a zero row stays zero (its norm is clamped at
1e-12, as ``torch.nn.functional.normalize`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _args, _core

__all__ = ["fuse", "fuse_scores"]


def _parts(arrays, name: str) -> list:
    if isinstance(arrays, np.ndarray) and arrays.ndim >= 2:
        return list(arrays)  # a stacked (S, ...) array: one part per leading index
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence):
        raise TypeError(f"{name} must be a list of arrays (one per space), got {type(arrays).__name__}")
    return list(arrays)


def fuse(embeddings: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float] | None = None,
         normalize: bool = True, out: np.ndarray | None = None, num_threads: int | None = None) -> np.ndarray:
    """``sum_s weights[s] * embeddings[s]``, L2-normalised per row.

    Parameters
    ----------
    embeddings : list of (N, D) arrays, or an (S, N, D) array
        The embeddings of the same N items in S spaces (or from S towers) of one dimension D;
        converted to float32.
    weights : list of S floats, optional
        One finite weight per part; default all 1.
    normalize : bool
        L2-normalise each fused row (False: the plain weighted sum).
    out : (N, D) float32 C-contiguous array, optional
        Where to write; may be one of ``embeddings`` (in place).
    num_threads : int, optional
        Threads for this call; default :func:`megapairs.get_num_threads`.

    Returns
    -------
    (N, D) float32
    """
    return _core.fuse(_parts(embeddings, "embeddings"), weights, normalize=bool(normalize), out=out,
                      num_threads=_args.threads(num_threads))


def fuse_scores(scores: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float] | None = None,
                out: np.ndarray | None = None, num_threads: int | None = None) -> np.ndarray:
    """``sum_s weights[s] * scores[s]``: score-level fusion of several spaces.

    Parameters
    ----------
    scores : list of arrays of one shape, or a stacked (S, ...) array
        The scores of the same items in each space: a similarity matrix or a vector of pairs
        per space; converted to float32.
    weights : list of S floats, optional
        One finite weight per space; default all 1.
    out : float32 C-contiguous array of the scores' shape, optional
        Where to write; may be one of ``scores`` (in place).
    num_threads : int, optional
        Threads for this call; default :func:`megapairs.get_num_threads`.
    """
    return _core.fuse_scores(_parts(scores, "scores"), weights, out=out, num_threads=_args.threads(num_threads))
