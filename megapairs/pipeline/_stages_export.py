"""The export stage (:func:`export`, re-exported by :mod:`megapairs.pipeline.stages`): the
annotated pairs as record files and WebDataset image shards under ``dataset/``.
"""

from __future__ import annotations

import dataclasses
import time

from ._stages_annotate import _pair_records
from ._stages_base import (
    StageResult,
    _context,
    _manifest_corpus,
    _upstream,
)
from .ingest import image_source
from .layout import atomic_folder, digest, disk_errors

# --------------------------------------------------------------------------- export


def export(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None) -> StageResult:
    """Write the annotated pairs as MegaPairs records (``dataset/records.jsonl``,
    ``dataset/records.parquet``) and the images they use as WebDataset shards
    (``dataset/shards/images-000000.tar``, ...), as ``export.formats`` says. The folder is
    built beside the old one and swapped in whole."""
    from .. import dataset
    from ..annotate import read_journal
    from ..annotate.pipeline import outcomes

    t0 = time.monotonic()
    o, cfg = _context(out, config)
    fp = digest("export", _upstream(o, "annotate", fingerprints), dataclasses.asdict(cfg.export))
    if o.is_current("export", fp):
        return StageResult("export", False, fp, o.read_state("export")["stats"])
    pairs, keys, _ = _pair_records(o)
    journal = read_journal(o.annotations)
    header = journal.header or {}
    records, _ = outcomes(pairs, journal)
    metadata = {"annotate": header.get("settings", {}), "megapairs_version": header.get("megapairs_version"),
                "annotator": header.get("settings", {}).get("annotator", "openai")}
    formats = cfg.export.formats
    stats = {"records": len(records), "formats": formats}
    with disk_errors(str(o.dataset)), atomic_folder(o.dataset) as tmp:
        if "jsonl" in formats:
            dataset.write_jsonl(records, tmp / o.records_jsonl.name)
        if "parquet" in formats:
            dataset.write_parquet(records, tmp / o.records_parquet.name, metadata=metadata)
        if "shards" in formats:
            kind, root = _manifest_corpus(o)
            image_keys = dataset.image_keys(records)
            written = dataset.write_shards(image_keys, image_source(kind, root, image_keys), tmp / "shards",
                                           max_count=cfg.export.shard_max_count,
                                           resize=cfg.export.resize or None, progress=progress)
            stats.update(images=written.images, shards=len(written.paths))
    outputs = [p for p in (o.records_jsonl, o.records_parquet) if p.exists()]
    outputs += sorted(o.shards.glob("*.tar")) if o.shards.is_dir() else []
    o.write_state("export", fp, outputs, stats, config=dataclasses.asdict(cfg.export))
    return StageResult("export", True, fp, stats, time.monotonic() - t0)
