"""The installed package: version, native libraries, and oneDNN dispatch on this CPU."""

import importlib.metadata
import io
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import megapairs as mp
from megapairs import _core


def test_version_matches_metadata():
    assert mp.__version__ == importlib.metadata.version("megapairs")


def test_config_reports_native_libraries():
    config = mp._config.config()
    assert config["onednn"].startswith("3.")
    assert config["onednn_runtime"] == "OpenMP"  # the GNU OpenMP build, not SYCL/TBB
    assert config["libjpeg_turbo"][0].isdigit()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        mp.show_config()
    assert "onednn_isa" in buffer.getvalue()


def cpu_flags():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_bf16_matmul_dispatches_to_amx_when_the_cpu_has_it():
    script = textwrap.dedent("""
        import numpy as np, megapairs
        a = np.ones((256, 512), np.float32)
        megapairs._core.matmul_nt(a, a, precision="bf16")
    """)
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    lines = [line for line in run.stdout.splitlines() if "exec,cpu,matmul" in line and "fpmath:bf16" in line]
    assert lines, run.stdout + run.stderr
    if {"amx_bf16", "amx_tile"} <= cpu_flags():
        assert "avx512_core_amx" in lines[0], lines[0]
        assert _core.onednn_info()["cpu_isa"].startswith("avx512_core_amx")
    else:
        assert "amx" not in lines[0], lines[0]


def test_jpeg_header_matches_pillow():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (37, 61, 3), dtype=np.uint8)
    cases = [("RGB", {}, 3, False), ("L", {}, 1, False), ("CMYK", {}, 4, False), ("RGB", {"progressive": True}, 3, True)]
    for mode, options, components, progressive in cases:
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **options)
        data = buffer.getvalue()
        header = _core.jpeg_read_header(data)
        with Image.open(io.BytesIO(data)) as im:
            assert (header["width"], header["height"]) == im.size
        assert header["components"] == components and header["progressive"] == progressive, (mode, options)
    # a truncated file is still readable here when the cut falls after the frame header
    for bad in [b"", b"\xff\xd8", b"not a jpeg at all", data[:100]]:
        with pytest.raises(mp.FormatError):
            _core.jpeg_read_header(bad)


def test_amx_kernels_follow_the_cpu_flags():
    """Our AMX kernel runs exactly where /proc/cpuinfo lists AMX (the kernel grants the tile
    state on Linux >= 5.16, which every AMX machine here runs), and config() says so."""
    has_amx = {"amx_bf16", "amx_tile", "avx512_bf16"} <= cpu_flags()
    previous = _core.set_max_isa("amx")
    try:
        assert _core.amx_usable() == has_amx
        assert mp._config.config()["amx_kernels"] == has_amx
        layer = _core.Linear(np.ones((8, 64), np.float32))
        layer(np.ones((4, 64), np.float32))
        assert layer.backend == ("amx" if has_amx else "onednn")
        assert (_core.amx_peak_flops(1000) > 0) == has_amx
    finally:
        _core.set_max_isa(previous)
