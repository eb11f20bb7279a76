"""Resampling of DINOv2 position embeddings to another patch grid, as transformers does it
(PyTorch's bicubic interpolation with ``align_corners=False``, antialiased for
Dinov2WithRegistersModel), in float64 NumPy; computed once per image size by the model."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["bicubic_matrix", "interpolate_positions"]


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
