"""The C core's linear layer (``_core.Linear``) on both of its bf16 kernels, our AMX kernel and
oneDNN's, against PyTorch: ``torch.nn.functional.linear`` of the bf16-rounded operands in
float64, then the activation (``gelu`` exact, ``quick_gelu`` x*sigmoid(1.702x))."""

import numpy as np
import pytest
import torch

from megapairs import _core

BACKENDS = ["amx", "avx512"] if _core.amx_usable() else ["avx512"]


@pytest.fixture(params=BACKENDS)
def isa(request):
    previous = _core.set_max_isa(request.param)
    yield request.param
    _core.set_max_isa(previous)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)


def reference(x, w, b, activation):
    xt = torch.from_numpy(x).bfloat16().double()
    wt = torch.from_numpy(w).bfloat16().double()
    y = torch.nn.functional.linear(xt, wt, None if b is None else torch.from_numpy(b).double())
    if activation == "gelu":
        y = torch.nn.functional.gelu(y)
    elif activation == "quick_gelu":
        y = y * torch.sigmoid(1.702 * y)
    return y.numpy(), torch.nn.functional.linear(xt.abs(), wt.abs()).numpy()


@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 65), (100, 96, 768), (300, 130, 33), (64, 1000, 40)])
@pytest.mark.parametrize("activation", ["none", "gelu", "quick_gelu"])
def test_linear_matches_torch(isa, shape, activation):
    M, N, K = shape
    rng = np.random.default_rng(M + N + K)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    layer = _core.Linear(w, b, activation=activation)
    want, mass = reference(x, w, b, activation)
    # fp32 accumulation of exact bf16 products: K * 2^-24 * sum |x w|, plus the activation's
    # own error and the final rounding
    bound = (K + 2) * 2.0**-24 * (mass + np.abs(b)) + 2e-7 * np.abs(want) + 1e-30
    got = layer(x)
    assert layer.backend == ("amx" if isa == "amx" else "onednn")
    np.testing.assert_array_less(np.abs(got - want), bound * 1.0001 + 2.0**-24 * np.abs(want))
    # bf16 in (no rounding pass) and bf16 out: the same values, rounded once
    got16 = layer(bf16_bits(x), out_dtype="bfloat16")
    widened = (got16.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_less(np.abs(widened - want), bound * 1.01 + np.abs(want) * 2.0**-8)


def test_backends_agree():
    if len(BACKENDS) < 2:
        pytest.skip("no AMX on this CPU: only oneDNN's kernel runs")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 384), dtype=np.float32)
    w = rng.standard_normal((256, 384), dtype=np.float32) / 20
    out = {}
    for isa in BACKENDS:
        previous = _core.set_max_isa(isa)
        out[isa] = _core.Linear(w, activation="gelu")(x)
        _core.set_max_isa(previous)
    np.testing.assert_allclose(out["amx"], out["avx512"], rtol=1e-5, atol=1e-5)


def test_isa_cap_and_errors():
    previous = _core.set_max_isa("avx512")
    try:
        assert _core.get_max_isa() == "avx512" and not _core.amx_usable()
        assert _core.amx_peak_flops(10) == 0.0
    finally:
        _core.set_max_isa(previous)
    with pytest.raises(ValueError, match="isa must be 'amx', 'avx512', 'avx2' or 'generic'"):
        _core.set_max_isa("sse2")
    with pytest.raises(ValueError, match="activation must be"):
        _core.Linear(np.zeros((2, 2), np.float32), activation="relu")
    with pytest.raises(ValueError, match="bias must have 2 values"):
        _core.Linear(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))
    layer = _core.Linear(np.zeros((2, 3), np.float32))
    assert layer.backend == "none"
    with pytest.raises(ValueError, match=r"x must be \(M, 3\)"):
        layer(np.zeros((4, 5), np.float32))
    assert layer(np.zeros((0, 3), np.float32)).shape == (0, 2)


@pytest.mark.parametrize(("value", "want"), [("avx512", "avx512"), ("AVX512_CORE", "avx512"), ("amx", "amx"),
                                             ("", "amx"), ("avx2", "avx2"), ("sse4", "generic")])
def test_isa_cap_from_the_environment(value, want):
    import os
    import subprocess
    import sys

    env = dict(os.environ, MEGAPAIRS_MAX_ISA=value)
    code = "from megapairs import _core; print(_core.get_max_isa())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == want
