"""Evaluation on the zero-shot composed-image-retrieval and universal-retrieval benchmarks
(CIRCO, CIRR, FashionIQ, GeneCIS, MMEB, M-BEIR), scored exactly as each benchmark's
official code scores it.

>>> import megapairs as mp
>>> import megapairs.evaluation as ev
>>> clip = mp.CLIP.from_pretrained("BAAI/BGE-VL-base")                          # doctest: +SKIP
>>> ev.evaluate(clip, "fashioniq", "/data/fashionIQ_dataset")                    # doctest: +SKIP
{'dress/R@10': ..., 'shirt/R@10': ..., 'toptee/R@10': ..., 'R@10': ..., 'R@50': ...}
>>> ev.evaluate(clip, "cirr", "/data/CIRR", split="val")                         # doctest: +SKIP
{'R@1': ..., 'R@5': ..., 'R@10': ..., 'R@50': ..., 'R_subset@1': ..., ...}
>>> ev.evaluate(clip, "circo", "/data/CIRCO", submission_path="circo_test.json")  # doctest: +SKIP
{}

Three layers, each usable alone:

* :mod:`~megapairs.evaluation.metrics`: the metric definitions, on ranked id lists or
  score rows (``circo_metrics``, ``cirr_metrics``, ``fashioniq_metrics``,
  ``genecis_metrics``, ``mmeb_precision_at_1``, ``mbeir_metrics``, ...), in percent;
* :mod:`~megapairs.evaluation.datasets`: loaders of each benchmark's on-disk format and the
  canonical query texts; :mod:`~megapairs.evaluation.submission`: the CIRCO and CIRR
  server files;
* :func:`evaluate`: encode, retrieve with :func:`megapairs.knn.search`, score.

The conventions (denominators, which image is removed from which ranking, tie rules,
averaging) and the directory layouts are in ``docs/evaluation.md``.
"""

from . import datasets, metrics, submission
from .datasets import (
    CIRCO_TEMPLATE,
    Crop,
    circo_query_text,
    fashioniq_query_text,
    format_string,
    load_circo,
    load_cirr,
    load_fashioniq,
    load_genecis,
    load_mbeir,
    load_mmeb,
    read_qrels,
)
from .evaluate import BENCHMARKS, REPORTED_SPLITS, Embedder, evaluate
from .metrics import (
    average_precision_at_k,
    circo_metrics,
    cirr_metrics,
    fashioniq_metrics,
    genecis_metrics,
    hit_rate,
    mbeir_metrics,
    mbeir_summary,
    mmeb_precision_at_1,
    mmeb_summary,
)
from .submission import (
    check_circo_submission,
    check_cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)

__all__ = [
    "BENCHMARKS",
    "CIRCO_TEMPLATE",
    "REPORTED_SPLITS",
    "Crop",
    "Embedder",
    "average_precision_at_k",
    "check_circo_submission",
    "check_cirr_submission",
    "circo_metrics",
    "circo_query_text",
    "cirr_metrics",
    "datasets",
    "evaluate",
    "fashioniq_metrics",
    "fashioniq_query_text",
    "format_string",
    "genecis_metrics",
    "hit_rate",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_genecis",
    "load_mbeir",
    "load_mmeb",
    "mbeir_metrics",
    "mbeir_summary",
    "metrics",
    "mmeb_precision_at_1",
    "mmeb_summary",
    "read_qrels",
    "submission",
    "write_circo_submission",
    "write_cirr_submission",
]
