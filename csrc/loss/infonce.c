/* loss/infonce.c: InfoNCE forward and backward in one pass over blocks of rows: a block of
 * scores from one GEMM, each row's softmax and gradient in place, then the dq / dc GEMMs
 * from the same block, so the B x N score matrix never exists whole. */
#include "loss/infonce.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/bf16.h"
#include "core/onednn.h"
#include "core/simd.h"
#include "core/vexp.h"
#include "nn/linear.h"

/* One row of scores s (N) -> its loss term and, in place, `scale` * p / tau, p the softmax over
 * the kept candidates (d term / d s is that minus the one-hot positive over tau: the caller
 * adds the positive's part exactly, outside the GEMMs). Returns the term; *tau_grad
 * gets d term / d tau = (s_pos - sum_j p_j s_j) / tau^2. Masked candidates get gradient 0.
 * Three passes over the row (it stays in L2): the max; e_j = exp((s_j - max) / tau), written
 * in place while sum e_j and sum e_j s_j accumulate; the scaling. The exponentials are fp32,
 * 16 at a time (about 1 ulp); each 16-lane partial sum covers at most ROW_CHUNK values before
 * it is added in double. */
enum { ROW_CHUNK = 1024 };

static inline int masked(const int64_t *ids, int64_t dup, int64_t j, int64_t pos) {
    return ids && j != pos && ids[j] == dup;
}

MP_CLONES static double row_forward_backward(float *s, int64_t N, int64_t pos, const int64_t *ids, float tau,
                                             float scale, int grad, double *tau_grad) {
    const float inv = 1.0f / tau, s_pos = s[pos];
    const int64_t dup = ids ? ids[pos] : 0;
    float max = s_pos; // the positive is never masked
    if (ids) {
        for (int64_t j = 0; j < N; j++)
            if (!masked(ids, dup, j, pos) && s[j] > max) max = s[j];
    } else {
#pragma omp simd reduction(max : max)
        for (int64_t j = 0; j < N; j++) max = s[j] > max ? s[j] : max;
    }
    double sum = 0.0, weighted = 0.0; // sum_j e_j, sum_j e_j s_j
    for (int64_t j0 = 0; j0 < N; j0 += ROW_CHUNK) {
        float lane_sum[EXP_BLOCK] = {0}, lane_weighted[EXP_BLOCK] = {0};
        int64_t j1 = j0 + ROW_CHUNK < N ? j0 + ROW_CHUNK : N;
        for (int64_t j = j0; j < j1; j += EXP_BLOCK) {
            float x[EXP_BLOCK], v[EXP_BLOCK];
            int n = j1 - j < EXP_BLOCK ? (int)(j1 - j) : EXP_BLOCK;
            if (n == EXP_BLOCK) { // full block: straight vector code
                memcpy(v, s + j, sizeof v);
#pragma omp simd
                for (int i = 0; i < EXP_BLOCK; i++) x[i] = (v[i] - max) * inv;
            } else { // the tail, padded with exp(-inf) = 0
                for (int i = 0; i < EXP_BLOCK; i++) {
                    v[i] = i < n ? s[j + i] : max;
                    x[i] = i < n ? (v[i] - max) * inv : -INFINITY;
                }
            }
            if (ids)
                for (int i = 0; i < n; i++)
                    if (masked(ids, dup, j + i, pos)) x[i] = -INFINITY;
            exp_nonpositive16(x, x);
#pragma omp simd
            for (int i = 0; i < EXP_BLOCK; i++) {
                lane_sum[i] += x[i];
                lane_weighted[i] += x[i] * v[i];
            }
            if (n == EXP_BLOCK) memcpy(s + j, x, sizeof x);
            else memcpy(s + j, x, (size_t)n * sizeof *x);
        }
        for (int i = 0; i < EXP_BLOCK; i++) sum += lane_sum[i], weighted += lane_weighted[i];
    }
    double term = (double)max * inv + log(sum) - (double)s_pos * inv;
    if (!grad) return term;
    *tau_grad = ((double)s_pos - weighted / sum) * inv * inv;
    const float g = (float)(scale / sum) * inv;
#pragma omp simd
    for (int64_t j = 0; j < N; j++) s[j] *= g;
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
    int grad = dq || dc || dtau, bf16 = precision == MP_PRECISION_BF16;
    int64_t R = B < MP_INFONCE_ROWS ? B : MP_INFONCE_ROWS;
    float *block = malloc((size_t)(R * N) * sizeof *block);
    uint16_t *block16 = bf16 && (dq || dc) ? malloc((size_t)(R * N) * sizeof *block16) : NULL; // p in bf16
    uint16_t *q16 = bf16 && dc ? malloc((size_t)(R * E) * sizeof *q16) : NULL;
    double *terms = malloc((size_t)B * sizeof *terms), *tau_terms = malloc((size_t)B * sizeof *tau_terms);
    // bf16: c packed once (AMX layout) for q c^T and for p c; repacking it per block would cost
    // as much as the GEMM itself.
    struct mp_linear *scores = NULL, *times_c = NULL;
    enum mp_status status = MP_STATUS_OK;
    if (!block || !terms || !tau_terms || (bf16 && (dq || dc) && !block16) || (bf16 && dc && !q16)) {
        status = mp_error(MP_STATUS_OUT_OF_MEMORY, "infonce: cannot allocate a %lld x %lld score block", (long long)R,
                          (long long)N);
        goto done;
    }
    if (bf16 && (status = mp_linear_init(&scores, c, NULL, N, E, precision, MP_OP_NONE, 0))) goto done;
    if (bf16 && dq && (status = mp_linear_init_kn(&times_c, c, E, N, precision))) goto done;
    if (dc) memset(dc, 0, (size_t)(N * E) * sizeof *dc);
    const float scale = 1.0f / (float)B; // d loss / d s = d term / d s / B
    for (int64_t r0 = 0; r0 < B; r0 += R) {
        int64_t nr = B - r0 < R ? B - r0 : R;
        status = bf16 ? mp_linear_forward(scores, block, q + r0 * E, nr)
                      : mp_matmul_nt(block, q + r0 * E, c, nr, N, E, precision);
        if (status) goto done;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr; i++) {
            tau_terms[r0 + i] = 0.0;
            terms[r0 + i] = row_forward_backward(block + i * N, N, pos[r0 + i], ids, tau, scale, grad,
                                                 &tau_terms[r0 + i]);
            if (block16) round_bf16(block16 + i * N, block + i * N, N);
        }
        if (!grad) continue;
        // block = P scale / tau (nr, N): dq = P c, dc += P^T q (the positives' part comes after)
        if (dq && bf16) {
            if ((status = mp_linear_forward_typed(times_c, dq + r0 * E, MP_DTYPE_F32, block16, MP_DTYPE_BF16, nr)))
                goto done;
        } else if (dq) {
            const int64_t out_s[4] = {nr * E, nr * E, E, 1}, a_s[4] = {nr * N, nr * N, N, 1},
                          b_s[4] = {N * E, N * E, E, 1};
            if ((status = mp_matmul(dq + r0 * E, MP_DTYPE_F32, out_s, block, MP_DTYPE_F32, a_s, c, MP_DTYPE_F32, b_s,
                                    1, 1, nr, E, N, precision, 0)))
                goto done;
        }
        if (dc) {
            // a = P^T (N, nr)
            const int64_t out_s[4] = {N * E, N * E, E, 1}, a_s[4] = {N * nr, N * nr, 1, N}, b_s[4] = {nr * E, nr * E, E, 1};
            if (bf16) mp_dtype_convert(q16, MP_DTYPE_BF16, q + r0 * E, MP_DTYPE_F32, nr * E);
            status = bf16 ? mp_matmul(dc, MP_DTYPE_F32, out_s, block16, MP_DTYPE_BF16, a_s, q16, MP_DTYPE_BF16, b_s, 1, 1,
                                      N, E, nr, precision, 1)
                          : mp_matmul(dc, MP_DTYPE_F32, out_s, block, MP_DTYPE_F32, a_s, q + r0 * E, MP_DTYPE_F32, b_s,
                                      1, 1, N, E, nr, precision, 1);
            if (status) goto done;
        }
    }
    if (grad) { // the one-hot positive: dq_i -= c_pos(i) / (B tau), dc_pos(i) -= q_i / (B tau), in fp32
        const float g = scale / tau;
        if (dq) {
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < B; i++)
                for (int64_t k = 0; k < E; k++) dq[i * E + k] -= g * c[pos[i] * E + k];
        }
        if (dc) // rows may share a positive: columns split across threads instead of rows
#pragma omp parallel for schedule(static)
            for (int64_t k0 = 0; k0 < E; k0 += 16)
                for (int64_t i = 0; i < B; i++)
                    for (int64_t k = k0; k < E && k < k0 + 16; k++) dc[pos[i] * E + k] -= g * q[i * E + k];
    }
    double total = 0.0, total_tau = 0.0;
    for (int64_t i = 0; i < B; i++) {
        total += terms[i], total_tau += tau_terms[i];
        if (row_loss) row_loss[i] = (float)terms[i];
    }
    *loss = (float)(total / (double)B);
    if (dtau) *dtau = (float)(total_tau / (double)B);
done:
    mp_linear_free(scores), mp_linear_free(times_c);
    free(block), free(block16), free(q16), free(terms), free(tau_terms);
    return status;
}
