"""megapairs: MegaPairs-style multimodal retrieval data synthesis, training and evaluation.

The heavy lifting is a C core (oneDNN, OpenMP, libjpeg-turbo); this package is the thin,
documented layer over it. Arrays in, arrays out.

>>> import megapairs as mp
>>> weights = mp.weights.load_safetensors("model.safetensors")   # doctest: +SKIP
>>> mp.show_config()                                              # doctest: +SKIP
"""

from ._loader import load_core as _load_core

_core = _load_core()

from . import annotate, dataset, errors, evaluation, fusion, images, knn, loss, mining, text, training, weights  # noqa: E402
from .encoders import CLIP, DINOv2, SentenceEncoder  # noqa: E402
from ._config import get_num_threads, set_num_threads, show_config  # noqa: E402
from ._version import __version__  # noqa: E402

from .errors import Error, FormatError  # noqa: E402

__all__ = [
    "CLIP",
    "DINOv2",
    "Error",
    "FormatError",
    "SentenceEncoder",
    "__version__",
    "annotate",
    "cluster",
    "dataset",
    "errors",
    "evaluation",
    "fusion",
    "get_num_threads",
    "images",
    "knn",
    "loss",
    "mining",
    "pipeline",
    "report",
    "set_num_threads",
    "show_config",
    "text",
    "training",
    "viz",
    "weights",
]


def __getattr__(name: str):
    # The pipeline, the CLI over it, the pictures and the Ray layer load on first use: `import megapairs` stays fast.
    if name in ("pipeline", "cli", "viz", "report", "cluster"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'megapairs' has no attribute {name!r}")
