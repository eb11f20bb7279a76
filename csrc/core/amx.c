/* core/amx.c: the bf16 GEMM of the linear layers on AMX tiles (Sapphire Rapids and later),
 * with the layer's epilogue (bias, GELU / quick GELU, residual add, bf16 rounding) applied to
 * each 32 x 32 block while it is in cache. Compiled for every x86-64 build with per-function
 * target attributes, chosen at run time (mp_amx_usable); other CPUs never execute it. */
#define _GNU_SOURCE
#include "core/amx.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

#include "core/dtype.h"
#include "core/vexp.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define MP_AMX_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MP_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
#else
#define MP_AMX_BUILD 0
#endif

/* ------------------------------------------------------------------ detection */

static int hw_amx;
static once_flag hw_once = ONCE_FLAG_INIT;

static void hw_check(void) {
#if MP_AMX_BUILD
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    int tile = (d >> 24) & 1, tile_bf16 = (d >> 22) & 1, avx512f = (b >> 16) & 1;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return;
    int avx512_bf16 = (a >> 5) & 1;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return; // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    unsigned want = 0xe6u | (3u << 17); // SSE, AVX, AVX-512 state, tile config and data
    if (!tile || !tile_bf16 || !avx512f || !avx512_bf16 || (lo & want) != want) return;
    // Linux hands out the tile data state on request only (ARCH_REQ_XCOMP_PERM, XTILEDATA)
    hw_amx = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
}

int mp_amx_usable(void) {
    call_once(&hw_once, hw_check);
    return hw_amx && mp_get_max_isa() >= MP_ISA_AMX;
}

/* ------------------------------------------------------------------ the gemm */

enum { TILE_ROWS = 16, TILE_K = 32, BLOCK = 32 }; // a 32 x 32 output block = 2 x 2 tiles
enum { KC_STEPS = 16, MC_ROWS = 512 };          // k steps per chunk when K > 768; rows per task

struct mp_amx_gemm {
    struct mp_gemm_desc d;
    int64_t Np, Kp;    // N and K rounded up to BLOCK and TILE_K
    uint16_t *packed;  // B: (Np / 16, Kp / 32) tiles of 16 k-pairs x 16 columns x 2, zero-padded
    float *bias;       // (Np), zero-padded, or NULL
    char *work;        // A packed and the threads' partial sums (mp_amx_gemm_run)
    int64_t work_bytes;
};

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void mp_amx_gemm_free(struct mp_amx_gemm *g) {
    if (!g) return;
    free(g->packed);
    free(g->bias);
    free(g->work);
    free(g);
}

enum mp_status mp_amx_gemm_init(struct mp_amx_gemm **out, const struct mp_gemm_desc *desc) {
    if (!out || !desc) return mp_error(MP_STATUS_INVALID_ARGUMENT, "amx_gemm_init: NULL argument");
    *out = NULL;
    const struct mp_gemm_desc *d = desc; // checked by mp_gemm_init
    if (d->precision != MP_PRECISION_BF16) return mp_error(MP_STATUS_INVALID_ARGUMENT, "amx_gemm_init: bf16 only");
    if (!mp_amx_usable()) return mp_error(MP_STATUS_BACKEND, "amx_gemm_init: AMX is not usable on this CPU");
    struct mp_amx_gemm *g = calloc(1, sizeof *g);
    if (!g) return mp_error(MP_STATUS_OUT_OF_MEMORY, "amx_gemm_init: out of memory");
    g->d = *d;
    g->Np = round_up(d->N, BLOCK), g->Kp = round_up(d->K, TILE_K);
    size_t packed_bytes = (size_t)(g->Np * g->Kp) * sizeof *g->packed;
    g->packed = aligned_alloc(64, round_up((int64_t)packed_bytes, 64));
    if (d->bias) g->bias = calloc((size_t)g->Np, sizeof *g->bias);
    if (!g->packed || (d->bias && !g->bias)) {
        mp_amx_gemm_free(g);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "amx_gemm_init: %zu bytes for the packed weights", packed_bytes);
    }
    if (d->bias) memcpy(g->bias, d->bias, (size_t)d->N * sizeof *g->bias);
    const int64_t KB = g->Kp / TILE_K, N = d->N, K = d->K;
    // element (n, k) of B goes to tile (n / 16, k / 32), row (k % 32) / 2, column n % 16, lane k % 2
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < g->Np / TILE_ROWS; nb++) {
        uint16_t *dst = g->packed + nb * KB * TILE_ROWS * TILE_K;
        for (int64_t kb = 0; kb < KB; kb++)
            for (int r = 0; r < TILE_ROWS; r++)
                for (int c = 0; c < TILE_ROWS; c++)
                    for (int j = 0; j < 2; j++) {
                        int64_t n = nb * TILE_ROWS + c, k = kb * TILE_K + 2 * r + j;
                        float v = n < N && k < K ? (d->b_kn ? d->b[k * N + n] : d->b[n * K + k]) : 0.0f;
                        dst[(kb * TILE_ROWS + r) * TILE_K + 2 * c + j] = mp_f32_to_bf16(v);
                    }
    }
    *out = g;
    return MP_STATUS_OK;
}

#if MP_AMX_BUILD

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// Tiles 0-3: the fp32 accumulators of a 32 x 32 block; 4, 5: two 16-row slices of A;
// 6, 7: two 16-column slices of B. Every tile is 16 rows of 64 bytes.
MP_AMX static void tiles_configure(void) {
    struct tile_config cfg __attribute__((aligned(64))) = {.palette = 1};
    for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = TILE_ROWS;
    _tile_loadconfig(&cfg);
}

/* c (32 x 32, row stride 32) (+)= a (a 32-row block in tile order) @ the two packed B
 * column slices b0, b1, over the k steps [kb0, kb1); `more` adds to c (a later k chunk). */
MP_AMX static void block_32x32(float *c, const uint16_t *a, const uint16_t *b0, const uint16_t *b1, int64_t kb0,
                               int64_t kb1, int more) {
    if (more) {
        _tile_loadd(0, c, BLOCK * 4);
        _tile_loadd(1, c + TILE_ROWS, BLOCK * 4);
        _tile_loadd(2, c + TILE_ROWS * BLOCK, BLOCK * 4);
        _tile_loadd(3, c + TILE_ROWS * BLOCK + TILE_ROWS, BLOCK * 4);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t kb = kb0; kb < kb1; kb++) {
        const uint16_t *ak = a + kb * 2 * TILE_ROWS * TILE_K;
        _tile_loadd(4, ak, 64);
        _tile_loadd(5, ak + TILE_ROWS * TILE_K, 64);
        _tile_loadd(6, b0 + kb * TILE_ROWS * TILE_K, 64);
        _tile_loadd(7, b1 + kb * TILE_ROWS * TILE_K, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, BLOCK * 4);
    _tile_stored(1, c + TILE_ROWS, BLOCK * 4);
    _tile_stored(2, c + TILE_ROWS * BLOCK, BLOCK * 4);
    _tile_stored(3, c + TILE_ROWS * BLOCK + TILE_ROWS, BLOCK * 4);
}

/* gelu(x) = x/2 (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (absolute error
 * <= 1.5e-7); quick_gelu(x) = x sigmoid(1.702 x). 16 values, vectorised. */
MP_AMX static void activate16(float *v, enum mp_activation_op op) {
    float e[EXP_BLOCK], z[EXP_BLOCK];
    if (op == MP_OP_GELU) {
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) z[i] = -(v[i] * v[i]) * 0.5f;
        exp_nonpositive16(e, z);
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) {
            float x = v[i] * 0.70710678118654752f, ax = x < 0 ? -x : x;
            float t = 1.0f / (1.0f + 0.3275911f * ax);
            float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
                       0.254829592f) * t;
            float erf = 1.0f - p * e[i];
            v[i] = 0.5f * v[i] * (1.0f + (x < 0 ? -erf : erf));
        }
    } else if (op == MP_OP_QUICK_GELU) {
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) z[i] = -1.702f * (v[i] < 0 ? -v[i] : v[i]);
        exp_nonpositive16(e, z);
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) {
            float s = (v[i] < 0 ? e[i] : 1.0f) / (1.0f + e[i]);
            v[i] *= s;
        }
    }
}

// Bias, activation, then out (+)= for `rows` x `cols` of the block at (m0, n0), a row of 32
// at a time in two AVX-512 registers; masked stores keep to the `cols` that exist.
MP_AMX static void epilogue(const struct mp_amx_gemm *g, void *out, float *c, int64_t m0, int rows, int64_t n0,
                            int cols) {
    const struct mp_gemm_desc *d = &g->d;
    const __mmask16 mask0 = (__mmask16)(cols >= 16 ? 0xffffu : (1u << cols) - 1u);
    const __mmask16 mask1 = (__mmask16)(cols >= 32 ? 0xffffu : cols > 16 ? (1u << (cols - 16)) - 1u : 0u);
    const __mmask32 mask32 = cols >= 32 ? 0xffffffffu : (1u << cols) - 1u;
    const __m512 bias0 = g->bias ? _mm512_loadu_ps(g->bias + n0) : _mm512_setzero_ps();
    const __m512 bias1 = g->bias ? _mm512_loadu_ps(g->bias + n0 + 16) : _mm512_setzero_ps();
    for (int i = 0; i < rows; i++) {
        float *v = c + i * BLOCK;
        __m512 v0 = _mm512_add_ps(_mm512_load_ps(v), bias0), v1 = _mm512_add_ps(_mm512_load_ps(v + 16), bias1);
        if (d->activation != MP_OP_NONE) {
            _mm512_store_ps(v, v0), _mm512_store_ps(v + 16, v1);
            activate16(v, d->activation), activate16(v + 16, d->activation);
            v0 = _mm512_load_ps(v), v1 = _mm512_load_ps(v + 16);
        }
        int64_t at = (m0 + i) * d->N + n0;
        if (d->out_type == MP_DTYPE_BF16) { // round to nearest even, as mp_f32_to_bf16
            __m512i bits = (__m512i)_mm512_cvtne2ps_pbh(v1, v0);
            _mm512_mask_storeu_epi16((uint16_t *)out + at, mask32, bits);
            continue;
        }
        float *o = (float *)out + at;
        if (d->accumulate) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, o));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, o + 16));
        }
        _mm512_mask_storeu_ps(o, mask0, v0);
        _mm512_mask_storeu_ps(o + 16, mask1, v1);
    }
}

/* A (M, K) bf16 into tile order: for each 32-row block and each 32-wide k step, its two
 * 16 x 32 tiles contiguous (2 KiB), zero-padded to whole tiles (rows past M, k past K), so
 * every tile load is in bounds and the kernel reads one sequential stream. */
MP_AMX static void pack_a_block(uint16_t *dst, const uint16_t *in, int64_t M, int64_t K, int64_t Kp, int64_t m0) {
    for (int64_t r = 0; r < BLOCK; r++) {
        int64_t row = m0 + r;
        for (int64_t kb = 0; kb < Kp / TILE_K; kb++) {
            uint16_t *to = dst + (kb * 2 + r / TILE_ROWS) * TILE_ROWS * TILE_K + (r % TILE_ROWS) * TILE_K;
            int64_t k0 = kb * TILE_K, n = row < M ? (K - k0 < TILE_K ? K - k0 : TILE_K) : 0;
            if (n > 0) memcpy(to, in + row * K + k0, (size_t)n * sizeof *to);
            if (n < TILE_K) memset(to + n, 0, (size_t)(TILE_K - n) * sizeof *to);
        }
    }
}

/* One task: rows [m0, m0 + mc) of the packed A against the 32-column blocks [nb0, nb1): for
 * each 32-row block of A (in L1), every B column block of the task (in L2), so the output is
 * written a row range at a time. k goes in chunks of KC_STEPS tile steps when K > 768, the
 * partial sums waiting in c (one 32 x 32 block per column block). */
MP_AMX static void task(const struct mp_amx_gemm *g, void *out, const uint16_t *a, int64_t M, int64_t m0, int64_t mc,
                        int64_t nb0, int64_t nb1, float *c) {
    const int64_t Kp = g->Kp, KB = Kp / TILE_K, rows = M - m0 < mc ? M - m0 : mc;
    const int64_t kc = KB <= 24 ? KB : KC_STEPS;
    for (int64_t i = 0; i < rows; i += BLOCK) {
        const uint16_t *ai = a + (m0 + i) * Kp;
        for (int64_t kb0 = 0; kb0 < KB; kb0 += kc) {
            int64_t kb1 = kb0 + kc < KB ? kb0 + kc : KB;
            for (int64_t nb = nb0; nb < nb1; nb++) {
                const uint16_t *b0 = g->packed + (2 * nb) * KB * TILE_ROWS * TILE_K, *b1 = b0 + KB * TILE_ROWS * TILE_K;
                block_32x32(c + (nb - nb0) * BLOCK * BLOCK, ai, b0, b1, kb0, kb1, kb0 > 0);
            }
        }
        for (int64_t nb = nb0; nb < nb1; nb++) {
            int64_t n0 = nb * BLOCK;
            int cols = (int)(g->d.N - n0 < BLOCK ? g->d.N - n0 : BLOCK);
            epilogue(g, out, c + (nb - nb0) * BLOCK * BLOCK, m0 + i, (int)(rows - i < BLOCK ? rows - i : BLOCK), n0,
                     cols);
        }
    }
}

MP_AMX static void run_tasks(const struct mp_amx_gemm *g, void *out, const uint16_t *in, int64_t M, int64_t mc,
                             int64_t m_tasks, int64_t n_tasks, int64_t c_floats) {
    const int64_t NB = g->Np / BLOCK, MB = (M + BLOCK - 1) / BLOCK;
    uint16_t *a = (uint16_t *)g->work;
    float *c_all = (float *)(g->work + MB * BLOCK * g->Kp * 2);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t mb = 0; mb < MB; mb++) pack_a_block(a + mb * BLOCK * g->Kp, in, M, g->d.K, g->Kp, mb * BLOCK);
        tiles_configure();
        float *c = c_all + (int64_t)omp_get_thread_num() * c_floats;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < m_tasks * n_tasks; t++) {
            int64_t mt = t / n_tasks, nt = t % n_tasks;
            task(g, out, a, M, mt * mc, mc, nt * NB / n_tasks, (nt + 1) * NB / n_tasks, c);
        }
        _tile_release();
    }
}

MP_AMX static void peak_loop(int64_t iters) {
    static const uint16_t zeros[TILE_ROWS * TILE_K] __attribute__((aligned(64)));
    float sink[TILE_ROWS * TILE_ROWS] __attribute__((aligned(64)));
    tiles_configure();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, zeros, 64);
    _tile_loadd(5, zeros, 64);
    _tile_loadd(6, zeros, 64);
    _tile_loadd(7, zeros, 64);
    for (int64_t i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, sink, 64);
    _tile_release();
}

#endif

enum mp_status mp_amx_gemm_run(struct mp_amx_gemm *g, void *out, const uint16_t *in, int64_t M) {
    if (!g || M < 0 || (M > 0 && (!out || !in))) return mp_error(MP_STATUS_INVALID_ARGUMENT, "amx_gemm_run: bad arguments");
    if (M == 0) return MP_STATUS_OK;
#if MP_AMX_BUILD
    // Rows per task: 512, so each task's B columns (in L2) serve 16 row blocks. Measured on
    // Sapphire Rapids at 1 thread: sizing the rows by K instead (an A block of 512 KiB, 160
    // rows at K = 3072) loses a quarter at K = 3072, and k chunks of 512 beat whole-K blocks.
    int64_t mc = M < MC_ROWS ? round_up(M, BLOCK) : MC_ROWS;
    const int threads = omp_get_max_threads();
    const int64_t m_tasks = (M + mc - 1) / mc, NB = g->Np / BLOCK;
    // Column blocks per task: the task's B (32 columns x Kp each) within about 1 MiB of L2,
    // and enough tasks for every thread, twice.
    int64_t per_task = (1 << 20) / (g->Kp * 2 * BLOCK);
    per_task = per_task < 1 ? 1 : per_task;
    int64_t n_tasks = (NB + per_task - 1) / per_task, wanted = (2 * threads + m_tasks - 1) / m_tasks;
    if (n_tasks < wanted) n_tasks = wanted;
    if (n_tasks > NB) n_tasks = NB;
    // The workspace: A packed (whole 32-row blocks x Kp bf16), then each thread's partial
    // sums for its widest task (n_blocks 32 x 32 fp32 blocks).
    const int64_t n_blocks = (NB + n_tasks - 1) / n_tasks, c_floats = n_blocks * BLOCK * BLOCK;
    const int64_t need = round_up(M, BLOCK) * g->Kp * 2 + threads * c_floats * 4;
    if (need > g->work_bytes) {
        free(g->work);
        g->work_bytes = 0;
        if (!(g->work = aligned_alloc(64, (size_t)round_up(need, 64))))
            return mp_error(MP_STATUS_OUT_OF_MEMORY, "amx_gemm_run: %lld bytes of workspace", (long long)need);
        g->work_bytes = need;
    }
    run_tasks(g, out, in, M, mc, m_tasks, n_tasks, c_floats);
    return MP_STATUS_OK;
#else
    (void)out, (void)in;
    return mp_error(MP_STATUS_BACKEND, "amx_gemm_run: built without AMX support");
#endif
}

double mp_amx_peak_flops(int64_t iters) {
    if (!mp_amx_usable() || iters <= 0) return 0.0;
#if MP_AMX_BUILD
    double t0 = omp_get_wtime();
    int threads = 1;
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
        peak_loop(iters);
    }
    double seconds = omp_get_wtime() - t0;
    return seconds > 0 ? (double)iters * 4 * 2 * TILE_ROWS * TILE_ROWS * TILE_K * threads / seconds : 0.0;
#else
    return 0.0;
#endif
}
