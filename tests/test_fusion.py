"""megapairs.fusion against NumPy float64: the weighted sum of several spaces' embeddings with L2
normalisation (as torch.nn.functional.normalize defines it: x / max(||x||, 1e-12)), score-level
fusion, in place and out of place, and the errors for inputs that do not fit together."""

import numpy as np
import pytest

import megapairs as mp


def reference(parts, weights=None, normalize=True):
    parts = [np.asarray(p, np.float64) for p in parts]
    weights = np.ones(len(parts)) if weights is None else np.asarray(weights, np.float64)
    x = sum(w * p for w, p in zip(weights, parts))
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def parts(S, N=37, D=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((N, D)).astype(np.float32) for _ in range(S)]


@pytest.mark.parametrize("S", [1, 2, 3])
@pytest.mark.parametrize("weights", [None, "random"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fuse_matches_numpy(S, weights, normalize):
    x = parts(S)
    w = None if weights is None else np.random.default_rng(S).uniform(-2, 2, S).tolist()
    got = mp.fusion.fuse(x, w, normalize=normalize)
    want = reference(x, w, normalize)
    assert got.dtype == np.float32 and got.shape == x[0].shape
    # S fp32 products summed in fp32: a few ulps of the largest term, relative to the row norm
    scale = sum(abs(wi) for wi in (w or [1.0] * S)) * np.abs(np.stack(x)).max(0)
    if normalize:
        scale = scale / np.linalg.norm(reference(x, w, False), axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(got - want), 4 * S * np.finfo(np.float32).eps * scale + 1e-30)


def test_fuse_composed_query_is_normalised_sum():
    image, text = parts(2, N=200, D=512, seed=3)
    got = mp.fusion.fuse([image, text])
    np.testing.assert_allclose(got, reference([image, text]), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_fuse_in_place_and_stacked():
    x = parts(3, seed=1)
    want = reference(x, [1.0, 0.5, -0.25])
    for a in range(3):
        y = [p.copy() for p in x]
        out = mp.fusion.fuse(y, [1.0, 0.5, -0.25], out=y[a])
        assert out is y[a]
        np.testing.assert_allclose(y[a], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mp.fusion.fuse(np.stack(x), [1.0, 0.5, -0.25]), want, rtol=0, atol=1e-6)


def test_fuse_zero_row_stays_zero_and_converts_dtypes():
    a = np.zeros((2, 4))
    a[1] = [3, 4, 0, 0]
    got = mp.fusion.fuse([a, a.astype(np.float16)])  # float64 and float16 become float32
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(got[1], [0.6, 0.8, 0, 0], atol=1e-7)


def test_fuse_threads_agree():
    x = parts(2, N=3000, D=256, seed=5)
    np.testing.assert_array_equal(mp.fusion.fuse(x, num_threads=1), mp.fusion.fuse(x, num_threads=2))


def test_fuse_scores_matches_numpy():
    rng = np.random.default_rng(7)
    spaces = [rng.uniform(-1, 1, (50, 300)).astype(np.float32) for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    want = reference(spaces, w, normalize=False)
    np.testing.assert_allclose(mp.fusion.fuse_scores(spaces, w), want, rtol=0, atol=3e-7)
    vectors = [s[0] for s in spaces]  # one score per pair, 1-D
    np.testing.assert_allclose(mp.fusion.fuse_scores(vectors, w), want[0], rtol=0, atol=3e-7)
    out = spaces[2].copy()
    mp.fusion.fuse_scores([spaces[0], spaces[1], out], w, out=out)
    np.testing.assert_allclose(out, want, rtol=0, atol=3e-7)


@pytest.mark.parametrize("call, error, match", [
    (lambda a, b: mp.fusion.fuse([a, b[:3]]), ValueError, r"inputs\[1\] has shape \(3, 8\) but inputs\[0\] has \(4, 8\)"),
    (lambda a, b: mp.fusion.fuse([a, b], [1.0]), ValueError, "one number per array"),
    (lambda a, b: mp.fusion.fuse([a, b], [1.0, float("nan")]), ValueError, r"weights\[1\] = nan is not finite"),
    (lambda a, b: mp.fusion.fuse([]), ValueError, "at least one array"),
    (lambda a, b: mp.fusion.fuse(a), ValueError, r"inputs\[0\] must be a 2-D array"),
    (lambda a, b: mp.fusion.fuse("ab"), TypeError, "list of arrays"),
    (lambda a, b: mp.fusion.fuse([a, a.astype(str)]), TypeError, r"inputs\[1\] must be a real numeric array"),
    (lambda a, b: mp.fusion.fuse([a, b], out=np.empty((4, 8), np.float64)), ValueError, "out must be"),
    (lambda a, b: mp.fusion.fuse([a, b], num_threads=-1), ValueError, "num_threads"),
    (lambda a, b: mp.fusion.fuse_scores([a, b.T]), ValueError, r"scores\[1\] has shape"),
    (lambda a, b: mp.fusion.fuse_scores([a, b], out=np.empty(3, np.float32)), ValueError, "out must be"),
])
def test_errors_name_the_argument(call, error, match):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 8)).astype(np.float32)
    with pytest.raises(error, match=match):
        call(a, b)
