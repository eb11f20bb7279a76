"""bf16 matmul: megapairs' AMX kernel, oneDNN and PyTorch on the encoder, kNN and loss shapes.

Same process, same thread count, one table per thread count (1 and all). Columns, in TFLOP/s
and as a share of the tile-loop peak (``_core.amx_peak_flops``: four 16 x 16 x 32 tile
products a step, no memory traffic, the most this CPU's AMX units do):

- ``mp AMX``: ``_core.Linear`` on our AMX kernel (weights packed once, bf16 in, bf16 out
  with a bias, as the encoders' layers run);
- ``mp oneDNN``: the same layer with our kernel capped off (``set_max_isa('avx512')``),
  i.e. oneDNN's packed matmul, the fallback;
- ``matmul_nt``: the generic door (f32 in, rounded inside, B packed per call);
- ``torch bf16``: ``torch.addmm`` of bf16 tensors with the bias (bf16 out), the peer.
The VM's neighbours move timings by up to 2x, so the four are run in turn, seven rounds, and
the best of each is kept (the peak column is measured the same way).
Also the fp32 rows (NumPy, torch, megapairs) at all threads, for scale.
Run: make bench   or   .venv/bin/python benchmarks/bench_matmul.py
"""

import time

import numpy as np
import torch
from _timing import median_time

import megapairs as mp
from megapairs import _core

# (M, K, N): ViT-B/16 batch 32 (6304 tokens) MLP up and down and the attention projection;
# a kNN block (4096 queries x 4096 corpus rows of 768); a loss block (4096 x 4096 x 512)
SHAPES = [(6304, 768, 3072), (6304, 3072, 768), (6304, 768, 768), (4096, 768, 4096), (4096, 512, 4096)]


def bf16_bits(x):
    return torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)


def best_interleaved(fns: dict, rounds=7) -> dict:
    """The best of `rounds` calls of each function, the functions taking turns."""
    for fn in fns.values():
        fn()
    best = {key: float("inf") for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def table(threads):
    torch.set_num_threads(threads)
    peak = max(_core.amx_peak_flops(1_000_000, threads) for _ in range(5))
    print(f"\nthreads={threads}  tile-loop peak {peak / 1e12:.2f} TFLOP/s")
    print(f"{'M x K x N':<18}{'mp AMX':>16}{'mp oneDNN':>16}{'matmul_nt':>16}{'torch bf16':>16}"
          f"{'AMX/torch':>11}{'AMX/oneDNN':>12}")
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        a16 = bf16_bits(a)
        ta16, tw16, tb16 = (torch.from_numpy(x).bfloat16() for x in (a, w, bias))
        out = np.empty((m, n), np.float32)
        layers = {}
        for isa in ("amx", "avx512"):
            previous = _core.set_max_isa(isa)
            layers[isa] = _core.Linear(w, bias)
            layers[isa](a16[:64], out_dtype="bfloat16", num_threads=threads)  # packs the weights
            _core.set_max_isa(previous)
        t = best_interleaved({
            "amx": lambda: layers["amx"](a16, out_dtype="bfloat16", num_threads=threads),
            "onednn": lambda: layers["avx512"](a16, out_dtype="bfloat16", num_threads=threads),
            "nt": lambda: _core.matmul_nt(a, w, out=out, precision="bf16", num_threads=threads),
            "torch": lambda: torch.addmm(tb16, ta16, tw16.T),
        })
        flop = 2.0 * m * k * n
        cells = "".join(f"{flop / t[key] / 1e12:>7.2f} ({flop / t[key] / peak:>4.0%})" if peak else
                        f"{flop / t[key] / 1e12:>16.2f}" for key in ("amx", "onednn", "nt", "torch"))
        print(f"{f'{m}x{k}x{n}':<18}{cells}{t['torch'] / t['amx']:>10.2f}x{t['onednn'] / t['amx']:>11.2f}x")


def main():
    threads = mp.get_num_threads()
    print(f"oneDNN {mp._config.config()['onednn']} isa={_core.onednn_info()['cpu_isa']}  AMX kernels: "
          f"{'on' if _core.amx_usable() else 'off (no AMX or capped)'}  torch {torch.__version__}")
    for t in sorted({1, threads}):
        table(t)
    torch.set_num_threads(threads)
    print(f"\nfp32 at {threads} threads, GFLOP/s")
    rng = np.random.default_rng(1)
    for m, k, n in SHAPES[:3]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flop = 2.0 * m * k * n
        t = {"numpy": median_time(lambda: np.matmul(a, b.T, out=out)),
             "torch": median_time(lambda: torch.mm(ta, tb.T)),
             "mp": median_time(lambda: _core.matmul_nt(a, b, out=out))}
        print(f"{f'{m}x{k}x{n}':<18}" + "".join(f"{key} {flop / v / 1e9:>5.0f}   " for key, v in t.items()))


if __name__ == "__main__":
    main()
