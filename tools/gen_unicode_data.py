"""Writes csrc/text/unicode_data.h: one flag byte per code point, as a two-stage table.

Each flag is measured on the library that defines it, code point by code point, rather
than derived from a Unicode database, so the C tokenizers agree with their references for
the library versions installed here:

- CLIP classes: the `regex` module, with the flags of open_clip's pattern (IGNORECASE):
  `[\\p{L}]`, `[\\p{N}]`, `\\s` and `[^\\s\\p{L}\\p{N}]`. The last is not the complement of the
  first three (U+0345 is in none of them), so it has its own bit.
- BERT classes: the `tokenizers` crate (Python bindings) that transformers' BertTokenizerFast
  runs: BertNormalizer(clean_text) turns whitespace into ' ' and deletes controls (and NUL
  and U+FFFD); BertPreTokenizer isolates punctuation; strip_accents deletes the crate's
  nonspacing marks (its Mn table is older than Python's unicodedata, so Python cannot
  decide this itself). The CJK ranges of handle_chinese_chars are checked against the
  crate here and coded as ranges in text/unicode.h.

Also writes the code points that IGNORECASE matches to an ASCII letter (U+017F to 's',
U+212A to 'k', U+0130 to 'i').

    .venv/bin/python tools/gen_unicode_data.py      # rewrites csrc/text/unicode_data.h
"""

import sys
from pathlib import Path

import regex
import tokenizers
from tokenizers import normalizers, pre_tokenizers

OUT = Path(__file__).resolve().parent.parent / "csrc" / "text" / "unicode_data.h"
BLOCK = 128  # code points per stage-2 block
N_CODE_POINTS = 0x110000

# Bit order must match enum mp_unicode_flag in csrc/text/unicode.h.
CLIP_LETTER, CLIP_NUMBER, CLIP_SPACE, CLIP_OTHER = 1, 2, 4, 8
BERT_SPACE, BERT_CONTROL, BERT_PUNCT, BERT_MARK = 16, 32, 64, 128

CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]  # mp_unicode_is_cjk


def flags():
    letter = regex.compile(r"[\p{L}]", regex.IGNORECASE)
    number = regex.compile(r"[\p{N}]", regex.IGNORECASE)
    space = regex.compile(r"\s", regex.IGNORECASE)
    other = regex.compile(r"[^\s\p{L}\p{N}]", regex.IGNORECASE)
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                                       lowercase=False)
    chinese = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False,
                                         lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                                       lowercase=False)
    split = pre_tokenizers.BertPreTokenizer()
    table = bytearray(N_CODE_POINTS)
    for cp in range(N_CODE_POINTS):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates are not UTF-8; the decoder refuses them
        c = chr(cp)
        f = 0
        f |= CLIP_LETTER if letter.fullmatch(c) else 0
        f |= CLIP_NUMBER if number.fullmatch(c) else 0
        f |= CLIP_SPACE if space.fullmatch(c) else 0
        f |= CLIP_OTHER if other.fullmatch(c) else 0
        cleaned = clean.normalize_str(c)
        if cleaned == "":
            f |= BERT_CONTROL
        elif cleaned == " ":
            f |= BERT_SPACE
        elif cleaned != c:
            raise SystemExit(f"BertNormalizer(clean_text) maps U+{cp:04X} to {cleaned!r}: neither kept nor removed")
        if not f & (BERT_CONTROL | BERT_SPACE):
            pieces = [p for p, _ in split.pre_tokenize_str("a" + c + "a")]
            if pieces == ["a", c, "a"]:
                f |= BERT_PUNCT
            elif pieces != ["a" + c + "a"]:
                raise SystemExit(f"BertPreTokenizer splits 'a' U+{cp:04X} 'a' into {pieces!r}")
            if strip.normalize_str(c) == "":
                f |= BERT_MARK
            cjk = any(lo <= cp <= hi for lo, hi in CJK_RANGES)
            if (chinese.normalize_str(c) == " " + c + " ") != cjk:
                raise SystemExit(f"U+{cp:04X}: handle_chinese_chars disagrees with CJK_RANGES")
        table[cp] = f
    return table


def ascii_folds():
    """(code point, ASCII letter) pairs that IGNORECASE matches, besides the ASCII case pairs."""
    folds = []
    for letter in "abcdefghijklmnopqrstuvwxyz":
        pattern = regex.compile(letter, regex.IGNORECASE)
        for cp in range(0x80, N_CODE_POINTS):
            if not 0xD800 <= cp <= 0xDFFF and pattern.fullmatch(chr(cp)):
                folds.append((cp, letter))
    return folds


def two_stage(table):
    blocks, index = {}, []
    for start in range(0, N_CODE_POINTS, BLOCK):
        block = bytes(table[start:start + BLOCK])
        index.append(blocks.setdefault(block, len(blocks)))
    return index, list(blocks)


def c_array(values, per_line):
    lines = []
    for i in range(0, len(values), per_line):
        lines.append("    " + ", ".join(str(v) for v in values[i:i + per_line]) + ",")
    return "\n".join(lines)


def main():
    table = flags()
    index, blocks = two_stage(table)
    if len(blocks) > 256:
        raise SystemExit(f"{len(blocks)} distinct blocks do not fit a uint8 index: use a smaller BLOCK")
    folds = ascii_folds()
    stage2 = [b for block in blocks for b in block]
    text = f"""/* text/unicode_data.h: generated by tools/gen_unicode_data.py; do not edit.
 * Python {sys.version.split()[0]}, regex {regex.__version__}, tokenizers {tokenizers.__version__}.
 *
 * Flags of code point cp (enum mp_unicode_flag in text/unicode.h):
 *     mp_unicode_stage2[mp_unicode_stage1[cp / {BLOCK}] * {BLOCK} + cp % {BLOCK}]
 * {len(index)} stage-1 entries, {len(blocks)} distinct {BLOCK}-byte blocks ({len(index) + len(stage2)} bytes). */
#ifndef MP_TEXT_UNICODE_DATA_H
#define MP_TEXT_UNICODE_DATA_H

#include <stdint.h>

#define MP_UNICODE_BLOCK {BLOCK}

static const uint8_t mp_unicode_stage1_data[{len(index)}] = {{
{c_array(index, 24)}
}};

static const uint8_t mp_unicode_stage2_data[{len(stage2)}] = {{
{c_array(stage2, 32)}
}};

// Non-ASCII code points that regex's IGNORECASE matches to an ASCII letter.
#define MP_UNICODE_ASCII_FOLD_COUNT {len(folds)}
static const struct {{ uint32_t cp; char ascii; }} mp_unicode_ascii_fold_data[{max(len(folds), 1)}] = {{
{chr(10).join(f"    {{0x{cp:04X}, '{a}'}}," for cp, a in folds) or "    {0, 0},"}
}};

#endif
"""
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(blocks)} blocks, {len(index) + len(stage2)} bytes, folds {folds}")


if __name__ == "__main__":
    main()
