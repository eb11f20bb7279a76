"""megapairs.CLIP's image tower against transformers, on seeded random-initialised models
built from configs and saved as safetensors (no pretrained weights download here)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

import megapairs as mp
from reference import cosine, open_clip_vision_state

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


def test_packed_in_proj_is_torch_multihead_attention_layout():
    """The packing open_clip_state uses is torch.nn.MultiheadAttention's (which OpenCLIP's
    blocks are): the packed module reproduces transformers' CLIPAttention."""
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**SMALL["base-like"])).eval()
    attention = model.vision_model.encoder.layers[0].self_attn
    state = open_clip_vision_state(model)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        block = "visual.transformer.resblocks.0.attn."
        for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            mha.get_parameter(name).copy_(torch.from_numpy(state[block + name]))
        x = torch.randn(2, 17, 64)
        want = attention(x)[0]
        got = mha(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["base-like", "gelu-one-head"])
def test_open_clip_layout(tmp_path, name):
    from safetensors.numpy import save_file

    config = SMALL[name]
    model = save_vision_model(tmp_path / "hf", **config)
    save_file(open_clip_vision_state(model), str(tmp_path / "open_clip_model.safetensors"))
    D = config["hidden_size"]
    vision = dict(image_size=config["image_size"], layers=config["num_hidden_layers"], width=D,
                  patch_size=config["patch_size"], head_width=D // config["num_attention_heads"],
                  mlp_ratio=config["intermediate_size"] / D)
    quick = config.get("hidden_act", "quick_gelu") == "quick_gelu"
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": config["projection_dim"], "quick_gelu": quick, "vision_cfg": vision,
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }))
    pixels = pixels_for(config)
    want = reference(model, pixels)
    clip = mp.CLIP.from_pretrained(tmp_path)
    got = clip.encode_image(pixels, normalize=False)
    assert np.abs(got - want).max() <= 1e-4
    assert cosine(got, want).min() >= 0.99999
    assert clip.transform.mean == (0.5, 0.5, 0.5) and clip.transform.std == (0.25, 0.25, 0.25)
    bad = json.loads((tmp_path / "open_clip_config.json").read_text())
    bad["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    (tmp_path / "open_clip_config.json").write_text(json.dumps(bad))
    with pytest.raises(mp.FormatError, match="attentional_pool=True is not supported"):
        mp.CLIP.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, dtype):
    """F16/BF16 checkpoints are widened exactly: the reference is the same rounded weights in fp32."""
    model = save_vision_model(tmp_path, **SMALL["odd-head-dim"])
    model.to(getattr(torch, dtype)).save_pretrained(tmp_path, safe_serialization=True)
    model.to(torch.float32)
    pixels = pixels_for(SMALL["odd-head-dim"])
    got = mp.CLIP.from_pretrained(tmp_path).encode_image(pixels, normalize=False)
    assert np.abs(got - reference(model, pixels)).max() <= 1e-4


def test_hub_id_from_offline_cache(tmp_path):
    """A hub id resolves through huggingface_hub's cache with HF_HUB_OFFLINE=1 (no network)."""
    snapshot = tmp_path / "hub" / "models--megapairs-test--tiny-clip" / "snapshots" / ("0" * 40)
    save_vision_model(snapshot, **SMALL["base-like"])
    (tmp_path / "hub" / "models--megapairs-test--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--megapairs-test--tiny-clip" / "refs" / "main").write_text("0" * 40)
    pixels = pixels_for(SMALL["base-like"])
    np.save(tmp_path / "pixels.npy", pixels)
    code = (
        "import sys, numpy as np, megapairs as mp\n"
        "x = np.load(sys.argv[1])\n"
        "np.save(sys.argv[2], mp.CLIP.from_pretrained('megapairs-test/tiny-clip').encode_image(x))\n"
        "try:\n    mp.CLIP.from_pretrained('megapairs-test/not-cached')\n"
        "except FileNotFoundError as e:\n    print('missing:', e)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pixels.npy"), str(tmp_path / "out.npy")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "missing:" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), mp.CLIP.from_pretrained(snapshot).encode_image(pixels))


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
    with pytest.raises(ValueError, match="no text tower"):  # a vision-only checkpoint
        clip.encode_composed([], [])
    assert clip.encode_image(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 24)


def test_preprocessor_config_sets_the_transform(tmp_path):
    """The checkpoint's preprocessor_config.json (as transformers writes it) drives preprocessing:
    encoding images equals encoding the processor's own output."""
    import transformers

    config = SMALL["base-like"]
    save_vision_model(tmp_path, **config)
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_cls(size={"shortest_edge": 80}, crop_size={"height": 64, "width": 64},
                              image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample=2)
    processor.save_pretrained(tmp_path)
    clip = mp.CLIP.from_pretrained(tmp_path)
    assert clip.transform == mp.images.Transform(80, 64, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear")
    rng = np.random.default_rng(2)
    photos = [rng.integers(0, 256, (90 + 11 * i, 120, 3), dtype=np.uint8) for i in range(3)]
    want = processor([Image.fromarray(p) for p in photos], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(clip.encode_image(photos), clip.encode_image(want.astype(np.float32)))
    # A crop the tower cannot take: a warning, and the default transform.
    processor_cls(crop_size={"height": 48, "width": 48}).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="crop \\(48, 48\\) is not the model's 64 x 64"):
        clip = mp.CLIP.from_pretrained(tmp_path)
    assert clip.transform == mp.images.Transform(64, 64, mp.images.OPENAI_CLIP_MEAN, mp.images.OPENAI_CLIP_STD)


def test_checkpoint_config_field_of_wrong_type_is_named(tmp_path):
    """A config field of the wrong JSON type is a FormatError naming the file and the field
    (found by fuzzing: ``"image_std": true`` was a TypeError)."""
    config = SMALL["base-like"]
    save_vision_model(tmp_path, **config)
    processor = tmp_path / "preprocessor_config.json"
    for field, value in (("image_std", True), ("image_mean", [0.5, 0.5]), ("resample", [2]),
                         ("rescale_factor", "1/255"), ("do_resize", "yes")):
        processor.write_text(json.dumps({field: value}))
        with pytest.raises(mp.FormatError, match=rf"preprocessor_config.json: {field} must be"):
            mp.CLIP.from_pretrained(tmp_path)
    processor.unlink()
    saved = json.loads((tmp_path / "config.json").read_text())
    for field, value in (("hidden_size", "64"), ("layer_norm_eps", [1e-5]), ("num_hidden_layers", True)):
        (tmp_path / "config.json").write_text(json.dumps(saved | {field: value}))
        with pytest.raises(mp.FormatError, match=rf"config.json: {field} must be"):
            mp.CLIP.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(saved | {"vision_config": [1]}))
    with pytest.raises(mp.FormatError, match="vision_config must be a JSON object"):
        mp.CLIP.from_pretrained(tmp_path)


def test_one_number_mean_and_std_apply_to_every_channel(tmp_path):
    """``image_mean``/``image_std`` given as one number, as the image processors accept:
    preprocessing equals the processor's."""
    import transformers

    save_vision_model(tmp_path, **SMALL["base-like"])
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_cls(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                              image_mean=0.5, image_std=0.25)
    processor.save_pretrained(tmp_path)
    clip = mp.CLIP.from_pretrained(tmp_path)
    assert clip.transform.mean == (0.5,) * 3 and clip.transform.std == (0.25,) * 3
    photos = [np.random.default_rng(i).integers(0, 256, (70, 90, 3), dtype=np.uint8) for i in range(2)]
    want = processor([Image.fromarray(p) for p in photos], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(clip.encode_image(photos), clip.encode_image(want.astype(np.float32)))
