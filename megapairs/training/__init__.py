"""Training retrievers on MegaPairs data.

* :func:`train` (and ``megapairs train``) trains MMRet on a pipeline output folder: a
  frozen-encoder adapter on the embeddings ``megapairs encode`` cached, or a full fine-tune of
  a CLIP, with AdamW, warm-up and cosine decay, GradCache for large batches, checkpoints and
  bit-for-bit resume (:mod:`megapairs.training.loop`). Needs PyTorch (``pip install
  'megapairs[train]'``).
* :func:`grad_cache_step` is one large-batch contrastive step in bounded memory, for your
  own PyTorch loops.
* :func:`train_linear_head` fits a linear adapter on frozen embeddings with NumPy alone.

Shapes: ``B`` queries, ``G`` candidates per query (the positive first, then ``G - 1`` hard
negatives), ``N = B * G`` candidates, ``E`` embedding dimension. See docs/training.md.
"""

from __future__ import annotations

from .gradcache import grad_cache_step
from .linear_head import AdamW, LinearHead, train_linear_head
from .schedule import lr_factor

__all__ = ["AdamW", "LinearHead", "MMRetAdapter", "MMRetCLIP", "TrainResult", "grad_cache_step", "lr_factor",
           "train", "train_linear_head"]

# name -> module: these need PyTorch and load on first use (``import megapairs`` never imports torch)
_LAZY = {"train": "loop", "TrainResult": "loop", "MMRetAdapter": "adapter", "MMRetCLIP": "clip"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
