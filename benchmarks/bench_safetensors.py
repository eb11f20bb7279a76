"""Reading a checkpoint: megapairs.weights against the safetensors package.

A ViT-B/16-sized state dict (~86M parameters, 152 tensors per 12 blocks + embeddings) is
written once in F32 and in BF16. Then, in the same process and with the same threads:

  open+index   open the file and list its tensors
  load native  every tensor as a NumPy array in its stored dtype
               (safetensors.numpy.load_file vs megapairs.weights.load_safetensors)
  BF16 -> f32  every tensor widened to float32
               (safetensors safe_open(framework="pt") + .float() vs get(name, "float32"))

Prints medians of a few repeats and the speed-up (peer time / megapairs time).
Run: make bench   or   .venv/bin/python benchmarks/bench_safetensors.py [--repeats N]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import megapairs as mp
from megapairs.weights import SafetensorsFile, load_safetensors

from _timing import median_time


def vit_b16_state(dtype):
    d, mlp, layers = 768, 3072, 12
    shapes = {"embeddings.patch_embedding.weight": (d, 3, 16, 16), "embeddings.position_embedding": (197, d),
              "embeddings.class_embedding": (d,), "post_layernorm.weight": (d,), "post_layernorm.bias": (d,)}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (d, d)
            shapes[p + f"self_attn.{name}.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (mlp, d), (mlp,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (d, mlp), (d,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{ln}.weight"], shapes[p + f"{ln}.bias"] = (d,), (d,)
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in shapes.items()}


def peer_open(path):
    with safetensors.safe_open(str(path), framework="np") as f:
        return list(f.keys())


def ours_open(path):
    with SafetensorsFile(path) as f:
        return f.keys()


def peer_widen(path):
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).float().numpy() for k in f.keys()}


def ours_widen(path):
    return load_safetensors(path, "float32")


def touch(state):
    """Reads one element per page so lazily mapped data is really read."""
    return sum(float(np.asarray(v).reshape(-1)[::1024].sum()) for v in state.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = mp.get_num_threads()
    torch.set_num_threads(threads)
    print(f"threads={threads}  megapairs {mp.__version__}  safetensors {safetensors.__version__}  torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f32, bf16 = Path(tmp, "f32.safetensors"), Path(tmp, "bf16.safetensors")
        safetensors.torch.save_file(vit_b16_state(torch.float32), str(f32))
        safetensors.torch.save_file(vit_b16_state(torch.bfloat16), str(bf16))
        mb = f32.stat().st_size / 1e6
        for fn in (peer_widen, ours_widen):  # warm the page cache and both code paths
            fn(bf16)
        rows.append(("open+index (F32)", median_time(lambda: peer_open(f32), args.repeats),
                     median_time(lambda: ours_open(f32), args.repeats)))
        rows.append((f"load native F32 ({mb:.0f} MB)",
                     median_time(lambda: touch(safetensors.numpy.load_file(str(f32))), args.repeats),
                     median_time(lambda: touch(load_safetensors(f32)), args.repeats)))
        rows.append(("BF16 -> f32, all tensors", median_time(lambda: peer_widen(bf16), args.repeats),
                     median_time(lambda: ours_widen(bf16), args.repeats)))
        # Same values, or the comparison means nothing.
        ours, peer = ours_widen(bf16), peer_widen(bf16)
        assert all(np.array_equal(ours[k], peer[k]) for k in peer)
    print(f"{'operation':<30}{'safetensors':>14}{'megapairs':>14}{'speed-up':>10}")
    for name, peer_s, ours_s in rows:
        print(f"{name:<30}{peer_s * 1e3:>11.2f} ms{ours_s * 1e3:>11.2f} ms{peer_s / ours_s:>9.1f}x")


if __name__ == "__main__":
    main()
