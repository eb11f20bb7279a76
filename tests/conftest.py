import gzip
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest


def safetensors_bytes(header, data=b"", *, header_len=None, pad_to=8):
    """Raw safetensors bytes from a header (dict, str or bytes) and a data section.

    Built by hand so that tests can write every malformed variant; `header_len`
    overrides the length field.
    """
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad_to and header_len is None:
        header += b" " * (-len(header) % pad_to)
    length = len(header) if header_len is None else header_len
    return struct.pack("<Q", length) + header + data


@pytest.fixture
def write_safetensors(tmp_path):
    counter = iter(range(10**6))

    def write(header, data=b"", **kwargs):
        path = tmp_path / f"file{next(counter)}.safetensors"
        path.write_bytes(safetensors_bytes(header, data, **kwargs))
        return path

    return write


# --------------------------------------------------------------------------- text references


def load_open_clip_tokenizer():
    """open_clip's tokenizer.py alone: `import open_clip` needs a working torchvision."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.fail("open_clip_torch is not installed: the reference tokenizer comes from it "
                    "(make test installs it; by hand: pip install --no-deps open_clip_torch)")
    folder = Path(spec.submodule_search_locations[0])
    module_spec = importlib.util.spec_from_file_location("_megapairs_test_open_clip_tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, folder / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory):
    """vocab.json + merges.txt written from open_clip's bpe file, as Hugging Face lays them out."""
    _, bpe_path = load_open_clip_tokenizer()
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    oc, _ = load_open_clip_tokenizer()
    encoder = dict(oc.SimpleTokenizer(str(bpe_path)).encoder)
    encoder["<|startoftext|>"] = encoder.pop("<start_of_text>")
    encoder["<|endoftext|>"] = encoder.pop("<end_of_text>")
    folder = tmp_path_factory.mktemp("hf_clip")
    (folder / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- pipeline corpus and models
# Shared by test_pipeline.py and test_ray.py.

STAMPS = Path("/usr/share/tuxpaint/stamps")
CATEGORIES = ("animals/birds", "animals/mammals", "food/fruit", "plants/flowers")
PER_CATEGORY = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """48 stamps in 4 category folders, each with its .txt caption, one truncated PNG whose
    header still reads (fails at decode) and one text file named .png (fails at ingest)."""
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: install the Debian package tuxpaint-stamps-default (make system-deps)")
    root = tmp_path_factory.mktemp("corpus")
    for cat in CATEGORIES:
        pngs = sorted((STAMPS / cat).glob("*.png"))[:PER_CATEGORY]
        assert len(pngs) == PER_CATEGORY, cat
        dest = root / cat
        dest.mkdir(parents=True)
        for p in pngs:
            shutil.copy(p, dest / p.name)
            if p.with_suffix(".txt").is_file():
                shutil.copy(p.with_suffix(".txt"), dest / p.with_suffix(".txt").name)
    first = sorted((root / "food/fruit").glob("*.png"))[0]
    (root / "damaged").mkdir()
    (root / "damaged" / "truncated.png").write_bytes(first.read_bytes()[:300])
    (root / "damaged" / "truncated.txt").write_text("A cut-off picture of food.\n")
    (root / "damaged" / "notes.png").write_text("this is not an image\n")
    (root / "damaged" / "notes.txt").write_text("A note about food.\n")
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16)).eval().save_pretrained(root / "clip", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                             image_size=28, patch_size=7)).eval().save_pretrained(root / "dino",
                                                                                  safe_serialization=True)
    return {"clip": root / "clip", "dino": root / "dino"}
