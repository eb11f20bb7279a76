"""Type stubs of megapairs._core, the private C extension. Use the megapairs package."""

from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

class Error(RuntimeError): ...
class FormatError(Error, ValueError): ...

def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def onednn_info() -> dict[str, Any]: ...
def jpeg_version() -> str: ...
def jpeg_read_header(data: bytes | bytearray | memoryview, /) -> dict[str, Any]: ...
def jpeg_decode(data: bytes | bytearray | memoryview, max_pixels: int = 0, /) -> npt.NDArray[np.uint8]: ...  # (H, W, 3)
def preprocess(
    items: list[bytes | npt.NDArray[np.uint8]],  # JPEG bytes or (H, W, 3) uint8 pixels
    resize: int,
    crop: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    resample: int,  # 0 bicubic, 1 bilinear, 2 lanczos, 3 box
    max_pixels: int,
    fast: bool,
    *,
    pass_order: int = 1,  # 0: Pillow <= 12, 1: Pillow >= 13
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], list[str | None]]: ...  # (N, 3, h, w), status, messages
def _raise_status_for_testing(status: int, message: str, /) -> None: ...
def matmul_nt(
    a: npt.ArrayLike,  # (M, K)
    b: npt.ArrayLike,  # (N, K)
    *,
    precision: str = "fp32",
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...  # (M, N) = a @ b.T

class SafetensorsReader:
    def __init__(self, path: str | bytes | PathLike[str]) -> None: ...
    def keys(self) -> list[str]: ...
    def metadata(self) -> dict[str, str]: ...
    def info(self, name: str, /) -> tuple[str, tuple[int, ...], int, int]: ...
    def get(self, name: str, dtype: str | None = None, *, num_threads: int = 0) -> np.ndarray: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

class Vit:
    """A ViT image tower (CLIP or DINOv2) held by the C core; tensors in vit.h's canonical order."""

    def __init__(self, config: dict[str, Any], tensors: list[npt.ArrayLike]) -> None: ...
    def encode(
        self,
        pixels: npt.ArrayLike,  # (N, 3, S, S)
        *,
        positions: npt.ArrayLike | None = None,  # (1 + (S // patch)**2, width)
        pooling: str = "cls",  # "cls", "cls+mean", "mean"
        precision: str = "fp32",
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
