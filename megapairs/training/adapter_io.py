"""The adapter's folder format, readable without PyTorch.

``adapter.json`` holds the widths and what the adapter was trained on (the space, its text
encoder, the temperature, the held-out split); ``adapter.safetensors`` holds the two maps,
``image_proj.weight`` (dim, image_dim) and ``text_proj.weight`` (dim, text_dim). Evaluation
reads them here with the C safetensors reader, so a trained adapter scores in an install
without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FORMAT", "AdapterWeights", "is_adapter", "read_adapter",
           "read_config"]

ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "megapairs.adapter/1"


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder an adapter was saved in."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_config(folder: str | os.PathLike) -> dict:
    """``adapter.json``, checked."""
    folder = Path(folder)
    if not is_adapter(folder):
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in '{folder}': not a megapairs adapter")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else config
        raise ValueError(f"{folder / ADAPTER_CONFIG}: format {got!r} is not {FORMAT!r}")
    for key in ("image_dim", "text_dim", "dim"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ValueError(f"{folder / ADAPTER_CONFIG}: {key} must be a positive int, got {config.get(key)!r}")
    return config


class AdapterWeights:
    """A saved adapter as NumPy: ``embed(image, text=None)`` = normalise(image W_I^T + text W_T^T)."""

    def __init__(self, config: dict, image_proj: np.ndarray, text_proj: np.ndarray):
        self.config, self.image_proj, self.text_proj = config, image_proj, text_proj

    def embed(self, image: np.ndarray, text: np.ndarray | None = None) -> np.ndarray:
        z = image.astype(np.float32, copy=False) @ self.image_proj.T
        if text is not None:
            z = z + text.astype(np.float32, copy=False) @ self.text_proj.T
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def read_adapter(folder: str | os.PathLike) -> AdapterWeights:
    """The adapter saved in ``folder``, as NumPy arrays."""
    from ..weights import SafetensorsFile

    folder = Path(folder)
    config = read_config(folder)
    shapes = {"image_proj.weight": (config["dim"], config["image_dim"]),
              "text_proj.weight": (config["dim"], config["text_dim"])}
    with SafetensorsFile(folder / ADAPTER_WEIGHTS) as f:
        arrays = {}
        for name, shape in shapes.items():
            if name not in f or tuple(f.shape(name)) != shape:
                raise ValueError(f"{folder / ADAPTER_WEIGHTS}: {name} must have shape {shape} "
                                 f"({ADAPTER_CONFIG}'s widths)")
            arrays[name] = np.array(f.get(name, dtype=np.float32))
    return AdapterWeights(config, arrays["image_proj.weight"], arrays["text_proj.weight"])
