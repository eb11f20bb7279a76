"""Reading model outputs: the instruction list and the pair description.

Models do not always answer in the format asked for. :func:`parse_instructions` accepts, in
order of preference: a JSON (or Python-literal) array of strings, possibly in a code fence or
surrounded by prose; a JSON object holding such an array; a numbered or bulleted list, whose
unmarked lines (an introduction, a closing remark) are ignored; a JSON array cut off by the
token limit, of which the complete strings are kept; and, last, one instruction per line.
:func:`validate_instructions` then drops duplicates, items of the wrong length and items that
name the "source image" or "target image", and raises :class:`OutputError` when fewer than
the minimum remain.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable

from ..errors import OutputError
from ..limits import loads_json

__all__ = ["FORBIDDEN_PHRASES", "OutputError", "check_description", "parse_instructions", "validate_instructions"]

#: An instruction must not name the images literally: at training time it goes with the
#: query image alone.
FORBIDDEN_PHRASES = ("source image", "target image")
# Whole words, any separator or none, singular or plural ("SourceImage", "target-images").
_FORBIDDEN_RE = tuple((p, re.compile(r"\b" + " ?".join(p.split()) + r"s?\b")) for p in FORBIDDEN_PHRASES)

_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n?(.*?)```", re.DOTALL)
_MARKER = re.compile(
    r"^\s*(?:[-*\u2022\u00b7+]|\(?\d{1,3}[.):\]]|\(?[a-hA-H][.)]|(?:text\s+)?query\s*\d*\s*[:.)-])\s+(.*\S)\s*$",
    re.IGNORECASE)
_LABEL = re.compile(r"^(?:text\s+)?(?:query|instruction)\s*\d*\s*[:.-]\s*", re.IGNORECASE)
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
# A reasoning model's hidden thoughts, when the server does not strip them.
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _strings(value) -> list[str] | None:
    """The list of strings held by a decoded JSON value, or None."""
    if isinstance(value, dict):
        for v in value.values():
            found = _strings(v)
            if found:
                return found
        return None
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            texts = [v for v in item.values() if isinstance(v, str)]
            if not texts:
                return None
            out.append(texts[0])
        else:
            return None
    return out


def _decode(snippet: str):
    try:
        return loads_json(snippet, "the answer")
    except ValueError:
        pass
    try:  # a Python list with single quotes; literal_eval evaluates literals only
        return ast.literal_eval(snippet)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _from_json(text: str) -> list[str] | None:
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if start != -1 and end > start:
            found = _strings(_decode(text[start:end + 1]))
            if found:
                return found
    return None


def _from_marked_lines(text: str) -> list[str]:
    return [m.group(1) for m in map(_MARKER.match, text.replace("**", "").splitlines()) if m]


def _salvage_array(text: str) -> list[str]:
    """The complete string literals of a JSON array that was cut off."""
    start = text.find("[")
    if start == -1:
        return []
    out = []
    for m in _STRING.finditer(text, start):
        try:
            out.append(json.loads(m.group(0)))
        except ValueError:
            continue
    return out


def _clean(item: str) -> str:
    item = " ".join(str(item).split()).replace("**", "")
    item = _LABEL.sub("", item).rstrip(",;").strip()
    if len(item) >= 2 and item[0] in _QUOTES and item[-1] in _QUOTES:
        item = item[1:-1].strip()
    return item


def parse_instructions(text: str) -> list[str]:
    """The instructions in a model answer, cleaned but not yet validated.

    Parameters
    ----------
    text : str
        The answer: a JSON array, a numbered or bulleted list, with or without prose around it.

    Returns
    -------
    list of str
        Items with list markers, labels such as ``"Query 2:"``, surrounding quotes and
        extra whitespace removed; empty items dropped. May be empty.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    body = _THINK.sub("", text).strip()
    parts = [p for p in _FENCE.findall(body) if p.strip()] + [body]
    items: list[str] = []
    for finder in (_from_json, _from_marked_lines, _salvage_array):
        for part in parts:
            items = finder(part) or []
            if items:
                break
        if items:
            break
    else:
        items = [line for line in body.splitlines() if line.strip() and not line.rstrip().endswith(":")
                 and not line.strip().startswith("```")]
    return [c for c in (_clean(i) for i in items) if c]


def _dedup_key(item: str) -> str:
    return re.sub(r"[^\w]+", " ", item.lower()).strip()


def validate_instructions(items: Iterable[str], *, min_count: int = 3, max_count: int | None = None,
                          min_words: int = 2, max_words: int = 60) -> tuple[list[str], list[tuple[str, str]]]:
    """Keep the usable instructions.

    An item is dropped when it has fewer than ``min_words`` or more than ``max_words``
    words, names a :data:`FORBIDDEN_PHRASES` entry (case-insensitive, whole words, also
    hyphenated, joined or plural: "Source-Image", "targetimages"), or repeats an
    earlier item (compared lower-cased, punctuation ignored). At most ``max_count`` are kept.

    Returns
    -------
    kept : list of str
    rejected : list of (item, reason)

    Raises
    ------
    OutputError
        If fewer than ``min_count`` remain; the message counts the reasons.
    """
    kept, rejected, seen = [], [], set()
    for item in items:
        words = len(item.split())
        words_only = " ".join(re.split(r"[\W_]+", item.lower()))  # "Source-Image", "source_image" too
        bad = next((p for p, rx in _FORBIDDEN_RE if rx.search(words_only)), None)
        if bad:
            rejected.append((item, f"names the {bad!r}"))
        elif words < min_words:
            rejected.append((item, f"shorter than {min_words} words"))
        elif words > max_words:
            rejected.append((item, f"longer than {max_words} words"))
        elif _dedup_key(item) in seen:
            rejected.append((item, "duplicate"))
        else:
            seen.add(_dedup_key(item))
            kept.append(item)
    if max_count is not None:
        kept = kept[:max_count]
    if len(kept) < min_count:
        why = Counter(reason for _, reason in rejected)
        detail = "; rejected: " + ", ".join(f"{n} {r}" for r, n in why.items()) if why else ""
        raise OutputError(f"{len(kept)} valid instructions, need at least {min_count}{detail}")
    return kept, rejected


def check_description(text: str, finish_reason: str | None = None, min_words: int = 8) -> str:
    """The multimodal stage's answer, stripped, if usable.

    Raises
    ------
    OutputError
        If the answer was cut off by the token limit (``finish_reason == "length"``), or has
        fewer than ``min_words`` words.
    """
    if finish_reason == "length":
        raise OutputError("description cut off by the token limit (finish_reason=length)")
    text = _THINK.sub("", text or "").strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    words = len(text.split())
    if words < min_words:
        raise OutputError(f"description has {words} words, need at least {min_words}")
    return text
