/* test_gemm.c: the linear layers' matmul door (core/gemm.h) on both of its kernels, AMX
 * and oneDNN, over every shape class (M, N, K not multiples of the tiles, K = 1, single rows
 * and columns, tall and wide) and every epilogue, against a double-precision reference of
 * the bf16-rounded inputs.
 *
 * Bound: the inputs are bf16, so each product is exact in fp32 and the only error is fp32
 * accumulation, at most K * 2^-24 * sum |a b| (any order); then the activation's own error
 * (<= 2e-7 |x| for the erf approximation), and, for a BF16 output, half an output ulp. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "core/amx.h"
#include "core/gemm.h"
#include "core/parallel.h"

static float *random_floats(int64_t n, unsigned *seed, float scale) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = scale * ((float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f);
    return x;
}

static float round16(float x) { return mp_bf16_to_f32(mp_f32_to_bf16(x)); }

struct gemm_case {
    int64_t M, N, K;
    int bias, b_kn, accumulate;
    enum mp_activation_op activation;
    enum mp_dtype out_type;
};

static int64_t run_case(const struct gemm_case *c, unsigned *seed, const char *backend_want) {
    const int64_t M = c->M, N = c->N, K = c->K;
    float *b = random_floats(N * K, seed, 0.5f), *bias = random_floats(N, seed, 1.0f);
    float *x = random_floats(M * K, seed, 1.5f), *prior = random_floats(M * N, seed, 1.0f);
    uint16_t *x16 = malloc((size_t)(M * K) * 2);
    for (int64_t i = 0; i < M * K; i++) x16[i] = mp_f32_to_bf16(x[i]);
    struct mp_gemm_desc d = {b, c->b_kn, c->bias ? bias : NULL, N, K, MP_PRECISION_BF16, c->out_type,
                             c->activation, c->accumulate};
    struct mp_gemm *g = NULL;
    char label[160];
    snprintf(label, sizeof label, "%s gemm M=%lld N=%lld K=%lld%s%s%s act=%d out=%s", backend_want, (long long)M,
             (long long)N, (long long)K, c->bias ? " bias" : "", c->b_kn ? " b_kn" : "", c->accumulate ? " +=" : "",
             (int)c->activation, c->out_type == MP_DTYPE_BF16 ? "bf16" : "f32");
    int64_t bad = 0;
    if (!CHECK(mp_gemm_init(&g, &d) == MP_STATUS_OK, "%s: init: %s", label, mp_last_error())) goto done;
    CHECK(strcmp(mp_gemm_backend(g), backend_want) == 0, "%s: ran on %s", label, mp_gemm_backend(g));
    size_t out_bytes = (size_t)(M * N) * (c->out_type == MP_DTYPE_BF16 ? 2 : 4);
    void *out = malloc(out_bytes ? out_bytes : 1);
    if (c->out_type == MP_DTYPE_F32) memcpy(out, prior, (size_t)(M * N) * sizeof *prior);
    if (!CHECK(mp_gemm_run(g, out, x16, M) == MP_STATUS_OK, "%s: run: %s", label, mp_last_error())) {
        free(out);
        goto done;
    }
    double worst = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double y = c->bias ? bias[n] : 0.0, mass = fabs(y);
            for (int64_t k = 0; k < K; k++) {
                double p = (double)round16(x[m * K + k]) * round16(c->b_kn ? b[k * N + n] : b[n * K + k]);
                y += p, mass += fabs(p);
            }
            double tol = (K + 2) * 0x1p-24 * mass, want = y;
            if (c->activation == MP_OP_GELU) want = 0.5 * y * (1.0 + erf(y / sqrt(2.0))), tol += 2e-7 * fabs(y);
            if (c->activation == MP_OP_QUICK_GELU) want = y / (1.0 + exp(-1.702 * y)), tol += 2e-7 * fabs(y);
            if (c->accumulate) want += prior[m * N + n], tol += 0x1p-24 * fabs(want);
            tol += 1e-30;
            double got;
            if (c->out_type == MP_DTYPE_BF16) {
                got = mp_bf16_to_f32(((uint16_t *)out)[m * N + n]);
                tol = tol * 1.01 + fabs(want) * 0x1p-8; // half an output ulp (2^-9 relative) with room
            } else {
                got = ((float *)out)[m * N + n];
                tol += 0x1p-24 * fabs(want); // the final rounding to f32
            }
            double err = fabs(got - want);
            if (!(err <= tol)) {
                if (bad < 3) printf("  %s: [%lld, %lld] = %.9g, want %.9g (tol %.3g)\n", label, (long long)m,
                                    (long long)n, got, want, tol);
                bad++;
            }
            if (err > worst) worst = err;
        }
    CHECK(bad == 0, "%s: %lld of %lld values outside the bound (worst abs error %.3g)", label, (long long)bad,
          (long long)(M * N), worst);
    free(out);
done:
    mp_gemm_free(g);
    free(b), free(bias), free(x), free(prior), free(x16);
    return bad;
}

static void test_shapes(const char *backend) {
    const int64_t shapes[][3] = {
        {1, 1, 1},     {1, 16, 32},   {16, 16, 32},  {32, 32, 32},  {17, 33, 1},     {31, 47, 65},
        {33, 31, 63},  {5, 3, 700},   {100, 96, 768}, {257, 130, 33}, {1000, 8, 40}, {2, 1500, 24},
        {77, 512, 512}, {197, 64, 96}, {600, 300, 200},
    };
    unsigned seed = 5;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        struct gemm_case c = {shapes[s][0], shapes[s][1], shapes[s][2], 0, 0, 0, MP_OP_NONE, MP_DTYPE_F32};
        run_case(&c, &seed, backend);
    }
    // Every epilogue on shapes with tails in every dimension.
    const int64_t tails[][3] = {{45, 70, 90}, {3, 37, 50}};
    for (int t = 0; t < 2; t++)
        for (int op = 0; op < 3; op++)
            for (int variant = 0; variant < 4; variant++) {
                struct gemm_case c = {tails[t][0], tails[t][1], tails[t][2], 1, variant == 3,
                                      variant == 1, (enum mp_activation_op)op,
                                      variant == 2 ? MP_DTYPE_BF16 : MP_DTYPE_F32};
                run_case(&c, &seed, backend);
            }
}

// The same gemm at 1, 2 and 3 threads gives the same bits (each output block is computed
// by one thread, in the same order).
static void test_threads(const char *backend) {
    unsigned seed = 9;
    const int64_t M = 300, N = 200, K = 160;
    float *b = random_floats(N * K, &seed, 0.5f), *x = random_floats(M * K, &seed, 1.0f);
    uint16_t *x16 = malloc((size_t)(M * K) * 2);
    for (int64_t i = 0; i < M * K; i++) x16[i] = mp_f32_to_bf16(x[i]);
    float *first = malloc((size_t)(M * N) * 4), *other = malloc((size_t)(M * N) * 4);
    struct mp_gemm_desc d = {b, 0, NULL, N, K, MP_PRECISION_BF16, MP_DTYPE_F32, MP_OP_GELU, 0};
    struct mp_gemm *g = NULL;
    if (CHECK(mp_gemm_init(&g, &d) == MP_STATUS_OK, "init: %s", mp_last_error())) {
        const int counts[] = {1, 2, 3};
        for (int i = 0; i < 3; i++) {
            struct mp_thread_scope scope = mp_thread_scope_begin(counts[i]);
            CHECK(mp_gemm_run(g, i ? other : first, x16, M) == MP_STATUS_OK, "run: %s", mp_last_error());
            mp_thread_scope_end(scope);
            CHECK(mp_gemm_threads(g) == counts[i], "%s gemm at %d threads reports %d", backend, counts[i],
                  mp_gemm_threads(g));
            if (i && strcmp(backend, "amx") == 0)
                CHECK(memcmp(first, other, (size_t)(M * N) * 4) == 0, "amx: bits differ at %d threads", counts[i]);
        }
    }
    mp_gemm_free(g);
    free(b), free(x), free(x16), free(first), free(other);
}

static void test_bad_descriptions(void) {
    float w[4] = {0};
    struct mp_gemm *g = (struct mp_gemm *)1;
    struct mp_gemm_desc bf16_acc = {w, 0, NULL, 2, 2, MP_PRECISION_BF16, MP_DTYPE_BF16, MP_OP_NONE, 1};
    CHECK(mp_gemm_init(&g, &bf16_acc) == MP_STATUS_INVALID_ARGUMENT && g == NULL, "accumulating into BF16 refused");
    struct mp_gemm_desc empty = {w, 0, NULL, 0, 2, MP_PRECISION_BF16, MP_DTYPE_F32, MP_OP_NONE, 0};
    CHECK(mp_gemm_init(&g, &empty) == MP_STATUS_INVALID_ARGUMENT, "N = 0 refused");
    struct mp_gemm_desc ok = {w, 0, NULL, 2, 2, MP_PRECISION_BF16, MP_DTYPE_F32, MP_OP_NONE, 0};
    if (CHECK(mp_gemm_init(&g, &ok) == MP_STATUS_OK, "init: %s", mp_last_error())) {
        CHECK(mp_gemm_run(g, NULL, NULL, 0) == MP_STATUS_OK, "M = 0 is a no-op");
        CHECK(mp_gemm_run(g, NULL, w, 3) == MP_STATUS_INVALID_ARGUMENT, "NULL out refused");
        CHECK(mp_gemm_run(g, w, w, -1) == MP_STATUS_INVALID_ARGUMENT, "negative M refused");
        mp_gemm_free(g);
    }
}

int main(void) {
    (void)check_close; // this test bounds each value itself
    int amx = mp_amx_usable();
    printf("AMX %s on this CPU\n", amx ? "usable" : "not usable: the AMX cases are skipped");
    if (amx) {
        test_shapes("amx");
        test_threads("amx");
        test_bad_descriptions();
    }
    mp_set_max_isa(MP_ISA_AVX512); // the fallback: oneDNN's kernel for bf16
    CHECK(!mp_amx_usable(), "MP_ISA_AVX512 turns the AMX kernels off");
    test_shapes("onednn");
    test_threads("onednn");
    test_bad_descriptions();
    return check_summary("test_gemm");
}
