/* nn/linear.h: the linear layer y = x @ W^T + b of every encoder and of the loss, with an
 * optional fused epilogue (an activation, and/or adding into `out`, the residual stream).
 *
 *     struct mp_linear *fc1;
 *     mp_linear_init(&fc1, w, b, 3072, 768, MP_PRECISION_BF16, MP_OP_GELU, 0);
 *     mp_linear_forward_typed(fc1, h16, MP_DTYPE_BF16, x16, MP_DTYPE_BF16, rows);
 *     mp_linear_free(fc1);
 *
 * W (N, K) is packed on first use for the output type asked for (core/gemm.h: our AMX kernel
 * for bf16 where the CPU has AMX, oneDNN otherwise);
 * a bf16 layer takes BF16 activations as they are and rounds F32 ones once per call, and
 * accumulates in fp32. `weight` and `bias` are the caller's and must outlive the layer.
 * A layer must not be used by two threads at once. */
#ifndef MP_NN_LINEAR_H
#define MP_NN_LINEAR_H

#include <stdint.h>

#include "core/dtype.h"
#include "core/gemm.h"
#include "core/onednn.h"
#include "core/status.h"

struct mp_linear;

enum mp_status mp_linear_init(struct mp_linear    **linear,
                              const float          *weight, // (N, K)
                              const float          *bias,   // (N) or NULL
                              int64_t               N,
                              int64_t               K,
                              enum mp_precision     precision,
                              enum mp_activation_op activation,
                              int                   accumulate); // out += x @ W^T + b

// A layer whose weight is stored the other way round, (K, N) row-major: out = x @ W. No
// bias, activation or accumulation. (The loss multiplies by the candidates both ways.)
enum mp_status mp_linear_init_kn(struct mp_linear **linear,
                                 const float       *weight, // (K, N)
                                 int64_t            N,
                                 int64_t            K,
                                 enum mp_precision  precision);

// out = x @ W^T + b for F32 in and out.
enum mp_status mp_linear_forward(struct mp_linear *linear,
                                 float            *out, // (M, N)
                                 const float      *in,  // (M, K)
                                 int64_t           M);

// For a bf16 layer, `in` may be BF16 (no rounding pass) and `out` BF16 (rounded from the fp32
// result, after the activation). An fp32 layer takes only F32; an accumulating layer writes
// only F32.
enum mp_status mp_linear_forward_typed(struct mp_linear *linear,
                                       void             *out, // (M, N)
                                       enum mp_dtype     out_type,
                                       const void       *in,  // (M, K)
                                       enum mp_dtype     in_type,
                                       int64_t           M);

void mp_linear_free(struct mp_linear *linear);

// The OpenMP thread count the layer last ran with (0 before its first call): each call runs
// on the calling thread's count, whatever it was at the first call.
int mp_linear_threads(const struct mp_linear *linear);

// The kernel the layer runs on: "amx" (a bf16 layer on a CPU with AMX, core/isa.h), "onednn",
// or "none" before its first call.
const char *mp_linear_backend(const struct mp_linear *linear);

#endif
