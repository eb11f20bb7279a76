"""Type stubs of megapairs._core, the private C extension. Use the megapairs package."""

from collections.abc import Sequence
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
def fuse(
    inputs: Sequence[npt.ArrayLike],  # count arrays of one shape (N, D)
    weights: npt.ArrayLike | None = None,  # (count,); None: all 1
    *,
    normalize: bool = True,
    out: npt.NDArray[np.float32] | None = None,  # may be one of the inputs
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def fuse_scores(
    scores: Sequence[npt.ArrayLike],  # count arrays of one shape
    weights: npt.ArrayLike | None = None,
    *,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def _raise_status_for_testing(status: int, message: str, /) -> None: ...
def matmul_nt(
    a: npt.ArrayLike,  # (M, K)
    b: npt.ArrayLike,  # (N, K)
    *,
    precision: str = "fp32",
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...  # (M, N) = a @ b.T

def knn_search(
    queries: npt.NDArray[np.float32],  # (Q, E), C-contiguous
    corpus: npt.NDArray[np.float32],  # (N, E), C-contiguous (a memmap streams)
    k: int,
    lo: float = ...,  # -inf: plain top-k; else only lo < s < hi
    hi: float = ...,
    *,
    exclude_self: bool = False,
    precision: str = "bf16",
    exact: bool = True,
    float64: bool = False,  # scores as ranked, before rounding to float32
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64], int]: ...  # scores (Q, k), indices (Q, k), rows rescored
def infonce(
    q: npt.NDArray[np.float32],  # (B, E)
    c: npt.NDArray[np.float32],  # (N, E)
    positives: npt.NDArray[np.int64],  # (B,) index into c of each query's positive
    ids: npt.NDArray[np.int64] | None,  # (N,) candidate ids; equal ids to the positive are masked
    temperature: float,
    *,
    grad: bool = True,
    precision: str = "fp32",
    num_threads: int = 0,
) -> tuple[float, npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None, float,
           npt.NDArray[np.float32]]: ...  # loss, dq (B, E), dc (N, E), dtau, row_loss (B,)

class SafetensorsReader:
    def __init__(self, path: str | bytes | PathLike[str], *, max_tensors: int = 0, max_header_bytes: int = 0) -> None: ...
    def keys(self) -> list[str]: ...
    def metadata(self) -> dict[str, str]: ...
    def info(self, name: str, /) -> tuple[str, tuple[int, ...], int, int]: ...
    def get(self, name: str, dtype: str | None = None, *, num_threads: int = 0) -> np.ndarray: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

class Vit:
    """A ViT image tower (CLIP or DINOv2) held by the C core. The core binds its weights by
    name (weights/bind.c) from `files`, after renaming them through `aliases` (canonical name
    -> source expression, megapairs/_checkpoints.py), and checks every shape."""

    def __init__(self, config: dict[str, Any], files: Sequence[SafetensorsReader], aliases: dict[str, str]) -> None: ...
    def encode(
        self,
        pixels: npt.ArrayLike,  # (N, 3, S, S)
        *,
        positions: npt.ArrayLike | None = None,  # (1 + (S // patch)**2, width)
        pooling: str = "cls",  # "cls", "cls+mean", "mean"
        precision: str = "fp32",
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

class Text:
    """A text Transformer (CLIP text tower or BERT) held by the C core, its weights bound by
    name as for Vit. Sequences are packed: sequence s is ids[offsets[s]:offsets[s + 1]]."""

    def __init__(self, config: dict[str, Any], files: Sequence[SafetensorsReader], aliases: dict[str, str]) -> None: ...
    def encode(
        self,
        ids: npt.ArrayLike,  # (R,) integer token ids, the sequences back to back
        offsets: npt.ArrayLike,  # (N + 1,) from 0 to R
        *,
        token_types: npt.ArrayLike | None = None,  # (R,) BERT only
        pooling: str = "last",  # "last" (CLIP), "mean", "cls" (BERT)
        precision: str = "fp32",
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

class ClipBpe:
    """CLIP's byte-level BPE held by the C core (text/clip_tokenizer.h). One call at a time per
    object (a lock serialises them); texts must already be cleaned and lower-cased."""

    def __init__(
        self,
        merges: bytes,  # open_clip bpe text (vocab None) or merges.txt
        *,
        n_merges: int | None = None,  # open_clip layout: merges lines[1 : n_merges + 1]
        vocab: dict[str, int] | None = None,  # Hugging Face vocab.json
        sot: str = "<|startoftext|>",
        eot: str = "<|endoftext|>",
        source: str = ...,
        vocab_source: str = ...,
    ) -> None: ...
    def encode_batch(
        self, texts: Sequence[str], context_length: int, *, num_threads: int = 0
    ) -> npt.NDArray[np.int64]: ...  # (N, context_length): sot, tokens, eot, zeros
    def encode(self, text: str, /) -> npt.NDArray[np.int64]: ...  # (n,) without sot/eot
    def decode(self, ids: npt.ArrayLike, /) -> bytes: ...  # the tokens' bytes, "</w>" included
    @property
    def vocab_size(self) -> int: ...
    @property
    def sot(self) -> int: ...
    @property
    def eot(self) -> int: ...
    @property
    def max_id(self) -> int: ...

class WordPiece:
    """BERT's WordPiece held by the C core (text/wordpiece.h); read-only, thread-safe. Non-ASCII
    text must already be NFD (strip_accents) and lower-cased per character (lowercase)."""

    def __init__(
        self,
        vocab: bytes,  # vocab.txt
        *,
        unk: str = "[UNK]",
        cls: str = "[CLS]",
        sep: str = "[SEP]",
        pad: str = "[PAD]",
        specials: Sequence[str] = (),  # added tokens matched in the raw text
        lowercase: bool = True,
        strip_accents: bool = True,
        tokenize_chinese_chars: bool = True,
        max_input_chars_per_word: int = 100,
        prefix: str = "##",
        source: str = "vocab.txt",
    ) -> None: ...
    def encode_batch(
        self, texts: Sequence[str], max_length: int, *, num_threads: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...  # input_ids, attention_mask (N, T)
    def encode(self, text: str, /) -> npt.NDArray[np.int64]: ...  # (n,) without [CLS]/[SEP]
    @property
    def vocab_size(self) -> int: ...
    @property
    def unk(self) -> int: ...
    @property
    def cls(self) -> int: ...
    @property
    def sep(self) -> int: ...
    @property
    def pad(self) -> int: ...
