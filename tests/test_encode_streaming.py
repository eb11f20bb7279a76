"""Encoders over lists of image paths: read and preprocessed batch by batch (memory bounded by a
batch), on_error ('raise', 'skip', a callable), show_progress_bar, and resolve_model_dir's
errors for missing local paths. References: the same encoders on preprocessed pixels (tested
against transformers in test_encoders.py / test_dinov2.py) and transformers' own models on the
output of its image processors, on real photographs; seeded tiny random checkpoints."""

import glob
import os
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

import megapairs as mp
from megapairs.encoders import resolve_model_dir
from reference import features, minilm_dir

PHOTOS = sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg")
                + glob.glob("/usr/share/palapeli/collection/*.jpg"))
SMALLEST = sorted(PHOTOS, key=os.path.getsize)[:4]  # for the tests that repeat photos many times


def test_real_photographs_are_installed():
    # `make test` installs mate-backgrounds and palapeli-data; without them these tests prove little.
    assert len(PHOTOS) >= 15, f"expected the Debian photo packages, found {PHOTOS}"


def processor_class(name):
    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIPModel (both towers) whose preprocessor_config.json resizes to 40 and crops 32."""
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    processor = processor_class("CLIPImageProcessor")(size={"shortest_edge": 40},
                                                      crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def clip(clip_dir):
    return mp.CLIP.from_pretrained(clip_dir[0])


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny Dinov2Model (5x5 native grid of 7 px patches) with a 40 -> 35 px processor."""
    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, image_size=35,
                                     patch_size=7, layerscale_value=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(folder, safe_serialization=True)
    processor = processor_class("BitImageProcessor")(
        size={"shortest_edge": 40}, crop_size={"height": 35, "width": 35},
        image_mean=list(mp.images.IMAGENET_MEAN), image_std=list(mp.images.IMAGENET_STD))
    processor.save_pretrained(folder)
    return folder, model, processor


def rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture
def damaged(tmp_path):
    """A JPEG cut in half and a text file named .jpg."""
    data = open(PHOTOS[0], "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is text, not an image\n")
    return truncated, text


@pytest.fixture
def preprocess_calls(monkeypatch):
    """Records the number of images of every images.preprocess call."""
    calls = []
    original = mp.images.preprocess

    def recording(images, *args, **kwargs):
        images = list(images)
        calls.append(len(images))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(mp.images, "preprocess", recording)
    return calls


# ---------------------------------------------------------------- same embeddings as before and as transformers


def test_clip_paths_equal_pixels_and_transformers(clip_dir, clip, preprocess_calls):
    _, model, processor = clip_dir
    got = clip.encode_image(PHOTOS, normalize=False, batch_size=4)
    assert max(preprocess_calls) <= 4 and sum(preprocess_calls) == len(PHOTOS)
    pixels = mp.images.preprocess(PHOTOS, clip.transform)
    want_pixels = processor([rgb(p) for p in PHOTOS], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixels, want_pixels)  # the model's transform is its processor's
    np.testing.assert_array_equal(got, clip.encode_image(pixels, normalize=False, batch_size=4))
    with torch.inference_mode():
        want = features(model.get_image_features(pixel_values=torch.from_numpy(want_pixels))).numpy()
    assert got.shape == (len(PHOTOS), 16)
    assert np.abs(got - want).max() <= 1e-4
    normalized = clip.encode_image(PHOTOS, batch_size=5)
    np.testing.assert_allclose(normalized, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_dinov2_paths_equal_pixels_and_transformers(dino_dir, preprocess_calls):
    folder, model, processor = dino_dir
    dino = mp.DINOv2.from_pretrained(folder)
    got = dino.encode(PHOTOS, pooling="cls+mean", normalize=False, batch_size=3)
    assert max(preprocess_calls) <= 3
    pixels = processor([rgb(p) for p in PHOTOS], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(got, dino.encode(pixels, pooling="cls+mean", normalize=False, batch_size=3))
    with torch.inference_mode():
        out = model(pixel_values=torch.from_numpy(pixels))
    want = np.concatenate([out.pooler_output.numpy(), out.last_hidden_state[:, 1:].mean(1).numpy()], axis=1)
    assert np.abs(got - want).max() <= 1e-4


def test_generator_input_is_read_lazily(clip, monkeypatch):
    pulled = []

    def paths():
        for p in PHOTOS:
            pulled.append(p)
            yield p

    original = mp.images.preprocess
    seen = []

    def watching(images, *args, **kwargs):
        seen.append(len(pulled))  # images taken from the generator when this batch is preprocessed
        return original(images, *args, **kwargs)

    monkeypatch.setattr(mp.images, "preprocess", watching)
    got = clip.encode_image(paths(), batch_size=4)
    assert seen == [min(4 * (k + 1), len(PHOTOS)) for k in range(len(seen))]
    np.testing.assert_array_equal(got, clip.encode_image(PHOTOS, batch_size=4))
    emb, kept = clip.encode_image(iter(PHOTOS), batch_size=4, on_error="skip")
    np.testing.assert_array_equal(emb, got)
    assert kept.tolist() == list(range(len(PHOTOS)))
    empty = clip.encode_image(iter([]))
    assert empty.shape == (0, 16) and empty.dtype == np.float32


def test_memory_does_not_grow_with_the_corpus(dino_dir):
    """tracemalloc sees NumPy's buffers (it sees a whole-corpus preprocess): the peak of encoding
    64 images 4 at a time is that of encoding 16, far below the 64 images' pixels."""
    dino = mp.DINOv2.from_pretrained(dino_dir[0], transform=mp.images.Transform(112, 112, (0.5,) * 3, (0.25,) * 3))
    per_image = 3 * 112 * 112 * 4

    def peak(call):
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(lambda: mp.images.preprocess(SMALLEST * 8, dino.transform)) >= 32 * per_image
    small = peak(lambda: dino.encode(SMALLEST * 4, batch_size=4))
    large = peak(lambda: dino.encode(SMALLEST * 16, batch_size=4))
    assert large < small + 2 * per_image, (small, large)
    assert large < 64 * per_image / 3, (large, 64 * per_image)


# ---------------------------------------------------------------- on_error


def test_skip_leaves_damaged_images_out(clip, dino_dir, damaged):
    truncated, text = damaged
    paths = PHOTOS[:2] + [truncated] + PHOTOS[2:6] + [text] + PHOTOS[6:9]
    good = [p for p in paths if p not in (truncated, text)]
    emb, kept = clip.encode_image(paths, batch_size=3, on_error="skip")
    assert kept.dtype == np.int64 and kept.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10]
    np.testing.assert_array_equal(emb, clip.encode_image(good, batch_size=3))
    dino = mp.DINOv2.from_pretrained(dino_dir[0])
    emb, kept = dino.encode(paths, pooling="mean", batch_size=4, on_error="skip")
    assert kept.tolist() == [0, 1, 3, 4, 5, 6, 8, 9, 10]
    np.testing.assert_array_equal(emb, dino.encode(good, pooling="mean", batch_size=4))
    emb, kept = clip.encode_image([text, truncated], on_error="skip")  # nothing readable
    assert emb.shape == (0, 16) and kept.shape == (0,)


def test_callable_gets_global_indices_and_messages(clip, damaged, tmp_path):
    truncated, text = damaged
    paths = PHOTOS[:4] + [text] + PHOTOS[4:7] + [truncated, tmp_path / "missing.jpg"] + PHOTOS[7:8]
    seen = []
    emb, kept = clip.encode_image(paths, batch_size=3, on_error=lambda i, exc: seen.append((i, exc)))
    assert [i for i, _ in seen] == [4, 8, 9]
    assert isinstance(seen[0][1], mp.FormatError) and "not an image" in str(seen[0][1])
    assert isinstance(seen[1][1], mp.FormatError) and "cannot decode JPEG" in str(seen[1][1])  # the C core's
    assert isinstance(seen[2][1], FileNotFoundError) and "missing.jpg" in str(seen[2][1])
    assert kept.tolist() == [0, 1, 2, 3, 5, 6, 7, 10]
    np.testing.assert_array_equal(emb, clip.encode_image([paths[i] for i in kept], batch_size=3))


def test_preprocess_callable(damaged):
    truncated, text = damaged
    seen = []
    batch, kept = mp.images.preprocess([PHOTOS[0], truncated, text, PHOTOS[1]], "clip",
                                       on_error=lambda i, exc: seen.append((i, type(exc), str(exc))))
    assert kept.tolist() == [0, 3] and batch.shape == (2, 3, 224, 224)
    assert [(i, t) for i, t, _ in seen] == [(1, mp.FormatError), (2, mp.FormatError)]
    assert "cannot decode JPEG" in seen[0][2] and "not an image" in seen[1][2]
    np.testing.assert_array_equal(batch, mp.images.preprocess([PHOTOS[0], PHOTOS[1]], "clip"))
    with pytest.raises(ValueError, match="on_error must be 'raise', 'skip' or a callable, got 'ignore'"):
        mp.images.preprocess([PHOTOS[0]], on_error="ignore")


def test_raise_names_the_global_index(clip, damaged, tmp_path):
    truncated, text = damaged
    with pytest.raises(mp.FormatError, match=r"^image 7: cannot decode JPEG"):
        clip.encode_image(PHOTOS[:7] + [truncated] + PHOTOS[7:9], batch_size=3)
    with pytest.raises(mp.FormatError, match=r"^image 5: not an image"):
        clip.encode_image(iter(PHOTOS[:5] + [text]), batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"^image 4: .*missing\.jpg"):
        clip.encode_image(PHOTOS[:4] + [tmp_path / "missing.jpg"], batch_size=3)


def test_pixels_keep_their_behaviour(clip):
    pixels = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    emb = clip.encode_image(pixels, batch_size=2)
    emb2, kept = clip.encode_image(pixels, batch_size=2, on_error="skip")
    np.testing.assert_array_equal(emb, emb2)
    assert kept.tolist() == [0, 1, 2, 3, 4]


def test_argument_errors(clip):
    with pytest.raises(ValueError, match="on_error must be 'raise', 'skip' or a callable, got 'ignore'"):
        clip.encode_image(PHOTOS[:1], on_error="ignore")
    with pytest.raises(TypeError, match="show_progress_bar must be True, False or None, got 'yes'"):
        clip.encode_image(PHOTOS[:1], show_progress_bar="yes")
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        clip.encode_image(PHOTOS[0])
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        clip.encode_image(PHOTOS[:1], batch_size=0)


# ---------------------------------------------------------------- composed queries


def test_encode_composed_streams(clip, preprocess_calls):
    ids = np.zeros((len(PHOTOS), 77), np.int64)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, np.arange(3) + 400, 49407
    got = clip.encode_composed(iter(PHOTOS), ids, batch_size=4)
    assert max(preprocess_calls) <= 4
    np.testing.assert_array_equal(got, clip.encode_composed(mp.images.preprocess(PHOTOS, clip.transform), ids))
    preprocess_calls.clear()
    with pytest.raises(ValueError, match="one text per image, got 5 images and 4 texts"):
        clip.encode_composed(PHOTOS[:5], ids[:4])
    assert preprocess_calls == []  # refused before reading any image


# ---------------------------------------------------------------- progress bars


def test_progress_bar_images(clip, dino_dir, capsys):
    capsys.readouterr()
    clip.encode_image(PHOTOS[:5], batch_size=2, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "images" in err and "CLIP" in err
    clip.encode_image(PHOTOS[:5], batch_size=2, show_progress_bar=False)
    clip.encode_image(PHOTOS[:5], batch_size=2)  # None: only for more than 2048 images
    assert capsys.readouterr().err == ""
    dino = mp.DINOv2.from_pretrained(dino_dir[0])
    capsys.readouterr()
    dino.encode((p for p in PHOTOS[:3]), show_progress_bar=True)  # unknown length: a count and a rate
    err = capsys.readouterr().err
    assert "3images" in err.replace(" ", "") and "/3" not in err and "DINOv2" in err
    dino.encode(np.zeros((3, 3, 35, 35), np.float32), show_progress_bar=True)
    assert "3/3" in capsys.readouterr().err


def test_progress_bar_clip_texts(clip, capsys):
    ids = np.zeros((6, 77), np.int64)
    ids[:, 0], ids[:, 1], ids[:, 2] = 49406, 500, 49407
    capsys.readouterr()
    want = clip.encode_text(ids, batch_size=4)
    assert capsys.readouterr().err == ""
    got = clip.encode_text(ids, batch_size=4, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "texts" in err
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- sentence encoder

CAPTIONS = ["A blackbird sitting on a fence.", "A red car parked next to an old building at night.",
            "Two children playing football on a beach.", "A bowl of citrus fruits on a wooden table.",
            "A honey bee on a yellow flower."]


def test_sentence_encoder_progress_and_reference(capsys):
    from sentence_transformers import SentenceTransformer

    folder = minilm_dir()
    want = SentenceTransformer(str(folder), device="cpu").encode(CAPTIONS, show_progress_bar=False,
                                                                 convert_to_numpy=True)
    model = mp.SentenceEncoder.from_pretrained(folder)
    capsys.readouterr()
    got = model.encode(CAPTIONS, batch_size=2, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "texts" in err and "SentenceEncoder" in err
    assert np.abs(got - want).max() <= 1e-4
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999
    np.testing.assert_array_equal(model.encode(CAPTIONS, batch_size=2, show_progress_bar=False), got)
    model.encode(CAPTIONS)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- resolve_model_dir


@pytest.mark.parametrize("path", ["./nope/model", "/abs/missing", "~/no-such-megapairs-model",
                                  "models/clip/vit-b16", "my model/clip"])
def test_missing_local_paths_are_not_hub_ids(path):
    with pytest.raises(FileNotFoundError, match=rf"^no such directory: '{re.escape(path)}'$"):
        resolve_model_dir(path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        mp.CLIP.from_pretrained(path)


def test_local_paths_resolve(clip_dir, tmp_path, monkeypatch):
    folder = clip_dir[0]
    assert resolve_model_dir(folder) == folder
    assert resolve_model_dir(str(folder)) == folder
    monkeypatch.setenv("HOME", str(folder.parent))
    assert resolve_model_dir("~/" + folder.name) == folder
    monkeypatch.chdir(folder.parent)
    assert resolve_model_dir("./" + folder.name).resolve() == folder.resolve()
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a model directory or a hub id, got the file"):
        resolve_model_dir(tmp_path / "file.json")


def test_missing_hub_id_offline_says_both(tmp_path):
    code = (
        "from megapairs.encoders import resolve_model_dir\n"
        "try:\n    resolve_model_dir('megapairs-test/not-cached')\n"
        "except FileNotFoundError as e:\n    print('missing:', e)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("missing:")]
    assert len(lines) == 1, result.stdout
    assert "no local directory 'megapairs-test/not-cached'" in lines[0]
    assert "hub lookup failed" in lines[0] and "LocalEntryNotFoundError" in lines[0]
