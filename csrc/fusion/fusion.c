/* fusion/fusion.c: weighted sums of embeddings or scores from several spaces, and the row L2
 * normalisation of a composed query. Memory-bound: one pass over the inputs per row (the row
 * stays in L1 for the normalisation), rows split among threads. */
#include "fusion/fusion.h"

#include <math.h>
#include <stddef.h>

static enum mp_status check_inputs(const char *who, const void *out, const float *const *inputs,
                                   const float *weights, int64_t count, int64_t rows, int64_t cols) {
    if (!out || !inputs) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: out and inputs must not be NULL", who);
    if (count < 1) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: count must be >= 1, got %lld", who, (long long)count);
    if (rows < 0 || cols < 1)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: shape (%lld, %lld) is empty or negative", who,
                        (long long)rows, (long long)cols);
    if (rows > INT64_MAX / cols || rows * cols > (int64_t)(SIZE_MAX / sizeof(float)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: shape (%lld, %lld) is too large", who, (long long)rows,
                        (long long)cols);
    for (int64_t s = 0; s < count; s++) {
        if (!inputs[s]) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: input %lld is NULL", who, (long long)s);
        if (weights && !isfinite(weights[s]))
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: weights[%lld] = %g is not finite", who, (long long)s,
                            (double)weights[s]);
    }
    return MP_STATUS_OK;
}

// x[j] = sum_s w[s] * in[s][j] for one row; in[s] may be x itself.
static void weighted_sum(float *x, const float *const *in, const float *w, int64_t count, int64_t off, int64_t D) {
    for (int64_t j = 0; j < D; j++) {
        float acc = 0.0f;
        for (int64_t s = 0; s < count; s++) acc += (w ? w[s] : 1.0f) * in[s][off + j];
        x[j] = acc;
    }
}

enum mp_status mp_fuse(float *out, const float *const *inputs, const float *weights, int64_t count, int64_t N,
                       int64_t D, int normalize) {
    enum mp_status status = check_inputs("mp_fuse", out, inputs, weights, count, N, D);
    if (status != MP_STATUS_OK) return status;
#pragma omp parallel for schedule(static) if (N * D * count > 65536)
    for (int64_t n = 0; n < N; n++) {
        float *x = out + n * D;
        weighted_sum(x, inputs, weights, count, n * D, D);
        if (!normalize) continue;
        double ss = 0.0;
        for (int64_t j = 0; j < D; j++) ss += (double)x[j] * x[j];
        const double norm = sqrt(ss);
        const float inv = (float)(1.0 / (norm > 1e-12 ? norm : 1e-12));
        for (int64_t j = 0; j < D; j++) x[j] *= inv;
    }
    return MP_STATUS_OK;
}

enum { SCORE_CHUNK = 4096 }; // elements per task: long enough to stream, short enough to balance

enum mp_status mp_fuse_scores(float *out, const float *const *scores, const float *weights, int64_t count,
                              int64_t n) {
    enum mp_status status = check_inputs("mp_fuse_scores", out, scores, weights, count, n, 1);
    if (status != MP_STATUS_OK) return status;
    const int64_t chunks = (n + SCORE_CHUNK - 1) / SCORE_CHUNK;
#pragma omp parallel for schedule(static) if (n * count > 65536)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t lo = c * SCORE_CHUNK, len = (n - lo < SCORE_CHUNK ? n - lo : SCORE_CHUNK);
        weighted_sum(out + lo, scores, weights, count, lo, len);
    }
    return MP_STATUS_OK;
}
