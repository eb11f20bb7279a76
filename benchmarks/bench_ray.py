"""The Ray executor against one process, on a local Ray cluster of this machine's cores.

1. Encode: the pipeline's encode stage over Debian's tuxpaint stamps (PNG photos and
   drawings) with a ViT-B/16-shaped CLIP image tower, randomly initialised (timing only),
   fp32, forward batch 8: one process (all cores) and Ray with 1, 2 and 4 encoder actors.
2. kNN: the exact top-k self-join (k = 50) of random unit vectors: `megapairs.knn.search` in
   one process and `megapairs.cluster.search` sharded into corpus shards x query blocks with
   1, 2 and 4 tasks at a time; queries per second, and each task's resident memory (its
   worker's peak, read from the kernel) against its inputs' size.

On a 2-core machine the point is the overhead of Ray (scheduling, serialising results, actor
start-up), not a speed-up: with more workers than cores they share the cores.

Run: .venv/bin/python benchmarks/bench_ray.py [--images 192] [--rows 40000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import megapairs as mp

STAMPS = Path("/usr/share/tuxpaint/stamps")


def corpus(folder: Path, n: int) -> Path:
    pngs = sorted(STAMPS.rglob("*.png"))[:n]
    if len(pngs) < n:
        raise SystemExit(f"{STAMPS} has {len(pngs)} PNGs, need {n}: apt install tuxpaint-stamps-default")
    for i, p in enumerate(pngs):
        shutil.copy(p, folder / f"{i:05d}.png")
    return folder


def vit_b16(folder: Path) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(patch_size=16, projection_dim=512)).eval().save_pretrained(
        folder, safe_serialization=True)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


def bench_encode(tmp: Path, images: int, threads: int, workers: list[int]) -> list[tuple]:
    import tomli_w

    (tmp / "corpus").mkdir()
    photos = corpus(tmp / "corpus", images)
    model = vit_b16(tmp / "vit")
    rows = []
    for w in [0, *workers]:
        out = tmp / f"out{w}"
        config = {"corpus": {"path": str(photos), "captions": "none"},
                  "spaces": [{"name": "clip_image", "kind": "clip_image", "model": str(model)}],
                  "encode": {"batch_size": 8, "forward_batch": 8, "num_threads": threads if w == 0 else 0},
                  "ray": {"workers": w or 1, "batch_size": 8, "cpus_per_worker": max(1, threads // max(w, 1))}}
        (tmp / "c.toml").write_text(tomli_w.dumps(config))
        mp.pipeline.ingest(out, tmp / "c.toml", progress=False)
        t0 = time.perf_counter()
        mp.pipeline.encode(out, tmp / "c.toml", progress=False, executor="ray" if w else "local")
        seconds = time.perf_counter() - t0
        rows.append(("one process" if w == 0 else f"ray, {w} actor" + "s" * (w > 1), images / seconds))
    return rows


TASK = """
import sys
import numpy as np
import megapairs as mp
from megapairs.cluster import _rows

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

path, block, shard, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
before = rss()
q = np.ascontiguousarray(_rows(path, 0, block), np.float32)  # what a task holds: its rows, read
c = np.ascontiguousarray(_rows(path, 0, shard), np.float32)
s, i = mp.knn.search(q, c, k, num_threads=1, float64=True)
print(before, rss())
"""


def _task_rss(path, block, shard, k) -> tuple[int, int]:
    """Resident bytes of a fresh process after importing megapairs, and while it holds one kNN
    task's inputs and results."""
    out = subprocess.run([sys.executable, "-c", TASK, str(path), str(block), str(shard), str(k)], check=True,
                         capture_output=True, text=True)
    before, during = out.stdout.split()[-2:]
    return int(before), int(during)


def bench_knn(tmp: Path, rows: int, dims: int, threads: int, workers: list[int]) -> tuple[list[tuple], dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dims), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp / "x.npy"
    np.save(path, x)
    k = 50
    shard, block = rows // 4, rows // 4
    t0 = time.perf_counter()
    want = mp.knn.search(x, x, k, exclude_self=True, num_threads=threads)
    out = [("one process", rows / (time.perf_counter() - t0))]
    for w in workers:
        t0 = time.perf_counter()
        got = mp.cluster.search(str(path), str(path), k, exclude_self=True, shard_rows=shard, query_rows=block,
                                cpus_per_task=max(1, threads // w), max_in_flight=w, progress=False)
        out.append((f"ray, {w} task" + "s" * (w > 1), rows / (time.perf_counter() - t0)))
        assert np.array_equal(got[1], want[1]), "sharded result differs"
    idle, peak = _task_rss(path, block, shard, k + 1)
    inputs = (shard + block) * dims * 4
    return out, {"task_peak_rss_mb": peak / 2**20, "task_inputs_mb": inputs / 2**20, "idle_mb": idle / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    # more workers than cores share them: Ray counts CPUs as a logical resource
    mp.cluster.init(num_cpus=max(args.threads, *args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"Ray local cluster on {args.threads} cores, megapairs {mp.__version__}; one process uses "
              f"{args.threads} threads, w workers {args.threads}/w threads each (at least 1)")
        print(f"\nEncode: {args.images} tuxpaint stamps, CLIP ViT-B/16 (random weights), fp32, forward batch 8")
        encode = bench_encode(tmp, args.images, args.threads, args.workers)
        base = encode[0][1]
        print(f"{'executor':>16} {'images/s':>9} {'vs one process':>15}")
        for name, rate in encode:
            print(f"{name:>16} {rate:9.2f} {rate / base:14.2f}x")
        print(f"\nkNN: exact top-50 self-join, {args.rows} x {args.dims} (4 corpus shards x 4 query blocks)")
        knn_rows, memory = bench_knn(tmp, args.rows, args.dims, args.threads, args.workers)
        base = knn_rows[0][1]
        print(f"{'executor':>16} {'queries/s':>10} {'vs one process':>15}")
        for name, rate in knn_rows:
            print(f"{name:>16} {rate:10.0f} {rate / base:14.2f}x")
        print(f"per task: inputs {memory['task_inputs_mb']:.0f} MB; a process running one holds "
              f"{memory['task_peak_rss_mb']:.0f} MB resident, {memory['idle_mb']:.0f} MB of it megapairs' import")


if __name__ == "__main__":
    main()
