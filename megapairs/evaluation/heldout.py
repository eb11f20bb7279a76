"""Composed retrieval on the held-out mined pairs of a pipeline output folder.

``megapairs train`` keeps a seeded fraction of the *query images* (``train.holdout``) out of
training. Here each held-out record becomes one query per instruction: the query image plus
the instruction must retrieve the record's target among every embedded image of the corpus.
The query image itself is taken out of its ranking, as CIRR does, and the scores are CIRR's
Recall@K (:func:`megapairs.evaluation.metrics.cirr_metrics`).

On the demo's corpus this is the ``tuxpaint`` task of ``megapairs eval``; it works on any
output folder. The model may be

* ``None``: the frozen embeddings composed without training, normalise(x + t) (the
  untrained adapter: the baseline training must beat);
* an adapter folder that ``megapairs train`` wrote (``OUT/train/model``), read with NumPy;
* a CLIP checkpoint (a fine-tune from ``train.model = "clip"``, or any CLIP): images and
  composed queries are encoded by :class:`megapairs.CLIP`.

>>> from megapairs.evaluation.heldout import evaluate_heldout
>>> evaluate_heldout("out")                                   # doctest: +SKIP
{'R@1': ..., 'R@5': ..., 'R@10': ...}
>>> evaluate_heldout("out", "out/train/model")                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import knn
from .metrics import cirr_metrics

__all__ = ["HELDOUT_KS", "evaluate_heldout", "heldout_queries"]

logger = logging.getLogger("megapairs")

HELDOUT_KS = (1, 5, 10)


def heldout_queries(out: str | os.PathLike, holdout: float, seed: int) -> list[tuple[str, str, str]]:
    """``(query image, instruction, target image)`` for every instruction of every held-out record."""
    from ..training.data import read_dataset, split_records

    _, held = split_records(read_dataset(out), holdout, seed)
    if not held:
        raise ValueError(f"no held-out records in {out} (train.holdout = {holdout}): set train.holdout > 0 "
                         "and run megapairs train again")
    return [(r["q_img"], text, r["t_img"]) for r in held for text in r["q_text"]]


def _rows(keys: Sequence[str], index: dict[str, int], what: str) -> np.ndarray:
    missing = [k for k in keys if k not in index]
    if missing:
        raise ValueError(f"{what} {missing[0]!r} has no embedding ({len(missing)} such images): the dataset and the "
                         "embeddings come from different runs; run megapairs build again")
    return np.array([index[k] for k in keys], dtype=np.int64)


def _adapter_scores(out: Path, cfg, adapter_dir, queries, num_threads):
    """(query rows, gallery rows, gallery keys) through the adapter (identity when None)."""
    from ..pipeline.layout import Output
    from ..training.adapter_io import AdapterWeights, read_adapter
    from ..training.data import image_table, instruction_model, text_encoder

    if adapter_dir is None:
        space = cfg.space(cfg.train.space) if cfg.train.space else cfg.spaces[0]
        space_name, text_model, adapter = space.name, instruction_model(cfg), None
    else:
        adapter = read_adapter(adapter_dir)
        space_name, text_model = adapter.config.get("space"), adapter.config.get("text_model")
        if not space_name or not text_model:
            raise ValueError(f"{adapter_dir}: adapter.json names no space or text_model")
    table, keys = image_table(Output(out), space_name)
    index = {k: i for i, k in enumerate(keys)}
    texts = sorted({q[1] for q in queries})
    text_rows = {t: i for i, t in enumerate(texts)}
    t_emb = text_encoder(text_model, cfg.space(space_name).precision, num_threads)(texts)
    if adapter is None:
        adapter = AdapterWeights({}, np.eye(table.shape[1], dtype=np.float32),
                                 np.eye(table.shape[1], t_emb.shape[1], dtype=np.float32))
    q_rows = _rows([q[0] for q in queries], index, "query image")
    gallery = adapter.embed(table)
    q = adapter.embed(table[q_rows], t_emb[[text_rows[q[1]] for q in queries]])
    return q, gallery, keys


def _clip_scores(out: Path, model, queries, num_threads, progress):
    from ..encoders import CLIP
    from ..pipeline.layout import Output
    from ..pipeline.stages import _manifest_corpus, read_manifest

    clip = model if isinstance(model, CLIP) else CLIP.from_pretrained(model)
    kind, root = _manifest_corpus(Output(out))
    if kind == "shards":
        raise ValueError("evaluating a CLIP on held-out pairs reads images from a folder or listing corpus, "
                         "not shards")
    manifest = read_manifest(Output(out)).to_pydict()
    keys = [k for k, s in zip(manifest["key"], manifest["status"]) if s == "ok"]
    gallery = clip.encode_image([str(root / k) for k in keys], num_threads=num_threads, show_progress_bar=progress)
    q = clip.encode_composed([str(root / q[0]) for q in queries], [q[1] for q in queries], num_threads=num_threads)
    return q, gallery, keys


def evaluate_heldout(out: str | os.PathLike, model=None, *, ks: Sequence[int] = HELDOUT_KS,
                     num_threads: int | None = None, progress: bool | None = None) -> dict[str, float]:
    """Recall@K (percent) of composed retrieval on the held-out pairs of ``out``.

    Parameters
    ----------
    out : path
        A pipeline output folder with ``dataset/`` and (for the adapter and the baseline)
        the embeddings of the adapter's space.
    model : None, path, or megapairs.CLIP
        None: the untrained baseline; a folder holding ``adapter.json``: a trained adapter
        (its own held-out split and text encoder are used); any other folder or a hub id:
        a CLIP checkpoint.
    ks : sequence of int
        The cut-offs.
    """
    from ..pipeline.stages import resolve_config
    from ..training.adapter_io import is_adapter, read_config

    out = Path(out)
    cfg = resolve_config(out, save=False)
    holdout, seed = cfg.train.holdout, cfg.train.seed
    adapter = model is None or (isinstance(model, (str, os.PathLike)) and is_adapter(model))
    if adapter and model is not None:
        meta = read_config(model)
        holdout, seed = meta.get("holdout", holdout), meta.get("seed", seed)
    queries = heldout_queries(out, holdout, seed)
    if adapter:
        q, gallery, keys = _adapter_scores(out, cfg, model, queries, num_threads)
    else:
        q, gallery, keys = _clip_scores(out, model, queries, num_threads, progress)
    k = min(len(keys), max(ks) + 1)  # + 1: the query image is dropped from its own ranking
    _, idx = knn.search(q, gallery, k=k, precision="fp32", num_threads=num_threads)
    rankings = [[keys[i] for i in row if i >= 0] for row in idx]
    metrics = cirr_metrics(rankings, [q[0] for q in queries], [q[2] for q in queries], ks=tuple(ks))
    logger.info("held-out pairs of %s: %d queries, %s", out, len(queries),
                ", ".join(f"{name} {v:.2f}" for name, v in metrics.items()))
    return metrics
