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
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from ._stages_annotate import annotate
from ._stages_base import (
    STAGES,
    StageFailed,
    StageResult,
    _context,
    _manifest_corpus,
    _progress,
    _set_manifest_errors,
    _threads,
    _upstream,
    _write_parquet,
    read_manifest,
    resolve_config,
)
from ._stages_caption import CAPTION_FORMAT, caption  # noqa: F401 (CAPTION_FORMAT: was defined here)
from ._stages_export import export
from .config import Config, ConfigError, SpaceConfig, load_config
from .ingest import check_images, image_source, manifest_table, scan
from .layout import Output, atomic_write_json, digest, disk_errors

# Caption, annotate and export are in private modules; ingest, encode and mine stay here, and
# _load_model and _write_parquet are looked up in this module's namespace (tests replace them
# here to stop a run midway).

__all__ = ["STAGES", "StageFailed", "StageResult", "annotate", "build", "caption", "encode", "export", "ingest",
           "mine", "resolve_config", "status"]


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


@dataclasses.dataclass
class _EncodePlan:
    """What encoding one space over the manifest needs, shared by the local loop and the
    Ray workers (so both cut the same batches and give the same bytes)."""

    space: SpaceConfig
    keys: list
    captions: list
    wanted: list  # row i is to be embedded
    chunk: int  # rows per resumable step
    forward: int  # inputs per forward pass
    source: tuple  # (corpus kind, corpus root) of the manifest

    @property
    def is_text(self) -> bool:
        return self.space.kind == "caption"


def _encode_plan(o: Output, cfg: Config, space: SpaceConfig, table: pa.Table) -> _EncodePlan:
    keys = table["key"].to_pylist()
    # rows an earlier encode marked failed were readable at ingest: they are tried again (and
    # fail again), so a space encoded after another gives the same result in any order
    ok = [s == "ok" or (e or "").startswith("encode ") for s, e in
          zip(table["status"].to_pylist(), table["error"].to_pylist())]
    captions = table["caption"].to_pylist()
    is_text = space.kind == "caption"
    wanted = [ok[i] and (not is_text or bool(captions[i])) for i in range(len(keys))]
    batch = cfg.space_batch_size(space)
    return _EncodePlan(space, keys, captions, wanted, chunk=max(batch, 256 if is_text else batch),
                       forward=batch if is_text else min(batch, cfg.encode.forward_batch),
                       source=_manifest_corpus(o))


def _encode_chunk(plan: _EncodePlan, run, load, threads, lo: int, failed: dict) -> tuple[np.ndarray, np.ndarray]:
    """Embeds the wanted rows of [lo, lo + plan.chunk): (manifest rows, their embeddings);
    rows that fail go into ``failed`` with their error."""
    name = plan.space.name
    rows = [i for i in range(lo, min(lo + plan.chunk, len(plan.keys))) if plan.wanted[i]]
    if not rows:
        return np.empty(0, np.int64), None
    if plan.is_text:
        items = [plan.captions[i] for i in rows]
    else:
        items, readable = [], []
        for i in rows:
            try:
                items.append(load(plan.keys[i]))
                readable.append(i)
            except (OSError, KeyError, ValueError) as e:
                failed[i] = f"encode {name}: cannot read image: {e}"
        rows = readable
        if not rows:
            return np.empty(0, np.int64), None

    def on_error(j, exc):
        failed[rows[j]] = f"encode {name}: {exc}"

    out, kept = run(items, plan.forward, threads, on_error)
    return np.asarray(rows, np.int64)[np.asarray(kept, np.int64)], out


def _image_loader(plan: _EncodePlan):
    if plan.is_text:
        return None
    return image_source(*plan.source, [k for k, w in zip(plan.keys, plan.wanted) if w])


def _finish_space(o: Output, plan: _EncodePlan, width: int, failed: dict) -> dict:
    """The partial file becomes embeddings/<space>.npy with its .json; the manifest records
    the images that failed."""
    space, N, total = plan.space, len(plan.keys), sum(plan.wanted)
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
    if not plan.is_text:
        _set_manifest_errors(o, failed)
    with contextlib.suppress(FileNotFoundError):
        o.embedding_progress(space.name).unlink()
    return {"embedded": embedded, "failed": len(failed), "missing": N - total, "dims": width}


def _encode_space(o: Output, cfg: Config, space: SpaceConfig, table: pa.Table, fp: str,
                  progress: bool | None) -> dict:
    plan = _encode_plan(o, cfg, space, table)
    width, run = _load_model(space)
    N = len(plan.keys)
    emb, start, failed = _open_partial(o, space.name, fp, (N, width))
    load = _image_loader(plan)
    threads = _threads(cfg)
    total = sum(plan.wanted)
    bar = None
    if _progress(progress, total):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=sum(plan.wanted[:start]), desc=f"encode {space.name}",
                   unit="text" if plan.is_text else "img", dynamic_ncols=True)
    try:
        for lo in range(start, N, plan.chunk):
            rows, out = _encode_chunk(plan, run, load, threads, lo, failed)
            if len(rows):
                emb[rows] = out
            emb.flush()
            atomic_write_json(o.embedding_progress(space.name),
                              {"fingerprint": fp, "shape": [N, width], "rows_done": min(lo + plan.chunk, N),
                               "failed": {str(k): v for k, v in failed.items()}})
            if bar is not None:
                bar.update(sum(plan.wanted[lo:lo + plan.chunk]))
                if failed:
                    bar.set_postfix(failed=len(failed))
    finally:
        if bar is not None:
            bar.close()
    del emb
    return _finish_space(o, plan, width, failed)


EXECUTORS = ("local", "ray")


def _executor(executor: str, cfg: Config) -> str:
    """The executor's name, checked; "ray" starts or joins the cluster of ``cfg.ray.address``."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if executor == "ray":
        from .. import cluster

        cluster.init(cfg.ray.address or None)
    return executor


def encode(out, config=None, *, spaces: Sequence[str] | None = None, progress: bool | None = None,
           fingerprints: dict | None = None, executor: str = "local") -> StageResult:
    """Embed every readable image (and caption) in each similarity space into
    ``embeddings/<space>.npy`` (float32, row i = manifest row i, zeros where nothing was
    embedded) with ``embeddings/<space>.json``. Streams in batches, so memory is bounded by
    the batch; a killed run resumes at the first unfinished batch. Images that fail to
    decode are marked in the manifest and skipped. ``executor="ray"`` runs it on a Ray
    cluster (the ``[ray]`` section; docs/scale.md), with the same result."""
    t0 = time.monotonic()
    o, cfg = _context(out, config)
    executor = _executor(executor, cfg)
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
        if executor == "ray":
            from . import _stages_ray

            stats[name] = _stages_ray.encode_space(o, cfg, space, table, fp, progress)
        else:
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


def mine(out, config=None, *, progress: bool | None = None, fingerprints: dict | None = None,
         executor: str = "local") -> StageResult:
    """Mine pairs over every space (:func:`megapairs.mining.mine_pairs`, each space with its
    own band) among the images embedded in all of them, into ``pairs.parquet`` (image
    numbers are manifest rows) and ``pairs.stats.json``. ``executor="ray"`` runs the kNN
    joins as sharded tasks on a Ray cluster, with the same result."""
    from .. import mining

    t0 = time.monotonic()
    o, cfg = _context(out, config)
    executor = _executor(executor, cfg)
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
    bands = {s.name: tuple(s.band) for s in cfg.spaces}
    if executor == "ray":  # the joins on the cluster; the lists carry their bands
        from . import _stages_ray

        sub = {name: _stages_ray.space_neighbours(sub[name], band, k, cfg, progress) for name, band in bands.items()}
        bands = {}
    result = mining.mine_pairs(sub, band=bands, k=k,
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


# --------------------------------------------------------------------------- build and status


_RUNNERS: dict[str, Callable[..., StageResult]] = {
    "ingest": ingest, "caption": caption, "encode": encode, "mine": mine, "annotate": annotate, "export": export,
}


def build(images: str | os.PathLike | None, out: str | os.PathLike, config: Config | str | os.PathLike | None = None,
          *, overrides: Sequence[str] | dict | None = None, progress: bool | None = None,
          until: str = "export", on_stage: Callable[[StageResult], None] | None = None,
          executor: str = "local") -> list[StageResult]:
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
    executor : {"local", "ray"}
        "ray": encode and mine on a Ray cluster (``[ray]`` in the configuration: the address,
        workers, CPUs per worker; see docs/scale.md). The outputs are the same files.

    Returns
    -------
    list of StageResult, one per stage run or skipped.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    cfg = resolve_config(out, config, images=images, overrides=overrides)
    _executor(executor, cfg)
    fingerprints: dict[str, str] = {}
    results = []
    for stage in STAGES[:STAGES.index(until) + 1]:
        extra = {"executor": executor} if stage in ("encode", "mine") else {}
        result = _RUNNERS[stage](out, cfg, progress=progress, fingerprints=fingerprints, **extra)
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
