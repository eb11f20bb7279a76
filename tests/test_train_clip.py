"""MMRet-CLIP full fine-tuning (megapairs.training.clip) on a seeded tiny transformers
CLIPModel and real photos (Debian's palapeli-data, mate-backgrounds and tuxpaint stamps).

References, all written by others: transformers' CLIPImageProcessor (PIL backend) for the
collated pixels, transformers' CLIPTokenizer for the ids and attention mask, transformers'
CLIPModel for the features, PyTorch autograd (a plain full-batch backward) for GradCache's
gradient, and torch's own model against the C encoders of megapairs.CLIP after saving."""

import glob
import math
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPConfig, CLIPModel

import megapairs as mp
from megapairs.dataset import InstructionSampler, ShardReader, write_shards
from megapairs.loss import InfoNCELoss
from megapairs.training import grad_cache_step
from megapairs.training.clip import TOKENIZER_FILES, CLIPCollate, MMRetCLIP, vit_b16_config
from reference import features

SIZE = 64  # image side of the tiny model (4 x 4 patches of 16)
G = 5  # candidates per example: the target and 4 negatives, the query image first
PHOTOS = {  # key -> file: JPEG photos and RGBA PNG stamps
    **{f"palapeli/{p.rsplit('/', 1)[1]}": p for p in sorted(glob.glob("/usr/share/palapeli/collection/*.jpg"))},
    **{f"mate/{n}.jpg": f"/usr/share/backgrounds/mate/nature/{n}.jpg"
       for n in ("Aqua", "FreshFlower", "GreenMeadow", "Garden", "YellowFlower")},
    **{f"stamps/{p.rsplit('/', 1)[1]}": p for p in sorted(glob.glob("/usr/share/tuxpaint/stamps/animals/birds/*.png"))[:4]},
}
KEYS = sorted(PHOTOS)
INSTRUCTIONS = [
    "the same scene at night", "Show it from further away, in winter!", "a close-up of the same kind of thing",
    "Make it brighter; add a red car.", "same place, but with people walking by", "a drawing of it",
    "Keep the colours & lose the background", "what it looks like in the rain, from above",
]
LONG = " ".join(["a long instruction that goes on and on"] * 12)  # more than 75 tokens: truncated


def test_real_photos_are_installed():
    # `make test` installs palapeli-data, mate-backgrounds and tuxpaint-stamps-default
    assert len(KEYS) == 14 and all(os.path.isfile(p) for p in PHOTOS.values()), PHOTOS


def tiny_config() -> CLIPConfig:
    return CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": SIZE, "patch_size": 16},
        text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "vocab_size": 49408, "eos_token_id": 49407},
        projection_dim=24)


def image_processor():
    kwargs = {"size": {"shortest_edge": SIZE}, "crop_size": {"height": SIZE, "width": SIZE}}
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    return cls(**kwargs) if cls else transformers.CLIPImageProcessor(use_fast=False, **kwargs)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, hf_clip_dir):
    """A seeded tiny CLIPModel saved as transformers saves it, with the OpenAI vocabulary
    (vocab.json + merges.txt) and a 64 px preprocessor_config.json."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    CLIPModel(tiny_config()).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_clip_dir / name, folder / name)
    image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for key, path in PHOTOS.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / key)
    return root


def make_records():
    """One record per photo: the next photo as target, the query image and four others as
    hard negatives, two instructions."""
    n = len(KEYS)
    return [{"q_img": key, "q_text": [INSTRUCTIONS[i % 8], INSTRUCTIONS[(i + 3) % 8]], "t_img": KEYS[(i + 1) % n],
             "hns": [key] + [KEYS[(i + k) % n] for k in range(2, 7)]} for i, key in enumerate(KEYS)]


@pytest.fixture(scope="module")
def examples():
    return InstructionSampler(make_records(), num_negatives=G - 1, seed=0, shuffle=False)


def processed(keys):
    """transformers' CLIPImageProcessor on PIL images of the files."""
    return image_processor()([Image.open(PHOTOS[k]) for k in keys], return_tensors="np")["pixel_values"]


def levels(ours, reference):
    """Largest difference in uint8 levels, undoing the normalisation."""
    std = np.asarray(mp.images.OPENAI_CLIP_STD, np.float64)[None, :, None, None]
    return float(np.max(np.abs(ours - reference) * 255 * std))


# --------------------------------------------------------------------------- collation


def test_collate_pixels_equal_clip_image_processor(clip_dir, photo_root, examples):
    model = MMRetCLIP.from_pretrained(clip_dir)
    batch = [examples[i] for i in range(6)]
    query, candidates = model.collate_fn(photo_root)(batch)
    assert query["pixel_values"].dtype == torch.float32 and query["pixel_values"].shape == (6, 3, SIZE, SIZE)
    assert candidates["pixel_values"].shape == (6 * G, 3, SIZE, SIZE)
    q_keys = [e["q_img"] for e in batch]
    c_keys = [k for e in batch for k in (e["t_img"], *e["hns"])]
    for keys, got in ((q_keys, query["pixel_values"].numpy()), (c_keys, candidates["pixel_values"].numpy())):
        want = processed(keys)
        assert levels(got, want) <= 1.0 + 1e-4  # the contract: within one uint8 level
        jpeg = [i for i, k in enumerate(keys) if k.endswith(".jpg")]
        np.testing.assert_array_equal(got[jpeg], want[jpeg])  # in fact identical on JPEGs (tests/test_images.py)


def test_collate_tokens_equal_hf_tokenizer(clip_dir, photo_root):
    model = MMRetCLIP.from_pretrained(clip_dir)
    texts = INSTRUCTIONS + [LONG, ""]
    batch = [{"q_img": KEYS[0], "q_text": t, "t_img": KEYS[1], "hns": [KEYS[0]]} for t in texts]
    query, _ = model.collate_fn(photo_root)(batch)
    ids, mask = query["input_ids"], query["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (len(texts), 77)
    hf = transformers.CLIPTokenizer.from_pretrained(str(clip_dir))
    want = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    torch.testing.assert_close(mask, want["attention_mask"].to(torch.int64), rtol=0, atol=0)
    torch.testing.assert_close(ids[mask.bool()], want["input_ids"][mask.bool()], rtol=0, atol=0)
    assert not ids[~mask.bool()].any()  # zeros after the end token, as open_clip pads
    assert mask[len(INSTRUCTIONS)].all()  # the long text fills the context and still ends with its end token
    assert ids[len(INSTRUCTIONS), -1] == hf.eos_token_id
    # The end token is where transformers pools (the text config's eos_token_id).
    ends = mask.sum(1) - 1
    assert (ids[torch.arange(len(texts)), ends] == model.config.text_config.eos_token_id).all()


def test_batch_layout(clip_dir, photo_root, examples):
    """Example i's candidates are rows i*G .. i*G+G-1: its target, then its hard negatives,
    the query image first among them."""
    model = MMRetCLIP.from_pretrained(clip_dir)
    batch = [examples[i] for i in (3, 0, 7, 13)]
    query, candidates = model.collate_fn(photo_root)(batch)
    pixels = candidates["pixel_values"]
    for i, e in enumerate(batch):
        assert e["hns"][0] == e["q_img"]
        assert torch.equal(pixels[i * G + 1], query["pixel_values"][i])  # the query image, first negative
        want = processed([e["t_img"], *e["hns"]])
        assert levels(pixels[i * G:i * G + G].numpy(), want) <= 1.0 + 1e-4
    texts = [e["q_text"] for e in batch]
    hf = transformers.CLIPTokenizer.from_pretrained(str(clip_dir))
    want_ids = hf(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    mask = query["attention_mask"].bool()
    assert torch.equal(query["input_ids"][mask], want_ids[mask])


def test_collate_is_picklable_for_workers(clip_dir, photo_root, examples, tmp_path):
    model = MMRetCLIP.from_pretrained(clip_dir)
    batch = [examples[i] for i in range(3)]
    shards = write_shards(KEYS, photo_root, tmp_path / "shards", max_count=5)
    reader = ShardReader(shards.paths)
    want = model.collate_fn(photo_root)(batch)
    for source in (photo_root, str(photo_root), reader, {k: (photo_root / k).read_bytes() for k in KEYS}):
        collate = model.collate_fn(source)
        assert isinstance(collate, CLIPCollate)
        copy = pickle.loads(pickle.dumps(collate))
        got = copy(batch)
        if source is reader:  # the shards hold the same images re-encoded as JPEG: compare the layout only
            assert got[0]["pixel_values"].shape == want[0]["pixel_values"].shape
            assert torch.equal(got[1]["pixel_values"], collate(batch)[1]["pixel_values"])
            continue
        for a, b in zip(got, want):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_images_raise_naming_the_key(clip_dir, photo_root, examples):
    model = MMRetCLIP.from_pretrained(clip_dir)
    batch = [examples[0], examples[1]]
    bad_key = batch[1]["hns"][2]
    images = {k: (photo_root / k).read_bytes() for k in KEYS}
    images[bad_key] = b"\xff\xd8\xff\xe0 not really a jpeg"
    with pytest.raises(mp.FormatError, match=re.escape(f"image '{bad_key}'")):
        model.collate_fn(images)(batch)
    images[bad_key] = b"not an image at all"
    with pytest.raises(mp.FormatError, match=re.escape(f"image '{bad_key}'")):
        model.collate_fn(images)(batch)
    del images[bad_key]
    with pytest.raises(KeyError, match=re.escape(bad_key)):
        model.collate_fn(images)(batch)
    missing = dict(batch[0], t_img="palapeli/no-such-photo.jpg")
    with pytest.raises(FileNotFoundError, match="image 'palapeli/no-such-photo.jpg'"):
        model.collate_fn(photo_root)([missing])
    with pytest.raises(ValueError, match="same number"):
        model.collate_fn(photo_root)([batch[0], dict(batch[1], hns=batch[1]["hns"][:2])])
    with pytest.raises(ValueError, match="is not a folder"):
        model.collate_fn(photo_root / "nowhere")


# --------------------------------------------------------------------------- training

def full_batch_loss(model, query, candidates):
    q = model.encode_query(**query)
    c = model.encode_candidates(**candidates)
    logits = q @ c.T / 0.02
    return F.cross_entropy(logits, torch.arange(len(q)) * G)


def test_grad_cache_equals_full_batch_backward(clip_dir, photo_root, examples):
    """GradCache through this model gives the gradient of one ordinary backward (PyTorch's
    cross-entropy over the same scores) and the same loss."""
    batch = [examples[i] for i in range(6)]
    grads, losses = [], []
    for use_cache in (False, True):
        model = MMRetCLIP.from_pretrained(clip_dir)
        query, candidates = model.collate_fn(photo_root)(batch)
        if use_cache:
            losses.append(grad_cache_step(model.encode_query, model.encode_candidates, query, candidates,
                                          InfoNCELoss(0.02), sub_batch=4, group_size=G))
        else:
            loss = full_batch_loss(model, query, candidates)
            loss.backward()
            losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert model.clip.logit_scale.grad is None
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_fine_tune_through_workers_saves_a_checkpoint_megapairs_clip_runs(clip_dir, photo_root, examples, tmp_path):
    """The issue's "done means": three GradCache steps of the tiny CLIP on batches from two
    DataLoader workers, AdamW; saved, the model loads in megapairs.CLIP (the C encoders) with
    the outputs PyTorch gives, on the same inputs and from the raw images and texts."""
    model = MMRetCLIP.from_pretrained(clip_dir)
    loader = DataLoader(examples, batch_size=4, shuffle=False, num_workers=2, collate_fn=model.collate_fn(photo_root))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    scale = model.clip.logit_scale.detach().clone()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    losses = []
    for _, (query, candidates) in zip(range(3), loader):
        assert candidates["pixel_values"].shape == (4 * G, 3, SIZE, SIZE)
        losses.append(grad_cache_step(model.encode_query, model.encode_candidates, query, candidates,
                                      InfoNCELoss(temperature=0.02), sub_batch=3, group_size=G))
        optimizer.step()
        optimizer.zero_grad()
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses), losses
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged
    assert torch.equal(model.clip.logit_scale.detach(), scale)  # frozen: the loss holds the temperature

    out = tmp_path / "model"
    model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"])
    assert not list(tmp_path.glob(".*")), "temporary folders left beside the checkpoint"

    model.eval()
    batch = [examples[i] for i in range(5, 11)]
    query, candidates = model.collate_fn(photo_root)(batch)
    with torch.no_grad():
        q_torch = model.encode_query(**query).numpy()
        c_torch = model.encode_candidates(**candidates).numpy()
        t_torch = F.normalize(model.text_features(query["input_ids"], query["attention_mask"]), dim=-1).numpy()
    clip = mp.CLIP.from_pretrained(out)
    pixels, ids = query["pixel_values"].numpy(), query["input_ids"].numpy()
    assert np.abs(clip.encode_image(candidates["pixel_values"].numpy()) - c_torch).max() <= 1e-4
    assert np.abs(clip.encode_text(ids) - t_torch).max() <= 1e-4
    assert np.abs(clip.encode_composed(pixels, ids) - q_torch).max() <= 1e-4
    # From the raw images and texts, megapairs.CLIP preprocesses and tokenises as the collate did.
    paths = [str(photo_root / e["q_img"]) for e in batch]
    assert np.abs(clip.encode_composed(paths, [e["q_text"] for e in batch]) - q_torch).max() <= 1e-4

    # transformers loads the saved folder and computes the same features.
    hf = CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        image = features(hf.get_image_features(pixel_values=candidates["pixel_values"]))
        text = features(hf.get_text_features(input_ids=query["input_ids"], attention_mask=query["attention_mask"]))
        composed = F.normalize(features(hf.get_image_features(pixel_values=query["pixel_values"])) + text, dim=-1)
    np.testing.assert_allclose(F.normalize(image, dim=-1).numpy(), c_torch, rtol=0, atol=1e-6)
    np.testing.assert_allclose(composed.numpy(), q_torch, rtol=0, atol=1e-6)

    # And MMRetCLIP loads it back bit for bit.
    again = MMRetCLIP.from_pretrained(out)
    mine, theirs = model.state_tensors(), again.state_tensors()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_state_tensors_round_trip_bit_for_bit(clip_dir):
    model = MMRetCLIP.from_pretrained(clip_dir)
    state = model.state_tensors()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.equal(model.clip.visual_projection.weight, state["visual_projection.weight"])
    model.load_state_tensors(state)
    now = model.state_tensors()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    with pytest.raises(RuntimeError, match="visual_projection.weight"):
        model.load_state_tensors({k: v for k, v in state.items() if k != "visual_projection.weight"})


# --------------------------------------------------------------------------- loading and saving


def test_loads_what_transformers_computes(clip_dir):
    """MMRetCLIP's features are transformers' get_image_features / get_text_features."""
    model = MMRetCLIP.from_pretrained(clip_dir).eval()
    hf = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = torch.from_numpy(processed(KEYS[:4]))
    ids = transformers.CLIPTokenizer.from_pretrained(str(clip_dir))(
        INSTRUCTIONS[:4], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = features(hf.get_image_features(pixel_values=pixels))
        text = features(hf.get_text_features(**ids))
        torch.testing.assert_close(model.image_features(pixels), image, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.text_features(ids["input_ids"], ids["attention_mask"]), text,
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_query(pixels, ids["input_ids"], ids["attention_mask"]),
                                   F.normalize(image + text, dim=-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_candidates(pixels), F.normalize(image, dim=-1), rtol=0, atol=1e-6)
    assert model.kind == "clip" and model.embed_dim == 24 and model.context_length == 77
    assert model.transform == mp.CLIP.from_pretrained(clip_dir).transform


def test_pickled_checkpoint_is_refused(clip_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(clip_dir / "config.json", folder / "config.json")
    torch.save(CLIPModel(tiny_config()).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pickled PyTorch weights \(pytorch_model.bin\)"):
        MMRetCLIP.from_pretrained(folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        MMRetCLIP.from_pretrained(folder)


def test_checkpoint_errors(clip_dir, tmp_path):
    vision_only = tmp_path / "vision"
    transformers.CLIPVisionModelWithProjection(tiny_config().vision_config).save_pretrained(vision_only)
    with pytest.raises(mp.FormatError, match="both towers"):
        MMRetCLIP.from_pretrained(vision_only)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(clip_dir / "model.safetensors", wrong / "model.safetensors")
    config = tiny_config()
    config.projection_dim = 16
    config.save_pretrained(wrong)
    with pytest.raises(mp.FormatError, match="visual_projection.weight' has shape"):
        MMRetCLIP.from_pretrained(wrong)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        MMRetCLIP.from_pretrained(tmp_path / "nowhere")


def test_save_is_atomic(clip_dir, tmp_path, monkeypatch):
    """A save that dies midway leaves the previous checkpoint whole; a finished one replaces it."""
    model = MMRetCLIP.from_pretrained(clip_dir)
    out = tmp_path / "model"
    model.save_pretrained(out)
    first = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.clip.visual_projection.weight.add_(1.0)
    import safetensors.torch

    def dies(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == first
    MMRetCLIP.from_pretrained(out)
    model.save_pretrained(out)
    assert (out / "model.safetensors").read_bytes() != first
    assert torch.equal(MMRetCLIP.from_pretrained(out).clip.visual_projection.weight,
                       model.clip.visual_projection.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the next save cleared the dead one's


def test_vit_b16_config_from_config():
    model = MMRetCLIP.from_config(vit_b16_config(), seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert 149_000_000 < n < 150_000_000  # OpenAI ViT-B/16 CLIP: 149.6M
    assert (model.embed_dim, model.image_size, model.context_length) == (512, 224, 77)
    assert model.transform == mp.images.PRESETS["clip"]
    assert model.tokenizer_dir is None
    assert "preprocessor_config.json" in TOKENIZER_FILES
    collate = model.collate_fn({})  # open_clip's vocabulary, whose end token is where the config pools
    assert collate.tokenizer.eot_token_id == model.config.text_config.eos_token_id
