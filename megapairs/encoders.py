"""Image encoders in the C core: CLIP vision towers (Hugging Face layout).

>>> import megapairs as mp
>>> clip = mp.CLIP.from_pretrained("openai/clip-vit-base-patch16")      # doctest: +SKIP
>>> emb = clip.encode_image(["a.jpg", "b.jpg"])                          # doctest: +SKIP
>>> emb.shape                                                            # doctest: +SKIP
(2, 512)

The checkpoint-name table (:func:`_clip_vision_tensors`) is the one place that knows how a
checkpoint names its tensors; the C core takes them in a fixed order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import _args, _core, images
from .weights import SafetensorsFile

__all__ = ["CLIP"]

_ACTIVATIONS = {"gelu": 0, "quick_gelu": 1}
_CLIP_KIND = 0


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


def _vision_config(config: dict, source: Path) -> tuple[dict, int]:
    if "vision_config" in config:  # CLIPModel
        vision = config["vision_config"] or {}
        projection = config.get("projection_dim", 512)
    elif config.get("model_type") == "clip_vision_model":  # CLIPVisionModelWithProjection
        vision, projection = config, config.get("projection_dim", 512)
    else:
        raise _core.FormatError(f"{source}: not a CLIP config (model_type {config.get('model_type')!r})")
    act = vision.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        raise _core.FormatError(f"{source}: hidden_act {act!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
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
        "activation": _ACTIVATIONS[act],
    }, projection


def _clip_vision_tensors(f: SafetensorsFile, c: dict) -> list[np.ndarray]:
    """The CLIP vision tower's tensors in the C core's order, from Hugging Face names, each
    checked against the shape the config implies."""
    D, M, p, E = c["width"], c["mlp"], c["patch_size"], c["projection"]
    G = c["image_size"] // p
    prefix = "vision_model."

    def get(name, shape):
        if name not in f:
            raise _core.FormatError(f"{f.path}: missing tensor '{name}' (expected shape {shape})")
        found = f.shape(name)
        if tuple(found) != tuple(shape):
            raise _core.FormatError(f"{f.path}: tensor '{name}' has shape {tuple(found)}, expected {tuple(shape)}")
        return f.get(name, "float32")

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


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CLIP:
    """A CLIP model's image tower, run by the C core.

    Use :meth:`from_pretrained`. ``precision='fp32'`` reproduces transformers;
    ``'bf16'`` runs the matmuls in bfloat16 (AMX where the CPU has it) with fp32
    accumulation, LayerNorm, softmax and residual stream.
    """

    def __init__(self, vit: _core.Vit, config: dict, transform: images.Transform, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self._vit, self.config, self.transform, self.precision = vit, config, transform, precision

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, precision: str = "fp32") -> CLIP:
        """Load a CLIP checkpoint in the Hugging Face layout (``config.json`` +
        ``model.safetensors`` or a sharded index; CLIPModel or CLIPVisionModelWithProjection),
        from a local directory or a hub id."""
        root = resolve_model_dir(path_or_hub_id)
        config_path = root / "config.json"
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json in '{root}'") from None
        except json.JSONDecodeError as exc:
            raise _core.FormatError(f"{config_path}: invalid JSON: {exc}") from None
        config, _ = _vision_config(raw, config_path)
        with SafetensorsFile(root) as f:
            tensors = _clip_vision_tensors(f, config)
        vit = _core.Vit(config, tensors)
        size = config["image_size"]
        transform = images.Transform(size, size, images.OPENAI_CLIP_MEAN, images.OPENAI_CLIP_STD)
        return cls(vit, config, transform, precision)

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
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        threads = _args.threads(num_threads)
        if isinstance(images_or_pixels, np.ndarray) and images_or_pixels.ndim == 4:
            pixels = images_or_pixels
        else:
            pixels = images.preprocess(list(images_or_pixels), self.transform, num_threads=num_threads)
        out = [self._vit.encode(pixels[i:i + batch_size], precision=self.precision, num_threads=threads)
               for i in range(0, len(pixels), batch_size)]
        emb = np.concatenate(out) if out else np.empty((0, self.embed_dim), np.float32)
        return _normalize(emb) if normalize else emb

    def encode_composed(self, images_or_pixels, texts):
        """normalise(image embedding + text embedding), the BGE-VL query encoding."""
        raise NotImplementedError("CLIP.encode_composed needs the CLIP text tower, which megapairs does not have yet")
