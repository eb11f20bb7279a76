"""The binding's contract: array conversion, output checks, exception mapping, GIL release
and reference counts. The computation under test is matmul_nt, checked against NumPy
float64."""

import sys
import threading
import time

import numpy as np
import pytest
import torch

import megapairs as mp
from megapairs import _core

rng = np.random.default_rng(1)


def reference(a, b):
    return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T


def assert_close(got, a, b, rtol=1e-5):
    want = reference(a, b)
    scale = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64)).T + 1e-30
    err = np.max(np.abs(got - want) / scale) if want.size else 0.0
    assert err < rtol, f"max relative error {err:.3g}"


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_])
def test_numeric_dtypes_are_converted(dtype):
    a = (rng.standard_normal((6, 5)) * 4).astype(dtype)
    b = (rng.standard_normal((3, 5)) * 4).astype(dtype)
    out = _core.matmul_nt(a, b)
    assert out.dtype == np.float32 and out.shape == (6, 3)
    assert_close(out, a.astype(np.float32), b.astype(np.float32))


def test_lists_are_accepted():
    out = _core.matmul_nt([[1, 2], [3, 4]], [[1, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(out, [[1, 2, 3], [3, 4, 7]])


@pytest.mark.parametrize("bad", [np.ones((2, 2), np.complex64), np.array([["a", "b"]]), np.array([[object()]])])
def test_non_real_dtypes_are_rejected(bad):
    with pytest.raises(TypeError, match="a must be a real numeric array"):
        _core.matmul_nt(bad, np.ones((1, 2), np.float32))


@pytest.mark.parametrize("shape", [(), (4,), (2, 2, 2)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=rf"b must be a 2-D array, got {len(shape)}-D"):
        _core.matmul_nt(np.ones((2, 2), np.float32), np.ones(shape, np.float32))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"a \(2, 3\) and b \(4, 5\)"):
        _core.matmul_nt(np.ones((2, 3)), np.ones((4, 5)))


@pytest.mark.parametrize("layout", ["transposed", "strided", "fortran", "negative-stride", "unaligned"])
def test_non_contiguous_inputs(layout):
    base = rng.standard_normal((40, 30)).astype(np.float32)
    if layout == "transposed":
        a = base.T
    elif layout == "strided":
        a = base[::3, ::2]
    elif layout == "fortran":
        a = np.asfortranarray(base)
    elif layout == "negative-stride":
        a = base[::-1, ::-1]
    else:
        raw = np.zeros(base.size * 4 + 1, np.uint8)
        a = raw[1:].view(np.float32).reshape(base.shape)
        a[...] = base
        assert not a.flags.aligned
    b = rng.standard_normal((7, a.shape[1])).astype(np.float32)
    assert_close(_core.matmul_nt(a, b), a, b)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (0, 3, 4), (3, 0, 4), (3, 4, 0), (33, 17, 65), (257, 129, 384)])
def test_shapes_against_numpy(m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    out = _core.matmul_nt(a, b)
    assert out.shape == (m, n)
    assert_close(out, a, b)


def test_bf16_precision_matches_bf16_rounded_reference():
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((48, 96)).astype(np.float32)
    a16 = torch.from_numpy(a).bfloat16().double().numpy()
    b16 = torch.from_numpy(b).bfloat16().double().numpy()
    if "amx" in _core.onednn_info()["cpu_isa"]:
        # AMX: inputs rounded to the nearest bf16, exact products, fp32 accumulation
        assert_close(_core.matmul_nt(a, b, precision="bf16"), a16, b16, rtol=1e-5)
    else:
        # Without AMX (avx512_core_bf16), oneDNN 3.2's bf16 math on f32 memory does not round
        # the inputs to nearest (measured up to 2.2e-3 of sum |a||b| at K = 32, docs/numerics.md).
        # What still holds: each input keeps 8 significant bits under any rounding, so each
        # product is within 2 * 2^-7 + 2^-14 < 2^-6 of the exact one.
        assert_close(_core.matmul_nt(a, b, precision="bf16"), a, b, rtol=2.0 ** -6)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp8'"):
        _core.matmul_nt(a, b, precision="fp8")


# ---------------------------------------------------------------- outputs


def test_out_is_honoured():
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((6, 4))
    out = np.full((5, 6), np.nan, np.float32)
    result = _core.matmul_nt(a, b, out=out)
    assert result is out
    assert_close(out, a, b)


@pytest.mark.parametrize("out", [np.zeros((5, 7), np.float32), np.zeros((5, 6), np.float64),
                                 np.zeros((6, 5), np.float32).T, np.zeros((5, 6, 1), np.float32)])
def test_bad_out_is_rejected(out):
    with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous float32 array of shape \(5, 6\)"):
        _core.matmul_nt(np.ones((5, 4)), np.ones((6, 4)), out=out)


def test_read_only_out_is_rejected():
    out = np.zeros((2, 2), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _core.matmul_nt(np.ones((2, 1)), np.ones((2, 1)), out=out)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        _core.matmul_nt(np.ones((2, 1)), np.ones((2, 1)), out=[[0, 0], [0, 0]])


def test_reference_counts_are_stable():
    a, b = np.ones((8, 4), np.float32), np.ones((3, 4), np.float32)
    out = np.empty((8, 3), np.float32)
    before = sys.getrefcount(a), sys.getrefcount(b), sys.getrefcount(out)
    for _ in range(2000):
        _core.matmul_nt(a, b, out=out)
        _core.matmul_nt(a, b)
        with pytest.raises(ValueError):
            _core.matmul_nt(a, np.ones((3, 5)), out=out)
    assert (sys.getrefcount(a), sys.getrefcount(b), sys.getrefcount(out)) == before


# ---------------------------------------------------------------- exceptions


def test_exception_hierarchy():
    assert issubclass(mp.Error, RuntimeError)
    assert issubclass(mp.FormatError, mp.Error) and issubclass(mp.FormatError, ValueError)
    assert mp.Error.__module__ == "megapairs" and mp.FormatError.__module__ == "megapairs"


@pytest.mark.parametrize("status,exc", [(1, ValueError), (2, MemoryError), (3, OSError), (4, mp.FormatError),
                                        (5, mp.Error)])
def test_status_mapping(status, exc):
    with pytest.raises(exc, match="^the message$") as info:
        _core._raise_status_for_testing(status, "the message")
    if exc is ValueError:  # invalid arguments are plain ValueErrors, not format errors
        assert not isinstance(info.value, mp.Error)


def test_thread_arguments():
    with pytest.raises(ValueError, match="num_threads must be >= 0"):
        _core.matmul_nt(np.ones((1, 1)), np.ones((1, 1)), num_threads=-1)
    with pytest.raises(ValueError, match="num_threads must be in"):
        mp.set_num_threads(-3)
    with pytest.raises(TypeError, match="n must be an int"):
        mp.set_num_threads(2.5)
    default = mp.get_num_threads()
    try:
        mp.set_num_threads(1)
        assert mp.get_num_threads() == 1
        seen = []
        worker = threading.Thread(target=lambda: seen.append(mp.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [1], "the default applies to every thread"
    finally:
        mp.set_num_threads(0)
    assert mp.get_num_threads() == default


# ---------------------------------------------------------------- GIL


def test_long_core_call_does_not_block_other_threads():
    """A Python thread keeps counting while another thread is inside a long core call."""
    a = rng.standard_normal((1536, 1536)).astype(np.float32)
    progress = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            progress[0] += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        start, t0 = progress[0], time.perf_counter()
        time.sleep(0.3)  # the baseline: the counter alone for a while
        baseline_rate = (progress[0] - start) / (time.perf_counter() - t0)

        calls, start, t0 = 0, progress[0], time.perf_counter()
        while time.perf_counter() - t0 < 0.3 or calls < 2:
            _core.matmul_nt(a, a, num_threads=1)
            calls += 1
        during_rate = (progress[0] - start) / (time.perf_counter() - t0)
    finally:
        stop.set()
        counter.join()
    # Holding the GIL through the call would starve the counter almost completely.
    assert during_rate > 0.25 * baseline_rate, (during_rate, baseline_rate)
