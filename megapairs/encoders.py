"""Encoders in the C core: CLIP (image and text towers), DINOv2, and BERT-family sentence
encoders.

>>> import megapairs as mp
>>> clip = mp.CLIP.from_pretrained("openai/clip-vit-base-patch16")      # doctest: +SKIP
>>> clip.encode_image(["a.jpg", "b.jpg"]).shape                          # doctest: +SKIP
(2, 512)
>>> clip.encode_text(["a dog on a beach", "a red car"]).shape            # doctest: +SKIP
(2, 512)
>>> clip.encode_composed(["a.jpg"], ["the same dog, but asleep"]).shape  # doctest: +SKIP
(1, 512)
>>> st = mp.SentenceEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
>>> st.encode(["A blackbird.", "A crow."]).shape                         # doctest: +SKIP
(2, 384)
>>> dino = mp.DINOv2.from_pretrained("facebook/dinov2-base")             # doctest: +SKIP
>>> dino.encode(["a.jpg", "b.jpg"], pooling="cls+mean").shape            # doctest: +SKIP
(2, 1536)

Checkpoints: the Hugging Face layouts (``config.json`` + ``model.safetensors`` or a sharded
index) for CLIPModel, CLIPVisionModelWithProjection, Dinov2Model and
Dinov2WithRegistersModel, and OpenCLIP's (``open_clip_config.json`` +
``open_clip_model.safetensors``). The alias tables (``_clip_hf_aliases``,
``_clip_open_clip_aliases``, ``_dinov2_aliases``, ...) are the one place that knows how
checkpoints name their tensors: they map the C core's canonical names (csrc/encoders/vit.h,
csrc/encoders/text.h) to the checkpoint's, and the core reads, checks and converts the
tensors. Text runs on packed sequences: each text is computed only up to its
own length (CLIP: up to its end-of-text token, which is all the causal pooled output depends on).
Images given as paths, bytes or any other iterable are read, preprocessed and encoded
``batch_size`` at a time, so memory is bounded by a batch and not by the corpus.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import _args, _core, images
from .weights import SafetensorsFile

__all__ = ["CLIP", "DINOv2", "SentenceEncoder"]

_ACTIVATIONS = ("gelu", "quick_gelu")
_CLIP_KIND, _DINOV2_KIND = "clip", "dinov2"
_TEXT_CLIP, _TEXT_BERT = "clip", "bert"
POOLINGS = ("cls", "cls+mean", "mean")


def _could_be_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face repository id: ``name`` or
    ``owner/name``, each part 1-96 ASCII letters, digits, '-', '_' or '.', neither starting nor
    ending with '-' or '.', and no '--' or '..' anywhere."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 2 or "--" in text or ".." in text or text.endswith(".git"):
        return False
    allowed = set("-_.")
    return all(0 < len(p) <= 96 and p.isascii() and all(c.isalnum() or c in allowed for c in p)
               and p[0] not in "-." and p[-1] not in "-." for p in parts)


def _looks_local(text: str) -> bool:
    """True when ``text`` can only be a local path: absolute, starting with '.' or '~', more
    than one path separator, or otherwise not of a hub id's form."""
    if os.path.isabs(text) or text.startswith((".", "~")):
        return True
    if text.count(os.sep) > 1 or (os.altsep is not None and text.count(os.altsep) > 1):
        return True
    return not _could_be_hub_id(text)


def resolve_model_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is (``~`` expanded); otherwise a Hugging Face hub id, fetched into
    (or found in) huggingface_hub's cache. With ``HF_HUB_OFFLINE=1`` only the cache is used.

    Raises
    ------
    FileNotFoundError
        ``"no such directory: '...'"`` for a missing path that cannot be a hub id (absolute,
        starting with '.' or '~', with more than one separator, or with characters a hub id
        cannot have); ``"no local directory '...', and the hub lookup failed: ..."`` when the
        hub (or, offline, its cache) does not have it either.
    ValueError
        The path is a file.
    """
    text = os.fsdecode(os.fspath(path_or_hub_id))
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a model directory or a hub id, got the file '{path}'")
    if _looks_local(text):
        raise FileNotFoundError(f"no such directory: '{text}'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"no local directory '{text}', and huggingface_hub is not installed to fetch it from the hub"
        ) from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.txt.gz"]  # configs, weights, vocabularies
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # not cached offline, not on the hub, gated, network
        said = " ".join(str(exc).split()) or "no message"
        raise FileNotFoundError(
            f"no local directory '{text}', and the hub lookup failed: {type(exc).__name__}: {said}"
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {path.name} in '{path.parent}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _core.FormatError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise _core.FormatError(f"{path}: expected a JSON object")
    return raw


def _activation(name: str, source: Path) -> str:
    if name not in _ACTIVATIONS:
        raise _core.FormatError(f"{source}: hidden_act {name!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
    return name


def _layer_aliases(layer: str, names: dict[str, str | tuple[str, str]]) -> dict[str, str]:
    """Aliases of the per-layer tensors: ``layer`` is the checkpoint's layer prefix (with
    ``{i}``), ``names`` maps each canonical part (norm1, attn.qkv, attn.out, norm2, mlp.fc1,
    mlp.fc2) to the checkpoint's module name, or to (weight source, bias source)."""
    aliases = {}
    for part, name in names.items():
        weight, bias = name if isinstance(name, tuple) else (f"{name}.weight", f"{name}.bias")
        aliases[f"layers.{{i}}.{part}.weight"] = " | ".join(" + ".join(layer + n for n in alt.split(" + "))
                                                            for alt in weight.split(" | "))
        aliases[f"layers.{{i}}.{part}.bias"] = bias if bias == "zeros" else " | ".join(
            " + ".join(layer + n for n in alt.split(" + ")) for alt in bias.split(" | "))
    return aliases


def _norm(canonical: str, name: str) -> dict[str, str]:
    return {f"{canonical}.weight": f"{name}.weight", f"{canonical}.bias": f"{name}.bias"}


def _qkv(template: str, names=("q", "k", "v")) -> tuple[str, str]:
    """q, k and v stored apart (``template`` names each with {}): their rows concatenated."""
    return tuple(" + ".join(f"{template.format(n)}.{kind}" for n in names) for kind in ("weight", "bias"))


_PIL_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box"}  # PIL.Image.Resampling codes


def _processor_transform(root: Path, fallback: images.Transform, image_size: int | None = None) -> images.Transform:
    """The checkpoint's ``preprocessor_config.json`` (transformers CLIPImageProcessor /
    BitImageProcessor fields) as a Transform; `fallback` when there is none, or, with a
    warning, when it asks for something Transform does not express (or a crop other than
    `image_size`, for towers that take one size only)."""
    path = root / "preprocessor_config.json"
    if not path.is_file():
        return fallback
    p = _read_json(path)
    size, crop = p.get("size"), p.get("crop_size")
    size = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    resample = _PIL_RESAMPLE.get(p.get("resample", 3))
    problem = None
    if not p.get("do_resize", True) or not p.get("do_center_crop", True) or not p.get("do_normalize", True):
        problem = "resize, centre crop and normalisation must all be on"
    elif not isinstance(size, int) or not all(isinstance(c, int) for c in crop):
        problem = f"size {p.get('size')!r} / crop_size {p.get('crop_size')!r} are not a shortest edge and a crop"
    elif resample is None:
        problem = f"resample {p.get('resample')!r} is not one of bicubic, bilinear, lanczos, box"
    elif image_size is not None and crop != (image_size, image_size):
        problem = f"crop {crop} is not the model's {image_size} x {image_size}"
    elif abs(p.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        problem = f"rescale_factor {p.get('rescale_factor')!r} is not 1/255"
    if problem:
        import warnings

        warnings.warn(f"{path}: {problem}; using {fallback}", stacklevel=3)
        return fallback
    return images.Transform(size, crop, tuple(p.get("image_mean", fallback.mean)),
                            tuple(p.get("image_std", fallback.std)), resample)


# --------------------------------------------------------------------------- CLIP


def _clip_hf_config(config: dict, source: Path) -> dict:
    if "vision_config" in config:  # CLIPModel
        vision = config["vision_config"] or {}
        projection = config.get("projection_dim", 512)
    elif config.get("model_type") == "clip_vision_model":  # CLIPVisionModelWithProjection
        vision, projection = config, config.get("projection_dim", 512)
    else:
        raise _core.FormatError(f"{source}: not a CLIP config (model_type {config.get('model_type')!r})")
    return {
        "kind": _CLIP_KIND,
        "image_size": vision.get("image_size", 224),
        "patch_size": vision.get("patch_size", 32),
        "width": vision.get("hidden_size", 768),
        "layers": vision.get("num_hidden_layers", 12),
        "heads": vision.get("num_attention_heads", 12),
        "mlp": vision.get("intermediate_size", 3072),
        "projection": projection,
        "eps": float(vision.get("layer_norm_eps", 1e-5)),
        "activation": _activation(vision.get("hidden_act", "quick_gelu"), source),
    }


_HF_CLIP_LAYER = {"norm1": "layer_norm1", "attn.qkv": _qkv("self_attn.{}_proj"), "attn.out": "self_attn.out_proj",
                  "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_OPEN_CLIP_LAYER = {"norm1": "ln_1", "attn.qkv": ("attn.in_proj_weight", "attn.in_proj_bias"),
                    "attn.out": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _clip_hf_aliases() -> dict[str, str]:
    """A Hugging Face CLIP vision tower's names for the C core's tensors."""
    v = "vision_model."
    return {
        "class_embedding": v + "embeddings.class_embedding",
        "patch_embedding.weight": v + "embeddings.patch_embedding.weight",
        "position_embedding": v + "embeddings.position_embedding.weight",
        **_norm("pre_norm", v + "pre_layrnorm"),
        **_layer_aliases(v + "encoder.layers.{i}.", _HF_CLIP_LAYER),
        **_norm("post_norm", v + "post_layernorm"),
        "projection": "visual_projection.weight",
    }


def _clip_open_clip_config(config: dict, source: Path) -> tuple[dict, images.Transform]:
    """The vision tower of an ``open_clip_config.json`` (OpenCLIP's CLIPVisionCfg defaults)."""
    model = config.get("model_cfg")
    if not isinstance(model, dict) or not isinstance(model.get("vision_cfg"), dict):
        raise _core.FormatError(f"{source}: no model_cfg.vision_cfg")
    v = model["vision_cfg"]
    unsupported = {
        "timm_model_name": v.get("timm_model_name"),
        "attentional_pool": v.get("attentional_pool", False),
        "ls_init_value": v.get("ls_init_value"),
        "no_ln_pre": v.get("no_ln_pre", False),
        "final_ln_after_pool": v.get("final_ln_after_pool", False),
    }
    for key, value in unsupported.items():
        if value:
            raise _core.FormatError(f"{source}: vision_cfg.{key}={value!r} is not supported")
    if v.get("pool_type", "tok") != "tok" or v.get("pos_embed_type", "learnable") != "learnable":
        raise _core.FormatError(f"{source}: only pool_type 'tok' with learnable position embeddings is supported")
    layers = v.get("layers", 12)
    if not isinstance(layers, int):
        raise _core.FormatError(f"{source}: vision_cfg.layers={layers!r}: ResNet towers are not supported")
    width = v.get("width", 768)
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        raise _core.FormatError(f"{source}: non-square image_size {image_size!r} is not supported")
    c = {
        "kind": _CLIP_KIND,
        "image_size": image_size,
        "patch_size": v.get("patch_size", 16),
        "width": width,
        "layers": layers,
        "heads": width // v.get("head_width", 64),
        "mlp": int(width * v.get("mlp_ratio", 4.0)),
        "projection": model.get("embed_dim", 512),
        "eps": 1e-5,
        "activation": "quick_gelu" if model.get("quick_gelu", False) else "gelu",
    }
    pre = config.get("preprocess_cfg") or {}
    transform = images.Transform(
        image_size, image_size,
        tuple(pre.get("mean", images.OPENAI_CLIP_MEAN)), tuple(pre.get("std", images.OPENAI_CLIP_STD)),
        pre.get("interpolation", "bicubic"),
    )
    return c, transform


def _clip_open_clip_aliases() -> dict[str, str]:
    """An OpenCLIP (OpenAI layout) vision tower's names: packed ``in_proj_weight`` (q, k, v
    rows), ``c_fc``/``c_proj`` MLP, ``proj`` stored (D, E)."""
    v = "visual."
    return {
        "class_embedding": v + "class_embedding",
        "patch_embedding.weight": v + "conv1.weight",
        "position_embedding": v + "positional_embedding",
        **_norm("pre_norm", v + "ln_pre"),
        **_layer_aliases(v + "transformer.resblocks.{i}.", _OPEN_CLIP_LAYER),
        **_norm("post_norm", v + "ln_post"),
        "projection": v + "proj^T",
    }


# --------------------------------------------------------------------------- CLIP text tower


def _clip_text_hf_config(config: dict, source: Path) -> dict | None:
    """The text tower of a CLIPModel / CLIPTextModelWithProjection config; None for a
    vision-only checkpoint."""
    if "text_config" in config:
        text, projection = config["text_config"] or {}, config.get("projection_dim", 512)
    elif config.get("model_type") == "clip_text_model":
        text, projection = config, config.get("projection_dim", 512)
    else:
        return None
    return {
        "kind": _TEXT_CLIP,
        "vocab": text.get("vocab_size", 49408),
        "positions": text.get("max_position_embeddings", 77),
        "token_types": 0,
        "width": text.get("hidden_size", 512),
        "layers": text.get("num_hidden_layers", 12),
        "heads": text.get("num_attention_heads", 8),
        "mlp": text.get("intermediate_size", 2048),
        "projection": projection,
        "eps": float(text.get("layer_norm_eps", 1e-5)),
        "activation": _activation(text.get("hidden_act", "quick_gelu"), source),
        # transformers pools at argmax(ids) for the legacy eos id 2 of the OpenAI configs,
        # else at the first eos token
        "eos_token_id": text.get("eos_token_id", 49407),
    }


def _clip_text_hf_aliases() -> dict[str, str]:
    """A Hugging Face CLIP text tower's names for the C core's tensors."""
    t = "text_model."
    return {
        "token_embedding": t + "embeddings.token_embedding.weight",
        "position_embedding": t + "embeddings.position_embedding.weight",
        **_layer_aliases(t + "encoder.layers.{i}.", _HF_CLIP_LAYER),
        **_norm("final_norm", t + "final_layer_norm"),
        "projection": "text_projection.weight",
    }


def _clip_text_open_clip_config(config: dict, source: Path) -> dict:
    """The text tower of an ``open_clip_config.json`` (OpenCLIP's CLIPTextCfg defaults)."""
    model = config.get("model_cfg") or {}
    t = model.get("text_cfg")
    if not isinstance(t, dict):
        raise _core.FormatError(f"{source}: no model_cfg.text_cfg")
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if t.get(key):
            raise _core.FormatError(f"{source}: text_cfg.{key}={t[key]!r}: Hugging Face text towers are not supported")
    if t.get("pool_type", "argmax") != "argmax" or t.get("no_causal_mask", False) or t.get("final_ln_after_pool"):
        raise _core.FormatError(f"{source}: only causal text towers pooled at argmax (the end token) are supported")
    width = t.get("width", 512)
    return {
        "kind": _TEXT_CLIP,
        "vocab": t.get("vocab_size", 49408),
        "positions": t.get("context_length", 77),
        "token_types": 0,
        "width": width,
        "layers": t.get("layers", 12),
        "heads": t.get("heads", 8),
        "mlp": int(width * t.get("mlp_ratio", 4.0)),
        "projection": model.get("embed_dim", 512),
        "eps": 1e-5,
        "activation": "quick_gelu" if model.get("quick_gelu", False) else "gelu",
        "eos_token_id": 2,  # open_clip pools at argmax(ids)
    }


def _clip_text_open_clip_aliases() -> dict[str, str]:
    """An OpenCLIP text tower's names (``text_projection`` is stored (D, E) and applied as
    ``x @ W``)."""
    return {
        "token_embedding": "token_embedding.weight",
        "position_embedding": "positional_embedding",
        **_layer_aliases("transformer.resblocks.{i}.", _OPEN_CLIP_LAYER),
        **_norm("final_norm", "ln_final"),
        "projection": "text_projection^T",
    }


def _pool_positions(ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Where transformers pools each row of ``ids``: the first maximum for the legacy eos id 2
    (what open_clip does too), else the first eos token (position 0 if there is none)."""
    if eos_token_id == 2:
        return ids.argmax(axis=1)
    return (ids == eos_token_id).argmax(axis=1)


def _pack(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids`` cut to ``lengths`` and concatenated, with their offsets."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    keep = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    return np.ascontiguousarray(ids[keep], dtype=np.int64), offsets


def _batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _text_list(texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"expected a list of strings for {what}; wrap a single text in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return texts


# --------------------------------------------------------------------------- DINOv2


def _dinov2_config(config: dict, source: Path) -> dict:
    model_type = config.get("model_type")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise _core.FormatError(f"{source}: not a DINOv2 config (model_type {model_type!r})")
    D = config.get("hidden_size", 768)
    mlp = int(D * config.get("mlp_ratio", 4))
    swiglu = bool(config.get("use_swiglu_ffn", False))
    if swiglu:  # two thirds of the hidden size, rounded up to a multiple of 8
        mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
    registers = config.get("num_register_tokens", 0) if model_type == "dinov2_with_registers" else 0
    return {
        "kind": _DINOV2_KIND,
        "image_size": config.get("image_size", 518),
        "patch_size": config.get("patch_size", 14),
        "width": D,
        "layers": config.get("num_hidden_layers", 12),
        "heads": config.get("num_attention_heads", 12),
        "mlp": mlp,
        "projection": 0,
        "registers": registers,
        "swiglu": swiglu,
        "eps": float(config.get("layer_norm_eps", 1e-6)),
        "activation": _activation(config.get("hidden_act", "gelu"), source),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        # transformers resamples positions with antialias only in the with-registers model
        "antialias": model_type == "dinov2_with_registers",
    }


def _dinov2_aliases(keys, c: dict) -> dict[str, str]:
    """A DINOv2 checkpoint's names for the C core's tensors. Accepts the hub's names
    (``attention.attention.query``, ``mlp.weights_in``) and transformers 5's
    (``attention.q_proj``, ``mlp.gate_proj``/``up_proj``/``down_proj``), with or without a
    ``dinov2.`` / ``dinov2_with_registers.`` prefix (found in ``keys``)."""
    prefix = next((k[: -len("embeddings.cls_token")] for k in keys if k.endswith("embeddings.cls_token")), "")
    e, a = prefix + "embeddings.", "attention."
    hub, new = _qkv(a + "attention.{}", ("query", "key", "value")), _qkv(a + "{}_proj")
    if c["swiglu"]:  # fc1 rows: the gate projection, then the up projection
        mlp = {"mlp.fc1": ("mlp.weights_in.weight | mlp.gate_proj.weight + mlp.up_proj.weight",
                           "mlp.weights_in.bias | mlp.gate_proj.bias + mlp.up_proj.bias"),
               "mlp.fc2": ("mlp.weights_out.weight | mlp.down_proj.weight", "mlp.weights_out.bias | mlp.down_proj.bias")}
    else:
        mlp = {"mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    layer = prefix + "encoder.layer.{i}."
    return {
        "class_embedding": e + "cls_token",
        "register_tokens": e + "register_tokens",
        "patch_embedding.weight": e + "patch_embeddings.projection.weight",
        "patch_embedding.bias": e + "patch_embeddings.projection.bias",
        "position_embedding": e + "position_embeddings",
        **_layer_aliases(layer, {
            "norm1": "norm1",
            "attn.qkv": (f"{hub[0]} | {new[0]}", f"{hub[1]} | {new[1]}" if c["qkv_bias"] else "zeros"),
            "attn.out": (f"{a}output.dense.weight | {a}o_proj.weight", f"{a}output.dense.bias | {a}o_proj.bias"),
            "norm2": "norm2",
            **mlp,
        }),
        "layers.{i}.scale1": layer + "layer_scale1.lambda1",
        "layers.{i}.scale2": layer + "layer_scale2.lambda1",
        **_norm("post_norm", prefix + "layernorm"),
    }


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """The cubic convolution kernel with parameter a (Keys)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """``(n_out, n_in)`` weights of PyTorch's 1-D bicubic resampling with ``size=n_out`` and
    ``align_corners=False``: without antialias, A = -0.75 taps at clamped indices around
    ``(i + 0.5) * n_in / n_out - 0.5``; with antialias, the A = -0.5 kernel stretched by the
    scale when shrinking, truncated at the borders and renormalised."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        if not antialias:
            src = scale * (i + 0.5) - 0.5
            x0 = math.floor(src)
            t = src - x0
            for k, weight in zip(range(x0 - 1, x0 + 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
                w[i, min(max(k, 0), n_in - 1)] += weight
        else:
            support = 2.0 * scale if scale >= 1 else 2.0
            inv = 1 / scale if scale >= 1 else 1.0
            center = scale * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
            taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
            w[i, lo:hi] = taps / taps.sum() if taps.sum() != 0 else taps
    return w


def interpolate_positions(table: np.ndarray, grid: int, antialias: bool = False) -> np.ndarray:
    """DINOv2 position embeddings ``(1 + G*G, D)`` resampled to a ``grid`` x ``grid`` patch
    grid as transformers does it (bicubic, ``align_corners=False``; with antialias for
    Dinov2WithRegistersModel); the class position is kept."""
    G = math.isqrt(table.shape[0] - 1)
    wy = bicubic_matrix(G, grid, antialias)
    patches = table[1:].astype(np.float64).reshape(G, G, -1)
    resized = np.einsum("yi,xj,ijd->yxd", wy, wy, patches, optimize=True).reshape(grid * grid, -1)
    return np.concatenate([table[:1], resized.astype(np.float32)])


# --------------------------------------------------------------------------- models


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_precision(precision: str) -> str:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return precision


_PROGRESS_ABOVE = 2048  # show_progress_bar=None: a bar for more items than this (as images.preprocess)


def _length(items) -> int | None:
    """``len(items)`` when it has one, else its length hint (None when unknown)."""
    try:
        return len(items)
    except TypeError:
        hint = operator.length_hint(items, -1)
        return hint if hint >= 0 else None


def _progress_bar(show_progress_bar: bool | None, total: int | None, unit: str, desc: str):
    """A tqdm bar on stderr, or None. ``show_progress_bar=None`` shows one only for more than
    2048 items (never when the count is unknown)."""
    if show_progress_bar is not None and not isinstance(show_progress_bar, bool):
        raise TypeError(f"show_progress_bar must be True, False or None, got {show_progress_bar!r}")
    if show_progress_bar is None:
        show_progress_bar = total is not None and total > _PROGRESS_ABOVE
    if not show_progress_bar:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc)


def _check_on_error(on_error):
    if not callable(on_error) and on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise', 'skip' or a callable, got {on_error!r}")
    return on_error


def _offset_handler(on_error, start: int):
    """The ``on_error`` for images.preprocess over the images from ``start`` on: indices made
    global; 'raise' raises naming the global index, as images.preprocess words it."""
    if on_error == "skip":
        return "skip"
    if on_error == "raise":
        def raise_global(i, exc):
            raise type(exc)(f"image {start + i}: {exc}") from None

        return raise_global
    return lambda i, exc: on_error(start + i, exc)


class _VisionTower:
    """Batching, preprocessing and normalisation shared by the towers."""

    _vit: _core.Vit
    transform: images.Transform
    precision: str

    def _encode(self, images_or_pixels, width, normalize, batch_size, num_threads, on_error="raise",
                show_progress_bar=None, forward=None, check=None):
        """Embeddings of preprocessed pixels (in slices of ``batch_size``), or of images read
        and preprocessed ``batch_size`` at a time, so that memory is bounded by a batch and
        not by the number of images. ``forward(pixels, threads)`` encodes one batch (default:
        the tower's encode); ``check(pixels)`` validates a pixel array or batch. Returns
        ``(embeddings, kept)`` unless ``on_error='raise'``."""
        batch_size = _batch_size(batch_size)
        _check_on_error(on_error)
        threads = _args.threads(num_threads)
        if forward is None:
            def forward(pixels, threads):
                return self._vit.encode(pixels, precision=self.precision, num_threads=threads)
        if isinstance(images_or_pixels, (str, bytes, os.PathLike)) or (
            isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 3
        ):
            raise TypeError("expected a list of images or an (N, 3, S, S) array; wrap a single image in a list")
        is_pixels = isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 4
        if is_pixels and check is not None:
            check(images_or_pixels)
        bar = _progress_bar(show_progress_bar, _length(images_or_pixels), "images", type(self).__name__)
        out, kept = [], []
        try:
            if is_pixels:
                pixels = images_or_pixels
                for i in range(0, len(pixels), batch_size):
                    out.append(forward(pixels[i:i + batch_size], threads))
                    if bar is not None:
                        bar.update(len(out[-1]))
                kept.append(np.arange(len(pixels), dtype=np.int64))
            else:
                self._stream(iter(images_or_pixels), batch_size, num_threads, threads, on_error, forward, check,
                             bar, out, kept)
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(out) if out else np.empty((0, width), np.float32)
        emb = _normalize(emb) if normalize else emb
        if on_error == "raise":
            return emb
        return emb, (np.concatenate(kept) if kept else np.empty(0, np.int64))

    def _stream(self, it, batch_size, num_threads, threads, on_error, forward, check, bar, out, kept):
        """Reads ``batch_size`` images at a time from ``it``, preprocesses them and encodes
        full batches of ``batch_size`` readable images (the last may be short), so the batches
        are those of preprocessing everything first; appends to ``out`` and ``kept``."""
        pending: list[np.ndarray] = []  # preprocessed images not yet encoded (fewer than batch_size)
        start = failed = 0
        while True:
            chunk = list(itertools.islice(it, batch_size))
            if not chunk:
                break
            pixels, good = images.preprocess(chunk, self.transform, num_threads=num_threads, progress=False,
                                             on_error=_offset_handler(on_error, start))
            kept.append(good + start)
            failed += len(chunk) - len(good)
            start += len(chunk)
            if pending:
                pixels = np.concatenate(pending + [pixels])
                pending = []
            full = len(pixels) - len(pixels) % batch_size
            for i in range(0, full, batch_size):
                batch = pixels[i:i + batch_size]
                if check is not None:
                    check(batch)
                out.append(forward(batch, threads))
            if full < len(pixels):
                pending.append(pixels[full:])
            if bar is not None:
                bar.update(len(chunk))
                if failed:
                    bar.set_postfix(failed=failed)
        if pending:
            batch = np.concatenate(pending)
            if check is not None:
                check(batch)
            out.append(forward(batch, threads))


class CLIP(_VisionTower):
    """A CLIP model, run by the C core: the image tower, and the text tower when the
    checkpoint has one.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces transformers;
    ``'bf16'`` runs the matmuls in bfloat16 (AMX where the CPU has it) with fp32
    accumulation, LayerNorm, softmax and residual stream.
    """

    def __init__(self, vit: _core.Vit, config: dict, transform: images.Transform, precision: str = "fp32",
                 text: _core.Text | None = None, text_config: dict | None = None, tokenizer_dir: Path | None = None):
        self._vit, self.config, self.transform = vit, config, transform
        self.precision = _check_precision(precision)
        self._text, self.text_config, self._tokenizer_dir = text, text_config, tokenizer_dir
        self._tokenizer = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> CLIP:
        """Load a CLIP checkpoint from a local directory or a hub id: the Hugging Face layout
        (``config.json`` + ``model.safetensors`` or a sharded index; CLIPModel, or
        CLIPVisionModelWithProjection for the image tower alone) or OpenCLIP's
        (``open_clip_config.json`` + ``open_clip_model.safetensors``). Weights may be stored as
        F32, F16 or BF16. Images are preprocessed as the checkpoint's
        ``preprocessor_config.json`` (or ``preprocess_cfg``) says, else with OpenAI CLIP's
        transform at the model's size. Texts are tokenised with the checkpoint's
        ``vocab.json`` + ``merges.txt`` when it has them, else with the OpenAI CLIP vocabulary
        (see :class:`megapairs.text.CLIPTokenizer`)."""
        _check_precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        text = text_core = None
        if (root / "config.json").is_file():
            raw = _read_json(root / "config.json")
            config = _clip_hf_config(raw, root / "config.json")
            text = _clip_text_hf_config(raw, root / "config.json")
            with SafetensorsFile(root) as f:
                vit = _core.Vit(config, f.readers, _clip_hf_aliases())
                if text is not None:
                    text_core = _core.Text(text, f.readers, _clip_text_hf_aliases())
            size = config["image_size"]
            transform = _processor_transform(
                root, images.Transform(size, size, images.OPENAI_CLIP_MEAN, images.OPENAI_CLIP_STD), size)
        elif (root / "open_clip_config.json").is_file():
            raw = _read_json(root / "open_clip_config.json")
            config, transform = _clip_open_clip_config(raw, root / "open_clip_config.json")
            weights = root / "open_clip_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"no open_clip_model.safetensors in '{root}' (pickled .bin files are not loaded)")
            with SafetensorsFile(weights) as f:
                vit = _core.Vit(config, f.readers, _clip_open_clip_aliases())
                if "token_embedding.weight" in f:
                    text = _clip_text_open_clip_config(raw, root / "open_clip_config.json")
                    text_core = _core.Text(text, f.readers, _clip_text_open_clip_aliases())
        else:
            raise FileNotFoundError(f"no config.json or open_clip_config.json in '{root}'")
        return cls(vit, config, transform, precision, text_core, text, root)

    @property
    def embed_dim(self) -> int:
        return self.config["projection"]

    @property
    def tokenizer(self):
        """The :class:`megapairs.text.CLIPTokenizer` for this model's texts (loaded on first use)."""
        if self._tokenizer is None:
            from .text import CLIPTokenizer

            root = self._tokenizer_dir
            has_vocab = root is not None and (root / "vocab.json").is_file() and (root / "merges.txt").is_file()
            self._tokenizer = CLIPTokenizer.from_pretrained(root if has_vocab else None)
        return self._tokenizer

    def encode_image(self, images_or_pixels, normalize: bool = True, batch_size: int = 32,
                     num_threads: int | None = None,
                     on_error: str | Callable[[int, Exception], object] = "raise",
                     show_progress_bar: bool | None = None):
        """Image embeddings, ``(N, E)`` float32; ``(embeddings, kept)`` unless
        ``on_error='raise'``.

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            Images as :func:`megapairs.images.preprocess` takes them (preprocessed with this
            model's transform), or pixels already preprocessed.
            An iterable of images (a list, or a generator) is read, preprocessed and
            encoded ``batch_size`` images at a time, so memory is bounded by a batch.
        normalize : bool
            L2-normalise the rows; False returns transformers' ``get_image_features``.
        batch_size : int
            Images per forward pass (bounds the activation and preprocessing memory).
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        on_error : {'raise', 'skip'} or callable
            For images that cannot be read: 'raise' raises the first one's error, naming its
            index in ``images_or_pixels``; 'skip' leaves them out and returns
            ``(embeddings, kept)``, ``kept`` the int64 indices of the embedded images; a
            callable ``on_error(index, exc)`` is called once for each (global index, the
            exception saying what is wrong) and the return is ``(embeddings, kept)`` too (see
            :func:`megapairs.images.preprocess`). Pixel arrays are never skipped
            (``kept`` is all of them).
        show_progress_bar : bool, optional
            A tqdm bar on stderr (images per second, and the ETA when the number of images is
            known); by default only for more than 2048 images.

        Returns
        -------
        embeddings : (N, E) float32
        kept : (N,) int64, only with ``on_error='skip'`` or a callable
        """
        return self._encode(images_or_pixels, self.embed_dim, normalize, batch_size, num_threads, on_error,
                            show_progress_bar)

    def tokenize(self, texts) -> np.ndarray:
        """``(N, context_length)`` int64 token ids for a list of texts (open_clip.tokenize)."""
        self._require_text()
        return self.tokenizer(_text_list(texts), context_length=self.text_config["positions"])

    def _require_text(self):
        if self._text is None:
            raise ValueError("this checkpoint has no text tower (a CLIPVisionModelWithProjection?); "
                             "load a CLIPModel or an OpenCLIP checkpoint for texts")

    def encode_text(self, texts_or_ids, normalize: bool = True, batch_size: int = 256,
                    num_threads: int | None = None, show_progress_bar: bool | None = None) -> np.ndarray:
        """Text embeddings, ``(N, E)`` float32.

        Parameters
        ----------
        texts_or_ids : list of str or (N, T) integer array
            Texts (tokenised with :attr:`tokenizer`, truncated to the model's context), or
            token ids as ``open_clip.tokenize`` / a Hugging Face CLIP tokenizer gives them.
            Each row is pooled where transformers pools it (its end-of-text token) and computed
            only up to there.
        normalize : bool
            L2-normalise the rows; False returns transformers' ``get_text_features``.
        batch_size : int
            Texts per forward pass.
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        show_progress_bar : bool, optional
            A tqdm bar on stderr (texts per second, ETA); by default only for more than 2048
            texts.
        """
        self._require_text()
        batch_size = _batch_size(batch_size)
        threads = _args.threads(num_threads)
        c = self.text_config
        if not isinstance(texts_or_ids, (str, list, tuple)) and hasattr(texts_or_ids, "__array__"):
            ids = np.asarray(texts_or_ids)  # NumPy ids, or the torch tensor open_clip.tokenize returns
            if ids.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            if ids.ndim != 2 or ids.shape[1] < 1 or ids.shape[1] > c["positions"]:
                raise ValueError(f"ids must be (N, T) with 1 <= T <= {c['positions']}, got shape {ids.shape}")
        else:
            ids = self.tokenize(texts_or_ids)
        ids = ids.astype(np.int64, copy=False)
        out = []
        bar = _progress_bar(show_progress_bar, len(ids), "texts", type(self).__name__)
        try:
            for i in range(0, len(ids), batch_size):
                chunk = ids[i:i + batch_size]
                packed, offsets = _pack(chunk, _pool_positions(chunk, c["eos_token_id"]) + 1)
                out.append(self._text.encode(packed, offsets, precision=self.precision, num_threads=threads))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(out) if out else np.empty((0, self.embed_dim), np.float32)
        return _normalize(emb) if normalize else emb

    def encode_composed(self, images_or_pixels, texts_or_ids, batch_size: int = 32,
                        num_threads: int | None = None) -> np.ndarray:
        """Composed-query embeddings, ``(N, E)``: L2-normalise(image features + text features),
        the BGE-VL-base/large query encoding (each image with the text of the same index).

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            As :meth:`encode_image` takes them (images are read ``batch_size`` at a time);
            every image must be readable.
        texts_or_ids : list of str or (N, T) integer array
            As :meth:`encode_text` takes them; the same N.
        """
        self._require_text()
        images_sized = isinstance(images_or_pixels, (list, tuple)) or (
            isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 4)
        if images_sized and isinstance(texts_or_ids, (list, tuple, np.ndarray)) \
                and len(images_or_pixels) != len(texts_or_ids):  # before encoding anything
            raise ValueError(f"encode_composed needs one text per image, got {len(images_or_pixels)} images "
                             f"and {len(texts_or_ids)} texts")
        image = self.encode_image(images_or_pixels, normalize=False, batch_size=batch_size, num_threads=num_threads)
        text = self.encode_text(texts_or_ids, normalize=False, num_threads=num_threads)
        if len(image) != len(text):
            raise ValueError(f"encode_composed needs one text per image, got {len(image)} images and {len(text)} texts")
        return _normalize(image + text)


class DINOv2(_VisionTower):
    """A DINOv2 image encoder (with or without registers), run by the C core.

    Use :meth:`from_pretrained`. Any input size works: position embeddings are resampled to
    the patch grid as transformers does it, once per size.
    """

    def __init__(self, vit: _core.Vit, config: dict, positions: np.ndarray, transform: images.Transform,
                 precision: str = "fp32"):
        self._vit, self.config, self.transform = vit, config, transform
        self.precision = _check_precision(precision)
        self._table = positions
        self._positions: dict[int, np.ndarray | None] = {}

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32",
                        transform: str | images.Transform | None = None) -> DINOv2:
        """Load a Dinov2Model or Dinov2WithRegistersModel checkpoint (``config.json`` +
        safetensors, F32/F16/BF16) from a local directory or a hub id. ``transform`` is the
        preprocessing applied to images; by default the checkpoint's
        ``preprocessor_config.json``, else the ``"dinov2"`` preset (resize 256, crop 224,
        ImageNet mean/std)."""
        _check_precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        if transform is None:
            transform = _processor_transform(root, images.PRESETS["dinov2"])
        transform = images._transform(transform)
        config = _dinov2_config(_read_json(root / "config.json"), root / "config.json")
        with SafetensorsFile(root) as f:
            vit = _core.Vit(config, f.readers, _dinov2_aliases(f.keys(), config))
        return cls(vit, config, vit.positions(), transform, precision)

    @property
    def embed_dim(self) -> int:
        """Width of ``pooling='cls'`` or ``'mean'`` embeddings (``'cls+mean'`` is twice this)."""
        return self.config["width"]

    def positions(self, image_size: int) -> np.ndarray | None:
        """Position embeddings for ``image_size`` pixel inputs (None: the checkpoint's own)."""
        grid = image_size // self.config["patch_size"]
        if grid not in self._positions:
            native = self.config["image_size"] // self.config["patch_size"]
            self._positions[grid] = (None if grid == native
                                     else interpolate_positions(self._table, grid, self.config["antialias"]))
        return self._positions[grid]

    def encode(self, images_or_pixels, pooling: str = "cls", normalize: bool = True, batch_size: int = 32,
               num_threads: int | None = None, on_error: str | Callable[[int, Exception], object] = "raise",
               show_progress_bar: bool | None = None):
        """Image embeddings, ``(N, D)`` float32 (``(N, 2D)`` for ``'cls+mean'``);
        ``(embeddings, kept)`` unless ``on_error='raise'``.

        Parameters
        ----------
        images_or_pixels : iterable of images or (N, 3, S, S) array
            Images as :func:`megapairs.images.preprocess` takes them (preprocessed with this
            model's transform), or pixels already preprocessed (any S >= patch size).
            An iterable of images (a list, or a generator) is read, preprocessed and
            encoded ``batch_size`` images at a time, so memory is bounded by a batch.
        pooling : {'cls', 'cls+mean', 'mean'}
            'cls': the class token after the final LayerNorm (transformers' ``pooler_output``);
            'mean': the mean of the patch tokens after it (class and registers excluded);
            'cls+mean': both concatenated, the DINOv2 linear-probe features.
        normalize : bool
            L2-normalise the rows (after concatenation for 'cls+mean').
        batch_size : int
            Images per forward pass (bounds the activation and preprocessing memory).
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        on_error : {'raise', 'skip'} or callable
            For images that cannot be read: 'raise' raises the first one's error, naming its
            index in ``images_or_pixels``; 'skip' leaves them out and returns
            ``(embeddings, kept)``, ``kept`` the int64 indices of the embedded images; a
            callable ``on_error(index, exc)`` is called once for each (global index, the
            exception saying what is wrong) and the return is ``(embeddings, kept)`` too (see
            :func:`megapairs.images.preprocess`). Pixel arrays are never skipped
            (``kept`` is all of them).
        show_progress_bar : bool, optional
            A tqdm bar on stderr (images per second, and the ETA when the number of images is
            known); by default only for more than 2048 images.

        Returns
        -------
        embeddings : (N, D) or (N, 2D) float32
        kept : (N,) int64, only with ``on_error='skip'`` or a callable
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

        def check(pixels):
            if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
                raise ValueError(f"pixels must be (N, 3, S, S), got {pixels.shape}")

        def forward(pixels, threads):
            size = pixels.shape[2]
            positions = self.positions(size) if size >= self.config["patch_size"] else None
            return self._vit.encode(pixels, precision=self.precision, num_threads=threads, pooling=pooling,
                                    positions=positions)

        width = self.embed_dim * (2 if pooling == "cls+mean" else 1)
        return self._encode(images_or_pixels, width, normalize, batch_size, num_threads, on_error, show_progress_bar,
                            forward=forward, check=check)


# --------------------------------------------------------------------------- sentence encoders


def _bert_config(config: dict, source: Path) -> dict:
    if config.get("model_type") != "bert":
        raise _core.FormatError(f"{source}: model_type {config.get('model_type')!r} is not supported "
                                "(SentenceEncoder runs BERT-architecture models)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise _core.FormatError(f"{source}: only absolute position embeddings are supported")
    act = config.get("hidden_act", "gelu")
    return {
        "kind": _TEXT_BERT,
        "vocab": config.get("vocab_size", 30522),
        "positions": config.get("max_position_embeddings", 512),
        "token_types": config.get("type_vocab_size", 2),
        "width": config.get("hidden_size", 768),
        "layers": config.get("num_hidden_layers", 12),
        "heads": config.get("num_attention_heads", 12),
        "mlp": config.get("intermediate_size", 3072),
        "projection": 0,
        "eps": float(config.get("layer_norm_eps", 1e-12)),
        "activation": _activation("gelu" if act == "gelu_python" else act, source),
    }


def _bert_aliases(keys) -> dict[str, str]:
    """A Hugging Face BertModel's names for the C core's tensors, with or without a ``bert.``
    prefix (checkpoints saved from a task model; found in ``keys``)."""
    prefix = next((k[: -len("embeddings.word_embeddings.weight")] for k in keys
                   if k.endswith("embeddings.word_embeddings.weight")), "")
    e = prefix + "embeddings."
    return {
        "token_embedding": e + "word_embeddings.weight",
        "position_embedding": e + "position_embeddings.weight",
        "token_type_embedding": e + "token_type_embeddings.weight",
        **_norm("embedding_norm", e + "LayerNorm"),
        **_layer_aliases(prefix + "encoder.layer.{i}.", {
            "norm1": "attention.output.LayerNorm",
            "attn.qkv": _qkv("attention.self.{}", ("query", "key", "value")),
            "attn.out": "attention.output.dense",
            "norm2": "output.LayerNorm",
            "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense",
        }),
    }


_ST_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def _sentence_transformers_layout(root: Path) -> tuple[Path, str, bool, dict]:
    """(transformer folder, pooling, normalize, sentence_bert_config) of a sentence-transformers
    model folder; a plain Hugging Face BERT folder gives mean pooling without normalisation,
    as sentence-transformers builds it."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return root, "mean", False, {}
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _core.FormatError(f"{modules_path}: invalid JSON: {exc}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise _core.FormatError(f"{modules_path}: expected a list of module objects")
    transformer, pooling, normalize = None, None, False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        folder = root / str(m.get("path", ""))
        if kind == "Transformer":
            transformer = folder
        elif kind == "Pooling":
            cfg = _read_json(folder / "config.json")
            modes = [name for key, name in _ST_POOLINGS.items() if cfg.get(key)]
            others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_POOLINGS]
            if len(modes) != 1 or others:
                raise _core.FormatError(f"{folder / 'config.json'}: pooling {modes + others} is not supported "
                                        "(one of mean or cls)")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        else:
            raise _core.FormatError(f"{modules_path}: module type {m.get('type')!r} is not supported")
    if transformer is None:
        raise _core.FormatError(f"{modules_path}: no Transformer module")
    bert_config = transformer / "sentence_bert_config.json"
    settings = _read_json(bert_config) if bert_config.is_file() else {}
    return transformer, pooling or "mean", normalize, settings


class SentenceEncoder:
    """A BERT-family sentence encoder (sentence-transformers model folders such as
    all-MiniLM-L6-v2), run by the C core: WordPiece tokenisation, the post-norm BERT encoder
    on packed sequences (no padding computed), mean or CLS pooling, optional L2
    normalisation.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces sentence-transformers;
    ``'bf16'`` runs the matmuls in bfloat16 with fp32 accumulation.
    """

    def __init__(self, text: _core.Text, config: dict, tokenizer, pooling: str = "mean", normalize: bool = True,
                 max_seq_length: int = 512, precision: str = "fp32", lowercase: bool = False):
        self._text, self.config, self.tokenizer = text, config, tokenizer
        self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length
        self.precision = _check_precision(precision)
        self.lowercase = lowercase  # sentence_bert_config.json do_lower_case: str.lower() before tokenising

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> SentenceEncoder:
        """Load a sentence-transformers model folder (``modules.json``: Transformer, Pooling
        mean or cls, optional Normalize) or a plain Hugging Face BERT folder (``config.json``,
        ``model.safetensors``, ``vocab.txt``), from a local directory or a hub id. Sequences are
        truncated at ``max_seq_length`` from ``sentence_bert_config.json`` (else the model's
        position count)."""
        from .text import WordPieceTokenizer

        _check_precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        folder, pooling, normalize, settings = _sentence_transformers_layout(root)
        config = _bert_config(_read_json(folder / "config.json"), folder / "config.json")
        with SafetensorsFile(folder) as f:
            text = _core.Text(config, f.readers, _bert_aliases(f.keys()))
        tokenizer = WordPieceTokenizer.from_pretrained(folder)
        max_len = min(int(settings.get("max_seq_length") or config["positions"]), config["positions"])
        return cls(text, config, tokenizer, pooling, normalize, max_len, precision,
                   bool(settings.get("do_lower_case", False)))

    @property
    def embed_dim(self) -> int:
        return self.config["width"]

    def encode(self, texts, normalize: bool | None = None, batch_size: int = 64,
               num_threads: int | None = None, show_progress_bar: bool | None = None) -> np.ndarray:
        """Sentence embeddings, ``(N, D)`` float32.

        Parameters
        ----------
        texts : list of str
            The sentences; each is truncated to :attr:`max_seq_length` tokens.
        normalize : bool, optional
            L2-normalise the rows; default as the model folder says (its Normalize module).
        batch_size : int
            Texts per forward pass.
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        show_progress_bar : bool, optional
            A tqdm bar on stderr (texts per second, ETA), as sentence-transformers'
            argument of that name; by default only for more than 2048 texts.
        """
        texts = _text_list(texts)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        batch_size = _batch_size(batch_size)
        threads = _args.threads(num_threads)
        out = []
        bar = _progress_bar(show_progress_bar, len(texts), "texts", type(self).__name__)
        try:
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[i:i + batch_size], max_length=self.max_seq_length)
                ids, mask = batch["input_ids"], batch["attention_mask"]
                packed, offsets = _pack(ids, mask.sum(axis=1))
                out.append(self._text.encode(packed, offsets, pooling=self.pooling, precision=self.precision,
                                             num_threads=threads))
                if bar is not None:
                    bar.update(len(ids))
        finally:
            if bar is not None:
                bar.close()
        emb = np.concatenate(out) if out else np.empty((0, self.embed_dim), np.float32)
        return _normalize(emb) if (self.normalize if normalize is None else normalize) else emb
