"""Limits on what outside bytes may ask of megapairs, and the JSON reader that enforces them.

Every reader of files megapairs did not write (photos, checkpoints, shards, records,
journals, LLM answers, configs) refuses an input over a limit with a ``ValueError`` (most
often :class:`megapairs.FormatError`) naming the file and the limit, before it allocates
what the input asks for. Each default can be raised for legitimately larger inputs: per
call with the keyword shown, or, where a limit is deep inside a model loader or a pipeline,
by setting the module attribute (read at call time, as ``PIL.Image.MAX_IMAGE_PIXELS`` is):

>>> import megapairs.limits
>>> megapairs.limits.MAX_NESTING = 256          # doctest: +SKIP

| input | limit | default | raise it with |
|---|---|---|---|
| any image (JPEG in C; PNG, WebP, GIF, ... through Pillow) | pixels | 89,478,485 | ``max_pixels=`` of ``images.decode`` / ``preprocess`` (Pillow's own check, twice ``PIL.Image.MAX_IMAGE_PIXELS``, also applies to non-JPEG files) |
| safetensors file | JSON header | 100,000,000 bytes | ``megapairs.weights.MAX_HEADER_BYTES`` |
| safetensors file | tensors + metadata entries | 100,000 | ``megapairs.weights.MAX_TENSORS`` |
| tar shard | one member; one sample's members together | 256 MiB | ``max_member_size=`` of ``dataset.iter_shard`` / ``ShardReader`` |
| tar shard | members | 100,000 | ``max_members=`` |
| JSONL records | one line | 64 MiB | ``max_line_bytes=`` of ``dataset.iter_jsonl`` / ``read_jsonl`` |
| LLM server | response body | 16 MiB | ``megapairs.annotate.backends.MAX_RESPONSE_BYTES`` |
| tokenizer input | characters per text | 1,000,000 | ``megapairs.text.MAX_TEXT_CHARS`` |
| JSON and TOML (configs, indexes, records, journals, answers) | nesting depth | 64 | ``megapairs.limits.MAX_NESTING`` |
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .errors import FormatError

__all__ = ["MAX_NESTING", "check_nesting", "loads_json", "nesting"]

#: Deepest nesting of arrays/objects (tables) accepted in JSON and TOML from outside. Real
#: configs, tokenizer files, records and LLM answers nest under 10 deep; Python's own
#: parsers recurse once per level and fail with RecursionError near 1,000.
MAX_NESTING = 64

# String literals (JSON's double-quoted, TOML's single-quoted) and TOML comments: brackets
# inside them do not nest.
_OPAQUE = re.compile(rb'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def nesting(text: str | bytes) -> int:
    """How deep the arrays and objects of JSON (or the arrays and inline tables of TOML) in
    ``text`` nest: 0 for a scalar, 1 for ``[1, 2]``, 2 for ``{"a": [1]}``."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    steps = _OPEN[np.frombuffer(_OPAQUE.sub(b"", data), np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def check_nesting(text: str | bytes, where: str, limit: int | None = None) -> None:
    """FormatError naming ``where`` if ``text`` nests deeper than ``limit`` (default
    :data:`MAX_NESTING`). Costs two ``count`` calls unless the text has that many brackets."""
    limit = MAX_NESTING if limit is None else limit
    opens = (text.count("[") + text.count("{")) if isinstance(text, str) else (text.count(b"[") + text.count(b"{"))
    if opens <= limit:
        return
    depth = nesting(text)
    if depth > limit:
        raise FormatError(f"{where}: nested {depth} deep, over the limit of {limit} "
                          "(raise megapairs.limits.MAX_NESTING to read it)")


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads(text)`` for text from outside: FormatError naming ``where`` for invalid
    JSON or nesting over :data:`MAX_NESTING`."""
    check_nesting(text, where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:  # a file gets the line; a JSONL line is its own `where`
        line = f"line {exc.lineno}: " if exc.doc.count("\n", 0, exc.pos) or exc.lineno > 1 else ""
        raise FormatError(f"{where}: {line}invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # bytes that are not UTF-8; a deep stack already
        raise FormatError(f"{where}: invalid JSON: {exc}") from None
