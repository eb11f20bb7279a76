"""InfoNCE forward + backward: megapairs.loss.infonce (fused, 256-row blocks; fp32, and bf16
GEMMs) against PyTorch eager (logits = q @ c.T / tau, cross_entropy, backward) in float32.

B queries x (1 positive + 4 hard negatives), group layout, tau = 0.02, same threads. Each
measurement runs in a fresh subprocess; its extra memory is the peak resident size sampled
every 2 ms during the first call, minus the resident size just before it (after
malloc_trim), minus the dq and dc both return.
The bf16 columns also give the relative error of its gradients against the fp32 kernel's
(norm-wise ||d - d_fp32|| / ||d_fp32||, and the largest entry error over the largest entry).
Run: make bench   or   .venv/bin/python benchmarks/bench_loss.py [--batches 1024 4096 16384 65536] [--dims 512 768]
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import ctypes, json, os, sys, threading, time
import numpy as np
method, B, E, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
G = 5
rng = np.random.default_rng(0)
def unit_rows(n):  # normalised in slices: no input-sized temporaries
    x = rng.standard_normal((n, E), dtype=np.float32)
    for i in range(0, n, 16384):
        x[i:i + 16384] /= np.linalg.norm(x[i:i + 16384], axis=1, keepdims=True)
    return x
q, c = unit_rows(B), unit_rows(B * G)
import torch
torch.set_num_threads(threads)
import megapairs as mp
precision = "bf16" if method == "bf16" else "fp32"
def ours():
    global out
    out = mp.loss.infonce(q, c, 0.02, group_size=G, return_grad=True, precision=precision, num_threads=threads)
    return out.loss
target = torch.arange(B) * G
def theirs():
    a = torch.from_numpy(q).requires_grad_(); b = torch.from_numpy(c).requires_grad_()  # no copies
    loss = torch.nn.functional.cross_entropy(a @ b.T / 0.02, target)
    loss.backward()
    return loss.item()
fn = theirs if method == "torch" else ours
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
ctypes.CDLL("libc.so.6").malloc_trim(0)
base, peak, running = rss(), [0], [True]
def sample():  # the resident size, every 2 ms, while the first call runs
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
sampler = threading.Thread(target=sample); sampler.start()
t0 = time.perf_counter(); loss = fn(); first = time.perf_counter() - t0
running[0] = False; sampler.join()
peak = max(peak[0], rss())
times = [first]
if first < 20:
    for _ in range(2):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
grads_mb = (B + B * G) * E * 4 / 2**20  # dq and dc: outputs of both methods, not extra
result = {"seconds": min(times), "extra_mb": (peak - base) / 2**20 - grads_mb, "loss": loss}
if method == "bf16" and B <= 16384:  # gradient error against the fp32 kernel
    ref = mp.loss.infonce(q, c, 0.02, group_size=G, return_grad=True, num_threads=threads)
    result["err"] = max(float(np.linalg.norm(out.dq - ref.dq) / np.linalg.norm(ref.dq)),
                        float(np.linalg.norm(out.dc - ref.dc) / np.linalg.norm(ref.dc)))
    result["err_max"] = max(float(np.abs(out.dq - ref.dq).max() / np.abs(ref.dq).max()),
                            float(np.abs(out.dc - ref.dc).max() / np.abs(ref.dc).max()))
print(json.dumps(result))
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
    print(f"{args.threads} threads; B queries x 5 candidates; forward + backward; extra memory in MB")
    print("| B | E | PyTorch fp32 s | megapairs fp32 s | speed-up | megapairs bf16 s | speed-up | "
          "PyTorch MB | fp32 MB | share | bf16 MB | share | fp32 loss diff | bf16 grad error (norm / max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cell = lambda r, key, fmt: "failed" if r is None else format(r[key], fmt)
    for B in args.batches:
        for E in args.dims:
            theirs = run("torch", B, E, args.threads) if B <= args.torch_max else None
            ours = run("megapairs", B, E, args.threads)
            bf16 = run("bf16", B, E, args.threads)
            t = theirs["seconds"] if theirs else None
            speed = lambda r: "—" if t is None or r is None else f"{t / r['seconds']:.2f}x"
            share = lambda r: "—" if theirs is None or r is None else f"{r['extra_mb'] / max(theirs['extra_mb'], 1e-9):.1%}"
            diff = "—" if theirs is None or ours is None else \
                f"{abs(ours['loss'] - theirs['loss']) / abs(theirs['loss']):.1e}"
            err = "—" if bf16 is None or "err" not in bf16 else f"{bf16['err']:.1e} / {bf16['err_max']:.1e}"
            print(f"| {B} | {E} | {cell(theirs, 'seconds', '.2f') if theirs else '—'} | {cell(ours, 'seconds', '.2f')} | "
                  f"{speed(ours)} | {cell(bf16, 'seconds', '.2f')} | {speed(bf16)} | "
                  f"{cell(theirs, 'extra_mb', '.0f') if theirs else '—'} | {cell(ours, 'extra_mb', '.0f')} | {share(ours)} | "
                  f"{cell(bf16, 'extra_mb', '.0f')} | {share(bf16)} | {diff} | {err} |", flush=True)


if __name__ == "__main__":
    main()
