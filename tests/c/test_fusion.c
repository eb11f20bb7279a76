/* test_fusion.c: mp_fuse and mp_fuse_scores against a plain double-precision weighted sum and
 * normalisation: out of place and in place (out aliasing each input in turn), with and without
 * weights, zero rows, shapes large enough to run threaded, and the argument errors. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "megapairs.h"

static float *random_floats(int64_t n, unsigned *seed) {
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = (float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f;
    return x;
}

static void reference(float *want, float *const *in, const float *w, int64_t S, int64_t N, int64_t D, int normalize) {
    for (int64_t n = 0; n < N; n++) {
        double row[512], ss = 0.0;
        for (int64_t j = 0; j < D; j++) {
            row[j] = 0.0;
            for (int64_t s = 0; s < S; s++) row[j] += (w ? w[s] : 1.0) * in[s][n * D + j];
            ss += row[j] * row[j];
        }
        double scale = normalize ? 1.0 / fmax(sqrt(ss), 1e-12) : 1.0;
        for (int64_t j = 0; j < D; j++) want[n * D + j] = (float)(row[j] * scale);
    }
}

static void test_fuse(int64_t S, int64_t N, int64_t D, int weighted, int normalize) {
    unsigned seed = (unsigned)(S * 1000 + N + D);
    float *in[4], w[4] = {0.5f, -1.25f, 2.0f, 0.75f};
    for (int64_t s = 0; s < S; s++) in[s] = random_floats(N * D, &seed);
    if (N > 1) memset(in[0] + D, 0, (size_t)D * sizeof(float)); // row 1 of input 0 ...
    if (N > 1)
        for (int64_t s = 1; s < S; s++) memset(in[s] + D, 0, (size_t)D * sizeof(float)); // ... and of all: a zero row
    float *want = malloc((size_t)(N * D) * sizeof *want), *out = malloc((size_t)(N * D) * sizeof *out);
    const float *weights = weighted ? w : NULL;
    reference(want, in, weights, S, N, D, normalize);
    // Each output element is a sum of S fp32 products: within S ulps of its magnitude bound.
    const float tol = 4e-7f * (float)S * (weighted ? 2.5f : 1.0f) * (normalize ? 1.0f : 4.0f);
    CHECK(mp_fuse(out, (const float *const *)in, weights, S, N, D, normalize) == MP_STATUS_OK, "mp_fuse: %s",
          mp_last_error());
    char label[96];
    snprintf(label, sizeof label, "fuse S=%lld N=%lld D=%lld w=%d norm=%d", (long long)S, (long long)N, (long long)D,
             weighted, normalize);
    check_close(out, want, N * D, tol, label);
    if (N > 1) {
        int zero = 1;
        for (int64_t j = 0; j < D; j++) zero &= out[D + j] == 0.0f;
        CHECK(zero, "%s: a zero row stays zero", label);
    }
    for (int64_t a = 0; a < S; a++) { // in place: the output is input a
        float *copy = malloc((size_t)(N * D) * sizeof *copy);
        memcpy(copy, in[a], (size_t)(N * D) * sizeof *copy);
        CHECK(mp_fuse(in[a], (const float *const *)in, weights, S, N, D, normalize) == MP_STATUS_OK, "in place");
        snprintf(label, sizeof label, "fuse in place into input %lld (S=%lld N=%lld)", (long long)a, (long long)S,
                 (long long)N);
        check_close(in[a], want, N * D, tol, label);
        memcpy(in[a], copy, (size_t)(N * D) * sizeof *copy);
        free(copy);
    }
    for (int64_t s = 0; s < S; s++) free(in[s]);
    free(want), free(out);
}

static void test_fuse_scores(int64_t S, int64_t n, int weighted) {
    unsigned seed = (unsigned)(S * 77 + n);
    float *in[3], w[3] = {0.5f, 0.3f, 0.2f};
    for (int64_t s = 0; s < S; s++) in[s] = random_floats(n, &seed);
    float *want = malloc((size_t)(n ? n : 1) * sizeof *want), *out = malloc((size_t)(n ? n : 1) * sizeof *out);
    reference(want, in, weighted ? w : NULL, S, n, 1, 0);
    CHECK(mp_fuse_scores(out, (const float *const *)in, weighted ? w : NULL, S, n) == MP_STATUS_OK, "fuse_scores: %s",
          mp_last_error());
    char label[64];
    snprintf(label, sizeof label, "fuse_scores S=%lld n=%lld w=%d", (long long)S, (long long)n, weighted);
    check_close(out, want, n, 4e-7f * (float)S, label);
    CHECK(mp_fuse_scores(in[S - 1], (const float *const *)in, weighted ? w : NULL, S, n) == MP_STATUS_OK, "in place");
    check_close(in[S - 1], want, n, 4e-7f * (float)S, "fuse_scores in place");
    for (int64_t s = 0; s < S; s++) free(in[s]);
    free(want), free(out);
}

static void test_errors(void) {
    float a[4] = {1, 2, 3, 4}, out[4];
    const float *in[2] = {a, NULL}, *one[1] = {a};
    CHECK(mp_fuse(out, one, NULL, 0, 2, 2, 1) == MP_STATUS_INVALID_ARGUMENT && strstr(mp_last_error(), "count"),
          "count 0: %s", mp_last_error());
    CHECK(mp_fuse(out, in, NULL, 2, 2, 2, 1) == MP_STATUS_INVALID_ARGUMENT && strstr(mp_last_error(), "input 1"),
          "NULL input: %s", mp_last_error());
    CHECK(mp_fuse(out, one, NULL, 1, 2, 0, 1) == MP_STATUS_INVALID_ARGUMENT, "D = 0: %s", mp_last_error());
    CHECK(mp_fuse(out, one, NULL, 1, INT64_MAX / 2, 4, 1) == MP_STATUS_INVALID_ARGUMENT &&
              strstr(mp_last_error(), "too large"),
          "overflow: %s", mp_last_error());
    const float nan_w[1] = {NAN};
    CHECK(mp_fuse_scores(out, one, nan_w, 1, 4) == MP_STATUS_INVALID_ARGUMENT && strstr(mp_last_error(), "weights[0]"),
          "NaN weight: %s", mp_last_error());
    CHECK(mp_fuse_scores(NULL, one, NULL, 1, 4) == MP_STATUS_INVALID_ARGUMENT, "NULL out: %s", mp_last_error());
    CHECK(mp_fuse(out, one, NULL, 1, 0, 4, 1) == MP_STATUS_OK, "N = 0 is fine");
}

int main(void) {
    for (int S = 1; S <= 4; S++)
        for (int weighted = 0; weighted <= 1; weighted++)
            for (int normalize = 0; normalize <= 1; normalize++) {
                test_fuse(S, 5, 7, weighted, normalize);
                test_fuse(S, 300, 512, weighted, normalize); // threaded
            }
    for (int S = 1; S <= 3; S++) {
        test_fuse_scores(S, 0, 1);
        test_fuse_scores(S, 1000, 0);
        test_fuse_scores(S, 100003, 1); // threaded, a ragged last chunk
    }
    test_errors();
    return check_summary("test_fusion");
}
