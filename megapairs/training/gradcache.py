"""GradCache: one contrastive step over a large batch holding one sub-batch's activations.

Embeddings are computed sub-batch by sub-batch without a graph; the loss over the whole batch
gives their gradients; each sub-batch is then embedded again, with a graph, and
back-propagated from its slice of those gradients (Gao et al. 2021).

>>> loss_fn = mp.loss.InfoNCELoss(temperature=0.02)                          # doctest: +SKIP
>>> loss = mp.training.grad_cache_step(                                      # doctest: +SKIP
...     encode_query, encode_image, {"pixel_values": qp, "input_ids": ids}, cand_pixels,
...     loss_fn, sub_batch=16, group_size=5)
>>> optimizer.step(); optimizer.zero_grad()                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

from ._checks import positive_int as _positive_int

__all__ = ["grad_cache_step"]


def _split(inputs, size: int, name: str) -> tuple[list[Any], list[int]]:
    """``inputs`` (a tensor, a sequence of tensors or a mapping of tensors, all with the same
    length along dim 0) cut into pieces of ``size`` rows of the same kind; also each piece's rows."""
    import torch

    if isinstance(inputs, torch.Tensor):
        keys, tensors = None, [inputs]
    elif isinstance(inputs, Mapping):
        keys, tensors = list(inputs), list(inputs.values())
    elif isinstance(inputs, (list, tuple)):
        keys, tensors = None, list(inputs)
    else:
        raise TypeError(f"{name} must be a tensor, a list/tuple of tensors or a dict of tensors, "
                        f"got {type(inputs).__name__}")
    if not tensors:
        raise ValueError(f"{name} is empty")
    labels = keys if keys is not None else [f"[{i}]" for i in range(len(tensors))]
    for label, t in zip(labels, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} {label} must be a tensor, got {type(t).__name__}")
        if t.ndim == 0:
            raise ValueError(f"{name} {label} is a 0-d tensor; inputs are split along dim 0")
    rows = {int(t.shape[0]) for t in tensors}
    if len(rows) != 1:
        sizes = ", ".join(f"{label}: {int(t.shape[0])}" for label, t in zip(labels, tensors))
        raise ValueError(f"{name} must all have the same length along dim 0, got {sizes}")
    n = rows.pop()
    if n == 0:
        raise ValueError(f"{name} has no rows")
    pieces, counts = [], []
    for start in range(0, n, size):
        part = [t[start:start + size] for t in tensors]
        if isinstance(inputs, torch.Tensor):
            pieces.append(part[0])
        elif keys is not None:
            pieces.append(dict(zip(keys, part)))
        else:
            pieces.append(part)
        counts.append(min(size, n - start))
    return pieces, counts


def _call(fn: Callable, piece):
    """``fn(**piece)`` for a mapping, ``fn(*piece)`` for a sequence, ``fn(piece)`` for a tensor."""
    if isinstance(piece, Mapping):
        return fn(**piece)
    if isinstance(piece, (list, tuple)):
        return fn(*piece)
    return fn(piece)


def _tensors(piece) -> list:
    if isinstance(piece, Mapping):
        return list(piece.values())
    if isinstance(piece, (list, tuple)):
        return list(piece)
    return [piece]


class _RngState:
    """The CPU generator's state, and that of each CUDA device the inputs live on, as it was
    before a sub-batch's first forward; :meth:`restored` replays it for the second forward so
    that dropout draws the same masks, then puts the generators back as they were."""

    def __init__(self, piece):
        import torch

        self.cpu = torch.get_rng_state()
        self.devices = sorted({t.device.index or 0 for t in _tensors(piece) if t.device.type == "cuda"})
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def restored(self):
        import torch

        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _embedding(emb, rows: int, name: str):
    import torch

    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"{name} must return a tensor of embeddings, got {type(emb).__name__}")
    if emb.ndim != 2 or emb.shape[0] != rows:
        raise ValueError(f"{name} must return a ({rows}, E) tensor for a sub-batch of {rows} rows, "
                         f"got shape {tuple(emb.shape)}")
    return emb


def grad_cache_step(query_fn: Callable, candidate_fn: Callable, query_inputs, candidate_inputs,
                    loss_fn: Callable | None = None, *, sub_batch: int = 16,
                    candidate_sub_batch: int | None = None, group_size: int | None = None, positives=None,
                    ids=None, symmetric: bool = False) -> float:
    """One contrastive step with gradient caching: accumulate the full-batch gradient of the
    loss into the encoders' parameters, holding only one sub-batch's activations at a time.

    1. Every sub-batch of queries and of candidates is embedded under ``torch.no_grad()``,
       after saving the torch RNG state.
    2. The embeddings are concatenated into leaf tensors that require grad; the
       loss over the whole batch is computed by ``loss_fn`` and back-propagated, which yields
       d loss / d embedding for every row (and fills the gradient of a learnable temperature
       held by ``loss_fn``).
    3. Every sub-batch is embedded again, with a graph and with its saved RNG state restored
       (so dropout repeats the masks of step 1), and ``emb.backward(its gradient rows)``
       accumulates the parameter gradients.

    The result equals one backward through the whole batch, up to floating-point summation
    order. Gradients are *added* to ``.grad``: the caller calls ``optimizer.step()`` and
    ``optimizer.zero_grad()``. The generators are left as they were after step 1.

    Parameters
    ----------
    query_fn, candidate_fn : callable
        Map one sub-batch of inputs to a ``(rows, E)`` tensor of embeddings (normalise inside
        if the loss expects unit vectors). Called as ``fn(**d)`` for a dict, ``fn(*seq)`` for a
        list or tuple, ``fn(t)`` for a tensor. They may be the same function (a shared encoder).
    query_inputs : tensor, list/tuple of tensors, or dict of tensors
        The ``B`` queries; every tensor is split along dim 0 and must have ``B`` rows.
    candidate_inputs : tensor, list/tuple of tensors, or dict of tensors
        The ``N`` candidates, in the layout ``loss_fn`` expects (with ``group_size=G``:
        query i's positive at row ``i * G`` followed by its ``G - 1`` hard negatives).
    loss_fn : callable, optional
        ``loss_fn(q, c, **layout) -> scalar tensor``, where ``layout`` holds those of
        ``group_size``, ``positives``, ``ids`` and ``symmetric`` that were given.
        Default ``mp.loss.InfoNCELoss(temperature=0.02)``.
    sub_batch : int
        Rows per query forward; the last piece may be smaller.
    candidate_sub_batch : int, optional
        Rows per candidate forward; default ``sub_batch``.
    group_size, positives, ids, symmetric
        The candidate layout and options, passed on to ``loss_fn`` (see ``mp.loss.infonce``).

    Returns
    -------
    float
        The loss of the whole batch.

    Notes
    -----
    Cost: one extra forward of every encoder. Memory: the activations of one sub-batch plus
    the ``(B + N, E)`` embeddings and their gradients. Encoders on another device or dtype
    work too: the embeddings stay on their device and in their dtype for the loss
    (``InfoNCELoss`` runs the C kernel on CPU float32 and a tiled PyTorch path elsewhere), and
    each gradient slice is sent back to its sub-batch's device and dtype. The re-forward must compute the same
    function as the first: keep the modules' train/eval mode fixed within the step; batch
    statistics (BatchNorm in train mode) see a sub-batch, not the batch.
    """
    import torch

    if loss_fn is None:
        from ..loss import InfoNCELoss

        loss_fn = InfoNCELoss(temperature=0.02)
    q_rows = _positive_int(sub_batch, "sub_batch")
    c_rows = q_rows
    if candidate_sub_batch is not None:
        c_rows = _positive_int(candidate_sub_batch, "candidate_sub_batch")
    towers = [("query_fn", query_fn, *_split(query_inputs, q_rows, "query_inputs")),
              ("candidate_fn", candidate_fn, *_split(candidate_inputs, c_rows, "candidate_inputs"))]
    for name, fn, _, _ in towers:
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")

    # 1. embeddings without a graph; the RNG state before each piece
    states, leaves = [], []
    for name, fn, pieces, counts in towers:
        tower_states, embs = [], []
        for piece, rows in zip(pieces, counts):
            tower_states.append(_RngState(piece))
            with torch.no_grad():
                embs.append(_embedding(_call(fn, piece), rows, name).detach())
        states.append(tower_states)
        leaves.append(torch.cat(embs).requires_grad_())  # where the encoder left them: the loss runs anywhere
        del embs

    # 2. the loss of the whole batch and its gradient for every embedding row
    given = (("group_size", group_size), ("positives", positives), ("ids", ids))
    layout = {k: v for k, v in given if v is not None}
    if symmetric:
        layout["symmetric"] = True
    loss = loss_fn(leaves[0], leaves[1], **layout)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    loss.backward()
    cached = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]

    # 3. re-embed each piece with a graph and back-propagate its rows of the cached gradient
    for (name, fn, pieces, counts), tower_states, grad in zip(towers, states, cached):
        for piece, rows, state, dpiece in zip(pieces, counts, tower_states, grad.split(counts)):
            with state.restored():
                emb = _embedding(_call(fn, piece), rows, name)
            if emb.requires_grad:  # a frozen tower has nothing to accumulate
                emb.backward(dpiece.to(emb.device, emb.dtype))
    return float(loss.detach())
