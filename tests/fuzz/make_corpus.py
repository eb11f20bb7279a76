"""Writes the seed corpus of fuzz_safetensors to tests/fuzz/corpus/safetensors/.

Valid seeds come from the `safetensors` package itself, so the fuzzer starts from what real
writers produce; BF16 and the malformed seeds are built by hand, one per way a file can be
wrong, so that mutations start next to every error path. Every seed stays under 4 KB.

    .venv/bin/python tests/fuzz/make_corpus.py
"""

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save

OUT = Path(__file__).resolve().parent / "corpus" / "safetensors"
MAX_SEED = 4096


def raw(header, data=b"", header_len=None):
    """8-byte little-endian header length, header bytes, data bytes."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if header_len is None else header_len
    return struct.pack("<Q", n) + header + data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def bf16_bits(values):
    """Rounds float32 to bfloat16 bit patterns, ties to even, as the reader's writer would."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def valid_seeds():
    rng = np.random.default_rng(0)
    seeds = {
        "valid_f32": save(
            {"weight": rng.standard_normal((3, 4)).astype(np.float32), "bias": np.arange(4, dtype=np.float32)}
        ),
        "valid_f16": save(
            {"half": np.array([1.0, -2.0, np.inf, 2.0**-24, np.nan, 65504.0], dtype=np.float16)}
        ),
        "valid_f64_i64": save(
            {
                "ids": np.array([-1, 0, 1 << 40], dtype=np.int64),
                "scale": np.array([0.1, 1e300], dtype=np.float64),
            }
        ),
        "valid_mixed_ints": save(
            {
                "u8": np.arange(5, dtype=np.uint8),
                "mask": np.array([True, False, True]),
                "i16": np.array([-3, 3], dtype=np.int16),
                "u32": np.array([7], dtype=np.uint32),
            }
        ),
        # One key only: the package orders metadata keys by hash, and seeds should be reproducible.
        "valid_metadata": save({"w": np.ones((2, 2), dtype=np.float32)}, metadata={"format": "pt"}),
        "valid_scalar": save({"scale": np.array(0.5, dtype=np.float32), "step": np.array(7, dtype=np.int64)}),
        "valid_empty_tensors": save(
            {
                "empty": np.zeros((0, 3), dtype=np.float32),
                "empty16": np.zeros((2, 0, 5), dtype=np.float16),
                "one": np.ones(1, dtype=np.float32),
            }
        ),
        "valid_no_tensors": save({}),
        "valid_many_small": save(
            {
                f"layer.{i:02d}.{kind}": np.full(2, i, dtype=np.float16 if i % 2 else np.float32)
                for i in range(16)
                for kind in ("w", "b")
            }
        ),
        "valid_8_dims": save({"t": np.zeros((1, 2, 1, 2, 1, 2, 1, 2), dtype=np.uint8)}),
    }
    # The package writes BF16 only from torch, so build it by hand: 1.0, -3.0, pi, +inf.
    bf16 = bf16_bits([1.0, -3.0, np.pi, np.inf]).tobytes()
    seeds["valid_bf16"] = raw({"b": tensor("BF16", [2, 2], 0, 8), "__metadata__": {"dtype": "bf16"}}, bf16)
    # Writers pad the header with spaces so the data section is aligned.
    header = json.dumps({"a": tensor("F32", [1], 0, 4)}).encode()
    header += b" " * (-len(header) % 8 + 8)
    seeds["valid_padded_header"] = raw(header, struct.pack("<f", 2.5))
    seeds["valid_metadata_escapes"] = raw(
        '{"__metadata__":{"format":"pt","note":"caf\\u00e9 \\"quoted\\"\\n","emoji":"\\ud83d\\ude00"},'
        '"w":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}',
        b"\x00\x3c",
    )
    seeds["valid_unknown_fields"] = raw(
        '{"a":{"dtype":"F32","x":{"k":[1,-2.5e-3,true,null,"s\\u00e9",{}]},'
        '"shape":[1],"data_offsets":[0,4]}}',
        b"\x00\x00\x80\x3f",
    )
    return seeds


def malformed_seeds():
    a = tensor("F32", [1], 0, 4)
    four = b"\x00\x00\x80\x3f"
    return {
        "bad_short_file": b"\x10\x00\x00",
        "bad_header_len_absurd": raw(b"{}", header_len=100_000_001),
        "bad_header_len_past_end": raw(b"{}", header_len=64),
        "bad_invalid_utf8": raw(b'{"\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
        "bad_json_truncated": raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}', four),
        "bad_json_trailing_garbage": raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} xyz', four),
        "bad_json_missing_colon": raw('{"a" {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
        "bad_json_bad_escape": raw('{"a\\q":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
        "bad_json_lone_surrogate": raw('{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', four),
        "bad_header_not_object": raw("[1,2,3]"),
        "bad_missing_dtype": raw({"a": {"shape": [1], "data_offsets": [0, 4]}}, four),
        "bad_missing_shape": raw({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, four),
        "bad_missing_offsets": raw({"a": {"dtype": "F32", "shape": [1]}}, four),
        "bad_unknown_dtype": raw({"a": tensor("F31", [1], 0, 4)}, four),
        "bad_unsupported_f8": raw({"a": tensor("F8_E4M3", [4], 0, 4)}, four),
        "bad_shape_negative": raw('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', four),
        "bad_shape_fraction": raw('{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', four),
        "bad_shape_overflow": raw({"a": tensor("U8", [4294967296, 4294967296], 0, 1)}, b"\x00"),
        "bad_offsets_one_number": raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, four),
        "bad_offsets_three_numbers": raw(
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}}, four
        ),
        "bad_end_before_begin": raw({"a": tensor("F32", [1], 4, 0)}, four),
        "bad_nbytes_mismatch": raw({"a": tensor("F32", [2], 0, 4)}, four),
        "bad_truncated_data": raw({"a": tensor("F32", [2], 0, 8)}, four),
        "bad_overlap": raw({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [1], 4, 8)}, four * 2),
        "bad_hole": raw({"a": a, "b": tensor("F32", [1], 8, 12)}, four * 3),
        "bad_trailing_bytes": raw({"a": a}, four * 2),
        "bad_duplicate_name": raw(
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            four * 2,
        ),
        "bad_duplicate_metadata": raw('{"__metadata__":{"k":"v"},"__metadata__":{}}'),
        "bad_metadata_not_string": raw({"__metadata__": {"k": 1}}),
        "bad_nesting_bomb": raw(
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "[" * 2000, four
        ),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = {**valid_seeds(), **malformed_seeds()}
    for old in OUT.glob("*.safetensors"):  # only the files this script writes
        old.unlink()
    for name, blob in sorted(seeds.items()):
        assert len(blob) < MAX_SEED, f"{name} is {len(blob)} bytes"
        (OUT / f"{name}.safetensors").write_bytes(blob)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
