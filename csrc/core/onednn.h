/* core/onednn.h: the one door to oneDNN. Every oneDNN call in megapairs lives in
 * core/onednn.c, so the oneDNN build (see docs/architecture.md) can change in one place.
 *
 * The CPU engine and stream are created once, on first use, and shared. oneDNN keeps a
 * process-wide primitive cache, so calling the same operation with the same shapes again
 * reuses the compiled kernel. */
#ifndef MP_CORE_ONEDNN_H
#define MP_CORE_ONEDNN_H

#include <stdint.h>

#include "core/dtype.h"
#include "core/status.h"

enum mp_precision {
    MP_PRECISION_FP32 = 0, // f32 in, f32 accumulate, f32 out
    MP_PRECISION_BF16,     // inputs rounded to bf16 (AMX / AVX512-BF16), f32 accumulate and out
};

struct mp_onednn_info {
    int version_major, version_minor, version_patch;
    const char *version_hash;
    const char *cpu_runtime; // "OpenMP", "TBB", "SYCL", "threadpool", "sequential"
    const char *cpu_isa;     // the instruction set oneDNN dispatches to, e.g. "avx512_core_amx"
};

// Fills `info`; creating the engine on first use. Returns MP_STATUS_BACKEND if oneDNN
// cannot create a CPU engine.
enum mp_status mp_onednn_info(struct mp_onednn_info *info);

/* The one matmul door: a batch of B0 x B1 products out (+)= a @ b of (M, K) by (K, N)
 * matrices, each operand F32 or BF16 (uint16_t bits) and given by element strides over
 * (batch 0, batch 1, row, column): any layout, transposes included (a transposed b is b's
 * strides swapped), so attention reads heads in place and kNN reads the corpus transposed.
 * MP_PRECISION_FP32 needs F32 inputs; MP_PRECISION_BF16 rounds F32 inputs inside the kernel.
 * Accumulation is fp32; with `accumulate`, out += a @ b (F32 out only). Returns
 * MP_STATUS_INVALID_ARGUMENT for negative or overflowing sizes, MP_STATUS_OUT_OF_MEMORY,
 * MP_STATUS_BACKEND when oneDNN fails. */
enum mp_status mp_matmul(void *out, enum mp_dtype out_type, const int64_t out_strides[4], // (B0, B1, M, N)
                         const void *a, enum mp_dtype a_type, const int64_t a_strides[4], // (B0, B1, M, K)
                         const void *b, enum mp_dtype b_type, const int64_t b_strides[4], // (B0, B1, K, N)
                         int64_t B0, int64_t B1, int64_t M, int64_t N, int64_t K, enum mp_precision precision,
                         int accumulate);

// out = a @ b^T for row-major F32 a (M, K) and b (N, K): the row-by-row inner products.
static inline enum mp_status mp_matmul_nt(float *out, const float *a, const float *b, int64_t M, int64_t N,
                                          int64_t K, enum mp_precision precision) {
    const int64_t out_strides[4] = {M * N, M * N, N, 1}, a_strides[4] = {M * K, M * K, K, 1},
                  b_strides[4] = {N * K, N * K, 1, K};
    return mp_matmul(out, MP_DTYPE_F32, out_strides, a, MP_DTYPE_F32, a_strides, b, MP_DTYPE_F32, b_strides, 1, 1,
                     M, N, K, precision, 0);
}

#endif
