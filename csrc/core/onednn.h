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

// out = a @ b^T: the row-by-row inner products used by kNN scoring and linear layers.
// Returns MP_STATUS_INVALID_ARGUMENT for negative sizes, MP_STATUS_OUT_OF_MEMORY when the
// bf16 copies cannot be allocated, MP_STATUS_BACKEND when oneDNN fails.
enum mp_status mp_matmul_nt(float            *out, // (M, N)
                            const float      *a,   // (M, K)
                            const float      *b,   // (N, K)
                            int64_t           M,
                            int64_t           N,
                            int64_t           K,
                            enum mp_precision precision);

// A batch of B0 x B1 products out = a @ b of (M, K) by (K, N) matrices, each operand given by
// element strides over (batch 0, batch 1, row, column): any layout, transposes included (a
// transposed b is b's strides swapped). Used by attention to read heads in place.
enum mp_status mp_matmul_strided(float            *out,  // (B0, B1, M, N) at out_strides
                                 const int64_t     out_strides[4],
                                 const float      *a,    // (B0, B1, M, K) at a_strides
                                 const int64_t     a_strides[4],
                                 const float      *b,    // (B0, B1, K, N) at b_strides
                                 const int64_t     b_strides[4],
                                 int64_t           B0,
                                 int64_t           B1,
                                 int64_t           M,
                                 int64_t           N,
                                 int64_t           K,
                                 enum mp_precision precision);

// mp_matmul_strided with each operand F32 or BF16 (uint16_t bits). MP_PRECISION_FP32 needs F32
// inputs; MP_PRECISION_BF16 rounds F32 inputs inside the kernel. Accumulation is fp32.
enum mp_status mp_matmul_strided_typed(void *out, enum mp_dtype out_type, const int64_t out_strides[4],
                                       const void *a, enum mp_dtype a_type, const int64_t a_strides[4],
                                       const void *b, enum mp_dtype b_type, const int64_t b_strides[4], int64_t B0,
                                       int64_t B1, int64_t M, int64_t N, int64_t K, enum mp_precision precision);

// out += a @ b for (M, K) by (K, N) fp32 operands given by (row, column) element strides
// (transposes are swapped strides), the products at `precision` (bf16: inputs rounded inside
// the kernel), accumulation fp32. Used by the loss to accumulate gradients block by block.
enum mp_status mp_matmul_strided_accumulate(float         *out, // (M, N) at out_strides
                                            const int64_t  out_strides[2],
                                            const float   *a, // (M, K) at a_strides
                                            const int64_t  a_strides[2],
                                            const float   *b, // (K, N) at b_strides
                                            const int64_t  b_strides[2],
                                            int64_t           M,
                                            int64_t           N,
                                            int64_t           K,
                                            enum mp_precision precision);

// mp_matmul_strided_accumulate with typed operands (F32 or BF16; BF16 needs MP_PRECISION_BF16).
enum mp_status mp_matmul_accumulate_typed(float            *out, // (M, N) at out_strides
                                          const int64_t     out_strides[2],
                                          const void       *a, // (M, K) at a_strides
                                          enum mp_dtype     a_type,
                                          const int64_t     a_strides[2],
                                          const void       *b, // (K, N) at b_strides
                                          enum mp_dtype     b_type,
                                          const int64_t     b_strides[2],
                                          int64_t           M,
                                          int64_t           N,
                                          int64_t           K,
                                          enum mp_precision precision);

/* A linear layer y = x @ W^T + b held by oneDNN: W (N, K) is packed once, in the blocked
 * layout the matmul kernel wants (bf16 copies for MP_PRECISION_BF16, where x is rounded to
 * bf16 per call and accumulation stays fp32). One primitive, with M a run-time dimension,
 * serves every row count. Optional fused epilogue: an activation, and/or adding the result to `out` (the
 * residual stream). `weight` and `bias` are the caller's and must outlive the layer. Not
 * safe for two threads at once. */
enum mp_activation_op { MP_OP_NONE = 0, MP_OP_GELU, MP_OP_QUICK_GELU };

struct mp_linear;

enum mp_status mp_linear_init(struct mp_linear    **linear,
                              const float          *weight, // (N, K)
                              const float          *bias,   // (N) or NULL
                              int64_t               N,
                              int64_t               K,
                              enum mp_precision     precision,
                              enum mp_activation_op activation,
                              int                   accumulate); // out += x @ W^T + b

// A linear layer whose weight is stored the other way round, (K, N) row-major: out = x @ W.
// No bias, activation or accumulation. (The loss multiplies by the candidates both ways.)
enum mp_status mp_linear_init_kn(struct mp_linear **linear,
                                 const float       *weight, // (K, N)
                                 int64_t            N,
                                 int64_t            K,
                                 enum mp_precision  precision);

enum mp_status mp_linear_forward(struct mp_linear *linear,
                                 float            *out, // (M, N)
                                 const float      *in,  // (M, K)
                                 int64_t           M);

// mp_linear_forward for a bf16 layer with BF16 activations: `in` may be BF16 (no rounding
// pass) and `out` BF16 (rounded from the fp32 result, after the activation). An fp32 layer
// takes only F32; an accumulating layer writes only F32.
enum mp_status mp_linear_forward_typed(struct mp_linear *linear,
                                       void             *out, // (M, N)
                                       enum mp_dtype     out_type,
                                       const void       *in,  // (M, K)
                                       enum mp_dtype     in_type,
                                       int64_t           M);

void mp_linear_free(struct mp_linear *linear);

#endif
