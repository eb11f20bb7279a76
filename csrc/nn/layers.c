/* nn/layers.c: the transformer layers below the block: LayerNorm (fp32 or bf16 out),
 * activations, the row softmax and multi-head attention (dense, bf16, packed and causal),
 * each a loop over rows with OpenMP; matmuls go through core/onednn.h. */
#include "nn/layers.h"

#include "core/simd.h"
#include "core/bf16.h"
#include "core/vexp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// sigmoid(a * z[i]) for 16 values, from the exponential of -|a z| only, so it never overflows.
static inline void sigmoid16(float *dst, const float *z, float a) {
    float e[EXP_BLOCK];
#pragma omp simd
    for (int i = 0; i < EXP_BLOCK; i++) e[i] = -fabsf(a * z[i]);
    exp_nonpositive16(e, e);
#pragma omp simd
    for (int i = 0; i < EXP_BLOCK; i++) dst[i] = (a * z[i] >= 0.0f ? 1.0f : e[i]) / (1.0f + e[i]);
}

static inline void layernorm_row(float *y, const float *x, const float *weight, const float *bias, int64_t D,
                                 float eps) {
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < D; i++) sum += x[i];
    double mean = sum / (double)D;
    for (int64_t i = 0; i < D; i++) sq += ((double)x[i] - mean) * ((double)x[i] - mean);
    float rstd = (float)(1.0 / sqrt(sq / (double)D + (double)eps));
    float m = (float)mean;
    for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}

void layernorm_forward(float *out, const float *in, const float *weight, const float *bias, int64_t N, int64_t D,
                       float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) layernorm_row(out + n * D, in + n * D, weight, bias, D, eps);
}

void layernorm_forward_bf16(uint16_t *out, const float *in, const float *weight, const float *bias, int64_t N,
                            int64_t D, float eps) {
#pragma omp parallel
    {
        float row[D];
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            layernorm_row(row, in + n * D, weight, bias, D, eps);
            round_bf16(out + n * D, row, D);
        }
    }
}

void gelu_forward(float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

// x * sigmoid(1.702 x) over n values; a last partial block goes through a padded copy.
MP_CLONES static void quick_gelu_span(float *x, int64_t n) {
    float s[EXP_BLOCK], tail[EXP_BLOCK] = {0};
    int64_t i = 0;
    for (; i + EXP_BLOCK <= n; i += EXP_BLOCK) {
        sigmoid16(s, x + i, 1.702f);
        for (int k = 0; k < EXP_BLOCK; k++) x[i + k] *= s[k];
    }
    if (i < n) {
        memcpy(tail, x + i, (size_t)(n - i) * sizeof *tail);
        sigmoid16(s, tail, 1.702f);
        for (int64_t k = 0; i + k < n; k++) x[i + k] *= s[k];
    }
}

void quick_gelu_forward(float *x, int64_t n) {
    enum { SPAN = 4096 };
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += SPAN) quick_gelu_span(x + i, n - i < SPAN ? n - i : SPAN);
}

// silu(gate) * up = gate * sigmoid(gate) * up over n values.
MP_CLONES static void swiglu_row(float *out, const float *gate, const float *up, int64_t n) {
    float s[EXP_BLOCK], tail[EXP_BLOCK] = {0};
    int64_t i = 0;
    for (; i + EXP_BLOCK <= n; i += EXP_BLOCK) {
        sigmoid16(s, gate + i, 1.0f);
        for (int k = 0; k < EXP_BLOCK; k++) out[i + k] = gate[i + k] * s[k] * up[i + k];
    }
    if (i < n) {
        memcpy(tail, gate + i, (size_t)(n - i) * sizeof *tail);
        sigmoid16(s, tail, 1.0f);
        for (int64_t k = 0; i + k < n; k++) out[i + k] = gate[i + k] * s[k] * up[i + k];
    }
}

void swiglu_forward(float *out, const float *in, int64_t N, int64_t H) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) swiglu_row(out + n * H, in + n * 2 * H, in + n * 2 * H + H, H);
}

enum { SCORES_BUDGET = 1 << 22 }; // floats of scores at a time (16 MB), at least one image

static int64_t images_per_chunk(int64_t B, int64_t T, int64_t H) {
    int64_t per_image = H * T * T, chunk = SCORES_BUDGET / (per_image > 0 ? per_image : 1);
    return chunk < 1 ? 1 : chunk > B ? B : chunk;
}

size_t attention_scores_size(int64_t B, int64_t T, int64_t D, int64_t H) {
    int64_t chunk = images_per_chunk(B, T, H);
    return (size_t)(chunk * H * T * T + 4 * chunk * T * D); // scores, then q, k^T, v, out per head
}

// softmax(scale * row) in place, 16 values at a time (a last partial block through a padded
// copy: a compiler's scalar remainder loop over a 197-token row cost more than its body).
MP_CLONES static void softmax_row(float *row, int64_t T, float scale) {
    float max = -INFINITY, sum = 0.0f, x[EXP_BLOCK];
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < T; j++) max = row[j] > max ? row[j] : max;
    int64_t j = 0;
    for (; j + EXP_BLOCK <= T; j += EXP_BLOCK) {
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) x[i] = (row[j + i] - max) * scale;
        exp_nonpositive16(row + j, x);
    }
    if (j < T) {
        for (int i = 0; i < EXP_BLOCK; i++) x[i] = j + i < T ? (row[j + i] - max) * scale : 0.0f;
        exp_nonpositive16(x, x);
        for (int64_t i = 0; j + i < T; i++) row[j + i] = x[i];
    }
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < T; j++) sum += row[j];
    float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < T; j++) row[j] *= inv;
}

// Softmax of each row; with `probs`, also the rows rounded to bf16 for the next matmul.
static void softmax_rows(float *s, uint16_t *probs, int64_t rows, int64_t T, float scale) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        softmax_row(s + r * T, T, scale);
        if (probs) round_bf16(probs + r * T, s + r * T, T);
    }
}

/* Attention with q, k, v and the output of type `io` (F32, or BF16 with bf16 `probs`).
 * oneDNN 3.2 runs its fast batched matmuls (brgemm: AMX for bf16, AVX-512 for f32) only on
 * dense per-head operands; on heads read in place from the qkv rows it falls back to a 2-4x
 * slower gemm. So each chunk's heads are first copied out, q (b, h, T, hd), k^T (b, h, hd, T)
 * and v (b, h, T, hd), and the per-head outputs (b, h, T, hd) copied back into rows. */
static enum mp_status attention(void *out, float *scores, void *heads, uint16_t *probs, const void *qkv,
                                enum mp_dtype io, int64_t B, int64_t T, int64_t D, int64_t H,
                                enum mp_precision precision) {
    int64_t hd = D / H, chunk = images_per_chunk(B, T, H);
    size_t es = io == MP_DTYPE_BF16 ? 2 : 4;
    float scale = 1.0f / sqrtf((float)hd);
    char *q = heads, *kt = q + es * (size_t)(chunk * T * D), *v = kt + es * (size_t)(chunk * T * D);
    char *o = v + es * (size_t)(chunk * T * D);
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        int64_t nb = B - b0 < chunk ? B - b0 : chunk;
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t h = 0; h < H; h++) {
                int64_t head = (b * H + h) * T * hd, row0 = (b0 + b) * T * 3 * D + h * hd;
                const char *rows = (const char *)qkv + es * (size_t)row0;
                for (int64_t t = 0; t < T; t++) {
                    const char *row = rows + es * (size_t)(t * 3 * D);
                    memcpy(q + es * (size_t)(head + t * hd), row, es * (size_t)hd);
                    memcpy(v + es * (size_t)(head + t * hd), row + es * (size_t)(2 * D), es * (size_t)hd);
                    if (es == 2) {
                        const uint16_t *k = (const uint16_t *)(row + es * (size_t)D);
                        uint16_t *dst = (uint16_t *)kt + head + t;
                        for (int64_t d = 0; d < hd; d++) dst[d * T] = k[d];
                    } else {
                        const float *k = (const float *)(row + es * (size_t)D);
                        float *dst = (float *)kt + head + t;
                        for (int64_t d = 0; d < hd; d++) dst[d * T] = k[d];
                    }
                }
            }
        const int64_t s_strides[4] = {H * T * T, T * T, T, 1}, h_strides[4] = {H * T * hd, T * hd, hd, 1},
                      kt_strides[4] = {H * hd * T, hd * T, T, 1};
        enum mp_status status = mp_matmul(scores, MP_DTYPE_F32, s_strides, q, io, h_strides, kt, io, kt_strides, nb,
                                          H, T, T, hd, precision, 0);
        if (status != MP_STATUS_OK) return status;
        softmax_rows(scores, io == MP_DTYPE_BF16 ? probs : NULL, nb * H * T, T, scale);
        const void *p = io == MP_DTYPE_BF16 ? (const void *)probs : (const void *)scores;
        status = mp_matmul(o, io, h_strides, p, io, s_strides, v, io, h_strides, nb, H, T, hd, T, precision, 0);
        if (status != MP_STATUS_OK) return status;
        // out[b, t, h * hd + d] = o[b, h, t, d]
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++)
                    memcpy((char *)out + es * (size_t)(((b0 + b) * T + t) * D + h * hd),
                           o + es * (size_t)(((b * H + h) * T + t) * hd), es * (size_t)hd);
    }
    return MP_STATUS_OK;
}

enum mp_status attention_forward(float *out, float *scores, const float *qkv, int64_t B, int64_t T, int64_t D,
                                 int64_t H, enum mp_precision precision) {
    float *heads = scores + images_per_chunk(B, T, H) * H * T * T;
    return attention(out, scores, heads, NULL, qkv, MP_DTYPE_F32, B, T, D, H, precision);
}

size_t attention_bf16_workspace_size(int64_t B, int64_t T, int64_t D, int64_t H) {
    int64_t chunk = images_per_chunk(B, T, H);
    return (size_t)(chunk * H * T * T + 4 * chunk * T * D); // probabilities, then q, k^T, v, out per head
}

enum mp_status attention_forward_bf16(uint16_t *out, float *scores, uint16_t *work, const uint16_t *qkv, int64_t B,
                                      int64_t T, int64_t D, int64_t H) {
    uint16_t *heads = work + images_per_chunk(B, T, H) * H * T * T;
    return attention(out, scores, heads, work, qkv, MP_DTYPE_BF16, B, T, D, H, MP_PRECISION_BF16);
}

void attention_forward_naive(float *out, const float *qkv, int64_t B, int64_t T, int64_t D, int64_t H) {
    int64_t hd = D / H;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                float scores[T]; // one query row of scores (T is a few thousand tokens at most)
                const float *base = qkv + b * T * 3 * D;
                for (int64_t i = 0; i < T; i++) {
                    const float *q = base + i * 3 * D + h * hd;
                    float max = -INFINITY;
                    for (int64_t j = 0; j < T; j++) {
                        const float *k = base + j * 3 * D + D + h * hd;
                        float s = 0.0f;
                        for (int64_t c = 0; c < hd; c++) s += q[c] * k[c];
                        scores[j] = s * scale;
                        max = scores[j] > max ? scores[j] : max;
                    }
                    float sum = 0.0f;
                    for (int64_t j = 0; j < T; j++) {
                        scores[j] = expf(scores[j] - max);
                        sum += scores[j];
                    }
                    float inv = 1.0f / sum;
                    float *o = out + (b * T + i) * D + h * hd;
                    for (int64_t c = 0; c < hd; c++) o[c] = 0.0f;
                    for (int64_t j = 0; j < T; j++) {
                        const float *v = base + j * 3 * D + 2 * D + h * hd;
                        float p = scores[j] * inv;
                        for (int64_t c = 0; c < hd; c++) o[c] += p * v[c];
                    }
                }
            }
}

/* Attention over packed sequences of different lengths (text): one (sequence, head) per task.
 * Text sequences are short (a caption is 10-40 tokens), where oneDNN's per-shape primitives
 * would cost more than the arithmetic. The head's keys are first copied transposed into
 * kT (hd, Tp), Tp = T rounded up to 16 with zero columns, so each score row is a sum over d
 * of q[d] * kT[d, :] in whole 16-lane blocks (a dot product per key spends its time in
 * horizontal sums, and a loop over only the t + 1 causal keys in scalar remainders). */
MP_CLONES static void attention_head(float *out, const float *qkv, float *row, float *kT, int64_t T, int64_t D,
                                     int64_t hd, int causal, float scale) {
    int64_t Tp = (T + EXP_BLOCK - 1) / EXP_BLOCK * EXP_BLOCK;
    for (int64_t d = 0; d < hd; d++)
        for (int64_t j = T; j < Tp; j++) kT[d * Tp + j] = 0.0f;
    for (int64_t j = 0; j < T; j++)
        for (int64_t d = 0; d < hd; d++) kT[d * Tp + j] = qkv[j * 3 * D + D + d];
    for (int64_t t = 0; t < T; t++) {
        const float *q = qkv + t * 3 * D;
        int64_t J = causal ? t + 1 : T, blocks = (J + EXP_BLOCK - 1) / EXP_BLOCK;
        for (int64_t b = 0; b < blocks; b++) { // two accumulators: half the add latency chain
            float acc[EXP_BLOCK] = {0}, acc2[EXP_BLOCK] = {0};
            const float *k = kT + b * EXP_BLOCK;
            int64_t d = 0;
            for (; d + 2 <= hd; d += 2) {
                float q0 = q[d], q1 = q[d + 1];
#pragma omp simd
                for (int i = 0; i < EXP_BLOCK; i++) {
                    acc[i] += q0 * k[d * Tp + i];
                    acc2[i] += q1 * k[(d + 1) * Tp + i];
                }
            }
            for (; d < hd; d++)
#pragma omp simd
                for (int i = 0; i < EXP_BLOCK; i++) acc[i] += q[d] * k[d * Tp + i];
#pragma omp simd
            for (int i = 0; i < EXP_BLOCK; i++) row[b * EXP_BLOCK + i] = acc[i] + acc2[i];
        }
        softmax_row(row, J, scale);
        // o = sum_j p[j] v[j], 16 features at a time held in registers across the keys
        float *o = out + t * D;
        int64_t d0 = 0;
        for (; d0 + EXP_BLOCK <= hd; d0 += EXP_BLOCK) {
            float acc[EXP_BLOCK] = {0};
            for (int64_t j = 0; j < J; j++) {
                const float *v = qkv + j * 3 * D + 2 * D + d0;
                float p = row[j];
#pragma omp simd
                for (int i = 0; i < EXP_BLOCK; i++) acc[i] += p * v[i];
            }
            memcpy(o + d0, acc, sizeof acc);
        }
        if (d0 < hd) { // a head width that is not a multiple of 16
            memset(o + d0, 0, (size_t)(hd - d0) * sizeof *o);
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = d0; d < hd; d++) o[d] += row[j] * qkv[j * 3 * D + 2 * D + d];
        }
    }
}

enum mp_status attention_varlen_forward(float *out, const float *qkv, const int64_t *offsets, int64_t N, int64_t D,
                                        int64_t H, int causal) {
    int64_t hd = D / H, longest = 1;
    for (int64_t s = 0; s < N; s++)
        if (offsets[s + 1] - offsets[s] > longest) longest = offsets[s + 1] - offsets[s];
    float scale = 1.0f / sqrtf((float)hd);
    int failed = 0;
#pragma omp parallel
    {
        int64_t padded = (longest + EXP_BLOCK - 1) / EXP_BLOCK * EXP_BLOCK;
        float *work = malloc((size_t)(padded * (hd + 1)) * sizeof *work); // score row, then k^T
        if (!work) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t job = 0; job < N * H; job++) {
            if (!work) continue;
            int64_t s = job / H, h = job % H, first = offsets[s];
            attention_head(out + first * D + h * hd, qkv + first * 3 * D + h * hd, work, work + padded,
                           offsets[s + 1] - first, D, hd, causal, scale);
        }
        free(work);
    }
    return failed ? mp_error(MP_STATUS_OUT_OF_MEMORY, "attention: cannot allocate a %lld-token workspace",
                             (long long)longest)
                  : MP_STATUS_OK;
}
