"""Test-server submission files for CIRCO and CIRR, whose test labels are hidden.

>>> from megapairs.evaluation import submission
>>> submission.write_circo_submission("circo_test.json", top50)                  # doctest: +SKIP
>>> submission.write_cirr_submission("cirr_test1.json", recall_top50, subset_top3)  # doctest: +SKIP
(PosixPath('cirr_test1.json'), PosixPath('cirr_test1_subset.json'))

The writers check the documented schema before writing (the servers reject a file that
breaks it, often without saying why); the ``check_*`` functions apply the same checks to a
loaded file.

* CIRCO (https://circo.micc.unifi.it/): one JSON object ``{"<query id>": [50 image ids], ...}``
  covering every query id ``0 .. N-1``; the ids of a list are COCO 2017 unlabeled image ids
  (int), unique, best first.
* CIRR (https://cirr.cecs.anu.edu.au/): two JSON objects, each with ``"version": "rc2"`` and
  ``"metric"``: ``"recall"`` maps ``str(pairid)`` to the top 50 image names with the
  reference removed; ``"recall_subset"`` maps it to the top 3 of the query's group members,
  reference removed.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "check_circo_submission",
    "check_cirr_submission",
    "cirr_subset_path",
    "write_circo_submission",
    "write_cirr_submission",
]

CIRR_VERSION = "rc2"


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_count(name: str, value, server: int) -> int:
    """ValueError naming the argument unless ``value`` is a positive int: a list length of 0
    would write lists the server rejects."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int (predictions per query; the server expects {server}), "
                         f"got {value!r}")
    return int(value)


def check_circo_submission(submission: Mapping, num_queries: int | None = None, k: int = 50) -> None:
    """ValueError naming the first query that breaks CIRCO's submission schema.

    Parameters
    ----------
    submission : mapping
        As loaded from the JSON file: ``{"<query id>": [k image ids]}``.
    num_queries : int, optional
        The split's query count (800 for test, 220 for val); keys must be exactly
        ``"0" .. str(num_queries - 1)``. Without it, the keys must still be ``0 .. N-1``.
    k : int
        The list length the server expects (50).
    """
    _check_count("k", k, 50)
    if not isinstance(submission, Mapping):
        raise TypeError(f"a CIRCO submission is a JSON object, got {type(submission).__name__}")
    keys = list(submission)
    if not keys:
        raise ValueError("CIRCO submission has no queries")
    for key in keys:
        if not isinstance(key, str) or not key.isdigit() or str(int(key)) != key:
            raise ValueError(f"CIRCO submission key {key!r} is not a query id written as a decimal string")
    n = len(keys) if num_queries is None else num_queries
    expected = {str(i) for i in range(n)}
    if set(keys) != expected:
        missing = sorted(expected - set(keys), key=int)
        extra = sorted(set(keys) - expected, key=int)
        raise ValueError(f"CIRCO submission must cover query ids 0..{n - 1} exactly: "
                         + (f"missing {missing[:5]}" if missing else f"unexpected {extra[:5]}"))
    for key in keys:
        ids = submission[key]
        if not isinstance(ids, list) or not all(_is_int(x) for x in ids):
            raise ValueError(f"CIRCO submission, query {key}: expected a list of int image ids")
        if len(ids) != k:
            raise ValueError(f"CIRCO submission, query {key}: {len(ids)} predictions, the server expects {k}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"CIRCO submission, query {key}: duplicate image ids")


def write_circo_submission(path: str | os.PathLike, predictions: Sequence[Sequence[int]] | Mapping[int, Sequence[int]],
                           k: int = 50) -> Path:
    """Write a CIRCO server submission.

    Parameters
    ----------
    path : path
        The JSON file to write.
    predictions : Q sequences of image ids, or mapping query id -> sequence
        The ranked predictions of queries ``0 .. Q-1``; the first ``k`` of each are written.
    k : int
        Predictions per query (the server takes exactly 50); ``k < 1`` is a ValueError.

    Returns
    -------
    Path of the written file.
    """
    _check_count("k", k, 50)
    items = predictions.items() if isinstance(predictions, Mapping) else enumerate(predictions)
    submission = {}
    for qid, ids in items:
        ids = [int(x) for x in list(ids)[:k]]
        submission[str(int(qid))] = ids
    check_circo_submission(submission, k=k)
    path = Path(path)
    path.write_text(json.dumps(submission), encoding="utf-8")
    return path


def check_cirr_submission(submission: Mapping, metric: str, k: int | None = None,
                          pair_ids: Sequence[int] | None = None) -> None:
    """ValueError naming the first entry that breaks CIRR's submission schema.

    Parameters
    ----------
    submission : mapping
        As loaded: ``{"version": "rc2", "metric": metric, "<pairid>": [names]}``.
    metric : {'recall', 'recall_subset'}
    k : int, optional
        Names per query; default 50 for 'recall' and 3 for 'recall_subset'.
    pair_ids : sequence of int, optional
        The split's pair ids; the keys must be exactly these.
    """
    if metric not in ("recall", "recall_subset"):
        raise ValueError(f"metric must be 'recall' or 'recall_subset', got {metric!r}")
    server = 50 if metric == "recall" else 3
    k = _check_count("k", server if k is None else k, server)
    if not isinstance(submission, Mapping):
        raise TypeError(f"a CIRR submission is a JSON object, got {type(submission).__name__}")
    if submission.get("version") != CIRR_VERSION:
        raise ValueError(f"CIRR submission: 'version' must be {CIRR_VERSION!r}, got {submission.get('version')!r}")
    if submission.get("metric") != metric:
        raise ValueError(f"CIRR submission: 'metric' must be {metric!r}, got {submission.get('metric')!r}")
    keys = [key for key in submission if key not in ("version", "metric")]
    if not keys:
        raise ValueError(f"CIRR submission ({metric}) has no pairids")
    for key in keys:
        if not isinstance(key, str) or not key.lstrip("-").isdigit():
            raise ValueError(f"CIRR submission key {key!r} is not a pairid written as a decimal string")
        names = submission[key]
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise ValueError(f"CIRR submission, pairid {key}: expected a list of image names")
        if len(names) != k:
            raise ValueError(f"CIRR submission ({metric}), pairid {key}: {len(names)} names, expected {k}")
        if len(set(names)) != len(names):
            raise ValueError(f"CIRR submission ({metric}), pairid {key}: duplicate image names")
    if pair_ids is not None:
        expected = {str(int(p)) for p in pair_ids}
        if set(keys) != expected:
            missing = sorted(expected - set(keys))
            raise ValueError(f"CIRR submission ({metric}) must cover the split's pairids exactly: "
                             + (f"missing {missing[:5]}" if missing else f"unexpected {sorted(set(keys) - expected)[:5]}"))


def cirr_subset_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_cirr_submission` puts the subset file: ``<stem>_subset<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_subset{path.suffix or '.json'}")


def _cirr_entries(rankings: Mapping[int, Sequence[str]], references: Mapping[int, str] | None,
                  k: int) -> dict[str, list[str]]:
    out = {}
    for pair_id, names in rankings.items():
        names = list(names)
        if references is not None:
            names = [x for x in names if x != references[pair_id]]
        out[str(int(pair_id))] = names[:k]
    return out


def write_cirr_submission(path: str | os.PathLike, recall: Mapping[int, Sequence[str]],
                          recall_subset: Mapping[int, Sequence[str]], references: Mapping[int, str] | None = None,
                          k: int = 50, subset_k: int = 3) -> tuple[Path, Path]:
    """Write CIRR's two server files: ``path`` (metric ``recall``) and
    :func:`cirr_subset_path` of it (metric ``recall_subset``).

    Parameters
    ----------
    path : path
    recall : mapping pairid -> ranked gallery names
        Best first; the first ``k`` (after removing the reference) are written.
    recall_subset : mapping pairid -> ranked group members
        The first ``subset_k`` (after removing the reference) are written.
    references : mapping pairid -> reference name, optional
        Removed from both lists; without it the lists must already exclude the reference.
    k, subset_k : int
        50 and 3 for the server; a value below 1 is a ValueError naming the argument.

    Returns
    -------
    (recall file, subset file)
    """
    _check_count("k", k, 50)
    _check_count("subset_k", subset_k, 3)
    if set(recall) != set(recall_subset):
        raise ValueError("recall and recall_subset must cover the same pairids")
    main = {"version": CIRR_VERSION, "metric": "recall", **_cirr_entries(recall, references, k)}
    subset = {"version": CIRR_VERSION, "metric": "recall_subset",
              **_cirr_entries(recall_subset, references, subset_k)}
    check_cirr_submission(main, "recall", k)
    check_cirr_submission(subset, "recall_subset", subset_k)
    path = Path(path)
    subset_path = cirr_subset_path(path)
    path.write_text(json.dumps(main), encoding="utf-8")
    subset_path.write_text(json.dumps(subset), encoding="utf-8")
    return path, subset_path
