"""What every stage of :mod:`megapairs.pipeline.stages` shares: the stage names,
:class:`StageFailed` and :class:`StageResult`, resolving a run's configuration, the
fingerprints of the stages upstream, and reading and rewriting the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StageFailed
from .config import Config, apply_overrides, load_config, save_config, validate
from .layout import Output, disk_errors

logger = logging.getLogger("megapairs")

STAGES = ("ingest", "caption", "encode", "mine", "annotate", "export")


@dataclass
class StageResult:
    """What one stage did: ``ran`` is False when it was up to date and skipped."""

    stage: str
    ran: bool
    fingerprint: str
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- configuration


def resolve_config(out: str | os.PathLike, config: Config | str | os.PathLike | None = None, *,
                   images: str | os.PathLike | None = None, overrides: Sequence[str] | dict | None = None,
                   save: bool = True) -> Config:
    """The configuration a run in ``out`` uses: ``config`` (a :class:`Config` or a TOML path;
    default ``out/megapairs.toml`` when it exists, else the defaults), then ``images`` as
    ``corpus.path``, then ``overrides``. Validated, and saved as ``out/megapairs.toml``
    when it differs from what is there."""
    o = Output(out)
    if isinstance(config, Config):
        cfg = dataclasses.replace(config)
    else:
        path = config if config is not None else (o.config if o.config.is_file() else None)
        cfg = load_config(path)
    if images is not None:
        cfg = apply_overrides(cfg, {"corpus.path": str(images)})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    if save:
        current = load_config(o.config).to_dict() if o.config.is_file() else None
        if current != cfg.to_dict():
            o.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, o.config)
    return cfg


def _context(out, config) -> tuple[Output, Config]:
    if isinstance(out, Output):
        out = out.root
    return Output(out), resolve_config(out, config)


def _upstream(o: Output, stage: str, fingerprints: dict | None) -> str:
    """The fingerprint ``stage`` has in this run, or the one it recorded when it finished."""
    if fingerprints and stage in fingerprints:
        return fingerprints[stage]
    state = o.read_state(stage)
    if state is None:
        command = stage.split(":")[0]
        # name the first stage of the chain that has not finished
        command = next((s for s in STAGES[:STAGES.index(command)] if s != "encode" and o.read_state(s) is None),
                       command)
        raise StageFailed(f"the {command} stage has not finished in {o.root}: run `megapairs {command}` "
                          f"(or `megapairs build`) first")
    return state["fingerprint"]


def _progress(progress: bool | None, n: int, threshold: int = 256) -> bool:
    return n > threshold if progress is None else bool(progress)


def _threads(cfg: Config) -> int | None:
    return cfg.encode.num_threads or None


# --------------------------------------------------------------------------- manifest


def read_manifest(o: Output) -> pa.Table:
    if not o.manifest.is_file():
        raise StageFailed(f"no manifest in {o.root}: run `megapairs ingest` (or `megapairs build`) first")
    return pq.read_table(o.manifest)


def _manifest_corpus(o: Output) -> tuple[str, Path]:
    state = o.read_state("ingest")
    if state is None:
        raise StageFailed(f"the ingest stage has not finished in {o.root}: run `megapairs ingest` first")
    return state["corpus"]["kind"], Path(state["corpus"]["root"])


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(str(path)):
        pq.write_table(table, tmp)
        os.replace(tmp, path)


def _set_manifest_errors(o: Output, errors: dict[int, str]) -> None:
    """Mark manifest rows as failed (row -> message), keeping every other row, and the first
    message of a row that failed before, as they are."""
    table = read_manifest(o)
    status = table["status"].to_pylist()
    error = table["error"].to_pylist()
    fresh = {row: message for row, message in errors.items() if status[row] == "ok"}
    if not fresh:
        return
    for row, message in fresh.items():
        status[row], error[row] = "error", message
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(error, pa.string()))
    _write_parquet(table, o.manifest)
