"""The oneDNN door: megapairs' a @ b.T (fp32, bf16) against PyTorch and NumPy on encoder shapes.

Same process, same thread count. bf16 in megapairs rounds both inputs to bf16 and
accumulates in f32 (AMX where the CPU has it); PyTorch's bf16 row is a bf16 x bf16 matmul
of pre-converted tensors (its own conversion cost excluded, ours included).
Run: make bench   or   .venv/bin/python benchmarks/bench_matmul.py
"""

import numpy as np
import torch

import megapairs as mp
from megapairs import _core

from _timing import median_time

SHAPES = [(3152, 768, 768), (3152, 768, 3072), (4096, 768, 4096)]  # (M, K, N): ViT-B/16 batch 16; kNN block


def main():
    threads = mp.get_num_threads()
    torch.set_num_threads(threads)
    print(f"threads={threads}  oneDNN {mp._config.config()['onednn']} isa={_core.onednn_info()['cpu_isa']}  "
          f"torch {torch.__version__}  numpy {np.__version__}")
    print(f"{'M x K x N':<18}{'numpy f32':>12}{'torch f32':>12}{'mp fp32':>12}{'torch bf16':>12}{'mp bf16':>12}"
          f"{'fp32 vs torch':>15}{'bf16 vs torch':>15}")
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ta16, tb16 = ta.bfloat16(), tb.bfloat16()
        flop = 2.0 * m * k * n
        t = {
            "numpy": median_time(lambda: np.matmul(a, b.T, out=out)),
            "torch": median_time(lambda: torch.mm(ta, tb.T)),
            "mp": median_time(lambda: _core.matmul_nt(a, b, out=out)),
            "torch16": median_time(lambda: torch.mm(ta16, tb16.T)),
            "mp16": median_time(lambda: _core.matmul_nt(a, b, out=out, precision="bf16")),
        }
        gf = {key: flop / v / 1e9 for key, v in t.items()}
        print(f"{f'{m}x{k}x{n}':<18}" + "".join(f"{gf[key]:>8.0f} GF/s" for key in t)
              + f"{t['torch'] / t['mp']:>14.2f}x{t['torch16'] / t['mp16']:>14.2f}x")


if __name__ == "__main__":
    main()
