"""The heavy calls from 4 Python threads at once (the core releases the GIL in each): the
encoders on one shared handle and on separate handles, exact kNN, the fused loss, JPEG
decoding and preprocessing, the tokenizers. Every result must equal the same call made
serially, and nothing may hang (each call has a deadline).

A model handle used from several threads works: its calls take turns on the handle's lock
(its activation arena is reused between calls), while separate handles run in parallel."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import megapairs as mp
from reference import minilm_dir

THREADS = 4
DEADLINE = 300  # seconds per call: far beyond any of these, so a timeout means a hang


def run_concurrently(calls):
    """Runs every zero-argument callable in `calls` on THREADS threads at once; the results
    in order."""
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result(timeout=DEADLINE) for f in futures]


def assert_all_equal(got, want):
    for g, w in zip(got, want, strict=True):
        if isinstance(w, tuple):
            for a, b in zip(g, w, strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def photos():
    paths = sorted(Path("/usr/share/backgrounds/mate").rglob("*.jpg"))[:4]
    if len(paths) < 4:
        pytest.fail("Debian mate-backgrounds is missing (make system-deps)")
    return [p.read_bytes() for p in paths]


def test_encoders_on_shared_and_separate_handles(tiny_models, photos):
    shared = mp.CLIP.from_pretrained(tiny_models["clip"])
    want = [shared.encode_image(photos[i:i + 1], num_threads=1) for i in range(4)]
    got = run_concurrently([lambda i=i: shared.encode_image(photos[i:i + 1], num_threads=1) for i in range(4)])
    assert_all_equal(got, want)
    separate = [mp.CLIP.from_pretrained(tiny_models["clip"]) for _ in range(4)]
    got = run_concurrently([lambda i=i: separate[i].encode_image(photos[i:i + 1], num_threads=1) for i in range(4)])
    assert_all_equal(got, want)

    dino = mp.DINOv2.from_pretrained(tiny_models["dino"])
    want = [dino.encode(photos[i:i + 1], num_threads=1) for i in range(4)]
    got = run_concurrently([lambda i=i: dino.encode(photos[i:i + 1], num_threads=1) for i in range(4)])
    assert_all_equal(got, want)


def test_sentence_encoder_and_tokenizers():
    texts = [[f"a photo of {n} {thing}" for n in range(12)] for thing in ("dogs", "cats", "boats", "trees")]
    model = mp.SentenceEncoder.from_pretrained(minilm_dir())
    want = [model.encode(t, num_threads=1) for t in texts]
    got = run_concurrently([lambda t=t: model.encode(t, num_threads=1) for t in texts])
    assert_all_equal(got, want)
    tokenizer = model.tokenizer
    want = [tokenizer(t) for t in texts]
    got = run_concurrently([lambda t=t: tokenizer(t) for t in texts])
    for g, w in zip(got, want, strict=True):
        for key in w:
            np.testing.assert_array_equal(g[key], w[key])


def test_knn_and_loss():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3000, 64)).astype(np.float32) for _ in range(4)]
    want = [mp.knn.search(x, x, 10, exclude_self=True, num_threads=1) for x in xs]
    got = run_concurrently([lambda x=x: mp.knn.search(x, x, 10, exclude_self=True, num_threads=1) for x in xs])
    assert_all_equal(got, want)

    qs = [rng.standard_normal((512, 32)).astype(np.float32) for _ in range(4)]
    cs = [rng.standard_normal((1024, 32)).astype(np.float32) for _ in range(4)]

    def loss(i):
        out = mp.loss.infonce(qs[i], cs[i], 0.05, group_size=2, return_grad=True, num_threads=1)
        return np.float64(out.loss), out.dq, out.dc

    want = [loss(i) for i in range(4)]
    got = run_concurrently([lambda i=i: loss(i) for i in range(4)])
    assert_all_equal(got, want)


def test_decode_and_preprocess(photos):
    want = [mp.images.preprocess([p], "dinov2") for p in photos]
    got = run_concurrently([lambda p=p: mp.images.preprocess([p], "dinov2") for p in photos])
    assert_all_equal(got, want)
    want = [mp.images.decode(p) for p in photos]
    got = run_concurrently([lambda p=p: mp.images.decode(p) for p in photos])
    assert_all_equal(got, want)
