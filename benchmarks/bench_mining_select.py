"""Pair selection: megapairs.mining.select_pairs (vectorised over blocks of queries) against
the per-query Python loop mine_pairs ran before (kept below as a private reference).

Synthetic neighbour lists, no kNN: each query has a neighbourhood of 200 distinct other
images; each of 3 spaces reads 100 of them in its own order (so spaces share many ids, as
real spaces do), the first k as its band list, of which a uniform 0..k are hits (the rest
-1), and an overlapping k as its retrieved list. Defaults: 1,000,000 queries, k = 50,
3 targets per query (1 per space), 5 hard negatives. Prints seconds, queries/s and µs per
query of select_pairs on all queries; the old loop's µs per query on the first 20,000
queries (and whether its targets, spaces and scores equal select_pairs' rows for them:
only the negatives' random stream differs); and memory: the peak resident size sampled
every 2 ms during the select_pairs call minus the size before it, next to the input lists
and the output table.
Run: make bench   or   .venv/bin/python benchmarks/bench_mining_select.py [--queries 1000000] [--old 20000]
"""

import argparse
import ctypes
import os
import threading
import time
from array import array

import numpy as np
import pyarrow as pa

import megapairs as mp
from megapairs.mining import SpaceNeighbours


def synthetic(M, spaces=3, k=50, seed=0, block=100_000):
    rng = np.random.default_rng(seed)
    out = {f"s{i}": SpaceNeighbours(np.empty((M, k), np.float32), np.empty((M, k), np.int64),
                                    np.empty((M, k), np.int64), (0.8, 0.96)) for i in range(spaces)}
    ranks = np.arange(k, dtype=np.float32)
    for a in range(0, M, block):
        b = min(M, a + block)
        q = np.arange(a, b)[:, None]
        hood = (q + np.cumsum(rng.integers(1, 40, (b - a, 200)), axis=1)) % M  # distinct, never q
        for nb in out.values():
            start = rng.integers(0, 200, (b - a, 1))
            step = rng.choice([1, 3, 7, 9, 11, 13, 17, 19], (b - a, 1))  # coprime to 200: a permutation
            cols = (start + step * np.arange(2 * k)) % 200
            band = np.take_along_axis(hood, cols[:, :k], axis=1)
            hits = rng.integers(0, k + 1, (b - a, 1))
            band[np.arange(k) >= hits] = -1
            nb.band_ids[a:b] = band
            nb.band_scores[a:b] = np.where(band >= 0, 0.955 - 0.003 * ranks, -np.inf)
            nb.retrieved_ids[a:b] = np.take_along_axis(hood, cols[:, k // 2:k // 2 + k], axis=1)
    return out


# --------------------------------------------------------------------------- the old loop


def _old_choose_targets(hit_lists, quotas):
    taken, chosen, cursor = set(), [], dict.fromkeys(hit_lists, 0)

    def next_untaken(space):
        hits, i = hit_lists[space], cursor[space]
        while i < len(hits) and hits[i] in taken:
            i += 1
        cursor[space] = i + 1
        return hits[i] if i < len(hits) else None

    leftover = 0
    for space, quota in quotas.items():
        for _ in range(quota):
            t = next_untaken(space)
            if t is None:
                leftover += 1
                continue
            taken.add(t)
            chosen.append((t, space))
    donors = [space for space, quota in quotas.items() if quota > 0]
    while leftover and donors:
        for space in list(donors):
            if not leftover:
                break
            t = next_untaken(space)
            if t is None:
                donors.remove(space)
                continue
            taken.add(t)
            chosen.append((t, space))
            leftover -= 1
    return chosen


def _old_sample_negatives(query, target, pool, n, rng):
    want = n - 1
    if want == 0:
        return [query], False
    others = pool[pool != target]
    if len(others) >= want:
        return [query, *rng.choice(others, size=want, replace=False).tolist()], False
    picked = rng.permutation(others).tolist()
    cycle = picked or [query]
    return [query, *picked, *(cycle[j % len(cycle)] for j in range(want - len(picked)))], True


def old_select(nb, quota, hard_negatives, seed, queries):
    """mine_pairs' selection loop before the vectorised rewrite, on the first `queries` rows;
    returns (query, target, spaces, scores, negatives) lists."""
    names = list(nb)
    rng = np.random.default_rng(seed)
    qs, ts, negative_values = array("q"), array("q"), array("q")
    space_lists, score_lists = [], []
    for i in range(queries):
        hit_lists, hit_scores = {}, {}
        for name in names:
            row = nb[name].band_ids[i]
            n = int(np.count_nonzero(row >= 0))
            hit_lists[name] = row[:n].tolist()
            hit_scores[name] = dict(zip(hit_lists[name], nb[name].band_scores[i, :n].tolist()))
        chosen = _old_choose_targets(hit_lists, quota)
        if not chosen:
            continue
        pool = np.unique(np.concatenate([nb[s].band_ids[i] for s in names] +
                                        [nb[s].retrieved_ids[i] for s in names]))
        pool = pool[(pool >= 0) & (pool != i)]
        for t, by in chosen:
            found = [by] + [s for s in names if s != by and t in hit_scores[s]]
            negatives, _ = _old_sample_negatives(i, t, pool, hard_negatives, rng)
            qs.append(i)
            ts.append(t)
            space_lists.append(found)
            score_lists.append([hit_scores[s][t] for s in found])
            negative_values.extend(negatives)
    return list(qs), list(ts), space_lists, score_lists, list(negative_values)


# --------------------------------------------------------------------------- measurement

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def timed_with_memory(fn):
    """(seconds, peak resident bytes above the start, result) of one call of fn()."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak, running = rss(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    running[0] = False
    sampler.join()
    return seconds, max(peak[0], rss()) - base, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--spaces", type=int, default=3)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--hard-negatives", type=int, default=5)
    parser.add_argument("--old", type=int, default=20_000, help="queries for the old per-query loop")
    args = parser.parse_args()

    t0 = time.perf_counter()
    nb = synthetic(args.queries, args.spaces, args.k)
    inputs_mb = sum(x.band_ids.nbytes + x.band_scores.nbytes + x.retrieved_ids.nbytes
                    for x in nb.values()) / 2**20
    hits = np.mean([(x.band_ids >= 0).sum(axis=1).mean() for x in nb.values()])
    print(f"{args.queries} queries x {args.spaces} spaces, k = {args.k}, {hits:.1f} band hits per query and "
          f"space, {args.targets} targets, {args.hard_negatives} hard negatives; data made in "
          f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs; NumPy {np.__version__}")

    seconds, extra, result = timed_with_memory(lambda: mp.mining.select_pairs(
        nb, targets_per_query=args.targets, hard_negatives=args.hard_negatives, seed=0, progress=False))
    table = result.table
    new_us = seconds / args.queries * 1e6

    old_n = min(args.old, args.queries)
    quota = mp.mining._quotas(list(nb), args.targets, None)
    t0 = time.perf_counter()
    old = old_select(nb, quota, args.hard_negatives, 0, old_n)
    old_us = (time.perf_counter() - t0) / old_n * 1e6
    head = table.slice(0, len(old[0]))
    same = (head["query"].to_pylist() == old[0] and head["target"].to_pylist() == old[1]
            and head["spaces"].to_pylist() == old[2]
            and np.array_equal(np.concatenate(old[3]).astype(np.float32),
                               pa.concat_arrays(head["scores"].chunks).flatten().to_numpy())
            and (len(old[0]) == len(table) or table["query"][len(old[0])].as_py() >= old_n))

    print("| step | queries | seconds | queries/s | µs/query |")
    print("|---|---:|---:|---:|---:|")
    print(f"| select_pairs | {args.queries} | {seconds:.2f} | {args.queries / seconds:,.0f} | {new_us:.2f} |")
    print(f"| old per-query loop | {old_n} | {old_us * old_n / 1e6:.2f} | {1e6 / old_us:,.0f} | "
          f"{old_us:.1f} |")
    stats = result.stats
    print(f"speed-up {old_us / new_us:.0f}x; {table.num_rows} pairs ({stats['queries_without_pair']} queries "
          f"without one, {stats['padded_pairs']} padded); targets, spaces and scores of the first "
          f"{old_n} queries equal to the old loop's: {'yes' if same else 'NO'}")
    print(f"memory: peak {extra / 2**20:.0f} MB above the start during select_pairs; input lists "
          f"{inputs_mb:.0f} MB, output table {table.nbytes / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
