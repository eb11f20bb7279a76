"""Where models come from: a local folder or a Hugging Face hub id (``resolve_model_dir``), and
the JSON files in it (``read_json``). Shared by the encoders, the tokenizers and training;
it imports nothing of megapairs but the exception types."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FormatError
from .limits import loads_json

__all__ = ["read_json", "resolve_model_dir", "utf8_text"]


def _could_be_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face repository id: ``name`` or
    ``owner/name``, each part 1-96 ASCII letters, digits, '-', '_' or '.', neither starting nor
    ending with '-' or '.', and no '--' or '..' anywhere."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 2 or "--" in text or ".." in text or text.endswith(".git"):
        return False
    allowed = set("-_.")
    return all(0 < len(p) <= 96 and p.isascii() and all(c.isalnum() or c in allowed for c in p)
               and p[0] not in "-." and p[-1] not in "-." for p in parts)


def _looks_local(text: str) -> bool:
    """True when ``text`` can only be a local path: absolute, starting with '.' or '~', more
    than one path separator, or otherwise not of a hub id's form."""
    if os.path.isabs(text) or text.startswith((".", "~")):
        return True
    if text.count(os.sep) > 1 or (os.altsep is not None and text.count(os.altsep) > 1):
        return True
    return not _could_be_hub_id(text)


def resolve_model_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is (``~`` expanded); otherwise a Hugging Face hub id, fetched into
    (or found in) huggingface_hub's cache. With ``HF_HUB_OFFLINE=1`` only the cache is used.

    Raises
    ------
    FileNotFoundError
        ``"no such directory: '...'"`` for a missing path that cannot be a hub id (absolute,
        starting with '.' or '~', with more than one separator, or with characters a hub id
        cannot have); ``"no local directory '...', and the hub lookup failed: ..."`` when the
        hub (or, offline, its cache) does not have it either.
    ValueError
        The path is a file.
    """
    text = os.fsdecode(os.fspath(path_or_hub_id))
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a model directory or a hub id, got the file '{path}'")
    if _looks_local(text):
        raise FileNotFoundError(f"no such directory: '{text}'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"no local directory '{text}', and huggingface_hub is not installed to fetch it from the hub"
        ) from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.txt.gz"]  # configs, weights, vocabularies
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # not cached offline, not on the hub, gated, network
        said = " ".join(str(exc).split()) or "no message"
        raise FileNotFoundError(
            f"no local directory '{text}', and the hub lookup failed: {type(exc).__name__}: {said}"
        ) from exc


def utf8_text(data: bytes, path: Path) -> str:
    """``data`` decoded as UTF-8, or FormatError naming the file and line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FormatError(f"{path}: line {line}: invalid UTF-8 ({exc.reason})") from None


def read_json(path: Path, kind: type | None = dict):
    """The JSON value in ``path``, checked to be a ``kind`` (an object by default; None: any).

    Raises FileNotFoundError ``"no <name> in '<folder>'"``, or FormatError naming the file and
    the line of invalid UTF-8 or JSON, or the wrong kind of value."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no {path.name} in '{path.parent}'") from None
    raw = loads_json(utf8_text(data, path), str(path))
    if kind is not None and not isinstance(raw, kind):
        raise FormatError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}")
    return raw
