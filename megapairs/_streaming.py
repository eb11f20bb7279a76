"""What the model classes share: batching, streaming images through preprocessing a batch at
a time (memory bounded by a batch, not the corpus), progress bars, packing token ids for the
text towers and L2 normalisation."""

from __future__ import annotations

import itertools
import operator
import os

import numpy as np

from . import _args, _core, images


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


_PROGRESS_ABOVE = 2048  # show_progress_bar=None: a bar for more items than this (as images.preprocess)


def length(items) -> int | None:
    """``len(items)`` when it has one, else its length hint (None when unknown)."""
    try:
        return len(items)
    except TypeError:
        hint = operator.length_hint(items, -1)
        return hint if hint >= 0 else None


def progress_bar(show_progress_bar: bool | None, total: int | None, unit: str, desc: str):
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


def check_on_error(on_error):
    if not callable(on_error) and on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise', 'skip' or a callable, got {on_error!r}")
    return on_error


def offset_handler(on_error, start: int):
    """The ``on_error`` for images.preprocess over the images from ``start`` on: indices made
    global; 'raise' raises naming the global index, as images.preprocess words it."""
    if on_error == "skip":
        return "skip"
    if on_error == "raise":
        def raise_global(i, exc):
            raise type(exc)(f"image {start + i}: {exc}") from None

        return raise_global
    return lambda i, exc: on_error(start + i, exc)


class VisionTower:
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
        batch_size = _args.positive(batch_size, "batch_size")
        check_on_error(on_error)
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
        bar = progress_bar(show_progress_bar, length(images_or_pixels), "images", type(self).__name__)
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
        emb = l2_normalize(emb) if normalize else emb
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
                                             on_error=offset_handler(on_error, start))
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



def pool_positions(ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Where transformers pools each row of ``ids``: the first maximum for the legacy eos id 2
    (what open_clip does too), else the first eos token (position 0 if there is none)."""
    if eos_token_id == 2:
        return ids.argmax(axis=1)
    return (ids == eos_token_id).argmax(axis=1)


def pack(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids`` cut to ``lengths`` and concatenated, with their offsets."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    keep = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    return np.ascontiguousarray(ids[keep], dtype=np.int64), offsets


def text_list(texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"expected a list of strings for {what}; wrap a single text in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return texts


# --------------------------------------------------------------------------- DINOv2
