"""Retrieval metrics of the zero-shot CIR and universal-retrieval benchmarks, computed the
way each benchmark's official evaluation code computes them.

>>> from megapairs.evaluation import metrics
>>> metrics.average_precision_at_k([7, 3, 9], ground_truths=[9, 7], k=5)   # (1/1 + 2/3) / min(2, 5)
0.8333333333333333
>>> metrics.circo_metrics([[7, 3, 9]], [[9, 7]], [9], ks=(5,))            # doctest: +SKIP
{'mAP@5': 83.33..., 'R@5': 100.0}

Every function takes what the official scorer takes (ranked id lists, or per-query score
rows) and returns percentages (0-100), as papers report them. Each function's docstring
states the official convention it follows; ``docs/evaluation.md`` collects them, with the
sources. The classic mistakes these conventions avoid (an AP denominator of #gt or #hits,
a CIRR reference left in the ranking, FashionIQ categories pooled instead of averaged, ...)
are what ``tests/test_evaluation_metrics.py`` checks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Hashable, Mapping, Sequence

import numpy as np

__all__ = [
    "CIRCO_SEMANTIC_ASPECTS",
    "GENECIS_TASKS",
    "MBEIR_TASKS",
    "MMEB_DATASETS",
    "average_precision_at_k",
    "circo_metrics",
    "cirr_metrics",
    "fashioniq_metrics",
    "genecis_metrics",
    "genecis_target_rank",
    "hit_rate",
    "mbeir_metrics",
    "mbeir_summary",
    "mmeb_precision_at_1",
    "mmeb_summary",
]

#: The nine semantic aspects CIRCO annotates (``semantic_aspects`` of the val records).
CIRCO_SEMANTIC_ASPECTS = (
    "cardinality", "addition", "negation", "direct_addressing", "compare_change",
    "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint",
)

#: The four GeneCIS tasks, in the order the paper's tables use.
GENECIS_TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")

#: MMEB (v1 protocol): dataset -> (meta-task, "IND" or "OOD"). IND are the 20 datasets of
#: the MMEB training set; the overall score is the unweighted mean over all 36 datasets.
MMEB_DATASETS: dict[str, tuple[str, str]] = {
    **{name: ("classification", "IND") for name in
       ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397")},
    **{name: ("classification", "OOD") for name in
       ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")},
    **{name: ("vqa", "IND") for name in
       ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W")},
    **{name: ("vqa", "OOD") for name in ("ScienceQA", "VizWiz", "GQA", "TextVQA")},
    **{name: ("retrieval", "IND") for name in
       ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA")},
    **{name: ("retrieval", "OOD") for name in ("OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ")},
    "MSCOCO": ("grounding", "IND"),
    **{name: ("grounding", "OOD") for name in ("RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")},
}

#: M-BEIR's 16 test sets: name -> (task id, the k of the Recall@k the papers report).
#: UniIR computes R@{1,5,10}, and R@{10,20,50} for Fashion200K and FashionIQ.
MBEIR_TASKS: dict[str, tuple[int, int]] = {
    "visualnews_task0": (0, 5), "mscoco_task0": (0, 5), "fashion200k_task0": (0, 10),
    "webqa_task1": (1, 5), "edis_task2": (2, 5), "webqa_task2": (2, 5),
    "visualnews_task3": (3, 5), "mscoco_task3": (3, 5), "fashion200k_task3": (3, 10),
    "nights_task4": (4, 5), "oven_task6": (6, 5), "infoseek_task6": (6, 5),
    "fashioniq_task7": (7, 10), "cirr_task7": (7, 5), "oven_task8": (8, 5), "infoseek_task8": (8, 5),
}


# --------------------------------------------------------------------------- validation


def _ks(ks, name: str = "ks") -> tuple[int, ...]:
    try:
        out = tuple(ks)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {ks!r}") from None
    if not out:
        raise ValueError(f"{name} must not be empty")
    for k in out:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{name} must hold positive ints, got {k!r}")
    return tuple(int(k) for k in out)


def _same_length(**sequences) -> int:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("one entry per query is needed, got " + ", ".join(f"{len_} {name}" for name, len_ in
                                                                          lengths.items()))
    return next(iter(lengths.values()))


def _label(query_ids, i: int) -> str:
    return f"query {query_ids[i]!r}" if query_ids is not None else f"query {i}"


def _percent(hits: Sequence[float]) -> float:
    return 100.0 * float(np.mean(hits)) if len(hits) else math.nan


def _unique_ranking(ranking, where: str) -> list:
    ranking = list(ranking)
    if len(set(ranking)) != len(ranking):
        seen, dup = set(), None
        for x in ranking:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise ValueError(f"{where}: the ranking lists {dup!r} more than once (predictions must be unique)")
    return ranking


# --------------------------------------------------------------------------- CIRCO


def average_precision_at_k(predictions: Sequence[Hashable], ground_truths: Collection[Hashable], k: int) -> float:
    """CIRCO's AP@k of one query, a fraction in [0, 1].

    ``AP@k = sum_{i <= k, hit_i} precision@i / min(#ground truths, k)`` with
    ``precision@i = #hits in the first i / i``. The denominator is ``min(#gt, k)``: neither
    ``#gt`` (which caps AP below 1 when ``#gt > k``) nor ``#hits`` (which rewards one lucky hit with
    1.0). A ranking shorter than k is scored as it is.

    Parameters
    ----------
    predictions : sequence of ids
        Ranked predictions, best first; must be unique.
    ground_truths : collection of ids
        The query's ground truths (non-empty).
    k : int
    """
    (k,) = _ks((k,), "k")
    gts = set(ground_truths)
    if not gts:
        raise ValueError("average_precision_at_k: the query has no ground truth")
    hits, total = 0, 0.0
    for i, p in enumerate(_unique_ranking(predictions, "average_precision_at_k")[:k], start=1):
        if p in gts:
            hits += 1
            total += hits / i
    return total / min(len(gts), k)


def circo_metrics(
    predictions: Sequence[Sequence[Hashable]],
    ground_truths: Sequence[Collection[Hashable]],
    targets: Sequence[Hashable],
    ks: Sequence[int] = (5, 10, 25, 50),
    semantic_aspects: Sequence[Sequence[str]] | None = None,
    query_ids: Sequence | None = None,
) -> dict[str, float]:
    """CIRCO's metrics as ``src/evaluation.py::compute_metrics`` (the server's code) computes them.

    Parameters
    ----------
    predictions : Q sequences of image ids
        The ranked top-k (50 for the server) per query; duplicates are a ValueError.
    ground_truths : Q collections of image ids
        ``gt_img_ids`` per query.
    targets : Q image ids
        ``target_img_id`` per query (the image the caption was written for).
    ks : sequence of int
        Cut-offs; the server reports 5, 10, 25, 50.
    semantic_aspects : Q sequences of str, optional
        Each query's aspects; adds the mean AP@10 over the queries of each aspect.
    query_ids : Q ids, optional
        Named in error messages.

    Returns
    -------
    dict
        ``mAP@k`` (mean of :func:`average_precision_at_k`), ``R@k`` (fraction of queries
        whose *target* is in the top k; the other ground truths do not count), and with
        ``semantic_aspects`` ``mAP@10[<aspect>]`` for each aspect present, all in percent.
    """
    ks = _ks(ks)
    n = _same_length(predictions=predictions, ground_truths=ground_truths, targets=targets)
    if semantic_aspects is not None:
        _same_length(predictions=predictions, semantic_aspects=semantic_aspects)
    aps = {k: [] for k in ks}
    recalls = {k: [] for k in ks}
    by_aspect: dict[str, list[float]] = {}
    for i in range(n):
        where = _label(query_ids, i)
        ranking = _unique_ranking(predictions[i], where)
        gts = set(ground_truths[i])
        if not gts:
            raise ValueError(f"{where}: no ground truth")
        for k in ks:
            aps[k].append(average_precision_at_k(ranking, gts, k))
            recalls[k].append(float(targets[i] in ranking[:k]))
        if semantic_aspects is not None:
            ap10 = average_precision_at_k(ranking, gts, 10)
            for aspect in semantic_aspects[i]:
                by_aspect.setdefault(aspect, []).append(ap10)
    out = {f"mAP@{k}": _percent(aps[k]) for k in ks}
    out.update({f"R@{k}": _percent(recalls[k]) for k in ks})
    order = [a for a in CIRCO_SEMANTIC_ASPECTS if a in by_aspect] + sorted(set(by_aspect) - set(CIRCO_SEMANTIC_ASPECTS))
    out.update({f"mAP@10[{a}]": _percent(by_aspect[a]) for a in order})
    return out


# --------------------------------------------------------------------------- CIRR


def _without(ranking, item, where: str) -> list:
    ranking = _unique_ranking(ranking, where)
    return [x for x in ranking if x != item]


def cirr_metrics(
    rankings: Sequence[Sequence[Hashable]],
    references: Sequence[Hashable],
    targets: Sequence[Hashable],
    member_rankings: Sequence[Sequence[Hashable]] | None = None,
    ks: Sequence[int] = (1, 5, 10, 50),
    subset_ks: Sequence[int] = (1, 2, 3),
    query_ids: Sequence | None = None,
) -> dict[str, float]:
    """CIRR's Recall@K and Recall_subset@K (the test server's and SEARLE's convention).

    The reference image is removed from each ranking (exactly that one image) before the
    cut-offs apply: ``R@K = mean 1[target_hard in ranking_without_reference[:K]]``.
    ``R_subset@K`` does the same on the ranking of the query's group (``img_set.members``),
    so it ranks the 5 members other than the reference.

    Parameters
    ----------
    rankings : Q sequences of image names
        Gallery ranked by descending score, best first, at least ``max(ks) + 1`` long (or the
        whole gallery); the reference may be in it.
    references, targets : Q image names
        ``reference`` and ``target_hard`` per query.
    member_rankings : Q sequences of image names, optional
        Each query's ``img_set.members`` ranked by descending score (reference included or
        not); adds ``R_subset@K``.
    ks, subset_ks : sequence of int
    query_ids : Q ids, optional
        Named in error messages (``pairid``).

    Returns
    -------
    dict
        ``R@K`` for ``ks`` and ``R_subset@K`` for ``subset_ks``, in percent.
    """
    ks, subset_ks = _ks(ks), _ks(subset_ks, "subset_ks")
    n = _same_length(rankings=rankings, references=references, targets=targets)
    if member_rankings is not None:
        _same_length(rankings=rankings, member_rankings=member_rankings)
    recalls = {k: [] for k in ks}
    subset = {k: [] for k in subset_ks}
    for i in range(n):
        where = _label(query_ids, i)
        ranking = _without(rankings[i], references[i], where)
        for k in ks:
            recalls[k].append(float(targets[i] in ranking[:k]))
        if member_rankings is not None:
            members = _without(member_rankings[i], references[i], where + " (group members)")
            if targets[i] not in members:
                raise ValueError(f"{where}: the target {targets[i]!r} is not among the group members {members}")
            for k in subset_ks:
                subset[k].append(float(targets[i] in members[:k]))
    out = {f"R@{k}": _percent(recalls[k]) for k in ks}
    if member_rankings is not None:
        out.update({f"R_subset@{k}": _percent(subset[k]) for k in subset_ks})
    return out


# --------------------------------------------------------------------------- FashionIQ


def hit_rate(
    rankings: Sequence[Sequence[Hashable]],
    relevant: Sequence[Hashable | Collection[Hashable]],
    ks: Sequence[int],
    query_ids: Sequence | None = None,
) -> dict[str, float]:
    """``R@k = mean_q 1[any relevant item of q in its top k]``, in percent.

    Parameters
    ----------
    rankings : Q sequences of ids
        Ranked predictions, best first (unique).
    relevant : Q ids or Q collections of ids
        One target (str / int) or a set of relevant ids per query. With several, one hit is
        enough: this is the hit rate CLIP, BLIP and UniIR call Recall@k, not the fraction
        of relevant items found.
    ks : sequence of int
    """
    ks = _ks(ks)
    n = _same_length(rankings=rankings, relevant=relevant)
    hits = {k: [] for k in ks}
    for i in range(n):
        ranking = _unique_ranking(rankings[i], _label(query_ids, i))
        rel = relevant[i]
        rel = {rel} if isinstance(rel, (str, bytes, numbers.Number)) else set(rel)
        for k in ks:
            hits[k].append(float(any(x in rel for x in ranking[:k])))
    return {f"R@{k}": _percent(hits[k]) for k in ks}


def fashioniq_metrics(
    rankings: Mapping[str, Sequence[Sequence[Hashable]]],
    targets: Mapping[str, Sequence[Hashable]],
    ks: Sequence[int] = (10, 50),
) -> dict[str, float]:
    """FashionIQ's Recall@K per category and their unweighted mean (SEARLE, MegaPairs).

    Each category is ranked against its own gallery, with the reference (candidate) image
    left in; ``<category>/R@K = mean_q 1[target in top K]``, and the reported ``R@K`` is the
    mean of the category values, not a pool of all queries.

    Parameters
    ----------
    rankings : mapping category -> Q_c ranked lists of image names
    targets : mapping category -> Q_c target names
    ks : sequence of int

    Returns
    -------
    dict
        ``<category>/R@K`` for each category and K, and ``R@K``: their mean, in percent.
    """
    ks = _ks(ks)
    if set(rankings) != set(targets):
        raise ValueError(f"rankings have categories {sorted(rankings)} but targets have {sorted(targets)}")
    if not rankings:
        raise ValueError("fashioniq_metrics needs at least one category")
    out, per_k = {}, {k: [] for k in ks}
    for category in rankings:
        recalls = hit_rate(rankings[category], targets[category], ks)
        for k in ks:
            out[f"{category}/R@{k}"] = recalls[f"R@{k}"]
            per_k[k].append(recalls[f"R@{k}"])
    out.update({f"R@{k}": float(np.mean(per_k[k])) for k in ks})
    return out


# --------------------------------------------------------------------------- GeneCIS


def genecis_target_rank(scores, target: int = 0) -> int:
    """0-based rank of candidate ``target`` among ``scores`` (higher is better).

    Tie rule: candidates are ordered by descending score, equal scores by ascending index
    (a stable sort). With the GeneCIS layout, target first, a tie with the target counts
    for the target. The official code uses ``torch.sort``, which does not promise an order
    for ties; this rule is the deterministic choice, and agrees with MMEB's ``argmax``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not 0 <= target < len(s):
        raise ValueError(f"scores must be 1-D with the target index inside, got shape {s.shape}, target {target}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold a non-finite value at index {int(np.argmin(np.isfinite(s)))}")
    t = s[target]
    return int(np.count_nonzero(s > t) + np.count_nonzero(s[:target] == t))


def genecis_metrics(
    scores: Mapping[str, Sequence[Sequence[float]]],
    ks: Sequence[int] = (1, 2, 3),
    target_index: int = 0,
) -> dict[str, float]:
    """GeneCIS Recall@K per task and the mean over tasks.

    Each query ranks its own gallery, ``[target] + distractors`` (target at index 0, as the
    official loaders build it); ``<task>/R@K = mean_q 1[rank(target) < K]`` with the tie
    rule of :func:`genecis_target_rank`. The headline ``R@1`` is the unweighted mean of the
    task values (not a pool of all queries).

    Parameters
    ----------
    scores : mapping task -> Q_t score rows
        Per query, the similarity of the query to each gallery image (rows may differ in
        length).
    ks : sequence of int
    target_index : int
        Where the target sits in each row.

    Returns
    -------
    dict
        ``<task>/R@K`` and ``R@K`` (mean over the tasks given), in percent.
    """
    ks = _ks(ks)
    if not scores:
        raise ValueError("genecis_metrics needs at least one task")
    out, per_k = {}, {k: [] for k in ks}
    for task, rows in scores.items():
        if len(rows) == 0:
            raise ValueError(f"task {task!r} has no queries")
        ranks = []
        for i, row in enumerate(rows):
            try:
                ranks.append(genecis_target_rank(row, target_index))
            except ValueError as exc:
                raise ValueError(f"task {task!r}, query {i}: {exc}") from None
        for k in ks:
            value = _percent([float(r < k) for r in ranks])
            out[f"{task}/R@{k}"] = value
            per_k[k].append(value)
    out.update({f"R@{k}": float(np.mean(per_k[k])) for k in ks})
    return out


# --------------------------------------------------------------------------- MMEB


def mmeb_precision_at_1(query_embeddings, candidate_embeddings, normalize: bool = True) -> float:
    """MMEB's Precision@1 (VLM2Vec v1 ``eval.py`` + ``get_pred``), in percent.

    Per query row, the candidates are scored by cosine similarity (``normalize=True``, the
    protocol MegaPairs reports) or by raw inner product, and the prediction is
    ``np.argmax(scores)``: the *first* maximum, so a candidate that ties with the positive
    (index 0, always) does not take the hit away. The score is the fraction of rows whose
    prediction is index 0.

    Parameters
    ----------
    query_embeddings : (Q, E) float array
    candidate_embeddings : (Q, C, E) array or Q arrays of shape (C_q, E)
        Each row's candidates, the positive first.
    normalize : bool
        Cosine (True) or raw dot product (False).
    """
    q = np.asarray(query_embeddings, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"query_embeddings must be (Q, E), got shape {q.shape}")
    if len(candidate_embeddings) != len(q):
        raise ValueError(f"{len(q)} queries but {len(candidate_embeddings)} candidate lists")
    if len(q) == 0:
        raise ValueError("mmeb_precision_at_1 needs at least one query")
    hits = 0
    for i, cands in enumerate(candidate_embeddings):
        c = np.asarray(cands, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != q.shape[1] or len(c) == 0:
            raise ValueError(f"row {i}: candidates must be (C, {q.shape[1]}) with C >= 1, got shape {c.shape}")
        scores = c @ q[i]
        if normalize:
            norms = np.linalg.norm(c, axis=1) * np.linalg.norm(q[i])
            if (norms == 0).any():
                raise ValueError(f"row {i}: a zero vector has no cosine similarity")
            scores = scores / norms
        if not np.isfinite(scores).all():
            raise ValueError(f"row {i}: non-finite scores")
        hits += int(np.argmax(scores) == 0)
    return 100.0 * hits / len(q)


def mmeb_summary(scores: Mapping[str, float]) -> dict[str, float]:
    """The MMEB aggregate scores from per-dataset Precision@1 values.

    ``overall`` is the unweighted mean over the datasets given (all 36 for the reported
    number), not the mean of the four meta-task means; ``classification``, ``vqa``,
    ``retrieval``, ``grounding``, ``IND`` and ``OOD`` are means over their datasets among
    those given. Dataset names are those of :data:`MMEB_DATASETS`.
    """
    if not scores:
        raise ValueError("mmeb_summary needs at least one dataset score")
    unknown = [name for name in scores if name not in MMEB_DATASETS]
    if unknown:
        raise ValueError(f"unknown MMEB dataset {unknown[0]!r}; the datasets are {list(MMEB_DATASETS)}")
    groups: dict[str, list[float]] = {}
    for name, value in scores.items():
        meta, dist = MMEB_DATASETS[name]
        groups.setdefault(meta, []).append(float(value))
        groups.setdefault(dist, []).append(float(value))
    out = {g: float(np.mean(groups[g])) for g in ("classification", "vqa", "retrieval", "grounding", "IND", "OOD")
           if g in groups}
    out["overall"] = float(np.mean([float(v) for v in scores.values()]))
    return out


# --------------------------------------------------------------------------- M-BEIR


def mbeir_metrics(
    rankings: Sequence[Sequence[Hashable]],
    relevant: Sequence[Collection[Hashable]],
    ks: Sequence[int] = (1, 5, 10),
    query_ids: Sequence | None = None,
) -> dict[str, float]:
    """M-BEIR Recall@k as UniIR's ``compute_recall_at_k`` computes it: per query,
    1 if any candidate with relevance > 0 in the qrels is in the top k, else 0 (a hit
    rate); a query without relevant candidates scores 0. In percent.

    Parameters
    ----------
    rankings : Q ranked lists of candidate ids (``did``)
    relevant : Q collections of ``did`` (the qrels with relevance > 0, see
        :func:`megapairs.evaluation.read_qrels`)
    ks : sequence of int
        UniIR uses 1, 5, 10, and 10, 20, 50 for Fashion200K and FashionIQ.
    """
    return hit_rate(rankings, [set(r) for r in relevant], ks, query_ids)


def mbeir_summary(task_recalls: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The reported M-BEIR score per task (R@5, or R@10 for Fashion200K and FashionIQ, see
    :data:`MBEIR_TASKS`) and their unweighted mean, ``average``.

    Parameters
    ----------
    task_recalls : mapping task name -> {"R@k": value}
    """
    if not task_recalls:
        raise ValueError("mbeir_summary needs at least one task")
    out = {}
    for task, recalls in task_recalls.items():
        if task not in MBEIR_TASKS:
            raise ValueError(f"unknown M-BEIR task {task!r}; the tasks are {list(MBEIR_TASKS)}")
        key = f"R@{MBEIR_TASKS[task][1]}"
        if key not in recalls:
            raise ValueError(f"task {task!r} reports {key}, which is missing from {sorted(recalls)}")
        out[task] = float(recalls[key])
    out["average"] = float(np.mean(list(out.values())))
    return out
