"""Decode + preprocess: megapairs.images.preprocess against Pillow + transformers' CLIP
processor (PIL backend, i.e. use_fast=False), Pillow with draft(), and torchvision
transforms when installed.

Two sets of in-memory JPEG bytes (no file I/O timed):
  (a) ~0.2 MP: the Debian photos downscaled to ~550 x 365 and re-encoded (quality 90)
  (b) >= 2 MP: the Debian photos of 2 MP and more, as shipped, also split into
      (b1) baseline and (b2) progressive JPEGs
Images per second on 1 and 2 threads (the peers use a 2-thread pool for 2), median of a
few repeats, and megapairs' speed-up over Pillow + processor at the same thread count.
Run: make bench   or   .venv/bin/python benchmarks/bench_images.py [--repeats N]
"""

import argparse
import glob
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import transformers
from PIL import Image

import megapairs as mp
from _timing import median_time

PHOTOS = sorted(glob.glob("/usr/share/backgrounds/mate/*/*.jpg") + glob.glob("/usr/share/palapeli/collection/*.jpg"))


def load_sets():
    small, baseline, progressive = [], [], []
    for path in PHOTOS:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height >= 2_000_000:
                (progressive if im.info.get("progressive") else baseline).append(data)
            scale = (200_000 / (im.width * im.height)) ** 0.5
            buffer = io.BytesIO()
            im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC).save(
                buffer, "JPEG", quality=90)
            small.append(buffer.getvalue())
    return small, baseline, progressive


def processor():
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    return cls() if cls else transformers.CLIPImageProcessor(use_fast=False)


def pillow_processor(batch, proc, draft=False):
    images = []
    for data in batch:
        im = Image.open(io.BytesIO(data))
        if draft:
            im.draft("RGB", (224, 224))  # DCT-scaled decode, as far as it still covers 224
        images.append(im.convert("RGB"))
    return proc(images, return_tensors="np")["pixel_values"]


def torchvision_transform():
    try:
        from torchvision import transforms
    except ImportError:
        return None
    t = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                            transforms.CenterCrop(224), transforms.ToTensor(),
                            transforms.Normalize(mp.images.OPENAI_CLIP_MEAN, mp.images.OPENAI_CLIP_STD)])
    return lambda batch: np.stack([t(Image.open(io.BytesIO(d)).convert("RGB")).numpy() for d in batch])


def in_pool(fn, batch, threads):
    if threads == 1:
        return fn(batch)
    halves = [batch[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, halves))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    small, baseline, progressive = load_sets()
    proc = processor()
    tv = torchvision_transform()
    print(f"megapairs {mp.__version__}  transformers {transformers.__version__}  Pillow {Image.__version__}  "
          f"torchvision {'yes' if tv else 'not installed'}")
    sets = [("(a) ~0.2 MP", small), ("(b) >= 2 MP", baseline + progressive),
            ("(b1) >= 2 MP, baseline", baseline), ("(b2) >= 2 MP, progressive", progressive)]
    for name, batch in sets:
        name += f" ({np.mean([_mp(d) for d in batch]):.1f} MP mean)"
        print(f"\n{name}: {len(batch)} JPEGs")
        print(f"{'method':<34}{'1 thread':>14}{'2 threads':>14}{'vs Pillow+proc':>18}")
        rates = {}
        methods = {
            "Pillow + CLIP processor": lambda b: pillow_processor(b, proc),
            "Pillow draft() + CLIP processor": lambda b: pillow_processor(b, proc, draft=True),
        }
        if tv:
            methods["torchvision transforms"] = tv
        for label, fn in methods.items():
            rates[label] = [len(batch) / median_time(lambda t=t, fn=fn: in_pool(fn, batch, t), args.repeats)
                            for t in (1, 2)]
        for label, exact in [("megapairs exact", True), ("megapairs fast", False)]:
            rates[label] = [len(batch) / median_time(
                lambda t=t, exact=exact: mp.images.preprocess(batch, "clip", exact=exact, num_threads=t), args.repeats)
                for t in (1, 2)]
        base = rates["Pillow + CLIP processor"]
        for label, (r1, r2) in rates.items():
            print(f"{label:<34}{r1:>10.1f} i/s{r2:>10.1f} i/s{r1 / base[0]:>9.2f}x /{r2 / base[1]:>5.2f}x")


def _mp(data):
    with Image.open(io.BytesIO(data)) as im:
        return im.width * im.height / 1e6


if __name__ == "__main__":
    main()
