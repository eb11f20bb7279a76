"""megapairs.CLIP's image tower against transformers, on seeded random-initialised models
built from configs and saved as safetensors (no pretrained weights download here)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

import megapairs as mp

SMALL = {
    "base-like": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      image_size=64, patch_size=16, projection_dim=24),
    "odd-head-dim": dict(hidden_size=60, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
                         image_size=56, patch_size=14, projection_dim=20),  # head dim 15, 4x4 grid
    "gelu-one-head": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=1,
                          image_size=48, patch_size=8, projection_dim=16, hidden_act="gelu"),
}


def save_vision_model(tmp_path, seed=0, **config):
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def reference(model, pixels):
    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(pixels)).image_embeds.numpy()


def cosine(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def pixels_for(config, n=3, seed=1):
    size = config["image_size"]
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", SMALL)
def test_fp32_matches_transformers(tmp_path, name):
    model = save_vision_model(tmp_path, **SMALL[name])
    pixels = pixels_for(SMALL[name])
    want = reference(model, pixels)
    clip = mp.CLIP.from_pretrained(tmp_path)
    got = clip.encode_image(pixels, normalize=False)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    assert cosine(got, want).min() >= 0.99999
    normalized = clip.encode_image(pixels)
    np.testing.assert_allclose(normalized, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert clip.embed_dim == SMALL[name]["projection_dim"]


@pytest.mark.parametrize("name", SMALL)
def test_bf16_close_to_fp32(tmp_path, name):
    save_vision_model(tmp_path, **SMALL[name])
    pixels = pixels_for(SMALL[name], n=4)
    fp32 = mp.CLIP.from_pretrained(tmp_path).encode_image(pixels, normalize=False)
    bf16 = mp.CLIP.from_pretrained(tmp_path, precision="bf16").encode_image(pixels, normalize=False)
    assert cosine(bf16, fp32).min() >= 0.999


def test_full_clip_model_checkpoint(tmp_path):
    """A CLIPModel checkpoint (text and vision towers): the vision tower and projection are used."""
    torch.manual_seed(3)
    config = CLIPConfig(vision_config=SMALL["base-like"] | {"projection_dim": 24},
                        text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2), projection_dim=24)
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    pixels = pixels_for(SMALL["base-like"])
    with torch.inference_mode():
        features = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        want = (features.pooler_output if hasattr(features, "pooler_output") else features).numpy()
    got = mp.CLIP.from_pretrained(tmp_path).encode_image(pixels, normalize=False)
    assert np.abs(got - want).max() <= 1e-4


def test_images_are_preprocessed_with_the_model_transform(tmp_path):
    config = SMALL["base-like"]
    save_vision_model(tmp_path, **config)
    clip = mp.CLIP.from_pretrained(tmp_path)
    rng = np.random.default_rng(5)
    photos = [Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8)) for i in range(3)]
    jpegs = []
    for im in photos:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG")
        jpegs.append(buffer.getvalue())
    pixels = mp.images.preprocess(jpegs, clip.transform)
    assert pixels.shape == (3, 3, 64, 64)
    np.testing.assert_array_equal(clip.encode_image(jpegs, batch_size=2), clip.encode_image(pixels))


@pytest.mark.slow
def test_vit_b16_full_size(tmp_path):
    """ViT-B/16 at 224 px with random weights: the real shapes, the real cost."""
    config = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16, projection_dim=512)
    model = save_vision_model(tmp_path, **config)
    pixels = pixels_for(config, n=2)
    want = reference(model, pixels)
    got = mp.CLIP.from_pretrained(tmp_path).encode_image(pixels, normalize=False)
    assert np.abs(got - want).max() <= 1e-4
    assert cosine(got, want).min() >= 0.99999
    bf16 = mp.CLIP.from_pretrained(tmp_path, precision="bf16").encode_image(pixels, normalize=False)
    assert cosine(bf16, got).min() >= 0.999


# ---------------------------------------------------------------- errors


def test_bad_checkpoints(tmp_path):
    save_vision_model(tmp_path, **SMALL["base-like"])
    from safetensors.numpy import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    name = "vision_model.encoder.layers.1.mlp.fc1.weight"
    broken = dict(state)
    broken[name] = np.zeros((95, 64), np.float32)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(mp.FormatError, match=rf"'{name}' has shape \(95, 64\), expected \(96, 64\)"):
        mp.CLIP.from_pretrained(tmp_path)
    del broken[name]
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(mp.FormatError, match=rf"missing tensor '{name}' \(expected shape \(96, 64\)\)"):
        mp.CLIP.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(mp.FormatError, match="not a CLIP config"):
        mp.CLIP.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(mp.FormatError, match="invalid JSON"):
        mp.CLIP.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        mp.CLIP.from_pretrained(tmp_path)


def test_argument_errors(tmp_path):
    save_vision_model(tmp_path, **SMALL["base-like"])
    clip = mp.CLIP.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"pixels must be \(N, 3, 64, 64\), got \(2, 3, 32, 32\)"):
        clip.encode_image(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="precision must be"):
        mp.CLIP.from_pretrained(tmp_path, precision="fp16")
    with pytest.raises(ValueError, match="batch_size"):
        clip.encode_image(np.zeros((1, 3, 64, 64), np.float32), batch_size=0)
    with pytest.raises(NotImplementedError, match="text tower"):
        clip.encode_composed([], [])
    assert clip.encode_image(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 24)
