"""InfoNCE forward + backward: megapairs.loss.infonce (fused, 256-row blocks; fp32, and bf16
GEMMs) and InfoNCELoss's tiled PyTorch path (megapairs._loss_torch.tiled_infonce, 256-row
blocks, forced onto CPU float32 tensors: what runs on GPUs and for other dtypes) against
PyTorch eager (logits = q @ c.T / tau, cross_entropy on the full B x N matrix, backward) in
float32.

B queries x (1 positive + 4 hard negatives), group layout, tau = 0.02, same threads. Each
measurement runs in a fresh subprocess; its extra memory is the peak resident size sampled
every 2 ms during the first call, minus the resident size just before it (after
malloc_trim), minus the dq and dc both return.
Speed-up and share are against that full-matrix cross_entropy, at the same threads.
The bf16 columns also give the relative error of its gradients against the fp32 kernel's
(norm-wise ||d - d_fp32|| / ||d_fp32||, and the largest entry error over the largest entry).
Run: make bench   or   .venv/bin/python benchmarks/bench_loss.py [--batches 1024 4096 16384 65536] [--dims 512 768]

--cuda: on the GPU instead, in this process: InfoNCELoss's tiled PyTorch path against
cross_entropy on the full matrix, fp32 and bf16 tensors (bf16: the full matrix's logits in
bf16, as under autocast; the tiled path accumulates in fp32). Time: best of 3 after a warm-up,
CUDA-synchronised. Extra memory: peak allocated during forward + backward minus allocated
before, minus dq and dc (in the inputs' dtype).
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
def tiled():  # the PyTorch path of InfoNCELoss on CPU float32 (normally the C kernel's case)
    from megapairs._loss_torch import tiled_infonce
    a = torch.from_numpy(q).requires_grad_(); b = torch.from_numpy(c).requires_grad_()
    loss = tiled_infonce(a, b, 0.02, target, block_size=256)
    loss.backward()
    return loss.item()
def theirs():
    a = torch.from_numpy(q).requires_grad_(); b = torch.from_numpy(c).requires_grad_()  # no copies
    loss = torch.nn.functional.cross_entropy(a @ b.T / 0.02, target)
    loss.backward()
    return loss.item()
fn = {"torch": theirs, "tiled": tiled}.get(method, ours)
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
grads_mb = (B + B * G) * E * 4 / 2**20  # dq and dc: outputs of every method, not extra
result = {"seconds": min(times), "extra_mb": (peak - base) / 2**20 - grads_mb, "loss": loss}
if method == "bf16" and B <= 16384:  # gradient error against the fp32 kernel
    ref = mp.loss.infonce(q, c, 0.02, group_size=G, return_grad=True, num_threads=threads)
    result["err"] = max(float(np.linalg.norm(out.dq - ref.dq) / np.linalg.norm(ref.dq)),
                        float(np.linalg.norm(out.dc - ref.dc) / np.linalg.norm(ref.dc)))
    result["err_max"] = max(float(np.abs(out.dq - ref.dq).max() / np.abs(ref.dq).max()),
                            float(np.abs(out.dc - ref.dc).max() / np.abs(ref.dc).max()))
print(json.dumps(result))
"""


SKIPPED = {}  # a column left out by --torch-max / --tiled-max (None: the run failed)


def run(method, B, E, threads):
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(B), str(E), str(threads)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(r, key, fmt):
    return "—" if r is SKIPPED else "failed" if r is None else format(r[key], fmt)


def ratios(r, theirs):
    """Against the full-matrix cross_entropy: speed-up (its time / ours), memory share (ours /
    its), relative loss difference."""
    if not r or not theirs:
        return "—", "—", "—"
    return (f"{theirs['seconds'] / r['seconds']:.2f}x", f"{r['extra_mb'] / max(theirs['extra_mb'], 1e-9):.1%}",
            f"{abs(r['loss'] - theirs['loss']) / abs(theirs['loss']):.1e}")


def bench_cuda(batches, dims, torch_max, block_sizes):
    """The --cuda table (see the module docstring)."""
    import time

    import torch

    from megapairs._loss_torch import tiled_infonce

    G, tau = 5, 0.02
    print(f"{torch.cuda.get_device_name()}; B queries x 5 candidates; forward + backward; extra memory in MB")
    print("| B | E | dtype | method | s | speed-up | extra MB | share | loss diff |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|")

    def measure(fn, q, c):
        def step():
            a, b = q.detach().requires_grad_(), c.detach().requires_grad_()
            loss = fn(a, b)
            loss.backward()
            return loss.item()  # synchronises

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = step()
        extra = torch.cuda.max_memory_allocated() - base - (q.numel() + c.numel()) * q.element_size()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return {"seconds": min(times), "extra_mb": extra / 2**20, "loss": loss}

    for B in batches:
        for E in dims:
            q32 = torch.nn.functional.normalize(torch.randn(B, E, device="cuda"), dim=1)
            c32 = torch.nn.functional.normalize(torch.randn(B * G, E, device="cuda"), dim=1)
            target = torch.arange(B, device="cuda") * G
            for dtype in (torch.float32, torch.bfloat16):
                q, c = q32.to(dtype), c32.to(dtype)
                full = None
                if B <= torch_max:
                    full = measure(lambda a, b, t=target: torch.nn.functional.cross_entropy((a @ b.T / tau).float(), t),
                                   q, c)
                rows = [("cross_entropy, full matrix", full)]
                for block in block_sizes:
                    rows.append((f"tiled, block {block}",
                                 measure(lambda a, b, k=block, t=target: tiled_infonce(a, b, tau, t, block_size=k), q, c)))
                for name, r in rows:
                    if r is None:
                        print(f"| {B} | {E} | {str(dtype)[6:]} | {name} | — | — | — | — | — |")
                        continue
                    speed, share, diff = ratios(r, full)
                    print(f"| {B} | {E} | {str(dtype)[6:]} | {name} | {r['seconds']:.4f} | {speed} | "
                          f"{r['extra_mb']:.0f} | {share} | {diff} |", flush=True)
            del q32, c32, q, c
            torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-max", type=int, default=16384, help="largest B for the PyTorch column")
    parser.add_argument("--tiled-max", type=int, default=16384, help="largest B for the tiled torch column")
    parser.add_argument("--cuda", action="store_true", help="the tiled PyTorch path on the GPU (see above)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[256, 1024], help="--cuda: tiled block sizes")
    args = parser.parse_args()
    if args.cuda:
        bench_cuda(args.batches, args.dims, args.torch_max, args.block_sizes)
        return
    print(f"{args.threads} threads; B queries x 5 candidates; forward + backward; extra memory in MB")
    print("| B | E | PyTorch fp32 s | megapairs fp32 s | speed-up | megapairs bf16 s | speed-up | "
          "tiled torch fp32 s | speed-up | PyTorch MB | fp32 MB | share | bf16 MB | share | tiled MB | share | "
          "fp32 loss diff | tiled loss diff | bf16 grad error (norm / max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B in args.batches:
        for E in args.dims:
            theirs = run("torch", B, E, args.threads) if B <= args.torch_max else SKIPPED
            ours = run("megapairs", B, E, args.threads)
            bf16 = run("bf16", B, E, args.threads)
            tiled = run("tiled", B, E, args.threads) if B <= args.tiled_max else SKIPPED
            (o_speed, o_share, o_diff), (b_speed, b_share, _), (t_speed, t_share, t_diff) = (
                ratios(r, theirs) for r in (ours, bf16, tiled))
            err = "—" if not bf16 or "err" not in bf16 else f"{bf16['err']:.1e} / {bf16['err_max']:.1e}"
            print(f"| {B} | {E} | {cell(theirs, 'seconds', '.2f')} | {cell(ours, 'seconds', '.2f')} | {o_speed} | "
                  f"{cell(bf16, 'seconds', '.2f')} | {b_speed} | {cell(tiled, 'seconds', '.2f')} | {t_speed} | "
                  f"{cell(theirs, 'extra_mb', '.0f')} | {cell(ours, 'extra_mb', '.0f')} | {o_share} | "
                  f"{cell(bf16, 'extra_mb', '.0f')} | {b_share} | {cell(tiled, 'extra_mb', '.0f')} | {t_share} | "
                  f"{o_diff} | {t_diff} | {err} |", flush=True)


if __name__ == "__main__":
    main()
