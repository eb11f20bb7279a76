#include "nn/layers.h"

#include "core/simd.h"

#include <math.h>
#include <string.h>

/* exp for fp32 in plain arithmetic, so loops over it vectorise (a libm call stops them).
 * Range reduction x = n ln2 + r with ln2 split in two, a degree-6 polynomial for e^r on
 * [-ln2/2, ln2/2] (the Cephes expf coefficients, about 1 ulp), then 2^n through the
 * exponent bits. Inputs are <= 0 here (softmax after subtracting the max, sigmoid of
 * -|z|); below -87.3 the result is 0 (e^-87.3 is the smallest normal float). */
static inline float exp_nonpositive(float x) {
    float keep = (float)(x >= -87.3f); // 0 for the range that underflows, 1 elsewhere
    x = x < -87.3f ? -87.3f : x;
    float t = x * 1.44269504088896341f + 0.5f;
    int32_t i = (int32_t)t;
    i -= (float)i > t; // floor for negative t
    float n = (float)i;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = (i + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale * keep;
}

void layernorm_forward(float *out, const float *in, const float *weight, const float *bias, int64_t N, int64_t D,
                       float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = in + n * D;
        double sum = 0.0, sq = 0.0;
        for (int64_t i = 0; i < D; i++) sum += x[i];
        double mean = sum / (double)D;
        for (int64_t i = 0; i < D; i++) sq += ((double)x[i] - mean) * ((double)x[i] - mean);
        float rstd = (float)(1.0 / sqrt(sq / (double)D + (double)eps));
        float m = (float)mean;
        float *y = out + n * D;
        for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
    }
}

void gelu_forward(float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

// x * sigmoid(1.702 x), with the exponential of -|z| only, so it never overflows.
MP_CLONES static void quick_gelu_span(float *x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float z = 1.702f * x[i];
        float e = exp_nonpositive(-fabsf(z));
        x[i] *= (z >= 0.0f ? 1.0f : e) / (1.0f + e); // sigmoid(z), one division
    }
}

void quick_gelu_forward(float *x, int64_t n) {
    enum { SPAN = 4096 };
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += SPAN) quick_gelu_span(x + i, n - i < SPAN ? n - i : SPAN);
}

// silu(gate) * up with silu(z) = z * sigmoid(z), as quick_gelu's sigmoid above.
MP_CLONES static void swiglu_row(float *out, const float *gate, const float *up, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float z = gate[i];
        float e = exp_nonpositive(-fabsf(z));
        out[i] = z * ((z >= 0.0f ? 1.0f : e) / (1.0f + e)) * up[i];
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

size_t attention_scores_size(int64_t B, int64_t T, int64_t H) {
    return (size_t)(images_per_chunk(B, T, H) * H * T * T);
}

// softmax(scale * row) in place.
MP_CLONES static void softmax_row(float *row, int64_t T, float scale) {
    float max = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < T; j++) max = row[j] > max ? row[j] : max;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < T; j++) {
        row[j] = exp_nonpositive((row[j] - max) * scale);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < T; j++) row[j] *= inv;
}

static void softmax_rows(float *s, int64_t rows, int64_t T, float scale) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) softmax_row(s + r * T, T, scale);
}

enum mp_status attention_forward(float *out, float *scores, const float *qkv, int64_t B, int64_t T, int64_t D,
                                 int64_t H, enum mp_precision precision) {
    int64_t hd = D / H, chunk = images_per_chunk(B, T, H);
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        int64_t nb = B - b0 < chunk ? B - b0 : chunk;
        const float *base = qkv + b0 * T * 3 * D;
        // scores = q k^T per (image, head): q (T, hd) and k^T (hd, T) read from the qkv rows.
        const int64_t s_strides[4] = {H * T * T, T * T, T, 1}, q_strides[4] = {T * 3 * D, hd, 3 * D, 1},
                      kt_strides[4] = {T * 3 * D, hd, 1, 3 * D};
        enum mp_status status = mp_matmul_strided(scores, s_strides, base, q_strides, base + D, kt_strides, nb, H, T,
                                                  T, hd, precision);
        if (status != MP_STATUS_OK) return status;
        softmax_rows(scores, nb * H * T, T, scale);
        // out = p v per (image, head), written into the head's columns of out.
        const int64_t v_strides[4] = {T * 3 * D, hd, 3 * D, 1}, o_strides[4] = {T * D, hd, D, 1};
        status = mp_matmul_strided(out + b0 * T * D, o_strides, scores, s_strides, base + 2 * D, v_strides, nb, H, T,
                                   hd, T, precision);
        if (status != MP_STATUS_OK) return status;
    }
    return MP_STATUS_OK;
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
