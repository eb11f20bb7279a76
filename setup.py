"""Builds megapairs._core from csrc/ (C11 + OpenMP) against oneDNN 3 and libjpeg-turbo.

oneDNN is found under $ONEDNN_ROOT, else through the installed files of the PyPI wheels
onednn-devel-cpu-gomp (headers) and onednn-cpu-gomp (libdnnl.so), wherever the build
environment put them: pip's isolated build installs them into a temporary prefix that is
neither sys.prefix nor the target environment (see docs/architecture.md). TurboJPEG comes
from pkg-config, else the system paths.
"""

import importlib.metadata
import logging
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from glob import glob
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ONEDNN_HEADERS = "onednn-devel-cpu-gomp"
ONEDNN_LIBRARY = "onednn-cpu-gomp"
VERSION_H = Path("oneapi", "dnnl", "dnnl_version.h")


def installed_file(distribution, suffix):
    """Absolute path of the file of an installed distribution whose RECORD entry ends with suffix.

    The oneDNN wheels record their headers and library as data files ("../../../include/...")
    relative to the site-packages directory holding their .dist-info, so this finds them in
    whichever prefix pip installed them: a venv, --user, --prefix, or the isolated build
    environment's overlay.
    """
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.as_posix().endswith(suffix):
            path = Path(entry.locate()).resolve()
            if path.is_file():
                return path
    return None


def prefix_candidates():
    """Prefixes that may hold include/oneapi/dnnl when the wheels' metadata is not found."""
    prefixes = [sysconfig.get_path("data")]
    for entry in sys.path:  # <prefix>/lib/pythonX.Y/site-packages -> <prefix>
        path = Path(entry)
        if path.name in ("site-packages", "dist-packages") and path.parent.parent.name == "lib":
            prefixes.append(str(path.parent.parent.parent))
    return list(dict.fromkeys(prefixes))


def check_major_version(version_h):
    major = re.search(r"#define DNNL_VERSION_MAJOR (\d+)", version_h.read_text())
    if not major or int(major.group(1)) != 3:
        raise SystemExit(f"megapairs: needs the oneDNN 3.x API, found {version_h} for another major version")


def onednn_paths():
    """(include dir, lib dir) of oneDNN 3: $ONEDNN_ROOT, else the PyPI wheels, else a prefix."""
    if os.environ.get("ONEDNN_ROOT"):
        root = Path(os.environ["ONEDNN_ROOT"])
        version_h = root / "include" / VERSION_H
        if not version_h.is_file():
            raise SystemExit(f"megapairs: ONEDNN_ROOT={root} has no include/{VERSION_H.as_posix()}")
        check_major_version(version_h)
        return str(root / "include"), str(root / "lib")

    version_h = installed_file(ONEDNN_HEADERS, "/" + VERSION_H.as_posix())
    looked = [f"the files of the installed {ONEDNN_HEADERS} distribution"]
    if version_h is None:
        for prefix in prefix_candidates():
            candidate = Path(prefix, "include", VERSION_H)
            looked.append(str(candidate.parent.parent.parent))
            if candidate.is_file():
                version_h = candidate
                break
    if version_h is None:
        raise SystemExit(
            "megapairs: oneDNN headers not found; looked in " + ", ".join(looked) + ". Install them with\n"
            f"  pip install {ONEDNN_LIBRARY}==2023.2.0 {ONEDNN_HEADERS}==2023.2.0\n"
            "or point ONEDNN_ROOT at a oneDNN 3.x (OpenMP runtime) installation."
        )
    check_major_version(version_h)
    include = version_h.parents[2]
    # -ldnnl needs the unversioned libdnnl.so: the runtime wheel's copy, else the headers' prefix.
    library = installed_file(ONEDNN_LIBRARY, "/libdnnl.so")
    lib = library.parent if library is not None else include.parent / "lib"
    return str(include), str(lib)


class build_ext_onednn(build_ext):
    """Looks oneDNN up only when compiling, so metadata and sdist builds do not need it."""

    def build_extensions(self):
        include, lib = onednn_paths()
        self.announce(f"megapairs: oneDNN headers from {include}, libdnnl.so from {lib}", logging.INFO)
        for ext in self.extensions:
            ext.include_dirs.append(include)
            ext.library_dirs.append(lib)
        super().build_extensions()


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return shlex.split(out)


jpeg_flags = pkg_config("--cflags", "--libs", "libturbojpeg") or ["-lturbojpeg"]
sources = sorted(glob("csrc/**/*.c", recursive=True))

core = Extension(
    "megapairs._core",
    sources=sources,
    depends=sorted(glob("csrc/**/*.h", recursive=True)),
    include_dirs=["csrc", numpy.get_include()],  # + oneDNN's, added by build_ext_onednn
    libraries=["dnnl"],
    # No host-specific -march: oneDNN picks kernels for the CPU at run time, and wheels must run anywhere.
    # -fno-trapping-math: nothing reads floating-point exception flags, and it lets GCC
    # vectorise loops with selects (softmax, activations).
    extra_compile_args=["-std=c11", "-O3", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wextra", "-fvisibility=hidden"]
    + [f for f in jpeg_flags if f.startswith("-I")],
    extra_link_args=["-fopenmp"] + [f for f in jpeg_flags if not f.startswith("-I")],
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext_onednn})
