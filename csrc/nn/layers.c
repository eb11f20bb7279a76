#include "nn/layers.h"

#include <math.h>

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

void bias_forward(float *x, const float *bias, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < D; i++) x[n * D + i] += bias[i];
}

void gelu_forward(float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void quick_gelu_forward(float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

void residual_forward(float *x, const float *y, const float *scale, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < D; i++) x[n * D + i] += (scale ? scale[i] : 1.0f) * y[n * D + i];
}

void attention_forward(float *out, const float *qkv, int64_t B, int64_t T, int64_t D, int64_t H) {
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
