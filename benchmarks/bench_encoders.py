"""Image towers: megapairs.CLIP (ViT-B/16) and megapairs.DINOv2 (ViT-B/14) against PyTorch
(transformers) and ONNX Runtime, 224 px inputs.

Random weights (no pretrained weights download here; the cost is the same). Images per
second at several batch sizes, fp32 and bf16 (PyTorch bf16 through torch.autocast("cpu")),
same thread count, best of a few runs; ratio = megapairs / PyTorch at the same precision;
achieved GFLOP/s, and as a share of the bf16 matmul peak measured in the same run.
Run: make bench   or   .venv/bin/python benchmarks/bench_encoders.py [--batches 1 8 32]
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

import megapairs as mp
from _timing import median_time


def vit_gflop(tokens, width, mlp, layers, patch, grid, projection=0):
    """2 x multiply-adds per image: patch embedding, blocks (qkv, scores, p v, out, MLP), projection."""
    per_block = tokens * (3 * width * width + width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    return 2 * (grid * grid * 3 * patch * patch * width + layers * per_block + width * projection) / 1e9


def bf16_peak(threads, repeats):
    """GFLOP/s of the ViT MLP matmul (6304 x 768 x 3072, 32 images of 197 tokens) in bf16: through
    megapairs' oneDNN (f32 in and out, rounded inside) and torch.mm on bf16 tensors."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6304, 768), dtype=np.float32)
    b = rng.standard_normal((3072, 768), dtype=np.float32)
    flop = 2 * 6304 * 768 * 3072 / 1e9
    ours = flop / median_time(lambda: mp._core.matmul_nt(a, b, precision="bf16", num_threads=threads), repeats)
    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16().T.contiguous()
    theirs = flop / median_time(lambda: torch.mm(ta, tb), repeats)
    return ours, theirs


def onnx_session(model, size, threads, path):
    """The transformers model exported to ONNX (TorchScript exporter) in an fp32 ORT session,
    or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None

    class Embed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(pixel_values=x)
            return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output

    torch.onnx.export(Embed(model), (torch.zeros(1, 3, size, size),), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["clip", "dinov2"])
    parser.add_argument("--scaling-batch", type=int, default=32,
                        help="batch of the thread-scaling rows (bf16; 0 skips them)")
    args = parser.parse_args()
    threads = mp.get_num_threads()
    torch.set_num_threads(threads)
    ours_peak, torch_peak = bf16_peak(threads, args.repeats)
    print(f"threads={threads}, torch {torch.__version__}, oneDNN isa {mp._core.onednn_info()['cpu_isa']}")
    print(f"bf16 matmul peak (6304x768x3072): megapairs/oneDNN {ours_peak:.0f} GFLOP/s, torch.mm {torch_peak:.0f}")
    rng = np.random.default_rng(0)
    tmp_keep = {}
    for name in args.models:
        torch.manual_seed(0)
        tmp = tmp_keep[name] = tempfile.mkdtemp(prefix="megapairs-bench-")  # removed at the end
        if name == "clip":
            config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, image_size=224, patch_size=16, projection_dim=512)
            model = CLIPVisionModelWithProjection(config).eval()
            model.save_pretrained(tmp, safe_serialization=True)
            ours = {p: mp.CLIP.from_pretrained(tmp, precision=p) for p in ("fp32", "bf16")}
            encode = {p: (lambda x, p=p: ours[p].encode_image(x, batch_size=len(x))) for p in ours}
            gflop = vit_gflop(197, 768, 3072, 12, 16, 14, 512)
            title = "CLIP ViT-B/16"
        else:
            config = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518,
                                  patch_size=14)
            model = Dinov2Model(config).eval()
            model.save_pretrained(tmp, safe_serialization=True)
            ours = {p: mp.DINOv2.from_pretrained(tmp, precision=p) for p in ("fp32", "bf16")}
            encode = {p: (lambda x, p=p: ours[p].encode(x, batch_size=len(x))) for p in ours}
            gflop = vit_gflop(257, 768, 3072, 12, 14, 16)
            title = "DINOv2 ViT-B/14 (positions resampled 37x37 -> 16x16)"
        session = onnx_session(model, 224, threads, os.path.join(tmp, "model.onnx"))
        print(f"\n{title}, 224 px, {gflop:.1f} GFLOP per image")
        print(f"{'batch':>6}{'precision':>10}{'torch i/s':>11}{'ORT i/s':>9}{'megapairs i/s':>15}{'vs torch':>10}"
              f"{'vs ORT':>8}{'GFLOP/s':>9}{'% peak':>8}")
        for batch in args.batches:
            pixels = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
            tensor = torch.from_numpy(pixels)
            for precision in ("fp32", "bf16"):
                def run_torch():
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                enabled=precision == "bf16"):
                        model(pixel_values=tensor)

                t_torch = median_time(run_torch, args.repeats)
                t_ours = median_time(lambda: encode[precision](pixels), args.repeats)
                t_ort = (median_time(lambda: session.run(None, {"x": pixels}), args.repeats)
                         if session is not None and precision == "fp32" else None)
                ort_cols = (f"{batch / t_ort:>9.2f}", f"{t_ort / t_ours:>7.2f}x") if t_ort else (f"{'-':>9}", f"{'-':>8}")
                achieved = gflop * batch / t_ours
                share = f"{100 * achieved / ours_peak:>7.0f}%" if precision == "bf16" else f"{'-':>8}"
                print(f"{batch:>6}{precision:>10}{batch / t_torch:>11.2f}{ort_cols[0]}{batch / t_ours:>15.2f}"
                      f"{t_torch / t_ours:>9.2f}x{ort_cols[1]}{achieved:>9.0f}{share}")
        if args.scaling_batch:
            if mp._core.amx_usable():
                kernels_ab(model, ours["bf16"], lambda: (mp.CLIP if name == "clip" else mp.DINOv2).from_pretrained(
                    tmp_keep[name], precision="bf16"), args.scaling_batch, rng)
            thread_scaling(model, encode["bf16"], args.scaling_batch, threads, args.repeats, rng)
        torch.set_num_threads(threads)
    for tmp in tmp_keep.values():
        shutil.rmtree(tmp, ignore_errors=True)


def kernels_ab(model, amx_model, make_model, batch, rng, rounds=5):
    """bf16 at `batch`: the model on our AMX kernel against the same model with the linear
    layers on oneDNN (``set_max_isa("avx512")`` while it plans its layers), and torch
    autocast, taking turns, best of `rounds` (the VM's neighbours move single timings)."""
    pixels = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    tensor = torch.from_numpy(pixels)
    previous = mp._core.set_max_isa("avx512")
    try:
        onednn_model = make_model()
        encode_of = (lambda m: m.encode_image) if hasattr(onednn_model, "encode_image") else (lambda m: m.encode)
        encode_of(onednn_model)(pixels[:2])  # plans (and packs) its layers under the cap
    finally:
        mp._core.set_max_isa(previous)

    def run_torch():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(pixel_values=tensor)

    fns = {"amx": lambda: encode_of(amx_model)(pixels, batch_size=batch),
           "onednn": lambda: encode_of(onednn_model)(pixels, batch_size=batch), "torch": run_torch}
    best = {key: float("inf") for key in fns}
    for _ in range(rounds + 1):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    ips = {key: batch / t for key, t in best.items()}
    print(f"bf16 kernels, batch {batch}, taking turns, best of {rounds}: AMX {ips['amx']:.2f} i/s, oneDNN "
          f"{ips['onednn']:.2f}, torch {ips['torch']:.2f}; AMX / oneDNN {ips['amx'] / ips['onednn']:.2f}x, "
          f"AMX / torch {ips['amx'] / ips['torch']:.2f}x")


def thread_scaling(model, encode, batch, cores, repeats, rng):
    """bf16 images/s at 1, 2, ... all cores: megapairs with the model already used at every
    count before (first at 1 thread, as a notebook that called set_num_threads(1) would),
    against PyTorch autocast at the same count."""
    pixels = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    tensor = torch.from_numpy(pixels)
    counts = sorted({1, 2, cores} & set(range(1, cores + 1)))
    print(f"thread scaling, bf16, batch {batch} (the model first used at 1 thread):")
    print(f"{'threads':>8}{'torch i/s':>11}{'megapairs i/s':>15}{'vs torch':>10}{'megapairs vs 1 thread':>23}")
    base = None
    for t in counts:
        torch.set_num_threads(t)

        def run_torch():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(pixel_values=tensor)

        mp.set_num_threads(t)
        t_ours = median_time(lambda: encode(pixels), repeats)
        t_torch = median_time(run_torch, repeats)
        base = base or t_ours
        print(f"{t:>8}{batch / t_torch:>11.2f}{batch / t_ours:>15.2f}{t_torch / t_ours:>9.2f}x{base / t_ours:>22.2f}x")
    mp.set_num_threads(cores)


if __name__ == "__main__":
    main()
