"""The limits on untrusted input (megapairs.limits lists them): for each, a crafted file is
refused by the default with a FormatError/ValueError naming the file and the limit, before
megapairs allocates what the file asks for, and a raised limit reads a legitimate input.

Nesting depth is checked against Python's json module (the reference parser): our scan must
report the depth of the value json.loads builds."""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import tarfile
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image
from reference import minilm_dir

import megapairs as mp
from megapairs import _hub, dataset, limits, text, weights
from megapairs.annotate import backends
from megapairs.pipeline import apply_overrides, load_config


@pytest.fixture
def restore():
    """Puts back the module attributes a test raised."""
    saved = [(m, n, getattr(m, n)) for m, n in ((limits, "MAX_NESTING"), (weights, "MAX_TENSORS"),
                                                 (text, "MAX_TEXT_CHARS"))]
    yield
    for module, name, value in saved:
        setattr(module, name, value)


# --------------------------------------------------------------------------- nesting


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _random_value(rng: random.Random, depth: int):
    kind = rng.randrange(6) if depth < 12 else 5
    if kind == 0:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 1:
        return {f"k{i}]{{'#": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    if kind == 2:
        return rng.choice(["[[[", "}}", "a\"]\\", "\\\"[", "#{", "'['", "ü[€"])
    return rng.choice([1, -2.5, True, None, "plain"])


def test_nesting_equals_the_depth_json_builds():
    rng = random.Random(0)
    for _ in range(500):
        value = _random_value(rng, 0)
        for indent in (None, 2):
            doc = json.dumps(value, indent=indent, ensure_ascii=rng.random() < 0.5)
            assert limits.nesting(doc) == _depth(json.loads(doc)), doc
            assert limits.nesting(doc.encode()) == _depth(value)


DEEP = "[" * 100_000 + "]" * 100_000  # Python's parsers raise RecursionError on this


def test_checkpoint_config_nesting(tmp_path, restore):
    path = tmp_path / "config.json"
    path.write_text('{"a": ' + DEEP + "}")
    with pytest.raises(mp.FormatError, match=r"config\.json: nested 100001 deep, over the limit of 64"):
        _hub.read_json(path)
    legit = {"a": json.loads("[" * 99 + "]" * 99)}
    path.write_text(json.dumps(legit))
    with pytest.raises(mp.FormatError, match="over the limit of 64"):
        _hub.read_json(path)
    limits.MAX_NESTING = 128
    assert _hub.read_json(path) == legit


def test_sharded_index_nesting(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {}, "metadata": ' + DEEP + "}")
    with pytest.raises(mp.FormatError, match="index.json: nested"):
        weights.SafetensorsFile(index)


def test_records_nesting_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"q_img": "a.jpg", "t_img": "b.jpg"}\n{"x": ' + DEEP + "}\n")
    with pytest.raises(mp.FormatError, match=r"r\.jsonl:2: nested 100001 deep"):
        dataset.read_jsonl(path)


def test_annotation_journal_nesting(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text(DEEP + "\n")
    with pytest.raises(ValueError, match=r"journal\.jsonl:1"):
        mp.annotate.read_journal(path)


def test_server_response_nesting():
    body = ('{"choices": [{"message": {"content": "x"}}], "extra": ' + DEEP + "}").encode()
    with pytest.raises(ValueError, match="nested 100001 deep"):
        backends._completion(body)


def test_llm_answer_nesting_is_not_a_crash():
    # a model's answer is free text: a deep list is no list of instructions, not an error
    from megapairs.annotate import parsing

    assert parsing.parse_instructions('["a", "b"] ' + DEEP) == ["a", "b"]
    items = parsing.parse_instructions(DEEP)  # read as one line of prose, as any unparsable answer
    assert isinstance(items, list) and all(isinstance(i, str) for i in items)


def test_pipeline_config_nesting(tmp_path):
    path = tmp_path / "megapairs.toml"
    path.write_text("[mine]\nbands = " + DEEP + "\n")
    with pytest.raises(mp.pipeline.ConfigError, match=r"megapairs\.toml: nested 100000 deep"):
        load_config(path)
    with pytest.raises(mp.pipeline.ConfigError, match="nested 100000 deep"):
        apply_overrides(load_config(None), ["mine.bands=" + DEEP])


# --------------------------------------------------------------------------- safetensors


def _many_tensors(path, n):
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(n))


def test_safetensors_tensor_count(tmp_path, restore):
    path = tmp_path / "many.safetensors"
    _many_tensors(path, weights.MAX_TENSORS + 1)
    with pytest.raises(mp.FormatError, match=r"many\.safetensors: .*more than 100000 entries"):
        weights.SafetensorsFile(path)
    weights.MAX_TENSORS = 200_000
    with weights.SafetensorsFile(path) as f:
        assert len(f.keys()) == 100_001 and f.get("t100000").tolist() == [0]


def test_safetensors_header_size(tmp_path, restore):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(mp.FormatError, match="header length 1000000000000 is over the limit of 100000000 bytes"):
        weights.SafetensorsFile(path)
    with pytest.raises(ValueError, match="must be >= 0"):
        mp._core.SafetensorsReader(path, max_tensors=-1)


# --------------------------------------------------------------------------- tar shards


def _tar_of(names_sizes, compress=False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, size in names_sizes:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return gzip.compress(buf.getvalue(), mtime=0) if compress else buf.getvalue()


def test_shard_member_count(tmp_path):
    header = tarfile.TarInfo("a.txt").tobuf(tarfile.USTAR_FORMAT)  # an empty member, repeated
    path = tmp_path / "many.tar"
    path.write_bytes(header * (dataset.MAX_SHARD_MEMBERS + 1) + bytes(1024))
    with pytest.raises(ValueError, match=r"many\.tar: more than 100000 members \(raise max_members"):
        for _ in dataset.iter_shard(path):
            pass
    with pytest.raises(ValueError, match="more than 100000 members"):
        dataset.ShardReader([path], extension="jpg")  # members it skips count too
    assert [k for k, _ in dataset.iter_shard(path, max_members=200_000)] == ["a"]


def test_shard_reading_keeps_memory_flat(tmp_path):
    # tarfile keeps every header it read (~1 KB each) unless the reader drops them
    path = tmp_path / "flat.tar"
    path.write_bytes(_tar_of([(f"{i:06d}.txt", 0) for i in range(20_000)]))
    tracemalloc.start()
    try:
        assert sum(1 for _ in dataset.iter_shard(path)) == 20_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes for 20,000 empty members"


def test_gzip_shard_sample_bytes(tmp_path):
    # 64 members of 1 MiB zeros under one key: 64 MiB inflated from ~70 KB of gzip
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(_tar_of([(f"k.{i}", 1 << 20) for i in range(64)], compress=True))
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"bomb\.tar\.gz: sample 'k' holds more than 8388608 bytes"):
        for _ in dataset.iter_shard(path, max_member_size=8 << 20):
            pass
    [(key, sample)] = list(dataset.iter_shard(path))  # the default (256 MiB) reads it
    assert key == "k" and len(sample) == 64 and all(len(v) == 1 << 20 for v in sample.values())


# --------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("kind", ["clip", "wordpiece"])
def test_tokenizer_text_length(kind, restore):
    tok = (text.CLIPTokenizer.from_pretrained() if kind == "clip"
           else text.WordPieceTokenizer.from_pretrained(minilm_dir()))
    long = "the " * 250_001  # 1,000,004 characters
    with pytest.raises(ValueError, match=r"texts\[1\] has 1000004 characters, over the limit of 1000000"):
        tok(["a photo", long])
    with pytest.raises(ValueError, match="text has 1000004 characters"):
        tok.encode(long)
    text.MAX_TEXT_CHARS = 2_000_000
    ids, short = tok(["a photo", long]), tok("the " * 600)  # both keep only their first tokens
    if kind == "wordpiece":
        ids, short = ids["input_ids"], short["input_ids"]
    np.testing.assert_array_equal(ids[1], short[0])


# --------------------------------------------------------------------------- images


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _webp_header(width: int, height: int) -> bytes:
    """A real 16 x 16 lossless WebP whose VP8L header claims width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    at = data.index(b"VP8L") + 9  # chunk tag, size, signature byte 0x2f: then 14-bit width-1, height-1
    bits = struct.unpack("<I", data[at:at + 4])[0] & ~((1 << 28) - 1)
    data[at:at + 4] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


@pytest.mark.parametrize("data", [_png_header(10_000, 9_000), _webp_header(10_000, 9_000)], ids=["png", "webp"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_pixels_of_other_formats(data):
    # 90,000,000 pixels: over our default (89,478,485), under Pillow's own bomb check (2x)
    with pytest.raises(mp.FormatError, match="10000 x 9000 = 90000000 pixels exceeds the limit of 89478485"):
        mp.images.decode(data)
    with pytest.raises(mp.FormatError, match="image 0: .*exceeds the limit"):
        mp.images.preprocess([data])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_image_pixels_raised(fmt):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    with pytest.raises(mp.FormatError, match="2000 x 1500 = 3000000 pixels exceeds the limit of 1000000"):
        mp.images.decode(buf.getvalue(), max_pixels=1_000_000)
    np.testing.assert_array_equal(mp.images.decode(buf.getvalue(), max_pixels=4_000_000), np.asarray(image))
