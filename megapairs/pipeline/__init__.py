"""The pipeline: from a corpus of images to a training-ready MegaPairs dataset, resumable.

>>> import megapairs as mp
>>> results = mp.pipeline.build("photos/", "out/")                          # doctest: +SKIP
>>> results = mp.pipeline.build("photos/", "out/", overrides=["spaces.caption.band=[0.6, 0.9]"])  # doctest: +SKIP
>>> mp.pipeline.status("out/")                                               # doctest: +SKIP

Each stage is a function over the output folder too (:func:`ingest`, :func:`caption`,
:func:`encode`, :func:`mine`, :func:`annotate`, :func:`export`); the command line
``megapairs`` (:mod:`megapairs.cli`) calls these. The folder layout and the configuration
are described in ``docs/pipeline.md``; :data:`~megapairs.pipeline.config.DEFAULT_TOML` is
the commented default configuration.
"""

from .config import DEFAULT_TOML, Config, ConfigError, SpaceConfig, apply_overrides, load_config, save_config
from .layout import DiskFullError, Output
from .stages import (
    STAGES,
    StageFailed,
    StageResult,
    annotate,
    build,
    caption,
    encode,
    export,
    ingest,
    mine,
    resolve_config,
    status,
)

__all__ = [
    "DEFAULT_TOML",
    "STAGES",
    "Config",
    "ConfigError",
    "DiskFullError",
    "Output",
    "SpaceConfig",
    "StageFailed",
    "StageResult",
    "annotate",
    "apply_overrides",
    "build",
    "caption",
    "encode",
    "export",
    "ingest",
    "load_config",
    "mine",
    "resolve_config",
    "save_config",
    "status",
]
