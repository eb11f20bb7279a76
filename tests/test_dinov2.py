"""megapairs.DINOv2 against transformers' Dinov2Model and Dinov2WithRegistersModel, on seeded
random-initialised models saved as safetensors, and its position-embedding resampling
against torch.nn.functional.interpolate."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

import megapairs as mp
from megapairs.encoders import interpolate_positions
from reference import cosine

SMALL = {  # image_size 35, patch 7: a 5x5 native grid
    "plain": dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=3),  # head dim 12
    "odd-head-dim": dict(hidden_size=45, num_hidden_layers=1, num_attention_heads=3, mlp_ratio=3),  # head dim 15
    "swiglu": dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, use_swiglu_ffn=True),
    "no-qkv-bias": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, qkv_bias=False),
    "registers": dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, num_register_tokens=4),
}
SIZES = (35, 28, 49, 56, 40)  # native grid, shrink, grow, grow, 40 = 5x5 grid with 5 pixels dropped


def build(tmp_path, name, seed=0, **extra):
    """A random model whose LayerScale and biases are far from their init (0.5 +- noise)."""
    options = SMALL[name] | dict(image_size=35, patch_size=7, layerscale_value=0.5) | extra
    torch.manual_seed(seed)
    if "num_register_tokens" in options:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**options))
    else:
        model = Dinov2Model(Dinov2Config(**options))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(tmp_path, safe_serialization=True)
    return model


def reference(model, pixels):
    with torch.inference_mode():
        out = model(pixel_values=torch.from_numpy(pixels))
    registers = getattr(model.config, "num_register_tokens", 0)
    return out.pooler_output.numpy(), out.last_hidden_state[:, 1 + registers:].mean(1).numpy()


def pixels(size, n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("grid_in,grid_out", [(5, 3), (5, 8), (37, 16), (37, 37), (16, 37), (7, 2), (3, 11)])
def test_position_resampling_matches_torch(antialias, grid_in, grid_out):
    """The same resampling as torch's: within 1e-6 of torch in float64, and no further from
    torch's float32 result (what transformers computes) than torch's own float32 rounding."""
    table = np.random.default_rng(grid_in * 100 + grid_out).standard_normal((1 + grid_in**2, 8)).astype(np.float32)

    def torch_resample(dtype):
        patches = torch.from_numpy(table[1:].astype(dtype)).reshape(1, grid_in, grid_in, 8).permute(0, 3, 1, 2)
        out = torch.nn.functional.interpolate(patches, size=(grid_out, grid_out), mode="bicubic",
                                              align_corners=False, antialias=antialias)
        return out.permute(0, 2, 3, 1).reshape(-1, 8).numpy()

    want64, want32 = torch_resample(np.float64), torch_resample(np.float32)
    got = interpolate_positions(table, grid_out, antialias)
    assert got.shape == (1 + grid_out**2, 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], table[0])
    np.testing.assert_allclose(got[1:], want64, rtol=0, atol=1e-6)
    assert np.abs(got[1:] - want32).max() <= np.abs(want32 - want64).max() + 1e-6


@pytest.mark.parametrize("name", SMALL)
def test_fp32_matches_transformers(tmp_path, name):
    model = build(tmp_path, name)
    dino = mp.DINOv2.from_pretrained(tmp_path)
    width = SMALL[name]["hidden_size"]
    assert dino.embed_dim == width
    for size in SIZES:
        x = pixels(size)
        cls, mean = reference(model, x)
        got = dino.encode(x, normalize=False)
        assert got.shape == (3, width) and got.dtype == np.float32
        assert np.abs(got - cls).max() <= 1e-4, size
        assert cosine(got, cls).min() >= 0.99999
        got_mean = dino.encode(x, pooling="mean", normalize=False)
        assert np.abs(got_mean - mean).max() <= 1e-4, size
        both = dino.encode(x, pooling="cls+mean", batch_size=2)
        want = np.concatenate([cls, mean], axis=1)
        np.testing.assert_allclose(both, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("name", ["plain", "swiglu", "registers"])
def test_bf16_close_to_fp32(tmp_path, name):
    build(tmp_path, name)
    x = pixels(56, n=4)
    fp32 = mp.DINOv2.from_pretrained(tmp_path).encode(x, normalize=False)
    bf16 = mp.DINOv2.from_pretrained(tmp_path, precision="bf16").encode(x, normalize=False)
    assert cosine(bf16, fp32).min() >= 0.999


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, dtype):
    """Weights stored as F16/BF16 are widened exactly; the reference is the model with the same
    rounded weights in fp32."""
    model = build(tmp_path, "swiglu")
    model.to(getattr(torch, dtype)).save_pretrained(tmp_path, safe_serialization=True)
    model.to(torch.float32)
    x = pixels(35)
    cls, _ = reference(model, x)
    got = mp.DINOv2.from_pretrained(tmp_path).encode(x, normalize=False)
    assert np.abs(got - cls).max() <= 1e-4


def test_transformers5_tensor_names(tmp_path):
    """The same weights under transformers 5's in-memory names (q_proj, gate_proj/up_proj/down_proj)
    and a model prefix, as a Dinov2ForImageClassification-style checkpoint stores them."""
    model = build(tmp_path, "swiglu")
    state = {"dinov2." + k: v.numpy() for k, v in model.state_dict().items()}
    assert any(".gate_proj." in k for k in state) and any(".q_proj." in k for k in state)
    save_file(state, str(tmp_path / "model.safetensors"))
    x = pixels(28)
    cls, _ = reference(model, x)
    assert np.abs(mp.DINOv2.from_pretrained(tmp_path).encode(x, normalize=False) - cls).max() <= 1e-4


def test_images_use_the_model_transform(tmp_path):
    build(tmp_path, "plain")
    dino = mp.DINOv2.from_pretrained(tmp_path, transform=mp.images.Transform(40, 35, (0.5,) * 3, (0.25,) * 3))
    rng = np.random.default_rng(3)
    photos = [rng.integers(0, 256, (50 + 9 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    x = mp.images.preprocess(photos, dino.transform)
    assert x.shape == (3, 3, 35, 35)
    np.testing.assert_array_equal(dino.encode(photos, pooling="mean"), dino.encode(x, pooling="mean"))
    assert mp.DINOv2.from_pretrained(tmp_path).transform == mp.images.PRESETS["dinov2"]
    import transformers  # a preprocessor_config.json, as transformers writes it, takes over the default

    processor_cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    processor_cls(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}).save_pretrained(tmp_path)
    assert mp.DINOv2.from_pretrained(tmp_path).transform.crop_size == (56, 56)
    assert mp.DINOv2.from_pretrained(tmp_path, transform="dinov2").transform == mp.images.PRESETS["dinov2"]


@pytest.mark.slow
def test_dinov2_base_full_size(tmp_path):
    """DINOv2-B/14 as published (518 px positions, 37x37 grid) on 224 px inputs (16x16 grid)."""
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=518, patch_size=14)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    x = pixels(224, n=2)
    cls, mean = reference(model, x)
    dino = mp.DINOv2.from_pretrained(tmp_path)
    got = dino.encode(x, pooling="cls+mean", normalize=False)
    want = np.concatenate([cls, mean], axis=1)
    assert np.abs(got - want).max() <= 1e-4
    assert cosine(got, want).min() >= 0.99999
    bf16 = mp.DINOv2.from_pretrained(tmp_path, precision="bf16").encode(x, normalize=False)
    assert cosine(bf16, got[:, :768]).min() >= 0.999


# ---------------------------------------------------------------- errors


def test_bad_checkpoints(tmp_path):
    build(tmp_path, "registers")
    state = load_file(str(tmp_path / "model.safetensors"))
    name = "embeddings.register_tokens"
    save_file(state | {name: np.zeros((1, 3, 36), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(mp.FormatError, match=rf"'{name}' has shape \(1, 3, 36\), expected \(1, 4, 36\)"):
        mp.DINOv2.from_pretrained(tmp_path)
    name = "encoder.layer.1.layer_scale2.lambda1"
    save_file({k: v for k, v in state.items() if k != name}, str(tmp_path / "model.safetensors"))
    with pytest.raises(mp.FormatError, match=rf"missing tensor '{name}' \(expected shape \(36,\)\)"):
        mp.DINOv2.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "vit"}))
    with pytest.raises(mp.FormatError, match="not a DINOv2 config"):
        mp.DINOv2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"hidden_act": "relu6"}))
    with pytest.raises(mp.FormatError, match="hidden_act 'relu6' is not supported"):
        mp.DINOv2.from_pretrained(tmp_path)


def test_argument_errors(tmp_path):
    build(tmp_path, "plain")
    dino = mp.DINOv2.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pooling must be one of"):
        dino.encode(pixels(35), pooling="max")
    with pytest.raises(ValueError, match=r"pixels must be \(N, 3, S, S\)"):
        dino.encode(np.zeros((2, 3, 35, 28), np.float32))
    with pytest.raises(ValueError, match=r"S >= 7"):
        dino.encode(np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        dino.encode("photo.jpg")
    with pytest.raises(ValueError, match="precision must be"):
        mp.DINOv2.from_pretrained(tmp_path, precision="int8")
    assert dino.encode(np.zeros((0, 3, 35, 35), np.float32), pooling="cls+mean").shape == (0, 72)
    with pytest.raises(ValueError, match="positions must be"):
        dino._vit.encode(pixels(28), positions=np.zeros((16, 36), np.float32))
    with pytest.raises(ValueError, match="interpolated position embeddings"):
        dino._vit.encode(pixels(28))
