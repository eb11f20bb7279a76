/* core/gemm.h (internal): the oneDNN half of a linear layer, implemented in core/onednn.c
 * beside the other oneDNN calls; nn/linear.c is its only user. */
#ifndef MP_CORE_GEMM_H
#define MP_CORE_GEMM_H

#include <stdint.h>

#include "core/dtype.h"
#include "core/onednn.h"
#include "core/status.h"

/* A matmul whose B is fixed: out = in @ B^T (+ bias, activation, += out), B (N, K) row-major
 * (or (K, N) with b_kn) packed once into the blocked layout the kernel wants (bf16 copies
 * for MP_PRECISION_BF16). M is a run-time dimension: one primitive serves every row count.
 * `b` and `bias` are the caller's and must outlive the gemm. The layer semantics (which
 * input type, rounding f32 activations) live in nn/linear.c; this is oneDNN's half. A gemm
 * must not be run by two threads at once. It runs on the calling thread's OpenMP thread
 * count, whatever the count was when it was planned. */
enum mp_activation_op { MP_OP_NONE = 0, MP_OP_GELU, MP_OP_QUICK_GELU };

struct mp_gemm_desc {
    const float          *b;    // (N, K), or (K, N) with b_kn
    int                   b_kn;
    const float          *bias; // (N) or NULL
    int64_t               N, K;
    enum mp_precision     precision;  // the input's type: F32, or BF16 for MP_PRECISION_BF16
    enum mp_dtype         out_type;   // F32, or BF16 for a bf16 gemm that does not accumulate
    enum mp_activation_op activation; // applied after the bias
    int                   accumulate; // out += ...
};

struct mp_gemm;

enum mp_status mp_gemm_init(struct mp_gemm **gemm, const struct mp_gemm_desc *desc);
enum mp_status mp_gemm_run(struct mp_gemm *gemm,
                           void           *out, // (M, N) of desc->out_type
                           const void     *in,  // (M, K) of the precision's type
                           int64_t         M);
void mp_gemm_free(struct mp_gemm *gemm);

// The OpenMP thread count the gemm's primitive was last planned for (0 before it is, or after
// a failed plan). mp_gemm_run plans again whenever the calling thread's count differs.
int mp_gemm_threads(const struct mp_gemm *gemm);

#endif
