/* test_knn.c: mp_knn_search against a naive double-precision top-k (scores of every pair,
 * selection by repeated scans with ties to the lower index), in both GEMM precisions, with and
 * without a band and exclude_self, on shapes that straddle the blocks. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "megapairs.h"

static float *random_floats(int64_t n, unsigned *seed, int quantised) {
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = quantised ? (float)(rand_r(seed) % 5 - 2) : (float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f;
    return x;
}

// The k best j (lo < s < hi, j != i under exclude_self) by (score desc, index asc).
static void naive(float *scores, int64_t *ids, const float *q, int64_t Q, const float *c, int64_t M, int64_t d,
                  int64_t k, double lo, double hi, int exclude_self) {
    double *s = malloc((size_t)M * sizeof *s);
    char *taken = malloc((size_t)M);
    for (int64_t i = 0; i < Q; i++) {
        for (int64_t j = 0; j < M; j++) {
            double sum = 0;
            for (int64_t t = 0; t < d; t++) sum += (double)q[i * d + t] * c[j * d + t];
            s[j] = sum;
            taken[j] = !(sum > lo && sum < hi) || (exclude_self && j == i);
        }
        for (int64_t r = 0; r < k; r++) {
            int64_t best = -1;
            for (int64_t j = 0; j < M; j++)
                if (!taken[j] && (best < 0 || s[j] > s[best])) best = j;
            scores[i * k + r] = best < 0 ? -INFINITY : (float)s[best];
            ids[i * k + r] = best;
            if (best >= 0) taken[best] = 1;
        }
    }
    free(s), free(taken);
}

int main(void) {
    // Q, M, d, k, quantised (integer vectors: exact ties), band
    const int64_t cases[][6] = {{1, 1, 1, 3, 0, 0},     {7, 300, 5, 4, 1, 1},    {64, 4097, 24, 10, 0, 0},
                                {2049, 70, 8, 5, 1, 0}, {33, 5000, 16, 100, 1, 1}, {20, 20, 3, 25, 0, 1}};
    unsigned seed = 5;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t Q = cases[c][0], M = cases[c][1], d = cases[c][2], k = cases[c][3];
        int quantised = (int)cases[c][4];
        double lo = cases[c][5] ? (quantised ? 0.0 : 0.1) : -INFINITY, hi = cases[c][5] ? (quantised ? 4.0 : 0.9) : INFINITY;
        float *corpus = random_floats(M * d, &seed, quantised);
        float *queries = Q <= M ? corpus : random_floats(Q * d, &seed, quantised);
        int exclude_self = Q <= M;
        float *want_s = malloc((size_t)(Q * k) * sizeof *want_s), *got_s = malloc((size_t)(Q * k) * sizeof *got_s);
        int64_t *want_i = malloc((size_t)(Q * k) * sizeof *want_i), *got_i = malloc((size_t)(Q * k) * sizeof *got_i);
        naive(want_s, want_i, queries, Q, corpus, M, d, k, lo, hi, exclude_self);
        for (int p = 0; p < 2; p++) {
            enum mp_precision precision = p ? MP_PRECISION_BF16 : MP_PRECISION_FP32;
            struct mp_knn_stats stats;
            enum mp_status s = mp_knn_search(got_s, NULL, got_i, queries, Q, corpus, M, d, k, lo, hi, exclude_self,
                                             precision, 1, &stats);
            int64_t wrong = 0;
            double worst = 0;
            for (int64_t i = 0; i < Q * k; i++) {
                wrong += got_i[i] != want_i[i];
                if (want_i[i] >= 0) worst = fmax(worst, fabs((double)got_s[i] - want_s[i]));
                else wrong += !(isinf(got_s[i]) && got_s[i] < 0);
            }
            CHECK(s == MP_STATUS_OK && wrong == 0 && worst <= 1e-6,
                  "case %zu (Q=%lld M=%lld d=%lld k=%lld) %s: status %d, %lld wrong, score error %g", c, (long long)Q,
                  (long long)M, (long long)d, (long long)k, p ? "bf16" : "fp32", (int)s, (long long)wrong, worst);
            // the unrounded scores: the same answer, each rounding to its float score, in
            // descending order (what a merge of results from corpus shards ranks by)
            double *got64 = malloc((size_t)(Q * k) * sizeof *got64);
            int64_t *again = malloc((size_t)(Q * k) * sizeof *again);
            s = mp_knn_search(got_s, got64, again, queries, Q, corpus, M, d, k, lo, hi, exclude_self, precision, 1,
                              NULL);
            int64_t off = 0;
            for (int64_t i = 0; i < Q * k; i++) {
                off += again[i] != got_i[i] || (float)got64[i] != got_s[i];
                off += i % k && got64[i] > got64[i - 1];
            }
            CHECK(s == MP_STATUS_OK && off == 0, "case %zu %s: scores64 disagree in %lld places", c,
                  p ? "bf16" : "fp32", (long long)off);
            free(got64), free(again);
        }
        if (queries != corpus) free(queries);
        free(corpus), free(want_s), free(got_s), free(want_i), free(got_i);
    }
    float x[4] = {1, 2, 3, 4}, s1[2];
    int64_t i1[2];
    CHECK(mp_knn_search(s1, NULL, i1, x, 2, x, 2, 2, 0, -INFINITY, INFINITY, 0, MP_PRECISION_FP32, 1, NULL) ==
              MP_STATUS_INVALID_ARGUMENT, "k = 0 is refused");
    CHECK(mp_knn_search(s1, NULL, i1, x, 2, x, 2, 2, 1, 1.0, 1.0, 0, MP_PRECISION_FP32, 1, NULL) ==
              MP_STATUS_INVALID_ARGUMENT, "lo = hi is refused");
    CHECK(mp_knn_search(s1, NULL, i1, x, 2, x, 0, 2, 1, -INFINITY, INFINITY, 0, MP_PRECISION_FP32, 1, NULL) == MP_STATUS_OK &&
              i1[0] == -1 && i1[1] == -1, "an empty corpus pads");
    (void)check_close; // scores are checked above with the padding rule
    return check_summary("test_knn");
}
