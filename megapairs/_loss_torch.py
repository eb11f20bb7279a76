"""``megapairs.loss.InfoNCELoss``: InfoNCE as a ``torch.nn.Module`` for tensors on any device
and of any floating dtype.

Two paths, one set of semantics (see :mod:`megapairs.loss` for the loss, the candidate
layouts, ``ids`` masking and the symmetric term):

* CPU float32 tensors go to the fused C kernel (:func:`megapairs.loss.infonce`), zero-copy.
* Everything else (float64, bfloat16, float16, CUDA, ...) runs :func:`tiled_infonce`: the
  same computation in PyTorch, ``block_size`` query rows at a time, as a custom
  ``torch.autograd.Function``. Its forward keeps only q, c, the temperature, the index
  tensors and each row's log-sum-exp (O(B + N) beyond the inputs) for the backward, which
  recomputes each block's scores; no B x N tensor is ever alive, and the extra memory at any
  moment is a few block x N buffers (plus, for bf16/fp16 inputs where the device has no
  mixed-precision GEMM, an fp32 copy of c).

Precision of the tiled path: scores, log-sum-exp, softmax and the sums run in float64 for
float64 inputs and in float32 otherwise; bf16/fp16 GEMM operands are exact in float32
(products of 8/11-bit significands), so the only bf16 rounding is that of the gradients
returned in the inputs' dtype (and, on devices with bf16 GEMMs, of the softmax block fed to
the two backward GEMMs). The loss is returned in the accumulation dtype (float32 for
bf16/fp16 inputs, like ``cross_entropy`` under autocast).

This module imports torch: ``megapairs.loss`` loads it on first access to ``InfoNCELoss``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from . import _args
from .loss import _layout, infonce

__all__ = ["InfoNCELoss", "tiled_infonce"]

BLOCK_SIZE = 256  # query rows per block of the tiled path (the C kernel's block too)
_HALF = (torch.bfloat16, torch.float16)
_MIXED_GEMMS: dict[tuple[str, torch.dtype], tuple[bool, bool]] = {}


def _mixed_gemms(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    """Whether ``dtype`` operands on this kind of device run ``torch.mm(a, b, out_dtype=float32)``
    (CUDA in recent PyTorch; not CPU), and ``torch.addmm(o, a, b, out_dtype=float32, out=o)``
    (accumulating in place, no N x E temporary). Probed once per (device type, dtype)."""
    key = (device.type, dtype)
    if key not in _MIXED_GEMMS:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        try:
            mm = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            mm = False
        addmm = False
        if mm:
            try:
                o = torch.ones(2, 2, dtype=torch.float32, device=device)
                torch.addmm(o, a, a, out_dtype=torch.float32, out=o)
                addmm = bool((o == 3).all())
            except (RuntimeError, TypeError, NotImplementedError):
                pass
        _MIXED_GEMMS[key] = (mm, addmm)
    return _MIXED_GEMMS[key]


def _has_out_dtype_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the tiled path runs ``dtype`` GEMMs with fp32 output on this kind of device."""
    return _mixed_gemms(device, dtype)[0]


class _Plan:
    """How the GEMMs of the tiled path run for inputs of one dtype on one device.

    ``acc``: the dtype of scores, softmax and sums (float64 for float64 inputs, else float32).
    ``op``: the dtype of the GEMM operands (the inputs' own, or bf16 for ``precision='bf16'``).
    ``mode``: 'native' (op == acc: plain GEMMs), 'out_dtype' (op-dtype GEMMs accumulating into
    and returning acc: tensor cores on CUDA), or 'upcast' (operands rounded to op, then
    converted to acc: the same numbers where no mixed GEMM exists, at the cost of an acc copy
    of c)."""

    def __init__(self, dtype: torch.dtype, device: torch.device, precision: str):
        self.acc = torch.float64 if dtype == torch.float64 else torch.float32
        self.op = torch.bfloat16 if precision == "bf16" and dtype not in _HALF else dtype
        self.addmm_in_place = False
        if self.op == self.acc:
            self.mode = "native"
        elif self.acc == torch.float32 and _has_out_dtype_mm(device, self.op):
            self.mode = "out_dtype"
            self.addmm_in_place = _mixed_gemms(device, self.op)[1]
        else:
            self.mode = "upcast"

    def operand(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (an input) as a GEMM operand: no copy in 'native' mode, nor for an input
        already in op in 'out_dtype' mode."""
        if self.mode == "native":
            return x
        x = x.to(self.op)
        return x if self.mode == "out_dtype" else x.to(self.acc)

    def block_operand(self, p: torch.Tensor) -> torch.Tensor:
        """The acc softmax block as an operand of the backward GEMMs: rounded to op in
        'out_dtype' mode (once, for both GEMMs), else as it is."""
        return p.to(self.op) if self.mode == "out_dtype" else p

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b in acc, for operands made by :meth:`operand` / :meth:`block_operand`."""
        if self.mode == "out_dtype":
            return torch.mm(a, b, out_dtype=self.acc)
        return torch.mm(a, b)

    def addmm_(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """out += a @ b, out in acc, in place where the device can."""
        if self.mode != "out_dtype":
            out.addmm_(a, b)
        elif self.addmm_in_place:
            torch.addmm(out, a, b, out_dtype=self.acc, out=out)
        else:
            out.add_(self.mm(a, b))


def _no_autocast(device: torch.device):
    """Autocast off inside the loss: its GEMMs' dtypes are chosen by :class:`_Plan`."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _mask_(logits: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor | None) -> None:
    """-inf where a candidate other than the row's positive has the positive's id."""
    if ids is None:
        return
    dup = ids[None, :] == ids[pos][:, None]
    dup.scatter_(1, pos[:, None], False)
    logits.masked_fill_(dup, float("-inf"))


class _TiledInfoNCE(torch.autograd.Function):
    """mean_i [logsumexp_j(s_ij / tau) - s_i,pos_i / tau] over row blocks, s = q c^T, one
    direction (the symmetric term is a second call with c[pos] and q swapped in)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, c: torch.Tensor, tau: torch.Tensor, pos: torch.Tensor,
                ids: torch.Tensor | None, block: int, precision: str) -> torch.Tensor:
        plan = _Plan(q.dtype, q.device, precision)
        B = q.shape[0]
        with _no_autocast(q.device):
            t = tau.detach().to(q.device, plan.acc)
            c_op = plan.operand(c)
            lse = torch.empty(B, dtype=plan.acc, device=q.device)
            total = torch.zeros((), dtype=plan.acc, device=q.device)
            for i0 in range(0, B, block):
                rows = slice(i0, min(i0 + block, B))
                logits = plan.mm(plan.operand(q[rows]), c_op.T).div_(t)  # (b, N) in acc
                _mask_(logits, pos[rows], ids)
                lse[rows] = torch.logsumexp(logits, dim=1)
                total += (lse[rows] - logits.gather(1, pos[rows, None])[:, 0]).sum()
                del logits
        ctx.save_for_backward(q, c, tau, pos, ids, lse)  # O(B + N) besides the inputs
        ctx.block, ctx.precision = block, precision
        return total / B

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        q, c, tau, pos, ids, lse = ctx.saved_tensors
        need_q, need_c, need_tau = ctx.needs_input_grad[:3]
        plan = _Plan(q.dtype, q.device, ctx.precision)
        B = q.shape[0]
        dq = dc = dtau = None
        with _no_autocast(q.device):
            t = tau.detach().to(q.device, plan.acc)
            g = grad.detach().to(q.device, plan.acc)
            scale = g / (B * t)  # d loss / d s_ij = (p_ij - [j = pos_i]) * scale
            c_op = plan.operand(c)
            dq_out = torch.empty_like(q) if need_q else None
            dc_acc = torch.zeros(c.shape, dtype=plan.acc, device=c.device) if need_c else None
            ps = torch.zeros((), dtype=plan.acc, device=q.device)  # sum_ij (p_ij - [j = pos_i]) s_ij
            for i0 in range(0, B, ctx.block):
                rows = slice(i0, min(i0 + ctx.block, B))
                q_op = plan.operand(q[rows])
                s = plan.mm(q_op, c_op.T)  # the block's scores again, (b, N) in acc
                p = s / t
                _mask_(p, pos[rows], ids)
                p.sub_(lse[rows, None]).exp_()  # softmax; masked entries exp(-inf) = 0
                p.scatter_add_(1, pos[rows, None], torch.full((p.shape[0], 1), -1.0, dtype=p.dtype,
                                                             device=p.device))
                if need_tau:
                    ps += s.mul_(p).sum()
                del s
                p = plan.block_operand(p.mul_(scale))
                if need_q:
                    dq_out[rows] = plan.mm(p, c_op)
                if need_c:
                    plan.addmm_(dc_acc, p.T, q_op)
                del p
            if need_q:
                dq = dq_out
            if need_c:
                dc = dc_acc.to(c.dtype)
            if need_tau:  # d (s / tau) / d tau = -s / tau^2
                dtau = (-g / (B * t * t) * ps).reshape(tau.shape).to(tau.device, tau.dtype)
        return dq, dc, dtau, None, None, None, None


class _FusedInfoNCE(torch.autograd.Function):
    """The C kernel on CPU float32 tensors: loss and gradients in one call (zero-copy)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, c: torch.Tensor, tau: torch.Tensor, pos: np.ndarray,
                ids: np.ndarray | None, symmetric: bool, precision: str) -> torch.Tensor:
        qn = q.detach().contiguous().numpy()  # zero-copy views of contiguous CPU float32 tensors
        cn = c.detach().contiguous().numpy()
        grad = any(ctx.needs_input_grad[:3])
        out = infonce(qn, cn, float(tau), positives=pos, ids=ids, symmetric=symmetric, return_grad=grad,
                      precision=precision)
        if grad:
            ctx.save_for_backward(torch.from_numpy(out.dq), torch.from_numpy(out.dc),
                                  torch.tensor(out.dtau, dtype=torch.float64))
        ctx.tau_meta = (tau.shape, tau.device, tau.dtype)
        return q.new_tensor(out.loss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        dq, dc, dtau = ctx.saved_tensors
        shape, device, dtype = ctx.tau_meta
        dtau = (grad.double() * dtau).reshape(shape).to(device, dtype)
        return grad * dq, grad * dc, dtau, None, None, None, None


def _tensor_pair(q: Any, c: Any) -> None:
    """The one check of the embeddings: tensors, 2-D, one device, one floating dtype, the same
    dimension, not empty. Raises TypeError/ValueError naming the argument at fault."""
    for name, t in (("q", q), ("c", c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D ({'B' if name == 'q' else 'N'}, E), got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.device != c.device:
        raise ValueError(f"q and c must be on one device: q is on {q.device}, c on {c.device}")
    if q.dtype != c.dtype:
        raise TypeError(f"q and c must have one dtype: q is {q.dtype}, c is {c.dtype} (cast one, e.g. c.to(q.dtype))")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"q has dimension {q.shape[1]} but c has {c.shape[1]}")
    if q.shape[0] == 0 or c.shape[0] == 0:
        raise ValueError("q and c must not be empty")


def _host(x: Any) -> Any:
    """An index argument given as a tensor (on any device) as a NumPy array, for validation."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def tiled_infonce(q: torch.Tensor, c: torch.Tensor, temperature: torch.Tensor | float, pos: Any,
                  ids: Any = None, symmetric: bool = False, block_size: int = BLOCK_SIZE,
                  precision: str = "fp32") -> torch.Tensor:
    """The tiled PyTorch InfoNCE of ``q`` (B, E) against ``c`` (N, E) on their device, whatever
    the device or dtype (CPU float32 included: this is the path, not the dispatch).

    ``pos`` (B,) and ``ids`` (N,) or None are index arrays or tensors as
    ``megapairs.loss._layout`` returns them (validated there; ``InfoNCELoss`` does it).
    ``temperature`` is a 0-d tensor (its gradient is computed when it requires one) or a float.
    Returns the scalar loss in float64 for float64 inputs, else float32."""
    device = q.device
    pos_t = torch.as_tensor(pos, dtype=torch.int64).to(device)
    ids_t = None if ids is None else torch.as_tensor(ids, dtype=torch.int64).to(device)
    tau = temperature if isinstance(temperature, torch.Tensor) else torch.tensor(float(temperature))
    loss = _TiledInfoNCE.apply(q, c, tau, pos_t, ids_t, int(block_size), precision)
    if not symmetric:
        return loss
    # each positive against all B queries, query i its positive; masking by the positives' ids
    back = _TiledInfoNCE.apply(c[pos_t], q, tau, torch.arange(q.shape[0], device=device),
                               None if ids_t is None else ids_t[pos_t], int(block_size), precision)
    return (loss + back) / 2


class InfoNCELoss(torch.nn.Module):
    """InfoNCE as a ``torch.nn.Module``, for tensors on any device and of any floating dtype.

    CPU float32 tensors go to the fused C kernel (zero-copy; ``precision='bf16'`` runs its
    GEMMs in bf16). Any other device or dtype runs the tiled PyTorch implementation
    (:func:`tiled_infonce`, ``block_size`` query rows at a time, no B x N matrix kept for the
    backward) with the same semantics; there ``precision='bf16'`` rounds float32/float64
    GEMM operands to bf16, and bf16/fp16 inputs run in their own dtype either way.

    ``learnable_temperature=True`` makes the temperature a parameter. It may stay on the CPU
    when q and c are on a GPU (the loss moves it). ``forward(q, c, positives=None,
    group_size=None, ids=None, symmetric=False)`` takes the arguments of
    :func:`megapairs.loss.infonce` (``positives`` and ``ids`` as arrays or tensors) and
    returns the scalar loss: float32 (float64 for float64 inputs)."""

    def __init__(self, temperature: float = 0.02, learnable_temperature: bool = False, precision: str = "fp32",
                 block_size: int = BLOCK_SIZE):
        super().__init__()
        precision = _args.precision(precision)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.precision = precision
        self.block_size = block_size
        t = torch.tensor(float(temperature))
        if learnable_temperature:
            self.temperature = torch.nn.Parameter(t)
        else:
            self.register_buffer("temperature", t)

    def forward(self, q: torch.Tensor, c: torch.Tensor, positives: Any = None, group_size: int | None = None,
                ids: Any = None, symmetric: bool = False) -> torch.Tensor:
        _tensor_pair(q, c)
        pos, ids = _layout(q.shape[0], c.shape[0], _host(positives), group_size, _host(ids))
        if q.device.type == "cpu" and q.dtype == torch.float32:
            return _FusedInfoNCE.apply(q, c, self.temperature, pos, ids, bool(symmetric), self.precision)
        tau = self.temperature
        if tau.device.type == "cpu" and not tau.item() > 0:  # on a GPU, checking would cost a sync
            raise ValueError(f"temperature must be a positive number, got {tau.item()!r}")
        return tiled_infonce(q, c, tau, pos, ids, bool(symmetric), self.block_size, self.precision)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():g}, precision={self.precision!r}, block_size={self.block_size}"


InfoNCELoss.__module__ = "megapairs.loss"
