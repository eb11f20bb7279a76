"""The heavy work on a Ray cluster: starting or joining one, and exact kNN over a corpus cut
into row shards, one Ray task per (query block, shard).

>>> import megapairs as mp
>>> mp.cluster.init()                                   # a local cluster; or address="auto"
>>> scores, ids = mp.cluster.search(emb, emb, k=50, exclude_self=True, shard_rows=100_000)
>>> scores, ids = mp.cluster.band(emb, emb, 0.8, 0.96, k=20, exclude_self=True)

The results are *identical* to :func:`megapairs.knn.search` / :func:`~megapairs.knn.band` on
one machine: each task returns its shard's best ``k`` (``k + 1`` in a self-join, so the
query's own row can be dropped) with the scores as ranked, in float64, and
:func:`megapairs.knn.merge` ranks their union by the same rule (score descending, then the
lower global row). A task holds one shard of the corpus and one block of queries, so its
memory is bounded by ``shard_rows`` and ``query_rows`` whatever the corpus size.

The corpus and queries may be arrays (put once in Ray's object store, which workers on the
same node map without copying) or paths of ``.npy`` files on storage every node can read
(workers memory-map their rows). The pipeline's Ray executor (``megapairs build --ray``) is
built on this module; see docs/scale.md.

Needs Ray: ``pip install 'megapairs[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import _args, knn

__all__ = ["band", "init", "require_ray", "search"]

INSTALL = "pip install 'megapairs[ray]'"


def require_ray():
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"the Ray executor needs Ray: {INSTALL}") from e
    return ray


def init(address: str | None = None, *, num_cpus: int | None = None, **kwargs):
    """Start or join a Ray cluster (once per process; later calls return at once).

    Parameters
    ----------
    address : str, optional
        None or "": start a local cluster of ``num_cpus`` CPUs (default: all). "auto": the
        cluster this machine belongs to (``ray start`` ran here). Else a cluster address,
        ``host:6379`` or ``ray://host:10001``.
    num_cpus : int, optional
        Only for a new local cluster.
    **kwargs
        Passed to ``ray.init``.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    options = {"include_dashboard": False, "log_to_driver": False, **kwargs}
    if address:
        options["address"] = address
    elif num_cpus is not None:
        options["num_cpus"] = _args.positive(num_cpus, "num_cpus")
    # workers import megapairs from the driver's environment: a source checkout is on their path too
    here = str(Path(__file__).resolve().parent.parent)
    env = options.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env.setdefault("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH", "")])))
    ray.init(**options)
    return ray


# --------------------------------------------------------------------------- sharded kNN


def _rows(source, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of an array, or of a .npy file memory-mapped (not read whole)."""
    if isinstance(source, str):
        return np.load(source, mmap_mode="r")[lo:hi]
    return source[lo:hi]


def _shard_task(queries, q0: int, q1: int, corpus, c0: int, c1: int, k: int, lo: float, hi: float,
                precision: str, threads: int):
    """One shard's best k for one query block: (float64 scores, global rows)."""
    q = np.ascontiguousarray(_rows(queries, q0, q1), np.float32)
    c = np.ascontiguousarray(_rows(corpus, c0, c1), np.float32)
    if np.isneginf(lo) and np.isposinf(hi):
        scores, ids = knn.search(q, c, k, precision=precision, num_threads=threads, float64=True)
    else:
        scores, ids = knn.band(q, c, lo, hi, k, precision=precision, num_threads=threads, float64=True)
    return scores, np.where(ids >= 0, ids + c0, -1)


def _shape(source) -> tuple[int, int]:
    if isinstance(source, (str, os.PathLike)):
        a = np.load(source, mmap_mode="r")
    else:
        a = np.asarray(source)
    if a.ndim != 2 or a.dtype.kind != "f":
        raise ValueError(f"expected a 2-D float array, got shape {a.shape} and dtype {a.dtype}")
    return a.shape


def _check_finite(source, name: str, what: str, rows: int = 65536) -> None:
    a = np.load(source, mmap_mode="r") if isinstance(source, str) else source
    for r0 in range(0, a.shape[0], rows):
        block = a[r0:r0 + rows]
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"{what}: {name} holds a non-finite value at row {r0 + bad[0]}, column {bad[1]}")


def _ranges(n: int, step: int) -> Iterable[tuple[int, int]]:
    return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]


def _run(queries, corpus, k, lo, hi, exclude_self, precision, shard_rows, query_rows, cpus_per_task,
         max_in_flight, progress, what):
    ray = require_ray()
    if not ray.is_initialized():
        init()
    k = _args.positive(k, "k")
    shard_rows = _args.positive(shard_rows, "shard_rows")
    query_rows = _args.positive(query_rows, "query_rows")
    cpus_per_task = _args.positive(cpus_per_task, "cpus_per_task")
    precision = _args.precision(precision)
    sources, arrays = [], []  # what tasks get (a path, or an object in the store); what we check
    for n, x in enumerate((queries, corpus)):
        if isinstance(x, (str, os.PathLike)):
            sources.append(str(x)), arrays.append(str(x))
        elif isinstance(x, ray.ObjectRef):
            sources.append(x), arrays.append(ray.get(x))
        elif n == 1 and x is queries:  # a self-join: one copy in the store
            sources.append(None), arrays.append(arrays[0])
        else:
            sources.append(x), arrays.append(np.asarray(x))
    (Q, d), (M, dc) = _shape(arrays[0]), _shape(arrays[1])
    if d != dc:
        raise ValueError(f"{what}: queries have dimension {d} but the corpus has {dc}")
    if exclude_self and Q > M:
        raise ValueError(f"{what}: exclude_self needs the queries to be (a prefix of) the corpus")
    _check_finite(arrays[0], "queries", what)
    if arrays[1] is not arrays[0]:
        _check_finite(arrays[1], "corpus", what)
    # arrays go to the object store once (a self-join once in all); paths and objects as they are
    refs = [s if isinstance(s, (str, ray.ObjectRef)) else
            ray.put(np.ascontiguousarray(s, np.float32)) if s is not None else None for s in sources]
    if refs[1] is None:
        refs[1] = refs[0]
    task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(_shard_task)
    kk = k + 1 if exclude_self else k  # the query's own row may take a place: dropped at the merge
    blocks = _ranges(Q, query_rows)
    shards = _ranges(M, shard_rows)
    scores = np.full((Q, k), -np.inf, np.float32)
    ids = np.full((Q, k), -1, np.int64)
    if Q == 0:
        return scores, ids
    if M == 0:
        return scores, ids
    limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_task))
    bar = None
    if progress or (progress is None and len(blocks) * len(shards) > 8):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(blocks) * len(shards), desc=what, unit="task", dynamic_ncols=True)
    pending: dict = {}  # ObjectRef -> (block number, shard number)
    parts: dict[int, dict[int, tuple]] = {b: {} for b in range(len(blocks))}
    todo = [(b, s) for b in range(len(blocks)) for s in range(len(shards))]
    try:
        while todo or pending:
            while todo and len(pending) < limit:
                b, s = todo.pop(0)
                (q0, q1), (c0, c1) = blocks[b], shards[s]
                ref = task.remote(refs[0], q0, q1, refs[1], c0, c1, kk, float(lo), float(hi), precision,
                                  cpus_per_task)
                pending[ref] = (b, s)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                b, s = pending.pop(ref)
                parts[b][s] = ray.get(ref)
                if bar is not None:
                    bar.update(1)
                if len(parts[b]) == len(shards):  # the block is complete: merge it, free its parts
                    q0, q1 = blocks[b]
                    exclude = np.arange(q0, q1) if exclude_self else None
                    scores[q0:q1], ids[q0:q1] = knn.merge([parts[b][i] for i in range(len(shards))], k, exclude)
                    del parts[b]
    finally:
        if bar is not None:
            bar.close()
        for ref in pending:
            ray.cancel(ref)
    return scores, ids


def search(queries, corpus, k: int, exclude_self: bool = False, precision: str = "bf16", *,
           shard_rows: int = 50_000, query_rows: int = 8192, cpus_per_task: int = 1,
           max_in_flight: int | None = None, progress: bool | None = None):
    """:func:`megapairs.knn.search` on a Ray cluster, the corpus cut into ``shard_rows``-row
    shards and the queries into ``query_rows``-row blocks, one task per pair. Same result.

    Parameters
    ----------
    queries, corpus : (Q, d), (M, d) float arrays, paths of ``.npy`` files every worker can read,
        or Ray object references to arrays
    k, exclude_self, precision
        As :func:`megapairs.knn.search`.
    shard_rows, query_rows : int
        A task holds ``(shard_rows + query_rows) * d * 4`` bytes of inputs.
    cpus_per_task : int
        CPUs reserved for each task, and its threads.
    max_in_flight : int, optional
        Tasks submitted at a time (default: the cluster's CPUs / cpus_per_task), which bounds
        the results waiting to be merged.
    progress : bool, optional
        A progress bar over tasks (None: when there are more than 8).

    Returns
    -------
    scores (Q, k) float32, indices (Q, k) int64, as :func:`megapairs.knn.search`.
    """
    return _run(queries, corpus, k, -np.inf, np.inf, exclude_self, precision, shard_rows, query_rows,
                cpus_per_task, max_in_flight, progress, "search")


def band(queries, corpus, lo: float, hi: float, k: int, exclude_self: bool = False, precision: str = "bf16", *,
         shard_rows: int = 50_000, query_rows: int = 8192, cpus_per_task: int = 1,
         max_in_flight: int | None = None, progress: bool | None = None):
    """:func:`megapairs.knn.band` on a Ray cluster, as :func:`search`. Same result."""
    if not lo < hi:
        raise ValueError(f"band: need lo < hi, got lo={lo!r}, hi={hi!r}")
    return _run(queries, corpus, k, lo, hi, exclude_self, precision, shard_rows, query_rows, cpus_per_task,
                max_in_flight, progress, "band")
