/* core/gemm.h (internal): the matmul half of a linear layer; nn/linear.c is its only user.
 * core/gemm.c dispatches each gemm, once, at init: a bf16 gemm runs on our AMX kernel
 * (core/amx.c) where the CPU has AMX and MEGAPAIRS_MAX_ISA allows it; every other gemm, and
 * bf16 on CPUs without AMX, runs on oneDNN (core/onednn.c). */
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

// "amx" or "onednn": the kernel the gemm runs on.
const char *mp_gemm_backend(const struct mp_gemm *gemm);

// The OpenMP thread count the gemm was last planned for (0 before it is, or after a failed
// plan). mp_gemm_run plans again whenever the calling thread's count differs (the AMX kernel
// needs no plan: it reports the count of its last run).
int mp_gemm_threads(const struct mp_gemm *gemm);

/* The oneDNN backend (core/onednn.c), with the same contract; callers use mp_gemm_*, which
 * checks the description for both backends. */
struct mp_onednn_gemm;
enum mp_status mp_onednn_gemm_init(struct mp_onednn_gemm **gemm, const struct mp_gemm_desc *desc);
enum mp_status mp_onednn_gemm_run(struct mp_onednn_gemm *gemm, void *out, const void *in, int64_t M);
void mp_onednn_gemm_free(struct mp_onednn_gemm *gemm);
int mp_onednn_gemm_threads(const struct mp_onednn_gemm *gemm);

#endif
