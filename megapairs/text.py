"""Tokenizers for the text encoders: CLIP's byte-level BPE and BERT's WordPiece, run by the C core.

:class:`CLIPTokenizer` gives the ids of ``open_clip.tokenize`` (OpenAI CLIP's
``SimpleTokenizer``); :class:`WordPieceTokenizer` those of transformers'
``BertTokenizerFast``. Python does the Unicode-heavy cleaning (ftfy, HTML entities, NFD);
the C core pre-tokenises, merges and looks up, texts in parallel. See docs/text.md.

>>> import megapairs as mp
>>> tok = mp.text.CLIPTokenizer.from_pretrained()            # open_clip's vocabulary   # doctest: +SKIP
>>> tok(["a dog on a beach", "a red car"]).shape                                        # doctest: +SKIP
(2, 77)
>>> bert = mp.text.WordPieceTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
>>> bert(["a dog on a beach"])["input_ids"]                                             # doctest: +SKIP
array([[ 101, 1037, 3899, 2006, 1037, 3509,  102]])
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _args, _core
from ._hub import read_json, resolve_model_dir, utf8_text
from .errors import FormatError

try:
    import ftfy
except ImportError:  # open_clip requires it; without it only ftfy's repairs are skipped
    ftfy = None

__all__ = ["MAX_TEXT_CHARS", "CLIPTokenizer", "WordPieceTokenizer"]

#: Longest text a tokenizer accepts, in characters (read at call time: raise it here). Only
#: the first few hundred tokens are kept, and no caption or instruction comes near this.
MAX_TEXT_CHARS = 1_000_000

OPENAI_BPE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_MERGES = 49152 - 256 - 2  # open_clip keeps merges lines[1 : 49152 - 256 - 2 + 1]


def _format_error(path: Path, message: str) -> Exception:
    return FormatError(f"{path}: {message}")


def _token_name(value: object, default: str) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _tokenizer_config(folder: Path) -> dict:
    """tokenizer_config.json, completed by special_tokens_map.json; {} when neither exists."""
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            config.update(read_json(path))
    return config


def _texts(texts: str | Sequence[str]) -> list:
    if isinstance(texts, str):
        return [texts]
    try:
        return list(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}") from None


def _check_text(text: object, name: str) -> str:
    """``text``, or TypeError if it is not a str, ValueError if over MAX_TEXT_CHARS."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} has {len(text)} characters, over the limit of {MAX_TEXT_CHARS} "
                         "(raise megapairs.text.MAX_TEXT_CHARS to tokenize it)")
    return text


def _map_texts(fn, texts: list) -> list:
    """[fn(t) for t in texts], each checked by _check_text first (the error names its index)."""
    for i, t in enumerate(texts):
        _check_text(t, f"texts[{i}]")
    return [fn(t) for t in texts]


def _hub_or_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.exists() else resolve_model_dir(path)


# --------------------------------------------------------------------------- CLIP

# Printable ASCII other than '&', and \t \n \r: on such text ftfy.fix_text and
# html.unescape change nothing (ftfy only touches non-ASCII characters, other control
# characters, escape sequences and '&' entities; html.unescape only '&' entities), so
# cleaning reduces to the whitespace collapse, which the pre-tokeniser makes moot (it
# skips whitespace), and lower-casing.
_NOT_PLAIN = re.compile(r"[^\x20-\x25\x27-\x7e\t\n\r]")


def clean_clip_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ``ftfy.fix_text`` (when installed), ``html.unescape``
    twice, whitespace runs to one space, strip, ``str.lower``."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _clean_clip_fast(text: str) -> str:
    """clean_clip_text, or for plain ASCII text its equivalent for tokenisation: ``text.lower()``."""
    if _NOT_PLAIN.search(text) is None:
        return text.lower()
    return clean_clip_text(text)


def _open_clip_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")  # finds the files without importing the package
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / OPENAI_BPE
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"open_clip's {OPENAI_BPE} was not found. Install the files with "
        "`pip install --no-deps open_clip_torch`, or pass CLIPTokenizer.from_pretrained() a folder "
        "with vocab.json + merges.txt (a Hugging Face CLIP checkpoint), a hub id, or the path of a "
        f"{OPENAI_BPE}."
    )


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer: ``tok(texts)`` equals ``open_clip.tokenize(texts)``.

    Build it with :meth:`from_pretrained`. Text is cleaned as open_clip cleans it (see
    :func:`clean_clip_text`), then tokenised by the C core.
    """

    def __init__(self, bpe: _core.ClipBpe, source: str):
        self._bpe = bpe
        self.source = source

    def __repr__(self):
        return f"CLIPTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> CLIPTokenizer:
        """Loads a vocabulary.

        Parameters
        ----------
        path : str, path-like or None
            ``None`` or ``"openai"``: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (its
            package files must be installed). A folder with ``vocab.json`` + ``merges.txt``
            (Hugging Face layout; ``tokenizer.json`` stands in for a missing merges.txt), or
            with ``bpe_simple_vocab_16e6.txt.gz``; the path of such a ``.gz`` (or its
            gunzipped ``.txt``); or a Hugging Face hub id.
        """
        if path is None or (isinstance(path, str) and path == "openai"):
            return cls._from_openai(_open_clip_bpe())
        p = _hub_or_path(path)
        if p.is_file():
            return cls._from_openai(p)
        if (p / "vocab.json").is_file():
            return cls._from_hf(p)
        if (p / OPENAI_BPE).is_file():
            return cls._from_openai(p / OPENAI_BPE)
        raise FileNotFoundError(f"no vocab.json + merges.txt nor {OPENAI_BPE} in '{p}'")

    @classmethod
    def _from_openai(cls, path: Path) -> CLIPTokenizer:
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise _format_error(path, f"not a gzip file: {exc}") from None
        utf8_text(data, path)  # open_clip decodes the whole file
        return cls(_core.ClipBpe(data, n_merges=OPENAI_MERGES, source=str(path)), str(path))

    @classmethod
    def _from_hf(cls, folder: Path) -> CLIPTokenizer:
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        vocab = read_json(vocab_path, None)
        if not isinstance(vocab, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()):
            raise _format_error(vocab_path, "expected a JSON object of token strings to int ids")
        if merges_path.is_file():
            merges = merges_path.read_bytes()
            utf8_text(merges, merges_path)
        else:
            merges_path = folder / "tokenizer.json"
            merges = _merges_from_tokenizer_json(merges_path)
        config = _tokenizer_config(folder)
        sot = _token_name(config.get("bos_token"), "<|startoftext|>")
        eot = _token_name(config.get("eos_token"), "<|endoftext|>")
        bpe = _core.ClipBpe(merges, vocab=vocab, sot=sot, eot=eot, source=str(merges_path), vocab_source=str(vocab_path))
        return cls(bpe, str(folder))

    @property
    def vocab_size(self) -> int:
        """Distinct tokens (49408 for OpenAI CLIP)."""
        return self._bpe.vocab_size

    @property
    def sot_token_id(self) -> int:
        return self._bpe.sot

    @property
    def eot_token_id(self) -> int:
        return self._bpe.eot

    def __call__(self, texts: str | Sequence[str], context_length: int = 77, *,
                 num_threads: int | None = None) -> np.ndarray:
        """Token ids of each text, as ``open_clip.tokenize``.

        Parameters
        ----------
        texts : str or sequence of str
        context_length : int
            Row length, at least 2. Longer texts keep their first ``context_length - 2``
            tokens and still end with the end token.
        num_threads : int, optional
            Threads for this call (default: see :func:`megapairs.set_num_threads`).

        Returns
        -------
        ids : (N, context_length) int64
            Start token, tokens, end token, then zeros.
        """
        if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (start and end tokens), got {context_length!r}")
        cleaned = _map_texts(_clean_clip_fast, _texts(texts))
        return self._bpe.encode_batch(cleaned, context_length, num_threads=_args.threads(num_threads))

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start and end tokens (open_clip ``SimpleTokenizer.encode``)."""
        return self._bpe.encode(_clean_clip_fast(_check_text(text, "text"))).tolist()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of token ids (open_clip ``SimpleTokenizer.decode``: each word ends with a space)."""
        data = self._bpe.decode(np.asarray(ids, dtype=np.int64).reshape(-1))
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


def _merges_from_tokenizer_json(path: Path) -> bytes:
    """merges.txt content from the BPE model of a tokenizer.json ("a b" strings or [a, b] pairs)."""
    if not path.is_file():
        raise FileNotFoundError(f"no merges.txt nor tokenizer.json in '{path.parent}'")
    raw = read_json(path, None)
    model = raw.get("model") if isinstance(raw, dict) else None
    merges = model.get("merges") if isinstance(model, dict) else None
    if not isinstance(merges, list):
        raise _format_error(path, "no model.merges list")
    lines = []
    for i, m in enumerate(merges):
        if isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m):
            m = " ".join(m)
        if not isinstance(m, str):
            raise _format_error(path, f"model.merges[{i}] is not a merge: {m!r}")
        lines.append(m)
    return "\n".join(lines).encode("utf-8")


# --------------------------------------------------------------------------- WordPiece


class _LowerMap(dict):
    """str.translate table lower-casing one character at a time, as BertNormalizer's
    lowercase does (so a final capital sigma becomes σ, where str.lower() gives ς).
    Filled on demand."""

    def __missing__(self, cp: int) -> str:
        value = chr(cp).lower()
        self[cp] = value
        return value


class WordPieceTokenizer:
    """BERT's WordPiece tokenizer: ids equal transformers' ``BertTokenizerFast``.

    Build it with :meth:`from_pretrained`.
    """

    def __init__(self, wordpiece: _core.WordPiece, source: str, *, lowercase: bool = True,
                 strip_accents: bool | None = None, specials: Sequence[str] = ()):
        self._wp = wordpiece
        self.source = source
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self._lower_map = _LowerMap()
        specials = sorted(set(specials), key=len, reverse=True)  # longest first, as the crate matches
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    def __repr__(self):
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        """Loads ``vocab.txt`` and the options of ``tokenizer_config.json`` (``do_lower_case``,
        ``strip_accents``, ``tokenize_chinese_chars``, special tokens) or ``special_tokens_map.json``.

        Parameters
        ----------
        path : str or path-like
            A folder holding ``vocab.txt`` (or a ``tokenizer.json`` with a WordPiece model),
            the path of a ``vocab.txt``, or a Hugging Face hub id.
        """
        p = _hub_or_path(path)
        folder, vocab_path = (p.parent, p) if p.is_file() else (p, p / "vocab.txt")
        if vocab_path.is_file():
            data = vocab_path.read_bytes()
            # Text mode, as transformers reads it: "\r\n" and "\r" end lines too.
            text = utf8_text(data, vocab_path).replace("\r\n", "\n").replace("\r", "\n")
        else:
            vocab_path = folder / "tokenizer.json"
            text = _vocab_from_tokenizer_json(vocab_path)
        config = _tokenizer_config(folder)
        lowercase = config.get("do_lower_case", True)
        strip_accents = config.get("strip_accents")
        chinese = config.get("tokenize_chinese_chars", True)
        names = {k: _token_name(config.get(f"{k}_token"), f"[{k.upper()}]") for k in ("unk", "cls", "sep", "pad", "mask")}
        tokens = set(text.split("\n"))
        extra = config.get("additional_special_tokens") or []
        if not isinstance(extra, list):
            raise _format_error(folder, f"additional_special_tokens must be a list, got {type(extra).__name__}")
        extra = [_token_name(t, "") for t in extra]
        specials = [t for t in [*names.values(), *extra] if t and t in tokens]
        strip = lowercase if strip_accents is None else strip_accents  # None follows lowercase, as in BERT
        wp = _core.WordPiece(text.encode("utf-8"), unk=names["unk"], cls=names["cls"], sep=names["sep"],
                             pad=names["pad"], specials=specials, lowercase=bool(lowercase), strip_accents=bool(strip),
                             tokenize_chinese_chars=bool(chinese), source=str(vocab_path))
        return cls(wp, str(folder), lowercase=lowercase, strip_accents=strip_accents, specials=specials)

    @property
    def vocab_size(self) -> int:
        return self._wp.vocab_size

    @property
    def cls_token_id(self) -> int:
        return self._wp.cls

    @property
    def sep_token_id(self) -> int:
        return self._wp.sep

    @property
    def pad_token_id(self) -> int:
        return self._wp.pad

    @property
    def unk_token_id(self) -> int:
        return self._wp.unk

    def _normalize(self, text: str) -> str:
        """The Unicode half of BertNormalizer for non-ASCII text: NFD (strip_accents; the C
        core then deletes the nonspacing marks, by the crate's table) and per-character
        lower case (the core lower-cases ASCII). Added tokens ("[MASK]") are matched on the
        raw text, so they are left as they are."""
        if text.isascii() or not (self.lowercase or self.strip_accents):
            return text
        if self._specials is None or self._specials.search(text) is None:
            return self._normalize_part(text)
        parts = self._specials.split(text)  # odd indices: the added tokens
        return "".join(p if i % 2 else self._normalize_part(p) for i, p in enumerate(parts))

    def _normalize_part(self, text: str) -> str:
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text)
        return text.translate(self._lower_map) if self.lowercase else text

    def __call__(self, texts: str | Sequence[str], max_length: int = 512, *,
                 num_threads: int | None = None) -> dict[str, np.ndarray]:
        """Token ids of each text, as ``BertTokenizerFast(texts, padding=True, truncation=True,
        max_length=max_length)``.

        Parameters
        ----------
        texts : str or sequence of str
        max_length : int
            At least 2. Longer texts keep their first ``max_length - 2`` tokens between
            [CLS] and [SEP].
        num_threads : int, optional
            Threads for this call (default: see :func:`megapairs.set_num_threads`).

        Returns
        -------
        dict with ``input_ids`` and ``attention_mask``, (N, T) int64 each, T the longest row;
        shorter rows are padded with the [PAD] id and mask 0.
        """
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 ([CLS] and [SEP]), got {max_length!r}")
        normalized = _map_texts(self._normalize, _texts(texts))
        input_ids, attention_mask = self._wp.encode_batch(normalized, max_length, num_threads=_args.threads(num_threads))
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without [CLS] and [SEP]."""
        return self._wp.encode(self._normalize(_check_text(text, "text"))).tolist()


def _vocab_from_tokenizer_json(path: Path) -> str:
    """vocab.txt content from the WordPiece model of a tokenizer.json (ids must be 0 .. V-1)."""
    if not path.is_file():
        raise FileNotFoundError(f"no vocab.txt nor tokenizer.json in '{path.parent}'")
    raw = read_json(path, None)
    model = raw.get("model") if isinstance(raw, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        raise _format_error(path, "no model.vocab object")
    by_id = sorted((v, k) for k, v in vocab.items() if isinstance(v, int))
    if len(by_id) != len(vocab) or [v for v, _ in by_id] != list(range(len(by_id))):
        raise _format_error(path, "model.vocab ids are not 0 .. V-1")
    if any("\n" in k or "\r" in k for _, k in by_id):
        raise _format_error(path, "a model.vocab token holds a line break")
    return "\n".join(k for _, k in by_id)
