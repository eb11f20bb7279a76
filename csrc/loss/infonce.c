#include "loss/infonce.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/onednn.h"
#include "core/simd.h"
#include "core/vexp.h"

/* One row of scores s (N) -> its loss term and, in place, d term / d s: the softmax over the
 * kept candidates minus the one-hot positive, over tau. Returns the term; *tau_grad gets
 * d term / d tau = (s_pos - sum_j p_j s_j) / tau^2. Masked candidates get gradient 0. The
 * exponentials are fp32, 16 at a time (about 1 ulp); sums are double. `e` holds N + 16 floats. */
MP_CLONES static double row_forward_backward(float *s, float *e, int64_t N, int64_t pos, const int64_t *ids, float tau,
                                             int grad, double *tau_grad) {
    float inv = 1.0f / tau, max = -INFINITY;
    int64_t dup = ids ? ids[pos] : 0;
    for (int64_t j = 0; j < N; j++) e[j] = (ids && j != pos && ids[j] == dup) ? -INFINITY : s[j] * inv;
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < N; j++) max = e[j] > max ? e[j] : max;
    double sum = 0.0;
    for (int64_t j = 0; j < N; j += EXP_BLOCK) {
        float x[EXP_BLOCK], block_sum = 0.0f;
        for (int i = 0; i < EXP_BLOCK; i++) x[i] = j + i < N ? e[j + i] - max : -INFINITY;
        exp_nonpositive16(x, x);
#pragma omp simd reduction(+ : block_sum)
        for (int i = 0; i < EXP_BLOCK; i++) block_sum += x[i];
        memcpy(e + j, x, sizeof x); // e has 16 floats of slack past N
        sum += block_sum;
    }
    double lse = (double)max + log(sum), s_pos = s[pos], term = lse - s_pos * (double)inv;
    if (!grad) return term;
    double expected = 0.0, inv_sum = 1.0 / sum; // sum_j p_j s_j
    for (int64_t j = 0; j < N; j++) {
        double p = e[j] * inv_sum;
        expected += p * s[j];
        s[j] = (float)((p - (j == pos)) * inv);
    }
    *tau_grad = (s_pos - expected) * inv * inv;
    return term;
}

enum mp_status mp_infonce(float *loss, float *dq, float *dc, float *dtau, const float *q, const float *c,
                          const int64_t *pos, const int64_t *ids, int64_t B, int64_t N, int64_t E, float tau,
                          float *row_loss, enum mp_precision precision) {
    if (!loss || !q || !c || !pos || B <= 0 || N <= 0 || E <= 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "infonce: bad arguments (B=%lld N=%lld E=%lld)", (long long)B,
                        (long long)N, (long long)E);
    if (!(tau > 0.0f) || !isfinite(tau)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "infonce: temperature must be > 0");
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "infonce: unknown precision");
    for (int64_t i = 0; i < B; i++)
        if (pos[i] < 0 || pos[i] >= N)
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "infonce: positive of row %lld is %lld, outside [0, %lld)",
                            (long long)i, (long long)pos[i], (long long)N);
    int grad = dq || dc || dtau;
    int64_t R = B < MP_INFONCE_ROWS ? B : MP_INFONCE_ROWS;
    float *block = malloc((size_t)(R * N) * sizeof *block);
    double *terms = malloc((size_t)B * sizeof *terms), *tau_terms = malloc((size_t)B * sizeof *tau_terms);
    enum mp_status status = MP_STATUS_OK;
    if (!block || !terms || !tau_terms) {
        status = mp_error(MP_STATUS_OUT_OF_MEMORY, "infonce: cannot allocate a %lld x %lld score block", (long long)R,
                          (long long)N);
        goto done;
    }
    if (dc) memset(dc, 0, (size_t)(N * E) * sizeof *dc);
    for (int64_t r0 = 0; r0 < B; r0 += R) {
        int64_t nr = B - r0 < R ? B - r0 : R;
        if ((status = mp_matmul_nt(block, q + r0 * E, c, nr, N, E, precision))) goto done;
        int failed = 0;
#pragma omp parallel
        {
            float *e = malloc((size_t)(N + EXP_BLOCK) * sizeof *e);
            if (!e) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < nr; i++) {
                tau_terms[r0 + i] = 0.0;
                if (e)
                    terms[r0 + i] = row_forward_backward(block + i * N, e, N, pos[r0 + i], ids, tau, grad,
                                                         &tau_terms[r0 + i]);
            }
            free(e);
        }
        if (failed) {
            status = mp_error(MP_STATUS_OUT_OF_MEMORY, "infonce: cannot allocate a row buffer");
            goto done;
        }
        if (!grad) continue;
        // d loss / d s = (block) / B; dq = dS c, dc += dS^T q
        float scale = 1.0f / (float)B;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr * N; i++) block[i] *= scale;
        if (dq) {
            const int64_t out_s[4] = {nr * E, nr * E, E, 1}, a_s[4] = {nr * N, nr * N, N, 1},
                          b_s[4] = {N * E, N * E, E, 1};
            if ((status = mp_matmul_strided(dq + r0 * E, out_s, block, a_s, c, b_s, 1, 1, nr, E, N, precision)))
                goto done;
        }
        if (dc) {
            const int64_t out_s[2] = {E, 1}, a_s[2] = {1, N}, b_s[2] = {E, 1}; // a = block^T (N, nr)
            if ((status = mp_matmul_strided_accumulate(dc, out_s, block, a_s, q + r0 * E, b_s, N, E, nr, precision)))
                goto done;
        }
    }
    double total = 0.0, total_tau = 0.0;
    for (int64_t i = 0; i < B; i++) {
        total += terms[i], total_tau += tau_terms[i];
        if (row_loss) row_loss[i] = (float)terms[i];
    }
    *loss = (float)(total / (double)B);
    if (dtau) *dtau = (float)(total_tau / (double)B);
done:
    free(block), free(terms), free(tau_terms);
    return status;
}
