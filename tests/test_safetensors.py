"""megapairs.weights against the safetensors package (the format's reference writer and
reader) and PyTorch's dtype conversions; every malformed-file class gets its own case."""

import json

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import megapairs as mp
from megapairs.weights import SafetensorsFile, load_safetensors

rng = np.random.default_rng(0)


def reference_load(path):
    """Every tensor as float32 (floats) or as stored (ints), read by the safetensors package."""
    out = {}
    with safetensors.safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            out[name] = t.float().numpy() if t.is_floating_point() else t.numpy()
    return out


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 5), (2, 3, 4, 5), (1, 1, 768)])
def test_float_round_trip(tmp_path, dtype, shape):
    path = tmp_path / "w.safetensors"
    tensor = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    safetensors.torch.save_file({"w": tensor, "b": torch.ones(2, dtype=dtype)}, str(path))
    expected = reference_load(path)
    with SafetensorsFile(path) as f:
        assert f.keys() == ["b", "w"]
        assert f.shape("w") == tuple(shape)
        assert f.dtype("w") == {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                                torch.float64: "F64"}[dtype]
        as_f32 = f.get("w", "float32")
        assert as_f32.dtype == np.float32 and as_f32.shape == tuple(shape)
        np.testing.assert_array_equal(as_f32, expected["w"], err_msg=f"{dtype} {shape}")
        native = f.get("w")
        if dtype == torch.bfloat16:  # no NumPy bfloat16: widened, exactly
            assert native.dtype == np.float32
            np.testing.assert_array_equal(native, expected["w"])
        else:
            np.testing.assert_array_equal(native, tensor.numpy())
            assert native.dtype == tensor.numpy().dtype


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32,
                                   np.uint64, np.bool_])
def test_integer_round_trip(tmp_path, dtype):
    path = tmp_path / "ints.safetensors"
    values = rng.integers(0, 100, size=(4, 6)).astype(dtype)
    safetensors.numpy.save_file({"ids": values}, str(path))
    got = load_safetensors(path)["ids"]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, values)
    with SafetensorsFile(path) as f, pytest.raises(ValueError, match="cannot read tensor 'ids'"):
        f.get("ids", "float32")


def test_special_values_match_torch(tmp_path):
    """inf, nan, subnormals and signed zeros survive F16/BF16 -> f32 as PyTorch converts them."""
    special = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"),
                            6e-8, 1e-40, 65504.0, 3.0e38], dtype=torch.float32)
    path = tmp_path / "special.safetensors"
    tensors = {"f16": special.to(torch.float16), "bf16": special.to(torch.bfloat16)}
    safetensors.torch.save_file(tensors, str(path))
    with SafetensorsFile(path) as f:
        for name, t in tensors.items():
            got = f.get(name, "float32")
            want = t.float().numpy()
            np.testing.assert_array_equal(got, want, err_msg=name)
            assert np.array_equal(np.signbit(got), np.signbit(want)), name


def test_bfloat16_rounding_matches_torch(tmp_path):
    """get(dtype='bfloat16') rounds F32/F16/F64 as torch.Tensor.to(torch.bfloat16) does."""
    x = torch.cat([torch.randn(10_000, dtype=torch.float64) * 10.0 ** torch.randint(-30, 30, (10_000,)),
                   torch.tensor([1.00390625, 1.01171875, -1.00390625, float("nan"), float("inf"), 3.4e38],
                                dtype=torch.float64)])
    tensors = {"f32": x.float(), "f16": x.clamp(-60000, 60000).half(), "f64": x}
    path = tmp_path / "round.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with SafetensorsFile(path) as f:
        for name, t in tensors.items():
            bits = f.get(name, "bfloat16")
            assert bits.dtype == np.uint16
            want = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            nan = np.isnan(t.double().numpy())
            np.testing.assert_array_equal(bits[~nan], want[~nan], err_msg=name)
            assert np.all((bits[nan] & 0x7F80) == 0x7F80) and np.all(bits[nan] & 0x7F), name


def test_metadata_and_unknown_fields(write_safetensors):
    data = np.arange(6, dtype=np.float32).tobytes()
    header = {"__metadata__": {"format": "pt", "note": "é ✓"},
              "x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "extra": {"a": [1, 2.5e3, None]}}}
    path = write_safetensors(header, data)
    with SafetensorsFile(path) as f:
        assert f.metadata == {"format": "pt", "note": "é ✓"}
        np.testing.assert_array_equal(f.get("x"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_unicode_and_escaped_names(write_safetensors):
    names = ["visual.proj", "ü/名前", 'quote"back\\slash', "tab\tname"]
    header, data = {}, b""
    for i, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        data += np.float32(i).tobytes()
    path = write_safetensors(json.dumps(header, ensure_ascii=True), data)
    state = load_safetensors(path)
    assert sorted(state) == sorted(names)
    for i, name in enumerate(names):
        assert state[name][0] == i


def test_views_are_zero_copy_and_read_only(tmp_path):
    path = tmp_path / "big.safetensors"
    safetensors.numpy.save_file({"w": np.ones((256, 256), np.float32)}, str(path))
    f = SafetensorsFile(path)
    w = f.get("w")
    assert not w.flags.writeable and not w.flags.owndata
    with pytest.raises(ValueError):
        w[0, 0] = 2.0
    with pytest.raises(ValueError):
        w.setflags(write=True)
    copy = f.get("w", "bfloat16")
    assert copy.flags.writeable and copy.flags.owndata
    f.close()
    # The view outlives close(): the mapping goes with the last array that uses it.
    del f
    assert float(w.sum()) == 256 * 256
    closed = SafetensorsFile(path)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.get("w")


def test_mapping_protocol(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"a": np.zeros(1, np.float32), "b": np.zeros(2, np.int64)}, str(path))
    with SafetensorsFile(path) as f:
        assert len(f) == 2 and "a" in f and "zz" not in f and list(f) == ["a", "b"]
        assert "2 tensors" in repr(f)
        with pytest.raises(KeyError, match="zz"):
            f.get("zz")
        with pytest.raises(ValueError, match="dtype must be"):
            f.get("a", "int8")
        with pytest.raises(ValueError, match="num_threads"):
            f.get("a", num_threads=0)
    assert f.closed


# ---------------------------------------------------------------- sharded checkpoints


def write_sharded(root, shards, *, index=None):
    weight_map = {}
    for shard, tensors in shards.items():
        safetensors.numpy.save_file(tensors, str(root / shard))
        weight_map.update({name: shard for name in tensors})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map} if index is None else index
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return root / "model.safetensors.index.json"


def test_sharded_checkpoint(tmp_path):
    shards = {"model-00001-of-00002.safetensors": {"a": rng.standard_normal((3, 4)).astype(np.float32),
                                                    "b": np.arange(5, dtype=np.int64)},
              "model-00002-of-00002.safetensors": {"c": rng.standard_normal(7).astype(np.float16)}}
    index = write_sharded(tmp_path, shards)
    for source in (index, tmp_path, str(tmp_path)):
        state = load_safetensors(source)
        assert sorted(state) == ["a", "b", "c"]
        for tensors in shards.values():
            for name, value in tensors.items():
                np.testing.assert_array_equal(state[name], value)
    with SafetensorsFile(tmp_path) as f:
        assert f.shape("c") == (7,) and f.dtype("c") == "F16" and f.metadata == {}


def test_sharded_index_errors(tmp_path):
    shard = {"model-1.safetensors": {"a": np.zeros(2, np.float32)}}
    write_sharded(tmp_path, shard, index={"weight_map": {"a": "model-1.safetensors", "ghost": "model-1.safetensors"}})
    with pytest.raises(mp.FormatError, match="'ghost'.*does not hold it"):
        SafetensorsFile(tmp_path)
    write_sharded(tmp_path, shard, index={"weight_map": {"a": "model-2.safetensors"}})
    with pytest.raises(OSError, match="model-2.safetensors"):
        SafetensorsFile(tmp_path)
    write_sharded(tmp_path, shard, index={"weight_map": {"a": "../model-1.safetensors"}})
    with pytest.raises(mp.FormatError, match="not a plain file name"):
        SafetensorsFile(tmp_path)
    write_sharded(tmp_path, shard, index={"no_map": {}})
    with pytest.raises(mp.FormatError, match="weight_map"):
        SafetensorsFile(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(mp.FormatError, match="index.json: invalid JSON"):
        SafetensorsFile(tmp_path)


def test_checkpoint_resolution(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        SafetensorsFile(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        SafetensorsFile(tmp_path)
    safetensors.numpy.save_file({"a": np.zeros(1, np.float32)}, str(tmp_path / "x.safetensors"))
    assert SafetensorsFile(tmp_path).keys() == ["a"]
    safetensors.numpy.save_file({"b": np.zeros(1, np.float32)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(ValueError, match="several checkpoints"):
        SafetensorsFile(tmp_path)


# ---------------------------------------------------------------- malformed files

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
EIGHT = bytes(8)

MALFORMED = [
    # (case id, header, data, kwargs, expected message fragment)
    ("empty file", None, b"", {}, "too short"),
    ("short length field", None, b"\x01\x02\x03", {}, "too short"),
    ("absurd header length", {"x": F32x2}, EIGHT, {"header_len": 2**40}, "over the limit of"),
    ("header past end", {"x": F32x2}, EIGHT, {"header_len": 10_000}, "runs past the end"),
    ("invalid utf-8", b'{"x\xff": {}}', b"", {}, "not valid UTF-8"),
    ("overlong utf-8", b'{"\xc0\xaf": {}}', b"", {}, "not valid UTF-8"),
    ("invalid json", '{"x": {"dtype": "F32",', b"", {}, "invalid safetensors header"),
    ("trailing garbage", '{"x": ' + json.dumps(F32x2) + "} xyz", EIGHT, {}, "unexpected bytes"),
    ("missing colon", '{"x" ' + json.dumps(F32x2) + "}", EIGHT, {}, "expected ':'"),
    ("bad escape", '{"x\\q": ' + json.dumps(F32x2) + "}", EIGHT, {}, "invalid escape"),
    ("not an object", "[1, 2]", b"", {}, "not a JSON object"),
    ("missing dtype", {"x": {"shape": [2], "data_offsets": [0, 8]}}, EIGHT, {}, "'x' has no \"dtype\""),
    ("missing shape", {"x": {"dtype": "F32", "data_offsets": [0, 8]}}, EIGHT, {}, "'x' has no \"shape\""),
    ("missing offsets", {"x": {"dtype": "F32", "shape": [2]}}, EIGHT, {}, "'x' has no \"data_offsets\""),
    ("unknown dtype", {"x": {**F32x2, "dtype": "F33"}}, EIGHT, {}, "unknown dtype 'F33'"),
    ("unsupported dtype", {"x": {**F32x2, "dtype": "F8_E4M3"}}, EIGHT, {}, "does not read"),
    ("negative dim", {"x": {**F32x2, "shape": [-2]}}, EIGHT, {}, "non-negative integer at byte 29 of the JSON (in tensor 'x')"),
    ("fractional dim", {"x": {**F32x2, "shape": [2.0]}}, EIGHT, {}, "fraction"),
    ("one offset", {"x": {**F32x2, "data_offsets": [0]}}, EIGHT, {}, "two integers"),
    ("three offsets", {"x": {**F32x2, "data_offsets": [0, 4, 8]}}, EIGHT, {}, "too many"),
    ("reversed offsets", {"x": {**F32x2, "data_offsets": [8, 0]}}, EIGHT, {}, "end before they begin"),
    ("size mismatch", {"x": {**F32x2, "shape": [3]}}, EIGHT, {}, "'x' has 3 elements of F32 (12 bytes)"),
    ("truncated data", {"x": F32x2}, bytes(5), {}, "past the end of the data section"),
    ("offsets out of range", {"x": {**F32x2, "data_offsets": [2**40, 2**40 + 8]}}, EIGHT, {}, "past the end"),
    ("overlap", {"x": F32x2, "y": {**F32x2, "data_offsets": [4, 12]}}, bytes(12), {}, "'y' overlaps tensor 'x'"),
    ("hole", {"x": F32x2, "y": {**F32x2, "data_offsets": [12, 20]}}, bytes(20), {}, "hole before 'y'"),
    ("hole at start", {"x": {**F32x2, "data_offsets": [4, 12]}}, bytes(12), {}, "bytes [0, 4)"),
    ("trailing bytes", {"x": F32x2}, bytes(12), {}, "last 4 bytes"),
    ("duplicate names", '{"x": ' + json.dumps(F32x2) + ', "x": ' + json.dumps(F32x2) + "}", EIGHT, {},
     "'x' appears more than once"),
    ("repeated key", '{"x": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', EIGHT, {},
     "repeated key"),
    ("duplicate metadata", '{"__metadata__": {}, "__metadata__": {}}', b"", {}, "repeated \"__metadata__\""),
    ("metadata not strings", {"__metadata__": {"a": 1}}, b"", {}, "values must be strings"),
    ("nul in name", '{"x\\u0000y": ' + json.dumps(F32x2) + "}", EIGHT, {}, "NUL character"),
    ("lone surrogate", '{"\\ud800": ' + json.dumps(F32x2) + "}", EIGHT, {}, "surrogate"),
    ("deep nesting", '{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "z": ' + "[" * 100_000 + "}}",
     EIGHT, {}, "nesting too deep"),
    ("huge shape", {"x": {**F32x2, "shape": [2**40, 2**40]}}, EIGHT, {}, "absurd shape"),
    ("byte size overflow", {"x": {**F32x2, "dtype": "I64", "shape": [2**62]}}, EIGHT, {}, "'x' has an absurd shape"),
    ("too many dims", {"x": {**F32x2, "shape": [1] * 9}}, EIGHT, {}, "too many"),
    ("integer overflow", '{"x": {"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 8]}}', EIGHT,
     {}, "integer too large"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_raises_format_error(tmp_path, write_safetensors, case):
    name, header, data, kwargs, fragment = case
    if header is None:  # a file too short to hold the length field
        path = tmp_path / "short.safetensors"
        path.write_bytes(data)
    else:
        path = write_safetensors(header, data, **kwargs)
    with pytest.raises(mp.FormatError) as info:
        SafetensorsFile(path)
    message = str(info.value)
    assert fragment in message, f"{name}: {message}"
    assert str(path) in message, f"{name}: the message should name the file: {message}"
    assert isinstance(info.value, ValueError) and isinstance(info.value, mp.Error)


def test_not_a_regular_file(tmp_path):
    with pytest.raises(OSError, match="not a regular file"):
        mp._core.SafetensorsReader(tmp_path)
    with pytest.raises(OSError, match="No such file"):
        mp._core.SafetensorsReader(tmp_path / "missing")
