"""The pipeline's stages over one output folder, and :func:`build`, which runs them in order.

Each stage is a function ``stage(out, config=None, *, progress=None) -> StageResult`` that
reads what the stages before it left in ``out`` and writes its own files there (names in
:class:`~megapairs.pipeline.layout.Output` and ``docs/pipeline.md``). A stage whose recorded
fingerprint matches is skipped; see :mod:`megapairs.pipeline.layout`.

    ingest   corpus -> manifest.parquet
    caption  manifest -> captions written by an MLLM (only with corpus.captions = "mllm")
    encode   manifest -> embeddings/<space>.npy + .json, one per space, resumable by batch
    mine     embeddings -> pairs.parquet + pairs.stats.json
    annotate pairs -> annotations.jsonl (the journal; template or OpenAI-compatible server)
    export   annotations -> dataset/records.jsonl, records.parquet, shards/*.tar
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import _core
from .config import Config, ConfigError, SpaceConfig, apply_overrides, load_config, save_config, validate
from .ingest import check_images, image_source, manifest_table, scan
from .layout import Output, atomic_folder, atomic_write_json, digest, disk_errors

__all__ = ["STAGES", "StageFailed", "StageResult", "annotate", "build", "caption", "encode", "export", "ingest",
           "mine", "resolve_config", "status"]

logger = logging.getLogger("megapairs")

STAGES = ("ingest", "caption", "encode", "mine", "annotate", "export")


class StageFailed(_core.Error):
    """A stage ran but produced nothing usable (every image failed, no pair was mined, every
    pair failed annotation). The message says what to look at."""


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


# --------------------------------------------------------------------------- ingest


def ingest(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None) -> StageResult:
    """List the corpus into ``manifest.parquet``: one row per image (``key`` relative to the
    corpus root, ``caption``, ``status`` "ok"/"error", ``error``, ``size``). Unreadable images
    stay in the manifest with their error; later stages skip them."""
    t0 = time.monotonic()
    o, cfg = _context(out, config)
    corpus = scan(cfg.corpus)
    fp = digest("ingest", corpus.digest, dataclasses.asdict(cfg.corpus))
    if o.is_current("ingest", fp):
        return StageResult("ingest", False, fp, o.read_state("ingest")["stats"])
    check_images(corpus, progress=progress, num_threads=_threads(cfg))
    if not corpus.entries:
        raise StageFailed(f"no images found in {corpus.root} (looked for files Pillow can read, recursively)")
    entries = corpus.entries
    _write_parquet(manifest_table(entries, {"kind": corpus.kind, "root": str(corpus.root.resolve())}), o.manifest)
    unreadable = sum(e.error is not None for e in entries)
    stats = {"images": len(entries), "unreadable": unreadable, "with_caption": sum(bool(e.caption) for e in entries)}
    if unreadable == len(entries):
        raise StageFailed(f"none of the {len(entries)} images in {corpus.root} could be read; "
                          f"see the error column of {o.manifest}")
    # the manifest's size is left out of the record: encode marks failed rows in it
    o.write_state("ingest", fp, [], stats, corpus={"kind": corpus.kind, "root": str(corpus.root.resolve())},
                  config=dataclasses.asdict(cfg.corpus))
    return StageResult("ingest", True, fp, stats, time.monotonic() - t0)


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
            entry = json.loads(raw)
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


# --------------------------------------------------------------------------- encode


def _space_input(space: SpaceConfig) -> str:
    return "caption" if space.kind == "caption" else "ingest"


def _space_fingerprint(o: Output, space: SpaceConfig, fingerprints: dict | None) -> str:
    settings = {k: v for k, v in dataclasses.asdict(space).items() if k not in ("band", "batch_size")}
    return digest("encode", _upstream(o, _space_input(space), fingerprints), settings)


def _load_model(space: SpaceConfig):
    """The encoder of a space and a function ``(items, on_error) -> (embeddings, kept)``."""
    from .. import encoders

    if space.kind == "clip_image":
        model = encoders.CLIP.from_pretrained(space.model, precision=space.precision)
        return model.embed_dim, lambda items, bs, threads, on_error: model.encode_image(
            items, batch_size=bs, num_threads=threads, on_error=on_error, show_progress_bar=False)
    if space.kind == "dinov2":
        model = encoders.DINOv2.from_pretrained(space.model, precision=space.precision)
        width = model.embed_dim * (2 if space.pooling == "cls+mean" else 1)
        return width, lambda items, bs, threads, on_error: model.encode(
            items, pooling=space.pooling, batch_size=bs, num_threads=threads, on_error=on_error,
            show_progress_bar=False)
    root = encoders.resolve_model_dir(space.model)
    config = {}
    if (root / "config.json").is_file():
        with contextlib.suppress(ValueError, OSError):
            config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    if (root / "open_clip_config.json").is_file() or str(config.get("model_type", "")).startswith("clip"):
        model = encoders.CLIP.from_pretrained(root, precision=space.precision)

        def encode_clip_text(texts, bs, threads, on_error):
            return model.encode_text(texts, batch_size=bs, num_threads=threads, show_progress_bar=False), \
                np.arange(len(texts))
        return model.embed_dim, encode_clip_text
    model = encoders.SentenceEncoder.from_pretrained(root, precision=space.precision)

    def encode_sentences(texts, bs, threads, on_error):
        return model.encode(texts, batch_size=bs, normalize=True, num_threads=threads,
                            show_progress_bar=False), np.arange(len(texts))
    return model.embed_dim, encode_sentences


def _open_partial(o: Output, name: str, fp: str, shape: tuple[int, int]) -> tuple[np.memmap, int, dict]:
    """The embedding file being written and where to resume: a previous run's partial file
    when it was written for the same fingerprint and shape, else a new one (allocated up
    front, so a full disk is an error here and not a crash on a memory-mapped page)."""
    path, progress_path = o.embedding_partial(name), o.embedding_progress(name)
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        progress = None
    if (progress and progress.get("fingerprint") == fp and progress.get("shape") == list(shape)
            and path.is_file()):
        emb = np.load(path, mmap_mode="r+")
        if emb.shape == shape and emb.dtype == np.float32:
            return emb, int(progress["rows_done"]), {int(k): v for k, v in progress.get("failed", {}).items()}
    o.embeddings.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        progress_path.unlink()
    with disk_errors(str(path)):
        emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        if shape[0] and shape[1]:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    return emb, 0, {}


def _encode_space(o: Output, cfg: Config, space: SpaceConfig, table: pa.Table, fp: str,
                  progress: bool | None) -> dict:
    keys = table["key"].to_pylist()
    # rows an earlier encode marked failed were readable at ingest: they are tried again (and
    # fail again), so a space encoded after another gives the same result in any order
    ok = [s == "ok" or (e or "").startswith("encode ") for s, e in
          zip(table["status"].to_pylist(), table["error"].to_pylist())]
    captions = table["caption"].to_pylist()
    is_text = space.kind == "caption"
    wanted = [ok[i] and (not is_text or bool(captions[i])) for i in range(len(keys))]
    width, run = _load_model(space)
    N = len(keys)
    emb, start, failed = _open_partial(o, space.name, fp, (N, width))
    batch = cfg.space_batch_size(space)
    chunk = max(batch, 256 if is_text else batch)  # rows per resumable step
    load = None if is_text else image_source(*_manifest_corpus(o), [k for k, w in zip(keys, wanted) if w])
    threads = _threads(cfg)
    total = sum(wanted)
    bar = None
    if _progress(progress, total):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=sum(wanted[:start]), desc=f"encode {space.name}",
                   unit="text" if is_text else "img", dynamic_ncols=True)
    try:
        for lo in range(start, N, chunk):
            rows = [i for i in range(lo, min(lo + chunk, N)) if wanted[i]]
            step = len(rows)
            if rows:
                if is_text:
                    items = [captions[i] for i in rows]
                else:
                    items, readable = [], []
                    for i in rows:
                        try:
                            items.append(load(keys[i]))
                            readable.append(i)
                        except (OSError, KeyError, ValueError) as e:
                            failed[i] = f"encode {space.name}: cannot read image: {e}"
                    rows = readable

                def on_error(j, exc, rows=rows):
                    failed[rows[j]] = f"encode {space.name}: {exc}"

                forward = batch if is_text else min(batch, cfg.encode.forward_batch)
                out, kept = run(items, forward, threads, on_error) if rows else (np.empty((0, width)), [])
                if len(kept):
                    emb[np.asarray(rows)[np.asarray(kept)]] = out
            emb.flush()
            atomic_write_json(o.embedding_progress(space.name),
                              {"fingerprint": fp, "shape": [N, width], "rows_done": min(lo + chunk, N),
                               "failed": {str(k): v for k, v in failed.items()}})
            if bar is not None:
                bar.update(step)
                if failed:
                    bar.set_postfix(failed=len(failed))
    finally:
        if bar is not None:
            bar.close()
    del emb
    embedded = total - len(failed)
    if total and embedded == 0:
        raise StageFailed(f"encode {space.name}: every one of the {total} inputs failed; "
                          f"the first error: {next(iter(failed.values()))}")
    info = {"space": space.name, "kind": space.kind, "model": space.model, "precision": space.precision,
            "pooling": space.pooling if space.kind == "dinov2" else None, "dims": width, "count": N,
            "embedded": embedded, "failed": len(failed), "missing": N - total,
            "rows": "row i is manifest row i; rows that were not embedded are all zeros"}
    with disk_errors(str(o.embedding(space.name))):
        os.replace(o.embedding_partial(space.name), o.embedding(space.name))
    atomic_write_json(o.embedding_info(space.name), info)
    if not is_text:
        _set_manifest_errors(o, failed)
    o.embedding_progress(space.name).unlink()
    return {"embedded": embedded, "failed": len(failed), "missing": N - total, "dims": width}


def encode(out, config=None, *, spaces: Sequence[str] | None = None, progress: bool | None = None,
           fingerprints: dict | None = None) -> StageResult:
    """Embed every readable image (and caption) in each similarity space into
    ``embeddings/<space>.npy`` (float32, row i = manifest row i, zeros where nothing was
    embedded) with ``embeddings/<space>.json``. Streams in batches, so memory is bounded by
    the batch; a killed run resumes at the first unfinished batch. Images that fail to
    decode are marked in the manifest and skipped."""
    t0 = time.monotonic()
    o, cfg = _context(out, config)
    names = [s.name for s in cfg.spaces] if spaces is None else list(spaces)
    unknown = [n for n in names if n not in {s.name for s in cfg.spaces}]
    if unknown:
        raise ConfigError(f"no space named {unknown[0]!r} (spaces: {', '.join(s.name for s in cfg.spaces)})")
    table = None
    ran, stats, fps = False, {}, {}
    for name in names:
        space = cfg.space(name)
        fp = fps[name] = _space_fingerprint(o, space, fingerprints)
        stage = f"encode:{name}"
        if o.is_current(stage, fp):
            stats[name] = o.read_state(stage)["stats"]
            continue
        table = read_manifest(o)
        stats[name] = _encode_space(o, cfg, space, table, fp, progress)
        o.write_state(stage, fp, [o.embedding(name), o.embedding_info(name)], stats[name],
                      config=dataclasses.asdict(space))
        ran = True
    if fingerprints is not None:
        fingerprints.update({f"encode:{n}": f for n, f in fps.items()})
    return StageResult("encode", ran, digest("encode", fps), stats, time.monotonic() - t0)


# --------------------------------------------------------------------------- mine


def _mine_fingerprint(o: Output, cfg: Config, fingerprints: dict | None) -> str:
    ups = {s.name: _upstream(o, f"encode:{s.name}", fingerprints) for s in cfg.spaces}
    return digest("mine", ups, dataclasses.asdict(cfg.mining), {s.name: s.band for s in cfg.spaces})


def mine(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None) -> StageResult:
    """Mine pairs over every space (:func:`megapairs.mining.mine_pairs`, each space with its
    own band) among the images embedded in all of them, into ``pairs.parquet`` (image
    numbers are manifest rows) and ``pairs.stats.json``."""
    from .. import mining

    t0 = time.monotonic()
    o, cfg = _context(out, config)
    fp = _mine_fingerprint(o, cfg, fingerprints)
    if o.is_current("mine", fp):
        return StageResult("mine", False, fp, o.read_state("mine")["stats"])
    table = read_manifest(o)
    valid = np.asarray([s == "ok" for s in table["status"].to_pylist()], bool)
    spaces = {}
    for s in cfg.spaces:
        emb = np.load(o.embedding(s.name), mmap_mode="r")
        if emb.shape[0] != len(valid):
            raise StageFailed(f"{o.embedding(s.name)} has {emb.shape[0]} rows but the manifest {len(valid)}: "
                              "run `megapairs encode` again")
        valid &= np.einsum("ij,ij->i", emb, emb) > 0
        spaces[s.name] = emb
    rows = np.flatnonzero(valid)
    if len(rows) < 2:
        raise StageFailed(f"only {len(rows)} images are embedded in every space; mining needs at least 2")
    sub = {name: np.ascontiguousarray(emb[rows]) for name, emb in spaces.items()}
    k = min(cfg.mining.k, len(rows) - 1)
    result = mining.mine_pairs(sub, band={s.name: tuple(s.band) for s in cfg.spaces}, k=k,
                               targets_per_query=cfg.mining.targets_per_query,
                               hard_negatives=cfg.mining.hard_negatives, seed=cfg.mining.seed,
                               num_threads=_threads(cfg), progress=progress)
    t = result.table
    hns = t["hard_negatives"].combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.int64()))
    if isinstance(hns, pa.ChunkedArray):
        hns = pa.array([], pa.list_(pa.int64()))
    new_hns = pa.ListArray.from_arrays(hns.offsets, pa.array(rows[hns.flatten().to_numpy()], pa.int64()))
    t = t.set_column(0, "query", pa.array(rows[t["query"].to_numpy()], pa.int64()))
    t = t.set_column(1, "target", pa.array(rows[t["target"].to_numpy()], pa.int64()))
    t = t.set_column(t.schema.get_field_index("hard_negatives"), "hard_negatives", new_hns)
    stats = {**result.stats, "candidates": int(len(rows)), "k": k}
    _write_parquet(t, o.pairs)
    atomic_write_json(o.pairs_stats, stats)
    o.write_state("mine", fp, [o.pairs, o.pairs_stats], {"pairs": stats["pairs"], "candidates": int(len(rows)),
                                                          "queries_without_pair": stats["queries_without_pair"]},
                  config={"mining": dataclasses.asdict(cfg.mining), "bands": {s.name: s.band for s in cfg.spaces}})
    summary = {"pairs": stats["pairs"], "images": int(len(rows)), "queries_without_pair": stats["queries_without_pair"],
               "pairs_per_space": stats["pairs_per_space"]}
    if stats["pairs"] == 0:
        raise StageFailed("no pair was mined: no two images fall inside a band in any space; widen the bands "
                          "(e.g. --set spaces.<name>.band=[0.5,0.95]) and see pairs.stats.json")
    return StageResult("mine", True, fp, summary, time.monotonic() - t0)  # all of it: pairs.stats.json


# --------------------------------------------------------------------------- annotate


def _annotate_settings(cfg: Config) -> dict:
    a = dataclasses.asdict(cfg.annotate)
    a.pop("concurrency")
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
            if own:
                backend = ann.OpenAIBackend(a.api_base or None, max_connections=max(8, a.concurrency))
                if a.llm_api_base:
                    llm_backend = ann.OpenAIBackend(a.llm_api_base, max_connections=max(8, a.concurrency))
            try:
                kind, root = _manifest_corpus(o)
                result = ann.annotate(records, image_source(kind, root, keys), backend=backend,
                                      llm_backend=llm_backend, mllm_model=a.mllm_model or None,
                                      llm_model=a.llm_model or None, journal=o.annotations,
                                      concurrency=a.concurrency, seed=a.seed, prompt_version=a.prompt_version,
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


# --------------------------------------------------------------------------- build and status


_RUNNERS: dict[str, Callable[..., StageResult]] = {
    "ingest": ingest, "caption": caption, "encode": encode, "mine": mine, "annotate": annotate, "export": export,
}


def build(images: str | os.PathLike | None, out: str | os.PathLike, config: Config | str | os.PathLike | None = None,
          *, overrides: Sequence[str] | dict | None = None, progress: bool | None = None,
          until: str = "export", on_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Run every stage in order over the corpus ``images`` into the folder ``out``.

    Parameters
    ----------
    images : path or None
        The corpus (a folder of images, of WebDataset shards, or a CSV/Parquet listing);
        None takes ``corpus.path`` from the configuration.
    out : path
        The output folder (created). A folder with a finished run is brought up to date:
        stages whose inputs and settings did not change are skipped.
    config : Config or path, optional
        Default: ``out/megapairs.toml`` if it exists, else the defaults.
    overrides : list of "section.key=value" or dict
        Applied over the configuration (``spaces.<name>.band=[0.6, 0.9]``).
    progress : bool, optional
        Progress bars; None shows them for long work.
    until : str
        The last stage to run.
    on_stage : callable, optional
        Called with each :class:`StageResult` as its stage finishes.

    Returns
    -------
    list of StageResult, one per stage run or skipped.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    cfg = resolve_config(out, config, images=images, overrides=overrides)
    fingerprints: dict[str, str] = {}
    results = []
    for stage in STAGES[:STAGES.index(until) + 1]:
        result = _RUNNERS[stage](out, cfg, progress=progress, fingerprints=fingerprints)
        fingerprints[stage] = result.fingerprint
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    return results


def status(out: str | os.PathLike) -> list[dict]:
    """What each stage has done in ``out``: one dict per stage (and per space for encode)
    with ``stage``, ``state`` ("done", "stale", "partial" or "not run"), ``finished`` and
    ``stats``. "stale" means a stage it depends on finished again after it; the folder's
    ``megapairs.toml`` is not re-read against the corpus (``megapairs build`` does that)."""
    o = Output(out)
    if not o.root.is_dir():
        raise FileNotFoundError(f"no such directory: '{o.root}'")
    cfg = load_config(o.config) if o.config.is_file() else None
    space_names = [s.name for s in cfg.spaces] if cfg else sorted(
        p.stem.split(".", 1)[1] for p in o.state_dir.glob("encode.*.json")) if o.state_dir.is_dir() else []
    rows = []
    for stage in STAGES:
        names = [f"encode:{n}" for n in space_names] if stage == "encode" else [stage]
        for name in names:
            state = o.read_state(name)
            row = {"stage": name, "state": "not run", "finished": None, "stats": {}}
            if state is not None:
                row.update(state="done", finished=state.get("finished"), stats=state.get("stats", {}))
            elif name.startswith("encode:"):
                progress_file = o.embedding_progress(name.split(":", 1)[1])
                if progress_file.is_file():
                    with contextlib.suppress(ValueError, OSError):
                        p = json.loads(progress_file.read_text(encoding="utf-8"))
                        row.update(state="partial", stats={"rows_done": p["rows_done"], "rows": p["shape"][0]})
            rows.append(row)
    order = {r["stage"]: i for i, r in enumerate(rows)}
    times = {r["stage"]: r["finished"] for r in rows}
    for r in rows:
        if r["state"] != "done":
            continue
        before = [s for s in order if order[s] < order[r["stage"]] and times.get(s)]
        if any(times[s] > r["finished"] for s in before if not (s.startswith("encode:")
                                                                and r["stage"].startswith("encode:"))):
            r["state"] = "stale"
    return rows

