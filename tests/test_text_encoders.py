"""Text towers against transformers: megapairs.CLIP.encode_text / encode_composed on seeded
random-initialised CLIP models (HF and OpenCLIP layouts), and the BERT encoder of
megapairs.SentenceEncoder on random BertModels and on the real all-MiniLM-L6-v2 weights
against sentence-transformers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

import megapairs as mp
from megapairs import _core
from megapairs._checkpoints import bert_aliases, bert_config
from reference import cosine, features, minilm_dir, open_clip_text_state, open_clip_vision_state

SOT, EOT = 49406, 49407

TEXT = {
    "base-like": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=24),
    "odd-head-dim": dict(hidden_size=60, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
                         projection_dim=20),  # head dim 15
    "gelu-one-head": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=1,
                          projection_dim=16, hidden_act="gelu"),
}


def token_ids(n, context=77, seed=0, pad=0, vocab=49406):
    """open_clip-style rows: sot, 0..context-2 random tokens, eot, then `pad` (open_clip pads
    with 0, the HF tokenizer with eot); one row fills the whole context."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, context), pad, np.int64)
    for i in range(n):
        length = context - 2 if i == 0 else int(rng.integers(0, min(30, context - 2) + 1))
        ids[i, 0] = SOT
        ids[i, 1:1 + length] = rng.integers(0, vocab, length)
        ids[i, 1 + length] = EOT
    return ids


def save_clip(tmp_path, text, seed=0, eos_token_id=2):
    """A CLIPModel with a small vision tower and the given text tower."""
    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    projection = text["projection_dim"]
    text = {k: v for k, v in text.items() if k != "projection_dim"} | {"eos_token_id": eos_token_id}
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def text_reference(model, ids):
    with torch.inference_mode():
        return features(model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()


@pytest.mark.parametrize("name", TEXT)
def test_clip_text_fp32_matches_transformers(tmp_path, name):
    model = save_clip(tmp_path, TEXT[name])
    ids = token_ids(6)
    want = text_reference(model, ids)
    clip = mp.CLIP.from_pretrained(tmp_path)
    got = clip.encode_text(ids, normalize=False)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    assert cosine(got, want).min() >= 0.99999
    np.testing.assert_allclose(clip.encode_text(ids), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("eos_token_id, pad", [(2, 0), (2, EOT), (EOT, EOT), (EOT, 0)])
def test_clip_text_pools_where_transformers_does(tmp_path, eos_token_id, pad):
    """Legacy configs (eos id 2) pool at argmax(ids), newer ones at the first eos token; with
    HF-style eos padding or open_clip-style zero padding the answer is the same."""
    model = save_clip(tmp_path, TEXT["base-like"], eos_token_id=eos_token_id)
    ids = token_ids(5, pad=pad, seed=4)
    want = text_reference(model, ids)
    got = mp.CLIP.from_pretrained(tmp_path).encode_text(ids, normalize=False)
    assert np.abs(got - want).max() <= 1e-4


def test_clip_text_shorter_context_and_batches(tmp_path):
    model = save_clip(tmp_path, TEXT["base-like"])
    ids = token_ids(9, context=20, seed=2)
    want = text_reference(model, ids)
    clip = mp.CLIP.from_pretrained(tmp_path)
    for batch_size in (1, 4, 100):
        got = clip.encode_text(ids, normalize=False, batch_size=batch_size)
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("name", ["base-like", "odd-head-dim"])
def test_clip_text_bf16_close_to_fp32(tmp_path, name):
    save_clip(tmp_path, TEXT[name])
    ids = token_ids(8, seed=3)
    fp32 = mp.CLIP.from_pretrained(tmp_path).encode_text(ids, normalize=False)
    bf16 = mp.CLIP.from_pretrained(tmp_path, precision="bf16").encode_text(ids, normalize=False)
    assert cosine(bf16, fp32).min() >= 0.999


def test_clip_text_with_projection_checkpoint(tmp_path):
    torch.manual_seed(5)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT["base-like"])).eval()
    model.save_pretrained(tmp_path / "text", safe_serialization=True)
    ids = token_ids(4, seed=5)
    with torch.inference_mode():
        want = model(input_ids=torch.from_numpy(ids)).text_embeds.numpy()
    # The text tower alone has no image tower: it loads through the C core directly.
    from megapairs._checkpoints import clip_text_hf_aliases, clip_text_hf_config
    from megapairs._streaming import pack, pool_positions
    from megapairs.weights import SafetensorsFile

    config = clip_text_hf_config(json.loads((tmp_path / "text" / "config.json").read_text()), tmp_path)
    with SafetensorsFile(tmp_path / "text") as f:
        text = _core.Text(config, f.readers, clip_text_hf_aliases())
    packed, offsets = pack(ids, pool_positions(ids, config["eos_token_id"]) + 1)
    got = text.encode(packed, offsets)
    assert np.abs(got - want).max() <= 1e-4


def test_open_clip_text_layout(tmp_path):
    from safetensors.numpy import save_file

    text = TEXT["odd-head-dim"]
    model = save_clip(tmp_path / "hf", text)
    state = open_clip_vision_state(model) | open_clip_text_state(model)
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    v = model.config.vision_config
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": text["projection_dim"], "quick_gelu": True,
        "vision_cfg": dict(image_size=v.image_size, layers=v.num_hidden_layers, width=v.hidden_size,
                           patch_size=v.patch_size, head_width=v.hidden_size // v.num_attention_heads,
                           mlp_ratio=v.intermediate_size / v.hidden_size),
        "text_cfg": dict(context_length=77, vocab_size=49408, width=text["hidden_size"],
                         heads=text["num_attention_heads"], layers=text["num_hidden_layers"],
                         mlp_ratio=text["intermediate_size"] / text["hidden_size"]),
    }}))
    ids = token_ids(5, seed=6)
    want = text_reference(model, ids)
    got = mp.CLIP.from_pretrained(tmp_path).encode_text(ids, normalize=False)
    assert np.abs(got - want).max() <= 1e-4


def test_encode_composed_matches_transformers(tmp_path):
    """BGE-VL's query: normalise(get_image_features + get_text_features)."""
    model = save_clip(tmp_path, TEXT["base-like"])
    ids = token_ids(4, seed=7)
    pixels = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        image = features(model.get_image_features(pixel_values=torch.from_numpy(pixels))).numpy()
    composed = image + text_reference(model, ids)
    want = composed / np.linalg.norm(composed, axis=1, keepdims=True)
    got = mp.CLIP.from_pretrained(tmp_path).encode_composed(pixels, ids)
    assert np.abs(got - want).max() <= 1e-5
    with pytest.raises(ValueError, match="one text per image"):
        mp.CLIP.from_pretrained(tmp_path).encode_composed(pixels, ids[:3])


def test_clip_encode_texts_matches_transformers_pipeline(tmp_path, hf_clip_dir):
    """Texts end to end on a Hugging Face folder (vocab.json + merges.txt beside the weights):
    transformers' CLIPTokenizer padded to 77 and get_text_features, against encode_text(texts)."""
    import shutil

    from transformers import CLIPTokenizer

    model = save_clip(tmp_path, TEXT["base-like"], eos_token_id=EOT)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_clip_dir / name, tmp_path / name)
    texts = ["A dog on a beach.", "a red car parked next to an old building at night", "Café ☕ in Zürich",
             "", "word " * 100]
    ids = CLIPTokenizer.from_pretrained(str(tmp_path))(texts, padding="max_length", max_length=77,
                                                         truncation=True, return_tensors="np")["input_ids"]
    want = text_reference(model, ids)
    clip = mp.CLIP.from_pretrained(tmp_path)
    got = clip.encode_text(texts, normalize=False)
    assert np.abs(got - want).max() <= 1e-4
    ours = clip.tokenize(texts)  # open_clip's padding (0) after the end token, transformers' is the end token
    for row, theirs in zip(ours, ids):
        end = int(np.argmax(theirs == EOT)) + 1
        np.testing.assert_array_equal(row[:end], theirs[:end])


def test_clip_text_errors(tmp_path):
    save_clip(tmp_path, TEXT["gelu-one-head"])
    clip = mp.CLIP.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"1 <= T <= 77"):
        clip.encode_text(np.zeros((2, 78), np.int64))
    bad = token_ids(2)
    bad[1, 3] = 49408
    with pytest.raises(ValueError, match="sequence 1, token 3: id 49408 is outside the vocabulary"):
        clip.encode_text(bad)
    bad[1, 3] = -1
    with pytest.raises(ValueError, match="id -1 is outside"):
        clip.encode_text(bad)
    with pytest.raises(TypeError, match="wrap a single text"):
        clip.encode_text("a photo")
    with pytest.raises(ValueError, match="batch_size"):
        clip.encode_text(token_ids(2), batch_size=0)
    assert clip.encode_text(np.zeros((0, 77), np.int64)).shape == (0, 16)
    with pytest.raises(TypeError, match="token ids must be integers"):
        clip.encode_text(np.zeros((2, 77), np.float32))
    ids = token_ids(3)
    np.testing.assert_array_equal(clip.encode_text(torch.from_numpy(ids)), clip.encode_text(ids))


def test_vision_only_checkpoint_has_no_text(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16,
                                                   projection_dim=16)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no text tower"):
        mp.CLIP.from_pretrained(tmp_path).encode_text(token_ids(1))


# --------------------------------------------------------------------------- BERT core

BERT = {
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=500, max_position_embeddings=64),
    "odd-head-dim": dict(hidden_size=60, intermediate_size=90, num_hidden_layers=3, num_attention_heads=4,
                         vocab_size=300, max_position_embeddings=40, type_vocab_size=3),
}


def save_bert(tmp_path, seed=0, **config):
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def bert_core(path):
    from megapairs.weights import SafetensorsFile

    config = bert_config(json.loads((path / "config.json").read_text()), path)
    with SafetensorsFile(path) as f:
        return _core.Text(config, f.readers, bert_aliases(f.keys())), config


def bert_batch(n, T, vocab, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[T], rng.integers(1, T + 1, n - 1)])
    ids = rng.integers(0, vocab, (n, T))
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask, lengths


def bert_reference(model, ids, mask, types=None):
    with torch.inference_mode():
        kwargs = {} if types is None else {"token_type_ids": torch.from_numpy(types)}
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       **kwargs).last_hidden_state.double().numpy()
    m = mask[:, :, None]
    return (hidden * m).sum(1) / m.sum(1), hidden[:, 0]


@pytest.mark.parametrize("name", BERT)
def test_bert_fp32_matches_transformers(tmp_path, name):
    config = BERT[name]
    model = save_bert(tmp_path, **config)
    text, _ = bert_core(tmp_path)
    ids, mask, lengths = bert_batch(7, config["max_position_embeddings"], config["vocab_size"])
    mean, cls = bert_reference(model, ids, mask)
    packed = ids[mask.astype(bool)]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    got = text.encode(packed, offsets, pooling="mean")
    assert np.abs(got - mean).max() <= 1e-4
    assert cosine(got, mean).min() >= 0.99999
    assert np.abs(text.encode(packed, offsets, pooling="cls") - cls).max() <= 1e-4
    types = np.random.default_rng(1).integers(0, config.get("type_vocab_size", 2), ids.shape) * mask
    mean, _ = bert_reference(model, ids, mask, types)
    got = text.encode(packed, offsets, token_types=types[mask.astype(bool)], pooling="mean")
    assert np.abs(got - mean).max() <= 1e-4
    bf16 = text.encode(packed, offsets, token_types=types[mask.astype(bool)], pooling="mean", precision="bf16")
    assert cosine(bf16, mean).min() >= 0.999


def test_bert_core_errors(tmp_path):
    save_bert(tmp_path, **BERT["small"])
    text, _ = bert_core(tmp_path)
    with pytest.raises(ValueError, match="sequence 1 has 65 tokens; the model takes 1 to 64"):
        text.encode(np.zeros(66, np.int64), np.array([0, 1, 66]), pooling="mean")
    with pytest.raises(ValueError, match="sequence 0 has 0 tokens"):
        text.encode(np.zeros(2, np.int64), np.array([0, 0, 2]), pooling="mean")
    with pytest.raises(ValueError, match="nondecreasing"):
        text.encode(np.zeros(2, np.int64), np.array([0, 3, 2]), pooling="mean")
    with pytest.raises(ValueError, match="token type 2 is outside"):
        text.encode(np.zeros(2, np.int64), np.array([0, 2]), token_types=np.array([0, 2]), pooling="mean")
    with pytest.raises(ValueError, match="pooling 'last' is not available"):
        text.encode(np.zeros(2, np.int64), np.array([0, 2]))
    with pytest.raises(TypeError, match="ids must be a 1-D integer array"):
        text.encode(np.zeros(2, np.float32), np.array([0, 2]), pooling="mean")


def test_bert_rejects_other_architectures(tmp_path):
    with pytest.raises(mp.FormatError, match="model_type 'roberta' is not supported"):
        bert_config({"model_type": "roberta"}, tmp_path / "config.json")


# --------------------------------------------------------------------------- real sentence encoder

STAMPS = Path("/usr/share/tuxpaint/stamps")  # Debian tuxpaint-stamps-default: captions in ~100 languages


def stamp_sentences(limit):
    """Real captions: the English line and every translation of each tuxpaint stamp, plus long
    texts (several captions joined) that sentence-transformers truncates at 256 tokens."""
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: install the Debian package tuxpaint-stamps-default (make system-deps)")
    lines = []
    for path in sorted(STAMPS.rglob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            text = line.split("=", 1)[1] if ".utf8=" in line[:16] else line
            if text.strip():
                lines.append(text.strip())
    rng = np.random.default_rng(0)
    picked = [lines[i] for i in rng.choice(len(lines), size=min(limit, len(lines)), replace=False)]
    picked += [" ".join(rng.choice(lines, 60)) for _ in range(20)]  # longer than 256 tokens
    return picked


def test_sentence_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    folder = minilm_dir()
    texts = stamp_sentences(1200)
    want = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=64, convert_to_numpy=True)
    model = mp.SentenceEncoder.from_pretrained(folder)
    assert model.max_seq_length == 256 and model.normalize and model.pooling == "mean"
    got = model.encode(texts)
    assert got.shape == want.shape == (len(texts), 384)
    assert cosine(got, want).min() >= 0.99999
    assert np.abs(got - want).max() <= 1e-4
    bf16 = mp.SentenceEncoder.from_pretrained(folder, precision="bf16").encode(texts[:200])
    assert cosine(bf16, want[:200]).min() >= 0.999


def test_sentence_encoder_finds_related_captions():
    """Real weights give real similarities: each caption's nearest other caption shares its
    stamp folder far more often than chance."""
    folder = minilm_dir()
    captions, groups = [], []
    for path in sorted(STAMPS.rglob("*.txt")):
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
        if first:
            captions.append(first)
            groups.append(path.parent)
    emb = mp.SentenceEncoder.from_pretrained(folder).encode(captions)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    same = np.mean([groups[i] == groups[j] for i, j in enumerate(nearest)])
    chance = np.mean([np.mean([g == h for h in groups]) for g in groups])
    assert same > 10 * chance and same > 0.3


def test_sentence_encoder_errors(tmp_path):
    model = mp.SentenceEncoder.from_pretrained(minilm_dir())
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        model.encode(["a", 3])
    with pytest.raises(TypeError, match="wrap a single text"):
        model.encode("a sentence")
    assert model.encode([]).shape == (0, 384)
    empty = model.encode(["", "   "])  # [CLS] [SEP] only: finite, as sentence-transformers gives
    assert np.isfinite(empty).all()
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Dense"}]))
    with pytest.raises(mp.FormatError, match="module type 'x.Dense' is not supported"):
        mp.SentenceEncoder.from_pretrained(tmp_path)


def test_one_model_from_many_threads(tmp_path):
    """The C handles keep one activation arena each: concurrent calls on one model are
    serialised by the binding and give the single-threaded answers."""
    from concurrent.futures import ThreadPoolExecutor

    save_clip(tmp_path, TEXT["base-like"])
    clip = mp.CLIP.from_pretrained(tmp_path)
    batches = [token_ids(5 + i, seed=i) for i in range(8)]
    want = [clip.encode_text(b) for b in batches]
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want_image = clip.encode_image(pixels)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(clip.encode_text, batches * 3))
        images = list(pool.map(lambda _: clip.encode_image(pixels), range(6)))
    for got, expected in zip(texts, want * 3):
        np.testing.assert_array_equal(got, expected)
    for got in images:
        np.testing.assert_array_equal(got, want_image)
