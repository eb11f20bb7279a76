"""How checkpoints name and configure their models: for each layout (Hugging Face CLIP,
OpenCLIP, DINOv2 with and without registers, BERT / sentence-transformers) a config reader
giving the C core's config dict, and an alias table mapping the core's canonical tensor names
(csrc/encoders/vit.h, text.h) to the checkpoint's. The core reads, checks and converts the
tensors; this module only knows names. Supporting a new layout means adding a pair here.

Alias sources follow the grammar of csrc/weights/bind.h: ``name``, ``name^T`` (transposed),
``a + b`` (rows concatenated), ``a | b`` (the first present), ``zeros``, and ``{i}`` for the
layer index.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import images
from ._hub import read_json
from .errors import FormatError

_ACTIVATIONS = ("gelu", "quick_gelu")
_CLIP_KIND, _DINOV2_KIND = "clip", "dinov2"
_TEXT_CLIP, _TEXT_BERT = "clip", "bert"


class _Fields:
    """One JSON object of a config, its fields read with their type checked. A field that is
    absent or null gives the default; one of another type is a FormatError naming the file and
    the field, so a broken config never surfaces as a TypeError deep in a reader."""

    def __init__(self, data, source: Path, where: str = ""):
        if not isinstance(data, dict):
            raise FormatError(f"{source}: {where or 'the config'} must be a JSON object, got {type(data).__name__}")
        self.data, self.source, self.where = data, source, where

    def _raw(self, key: str, default, expected: str, ok) -> object:
        value = self.data.get(key)
        if value is None:
            return default
        if not ok(value):
            raise FormatError(f"{self.source}: {self.where + '.' if self.where else ''}{key} must be {expected}, "
                              f"got {value!r}"[:400])
        return value

    def int(self, key: str, default: int) -> int:
        return self._raw(key, default, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))

    def positive_int(self, key: str, default: int) -> int:
        return self._raw(key, default, "a positive integer",
                         lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)

    def float(self, key: str, default: float) -> float:
        return float(self._raw(key, default, "a finite number", _finite))

    def bool(self, key: str, default: bool) -> bool:
        return self._raw(key, default, "true or false", lambda v: isinstance(v, bool))

    def str(self, key: str, default: str | None) -> str | None:
        return self._raw(key, default, "a string", lambda v: isinstance(v, str))

    def channels(self, key: str, default: tuple[float, ...]) -> tuple[float, float, float]:
        """Per-channel values: three numbers, or one for all three (as the image processors
        accept)."""
        value = self._raw(key, default, "a number or a list of 3 numbers",
                          lambda v: _finite(v) or (isinstance(v, (list, tuple)) and len(v) == 3
                                                    and all(_finite(x) for x in v)))
        return (float(value),) * 3 if _finite(value) else tuple(float(x) for x in value)

    def section(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        return None if value is None else _Fields(value, self.source, f"{self.where}.{key}" if self.where else key)


def _hidden(width: int, ratio: float, source: Path, where: str) -> int:
    """The MLP width ``int(width * ratio)`` of configs that give a ratio."""
    n = width * ratio
    if not 0 < n < 2**31:
        raise FormatError(f"{source}: {where}: width {width} x mlp_ratio {ratio} is not a layer size")
    return int(n)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _activation(name: str, source: Path) -> str:
    if name not in _ACTIVATIONS:
        raise FormatError(f"{source}: hidden_act {name!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
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


def processor_transform(root: Path, fallback: images.Transform, image_size: int | None = None) -> images.Transform:
    """The checkpoint's ``preprocessor_config.json`` (transformers CLIPImageProcessor /
    BitImageProcessor fields) as a Transform; `fallback` when there is none, or, with a
    warning, when it asks for something Transform does not express (or a crop other than
    `image_size`, for towers that take one size only). A field of the wrong JSON type is a
    FormatError."""
    path = root / "preprocessor_config.json"
    if not path.is_file():
        return fallback
    raw = read_json(path)
    p = _Fields(raw, path)
    size, crop = raw.get("size"), raw.get("crop_size")
    size = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    resample = p.int("resample", 3)
    mean, std = p.channels("image_mean", fallback.mean), p.channels("image_std", fallback.std)
    rescale = p.float("rescale_factor", 1 / 255)
    problem = None
    if not all(p.bool(key, True) for key in ("do_resize", "do_center_crop", "do_normalize")):
        problem = "resize, centre crop and normalisation must all be on"
    elif not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, *crop)):
        problem = f"size {raw.get('size')!r} / crop_size {raw.get('crop_size')!r} are not a shortest edge and a crop"
    elif resample not in _PIL_RESAMPLE:
        problem = f"resample {resample!r} is not one of bicubic, bilinear, lanczos, box"
    elif image_size is not None and crop != (image_size, image_size):
        problem = f"crop {crop} is not the model's {image_size} x {image_size}"
    elif abs(rescale - 1 / 255) > 1e-9:
        problem = f"rescale_factor {rescale!r} is not 1/255"
    elif not all(s > 0 for s in std):
        problem = f"image_std {std} has a value that is not positive"
    if problem:
        import warnings

        warnings.warn(f"{path}: {problem}; using {fallback}"[:600], stacklevel=3)
        return fallback
    return images.Transform(size, crop, mean, std, _PIL_RESAMPLE[resample])


# --------------------------------------------------------------------------- CLIP


def clip_hf_config(config: dict, source: Path) -> dict:
    c = _Fields(config, source)
    if "vision_config" in config:  # CLIPModel
        vision = c.section("vision_config") or _Fields({}, source)
    elif c.str("model_type", None) == "clip_vision_model":  # CLIPVisionModelWithProjection
        vision = c
    else:
        raise FormatError(f"{source}: not a CLIP config (model_type {config.get('model_type')!r})")
    return {
        "kind": _CLIP_KIND,
        "image_size": vision.int("image_size", 224),
        "patch_size": vision.int("patch_size", 32),
        "width": vision.int("hidden_size", 768),
        "layers": vision.int("num_hidden_layers", 12),
        "heads": vision.int("num_attention_heads", 12),
        "mlp": vision.int("intermediate_size", 3072),
        "projection": c.int("projection_dim", 512),
        "eps": vision.float("layer_norm_eps", 1e-5),
        "activation": _activation(vision.str("hidden_act", "quick_gelu"), source),
    }


_HF_CLIP_LAYER = {"norm1": "layer_norm1", "attn.qkv": _qkv("self_attn.{}_proj"), "attn.out": "self_attn.out_proj",
                  "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_OPEN_CLIP_LAYER = {"norm1": "ln_1", "attn.qkv": ("attn.in_proj_weight", "attn.in_proj_bias"),
                    "attn.out": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def clip_hf_aliases() -> dict[str, str]:
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


def clip_open_clip_config(config: dict, source: Path) -> tuple[dict, images.Transform]:
    """The vision tower of an ``open_clip_config.json`` (OpenCLIP's CLIPVisionCfg defaults)."""
    c = _Fields(config, source)
    model = c.section("model_cfg")
    v = model.section("vision_cfg") if model else None
    if v is None:
        raise FormatError(f"{source}: no model_cfg.vision_cfg")
    unsupported = {
        "timm_model_name": v.data.get("timm_model_name"),
        "attentional_pool": v.data.get("attentional_pool", False),
        "ls_init_value": v.data.get("ls_init_value"),
        "no_ln_pre": v.data.get("no_ln_pre", False),
        "final_ln_after_pool": v.data.get("final_ln_after_pool", False),
    }
    for key, value in unsupported.items():
        if value:
            raise FormatError(f"{source}: vision_cfg.{key}={value!r} is not supported"[:400])
    if v.data.get("pool_type", "tok") != "tok" or v.data.get("pos_embed_type", "learnable") != "learnable":
        raise FormatError(f"{source}: only pool_type 'tok' with learnable position embeddings is supported")
    if v.data.get("layers") is not None and not isinstance(v.data["layers"], int):
        raise FormatError(f"{source}: vision_cfg.layers={v.data['layers']!r}: ResNet towers are not supported"[:400])
    if v.data.get("image_size") is not None and not isinstance(v.data["image_size"], int):
        raise FormatError(f"{source}: non-square image_size {v.data['image_size']!r} is not supported"[:400])
    width, image_size = v.int("width", 768), v.positive_int("image_size", 224)
    c_out = {
        "kind": _CLIP_KIND,
        "image_size": image_size,
        "patch_size": v.int("patch_size", 16),
        "width": width,
        "layers": v.int("layers", 12),
        "heads": width // v.positive_int("head_width", 64),
        "mlp": _hidden(width, v.float("mlp_ratio", 4.0), source, "vision_cfg"),
        "projection": model.int("embed_dim", 512),
        "eps": 1e-5,
        "activation": "quick_gelu" if model.bool("quick_gelu", False) else "gelu",
    }
    pre = c.section("preprocess_cfg") or _Fields({}, source, "preprocess_cfg")
    try:
        transform = images.Transform(
            image_size, image_size, pre.channels("mean", images.OPENAI_CLIP_MEAN),
            pre.channels("std", images.OPENAI_CLIP_STD), pre.str("interpolation", "bicubic"))
    except ValueError as exc:
        raise FormatError(f"{source}: preprocess_cfg: {exc}") from None
    return c_out, transform


def clip_open_clip_aliases() -> dict[str, str]:
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


def clip_text_hf_config(config: dict, source: Path) -> dict | None:
    """The text tower of a CLIPModel / CLIPTextModelWithProjection config; None for a
    vision-only checkpoint."""
    c = _Fields(config, source)
    if "text_config" in config:
        text = c.section("text_config") or _Fields({}, source)
    elif c.str("model_type", None) == "clip_text_model":
        text = c
    else:
        return None
    return {
        "kind": _TEXT_CLIP,
        "vocab": text.int("vocab_size", 49408),
        "positions": text.int("max_position_embeddings", 77),
        "token_types": 0,
        "width": text.int("hidden_size", 512),
        "layers": text.int("num_hidden_layers", 12),
        "heads": text.int("num_attention_heads", 8),
        "mlp": text.int("intermediate_size", 2048),
        "projection": c.int("projection_dim", 512),
        "eps": text.float("layer_norm_eps", 1e-5),
        "activation": _activation(text.str("hidden_act", "quick_gelu"), source),
        # transformers pools at argmax(ids) for the legacy eos id 2 of the OpenAI configs,
        # else at the first eos token
        "eos_token_id": text.int("eos_token_id", 49407),
    }


def clip_text_hf_aliases() -> dict[str, str]:
    """A Hugging Face CLIP text tower's names for the C core's tensors."""
    t = "text_model."
    return {
        "token_embedding": t + "embeddings.token_embedding.weight",
        "position_embedding": t + "embeddings.position_embedding.weight",
        **_layer_aliases(t + "encoder.layers.{i}.", _HF_CLIP_LAYER),
        **_norm("final_norm", t + "final_layer_norm"),
        "projection": "text_projection.weight",
    }


def clip_text_open_clip_config(config: dict, source: Path) -> dict:
    """The text tower of an ``open_clip_config.json`` (OpenCLIP's CLIPTextCfg defaults)."""
    model = _Fields(config, source).section("model_cfg")
    t = model.section("text_cfg") if model else None
    if t is None:
        raise FormatError(f"{source}: no model_cfg.text_cfg")
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if t.data.get(key):
            raise FormatError(f"{source}: text_cfg.{key}={t.data[key]!r}: Hugging Face text towers are not supported"[:400])
    if (t.data.get("pool_type", "argmax") != "argmax" or t.data.get("no_causal_mask", False)
            or t.data.get("final_ln_after_pool")):
        raise FormatError(f"{source}: only causal text towers pooled at argmax (the end token) are supported")
    width = t.int("width", 512)
    return {
        "kind": _TEXT_CLIP,
        "vocab": t.int("vocab_size", 49408),
        "positions": t.int("context_length", 77),
        "token_types": 0,
        "width": width,
        "layers": t.int("layers", 12),
        "heads": t.int("heads", 8),
        "mlp": _hidden(width, t.float("mlp_ratio", 4.0), source, "text_cfg"),
        "projection": model.int("embed_dim", 512),
        "eps": 1e-5,
        "activation": "quick_gelu" if model.bool("quick_gelu", False) else "gelu",
        "eos_token_id": 2,  # open_clip pools at argmax(ids)
    }


def clip_text_open_clip_aliases() -> dict[str, str]:
    """An OpenCLIP text tower's names (``text_projection`` is stored (D, E) and applied as
    ``x @ W``)."""
    return {
        "token_embedding": "token_embedding.weight",
        "position_embedding": "positional_embedding",
        **_layer_aliases("transformer.resblocks.{i}.", _OPEN_CLIP_LAYER),
        **_norm("final_norm", "ln_final"),
        "projection": "text_projection^T",
    }



# --------------------------------------------------------------------------- DINOv2


def dinov2_config(config: dict, source: Path) -> dict:
    c = _Fields(config, source)
    model_type = config.get("model_type")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise FormatError(f"{source}: not a DINOv2 config (model_type {model_type!r})"[:400])
    D = c.int("hidden_size", 768)
    mlp = _hidden(D, c.float("mlp_ratio", 4), source, "config")
    swiglu = c.bool("use_swiglu_ffn", False)
    if swiglu:  # two thirds of the hidden size, rounded up to a multiple of 8
        mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
    return {
        "kind": _DINOV2_KIND,
        "image_size": c.int("image_size", 518),
        "patch_size": c.int("patch_size", 14),
        "width": D,
        "layers": c.int("num_hidden_layers", 12),
        "heads": c.int("num_attention_heads", 12),
        "mlp": mlp,
        "projection": 0,
        "registers": c.int("num_register_tokens", 0) if model_type == "dinov2_with_registers" else 0,
        "swiglu": swiglu,
        "eps": c.float("layer_norm_eps", 1e-6),
        "activation": _activation(c.str("hidden_act", "gelu"), source),
        "qkv_bias": c.bool("qkv_bias", True),
        # transformers resamples positions with antialias only in the with-registers model
        "antialias": model_type == "dinov2_with_registers",
    }


def dinov2_aliases(keys, c: dict) -> dict[str, str]:
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



# --------------------------------------------------------------------------- BERT and sentence-transformers


def bert_config(config: dict, source: Path) -> dict:
    c = _Fields(config, source)
    if config.get("model_type") != "bert":
        raise FormatError(f"{source}: model_type {config.get('model_type')!r} is not supported "
                          "(SentenceEncoder runs BERT-architecture models)"[:400])
    if c.str("position_embedding_type", "absolute") != "absolute":
        raise FormatError(f"{source}: only absolute position embeddings are supported")
    act = c.str("hidden_act", "gelu")
    return {
        "kind": _TEXT_BERT,
        "vocab": c.int("vocab_size", 30522),
        "positions": c.int("max_position_embeddings", 512),
        "token_types": c.int("type_vocab_size", 2),
        "width": c.int("hidden_size", 768),
        "layers": c.int("num_hidden_layers", 12),
        "heads": c.int("num_attention_heads", 12),
        "mlp": c.int("intermediate_size", 3072),
        "projection": 0,
        "eps": c.float("layer_norm_eps", 1e-12),
        "activation": _activation("gelu" if act == "gelu_python" else act, source),
    }


def bert_aliases(keys) -> dict[str, str]:
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


def sentence_transformers_layout(root: Path) -> tuple[Path, str, bool, dict]:
    """(transformer folder, pooling, normalize, sentence_bert_config) of a sentence-transformers
    model folder; a plain Hugging Face BERT folder gives mean pooling without normalisation,
    as sentence-transformers builds it."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return root, "mean", False, {}
    modules = read_json(modules_path, list)
    if not all(isinstance(m, dict) for m in modules):
        raise FormatError(f"{modules_path}: expected a list of module objects")
    transformer, pooling, normalize = None, None, False
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        folder = root / str(m.get("path", ""))
        if kind == "Transformer":
            transformer = folder
        elif kind == "Pooling":
            cfg = read_json(folder / "config.json")
            modes = [name for key, name in _ST_POOLINGS.items() if cfg.get(key)]
            others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_POOLINGS]
            if len(modes) != 1 or others:
                raise FormatError(f"{folder / 'config.json'}: pooling {modes + others} is not supported "
                                        "(one of mean or cls)")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        else:
            raise FormatError(f"{modules_path}: module type {m.get('type')!r} is not supported")
    if transformer is None:
        raise FormatError(f"{modules_path}: no Transformer module")
    bert_config = transformer / "sentence_bert_config.json"
    settings = read_json(bert_config) if bert_config.is_file() else {}
    return transformer, pooling or "mean", normalize, settings
