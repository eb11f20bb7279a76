"""Image encoders in the C core: CLIP vision towers and DINOv2.

>>> import megapairs as mp
>>> clip = mp.CLIP.from_pretrained("openai/clip-vit-base-patch16")      # doctest: +SKIP
>>> clip.encode_image(["a.jpg", "b.jpg"]).shape                          # doctest: +SKIP
(2, 512)
>>> dino = mp.DINOv2.from_pretrained("facebook/dinov2-base")             # doctest: +SKIP
>>> dino.encode(["a.jpg", "b.jpg"], pooling="cls+mean").shape            # doctest: +SKIP
(2, 1536)

Checkpoints: the Hugging Face layouts (``config.json`` + ``model.safetensors`` or a sharded
index) for CLIPModel, CLIPVisionModelWithProjection, Dinov2Model and
Dinov2WithRegistersModel, and OpenCLIP's (``open_clip_config.json`` +
``open_clip_model.safetensors``). The tensor tables (``_clip_hf_tensors``,
``_clip_open_clip_tensors``, ``_dinov2_tensors``) are the one place that knows how
checkpoints name their tensors; the C core takes them in a fixed order (see csrc/encoders/vit.h).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import _args, _core, images
from .weights import SafetensorsFile

__all__ = ["CLIP", "DINOv2"]

_ACTIVATIONS = {"gelu": 0, "quick_gelu": 1}
_CLIP_KIND, _DINOV2_KIND = 0, 1
POOLINGS = ("cls", "cls+mean", "mean")


def resolve_model_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hugging Face hub id, fetched into (or found in)
    huggingface_hub's cache. With ``HF_HUB_OFFLINE=1`` only the cache is used."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a model directory or a hub id, got the file '{path}'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"'{path_or_hub_id}' is not a local directory, and huggingface_hub is not installed to fetch it"
        ) from None
    return Path(snapshot_download(str(path_or_hub_id), allow_patterns=["*.json", "*.safetensors"]))


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


def _activation(name: str, source: Path) -> int:
    if name not in _ACTIVATIONS:
        raise _core.FormatError(f"{source}: hidden_act {name!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _getter(f: SafetensorsFile) -> Callable[..., np.ndarray]:
    """get(names, shape): the first of `names` present in `f`, as float32 of `shape`;
    FormatError naming the tensor when missing or of another shape."""

    def get(names, shape):
        names = (names,) if isinstance(names, str) else tuple(names)
        name = next((n for n in names if n in f), None)
        if name is None:
            raise _core.FormatError(f"{f.path}: missing tensor '{names[0]}' (expected shape {tuple(shape)})")
        found = tuple(f.shape(name))
        if found != tuple(shape):
            raise _core.FormatError(f"{f.path}: tensor '{name}' has shape {found}, expected {tuple(shape)}")
        return f.get(name, "float32")

    return get


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


def _clip_hf_tensors(f: SafetensorsFile, c: dict) -> list[np.ndarray]:
    """A Hugging Face CLIP vision tower's tensors in the C core's order."""
    D, M, p, E = c["width"], c["mlp"], c["patch_size"], c["projection"]
    G = c["image_size"] // p
    get, prefix = _getter(f), "vision_model."
    tensors = [
        get(prefix + "embeddings.class_embedding", (D,)),
        get(prefix + "embeddings.patch_embedding.weight", (D, 3, p, p)),
        get(prefix + "embeddings.position_embedding.weight", (1 + G * G, D)),
        get(prefix + "pre_layrnorm.weight", (D,)),
        get(prefix + "pre_layrnorm.bias", (D,)),
    ]
    for i in range(c["layers"]):
        layer = f"{prefix}encoder.layers.{i}."
        q, k, v = (get(layer + f"self_attn.{n}_proj.weight", (D, D)) for n in "qkv")
        qb, kb, vb = (get(layer + f"self_attn.{n}_proj.bias", (D,)) for n in "qkv")
        tensors += [
            get(layer + "layer_norm1.weight", (D,)), get(layer + "layer_norm1.bias", (D,)),
            np.concatenate([q, k, v]), np.concatenate([qb, kb, vb]),  # fused QKV
            get(layer + "self_attn.out_proj.weight", (D, D)), get(layer + "self_attn.out_proj.bias", (D,)),
            get(layer + "layer_norm2.weight", (D,)), get(layer + "layer_norm2.bias", (D,)),
            get(layer + "mlp.fc1.weight", (M, D)), get(layer + "mlp.fc1.bias", (M,)),
            get(layer + "mlp.fc2.weight", (D, M)), get(layer + "mlp.fc2.bias", (D,)),
        ]
    tensors += [
        get(prefix + "post_layernorm.weight", (D,)),
        get(prefix + "post_layernorm.bias", (D,)),
        get("visual_projection.weight", (E, D)),
    ]
    return tensors


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
        "activation": _ACTIVATIONS["quick_gelu" if model.get("quick_gelu", False) else "gelu"],
    }
    pre = config.get("preprocess_cfg") or {}
    transform = images.Transform(
        image_size, image_size,
        tuple(pre.get("mean", images.OPENAI_CLIP_MEAN)), tuple(pre.get("std", images.OPENAI_CLIP_STD)),
        pre.get("interpolation", "bicubic"),
    )
    return c, transform


def _clip_open_clip_tensors(f: SafetensorsFile, c: dict) -> list[np.ndarray]:
    """An OpenCLIP (OpenAI layout) vision tower's tensors in the C core's order: packed
    ``in_proj_weight`` (q, k, v rows), ``c_fc``/``c_proj`` MLP, ``proj`` stored (D, E)."""
    D, M, p, E = c["width"], c["mlp"], c["patch_size"], c["projection"]
    G = c["image_size"] // p
    get, prefix = _getter(f), "visual."
    tensors = [
        get(prefix + "class_embedding", (D,)),
        get(prefix + "conv1.weight", (D, 3, p, p)),
        get(prefix + "positional_embedding", (1 + G * G, D)),
        get(prefix + "ln_pre.weight", (D,)),
        get(prefix + "ln_pre.bias", (D,)),
    ]
    for i in range(c["layers"]):
        block = f"{prefix}transformer.resblocks.{i}."
        tensors += [
            get(block + "ln_1.weight", (D,)), get(block + "ln_1.bias", (D,)),
            get(block + "attn.in_proj_weight", (3 * D, D)), get(block + "attn.in_proj_bias", (3 * D,)),
            get(block + "attn.out_proj.weight", (D, D)), get(block + "attn.out_proj.bias", (D,)),
            get(block + "ln_2.weight", (D,)), get(block + "ln_2.bias", (D,)),
            get(block + "mlp.c_fc.weight", (M, D)), get(block + "mlp.c_fc.bias", (M,)),
            get(block + "mlp.c_proj.weight", (D, M)), get(block + "mlp.c_proj.bias", (D,)),
        ]
    tensors += [
        get(prefix + "ln_post.weight", (D,)),
        get(prefix + "ln_post.bias", (D,)),
        np.ascontiguousarray(get(prefix + "proj", (D, E)).T),
    ]
    return tensors


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


def _dinov2_tensors(f: SafetensorsFile, c: dict) -> list[np.ndarray]:
    """A DINOv2 checkpoint's tensors in the C core's order. Accepts the hub's names
    (``attention.attention.query``, ``mlp.weights_in``) and transformers 5's
    (``attention.q_proj``, ``mlp.gate_proj``/``up_proj``/``down_proj``), with or without a
    ``dinov2.`` / ``dinov2_with_registers.`` prefix."""
    D, M, p, R = c["width"], c["mlp"], c["patch_size"], c["registers"]
    G = c["image_size"] // p
    get = _getter(f)
    prefix = next((k[: -len("embeddings.cls_token")] for k in f.keys() if k.endswith("embeddings.cls_token")), "")
    e = prefix + "embeddings."
    tensors = [get(e + "cls_token", (1, 1, D)).reshape(D)]
    if R:
        tensors.append(get(e + "register_tokens", (1, R, D)).reshape(R, D))
    tensors += [
        get(e + "patch_embeddings.projection.weight", (D, 3, p, p)),
        get(e + "patch_embeddings.projection.bias", (D,)),
        get(e + "position_embeddings", (1, 1 + G * G, D)).reshape(1 + G * G, D),
    ]
    for i in range(c["layers"]):
        layer = f"{prefix}encoder.layer.{i}."
        a = layer + "attention."
        qkv_w = [get((a + f"attention.{n}.weight", a + f"{s}_proj.weight"), (D, D))
                 for n, s in (("query", "q"), ("key", "k"), ("value", "v"))]
        if c["qkv_bias"]:
            qkv_b = [get((a + f"attention.{n}.bias", a + f"{s}_proj.bias"), (D,))
                     for n, s in (("query", "q"), ("key", "k"), ("value", "v"))]
        else:
            qkv_b = [np.zeros(D, np.float32)] * 3
        tensors += [
            get(layer + "norm1.weight", (D,)), get(layer + "norm1.bias", (D,)),
            np.concatenate(qkv_w), np.concatenate(qkv_b),
            get((a + "output.dense.weight", a + "o_proj.weight"), (D, D)),
            get((a + "output.dense.bias", a + "o_proj.bias"), (D,)),
            get(layer + "layer_scale1.lambda1", (D,)),
            get(layer + "norm2.weight", (D,)), get(layer + "norm2.bias", (D,)),
        ]
        mlp = layer + "mlp."
        if c["swiglu"]:  # fc1 rows: the gate projection, then the up projection
            if mlp + "weights_in.weight" in f:
                tensors += [get(mlp + "weights_in.weight", (2 * M, D)), get(mlp + "weights_in.bias", (2 * M,))]
            else:
                tensors += [
                    np.concatenate([get(mlp + "gate_proj.weight", (M, D)), get(mlp + "up_proj.weight", (M, D))]),
                    np.concatenate([get(mlp + "gate_proj.bias", (M,)), get(mlp + "up_proj.bias", (M,))]),
                ]
            tensors += [get((mlp + "weights_out.weight", mlp + "down_proj.weight"), (D, M)),
                        get((mlp + "weights_out.bias", mlp + "down_proj.bias"), (D,))]
        else:
            tensors += [get(mlp + "fc1.weight", (M, D)), get(mlp + "fc1.bias", (M,)),
                        get(mlp + "fc2.weight", (D, M)), get(mlp + "fc2.bias", (D,))]
        tensors.append(get(layer + "layer_scale2.lambda1", (D,)))
    tensors += [get(prefix + "layernorm.weight", (D,)), get(prefix + "layernorm.bias", (D,))]
    return tensors


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


class _VisionTower:
    """Batching, preprocessing and normalisation shared by the towers."""

    _vit: _core.Vit
    transform: images.Transform
    precision: str

    def _pixels(self, images_or_pixels, num_threads):
        if isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 4:
            return images_or_pixels
        if isinstance(images_or_pixels, (str, bytes, os.PathLike)) or (
            isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 3
        ):
            raise TypeError("expected a list of images or an (N, 3, S, S) array; wrap a single image in a list")
        return images.preprocess(list(images_or_pixels), self.transform, num_threads=num_threads)

    def _encode(self, images_or_pixels, width, normalize, batch_size, num_threads, **kwargs) -> np.ndarray:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        threads = _args.threads(num_threads)
        pixels = self._pixels(images_or_pixels, num_threads)
        out = [self._vit.encode(pixels[i:i + batch_size], precision=self.precision, num_threads=threads, **kwargs)
               for i in range(0, len(pixels), batch_size)]
        emb = np.concatenate(out) if out else np.empty((0, width), np.float32)
        return _normalize(emb) if normalize else emb


class CLIP(_VisionTower):
    """A CLIP model's image tower, run by the C core.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces transformers;
    ``'bf16'`` runs the matmuls in bfloat16 (AMX where the CPU has it) with fp32
    accumulation, LayerNorm, softmax and residual stream.
    """

    def __init__(self, vit: _core.Vit, config: dict, transform: images.Transform, precision: str = "fp32"):
        self._vit, self.config, self.transform = vit, config, transform
        self.precision = _check_precision(precision)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> CLIP:
        """Load a CLIP checkpoint from a local directory or a hub id: the Hugging Face layout
        (``config.json`` + ``model.safetensors`` or a sharded index; CLIPModel or
        CLIPVisionModelWithProjection) or OpenCLIP's (``open_clip_config.json`` +
        ``open_clip_model.safetensors``). Weights may be stored as F32, F16 or BF16. Images
        are preprocessed as the checkpoint's ``preprocessor_config.json`` (or
        ``preprocess_cfg``) says, else with OpenAI CLIP's transform at the model's size."""
        _check_precision(precision)
        root = resolve_model_dir(path_or_hub_id)
        if (root / "config.json").is_file():
            config = _clip_hf_config(_read_json(root / "config.json"), root / "config.json")
            with SafetensorsFile(root) as f:
                tensors = _clip_hf_tensors(f, config)
            size = config["image_size"]
            transform = _processor_transform(
                root, images.Transform(size, size, images.OPENAI_CLIP_MEAN, images.OPENAI_CLIP_STD), size)
        elif (root / "open_clip_config.json").is_file():
            config, transform = _clip_open_clip_config(_read_json(root / "open_clip_config.json"),
                                                       root / "open_clip_config.json")
            weights = root / "open_clip_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"no open_clip_model.safetensors in '{root}' (pickled .bin files are not loaded)")
            with SafetensorsFile(weights) as f:
                tensors = _clip_open_clip_tensors(f, config)
        else:
            raise FileNotFoundError(f"no config.json or open_clip_config.json in '{root}'")
        return cls(_core.Vit(config, tensors), config, transform, precision)

    @property
    def embed_dim(self) -> int:
        return self.config["projection"]

    def encode_image(self, images_or_pixels, normalize: bool = True, batch_size: int = 32,
                     num_threads: int | None = None) -> np.ndarray:
        """Image embeddings, ``(N, E)`` float32.

        Parameters
        ----------
        images_or_pixels : list of images or (N, 3, S, S) array
            Anything :func:`megapairs.images.preprocess` takes (preprocessed with this model's
            transform), or pixels already preprocessed.
        normalize : bool
            L2-normalise the rows; False returns transformers' ``get_image_features``.
        batch_size : int
            Images per forward pass (bounds the activation memory).
        num_threads : int, optional
            Threads for this call; default :func:`megapairs.get_num_threads`.
        """
        return self._encode(images_or_pixels, self.embed_dim, normalize, batch_size, num_threads)

    def encode_composed(self, images_or_pixels, texts):
        """normalise(image embedding + text embedding), the BGE-VL query encoding."""
        raise NotImplementedError("CLIP.encode_composed needs the CLIP text tower, which megapairs does not have yet")


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
            tensors = _dinov2_tensors(f, config)
        positions = tensors[4 if config["registers"] else 3]
        return cls(_core.Vit(config, tensors), config, positions, transform, precision)

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
               num_threads: int | None = None) -> np.ndarray:
        """Image embeddings, ``(N, D)`` float32 (``(N, 2D)`` for ``'cls+mean'``).

        Parameters
        ----------
        images_or_pixels : list of images or (N, 3, S, S) array
            Anything :func:`megapairs.images.preprocess` takes (preprocessed with this model's
            transform), or pixels already preprocessed (any S >= patch size).
        pooling : {'cls', 'cls+mean', 'mean'}
            'cls': the class token after the final LayerNorm (transformers' ``pooler_output``);
            'mean': the mean of the patch tokens after it (class and registers excluded);
            'cls+mean': both concatenated, the DINOv2 linear-probe features.
        normalize : bool
            L2-normalise the rows (after concatenation for 'cls+mean').
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        pixels = self._pixels(images_or_pixels, num_threads)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
            raise ValueError(f"pixels must be (N, 3, S, S), got {pixels.shape}")
        width = self.embed_dim * (2 if pooling == "cls+mean" else 1)
        positions = self.positions(pixels.shape[2]) if pixels.shape[2] >= self.config["patch_size"] else None
        return self._encode(pixels, width, normalize, batch_size, num_threads, pooling=pooling, positions=positions)
