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

__all__ = ["AdamW", "LinearHead", "grad_cache_step", "lr_factor", "train_linear_head"]
