"""Builds megapairs._core from csrc/ (C11 + OpenMP) against oneDNN 3 and libjpeg-turbo.

oneDNN is found under $ONEDNN_ROOT, else under this environment's data prefix, where the
PyPI wheels onednn-cpu-gomp / onednn-devel-cpu-gomp put include/ and lib/ (see
docs/architecture.md). TurboJPEG comes from pkg-config, else the system paths.
"""

import os
import re
import shlex
import subprocess
import sysconfig
from glob import glob
from pathlib import Path

import numpy
from setuptools import Extension, setup


def onednn_paths():
    root = Path(os.environ.get("ONEDNN_ROOT") or sysconfig.get_path("data"))
    version_h = root / "include" / "oneapi" / "dnnl" / "dnnl_version.h"
    if not version_h.is_file():
        raise SystemExit(
            f"megapairs: oneDNN headers not found under {root}/include. Install them with\n"
            "  pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0\n"
            "or point ONEDNN_ROOT at a oneDNN 3.x (OpenMP runtime) installation."
        )
    major = re.search(r"#define DNNL_VERSION_MAJOR (\d+)", version_h.read_text())
    if not major or int(major.group(1)) != 3:
        raise SystemExit(f"megapairs: needs the oneDNN 3.x API, found {version_h} for another major version")
    return str(root / "include"), str(root / "lib")


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return shlex.split(out)


dnnl_include, dnnl_lib = onednn_paths()
jpeg_flags = pkg_config("--cflags", "--libs", "libturbojpeg") or ["-lturbojpeg"]
sources = sorted(glob("csrc/**/*.c", recursive=True))

core = Extension(
    "megapairs._core",
    sources=sources,
    depends=sorted(glob("csrc/**/*.h", recursive=True)),
    include_dirs=["csrc", dnnl_include, numpy.get_include()],
    library_dirs=[dnnl_lib],
    libraries=["dnnl"],
    # No host-specific -march: oneDNN picks kernels for the CPU at run time, and wheels must run anywhere.
    # -fno-trapping-math: nothing reads floating-point exception flags, and it lets GCC
    # vectorise loops with selects (softmax, activations).
    extra_compile_args=["-std=c11", "-O3", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wextra", "-fvisibility=hidden"]
    + [f for f in jpeg_flags if f.startswith("-I")],
    extra_link_args=["-fopenmp"] + [f for f in jpeg_flags if not f.startswith("-I")],
)

setup(ext_modules=[core])
