/* knn/knn.h: exact inner-product top-k, optionally within a score band.
 *
 *     float scores[Q * k]; int64_t ids[Q * k];
 *     mp_knn_search(scores, NULL, ids, queries, Q, corpus, M, d, k, -INFINITY, INFINITY,
 *                   0, MP_PRECISION_BF16, 1);   // the fp32/float64 answer, found with AMX
 *
 * The corpus is streamed in blocks against a block of queries at a time: a oneDNN GEMM
 * scores the tile, and each query keeps the candidates that can still belong to its top-k.
 * The GEMM's error is bounded from the vector norms (fp32: gamma_d; bf16: also the rounding of
 * both operands, see vector_terms in knn.c), so a candidate is dropped only when its upper bound is below
 * a certified lower bound of the k-th best score. The survivors are rescored in double
 * precision from the fp32 inputs: the result equals a float64 brute force, ranked by
 * descending score with ties to the lower index, whatever precision the GEMM ran at.
 *
 * Rows with fewer than k results are padded with -inf and -1. Extra memory: one score tile
 * (at most MP_KNN_QUERY_BLOCK x MP_KNN_CORPUS_BLOCK floats), the candidates of one query
 * block, and 16 bytes per corpus row (the error-bound terms). Threads: OpenMP (GEMM and per-query selection). */
#ifndef MP_KNN_KNN_H
#define MP_KNN_KNN_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"

enum { MP_KNN_QUERY_BLOCK = 2048, MP_KNN_CORPUS_BLOCK = 4096 };

// Statistics of one search, for tests and tuning.
struct mp_knn_stats {
    int64_t candidates; // rescored in double precision, over all queries
};

// Per query, the k corpus rows j with the largest s = <queries[i], corpus[j]> among those with
// lo < s < hi (pass -INFINITY / INFINITY for none); with exclude_self, j == i is skipped (a
// self-join). `exact` = 0 skips the rescoring: the order and scores are the GEMM's own (the
// approximate answer of that precision). Inputs must be finite (the Python layer checks).
enum mp_status mp_knn_search(float               *scores,   // (Q, k), descending
                             double              *scores64, // (Q, k) or NULL: the scores before rounding
                             int64_t             *indices, // (Q, k), -1 for padding
                             const float         *queries, // (Q, d)
                             int64_t              Q,
                             const float         *corpus,  // (M, d)
                             int64_t              M,
                             int64_t              d,
                             int64_t              k,
                             double               lo,
                             double               hi,
                             int                  exclude_self,
                             enum mp_precision    precision,
                             int                  exact,
                             struct mp_knn_stats *stats); // may be NULL

#endif
