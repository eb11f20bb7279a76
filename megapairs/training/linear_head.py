"""A linear adapter on frozen embeddings trained with NumPy alone (no PyTorch).

The gradients come from ``mp.loss.infonce(..., return_grad=True)`` and are carried through
the L2 normalisation and the linear map by hand; :class:`AdamW` (the same update as
``torch.optim.AdamW``, kept here because this path must run without torch) with warm-up and
linear or cosine decay updates the weights. ``megapairs train`` uses ``torch.optim`` instead.

>>> head, losses = mp.training.train_linear_head(q_emb, c_emb, group_size=5, dim=256)  # doctest: +SKIP
>>> corpus_out = head.transform(corpus, candidates=True)                     # doctest: +SKIP
>>> scores, ids = mp.knn.search(head.transform(q_emb), corpus_out, k=10)    # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..loss import infonce
from ._checks import positive_int as _positive_int
from .schedule import SCHEDULES, lr_factor

__all__ = ["AdamW", "LinearHead", "train_linear_head"]


class AdamW:
    """AdamW (Loshchilov & Hutter) over a list of NumPy arrays, updated in place; the same
    update as ``torch.optim.AdamW`` (decoupled weight decay ``p -= lr * weight_decay * p``,
    then the bias-corrected Adam step).

    Parameters
    ----------
    params : list of float arrays
        Updated in place; keep them float64 for exact agreement with a float64 reference.
    lr, betas, eps, weight_decay
        As in ``torch.optim.AdamW``.
    """

    def __init__(self, params: Sequence[np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"eps must be positive and weight_decay non-negative, "
                             f"got {eps!r}, {weight_decay!r}")
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), betas, float(eps), float(weight_decay)
        self.exp_avg = [np.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p) for p in self.params]
        self.steps = 0

    def step(self, grads: Sequence[np.ndarray], lr: float | None = None) -> None:
        """Apply one update from ``grads`` (one per parameter, same shapes) at learning rate
        ``lr`` (default: the base rate)."""
        if len(grads) != len(self.params):
            raise ValueError(f"expected {len(self.params)} gradients, got {len(grads)}")
        for p, g in zip(self.params, grads):
            if g.shape != p.shape:
                raise ValueError(f"gradient of shape {g.shape} for a parameter of shape {p.shape}")
        lr = self.lr if lr is None else float(lr)
        beta1, beta2 = self.betas
        self.steps += 1
        correction1 = 1.0 - beta1 ** self.steps
        correction2 = 1.0 - beta2 ** self.steps
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            p *= 1.0 - lr * self.weight_decay
            m += (1.0 - beta1) * (g - m)
            v *= beta2
            v += (1.0 - beta2) * g * g
            p -= (lr / correction1) * m / (np.sqrt(v) / math.sqrt(correction2) + self.eps)


def _head_forward(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = normalise(x @ weight) row-wise, and the row norms of x @ weight (saved for backward)."""
    z = x @ weight
    norm = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z / norm, norm


def _head_backward(dy: np.ndarray, x: np.ndarray, y: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """d loss / d weight from d loss / d y: through y = z / |z| (the Jacobian (I - y y^T) / |z|
    on each row) and z = x @ weight."""
    dz = (dy - y * np.sum(y * dy, axis=1, keepdims=True)) / norm
    return x.T @ dz


@dataclass
class LinearHead:
    """A linear adapter on frozen embeddings, followed by L2 normalisation:
    ``transform(x) = normalise(x @ weight)``.

    One head maps queries and candidates alike (``shared``, the default): both stay in one
    space, so a corpus transformed once serves every query, and there are half the weights to
    fit. With ``candidate_weight`` set, candidates get their own head (for queries and
    candidates from different distributions, e.g. fused image+text queries against images).

    Attributes
    ----------
    weight : (E_in, E_out) float64
        The query head (and the candidate head when shared).
    candidate_weight : (E_in, E_out) float64 or None
        The candidate head when not shared.
    """

    weight: np.ndarray
    candidate_weight: np.ndarray | None = None

    @classmethod
    def init(cls, dim_in: int, dim: int | None = None, shared: bool = True, seed: int = 0) -> LinearHead:
        """The identity when ``dim`` equals ``dim_in`` (training starts from the frozen
        embeddings' own ranking), else ``dim`` random orthonormal directions (a seeded
        projection that keeps the geometry roughly as is)."""
        dim_in = _positive_int(dim_in, "dim_in")
        dim = dim_in if dim is None else _positive_int(dim, "dim")
        if dim == dim_in:
            w = np.eye(dim_in)
        else:
            a = np.random.default_rng(seed).standard_normal((max(dim_in, dim), min(dim_in, dim)))
            basis, _ = np.linalg.qr(a)  # orthonormal columns
            w = basis if dim_in >= dim else basis.T
        return cls(w.copy(), None if shared else w.copy())

    @property
    def shared(self) -> bool:
        return self.candidate_weight is None

    @property
    def parameters(self) -> list[np.ndarray]:
        return [self.weight] if self.shared else [self.weight, self.candidate_weight]

    def transform(self, x, candidates: bool = False) -> np.ndarray:
        """Rows of ``x`` (n, E_in) through the query head (or the candidate head), L2-normalised:
        (n, E_out) float32."""
        x = self._input(x, "x")
        weight = self.weight if self.shared or not candidates else self.candidate_weight
        return _head_forward(x, weight)[0].astype(np.float32)

    def loss_and_grad(self, q, c, temperature: float = 0.02, group_size: int | None = None, positives=None,
                      ids=None, num_threads: int | None = None) -> tuple[float, list[np.ndarray]]:
        """InfoNCE of the transformed queries ``q`` (B, E_in) against the transformed
        candidates ``c`` (N, E_in), and its gradient for each array of :attr:`parameters`.

        The loss and d loss / d (normalised outputs) come from ``mp.loss.infonce``; they are
        carried back through the normalisation and the linear map here, in float64.
        """
        q, c = self._input(q, "q"), self._input(c, "c")
        wc = self.weight if self.shared else self.candidate_weight
        yq, nq = _head_forward(q, self.weight)
        yc, nc = _head_forward(c, wc)
        out = infonce(yq.astype(np.float32), yc.astype(np.float32), temperature, positives=positives,
                      group_size=group_size, ids=ids, return_grad=True, num_threads=num_threads)
        dwq = _head_backward(out.dq.astype(np.float64), q, yq, nq)
        dwc = _head_backward(out.dc.astype(np.float64), c, yc, nc)
        return float(out.loss), [dwq + dwc] if self.shared else [dwq, dwc]

    def _input(self, x, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.dtype.kind != "f":
            raise ValueError(f"{name} must be a 2-D float array, got shape {x.shape} dtype {x.dtype}")
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"{name} has dimension {x.shape[1]} but the head takes {self.weight.shape[0]}")
        return x.astype(np.float64, copy=False)


def train_linear_head(q_emb, c_emb, *, group_size: int | None = None, dim: int | None = None,
                      shared: bool = True, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                      weight_decay: float = 0.01, warmup: int = 0, schedule: str = "cosine",
                      temperature: float = 0.02, seed: int = 0, head: LinearHead | None = None,
                      progress: bool = False,
                      num_threads: int | None = None) -> tuple[LinearHead, np.ndarray]:
    """Fit a :class:`LinearHead` on frozen embeddings by minimising InfoNCE with AdamW.

    Each epoch shuffles the queries (seeded) and takes them ``batch_size`` at a time, each with
    its group of ``G`` candidates; the last batch of an epoch may be smaller. Every other
    query's candidates in the batch are in-batch negatives.

    Parameters
    ----------
    q_emb : (B, E_in) float array
        Query embeddings.
    c_emb : (B * G, E_in) float array
        Candidates grouped per query: query i's positive at row ``i * G``, then its ``G - 1``
        hard negatives.
    group_size : int, optional
        ``G``; default ``len(c_emb) // len(q_emb)`` (which must divide exactly).
    dim : int, optional
        Output dimension ``E_out``; default ``E_in`` (identity start, see :meth:`LinearHead.init`).
    shared : bool
        One head for queries and candidates (default) or one each.
    epochs, batch_size : int
        Passes over the queries, and queries per step.
    lr, weight_decay : float
        AdamW's peak learning rate and decoupled weight decay.
    warmup : int
        Steps of linear warm-up.
    schedule : {"cosine", "linear"}
        Decay after the warm-up, to 0 at the end (:func:`lr_factor`).
    temperature : float
        InfoNCE temperature.
    seed : int
        Seeds the initial head (when ``dim != E_in``) and the shuffling: equal seeds give
        equal results.
    head : LinearHead, optional
        Start from this head (copied) instead of a new one; ``dim``, ``shared`` are then ignored.
    progress : bool
        Show a tqdm bar with the running loss.

    Returns
    -------
    head : LinearHead
    losses : (steps,) float64
        The loss of each step's batch, before its update.
    """
    q_emb, c_emb = np.asarray(q_emb), np.asarray(c_emb)
    for name, a in (("q_emb", q_emb), ("c_emb", c_emb)):
        if a.ndim != 2 or a.dtype.kind != "f":
            raise ValueError(f"{name} must be a 2-D float array, got shape {a.shape} dtype {a.dtype}")
    if q_emb.shape[1] != c_emb.shape[1]:
        raise ValueError(f"q_emb has dimension {q_emb.shape[1]} but c_emb has {c_emb.shape[1]}")
    n = len(q_emb)
    if n == 0:
        raise ValueError("q_emb has no rows")
    if group_size is None:
        if len(c_emb) % n:
            raise ValueError(f"{len(c_emb)} candidates are not a whole number of groups for {n} queries")
        group_size = len(c_emb) // n
    group_size = _positive_int(group_size, "group_size")
    if len(c_emb) != n * group_size:
        raise ValueError(f"group_size={group_size} needs {n * group_size} candidates for {n} queries, "
                         f"got {len(c_emb)}")
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int (steps), got {warmup!r}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")

    rng = np.random.default_rng(seed)
    if head is None:
        head = LinearHead.init(q_emb.shape[1], dim, shared=shared, seed=int(rng.integers(2**31)))
    else:
        if head.weight.shape[0] != q_emb.shape[1]:
            raise ValueError(f"head takes dimension {head.weight.shape[0]}, embeddings have {q_emb.shape[1]}")
        head = LinearHead(head.weight.astype(np.float64),
                          None if head.shared else head.candidate_weight.astype(np.float64))
    optimizer = AdamW(head.parameters, lr=lr, weight_decay=weight_decay)
    groups = c_emb.reshape(n, group_size, c_emb.shape[1])
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    losses = np.empty(total)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="linear head", unit="step")
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            c = groups[idx].reshape(-1, c_emb.shape[1])
            losses[step], grads = head.loss_and_grad(q_emb[idx], c, temperature, group_size=group_size,
                                                     num_threads=num_threads)
            optimizer.step(grads, lr=lr * lr_factor(step, total, warmup, schedule))
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[step - 1]:.4f}")
    if bar is not None:
        bar.close()
    return head, losses
