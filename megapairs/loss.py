"""InfoNCE, fused and tiled in C: loss and gradients without the B x N score matrix.

>>> import megapairs as mp
>>> out = mp.loss.infonce(q, c, temperature=0.02, group_size=5, return_grad=True)   # doctest: +SKIP
>>> out.loss, out.dq.shape, out.dc.shape, out.dtau                                   # doctest: +SKIP

With PyTorch:

>>> criterion = mp.loss.InfoNCELoss(temperature=0.02)                                # doctest: +SKIP
>>> loss = criterion(q, c, group_size=5)          # q, c: CPU float32 tensors        # doctest: +SKIP
>>> loss.backward()                                                                  # doctest: +SKIP

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

import numpy as np

from . import _args, _core

__all__ = ["InfoNCEOutput", "infonce", "InfoNCELoss"]


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
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    pos = _positives(len(q), len(c), positives, group_size)
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (len(c),) or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be {len(c)} integers (one per candidate), got shape {ids.shape}")
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


def _torch_classes():
    """Build the torch autograd.Function and nn.Module on first use: importing megapairs must not
    import torch (seconds of start-up, and a second OpenMP runtime)."""
    import torch

    class _InfoNCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, c, tau, pos, ids, symmetric, precision):
            qn = q.detach().contiguous().numpy()  # zero-copy views of contiguous CPU float32 tensors
            cn = c.detach().contiguous().numpy()
            grad = any(ctx.needs_input_grad[:3])
            out = infonce(qn, cn, float(tau), positives=pos, ids=ids, symmetric=symmetric, return_grad=grad,
                          precision=precision)
            if grad:
                ctx.save_for_backward(torch.from_numpy(out.dq), torch.from_numpy(out.dc), torch.tensor(out.dtau))
            return q.new_tensor(out.loss)

        @staticmethod
        def backward(ctx, grad):
            dq, dc, dtau = ctx.saved_tensors
            return grad * dq, grad * dc, (grad * dtau).to(torch.float32), None, None, None, None

    class InfoNCELoss(torch.nn.Module):
        """InfoNCE as a ``torch.nn.Module`` backed by the fused C kernel (CPU float32 tensors,
        zero-copy). ``learnable_temperature=True`` makes the temperature a parameter (its
        gradient comes from the kernel); ``precision='bf16'`` runs the GEMMs in bf16.

        ``forward(q, c, positives=None, group_size=None, ids=None, symmetric=False)`` takes the
        arguments of :func:`infonce` and returns the scalar loss."""

        def __init__(self, temperature: float = 0.02, learnable_temperature: bool = False, precision: str = "fp32"):
            super().__init__()
            if precision not in ("fp32", "bf16"):
                raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
            if not float(temperature) > 0:
                raise ValueError(f"temperature must be > 0, got {temperature!r}")
            self.precision = precision
            t = torch.tensor(float(temperature))
            if learnable_temperature:
                self.temperature = torch.nn.Parameter(t)
            else:
                self.register_buffer("temperature", t)

        def forward(self, q, c, positives=None, group_size=None, ids=None, symmetric: bool = False):
            for name, t in (("q", q), ("c", c)):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
                if t.device.type != "cpu" or t.dtype != torch.float32:
                    raise ValueError(f"{name} must be a CPU float32 tensor, got {t.dtype} on {t.device}")
            pos = _positives(q.shape[0], c.shape[0], positives, group_size)
            ids = None if ids is None else np.asarray(ids, dtype=np.int64)
            return _InfoNCE.apply(q, c, self.temperature, pos, ids, bool(symmetric), self.precision)

    InfoNCELoss.__module__ = __name__
    return InfoNCELoss


def __getattr__(name: str):
    if name == "InfoNCELoss":  # needs torch; created on first access
        try:
            cls = _torch_classes()
        except ImportError as e:
            raise AttributeError("megapairs.loss.InfoNCELoss needs PyTorch (pip install torch)") from e
        globals()["InfoNCELoss"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
