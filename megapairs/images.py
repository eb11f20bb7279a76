"""Decoding and preprocessing images for CLIP and DINOv2 encoders.

JPEG is decoded by the C core (libjpeg-turbo); other formats (PNG, WebP, GIF, BMP, TIFF, ...)
by Pillow. :func:`preprocess` resizes, centre-crops and normalises a batch in one pass per
image, images in parallel, and in ``exact`` mode reproduces transformers'
``CLIPImageProcessor`` / ``BitImageProcessor`` (PIL backend) bit for bit.

>>> import megapairs as mp
>>> pixels = mp.images.preprocess(["a.jpg", "b.png"], transform="clip")   # doctest: +SKIP
>>> pixels.shape, pixels.dtype                                            # doctest: +SKIP
((2, 3, 224, 224), dtype('float32'))
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from . import _args, _core
from .errors import FormatError

__all__ = ["MAX_IMAGE_PIXELS", "PRESETS", "Transform", "decode", "preprocess", "to_rgb"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Default pixel limit, Pillow's ``Image.MAX_IMAGE_PIXELS``: larger images are refused as
#: likely decompression bombs. Pass ``max_pixels=None`` to lift it.
MAX_IMAGE_PIXELS = 89_478_485

_RESAMPLE = {"bicubic": 0, "bilinear": 1, "lanczos": 2, "box": 3}
_JPEG_MAGIC = b"\xff\xd8\xff"
_CHUNK = 256  # images per core call: bounds memory for path inputs and paces the progress bar


def _pillow_pass_order() -> int:
    """Pillow 13 changed the order of its two resampling passes for images whose height
    shrinks much more than their width; exact mode follows the Pillow that is installed,
    which is the one transformers' processors use."""
    try:
        import PIL

        return 1 if int(PIL.__version__.split(".")[0]) >= 13 else 0
    except (ImportError, ValueError):
        return 1

ImageLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", np.ndarray, "PIL.Image.Image"]  # noqa: F821


@dataclass(frozen=True)
class Transform:
    """Resize so the shortest side is ``size``, centre-crop to ``crop_size``, normalise.

    Parameters
    ----------
    size : int
        Shortest side after resizing (the long side is ``int(size * long / short)``, as
        transformers computes it); 0 keeps the image size.
    crop_size : int or (height, width)
        Output size. An image smaller than the crop is zero-padded, centred.
    mean, std : 3 floats
        Per channel, applied to pixel / 255.
    resample : {'bicubic', 'bilinear', 'lanczos', 'box'}
        Pillow's filter of that name.
    """

    size: int
    crop_size: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"

    def __post_init__(self):
        crop = (self.crop_size, self.crop_size) if isinstance(self.crop_size, int) else tuple(self.crop_size)
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size must be a non-negative int, got {self.size!r}")
        if len(crop) != 2 or not all(isinstance(c, int) and c > 0 for c in crop):
            raise ValueError(f"crop_size must be a positive int or (height, width), got {self.crop_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean!r} and {self.std!r}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        object.__setattr__(self, "crop_size", crop)


#: The encoders' own preprocessing: OpenAI CLIP (224 and 336 px) and DINOv2.
PRESETS: dict[str, Transform] = {
    "clip": Transform(224, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "clip-336": Transform(336, 336, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "dinov2": Transform(256, 224, IMAGENET_MEAN, IMAGENET_STD),
}


def _transform(transform: str | Transform) -> Transform:
    if isinstance(transform, Transform):
        return transform
    try:
        return PRESETS[transform]
    except (KeyError, TypeError):
        raise ValueError(f"transform must be a Transform or one of {sorted(PRESETS)}, got {transform!r}") from None


def _max_pixels(max_pixels: int | None) -> int:
    return _args.positive_or_none(max_pixels, "max_pixels")


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation of JPEG bytes; 1 (upright) when Pillow cannot read them, so the
    C decoder is the one to refuse a damaged file, with its message."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 (any failure of a third-party parser on hostile bytes)
        return 1


def to_rgb(im, on_white: bool = True):
    """A PIL image as an RGB PIL image. ``on_white``: a transparent image (alpha channel, or
    a palette with a transparent entry) is composited over white first, as the transformers
    processors do; otherwise the alpha channel is dropped, as ``Image.convert("RGB")`` does."""
    from PIL import Image

    if on_white and ("A" in im.getbands() or im.info.get("transparency") is not None):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _pil_to_rgb(im, apply_exif: bool, max_pixels: int, on_white: bool = False) -> np.ndarray:
    """RGB pixels of a PIL image (``on_white``: see :func:`to_rgb`)."""
    from PIL import ImageOps

    if max_pixels and im.width * im.height > max_pixels:
        raise FormatError(
            f"image of {im.width} x {im.height} = {im.width * im.height} pixels exceeds the limit of {max_pixels}"
        )
    if apply_exif:
        im = ImageOps.exif_transpose(im)
    return np.asarray(to_rgb(im, on_white))


def _decode_with_pillow(data: bytes, apply_exif: bool, max_pixels: int, on_white: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # the first frame of an animation
            return _pil_to_rgb(im, apply_exif, max_pixels, on_white)
    except FormatError:
        raise
    except UnidentifiedImageError:
        raise FormatError("not an image in a format megapairs or Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FormatError(f"cannot decode image: {exc}") from None
    except (ArithmeticError, LookupError, TypeError, struct.error, EOFError) as exc:  # a plugin tripped on hostile bytes
        raise FormatError(f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _prepare(item, apply_exif: bool, max_pixels: int, on_white: bool = False):
    """JPEG bytes for the core, or an (H, W, 3) uint8 array; raises for unreadable items.
    ``on_white`` composites transparent images over white (see :func:`_pil_to_rgb`)."""
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            item = f.read()
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item) if not isinstance(item, bytes) else item
        if data[:3] == _JPEG_MAGIC and not (apply_exif and _exif_orientation(data) != 1):
            return data
        if not data:
            raise FormatError("empty input (0 bytes)")
        return _decode_with_pillow(data, apply_exif, max_pixels, on_white)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ValueError(f"pixel arrays must be uint8 (H, W, 3) or (H, W), got dtype {item.dtype}")
        if item.ndim == 2:
            item = np.repeat(item[:, :, None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            raise ValueError(f"pixel arrays must be uint8 (H, W, 3) or (H, W), got shape {item.shape}")
        if max_pixels and item.shape[0] * item.shape[1] > max_pixels:
            raise FormatError(f"image of {item.shape[1]} x {item.shape[0]} pixels exceeds the limit of {max_pixels}")
        return item
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        return _pil_to_rgb(item, apply_exif, max_pixels, on_white)
    raise TypeError(f"cannot read an image from {type(item).__name__}: pass bytes, a path, a PIL image or an array")


def decode(src: ImageLike, *, apply_exif: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one image to an ``(H, W, 3)`` uint8 RGB array.

    JPEG goes through libjpeg-turbo with the settings Pillow uses, so the pixels equal
    ``np.asarray(PIL.Image.open(src).convert("RGB"))``; other formats go through Pillow.
    EXIF orientation is ignored unless ``apply_exif=True``, as Pillow and the transformers
    processors ignore it.

    Raises
    ------
    megapairs.FormatError
        The data is not a readable image, is truncated, or exceeds ``max_pixels``.
    """
    prepared = _prepare(src, apply_exif, _max_pixels(max_pixels))
    if isinstance(prepared, np.ndarray):
        return prepared if prepared.flags.owndata or prepared.base is None else np.array(prepared)
    return _core.jpeg_decode(prepared, _max_pixels(max_pixels))


def preprocess(
    images: Sequence[ImageLike] | Iterable[ImageLike],
    transform: str | Transform = "clip",
    *,
    exact: bool = True,
    num_threads: int | None = None,
    on_error: str | Callable[[int, Exception], object] = "raise",
    apply_exif: bool = False,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    progress: bool | None = None,
):
    """Images to a normalised ``(N, 3, S, S)`` float32 batch for an image encoder.

    Parameters
    ----------
    images : sequence of bytes, paths, PIL images or ``(H, W, 3)`` uint8 arrays
        Mixed freely. JPEG is decoded in C; other formats through Pillow. Transparent
        images (RGBA, LA, palette with transparency) are composited over white, as the
        transformers processors do; :func:`decode` keeps Pillow's ``convert("RGB")``.
    transform : 'clip', 'clip-336', 'dinov2' or Transform
        See :data:`PRESETS`.
    exact : bool
        True reproduces transformers' processors (PIL backend) bit for bit. False decodes
        JPEGs at a DCT scale (1/2 to 1/8) that keeps the short side at least twice the
        resize target, with libjpeg-turbo's fast IDCT and upsampling: several times faster
        on large photos, within a few uint8 levels (docs/numerics.md).
    num_threads : int, optional
        Threads (images are processed in parallel); default :func:`megapairs.get_num_threads`.
    on_error : {'raise', 'skip'} or callable
        'raise' raises for the first unreadable image, naming its index. 'skip' leaves
        unreadable images out and returns ``(batch, kept)`` where ``kept`` holds the indices
        of the images in ``batch``. A callable ``on_error(index, exc)`` is called once for
        each unreadable image, with its index in ``images`` and the exception saying what is
        wrong with it (``megapairs.FormatError`` for data that does not decode,
        ``FileNotFoundError`` for a missing path, ``ValueError`` / ``TypeError`` for an item
        that is not an image); the message does not repeat the index. Otherwise it behaves
        like 'skip' and returns ``(batch, kept)``. It is called in index order within each
        block of 256 images; an exception it raises propagates.
    apply_exif : bool
        Rotate/flip by the EXIF orientation tag first (off by default, like the processors).
    max_pixels : int or None
        Refuse images with more pixels (decompression bombs); None for no limit.
    progress : bool, optional
        Show a progress bar; by default only for more than 2048 images.

    Returns
    -------
    batch : (N, 3, crop_h, crop_w) float32
    kept : (N,) int64, only with ``on_error='skip'`` or a callable
    """
    t = _transform(transform)
    if not callable(on_error) and on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise', 'skip' or a callable, got {on_error!r}")
    threads, limit = _args.threads(num_threads), _max_pixels(max_pixels)
    items = list(images)
    if progress is None:
        progress = len(items) > 2048
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="preprocess", unit="img")
    batches, kept = [], []
    try:
        for start in range(0, len(items), _CHUNK):
            prepared, index, failures = [], [], {}
            for i in range(start, min(start + _CHUNK, len(items))):
                try:
                    prepared.append(_prepare(items[i], apply_exif, limit, on_white=True))
                    index.append(i)
                except (FormatError, OSError, ValueError, TypeError) as exc:
                    if on_error == "raise":
                        raise type(exc)(f"image {i}: {exc}") from None
                    failures[i] = exc
            out, status, messages = _core.preprocess(
                prepared, t.size, t.crop_size, t.mean, t.std, _RESAMPLE[t.resample], limit, not exact,
                pass_order=_pillow_pass_order(), num_threads=threads,
            )
            ok = status == 0
            if on_error == "raise" and not ok.all():
                j = int(np.argmin(ok))
                raise FormatError(f"image {index[j]}: {messages[j]}")
            if callable(on_error):
                failures.update((index[j], FormatError(messages[j])) for j in np.flatnonzero(~ok))
                for i in sorted(failures):
                    on_error(i, failures[i])
            batches.append(out if ok.all() else out[ok])
            kept.extend(i for i, good in zip(index, ok) if good)
            if bar is not None:
                done = min(start + _CHUNK, len(items))
                bar.update(done - start)
                bar.set_postfix(failed=done - len(kept))
    finally:
        if bar is not None:
            bar.close()
    h, w = t.crop_size
    batch = np.concatenate(batches) if batches else np.empty((0, 3, h, w), np.float32)
    if on_error != "raise":  # 'skip' or a callable
        return batch, np.asarray(kept, dtype=np.int64)
    return batch
