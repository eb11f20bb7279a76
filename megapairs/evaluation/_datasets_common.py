"""Shared by the benchmark loaders of :mod:`megapairs.evaluation.datasets`: reading and
checking annotation files (errors name the file and the record) and image folders, and the
canonical query texts (CIRCO's template, FashionIQ's caption joins, UniIR's
:func:`format_string`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..limits import loads_json

#: The CIRCO query MegaPairs evaluates (its ``eval/data/circo_query.jsonl``, following
#: MagicLens). Leaving out the shared concept is what broke reproductions.
CIRCO_TEMPLATE = "Find a picture that also {shared_concept}, but {relative_caption}."

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")



# --------------------------------------------------------------------------- shared helpers


def _root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark root '{path}' is not a directory")
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file '{path}'") from None
    return loads_json(text, str(path))


def _expect(value, types, path: Path, where: str, what: str):
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise FormatError(f"{path}: {where}: {what} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _get(record, key: str, types, path: Path, where: str):
    if not isinstance(record, dict):
        raise FormatError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise FormatError(f"{path}: {where}: missing key '{key}'")
    return _expect(record[key], types, path, where, f"'{key}'")


def _check_files(paths: Iterable[tuple[str, str]], check: bool) -> None:
    """FileNotFoundError for the first (path, description) whose file is missing."""
    if not check:
        return
    for path, who in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{who}: image file '{path}' does not exist")


def _index_images(folder: Path, what: str) -> dict[str, str]:
    """stem -> path of the image files in ``folder`` (one directory listing, not one stat per image)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no image folder '{folder}'")
    out: dict[str, str] = {}
    with os.scandir(folder) as entries:
        files = sorted((entry.name, entry.path) for entry in entries)  # a stem under two suffixes: the first name
    for name, path in files:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in _IMAGE_SUFFIXES and stem not in out:
            out[stem] = path
    return out


# --------------------------------------------------------------------------- query texts


def circo_query_text(shared_concept: str, relative_caption: str, template: str = CIRCO_TEMPLATE) -> str:
    """A CIRCO query text; by default MegaPairs' ``"Find a picture that also {shared_concept},
    but {relative_caption}."`` (fields inserted verbatim)."""
    return template.format(shared_concept=shared_concept, relative_caption=relative_caption)


def format_string(s: str | None) -> str:
    """UniIR's text clean-up (M-BEIR, MMEB): drop carriage returns, strip spaces and double
    quotes at the ends, capitalise the first character and end with '.' unless the text
    already ends with '.', '?' or '!'. ``None`` and empty texts give ``""``."""
    text = "" if s is None else s.replace("\r", "")
    text = text.strip().strip('"')
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _mbeir_caption(caption: str) -> str:
    s = caption.strip()
    if not s:
        return s
    s = s[0].lower() + s[1:]
    return s.removesuffix(".")


def fashioniq_query_text(captions: Sequence[str], style: str | Callable[[Sequence[str]], str] = "megapairs") -> str:
    """The query text of a FashionIQ caption pair.

    Parameters
    ----------
    captions : sequence of str
        The record's ``captions`` (two relative captions).
    style : {'megapairs', 'mbeir'} or callable
        ``'megapairs'`` (default; MegaPairs' released eval jsonl): ``f"{c0}, and {c1}"``, raw,
        in the stored order. ``'mbeir'`` (UniIR's M-BEIR and MMEB): each caption stripped,
        its first letter lower-cased and one trailing '.' dropped, empty ones skipped,
        joined with ``" and "``, then :func:`format_string`. A callable receives the
        captions and returns the text.
    """
    captions = list(captions)
    if callable(style):
        return style(captions)
    if style == "megapairs":
        return ", and ".join(captions)
    if style == "mbeir":
        return format_string(" and ".join(c for c in (_mbeir_caption(c) for c in captions if c) if c))
    raise ValueError(f"style must be 'megapairs', 'mbeir' or a callable, got {style!r}")
