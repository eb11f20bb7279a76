"""Loads the C core, making its oneDNN library findable first.

The PyPI wheel onednn-cpu-gomp installs libdnnl.so.3 into the environment's data prefix
(``<prefix>/lib``), which the dynamic linker does not search. Loading it by path with
RTLD_GLOBAL first lets ``_core`` resolve it by soname, whether megapairs is installed as a
wheel, in editable mode or built in place. Where the wheel went to another prefix than this
interpreter's (``pip install --prefix``, a PYTHONPATH entry), its installed-files record
says where the library is.
"""

from __future__ import annotations

import ctypes
import os
import sysconfig
from pathlib import Path

_ONEDNN_SONAME = "libdnnl.so.3"
_ONEDNN_DISTRIBUTION = "onednn-cpu-gomp"


def _onednn_candidates() -> list[Path]:
    roots = [os.environ.get("ONEDNN_ROOT"), sysconfig.get_path("data"), sysconfig.get_path("data", "posix_user")]
    return [Path(root, "lib", _ONEDNN_SONAME) for root in roots if root]


def _onednn_from_metadata() -> Path | None:
    """libdnnl.so.3 as recorded by the installed onednn-cpu-gomp distribution, if any."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution(_ONEDNN_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == _ONEDNN_SONAME:
            return Path(entry.locate())
    return None


def _preload_onednn() -> None:
    for candidate in _onednn_candidates():
        if candidate.is_file():
            ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
            return
    recorded = _onednn_from_metadata()
    if recorded is not None and recorded.is_file():
        ctypes.CDLL(str(recorded), mode=ctypes.RTLD_GLOBAL)
    # Not found here: the system linker may still know one (LD_LIBRARY_PATH, ldconfig).


def load_core():
    _preload_onednn()
    try:
        from . import _core
    except ImportError as exc:
        looked = ", ".join(str(p) for p in _onednn_candidates())
        raise ImportError(
            f"megapairs could not load its C core: {exc}. It needs oneDNN 3 "
            f"(pip install onednn-cpu-gomp==2023.2.0) and libturbojpeg (apt-get install libturbojpeg0). "
            f"Looked for {_ONEDNN_SONAME} in: {looked} and the files of the installed "
            f"{_ONEDNN_DISTRIBUTION} distribution"
        ) from exc
    return _core
