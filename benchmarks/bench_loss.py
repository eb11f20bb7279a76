"""InfoNCE forward + backward: megapairs.loss.infonce (fused, 256-row blocks, fp32) against
PyTorch eager (logits = q @ c.T / tau, cross_entropy, backward) in float32.

B queries x (1 positive + 4 hard negatives), group layout, tau = 0.02, same threads. Each
measurement runs in a fresh subprocess so the peak-memory figure (ru_maxrss after the run minus
ru_maxrss once the inputs exist, minus the dq and dc both return) is that method's own extra
memory.
Run: make bench   or   .venv/bin/python benchmarks/bench_loss.py [--batches 1024 4096 16384] [--dims 512 768]
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
method, B, E, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
G = 5
rng = np.random.default_rng(0)
q = rng.standard_normal((B, E), dtype=np.float32); q /= np.linalg.norm(q, axis=1, keepdims=True)
c = rng.standard_normal((B * G, E), dtype=np.float32); c /= np.linalg.norm(c, axis=1, keepdims=True)
import torch
torch.set_num_threads(threads)
import megapairs as mp
def ours():
    return mp.loss.infonce(q, c, 0.02, group_size=G, return_grad=True, num_threads=threads).loss
tq, tc = torch.from_numpy(q), torch.from_numpy(c)
target = torch.arange(B) * G
def theirs():
    a = tq.clone().requires_grad_(); b = tc.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(a @ b.T / 0.02, target)
    loss.backward()
    return loss.item()
fn = ours if method == "megapairs" else theirs
small = (np.random.default_rng(1).standard_normal((8, E), dtype=np.float32),)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); loss = fn(); first = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = [first]
if first < 20:
    for _ in range(2):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
grads_mb = (B + B * G) * E * 4 / 2**20  # dq and dc: outputs of both methods, not extra
print(json.dumps({"seconds": min(times), "extra_mb": (peak - base) / 1024 - grads_mb, "loss": loss}))
"""


def run(method, B, E, threads):
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(B), str(E), str(threads)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-max", type=int, default=16384, help="largest B for the PyTorch column")
    args = parser.parse_args()
    print(f"{args.threads} threads; B queries x 5 candidates; forward + backward; fp32")
    print("| B | E | megapairs s | PyTorch s | speed-up | megapairs extra MB | PyTorch extra MB | memory share | "
          "loss rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B in args.batches:
        for E in args.dims:
            ours = run("megapairs", B, E, args.threads)
            theirs = run("torch", B, E, args.threads) if B <= args.torch_max else None
            if ours is None:
                print(f"| {B} | {E} | failed | | | | | | |")
                continue
            if theirs is None:
                print(f"| {B} | {E} | {ours['seconds']:.2f} | — | — | {ours['extra_mb']:.0f} | — | — | — |", flush=True)
                continue
            diff = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
            print(f"| {B} | {E} | {ours['seconds']:.2f} | {theirs['seconds']:.2f} | "
                  f"{theirs['seconds'] / ours['seconds']:.2f}x | {ours['extra_mb']:.0f} | {theirs['extra_mb']:.0f} | "
                  f"{ours['extra_mb'] / max(theirs['extra_mb'], 1e-9):.1%} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
