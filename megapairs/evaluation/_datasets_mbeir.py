"""M-BEIR's loaders: :func:`load_mbeir` (one test set), its candidate pools
(:func:`mbeir_pool_path`, :func:`load_mbeir_pool`) and :func:`read_qrels`. Re-exported by
:mod:`megapairs.evaluation.datasets`.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..limits import loads_json
from ._datasets_common import (
    FormatError,
    _check_files,
    _expect,
    _get,
    _root,
    format_string,
)
from .metrics import MBEIR_TASKS

logger = logging.getLogger("megapairs")

# --------------------------------------------------------------------------- M-BEIR


@dataclass
class MBEIRQuery:
    qid: str
    text: str | None
    image: str | None
    modality: str | None = None


@dataclass
class MBEIRCandidate:
    did: str
    text: str | None
    image: str | None
    modality: str | None = None


@dataclass
class MBEIR:
    """One M-BEIR test set: its queries, its candidate pool and the relevant ``did`` per query."""

    task: str
    queries: list[MBEIRQuery]
    pool: list[MBEIRCandidate]
    relevant: dict[str, list[str]]
    pool_path: str = ""


def read_qrels(path: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Read an M-BEIR qrels file (``qid 0 did relevance task_id`` per line).

    Returns ``(relevant, task_of)``: per ``qid`` the ``did`` with relevance > 0 in file
    order (lines with relevance <= 0 are skipped, as UniIR's ``load_qrel`` does), and the
    task id of each such query.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"M-BEIR qrels: no file '{path}'") from None
    relevant: dict[str, list[str]] = {}
    task_of: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise FormatError(f"{path}: line {n}: expected 'qid 0 did relevance task_id', got {line!r:.100}")
        qid, _, did, relevance, task_id = parts
        try:
            rel = float(relevance)
        except ValueError:
            raise FormatError(f"{path}: line {n}: relevance {relevance!r} is not a number") from None
        if rel > 0:
            relevant.setdefault(qid, []).append(did)
            task_of[qid] = task_id
    return relevant, task_of


def _jsonl(path: Path, what: str) -> list[dict]:
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file '{path}'") from None
    out = []
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = loads_json(line, f"{path}: line {n}")
            if not isinstance(record, dict):
                raise FormatError(f"{path}: line {n}: expected a JSON object")
            out.append(record)
    return out


def _instructions(path: Path) -> dict[str, list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"M-BEIR instructions: no file '{path}'") from None
    out = {}
    for line in lines[1:]:  # header row
        parts = line.strip().split("\t")
        if len(parts) < 5:
            continue
        out[f"{parts[3]}, {parts[0]}, {parts[1]}"] = [p for p in parts[4:] if p]
    return out


def mbeir_pool_path(root: str | os.PathLike, task: str, split: str = "test", pool: str = "local") -> Path:
    """The candidate pool file UniIR uses for ``task``: ``cand_pool/local/mbeir_<task>_cand_pool.jsonl``
    (MSCOCO has per-split pools, ``mscoco_task0_test``) or, for ``pool='global'``,
    ``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl``."""
    root = Path(root)
    if pool == "global":
        return root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"
    if pool != "local":
        raise ValueError(f"pool must be 'local' or 'global', got {pool!r}")
    name = f"{task}_{split}" if task.startswith("mscoco_") else task
    return root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl"


def load_mbeir_pool(path: str | os.PathLike, root: str | os.PathLike, check_images: bool = True
                    ) -> list[MBEIRCandidate]:
    """Read an M-BEIR candidate pool (``{"did", "txt", "img_path", "modality"}`` per line);
    texts go through :func:`format_string`, image paths are joined to ``root``."""
    path, root = Path(path), Path(root)
    pool, seen = [], set()
    for n, r in enumerate(_jsonl(path, "M-BEIR candidate pool"), start=1):
        where = f"candidate {n}"
        did = _get(r, "did", str, path, where)
        if did in seen:
            raise FormatError(f"{path}: {where}: did {did!r} appears twice")
        seen.add(did)
        txt = r.get("txt")
        img = r.get("img_path")
        text = format_string(_expect(txt, str, path, where, "'txt'")) if txt is not None else ""
        image = str(root / _expect(img, str, path, where, "'img_path'")) if img else None
        if not text and image is None:
            raise FormatError(f"{path}: {where} (did {did!r}) has neither text nor image")
        pool.append(MBEIRCandidate(did, text or None, image, r.get("modality")))
    if not pool:
        raise FormatError(f"{path}: the candidate pool is empty")
    _check_files(((c.image, f"{path}: did {c.did!r}") for c in pool if c.image), check_images)
    return pool


def load_mbeir(root: str | os.PathLike, task: str, split: str = "test", pool: str = "local",
               instruction: str | None = None, seed: int = 0, check_images: bool = True,
               candidates: list[MBEIRCandidate] | None = None) -> MBEIR:
    """Load one M-BEIR test set (TIGER-Lab/M-BEIR).

    Layout under ``root``: ``query/<split>/mbeir_<task>_<split>.jsonl``, the pool of
    :func:`mbeir_pool_path`, ``qrels/<split>/mbeir_<task>_<split>_qrels.txt``, image paths
    relative to ``root`` and, for ``instruction='random'``,
    ``instructions/query_instructions.tsv``.

    Parameters
    ----------
    root : path
    task : str
        A name from :data:`megapairs.evaluation.metrics.MBEIR_TASKS`, e.g. ``'cirr_task7'``.
    split : str
    pool : {'local', 'global'}
        M-BEIR_local (the task's own pool) or the 5.6M union pool.
    instruction : str, optional
        None: the query text alone (UniIR's no-instruction setting; CLIP-style retrievers).
        A string: that instruction before every query text (one fixed instruction, as
        MM-Embed uses). ``'random'``: UniIR's setting, one of the task's prompts from
        ``query_instructions.tsv`` per query, drawn with ``seed`` (the draw cannot replay
        UniIR's own random state); the prompts are those keyed by the query's dataset id, its
        ``query_modality`` and the ``modality`` (in the pool) of its first positive candidate
        of the same dataset, as UniIR keys them. Query texts are ``format_string(f"{prompt} {txt}")``.
    seed : int
    check_images : bool
    candidates : list of MBEIRCandidate, optional
        An already loaded pool (the global pool is shared by all tasks).
    """
    root = _root(root)
    if task not in MBEIR_TASKS:
        raise ValueError(f"unknown M-BEIR task {task!r}; the tasks are {list(MBEIR_TASKS)}")
    query_path = root / "query" / split / f"mbeir_{task}_{split}.jsonl"
    qrels_path = root / "qrels" / split / f"mbeir_{task}_{split}_qrels.txt"
    pool_path = mbeir_pool_path(root, task, split, pool)
    prompts = None
    if instruction == "random":
        prompts = _instructions(root / "instructions" / "query_instructions.tsv")
    rng = random.Random(seed)
    relevant, _ = read_qrels(qrels_path)
    if candidates is None:
        candidates = load_mbeir_pool(pool_path, root, check_images)
    modality_of = {c.did: c.modality for c in candidates} if prompts is not None else {}
    queries, seen = [], set()
    for n, r in enumerate(_jsonl(query_path, f"M-BEIR {task} queries"), start=1):
        where = f"query {n}"
        qid = _get(r, "qid", str, query_path, where)
        if qid in seen:
            raise FormatError(f"{query_path}: {where}: qid {qid!r} appears twice")
        seen.add(qid)
        txt = r.get("query_txt")
        txt = _expect(txt, str, query_path, where, "'query_txt'") if txt is not None else ""
        img = r.get("query_img_path")
        image = str(root / _expect(img, str, query_path, where, "'query_img_path'")) if img else None
        prompt = instruction
        if prompts is not None:
            # UniIR keys the prompt by the modality of a positive candidate of the query's own
            # dataset (the query records have no candidate modality); we take the first one.
            dataset_id = qid.split(":")[0]
            positives = [d for d in (r.get("pos_cand_list") or relevant.get(qid, []))
                         if isinstance(d, str) and d.split(":")[0] == dataset_id and d in modality_of]
            if not positives:
                raise ValueError(f"{query_path}: {where}: qid {qid!r} has no positive candidate of dataset "
                                 f"{dataset_id} in {pool_path}, whose modality selects the instruction")
            key = f"{dataset_id}, {r.get('query_modality')}, {modality_of[positives[0]]}"
            if not prompts.get(key):
                raise ValueError(f"{query_path}: {where}: no instruction for '{key}' in query_instructions.tsv")
            prompt = format_string(rng.choice(prompts[key]))
        text = format_string(f"{prompt} {txt}") if prompt else format_string(txt)
        if not text and image is None:
            raise FormatError(f"{query_path}: {where} (qid {qid!r}) has neither text nor image")
        if qid not in relevant:
            raise ValueError(f"{query_path}: {where}: qid {qid!r} has no line with relevance > 0 in {qrels_path}")
        queries.append(MBEIRQuery(qid, text or None, image, r.get("query_modality")))
    if not queries:
        raise FormatError(f"{query_path}: no queries")
    _check_files(((q.image, f"{query_path}: qid {q.qid!r}") for q in queries if q.image), check_images)
    dids = {c.did for c in candidates}
    missing = [(q.qid, d) for q in queries for d in relevant[q.qid] if d not in dids]
    if missing:
        logger.warning("M-BEIR %s: %d relevant candidates of the qrels are not in %s (first: qid %s, did %s); "
                       "they can never be retrieved", task, len(missing), pool_path, *missing[0])
    return MBEIR(task, queries, candidates, {q.qid: relevant[q.qid] for q in queries}, str(pool_path))
