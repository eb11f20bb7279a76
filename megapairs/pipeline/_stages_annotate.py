"""The annotate stage (:func:`annotate`, re-exported by :mod:`megapairs.pipeline.stages`):
instructions for the mined pairs into the journal ``annotations.jsonl``, and the pair records
it and the export stage read.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pyarrow.parquet as pq

from ._stages_base import (
    StageFailed,
    StageResult,
    _context,
    _manifest_corpus,
    _upstream,
    logger,
    read_manifest,
)
from .config import Config
from .ingest import image_source
from .layout import Output, digest, disk_errors

# --------------------------------------------------------------------------- annotate


def _annotate_settings(cfg: Config) -> dict:
    a = dataclasses.asdict(cfg.annotate)
    a.pop("concurrency")  # how fast, not what: changing them keeps the journal
    a.pop("servers")
    return a


def _pair_records(o: Output) -> tuple[list[dict], list[str], list[str | None]]:
    from .. import mining

    table = read_manifest(o)
    keys, captions = table["key"].to_pylist(), table["caption"].to_pylist()
    pairs = pq.read_table(o.pairs)
    return mining.to_records(pairs, keys), keys, captions


def annotate(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None,
             backend=None) -> StageResult:
    """Write instructions for the mined pairs into the journal ``annotations.jsonl``: with the
    offline template annotator (a baseline built from the captions) or, with
    ``annotate.annotator = "openai"``, the MegaPairs two-stage MLLM + LLM method against an
    OpenAI-compatible server. Answers already in the journal are never asked again, even
    when mining changed; a journal made with other annotator settings is kept aside."""
    from .. import annotate as ann

    t0 = time.monotonic()
    o, cfg = _context(out, config)
    settings = _annotate_settings(cfg)
    up = [_upstream(o, "mine", fingerprints)]
    if cfg.annotate.annotator == "template":
        up.append(_upstream(o, "caption", fingerprints))
    fp = digest("annotate", up, settings)
    if o.is_current("annotate", fp):
        return StageResult("annotate", False, fp, o.read_state("annotate")["stats"])
    previous = o.read_state("annotate")
    if previous is not None and previous.get("config") != settings and o.annotations.is_file():
        backup = o.root / f"annotations.{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        os.replace(o.annotations, backup)
        logger.warning("annotator settings changed: kept the old journal as %s and starting a new one", backup)
    o.clear_state("annotate")
    records, keys, captions = _pair_records(o)
    a = cfg.annotate
    with disk_errors(str(o.annotations)):
        if a.annotator == "template":
            from ..annotate.template import annotate_template

            result = annotate_template(records, dict(zip(keys, captions)), journal=o.annotations, seed=a.seed,
                                       progress=progress)
        else:
            own = backend is None
            llm_backend = None
            concurrency = a.concurrency
            if own and a.servers:
                backend = ann.ServerPool(a.servers, concurrency=a.concurrency)
                concurrency = a.concurrency * len(a.servers)
            elif own:
                backend = ann.OpenAIBackend(a.api_base or None, max_connections=max(8, a.concurrency))
            if own and a.llm_api_base:
                llm_backend = ann.OpenAIBackend(a.llm_api_base, max_connections=max(8, a.concurrency))
            try:
                kind, root = _manifest_corpus(o)
                result = ann.annotate(records, image_source(kind, root, keys), backend=backend,
                                      llm_backend=llm_backend, mllm_model=a.mllm_model or None,
                                      llm_model=a.llm_model or None, journal=o.annotations,
                                      concurrency=concurrency, seed=a.seed, prompt_version=a.prompt_version,
                                      max_image_side=a.max_image_side, progress=progress)
            finally:
                if own:
                    backend.close()
                    if llm_backend is not None:
                        llm_backend.close()
    stats = {"annotator": a.annotator, "pairs": result.stats["pairs"], "done": result.stats["done"],
             "failed": result.stats["failed"]}
    if records and not result.records:
        first = result.failures[0] if result.failures else {}
        raise StageFailed(f"every one of the {len(records)} pairs failed annotation; the first: "
                          f"{first.get('stage')}: {first.get('reason')} (all reasons are in {o.annotations})")
    o.write_state("annotate", fp, [o.annotations], stats, config=settings)
    if result.failures:
        logger.warning("annotate: %d of %d pairs failed; their reasons are in %s", len(result.failures),
                       len(records), o.annotations)
    return StageResult("annotate", True, fp, stats, time.monotonic() - t0)
