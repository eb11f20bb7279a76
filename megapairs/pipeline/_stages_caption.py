"""The caption stage (:func:`caption`, re-exported by :mod:`megapairs.pipeline.stages`):
captions of the corpus images from an OpenAI-compatible multimodal model, through the
resumable journal ``captions.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pyarrow as pa

from ..limits import loads_json
from ._stages_base import (
    StageFailed,
    StageResult,
    _context,
    _manifest_corpus,
    _progress,
    _upstream,
    _write_parquet,
    logger,
    read_manifest,
)
from .config import ConfigError
from .ingest import image_source
from .layout import digest, disk_errors

# --------------------------------------------------------------------------- caption


CAPTION_FORMAT = "megapairs.captions/1"


def caption(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None,
            backend=None) -> StageResult:
    """With ``corpus.captions = "mllm"``: ask an OpenAI-compatible multimodal model for a
    caption of every readable image that has none, through ``captions.jsonl`` (one line per
    answer, so a killed run resumes), then write them into the manifest. Otherwise nothing
    to do."""
    t0 = time.monotonic()
    o, cfg = _context(out, config)
    up = _upstream(o, "ingest", fingerprints)
    if cfg.corpus.captions != "mllm":
        fp = digest("caption", up, cfg.corpus.captions)
        stats = {"source": cfg.corpus.captions}
        if not o.is_current("caption", fp):
            o.write_state("caption", fp, [], stats)
        return StageResult("caption", False, fp, stats)
    c = cfg.caption
    settings = {"model": c.model or os.environ.get("MEGAPAIRS_MLLM_MODEL", ""), "prompt": c.prompt,
                "max_tokens": c.max_tokens, "max_image_side": c.max_image_side}
    fp = digest("caption", up, settings)
    if o.is_current("caption", fp):
        return StageResult("caption", False, fp, o.read_state("caption")["stats"])
    if not settings["model"]:
        raise ConfigError("corpus.captions = 'mllm' needs a model: set caption.model or MEGAPAIRS_MLLM_MODEL")
    from ..annotate.backends import BackendError, OpenAIBackend
    from ..annotate.prompts import image_data_url

    table = read_manifest(o)
    keys, captions, status = (table[c_].to_pylist() for c_ in ("key", "caption", "status"))
    todo = [i for i in range(len(keys)) if status[i] == "ok" and not captions[i]]
    done = _read_caption_journal(o.captions_journal, settings)
    kind, root = _manifest_corpus(o)
    load = image_source(kind, root, [keys[i] for i in todo])
    own = backend is None
    backend = OpenAIBackend(c.api_base or None, max_connections=c.concurrency) if own else backend
    asked = failed = 0
    from concurrent.futures import ThreadPoolExecutor

    def ask(i):
        url = image_data_url(load(keys[i]), c.max_image_side)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": c.prompt}]}]
        return backend.chat(messages, model=settings["model"], max_tokens=c.max_tokens, temperature=0.0).text

    pending = [i for i in todo if keys[i] not in done]
    bar = None
    if _progress(progress, len(pending), 20):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="captioning", unit="img")
    try:
        with _journal_file(o.captions_journal, settings) as jf, ThreadPoolExecutor(c.concurrency) as pool:
            for i, fut in zip(pending, [pool.submit(_catch, ask, i) for i in pending]):
                text, error = fut.result()
                if isinstance(error, BackendError) and error.fatal:
                    raise error
                entry = {"key": keys[i], "caption": " ".join(text.split()) if text else None,
                         "error": None if text else str(error or "empty answer")}
                with disk_errors(str(o.captions_journal)):
                    jf.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
                    jf.flush()
                done[keys[i]] = entry
                asked += 1
                failed += entry["caption"] is None
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own:
            backend.close()
    for i in todo:
        e = done.get(keys[i])
        if e and e.get("caption"):
            captions[i] = e["caption"]
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))
    _write_parquet(table, o.manifest)
    stats = {"captioned": sum(bool(done.get(keys[i], {}).get("caption")) for i in todo),
             "failed": sum(not done.get(keys[i], {}).get("caption") for i in todo), "asked": asked}
    o.write_state("caption", fp, [o.captions_journal], stats, config=settings)
    if todo and stats["captioned"] == 0:
        raise StageFailed(f"no caption was written for any of {len(todo)} images; see {o.captions_journal}")
    return StageResult("caption", True, fp, stats, time.monotonic() - t0)


def _catch(fn, *args):
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - recorded per image, like annotate's failures
        return None, e


def _read_caption_journal(path: Path, settings: dict) -> dict[str, dict]:
    if not path.is_file():
        return {}
    done = {}
    data = path.read_bytes()
    lines = data[:data.rfind(b"\n") + 1].splitlines()
    for n, raw in enumerate(lines, start=1):
        try:
            entry = loads_json(raw, f"{path}:{n}")
        except ValueError:
            raise ValueError(f"{path}:{n}: not a caption journal line") from None
        if n == 1:
            if entry.get("format") != CAPTION_FORMAT:
                raise ValueError(f"{path}: not a megapairs caption journal")
            if entry.get("settings") != settings:
                backup = path.with_name(f"captions.{time.strftime('%Y%m%dT%H%M%S')}.jsonl")
                os.replace(path, backup)
                logger.warning("caption settings changed: kept the old answers in %s and starting anew", backup)
                return {}
            continue
        if entry.get("caption"):
            done[entry["key"]] = entry
    return done


@contextlib.contextmanager
def _journal_file(path: Path, settings: dict):
    new = not path.is_file() or path.stat().st_size == 0
    with disk_errors(str(path)), open(path, "ab") as f:
        data_end = None
        if not new:  # cut a torn last line
            data = path.read_bytes()
            data_end = data.rfind(b"\n") + 1
            if data_end < len(data):
                f.truncate(data_end)
        if new:
            f.write((json.dumps({"format": CAPTION_FORMAT, "settings": settings}) + "\n").encode("utf-8"))
            f.flush()
        yield f
