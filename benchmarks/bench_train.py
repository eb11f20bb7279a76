"""Training steps: one optimiser step of each trainer, seconds per step and steps per second.

Cases (each in a fresh process, so that its peak resident memory is its own):

* ``clip-gradcache``: MMRet-CLIP full fine-tune (megapairs.training.clip.MMRetCLIP), a
  ViT-B/16 CLIP at random initialisation (image 224, text 77 tokens), batch 8 queries x 5
  candidates (the target and 4 hard negatives), ``grad_cache_step(sub_batch=8)`` with
  ``InfoNCELoss(0.02)``, then ``AdamW.step()`` and ``zero_grad()``.
* ``clip-plain`` (the peer): the same step with one ordinary full-batch forward and backward
  (no GradCache), same loss, same optimiser, same threads.

Inputs are fixed random tensors (preprocessed pixels, token ids of 20 tokens padded to 77),
so the figures are the model's, not the data loader's. The optimiser's state is allocated
before timing (one step on zero gradients). Time = median of ``--steps`` timed steps (default
1: a ViT-B/16 step takes one to two and a half minutes on the 2-core VM, a default run 2 to 5
minutes); memory = the child's peak resident size (``ru_maxrss``); other load = the CPUs
other processes of the machine kept busy meanwhile (``/proc/stat``), to tell a quiet run from
a shared one.
Run: make bench   or   .venv/bin/python benchmarks/bench_train.py [--steps 3] [--threads 2] [--cases clip-plain]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One row: ``run(threads, steps)`` runs in a child process and returns its figures
    (``seconds``: per timed step; ``loss``: the first step's loss; anything else it likes)."""

    name: str
    what: str
    run: Callable[[int, int], dict]


def _timed_steps(step: Callable[[], float], steps: int) -> dict:
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "times": times, "loss": losses[0]}


def _clip_step(threads: int, steps: int, gradcache: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    import megapairs as mp
    from megapairs.training import grad_cache_step
    from megapairs.training.clip import MMRetCLIP, vit_b16_config

    mp.set_num_threads(threads)
    B, G, T, S = 8, 5, 77, 224
    model = MMRetCLIP.from_config(vit_b16_config(), seed=0).train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.zeros(B, T, dtype=torch.int64)
    ids[:, 0], ids[:, 1:21], ids[:, 21] = 49406, torch.randint(0, 49406, (B, 20), generator=gen), 49407
    query = {"pixel_values": torch.randn(B, 3, S, S, generator=gen), "input_ids": ids,
             "attention_mask": (torch.arange(T)[None, :] <= 21).to(torch.int64).expand(B, T).contiguous()}
    candidates = {"pixel_values": torch.randn(B * G, 3, S, S, generator=gen)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    for p in params:  # the optimiser's state (2 x 600 MB) allocated before the timed steps
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad()
    loss_fn = mp.loss.InfoNCELoss(temperature=0.02)

    def step() -> float:
        if gradcache:
            loss = grad_cache_step(model.encode_query, model.encode_candidates, query, candidates, loss_fn,
                                   sub_batch=8, group_size=G)
        else:
            out = loss_fn(model.encode_query(**query), model.encode_candidates(**candidates), group_size=G)
            out.backward()
            loss = float(out.detach())
        optimizer.step()
        optimizer.zero_grad()
        return loss

    return _timed_steps(step, steps)


def _adapter_step(threads: int, steps: int, fused: bool) -> dict:
    """The adapter of ``megapairs train`` on the demo's shapes: 800 cached 384-d image
    embeddings, 2,000 instructions, batch 64 x (1 + 4); the loss from the C kernel
    (``InfoNCELoss``) or from ``F.cross_entropy`` on the full score matrix."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    import megapairs as mp
    from megapairs.training.adapter import MMRetAdapter

    mp.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    B, G = 64, 5
    model = MMRetAdapter(384, 384).attach(unit(800, 384), [str(i) for i in range(800)], unit(2000, 384),
                                          [str(i) for i in range(2000)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = mp.loss.InfoNCELoss(temperature=0.02)
    gen = torch.Generator().manual_seed(1)
    target = torch.arange(B) * G

    def step() -> float:
        q_img, q_txt = torch.randint(0, 800, (B,), generator=gen), torch.randint(0, 2000, (B,), generator=gen)
        cand = torch.randint(0, 800, (B * G,), generator=gen)
        q, c = model.encode_query(q_img, q_txt), model.encode_candidates(cand)
        loss = loss_fn(q, c, group_size=G) if fused else F.cross_entropy(q @ c.T / 0.02, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    for _ in range(20):  # warm-up
        step()
    return _timed_steps(step, max(steps, 200))


CASES = [
    Case("adapter", "megapairs train's adapter (demo shapes: 64 x 5, 384-d), fused C loss",
         lambda threads, steps: _adapter_step(threads, steps, fused=True)),
    Case("adapter-torch", "the same step, loss = F.cross_entropy on the full matrix (peer)",
         lambda threads, steps: _adapter_step(threads, steps, fused=False)),
    Case("clip-gradcache", "MMRet-CLIP ViT-B/16 full fine-tune, GradCache sub-batch 8",
         lambda threads, steps: _clip_step(threads, steps, gradcache=True)),
    Case("clip-plain", "the same step, plain full-batch backward (peer)",
         lambda threads, steps: _clip_step(threads, steps, gradcache=False)),
]


def _child(name: str, threads: int, steps: int) -> None:
    case = next(c for c in CASES if c.name == name)
    result = case.run(threads, steps)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have run so far (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_case(name: str, threads: int, steps: int) -> dict | None:
    """Runs one case in a child process; adds ``others``: the CPUs other processes kept busy
    meanwhile, on average (the VM is shared: a figure above ~0.2 means the times are inflated)."""
    busy, child, t0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(threads), "--steps", str(steps)],
                         check=False, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        print(f"{name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ours = (after.ru_utime - child.ru_utime) + (after.ru_stime - child.ru_stime)
    end = _busy_seconds()
    result["others"] = None if busy is None or end is None else max(0.0, (end - busy - ours) / wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=1, help="timed steps per case")
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.threads, args.steps)
        return
    print(f"{args.threads} threads; median of {args.steps} timed step(s); peak RSS of each case's process")
    print("| case | what | s/step | steps/s | peak RSS MB | first-step loss | other load (CPUs) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        if case.name not in args.cases:
            continue
        r = run_case(case.name, args.threads, args.steps)
        if r is None:
            print(f"| {case.name} | {case.what} | failed | | | | |", flush=True)
            continue
        others = "—" if r["others"] is None else f"{r['others']:.2f}"
        print(f"| {case.name} | {case.what} | {r['seconds']:.3g} | {1 / r['seconds']:.3g} | {r['peak_mb']:,.0f} | "
              f"{r['loss']:.4f} | {others} |", flush=True)


if __name__ == "__main__":
    main()
