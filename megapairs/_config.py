"""Process-wide settings of the C core and a report of how it was built."""

from __future__ import annotations

import platform
import sys

from . import _core
from ._version import __version__


def set_num_threads(n: int) -> None:
    """Set how many threads megapairs kernels use by default.

    Applies to every thread of the process. A call's own ``num_threads=`` argument wins
    over it; ``n=0`` restores OpenMP's default (``OMP_NUM_THREADS`` or the core count).
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The thread count a call with ``num_threads=None`` uses."""
    return _core.get_num_threads()


def config() -> dict:
    """Versions of megapairs and its native libraries, what oneDNN dispatches to, and whether
    the bf16 linear layers run on megapairs' own AMX kernel (``MEGAPAIRS_MAX_ISA`` caps it)."""
    onednn = _core.onednn_info()
    return {
        "megapairs": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "onednn": ".".join(map(str, onednn["version"])),
        "onednn_runtime": onednn["cpu_runtime"],
        "onednn_isa": onednn["cpu_isa"],
        "max_isa": _core.get_max_isa(),
        "amx_kernels": _core.amx_usable(),
        "libjpeg_turbo": _core.jpeg_version(),
        "num_threads": get_num_threads(),
    }


def show_config() -> None:
    """Print :func:`config` (paste it into bug reports)."""
    for key, value in config().items():
        print(f"{key:>15}: {value}")
