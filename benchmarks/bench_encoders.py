"""Image towers: megapairs.CLIP against PyTorch (transformers) on ViT-B/16 at 224 px.

Random weights (no pretrained weights download here; the cost is the same). Images per
second at several batch sizes, fp32 and bf16 (PyTorch bf16 through torch.autocast("cpu")),
same thread count, best of a few runs; ratio = megapairs / PyTorch; achieved GFLOP/s.
Run: make bench   or   .venv/bin/python benchmarks/bench_encoders.py [--batches 1 8 32]
"""

import argparse
import tempfile

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

import megapairs as mp
from _timing import median_time

GFLOP_B16 = 35.1  # per 224 px image: 2 * multiply-adds of the patch embedding, 12 blocks and projection


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = mp.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=16, projection_dim=512)
    model = CLIPVisionModelWithProjection(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        ours = {p: mp.CLIP.from_pretrained(tmp, precision=p) for p in ("fp32", "bf16")}
    print(f"CLIP ViT-B/16, 224 px, threads={threads}, torch {torch.__version__}, "
          f"oneDNN isa {mp._core.onednn_info()['cpu_isa']}")
    print(f"{'batch':>6}{'precision':>10}{'torch i/s':>12}{'megapairs i/s':>15}{'ratio':>8}{'mp GFLOP/s':>12}")
    rng = np.random.default_rng(0)
    for batch in args.batches:
        pixels = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        tensor = torch.from_numpy(pixels)
        for precision in ("fp32", "bf16"):
            def run_torch():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    model(pixel_values=tensor)

            t_torch = median_time(run_torch, args.repeats)
            t_ours = median_time(lambda: ours[precision].encode_image(pixels, batch_size=batch), args.repeats)
            print(f"{batch:>6}{precision:>10}{batch / t_torch:>12.2f}{batch / t_ours:>15.2f}"
                  f"{t_torch / t_ours:>7.2f}x{GFLOP_B16 * batch / t_ours:>12.0f}")


if __name__ == "__main__":
    main()
