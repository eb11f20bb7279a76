"""One call from a retriever and a local benchmark copy to the official metrics.

>>> import megapairs as mp
>>> from megapairs.evaluation import evaluate
>>> clip = mp.CLIP.from_pretrained("BAAI/BGE-VL-base")                         # doctest: +SKIP
>>> evaluate(clip, "fashioniq", "/data/fashionIQ_dataset")                      # doctest: +SKIP
{'dress/R@10': ..., 'dress/R@50': ..., ..., 'R@10': ..., 'R@50': ...}
>>> evaluate(clip, "circo", "/data/CIRCO", submission_path="circo_test.json")   # doctest: +SKIP
{}

The model encodes the gallery (images) and the queries (reference image + text, or text
or image alone); every embedding is L2-normalised, so scores are cosine similarities; the
top-k come from :func:`megapairs.knn.search` (exact, ties to the lower gallery index).
Benchmarks whose queries each carry their own small candidate list (GeneCIS, MMEB) are
scored on that list directly. The metrics are those of :mod:`megapairs.evaluation.metrics`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import knn
from . import datasets as ds
from . import metrics as m
from .submission import write_circo_submission, write_cirr_submission

__all__ = ["BENCHMARKS", "REPORTED_SPLITS", "Embedder", "evaluate"]

logger = logging.getLogger("megapairs")

#: Above this many distinct items to encode, ``progress=None`` shows tqdm bars.
PROGRESS_MIN_ITEMS = 1000

#: The split each benchmark's zero-shot numbers are reported on (the default ``split``).
#: CIRCO test and CIRR test1 labels are hidden: they need ``submission_path``.
REPORTED_SPLITS = {"circo": "test", "cirr": "test1", "fashioniq": "val", "genecis": "test", "mmeb": "test",
                   "mbeir": "test"}

#: Benchmark name -> the keyword options ``evaluate`` passes to its loader.
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "circo": ("template", "check_images"),
    "cirr": ("template", "check_images"),
    "fashioniq": ("categories", "caption_style", "check_images"),
    "genecis": ("tasks", "template", "coco_images", "vg_images", "check_images"),
    "mmeb": ("datasets", "image_root", "image_token", "check_images"),
    "mbeir": ("tasks", "pool", "instruction", "seed", "check_images"),
}

Item = tuple[Any, "str | None"]  # (image path | Crop | (H, W, 3) uint8 array | None, text | None)


# --------------------------------------------------------------------------- encoding


def _materialise(image):
    return image.load() if isinstance(image, ds.Crop) else image


class Embedder:
    """Encode (image, text) items with a retriever into L2-normalised rows.

    Parameters
    ----------
    model : encoder object or callable
        An object with ``encode_image(images)``, ``encode_text(texts)`` and
        ``encode_composed(images, texts)`` (:class:`megapairs.CLIP` and anything shaped like
        it): image-only items go to ``encode_image``, text-only ones to ``encode_text``,
        items with both to ``encode_composed``. Or any callable
        ``model(images, texts) -> (N, E)`` taking two equal-length lists in which a missing
        modality is None. Images are file paths (str) or ``(H, W, 3)`` uint8 arrays
        (GeneCIS attribute crops).
    batch_size : int
        Items per model call.
    progress : bool, optional
        Show a tqdm bar; default when more than ``PROGRESS_MIN_ITEMS`` items are encoded.

    Notes
    -----
    Calling it on a list of items returns ``(N, E)`` float32, one row per item; equal items
    (same image and text) are encoded once.
    """

    def __init__(self, model, batch_size: int = 64, progress: bool | None = None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        methods = all(hasattr(model, name) for name in ("encode_image", "encode_text"))
        if not methods and not callable(model):
            raise TypeError(f"model must have encode_image / encode_text / encode_composed methods or be a callable "
                            f"model(images, texts) -> embeddings, got {type(model).__name__}")
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self._methods = methods

    def _call(self, images: list, texts: list) -> np.ndarray:
        n = len(images)
        if not self._methods:
            return np.asarray(self.model(images, texts))
        out: list = [None] * n
        groups: dict[str, list[int]] = {"image": [], "text": [], "composed": []}
        for i, (img, txt) in enumerate(zip(images, texts)):
            groups["composed" if img is not None and txt is not None else "image" if img is not None else "text"].append(i)
        for kind, idx in groups.items():
            if not idx:
                continue
            if kind == "image":
                emb = self.model.encode_image([images[i] for i in idx])
            elif kind == "text":
                emb = self.model.encode_text([texts[i] for i in idx])
            else:
                if not hasattr(self.model, "encode_composed"):
                    raise TypeError(f"{type(self.model).__name__} has no encode_composed for image + text queries")
                emb = self.model.encode_composed([images[i] for i in idx], [texts[i] for i in idx])
            emb = np.asarray(emb)
            if emb.ndim != 2 or len(emb) != len(idx):
                raise ValueError(f"{type(self.model).__name__}: {kind} encoding of {len(idx)} items returned shape "
                                 f"{emb.shape}")
            for row, i in enumerate(idx):
                out[i] = emb[row]
        return np.stack(out)

    def __call__(self, items: Sequence[Item], desc: str = "encode") -> np.ndarray:
        keys: dict = {}
        unique: list[Item] = []
        where = np.empty(len(items), np.int64)
        for i, (image, text) in enumerate(items):
            if image is None and text is None:
                raise ValueError(f"{desc}: item {i} has neither an image nor a text")
            key = (image if isinstance(image, (str, ds.Crop)) else ("array", i), text)
            if key not in keys:
                keys[key] = len(unique)
                unique.append((image, text))
            where[i] = keys[key]
        show = len(unique) > PROGRESS_MIN_ITEMS if self.progress is None else bool(self.progress)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), desc=desc, unit="item")
        chunks = []
        try:
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start:start + self.batch_size]
                emb = self._call([_materialise(img) for img, _ in chunk], [txt for _, txt in chunk])
                if emb.ndim != 2 or len(emb) != len(chunk) or emb.dtype.kind != "f":
                    raise ValueError(f"{desc}: the model returned {emb.dtype} of shape {emb.shape} for a batch of "
                                     f"{len(chunk)} items; expected a float (N, E) array")
                chunks.append(self._normalise(emb.astype(np.float32), chunk, desc))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if not chunks:
            return np.empty((0, 0), np.float32)
        dims = {c.shape[1] for c in chunks}
        if len(dims) > 1:
            raise ValueError(f"{desc}: the model returned embeddings of different widths {sorted(dims)}")
        return np.concatenate(chunks)[where]

    @staticmethod
    def _normalise(emb: np.ndarray, chunk: list[Item], desc: str) -> np.ndarray:
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            image, text = chunk[int(np.argmax(bad))]
            what = "non-finite" if not np.isfinite(norms[int(np.argmax(bad))]) else "an all-zero"
            name = image.path if isinstance(image, ds.Crop) else image if isinstance(image, str) else "array"
            raise ValueError(f"{desc}: the model returned {what} embedding for image {name!r}, text {text!r}")
        return (emb / norms[:, None]).astype(np.float32)


def _search(queries: np.ndarray, gallery: np.ndarray, k: int, num_threads: int | None) -> np.ndarray:
    k = min(k, len(gallery))
    _, idx = knn.search(queries, gallery, k, num_threads=num_threads)
    return idx


# --------------------------------------------------------------------------- runners


def _circo(embed: Embedder, root, split, submission_path, num_threads, options) -> dict[str, float]:
    data = ds.load_circo(root, split, **options)
    if not data.has_labels and submission_path is None:
        raise ValueError(f"CIRCO {split} ground truths are hidden: pass submission_path= to write the server file, "
                         "or evaluate split='val'")
    gallery = embed([(p, None) for p in data.gallery_paths], "CIRCO gallery")
    queries = embed([(q.reference_path, q.text) for q in data.queries], "CIRCO queries")
    idx = _search(queries, gallery, 50, num_threads)
    predictions = [[data.gallery_ids[j] for j in row] for row in idx]
    out = {}
    if data.has_labels:
        out = m.circo_metrics(predictions, [q.ground_truths for q in data.queries],
                              [q.target_id for q in data.queries],
                              semantic_aspects=[q.semantic_aspects for q in data.queries],
                              query_ids=[q.id for q in data.queries])
    if submission_path is not None:
        k = min(50, len(data.gallery_ids))
        if k < 50:
            logger.warning("CIRCO: the gallery has %d images; the server expects 50 predictions per query", k)
        write_circo_submission(submission_path, {q.id: p for q, p in zip(data.queries, predictions)}, k=k)
    return out


def _member_ranking(query: np.ndarray, gallery: np.ndarray, members: list[str], position: dict[str, int]) -> list[str]:
    """Members by descending float64 score, ties to the lower gallery index (knn.search's order)."""
    idx = np.array([position[x] for x in members])
    scores = gallery[idx].astype(np.float64) @ query.astype(np.float64)
    return [members[i] for i in np.lexsort((idx, -scores))]


def _cirr(embed: Embedder, root, split, submission_path, num_threads, options) -> dict[str, float]:
    data = ds.load_cirr(root, split, **options)
    if not data.has_labels and submission_path is None:
        raise ValueError(f"CIRR {split} targets are hidden: pass submission_path= to write the server files, "
                         "or evaluate split='val'")
    position = {name: i for i, name in enumerate(data.gallery_names)}
    gallery = embed([(p, None) for p in data.gallery_paths], "CIRR gallery")
    queries = embed([(data.gallery_paths[position[q.reference]], q.text) for q in data.queries], "CIRR queries")
    idx = _search(queries, gallery, 51, num_threads)  # 50 left after the reference is removed
    rankings = [[data.gallery_names[j] for j in row] for row in idx]
    members = [_member_ranking(queries[i], gallery, q.members, position) for i, q in enumerate(data.queries)]
    out = {}
    if data.has_labels:
        out = m.cirr_metrics(rankings, [q.reference for q in data.queries], [q.target for q in data.queries],
                             members, query_ids=[q.pair_id for q in data.queries])
    if submission_path is not None:
        k = min(50, len(data.gallery_names) - 1)
        subset_k = min(3, min(len(set(q.members) - {q.reference}) for q in data.queries))
        if k < 50 or subset_k < 3:
            logger.warning("CIRR: only %d gallery / %d member predictions per query; the server expects 50 and 3",
                           k, subset_k)
        write_cirr_submission(submission_path, {q.pair_id: r for q, r in zip(data.queries, rankings)},
                              {q.pair_id: r for q, r in zip(data.queries, members)},
                              references={q.pair_id: q.reference for q in data.queries}, k=k, subset_k=subset_k)
    return out


def _fashioniq(embed: Embedder, root, split, num_threads, options) -> dict[str, float]:
    data = ds.load_fashioniq(root, split, **options)
    if not data.has_labels:
        raise ValueError(f"FashionIQ {split} targets are hidden; evaluate split='val' (what papers report)")
    rankings, targets = {}, {}
    for cat, c in data.categories.items():
        path = dict(zip(c.gallery_names, c.gallery_paths))
        gallery = embed([(p, None) for p in c.gallery_paths], f"FashionIQ {cat} gallery")
        queries = embed([(path[q.candidate], q.text) for q in c.queries], f"FashionIQ {cat} queries")
        idx = _search(queries, gallery, 50, num_threads)  # the reference stays in (official protocol)
        rankings[cat] = [[c.gallery_names[j] for j in row] for row in idx]
        targets[cat] = [q.target for q in c.queries]
    return m.fashioniq_metrics(rankings, targets)


def _genecis(embed: Embedder, root, split, num_threads, options) -> dict[str, float]:
    data = ds.load_genecis(root, **options)
    scores = {}
    for task, queries in data.tasks.items():
        candidates = [c for q in queries for c in q.candidates]
        gallery = embed([(c, None) for c in candidates], f"GeneCIS {task} images")
        composed = embed([(q.reference, q.text) for q in queries], f"GeneCIS {task} queries")
        rows, start = [], 0
        for i, q in enumerate(queries):
            n = len(q.candidates)
            rows.append(gallery[start:start + n].astype(np.float64) @ composed[i].astype(np.float64))
            start += n
        scores[task] = rows
    return m.genecis_metrics(scores)


def _mmeb(embed: Embedder, root, split, num_threads, options) -> dict[str, float]:
    data = ds.load_mmeb(root, **options)
    per_dataset = {}
    for name, rows in data.datasets.items():
        queries = embed([(r.query_image, r.query_text or None) for r in rows], f"MMEB {name} queries")
        items = [(img, txt or None) for r in rows for img, txt in zip(r.candidate_images, r.candidate_texts)]
        cands = embed(items, f"MMEB {name} candidates")
        lists, start = [], 0
        for r in rows:
            lists.append(cands[start:start + len(r.candidate_texts)])
            start += len(r.candidate_texts)
        per_dataset[name] = m.mmeb_precision_at_1(queries, lists, normalize=True)
    out = {f"{name}/P@1": v for name, v in per_dataset.items()}
    out.update(m.mmeb_summary(per_dataset))
    return out


def _mbeir(embed: Embedder, root, split, num_threads, options) -> dict[str, float]:
    options = dict(options)
    tasks = options.pop("tasks", None)
    tasks = list(m.MBEIR_TASKS) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in tasks if t not in m.MBEIR_TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of the M-BEIR tasks {list(m.MBEIR_TASKS)}, got {tasks!r}")
    pool = options.get("pool", "local")
    shared = None
    if pool == "global":
        path = ds.mbeir_pool_path(root, tasks[0], split, "global")
        candidates = ds.load_mbeir_pool(path, root, options.get("check_images", True))
        shared = (candidates, embed([(c.image, c.text) for c in candidates], "M-BEIR global pool"))
    out, reported = {}, {}
    for task in tasks:
        data = ds.load_mbeir(root, task, split, candidates=shared[0] if shared else None, **options)
        pool_emb = shared[1] if shared else embed([(c.image, c.text) for c in data.pool], f"M-BEIR {task} pool")
        queries = embed([(q.image, q.text) for q in data.queries], f"M-BEIR {task} queries")
        ks = (10, 20, 50) if m.MBEIR_TASKS[task][1] == 10 else (1, 5, 10)
        idx = _search(queries, pool_emb, max(ks), num_threads)
        rankings = [[data.pool[j].did for j in row] for row in idx]
        recalls = m.mbeir_metrics(rankings, [data.relevant[q.qid] for q in data.queries], ks,
                                  query_ids=[q.qid for q in data.queries])
        out.update({f"{task}/{key}": value for key, value in recalls.items()})
        reported[task] = recalls
    out["average"] = m.mbeir_summary(reported)["average"]
    return out


# --------------------------------------------------------------------------- public API


def evaluate(
    model: Any,
    benchmark: str,
    root: str | os.PathLike,
    split: str | None = None,
    batch_size: int = 64,
    submission_path: str | os.PathLike | None = None,
    *,
    progress: bool | None = None,
    num_threads: int | None = None,
    **options,
) -> dict[str, float]:
    """Evaluate a retriever on a benchmark from its local copy, scored the official way.

    Parameters
    ----------
    model : megapairs.CLIP, an object with encode_image / encode_text / encode_composed, or a callable
        See :class:`Embedder`. Embeddings are L2-normalised here (cosine scores).
    benchmark : {'circo', 'cirr', 'fashioniq', 'genecis', 'mmeb', 'mbeir'}
    root : path
        The benchmark's local directory (layouts in ``docs/evaluation.md`` and the loaders of
        :mod:`megapairs.evaluation.datasets`).
    split : str, optional
        Default: the split papers report (:data:`REPORTED_SPLITS`): CIRCO ``'test'`` and
        CIRR ``'test1'`` (hidden labels: only ``submission_path`` output), FashionIQ
        ``'val'``, MMEB and M-BEIR ``'test'``. Use ``'val'`` for CIRCO / CIRR scores here.
    batch_size : int
        Items per model call.
    submission_path : path, optional
        CIRCO: write the server's JSON here. CIRR: write the ``recall`` file here and the
        ``recall_subset`` file beside it (``<stem>_subset.json``). Other benchmarks: an error.
    progress : bool, optional
        tqdm bars while encoding; by default only for long runs.
    num_threads : int, optional
        Threads of the kNN search.
    **options
        Passed to the benchmark's loader (:data:`BENCHMARKS` lists them), e.g.
        ``caption_style='mbeir'`` and ``categories=['dress']`` for FashionIQ,
        ``tasks=['cirr_task7']``, ``pool='global'`` and ``instruction=...`` for M-BEIR,
        ``datasets=[...]`` for MMEB, ``template=...`` for the query texts of CIRCO, CIRR and
        GeneCIS, ``check_images=False`` to skip the up-front check that every image exists.

    Returns
    -------
    dict
        Metric name -> value in percent (see :mod:`megapairs.evaluation.metrics`):
        CIRCO ``mAP@{5,10,25,50}``, ``R@k``, ``mAP@10[<aspect>]``; CIRR ``R@{1,5,10,50}``,
        ``R_subset@{1,2,3}``; FashionIQ ``<category>/R@{10,50}`` and their means ``R@10``,
        ``R@50``; GeneCIS ``<task>/R@{1,2,3}`` and the means ``R@k``; MMEB
        ``<dataset>/P@1``, the meta-task, ``IND``/``OOD`` means and ``overall``; M-BEIR
        ``<task>/R@k`` and ``average`` (of each task's reported R@5 or R@10). Empty for a
        hidden-label split (the submission file is the result).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {list(BENCHMARKS)}, got {benchmark!r}")
    unknown = sorted(set(options) - set(BENCHMARKS[benchmark]))
    if unknown:
        raise ValueError(f"{benchmark}: unknown option {unknown[0]!r}; the options are {list(BENCHMARKS[benchmark])}")
    if submission_path is not None and benchmark not in ("circo", "cirr"):
        raise ValueError(f"submission_path: only CIRCO and CIRR have test servers, not {benchmark!r}")
    if benchmark in ("genecis", "mmeb") and split not in (None, "test"):
        raise ValueError(f"{benchmark} has a single evaluation split ('test'), got split={split!r}")
    split = REPORTED_SPLITS[benchmark] if split is None else split
    root = Path(root)
    embed = Embedder(model, batch_size, progress)
    if benchmark == "circo":
        out = _circo(embed, root, split, submission_path, num_threads, options)
    elif benchmark == "cirr":
        out = _cirr(embed, root, split, submission_path, num_threads, options)
    else:
        runner: Callable[..., dict[str, float]] = {"fashioniq": _fashioniq, "genecis": _genecis, "mmeb": _mmeb,
                                                   "mbeir": _mbeir}[benchmark]
        out = runner(embed, root, split, num_threads, options)
    if out:
        logger.info("%s %s: %s", benchmark, split, ", ".join(f"{k} {v:.2f}" for k, v in out.items()
                                                            if "/" not in k and "[" not in k))
    if submission_path is not None:
        logger.info("%s %s: submission written to %s", benchmark, split, submission_path)
    return out
