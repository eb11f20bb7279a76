"""InfoNCE, fused and tiled in C: loss and gradients without the B x N score matrix.

>>> import megapairs as mp
>>> out = mp.loss.infonce(q, c, temperature=0.02, group_size=5, return_grad=True)   # doctest: +SKIP
>>> out.loss, out.dq.shape, out.dc.shape, out.dtau                                   # doctest: +SKIP

With PyTorch:

>>> criterion = mp.loss.InfoNCELoss(temperature=0.02)                                # doctest: +SKIP
>>> loss = criterion(q, c, group_size=5)          # q, c: tensors, any device/dtype  # doctest: +SKIP
>>> loss.backward()                                                                  # doctest: +SKIP

CPU float32 tensors go to the C kernel; any other device or dtype to a tiled PyTorch
implementation with the same semantics (``megapairs/_loss_torch.py``).

loss = mean_i [ -s(i, pos_i) / tau + logsumexp_j s(i, j) / tau ], s = q c^T, over every
candidate of the batch. Candidate layouts: ``group_size=G`` (query i's positive at i*G,
followed by its G-1 hard negatives: the MegaPairs / FlagEmbedding layout), an explicit
``positives`` index array, or (neither given, N == B) the diagonal. ``ids`` masks false
negatives: a candidate other than the positive with the positive's id (a duplicate of the
positive elsewhere in the batch) is left out of that row's denominator. ``symmetric=True``
averages the query->candidate loss with the candidate->query one over the positives (each
positive against all B queries), as CLIP-style training does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import _args, _core

if TYPE_CHECKING:  # at run time, loaded by __getattr__ on first access (it imports torch)
    from ._loss_torch import InfoNCELoss

__all__ = ["InfoNCELoss", "InfoNCEOutput", "infonce"]


@dataclass
class InfoNCEOutput:
    loss: float
    row_loss: np.ndarray  # (B,) float32: each row's term
    dq: np.ndarray | None = None  # (B, E) d loss / d q
    dc: np.ndarray | None = None  # (N, E) d loss / d c
    dtau: float | None = None  # d loss / d temperature


def _positives(B: int, N: int, positives, group_size) -> np.ndarray:
    if positives is not None and group_size is not None:
        raise ValueError("give positives or group_size, not both")
    if group_size is not None:
        if not isinstance(group_size, (int, np.integer)) or group_size < 1 or B * group_size != N:
            raise ValueError(f"group_size={group_size!r} needs N = B * group_size candidates, got B={B}, N={N}")
        return np.arange(B, dtype=np.int64) * int(group_size)
    if positives is None:
        if N != B:
            raise ValueError(f"with N={N} candidates for B={B} queries, give group_size or positives")
        return np.arange(B, dtype=np.int64)
    pos = np.asarray(positives)
    if pos.dtype.kind not in "iu" or pos.shape != (B,):
        raise ValueError(f"positives must be {B} integer indices, got shape {pos.shape} dtype {pos.dtype}")
    if len(pos) and (pos.min() < 0 or pos.max() >= N):
        bad = int(np.argmax((pos < 0) | (pos >= N)))
        raise ValueError(f"positives[{bad}] = {pos[bad]} is outside [0, {N})")
    return pos.astype(np.int64)


def _ids(ids, N: int) -> np.ndarray | None:
    """``ids`` as (N,) int64, or None."""
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.shape != (N,) or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be {N} integers (one per candidate), got shape {ids.shape} dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _layout(B: int, N: int, positives, group_size, ids) -> tuple[np.ndarray, np.ndarray | None]:
    """The one check of the candidate layout, shared by :func:`infonce` and ``InfoNCELoss``:
    each query's positive as (B,) int64 indices into the N candidates, and ``ids`` as (N,)
    int64 or None. Raises ValueError naming the argument at fault."""
    return _positives(B, N, positives, group_size), _ids(ids, N)


def _check(q, c, temperature):
    q = np.asarray(q)
    c = np.asarray(c)
    for name, a in (("q", q), ("c", c)):
        if a.ndim != 2 or a.dtype.kind != "f":
            raise ValueError(f"{name} must be a 2-D float array, got shape {a.shape} dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or inf")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"q has dimension {q.shape[1]} but c has {c.shape[1]}")
    if len(q) == 0 or len(c) == 0:
        raise ValueError("q and c must not be empty")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return q, c


def infonce(q, c, temperature: float = 0.02, positives=None, group_size: int | None = None, ids=None,
            symmetric: bool = False, return_grad: bool = False, precision: str = "fp32",
            num_threads: int | None = None) -> InfoNCEOutput:
    """InfoNCE loss of queries ``q`` (B, E) against candidates ``c`` (N, E), optionally with
    its gradients, computed a block of 256 rows at a time (memory O(256 N) beyond inputs and
    gradients). fp32 GEMMs; log-sum-exp and sums in double.

    Parameters
    ----------
    q, c : float arrays (B, E), (N, E)
    temperature : float
        tau > 0; scores are divided by it.
    positives : (B,) int array, optional
        Index of each query's positive in ``c``.
    group_size : int, optional
        Candidates grouped per query: positive at ``i * group_size``.
    ids : (N,) int array, optional
        Identity of each candidate (e.g. its image id) for false-negative masking.
    symmetric : bool
        Average with the candidate->query term: each positive c[pos_i] against all queries,
        query i its positive (masking queries whose positives share its id).
    return_grad : bool
        Also return d loss / d q, d c and d temperature.
    precision : {'fp32', 'bf16'}
        'bf16' runs the three GEMMs with bf16 products (AMX) and fp32 accumulation; softmax
        and sums stay fp32/double. Faster, about 1e-3 relative error (docs/numerics.md).
    """
    q, c = _check(q, c, temperature)
    precision = _args.precision(precision)
    pos, ids = _layout(len(q), len(c), positives, group_size, ids)
    threads = _args.threads(num_threads)
    loss, dq, dc, dtau, rows = _core.infonce(q, c, pos, ids, float(temperature), grad=bool(return_grad),
                                             precision=precision, num_threads=threads)
    if not symmetric:
        return InfoNCEOutput(loss, rows, dq, dc, dtau)
    return _symmetric(q, c, pos, ids, float(temperature), bool(return_grad), precision, threads,
                      (loss, dq, dc, dtau, rows))


def _symmetric(q, c, pos, ids, tau, grad, precision, threads, forward):
    """(forward + the candidate->query term) / 2: the reverse term is InfoNCE of c[pos]
    against q with the diagonal as positives; its gradient for c[pos] scatters back to c."""
    loss, dq, dc, dtau, rows = forward
    back_ids = None if ids is None else np.asarray(ids)[pos]
    loss2, dp2, dq2, dtau2, rows2 = _core.infonce(np.ascontiguousarray(c[pos], dtype=np.float32), q,
                                                  np.arange(len(q), dtype=np.int64), back_ids, tau, grad=grad,
                                                  precision=precision, num_threads=threads)
    out = InfoNCEOutput((loss + loss2) / 2, (rows + rows2) / 2)
    if grad:
        dc = dc.copy()
        np.add.at(dc, pos, dp2)
        out.dq, out.dc, out.dtau = (dq + dq2) / 2, dc / 2, (dtau + dtau2) / 2
    return out


def __getattr__(name: str):
    if name == "InfoNCELoss":  # needs torch: importing megapairs must not import it (seconds, a second OpenMP)
        try:
            from ._loss_torch import InfoNCELoss
        except ImportError as e:
            if e.name != "torch":
                raise
            raise AttributeError("megapairs.loss.InfoNCELoss needs PyTorch (pip install torch)") from e
        globals()["InfoNCELoss"] = InfoNCELoss
        return InfoNCELoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
