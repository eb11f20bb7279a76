"""megapairs.evaluation.metrics against values worked out by hand (the arithmetic is in the
comments) and against straightforward re-implementations of the official formulas written
here. Each classic mistake gets a fixture where the wrong convention gives another number:
the AP denominator (#gt / #hits instead of min(#gt, k)), CIRCO recall over all ground
truths, the CIRR reference left in the ranking, FashionIQ categories and GeneCIS tasks
pooled instead of averaged, ranking ties, cosine vs raw dot product, relevance-0 qrels,
recall as a fraction instead of a hit rate."""

import numpy as np
import pytest

import megapairs as mp
from megapairs.evaluation import metrics as m
from megapairs.evaluation import read_qrels

# --------------------------------------------------------------------------- CIRCO

# Query A: 6 ground truths, hits at ranks 1, 3, 6.   Query B: 2 ground truths, hits at ranks 1, 6.
PRED_A = [1, 90, 2, 91, 92, 3, 93, 94, 95, 96]
GTS_A = [6, 1, 2, 3, 4, 5]          # target_img_id = gt_img_ids[0] = 6, not retrieved
PRED_B = [7, 80, 81, 82, 83, 8, 84, 85, 86, 87]
GTS_B = [8, 7]                       # target 8, at rank 6


def test_circo_ap_denominator_is_min_of_gt_and_k():
    # A@5: hits at 1 and 3 -> precisions 1/1 + 2/3 = 5/3; min(6, 5) = 5 -> 1/3
    #      (#gt: 5/3 / 6 = 0.2778; #hits: 5/3 / 2 = 0.8333)
    assert m.average_precision_at_k(PRED_A, GTS_A, 5) == pytest.approx(1 / 3)
    # B@5: hit at 1 -> 1; min(2, 5) = 2 -> 1/2   (#hits: 1/1 = 1; k: 1/5)
    assert m.average_precision_at_k(PRED_B, GTS_B, 5) == pytest.approx(1 / 2)
    out = m.circo_metrics([PRED_A, PRED_B], [GTS_A, GTS_B], [6, 8], ks=(5, 10))
    # mAP@5 = (1/3 + 1/2) / 2 = 5/12 = 41.667 %
    assert out["mAP@5"] == pytest.approx(100 * 5 / 12)
    assert out["mAP@5"] != pytest.approx(100 * ((5 / 3) / 6 + 1 / 2) / 2)   # #gt denominator: 38.89
    assert out["mAP@5"] != pytest.approx(100 * ((5 / 3) / 2 + 1) / 2)       # #hits denominator: 91.67
    # A@10: 1 + 2/3 + 3/6 = 13/6, / min(6, 10) = 6 -> 13/36;  B@10: 1 + 2/6 = 4/3, / 2 -> 2/3
    assert out["mAP@10"] == pytest.approx(100 * (13 / 36 + 2 / 3) / 2)


def test_circo_recall_counts_the_target_only():
    out = m.circo_metrics([PRED_A, PRED_B], [GTS_A, GTS_B], [6, 8], ks=(5, 10))
    # A's target 6 is not retrieved; B's target 8 is at rank 6. Both queries have another
    # ground truth at rank 1, so "any ground truth in the top 5" would give 100 %.
    assert out["R@5"] == 0.0
    assert out["R@10"] == pytest.approx(50.0)


def test_circo_short_ranking_keeps_the_denominator():
    # one prediction, a hit; 3 ground truths: 1/1 / min(3, 5) = 1/3 (not 1/#hits = 1)
    assert m.average_precision_at_k([1], [1, 2, 3], 5) == pytest.approx(1 / 3)


def test_circo_rejects_duplicate_predictions():
    with pytest.raises(ValueError, match=r"query 'q7'.*lists 5 more than once"):
        m.circo_metrics([[5, 6, 5]], [[5]], [5], ks=(5,), query_ids=["q7"])
    with pytest.raises(ValueError, match="no ground truth"):
        m.average_precision_at_k([1], [], 5)


def test_circo_semantic_aspects_average_ap10_per_aspect():
    out = m.circo_metrics([PRED_A, PRED_B], [GTS_A, GTS_B], [6, 8], ks=(5,),
                          semantic_aspects=[["cardinality"], ["cardinality", "negation"]])
    # AP@10: A 13/36, B 2/3 (above)
    assert out["mAP@10[cardinality]"] == pytest.approx(100 * (13 / 36 + 2 / 3) / 2)
    assert out["mAP@10[negation]"] == pytest.approx(100 * 2 / 3)
    assert "mAP@10[viewpoint]" not in out


def official_circo(predictions, gts, target, ranks):
    """CIRCO's src/evaluation.py formula, re-derived: isin, cumsum * labels / position."""
    predictions = np.array(predictions)
    labels = np.isin(predictions, gts)
    precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
    aps = {k: np.sum(precisions[:k]) / min(len(gts), k) for k in ranks}
    recalls = {k: float(np.sum(predictions[:k] == target)) for k in ranks}
    return aps, recalls


def test_circo_matches_the_official_formula_on_random_rankings():
    rng = np.random.default_rng(0)
    preds, gts, targets = [], [], []
    for _ in range(60):
        g = rng.choice(200, size=int(rng.integers(1, 15)), replace=False)
        preds.append(list(rng.choice(200, size=50, replace=False)))
        gts.append(list(g))
        targets.append(int(g[0]))
    ranks = (5, 10, 25, 50)
    want_ap = {k: [] for k in ranks}
    want_r = {k: [] for k in ranks}
    for p, g, t in zip(preds, gts, targets):
        aps, recalls = official_circo(p, g, t, ranks)
        for k in ranks:
            want_ap[k].append(aps[k])
            want_r[k].append(recalls[k])
    out = m.circo_metrics(preds, gts, targets, ks=ranks)
    for k in ranks:
        assert out[f"mAP@{k}"] == pytest.approx(100 * np.mean(want_ap[k]), abs=1e-10)
        assert out[f"R@{k}"] == pytest.approx(100 * np.mean(want_r[k]), abs=1e-10)


# --------------------------------------------------------------------------- CIRR

RANK_1 = ["ref1", "a", "b", "c", "d", "t1", "e"]      # target at index 5, reference at 0
RANK_2 = ["x", "t2", "ref2", "y"]
MEMBERS_1 = ["ref1", "m1", "t1", "m2", "m4", "m5"]    # ranked members, reference first
MEMBERS_2 = ["t2", "ref2", "n1", "n2", "n3", "n4"]


def test_cirr_removes_the_reference_before_the_cut_offs():
    out = m.cirr_metrics([RANK_1, RANK_2], ["ref1", "ref2"], ["t1", "t2"], [MEMBERS_1, MEMBERS_2])
    # query 1 without ref1: [a, b, c, d, t1] -> target at rank 5 -> R@5 hit (left in: rank 6, miss)
    # query 2 without ref2: [x, t2, y]       -> rank 2
    assert out["R@1"] == 0.0
    assert out["R@5"] == pytest.approx(100.0)      # reference left in: 50
    assert out["R@10"] == out["R@50"] == pytest.approx(100.0)
    # subset 1 without ref1: [m1, t1, m2, m4, m5] -> rank 2 (left in: rank 3)
    # subset 2 without ref2: [t2, n1, ...]        -> rank 1
    assert out["R_subset@1"] == pytest.approx(50.0)
    assert out["R_subset@2"] == pytest.approx(100.0)  # reference left in: 50
    assert out["R_subset@3"] == pytest.approx(100.0)


def test_cirr_removes_only_the_reference():
    # another group member ranked first is a real competitor: R@1 must stay a miss
    out = m.cirr_metrics([["m1", "t", "ref"]], ["ref"], ["t"], ks=(1, 2))
    assert out == {"R@1": 0.0, "R@2": 100.0}


def test_cirr_errors():
    with pytest.raises(ValueError, match="one entry per query"):
        m.cirr_metrics([RANK_1], ["ref1", "ref2"], ["t1"])
    with pytest.raises(ValueError, match=r"query 12060.*not among the group members"):
        m.cirr_metrics([RANK_1], ["ref1"], ["t1"], [["ref1", "m1"]], query_ids=[12060])


# --------------------------------------------------------------------------- FashionIQ


def test_fashioniq_averages_categories_instead_of_pooling():
    rankings = {"dress": [["t0", "x"]],                                  # 1 query, hit
                "shirt": [["x", "t1"], ["x", "t2"], ["x", "t3"]]}        # 3 queries, no hit at 1
    targets = {"dress": ["t0"], "shirt": ["t1", "t2", "t3"]}
    out = m.fashioniq_metrics(rankings, targets, ks=(1, 2))
    assert out["dress/R@1"] == 100.0 and out["shirt/R@1"] == 0.0
    # mean of categories (100 + 0) / 2 = 50; pooling queries would give 1/4 = 25
    assert out["R@1"] == pytest.approx(50.0)
    assert out["R@2"] == pytest.approx(100.0)


def test_fashioniq_category_mismatch():
    with pytest.raises(ValueError, match="categories"):
        m.fashioniq_metrics({"dress": [["a"]]}, {"shirt": ["a"]})


# --------------------------------------------------------------------------- GeneCIS


def test_genecis_tie_with_the_target_counts_for_the_target():
    # target (index 0) ties with a distractor: stable order by index puts the target first
    assert m.genecis_target_rank([0.5, 0.5, 0.2]) == 0
    # a larger distractor, then a tie after it: rank 1
    assert m.genecis_target_rank([0.4, 0.6, 0.4, 0.1]) == 1
    # the same rule for a target elsewhere: ties with lower indices come first
    assert m.genecis_target_rank([0.5, 0.5], target=1) == 1
    out = m.genecis_metrics({"change_object": [[0.5, 0.5, 0.2]]}, ks=(1,))
    assert out["change_object/R@1"] == 100.0  # "the target loses ties" would give 0


def test_genecis_averages_tasks_instead_of_pooling():
    scores = {
        "focus_object": [[0.9, 0.1, 0.2]],                                    # 1 query, hit
        "change_object": [[0.9, 0.1], [0.1, 0.9], [0.2, 0.3, 0.1]],           # 3 queries, 1 hit
    }
    out = m.genecis_metrics(scores, ks=(1, 2))
    assert out["focus_object/R@1"] == 100.0
    assert out["change_object/R@1"] == pytest.approx(100 / 3)
    # mean over tasks (100 + 33.33) / 2 = 66.67; pooling the 4 queries: 2/4 = 50
    assert out["R@1"] == pytest.approx((100 + 100 / 3) / 2)
    assert out["R@2"] == pytest.approx(100.0)


def test_genecis_errors():
    with pytest.raises(ValueError, match=r"task 'focus_object', query 0: .*non-finite"):
        m.genecis_metrics({"focus_object": [[np.nan, 0.1]]})
    with pytest.raises(ValueError, match="no queries"):
        m.genecis_metrics({"focus_object": []})


# --------------------------------------------------------------------------- MMEB


def test_mmeb_uses_cosine_not_the_raw_dot_product():
    q = np.array([[1.0, 0.0]])
    cands = [np.array([[1.0, 0.0], [3.0, 3.0]])]
    # cosine: positive 1.0, negative 3/sqrt(18) = 0.707 -> hit; raw dot: 1 vs 3 -> miss
    assert m.mmeb_precision_at_1(q, cands) == 100.0
    assert m.mmeb_precision_at_1(q, cands, normalize=False) == 0.0


def test_mmeb_tie_with_the_positive_counts_as_correct():
    # candidate 2 is the positive's duplicate (scaled: the same cosine): argmax takes index 0
    q = np.array([[1.0, 1.0], [0.0, 1.0]])
    cands = [np.array([[1.0, 1.0], [1.0, -1.0], [2.0, 2.0]]),   # tie -> hit
             np.array([[1.0, 0.0], [0.0, 1.0]])]                 # negative wins -> miss
    assert m.mmeb_precision_at_1(q, cands) == pytest.approx(50.0)


def test_mmeb_overall_is_the_mean_over_datasets():
    scores = {"ImageNet-1K": 60.0, "Place365": 40.0, "CIRR": 30.0}
    out = m.mmeb_summary(scores)
    # overall (60 + 40 + 30) / 3 = 43.33; the mean of the meta-tasks (50 + 30) / 2 = 40 is not it
    assert out["overall"] == pytest.approx(130 / 3)
    assert out["classification"] == pytest.approx(50.0)
    assert out["retrieval"] == pytest.approx(30.0)
    assert out["IND"] == pytest.approx(45.0) and out["OOD"] == pytest.approx(40.0)
    assert "vqa" not in out
    # the paper's check: (47.2*10 + 18.4*10 + 56.5*12 + 62.2*4) / 36 = 43.97 (reported 44.0)
    meta = {"classification": 47.2, "vqa": 18.4, "retrieval": 56.5, "grounding": 62.2}
    full = {name: meta[task] for name, (task, _) in m.MMEB_DATASETS.items()}
    assert len(full) == 36
    assert m.mmeb_summary(full)["overall"] == pytest.approx((47.2 * 10 + 18.4 * 10 + 56.5 * 12 + 62.2 * 4) / 36)
    with pytest.raises(ValueError, match="unknown MMEB dataset 'CIRCO'"):
        m.mmeb_summary({"CIRCO": 1.0})


def test_mmeb_errors():
    with pytest.raises(ValueError, match="row 0: a zero vector"):
        m.mmeb_precision_at_1([[1.0, 0.0]], [[[0.0, 0.0]]])
    with pytest.raises(ValueError, match="row 0: candidates must be"):
        m.mmeb_precision_at_1([[1.0, 0.0]], [[[1.0, 0.0, 0.0]]])


# --------------------------------------------------------------------------- M-BEIR

QRELS = [
    "9:1 0 9:5 1 0",
    "9:1 0 9:7 0 0",      # relevance 0: not relevant
    "9:2 0 9:8 1 0",
    "9:2 0 9:9 2 0",
]


def test_mbeir_qrels_skip_relevance_zero(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("\n".join(QRELS) + "\n")
    relevant, task_of = read_qrels(path)
    assert relevant == {"9:1": ["9:5"], "9:2": ["9:8", "9:9"]}
    assert task_of == {"9:1": "0", "9:2": "0"}
    rankings = [["9:7", "9:1", "9:2", "9:3", "9:4", "9:6", "9:5"],              # relevant 9:5 at rank 7
                ["9:9", "9:10", "9:11", "9:12", "9:13", "9:14", "9:8"]]          # 9:9 at 1, 9:8 at 7
    out = m.mbeir_metrics(rankings, [relevant["9:1"], relevant["9:2"]], ks=(1, 5, 10))
    # counting the relevance-0 line, query 1 would hit at rank 1: R@1 = 100 instead of 50
    assert out["R@1"] == pytest.approx(50.0)
    # hit rate: query 2 has one of its two positives in the top 5 -> 1 (the fraction would be
    # 1/2, giving (0 + 0.5) / 2 = 25 %)
    assert out["R@5"] == pytest.approx(50.0)
    assert out["R@10"] == pytest.approx(100.0)


def test_mbeir_query_without_relevant_candidates_scores_zero():
    assert m.mbeir_metrics([["a"]], [[]], ks=(1,)) == {"R@1": 0.0}


def test_mbeir_reports_r10_where_uniir_does():
    recalls = {"fashioniq_task7": {"R@10": 40.0, "R@20": 55.0, "R@50": 70.0},
               "cirr_task7": {"R@1": 20.0, "R@5": 60.0, "R@10": 80.0}}
    out = m.mbeir_summary(recalls)
    # FashionIQ reports R@10 (40), CIRR R@5 (60): (40 + 60) / 2 = 50 (R@10 for both: 60)
    assert out == {"fashioniq_task7": 40.0, "cirr_task7": 60.0, "average": 50.0}
    with pytest.raises(ValueError, match="reports R@5"):
        m.mbeir_summary({"cirr_task7": {"R@10": 1.0}})


def test_read_qrels_errors(tmp_path):
    path = tmp_path / "bad_qrels.txt"
    path.write_text("9:1 0 9:5 1 0\n9:1 0 9:6 1\n")
    with pytest.raises(mp.FormatError, match=r"bad_qrels.txt: line 2: expected 'qid 0 did relevance task_id'"):
        read_qrels(path)
    path.write_text("9:1 0 9:5 high 0\n")
    with pytest.raises(ValueError, match=r"line 1: relevance 'high'"):
        read_qrels(path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_qrels(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- arguments


def test_argument_checks():
    with pytest.raises(ValueError, match="positive ints"):
        m.hit_rate([["a"]], ["a"], ks=(0,))
    with pytest.raises(ValueError, match="must not be empty"):
        m.hit_rate([["a"]], ["a"], ks=())
    assert m.hit_rate([["a", "b"]], ["b"], ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0}
