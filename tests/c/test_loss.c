/* test_loss.c: mp_infonce against a naive double-precision InfoNCE (every score, softmax,
 * gradients by the formula), with and without false-negative masking, on batches that do and
 * do not fill the 256-row block. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "megapairs.h"

static void naive(double *loss, double *dq, double *dc, double *dtau, const float *q, const float *c,
                  const int64_t *pos, const int64_t *ids, int64_t B, int64_t N, int64_t E, double tau) {
    double *s = malloc((size_t)N * sizeof *s), *p = malloc((size_t)N * sizeof *p);
    *loss = 0, *dtau = 0;
    for (int64_t i = 0; i < B * E; i++) dq[i] = 0;
    for (int64_t i = 0; i < N * E; i++) dc[i] = 0;
    for (int64_t i = 0; i < B; i++) {
        double max = -INFINITY, sum = 0, mean_s = 0;
        for (int64_t j = 0; j < N; j++) {
            double d = 0;
            for (int64_t t = 0; t < E; t++) d += (double)q[i * E + t] * c[j * E + t];
            s[j] = d;
            int masked = ids && j != pos[i] && ids[j] == ids[pos[i]];
            if (!masked && d / tau > max) max = d / tau;
        }
        for (int64_t j = 0; j < N; j++) {
            int masked = ids && j != pos[i] && ids[j] == ids[pos[i]];
            sum += (p[j] = masked ? 0 : exp(s[j] / tau - max));
        }
        for (int64_t j = 0; j < N; j++) p[j] /= sum, mean_s += p[j] * s[j];
        *loss += (max + log(sum) - s[pos[i]] / tau) / B;
        *dtau += (s[pos[i]] - mean_s) / (tau * tau) / B;
        for (int64_t j = 0; j < N; j++) {
            double g = (p[j] - (j == pos[i])) / (tau * B);
            for (int64_t t = 0; t < E; t++) {
                dq[i * E + t] += g * c[j * E + t];
                dc[j * E + t] += g * q[i * E + t];
            }
        }
    }
    free(s), free(p);
}

static double max_rel(const float *a, const double *b, int64_t n) {
    double err = 0, scale = 1e-30;
    for (int64_t i = 0; i < n; i++) err = fmax(err, fabs(a[i] - b[i])), scale = fmax(scale, fabs(b[i]));
    return err / scale;
}

int main(void) {
    const int64_t cases[][4] = {{1, 4, 3, 0}, {5, 15, 8, 1}, {300, 600, 16, 1}, {257, 257, 5, 0}}; // B, N, E, ids
    unsigned seed = 9;
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int64_t B = cases[k][0], N = cases[k][1], E = cases[k][2];
        float *q = malloc((size_t)(B * E) * sizeof *q), *c = malloc((size_t)(N * E) * sizeof *c);
        float *dq = malloc((size_t)(B * E) * sizeof *dq), *dc = malloc((size_t)(N * E) * sizeof *dc);
        double *wq = malloc((size_t)(B * E) * sizeof *wq), *wc = malloc((size_t)(N * E) * sizeof *wc);
        int64_t *pos = malloc((size_t)B * sizeof *pos), *ids = cases[k][3] ? malloc((size_t)N * sizeof *ids) : NULL;
        for (int64_t i = 0; i < B * E; i++) q[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
        for (int64_t i = 0; i < N * E; i++) c[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
        for (int64_t i = 0; i < B; i++) pos[i] = rand_r(&seed) % N;
        for (int64_t j = 0; ids && j < N; j++) ids[j] = rand_r(&seed) % 7;
        float loss, dtau;
        double want, want_tau;
        naive(&want, wq, wc, &want_tau, q, c, pos, ids, B, N, E, 0.1);
        enum mp_status s = mp_infonce(&loss, dq, dc, &dtau, q, c, pos, ids, B, N, E, 0.1f, NULL, MP_PRECISION_FP32);
        CHECK(s == MP_STATUS_OK && fabs(loss - want) <= 1e-5 * fabs(want) && max_rel(dq, wq, B * E) <= 1e-5 &&
                  max_rel(dc, wc, N * E) <= 1e-5 && fabs(dtau - want_tau) <= 1e-5 * fabs(want_tau),
              "case %zu (B=%lld N=%lld): status %d loss %g vs %g, dq %g, dc %g, dtau %g vs %g", k, (long long)B,
              (long long)N, (int)s, loss, want, max_rel(dq, wq, B * E), max_rel(dc, wc, N * E), dtau, want_tau);
        free(q), free(c), free(dq), free(dc), free(wq), free(wc), free(pos), free(ids);
    }
    { // bf16 GEMMs (packed candidates, bf16 probabilities): close to the double reference, with
      // the positive's term exact; bounds from bf16 rounding (2^-9) of scores / tau and operands
        int64_t B = 300, N = 900, E = 64;
        unsigned seed2 = 4;
        float *q = malloc((size_t)(B * E) * sizeof *q), *c = malloc((size_t)(N * E) * sizeof *c);
        float *dq = malloc((size_t)(B * E) * sizeof *dq), *dc = malloc((size_t)(N * E) * sizeof *dc);
        double *wq = malloc((size_t)(B * E) * sizeof *wq), *wc = malloc((size_t)(N * E) * sizeof *wc);
        int64_t *pos = malloc((size_t)B * sizeof *pos), *ids = malloc((size_t)N * sizeof *ids);
        for (int64_t i = 0; i < B * E; i++) q[i] = ((float)rand_r(&seed2) / RAND_MAX - 0.5f) * 0.25f;
        for (int64_t i = 0; i < N * E; i++) c[i] = ((float)rand_r(&seed2) / RAND_MAX - 0.5f) * 0.25f;
        for (int64_t i = 0; i < B; i++) pos[i] = rand_r(&seed2) % N;
        for (int64_t j = 0; j < N; j++) ids[j] = rand_r(&seed2) % 50;
        float loss, dtau, rows[300];
        double want, want_tau;
        naive(&want, wq, wc, &want_tau, q, c, pos, ids, B, N, E, 0.05);
        enum mp_status s = mp_infonce(&loss, dq, dc, &dtau, q, c, pos, ids, B, N, E, 0.05f, rows, MP_PRECISION_BF16);
        CHECK(s == MP_STATUS_OK && fabs(loss - want) <= 1e-3 * fabs(want) && max_rel(dq, wq, B * E) <= 1e-2 &&
                  max_rel(dc, wc, N * E) <= 1e-2 && fabs(dtau - want_tau) <= 1e-3 * fabs(want_tau),
              "bf16: status %d loss %g vs %g, dq %g, dc %g, dtau %g vs %g", (int)s, loss, want, max_rel(dq, wq, B * E),
              max_rel(dc, wc, N * E), dtau, want_tau);
        s = mp_infonce(&loss, NULL, NULL, NULL, q, c, pos, ids, B, N, E, 0.05f, NULL, MP_PRECISION_BF16);
        CHECK(s == MP_STATUS_OK && fabs(loss - want) <= 1e-3 * fabs(want), "bf16 forward only: loss %g vs %g", loss,
              want);
        free(q), free(c), free(dq), free(dc), free(wq), free(wc), free(pos), free(ids);
    }
    float x[2] = {1, 2}, loss;
    int64_t bad = 3;
    CHECK(mp_infonce(&loss, NULL, NULL, NULL, x, x, &bad, NULL, 1, 1, 2, 0.1f, NULL, MP_PRECISION_FP32) == MP_STATUS_INVALID_ARGUMENT,
          "a positive outside the candidates is refused");
    int64_t zero = 0;
    CHECK(mp_infonce(&loss, NULL, NULL, NULL, x, x, &zero, NULL, 1, 1, 2, 0.0f, NULL, MP_PRECISION_FP32) == MP_STATUS_INVALID_ARGUMENT,
          "tau = 0 is refused");
    (void)check_close;
    return check_summary("test_loss");
}
