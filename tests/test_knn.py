"""megapairs.knn against a NumPy float64 brute force (written here) and faiss.IndexFlatIP.

Exactness means: the indices of a float64 brute force over the float32 inputs, ranked by
descending score with ties to the lower index, whichever GEMM precision scored the corpus."""

import numpy as np
import pytest

import megapairs as mp
from megapairs import _core
from reference import knn, unit


def brute_force(q, c, k, lo=-np.inf, hi=np.inf, exclude_self=False):
    """The float64 reference, its scores rounded to float32 as the search returns them."""
    scores, ids = knn(q, c, k, lo, hi, exclude_self)
    return scores.astype(np.float32), ids

def datasets():
    rng = np.random.default_rng(0)
    random = unit(rng.standard_normal((3000, 64)))
    centres = rng.standard_normal((20, 96))
    clustered = unit(centres[rng.integers(0, 20, 2500)] + 0.15 * rng.standard_normal((2500, 96)))
    duplicated = random[rng.integers(0, 300, 2000)]  # many exact duplicates: ties everywhere
    quantised = (rng.integers(-2, 3, (2000, 16))).astype(np.float32)  # integer scores: massive ties
    return {"random": random, "clustered": clustered, "duplicated": duplicated, "quantised": quantised}


DATA = datasets()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("name", list(DATA))
def test_self_join_equals_float64_brute_force(name, precision):
    x = DATA[name]
    want_s, want_i = brute_force(x, x, 10, exclude_self=True)
    got_s, got_i = mp.knn.search(x, x, 10, exclude_self=True, precision=precision)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_queries_against_corpus_and_faiss(precision):
    import faiss

    rng = np.random.default_rng(1)
    corpus = unit(rng.standard_normal((5000, 128)))
    queries = unit(rng.standard_normal((300, 128)))
    got_s, got_i = mp.knn.search(queries, corpus, 50, precision=precision)
    _, want_i = brute_force(queries, corpus, 50)
    np.testing.assert_array_equal(got_i, want_i)
    index = faiss.IndexFlatIP(128)
    index.add(corpus)
    faiss_s, faiss_i = index.search(queries, 50)
    np.testing.assert_array_equal(got_i, faiss_i)  # random data has no near-ties at fp32 resolution
    np.testing.assert_allclose(got_s, faiss_s, atol=1e-5)


def test_adversarial_near_ties_in_bf16():
    """Candidates that a bf16 GEMM cannot tell apart (scores within 1e-4 of each other
    around the k-th) are still ranked exactly."""
    rng = np.random.default_rng(2)
    base = unit(rng.standard_normal((1, 256)))
    noise = unit(rng.standard_normal((4000, 256)))
    corpus = unit(base + 0.5 * noise + 1e-4 * rng.standard_normal((4000, 256)))
    corpus[::7] = unit(base + 0.5 * noise[::7])  # near-duplicates of other rows' directions
    queries = unit(base + 1e-3 * rng.standard_normal((64, 256)))
    for k in (1, 20, 200):
        _, want_i = brute_force(queries, corpus, k)
        _, got_i = mp.knn.search(queries, corpus, k, precision="bf16")
        np.testing.assert_array_equal(got_i, want_i)
    # the approximate path alone is not exact here: that is why rescoring exists
    _, approx_i = mp.knn.search(queries, corpus, 200, precision="bf16", exact=False)
    assert (approx_i != want_i).any()


@pytest.mark.parametrize("shape", [(1, 7, 3, 5), (5, 3, 1, 10), (4, 1, 2, 1), (17, 4097, 33, 3), (2050, 300, 8, 4)])
def test_shapes_and_padding(shape):
    """Q = 1, d = 1, k > M (padding), M and Q not multiples of the blocks."""
    Q, M, d, k = shape
    rng = np.random.default_rng(3)
    q = rng.standard_normal((Q, d)).astype(np.float32)
    c = rng.standard_normal((M, d)).astype(np.float32)
    want_s, want_i = brute_force(q, c, k)
    got_s, got_i = mp.knn.search(q, c, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert got_s.dtype == np.float32 and got_i.dtype == np.int64 and got_s.shape == (Q, k)


def test_band_edges_are_excluded():
    """Scores exactly lo or hi are out; integer data puts many scores exactly on the edges."""
    x = DATA["quantised"]
    for lo, hi in ((2.0, 6.0), (-1.0, 1.0), (0.0, 3.0)):
        want_s, want_i = brute_force(x, x, 15, lo, hi, exclude_self=True)
        got_s, got_i = mp.knn.band(x, x, lo, hi, 15, exclude_self=True)
        np.testing.assert_array_equal(got_i, want_i)
        finite = np.isfinite(got_s)
        assert ((got_s[finite] > lo) & (got_s[finite] < hi)).all()
    unit_x = DATA["clustered"]
    want_s, want_i = brute_force(unit_x, unit_x, 20, 0.8, 0.96, exclude_self=True)
    got_s, got_i = mp.knn.band(unit_x, unit_x, 0.8, 0.96, 20, exclude_self=True)
    np.testing.assert_array_equal(got_i, want_i)


def test_memmapped_corpus(tmp_path):
    x = DATA["clustered"]
    path = tmp_path / "corpus.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    _, want_i = brute_force(x[:100], x, 10)
    _, got_i = mp.knn.search(mm[:100], mm, 10)
    np.testing.assert_array_equal(got_i, want_i)


def test_candidates_stay_few():
    """The error bound is tight enough that rescoring stays a small cost."""
    x = DATA["random"]
    _, _, fp32 = _core.knn_search(x, x, 10, exclude_self=True, precision="fp32")
    _, _, bf16 = _core.knn_search(x, x, 10, exclude_self=True, precision="bf16")
    assert fp32 / len(x) < 12 and bf16 / len(x) < 100


def test_bad_input():
    x = DATA["random"][:50]
    with pytest.raises(ValueError, match="non-finite value at row 3, column 1"):
        bad = x.copy()
        bad[3, 1] = np.nan
        mp.knn.search(bad, x, 5)
    with pytest.raises(ValueError, match="corpus holds a non-finite"):
        bad = x.copy()
        bad[7, 0] = np.inf
        mp.knn.search(x, bad, 5)
    with pytest.raises(ValueError, match="dimension 64 but the corpus has 63"):
        mp.knn.search(x, x[:, :63], 5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        mp.knn.search(x, x, 0)
    with pytest.raises(ValueError, match="must be a float array"):
        mp.knn.search(x.astype(np.int64), x, 3)
    with pytest.raises(ValueError, match="need lo < hi"):
        mp.knn.band(x, x, 0.9, 0.8, 3)
    with pytest.raises(ValueError, match="must be 2-D"):
        mp.knn.search(x[0], x, 3)
    with pytest.raises(ValueError, match="precision"):
        mp.knn.search(x, x, 3, precision="fp16")


@pytest.mark.parametrize("name", list(DATA))
def test_float64_scores_are_the_ranked_doubles(name):
    """float64=True returns the double-precision scores the ranking used: equal to a NumPy
    float64 product (up to its own summation order), and rounding to the float32 scores."""
    x = DATA[name][:800]
    want_s, want_i = knn(x, x, 10, exclude_self=True)
    s64, i64 = mp.knn.search(x, x, 10, exclude_self=True, float64=True)
    s32, i32 = mp.knn.search(x, x, 10, exclude_self=True)
    assert s64.dtype == np.float64
    np.testing.assert_array_equal(i64, want_i)
    np.testing.assert_array_equal(i64, i32)
    np.testing.assert_allclose(s64, want_s, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s64.astype(np.float32), s32)


def _shards(n, cuts):
    edges = [0, *cuts, n]
    return list(zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("name", list(DATA))
def test_merge_of_shards_equals_one_search(name):
    """Searching row shards of a corpus and merging equals one search of the whole corpus,
    indices and scores identical, also on massively tied data (duplicates, integer vectors)
    and for a self-join (each shard asked for k + 1, the query's own row excluded)."""
    x = DATA[name]
    k = 12
    q = x[:700]
    shards = _shards(len(x), [1, 333, 334, 1200])  # uneven, one of a single row
    want = mp.knn.search(q, x, k)
    parts = [(s, np.where(i >= 0, i + a, -1)) for a, b in shards
             for s, i in [mp.knn.search(q, x[a:b], k, float64=True)]]
    got = mp.knn.merge(parts, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])

    want = mp.knn.search(q, x, k, exclude_self=True)
    parts = [(s, np.where(i >= 0, i + a, -1)) for a, b in shards
             for s, i in [mp.knn.search(q, x[a:b], k + 1, float64=True)]]
    got = mp.knn.merge(parts, k, exclude=np.arange(len(q)))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])

    lo, hi = (0.0, 3.0) if name == "quantised" else (0.1, 0.6)
    want = mp.knn.band(q, x, lo, hi, k, exclude_self=True)
    parts = [(s, np.where(i >= 0, i + a, -1)) for a, b in shards
             for s, i in [mp.knn.band(q, x[a:b], lo, hi, k + 1, float64=True)]]
    got = mp.knn.merge(parts, k, exclude=np.arange(len(q)))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_merge_pads_and_refuses_bad_parts():
    s = np.array([[0.5, -np.inf]]), np.array([[3, -1]])
    got_s, got_i = mp.knn.merge([s], 3)
    np.testing.assert_array_equal(got_i, [[3, -1, -1]])
    assert got_s[0, 0] == np.float32(0.5) and np.isneginf(got_s[0, 1:]).all()
    with pytest.raises(ValueError, match="no parts"):
        mp.knn.merge([], 3)
    with pytest.raises(ValueError, match="part 1 has 2 queries, part 0 has 1"):
        mp.knn.merge([s, (np.zeros((2, 2)), np.zeros((2, 2), np.int64))], 3)
    with pytest.raises(ValueError, match="part 0 has scores of shape"):
        mp.knn.merge([(np.zeros((1, 2)), np.zeros((1, 3), np.int64))], 3)
    with pytest.raises(ValueError, match="k must be a positive int"):
        mp.knn.merge([s], 0)
    with pytest.raises(ValueError, match="exclude has 2 entries for 1 queries"):
        mp.knn.merge([s], 2, exclude=[0, 1])
    with pytest.raises(ValueError, match="float64 scores need exact=True"):
        mp.knn.search(DATA["random"][:5], DATA["random"][:5], 2, exact=False, float64=True)
