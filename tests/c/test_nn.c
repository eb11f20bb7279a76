/* test_nn.c: the transformer layers against double-precision references written out
 * plainly here: layernorm, activations, attention (also against its naive twin) and the
 * strided batched matmul. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "megapairs.h"
#include "core/parallel.h"
#include "nn/layers.h"
#include "nn/linear.h"

static float *random_floats(int64_t n, unsigned *seed, float scale) {
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = scale * ((float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f);
    return x;
}

static void test_layernorm(void) {
    unsigned seed = 1;
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {17, 768}, {5, 1024}};
    for (int s = 0; s < 4; s++) {
        int64_t N = shapes[s][0], D = shapes[s][1];
        float *x = random_floats(N * D, &seed, 3.0f), *w = random_floats(D, &seed, 1.0f);
        float *b = random_floats(D, &seed, 1.0f), *out = malloc((size_t)(N * D) * sizeof *out);
        float *want = malloc((size_t)(N * D) * sizeof *want);
        for (int64_t n = 0; n < N; n++) { // torch.nn.functional.layer_norm, biased variance
            double mean = 0, var = 0;
            for (int64_t i = 0; i < D; i++) mean += x[n * D + i];
            mean /= D;
            for (int64_t i = 0; i < D; i++) var += (x[n * D + i] - mean) * (x[n * D + i] - mean);
            var /= D;
            for (int64_t i = 0; i < D; i++)
                want[n * D + i] = (float)((x[n * D + i] - mean) / sqrt(var + 1e-5) * w[i] + b[i]);
        }
        layernorm_forward(out, x, w, b, N, D, 1e-5f);
        char label[64];
        snprintf(label, sizeof label, "layernorm %lldx%lld", (long long)N, (long long)D);
        check_close(out, want, N * D, 2e-5f, label);
        // The bf16 variant is the fp32 result rounded as mp_f32_to_bf16 rounds it.
        uint16_t *out16 = malloc((size_t)(N * D) * sizeof *out16);
        layernorm_forward_bf16(out16, x, w, b, N, D, 1e-5f);
        int64_t mismatches = 0;
        for (int64_t i = 0; i < N * D; i++) mismatches += out16[i] != mp_f32_to_bf16(out[i]);
        CHECK(mismatches == 0, "layernorm_forward_bf16 %lldx%lld: %lld values differ from rounded fp32", (long long)N,
              (long long)D, (long long)mismatches);
        free(out16);
        free(x), free(w), free(b), free(out), free(want);
    }
}

static void test_activations(void) {
    enum { N = 4099 }; // not a multiple of any vector width
    float x[N], y[N], want[N];
    for (int i = 0; i < N; i++) x[i] = -60.0f + 120.0f * (float)i / (N - 1);
    for (int i = 0; i < N; i++) y[i] = x[i], want[i] = (float)(x[i] / (1.0 + exp(-1.702 * (double)x[i])));
    quick_gelu_forward(y, N);
    check_close(y, want, N, 2e-6f, "quick_gelu over [-60, 60]");
    for (int i = 0; i < N; i++) y[i] = x[i], want[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0))));
    gelu_forward(y, N);
    check_close(y, want, N, 2e-6f, "gelu over [-60, 60]");
    // SwiGLU: three rows of [gate | up], H = 1366 features each.
    enum { R = 3, H = N / 3 };
    static float in[R * 2 * H], out[R * H], ref[R * H];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < H; i++) {
            float g = x[(r * H + i) % N] / 6.0f, u = -2.0f + 4.0f * (float)((i * 7 + r) % 101) / 100.0f;
            in[r * 2 * H + i] = g, in[r * 2 * H + H + i] = u;
            ref[r * H + i] = (float)((double)g / (1.0 + exp(-(double)g)) * u);
        }
    swiglu_forward(out, in, R, H);
    check_close(out, ref, R * H, 1e-5f, "swiglu over [-10, 10] x [-2, 2]");
}

// Attention against a double reference and against attention_forward_naive.
static void test_attention(void) {
    const int64_t cases[][4] = {{1, 1, 4, 1}, {2, 5, 12, 3}, {3, 17, 60, 4}, {2, 197, 64, 4}}; // B, T, D, H
    unsigned seed = 7;
    for (int c = 0; c < 4; c++) {
        int64_t B = cases[c][0], T = cases[c][1], D = cases[c][2], H = cases[c][3], hd = D / H;
        float *qkv = random_floats(B * T * 3 * D, &seed, 2.0f);
        float *out = malloc((size_t)(B * T * D) * sizeof *out), *naive = malloc((size_t)(B * T * D) * sizeof *naive);
        float *want = malloc((size_t)(B * T * D) * sizeof *want);
        float *scores = malloc(attention_scores_size(B, T, D, H) * sizeof *scores);
        double *p = malloc((size_t)T * sizeof *p);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < T; i++) {
                    const float *q = qkv + (b * T + i) * 3 * D + h * hd;
                    double max = -INFINITY, sum = 0;
                    for (int64_t j = 0; j < T; j++) {
                        const float *k = qkv + (b * T + j) * 3 * D + D + h * hd;
                        double s = 0;
                        for (int64_t d = 0; d < hd; d++) s += (double)q[d] * k[d];
                        p[j] = s / sqrt((double)hd);
                        max = p[j] > max ? p[j] : max;
                    }
                    for (int64_t j = 0; j < T; j++) sum += (p[j] = exp(p[j] - max));
                    for (int64_t d = 0; d < hd; d++) {
                        double o = 0;
                        for (int64_t j = 0; j < T; j++) o += p[j] / sum * qkv[(b * T + j) * 3 * D + 2 * D + h * hd + d];
                        want[(b * T + i) * D + h * hd + d] = (float)o;
                    }
                }
        enum mp_status s = attention_forward(out, scores, qkv, B, T, D, H, MP_PRECISION_FP32);
        char label[96];
        snprintf(label, sizeof label, "attention B=%lld T=%lld D=%lld H=%lld", (long long)B, (long long)T, (long long)D,
                 (long long)H);
        if (CHECK(s == MP_STATUS_OK, "%s: %s", label, mp_last_error())) check_close(out, want, B * T * D, 1e-5f, label);
        attention_forward_naive(naive, qkv, B, T, D, H);
        check_close(naive, want, B * T * D, 1e-5f, "attention_forward_naive");
        // bf16: the same inputs rounded to bf16 (so the reference above applies to them after
        // re-rounding), probabilities and output in bf16: |v| <= 2 keeps the error within half
        // an output ulp (2^-8) plus the probabilities' rounding (2^-9 of sum |p v| <= 2), < 1e-2.
        uint16_t *qkv16 = malloc((size_t)(B * T * 3 * D) * sizeof *qkv16), *out16 = malloc((size_t)(B * T * D) * 2);
        uint16_t *work = malloc(attention_bf16_workspace_size(B, T, D, H) * sizeof *work);
        for (int64_t i = 0; i < B * T * 3 * D; i++) qkv16[i] = mp_f32_to_bf16(qkv[i]), qkv[i] = mp_bf16_to_f32(qkv16[i]);
        attention_forward_naive(want, qkv, B, T, D, H);
        float *scores_only = malloc(attention_scores_size(B, T, 0, H) * sizeof *scores_only); // exact size, for ASan
        s = attention_forward_bf16(out16, scores_only, work, qkv16, B, T, D, H);
        free(scores_only);
        for (int64_t i = 0; i < B * T * D; i++) out[i] = mp_bf16_to_f32(out16[i]);
        snprintf(label, sizeof label, "attention_forward_bf16 B=%lld T=%lld", (long long)B, (long long)T);
        if (CHECK(s == MP_STATUS_OK, "%s: %s", label, mp_last_error())) check_close(out, want, B * T * D, 1e-2f, label);
        free(qkv16), free(out16), free(work);
        free(qkv), free(out), free(naive), free(want), free(scores), free(p);
    }
}

static void test_matmul_strided(void) {
    // A batch of 2 x 3 products with b given transposed by its strides: out = a @ b^T.
    enum { B0 = 2, B1 = 3, M = 5, N = 4, K = 7 };
    unsigned seed = 3;
    float *a = random_floats(B0 * B1 * M * K, &seed, 1.0f), *b = random_floats(B0 * B1 * N * K, &seed, 1.0f);
    float out[B0 * B1 * M * N], want[B0 * B1 * M * N];
    for (int i = 0; i < B0 * B1; i++)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += (double)a[(i * M + m) * K + k] * b[(i * N + n) * K + k];
                want[(i * M + m) * N + n] = (float)s;
            }
    const int64_t os[4] = {B1 * M * N, M * N, N, 1}, as[4] = {B1 * M * K, M * K, K, 1}, bs[4] = {B1 * N * K, N * K, 1, K};
    enum mp_status s = mp_matmul(out, MP_DTYPE_F32, os, a, MP_DTYPE_F32, as, b, MP_DTYPE_F32, bs, B0, B1, M, N, K, MP_PRECISION_FP32, 0);
    if (CHECK(s == MP_STATUS_OK, "matmul: %s", mp_last_error()))
        check_close(out, want, B0 * B1 * M * N, 1e-5f, "matmul_strided 2x3 batch, transposed b");
    CHECK(mp_matmul(out, MP_DTYPE_F32, os, a, MP_DTYPE_F32, as, b, MP_DTYPE_F32, bs, -1, B1, M, N, K, MP_PRECISION_FP32, 0) == MP_STATUS_INVALID_ARGUMENT,
          "negative batch");
    free(a), free(b);
}

// mp_linear: packed weights, fused bias + activation + accumulate, replanning for a new M.
static void test_linear(void) {
    enum { N = 37, K = 50 };
    unsigned seed = 11;
    float *w = random_floats(N * K, &seed, 0.3f), *bias = random_floats(N, &seed, 1.0f);
    const int64_t rows[] = {5, 64, 5};
    const char *names[] = {"none", "gelu", "quick_gelu"};
    for (int op = 0; op < 3; op++)
        for (int acc = 0; acc < 2; acc++)
            for (int prec = 0; prec < 2; prec++) {
                struct mp_linear *lin = NULL;
                enum mp_status s = mp_linear_init(&lin, w, bias, N, K, (enum mp_precision)prec, (enum mp_activation_op)op, acc);
                if (!CHECK(s == MP_STATUS_OK, "linear_init: %s", mp_last_error())) continue;
                for (int r = 0; r < 3; r++) {
                    int64_t M = rows[r];
                    float *x = random_floats(M * K, &seed, 1.0f), *out = random_floats(M * N, &seed, 1.0f);
                    float *want = malloc((size_t)(M * N) * sizeof *want);
                    for (int64_t m = 0; m < M; m++)
                        for (int64_t n = 0; n < N; n++) {
                            double y = bias[n];
                            for (int64_t k = 0; k < K; k++) {
                                float a = x[m * K + k], b = w[n * K + k];
                                if (prec) a = mp_bf16_to_f32(mp_f32_to_bf16(a)), b = mp_bf16_to_f32(mp_f32_to_bf16(b));
                                y += (double)a * b;
                            }
                            if (op == 1) y = 0.5 * y * (1.0 + erf(y / sqrt(2.0)));
                            if (op == 2) y = y / (1.0 + exp(-1.702 * y));
                            want[m * N + n] = (float)(acc ? out[m * N + n] + y : y);
                        }
                    s = mp_linear_forward(lin, out, x, M);
                    char label[96];
                    snprintf(label, sizeof label, "linear %s%s %s M=%lld", names[op], acc ? " +=" : "",
                             prec ? "bf16" : "fp32", (long long)M);
                    if (CHECK(s == MP_STATUS_OK, "%s: %s", label, mp_last_error()))
                        check_close(out, want, M * N, 2e-5f, label);
                    if (prec && !acc) { // bf16 input given as bf16, output rounded to bf16: within an output ulp
                        uint16_t *x16 = malloc((size_t)(M * K) * 2), *y16 = malloc((size_t)(M * N) * 2);
                        for (int64_t i = 0; i < M * K; i++) x16[i] = mp_f32_to_bf16(x[i]);
                        s = mp_linear_forward_typed(lin, y16, MP_DTYPE_BF16, x16, MP_DTYPE_BF16, M);
                        int64_t bad = 0;
                        for (int64_t i = 0; s == MP_STATUS_OK && i < M * N; i++)
                            bad += fabsf(mp_bf16_to_f32(y16[i]) - want[i]) > fabsf(want[i]) / 256.0f + 2e-5f;
                        CHECK(s == MP_STATUS_OK && bad == 0, "%s bf16 in/out: %lld values off (%s)", label,
                              (long long)bad, mp_last_error());
                        free(x16), free(y16);
                    }
                    if (acc) {
                        uint16_t dummy[1];
                        CHECK(mp_linear_forward_typed(lin, dummy, MP_DTYPE_BF16, x, MP_DTYPE_F32, 1) ==
                                  MP_STATUS_INVALID_ARGUMENT, "%s: accumulating into bf16 refused", label);
                    }
                    if (!prec)
                        CHECK(mp_linear_forward_typed(lin, out, MP_DTYPE_F32, x, MP_DTYPE_BF16, M) ==
                                  MP_STATUS_INVALID_ARGUMENT, "%s: fp32 layer refuses bf16 input", label);
                    free(x), free(out), free(want);
                }
                mp_linear_free(lin);
            }
    struct mp_linear *lin = NULL;
    CHECK(mp_linear_init(&lin, w, bias, 0, K, MP_PRECISION_FP32, MP_OP_NONE, 0) == MP_STATUS_INVALID_ARGUMENT,
          "linear_init with N = 0");
    free(w), free(bias);
}

// One sequence of T tokens in double precision; `causal` masks keys after the query.
static void attention_reference(float *want, const float *qkv, int64_t T, int64_t D, int64_t H, int causal) {
    int64_t hd = D / H;
    double *p = malloc((size_t)T * sizeof *p);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < T; i++) {
            int64_t J = causal ? i + 1 : T;
            double max = -INFINITY, sum = 0;
            for (int64_t j = 0; j < J; j++) {
                double s = 0;
                for (int64_t d = 0; d < hd; d++) s += (double)qkv[i * 3 * D + h * hd + d] * qkv[j * 3 * D + D + h * hd + d];
                p[j] = s / sqrt((double)hd);
                max = p[j] > max ? p[j] : max;
            }
            for (int64_t j = 0; j < J; j++) sum += (p[j] = exp(p[j] - max));
            for (int64_t d = 0; d < hd; d++) {
                double o = 0;
                for (int64_t j = 0; j < J; j++) o += p[j] / sum * qkv[j * 3 * D + 2 * D + h * hd + d];
                want[i * D + h * hd + d] = (float)o;
            }
        }
    free(p);
}

// Packed sequences of different lengths, causal or not, against the per-sequence reference.
static void test_attention_varlen(void) {
    const int64_t lengths[] = {1, 5, 17, 77, 3, 40};
    const int64_t shapes[][2] = {{60, 4}, {64, 8}, {8, 1}, {128, 2}, {96, 2}, {72, 2}}; // D, H: hd 15, 8, 64, 48, 36
    enum { N = sizeof lengths / sizeof *lengths };
    int64_t offsets[N + 1] = {0};
    for (int s = 0; s < N; s++) offsets[s + 1] = offsets[s] + lengths[s];
    int64_t R = offsets[N];
    unsigned seed = 17;
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++)
        for (int causal = 0; causal < 2; causal++) {
            int64_t D = shapes[c][0], H = shapes[c][1];
            float *qkv = random_floats(R * 3 * D, &seed, 2.0f);
            float *out = malloc((size_t)(R * D) * sizeof *out), *want = malloc((size_t)(R * D) * sizeof *want);
            for (int s = 0; s < N; s++)
                attention_reference(want + offsets[s] * D, qkv + offsets[s] * 3 * D, lengths[s], D, H, causal);
            enum mp_status s = attention_varlen_forward(out, qkv, offsets, N, D, H, causal);
            char label[80];
            snprintf(label, sizeof label, "attention_varlen D=%lld H=%lld causal=%d", (long long)D, (long long)H, causal);
            if (CHECK(s == MP_STATUS_OK, "%s: %s", label, mp_last_error())) check_close(out, want, R * D, 1e-5f, label);
            free(qkv), free(out), free(want);
        }
}

/* A layer first used at 1 thread must use every thread asked for later: oneDNN fixes a
 * primitive's thread count when it creates it, so the gemm plans again when the count
 * changes (timing-free: the count the primitive was created for is recorded). The results
 * must not depend on the count. */
static void test_linear_threads(void) {
    enum { N = 96, K = 64, M = 40 };
    unsigned seed = 21;
    float *w = random_floats(N * K, &seed, 0.3f), *x = random_floats(M * K, &seed, 1.0f);
    float *first = malloc(M * N * sizeof *first), *later = malloc(M * N * sizeof *later);
    for (int prec = 0; prec < 2; prec++) {
        struct mp_linear *lin = NULL;
        if (!CHECK(mp_linear_init(&lin, w, NULL, N, K, (enum mp_precision)prec, MP_OP_NONE, 0) == MP_STATUS_OK,
                   "linear_init: %s", mp_last_error()))
            continue;
        CHECK(mp_linear_threads(lin) == 0, "not planned before its first call");
        const int counts[] = {1, 2, 1, 3};
        for (int c = 0; c < 4; c++) {
            struct mp_thread_scope scope = mp_thread_scope_begin(counts[c]);
            enum mp_status s = mp_linear_forward(lin, c ? later : first, x, M);
            mp_thread_scope_end(scope);
            CHECK(s == MP_STATUS_OK, "forward at %d threads: %s", counts[c], mp_last_error());
            CHECK(mp_linear_threads(lin) == counts[c], "%s layer at %d threads ran with %d", prec ? "bf16" : "fp32",
                  counts[c], mp_linear_threads(lin));
            if (c) check_close(later, first, M * N, 1e-5f, "same result at another thread count");
        }
        mp_linear_free(lin);
    }
    free(w), free(x), free(first), free(later);
}

int main(void) {
    test_linear();
    test_linear_threads();
    test_layernorm();
    test_activations();
    test_attention();
    test_attention_varlen();
    test_matmul_strided();
    return check_summary("test_nn");
}
