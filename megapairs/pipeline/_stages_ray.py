"""The encode and mine stages on a Ray cluster (``megapairs build --ray``); they write the
same files as the local stages, byte for byte (see docs/scale.md for the one condition).

Encode: the manifest's rows are cut into parts (``ray.batch_size`` rows, a whole number of
the local stage's steps, so both cut the same forward batches); a Ray Dataset of the parts
not yet done runs ``map_batches`` over an actor class that loads the space's model once and
writes each part as ``embeddings/.<space>.parts/<first row>.npy`` + ``.json`` (the .json
last, both atomically). A part is keyed by its rows, so a part redone after a worker died is
written again, never twice; a killed driver resumes at the missing parts. When every part is
there they are assembled into ``embeddings/<space>.npy`` in manifest order.

Mine: each space's two self-joins run as sharded kNN tasks (:mod:`megapairs.cluster`),
identical to the local joins; the pair selection then runs on the driver.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import StageFailed
from .layout import Output, atomic_write_json, disk_errors


def _part_paths(folder: Path, lo: int) -> tuple[Path, Path]:
    return folder / f"{lo:012d}.npy", folder / f"{lo:012d}.json"


def _read_part(folder: Path, lo: int, hi: int, fp: str) -> dict | None:
    """The part's record when it was finished for this fingerprint, else None."""
    npy, meta = _part_paths(folder, lo)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if info.get("fingerprint") != fp or info.get("rows") != [lo, hi] or not npy.is_file():
        return None
    return info


class _Encoder:
    """A Ray Data actor: one space's model, loaded once, encoding whole parts."""

    def __init__(self, root: str, config, space: str, fp: str, threads: int):
        from . import stages

        o = Output(root)
        self.folder = o.embedding_parts(space)
        self.fp = fp
        self.threads = threads
        self.plan = stages._encode_plan(o, config, config.space(space), stages.read_manifest(o))
        self.width, self.run = stages._load_model(config.space(space))
        self.load = stages._image_loader(self.plan)

    def __call__(self, batch: dict) -> dict:
        from . import stages

        done = []
        for lo, hi in zip(batch["lo"].tolist(), batch["hi"].tolist()):
            block = np.zeros((hi - lo, self.width), np.float32)
            failed: dict[int, str] = {}
            for start in range(lo, hi, self.plan.chunk):
                rows, out = stages._encode_chunk(self.plan, self.run, self.load, self.threads, start, failed)
                if len(rows):
                    block[rows - lo] = out
            npy, meta = _part_paths(self.folder, lo)
            tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
            with disk_errors(str(npy)):
                with open(tmp, "wb") as f:
                    np.save(f, block)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, npy)
            atomic_write_json(meta, {"fingerprint": self.fp, "rows": [lo, hi], "dims": self.width,
                                     "failed": {str(k): v for k, v in failed.items()}})
            done.append(hi - lo)
        return {"rows": np.asarray(done, np.int64)}


def encode_space(o: Output, cfg, space, table, fp: str, progress: bool | None) -> dict:
    """Encode one space on the cluster; the same files and stats as the local stage."""
    from .. import cluster
    from . import stages

    cluster.require_ray()
    import ray.data

    plan = stages._encode_plan(o, cfg, space, table)
    N = len(plan.keys)
    part = math.ceil(cfg.ray.batch_size / plan.chunk) * plan.chunk
    spans = [(lo, min(lo + part, N)) for lo in range(0, N, part)]
    folder = o.embedding_parts(space.name)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(lo, hi) for lo, hi in spans if _read_part(folder, lo, hi, fp) is None]
    # the encoders' threads: the config's, else the CPUs each worker holds (see docs/scale.md)
    threads = cfg.encode.num_threads or cfg.ray.cpus_per_worker
    if todo:
        bar = None
        if stages._progress(progress, sum(hi - lo for lo, hi in todo)):
            from tqdm.auto import tqdm

            bar = tqdm(total=N, initial=N - sum(hi - lo for lo, hi in todo), desc=f"encode {space.name} (ray)",
                       unit="row", dynamic_ncols=True)
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours (above) counts rows
        ds = ray.data.from_items([{"lo": lo, "hi": hi} for lo, hi in todo], override_num_blocks=len(todo))
        # Ray Data restarts a dead actor and retries its task (max_restarts = max_task_retries = -1
        # are its defaults for actor pools): a part is redone under its own name
        ds = ds.map_batches(_Encoder, batch_size=1, concurrency=min(cfg.ray.workers, len(todo)),
                            num_cpus=cfg.ray.cpus_per_worker,
                            fn_constructor_kwargs={"root": str(o.root), "config": cfg, "space": space.name,
                                                   "fp": fp, "threads": threads})
        try:
            for row in ds.iter_rows():
                if bar is not None:
                    bar.update(int(row["rows"]))
        finally:
            if bar is not None:
                bar.close()
    infos = [(lo, hi, _read_part(folder, lo, hi, fp)) for lo, hi in spans]
    missing = [(lo, hi) for lo, hi, info in infos if info is None]
    if missing:
        raise StageFailed(f"encode {space.name}: {len(missing)} parts (rows {missing[0][0]}..{missing[0][1]} first) "
                          "were not written by the cluster; run the stage again to redo only those")
    width = infos[0][2]["dims"] if infos else stages._load_model(space)[0]
    failed: dict[int, str] = {}
    with disk_errors(str(o.embedding_partial(space.name))):
        emb = np.lib.format.open_memmap(o.embedding_partial(space.name), mode="w+", dtype=np.float32,
                                        shape=(N, width))
        for lo, hi, info in infos:
            block = np.load(_part_paths(folder, lo)[0])
            if block.shape != (hi - lo, width):
                raise StageFailed(f"encode {space.name}: part {lo} holds {block.shape}, expected {(hi - lo, width)}; "
                                  f"delete {folder} and run again")
            emb[lo:hi] = block
            failed.update({int(k): v for k, v in info["failed"].items()})
        emb.flush()
        del emb
    failed = dict(sorted(failed.items()))
    stats = stages._finish_space(o, plan, width, failed)
    shutil.rmtree(folder, ignore_errors=True)
    return stats


def space_neighbours(embeddings: np.ndarray, band: tuple[float, float], k: int, cfg, progress):
    """What :func:`megapairs.mining.space_neighbours` computes, with both self-joins run as
    sharded kNN tasks on the cluster: identical lists."""
    from .. import cluster
    from .._mining_checks import _check_embeddings
    from ..mining import SpaceNeighbours

    E = _check_embeddings(embeddings, "mine", True)
    options = {"shard_rows": cfg.ray.shard_rows, "query_rows": cfg.ray.query_rows,
               "cpus_per_task": cfg.ray.cpus_per_worker, "progress": progress}
    if E.shape[0] == 0:
        return SpaceNeighbours(np.empty((0, k), np.float32), np.empty((0, k), np.int64), np.empty((0, k), np.int64),
                               band)
    ref = cluster.require_ray().put(E)  # once for both joins
    scores, ids = cluster.band(ref, ref, band[0], band[1], k, exclude_self=True, **options)
    retrieved = cluster.search(ref, ref, k, exclude_self=True, **options)[1]
    return SpaceNeighbours(scores, ids, retrieved, band)
