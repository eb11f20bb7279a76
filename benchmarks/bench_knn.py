"""Exact kNN: megapairs.knn.search against faiss-cpu IndexFlatIP and NumPy, exact top-50
self-join (every vector against the whole set, itself excluded) on random unit vectors.

Same threads for all (faiss.omp_set_num_threads, OpenMP/BLAS env), same run. Prints queries
per second, the ratio to faiss, achieved GFLOP/s (2 M^2 d) as a share of the GEMM peak measured
in the same run (megapairs' oneDNN matmul at bf16 and fp32), whether the indices equal a
float64 brute force on a sample of 500 queries (the definition of exact), and how many equal
faiss's (faiss ranks by fp32 scores, so it may order near-ties differently).
Run: make bench   or   .venv/bin/python benchmarks/bench_knn.py [--sizes 20000 100000] [--dims 512 768]
"""

import argparse
import os
import time

import numpy as np

import megapairs as mp
from _timing import median_time


def gemm_peak(threads):
    """GFLOP/s of a 4096 x 768 x 4096 matmul through megapairs' oneDNN, bf16 and fp32."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 768), dtype=np.float32)
    flop = 2 * 4096 * 768 * 4096 / 1e9
    return {p: flop / median_time(lambda: mp._core.matmul_nt(a, a, precision=p, num_threads=threads), 3)
            for p in ("bf16", "fp32")}


def numpy_topk(x, k, block=4096):
    """NumPy float32 matmul + argpartition per block of queries (what a user writes by hand)."""
    ids = np.empty((len(x), k), np.int64)
    for i in range(0, len(x), block):
        s = x[i:i + block] @ x.T
        s[np.arange(s.shape[0]), np.arange(i, i + s.shape[0])] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        ids[i:i + block] = np.take_along_axis(part, order, 1)
    return ids


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--numpy-max", type=int, default=20000, help="largest M for the NumPy column")
    parser.add_argument("--scaling-size", type=int, default=20000,
                        help="M of the thread-scaling rows (d = 768, bf16; 0 skips them)")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    peak = gemm_peak(args.threads)
    print(f"{args.threads} threads, faiss {faiss.__version__}, oneDNN GEMM peak: bf16 {peak['bf16']:.0f}, "
          f"fp32 {peak['fp32']:.0f} GFLOP/s")
    print("| M | d | method | seconds | queries/s | vs faiss | GFLOP/s | share of peak | = float64 (500 rows) | "
          "= faiss |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    for M in args.sizes:
        for d in args.dims:
            x = np.random.default_rng(M + d).standard_normal((M, d), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            flop = 2 * M * M * d / 1e9

            def run_faiss():
                index = faiss.IndexFlatIP(d)
                index.add(x)
                _, ids = index.search(x, args.k + 1)
                # drop each row's own index (it is not always first when scores tie)
                out = np.empty((M, args.k), np.int64)
                for i in range(M):
                    row = ids[i][ids[i] != i]
                    out[i] = row[:args.k]
                return out

            t_faiss, faiss_ids = timed(run_faiss)
            sample = np.random.default_rng(0).choice(M, 500, replace=False)
            s64 = x[sample].astype(np.float64) @ x.astype(np.float64).T  # float64 brute force of the sample
            s64[np.arange(500), sample] = -np.inf
            exact = np.lexsort((np.broadcast_to(np.arange(M), s64.shape), -s64), axis=1)[:, :args.k]
            rows = [("faiss IndexFlatIP (fp32)", t_faiss, faiss_ids, "fp32")]
            for precision in ("bf16", "fp32"):
                t, (_, ids) = timed(lambda: mp.knn.search(x, x, args.k, exclude_self=True, precision=precision,
                                                           num_threads=args.threads))
                rows.append((f"megapairs exact, {precision} GEMM", t, ids, precision))
            if M <= args.numpy_max:
                t, ids = timed(lambda: numpy_topk(x, args.k))
                rows.append(("NumPy matmul + argpartition", t, ids, "fp32"))
            for name, t, ids, precision in rows:
                gflops = flop / t
                is_exact = "yes" if np.array_equal(ids[sample], exact) else f"{np.mean(ids[sample] == exact):.4%}"
                same = "all" if np.array_equal(ids, faiss_ids) else f"{np.mean(ids == faiss_ids):.4%}"
                print(f"| {M} | {d} | {name} | {t:.2f} | {M / t:.0f} | {t_faiss / t:.2f}x | {gflops:.0f} | "
                      f"{gflops / peak[precision]:.0%} | {is_exact} | {same} |", flush=True)
    if args.scaling_size:
        thread_scaling(args.scaling_size, 768, args.k, args.threads)


def thread_scaling(M, d, k, cores):
    """Queries/s of the exact self-join (bf16) and of faiss at 1, 2 and all threads."""
    import faiss

    x = np.random.default_rng(M + d).standard_normal((M, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    print(f"\nthread scaling, {M} x {d}, top-{k} self-join:")
    print("| threads | megapairs bf16 q/s | faiss q/s | megapairs vs faiss | megapairs vs its 1 thread |")
    print("|---:|---:|---:|---:|---:|")
    first = None
    for t in sorted({1, 2, cores}):
        faiss.omp_set_num_threads(t)
        mine, _ = timed(lambda: mp.knn.search(x, x, k, exclude_self=True, precision="bf16", num_threads=t))
        index = faiss.IndexFlatIP(d)
        index.add(x)
        theirs, _ = timed(lambda: index.search(x, k + 1))
        first = first or mine
        print(f"| {t} | {M / mine:.0f} | {M / theirs:.0f} | {theirs / mine:.2f}x | {first / mine:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
