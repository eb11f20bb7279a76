/* nn/linear.c: the linear layer as the encoders and the loss see it: which input type a
 * precision takes, rounding F32 activations to bf16, and one packed gemm per output type.
 * The matmul itself lives behind core/gemm.h (AMX or oneDNN). */
#include "nn/linear.h"

#include <stdlib.h>

struct mp_linear {
    struct mp_gemm_desc d; // out_type: that of `gemm`
    struct mp_gemm *gemm;  // planned and packed on first use, re-planned when the output type changes
    uint16_t *src_bf16;    // per-call bf16 copy of an F32 input
    int64_t src_cap;
};

void mp_linear_free(struct mp_linear *l) {
    if (!l) return;
    mp_gemm_free(l->gemm);
    free(l->src_bf16);
    free(l);
}

static enum mp_status linear_new(struct mp_linear **out, const struct mp_gemm_desc *d) {
    if (!out || !d->b || d->N <= 0 || d->K <= 0 ||
        (d->precision != MP_PRECISION_FP32 && d->precision != MP_PRECISION_BF16) || d->activation < MP_OP_NONE ||
        d->activation > MP_OP_QUICK_GELU)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_init: bad arguments");
    *out = NULL;
    struct mp_linear *l = calloc(1, sizeof *l);
    if (!l) return mp_error(MP_STATUS_OUT_OF_MEMORY, "linear_init: out of memory");
    l->d = *d;
    *out = l;
    return MP_STATUS_OK;
}

enum mp_status mp_linear_init(struct mp_linear **out, const float *weight, const float *bias, int64_t N, int64_t K,
                              enum mp_precision precision, enum mp_activation_op activation, int accumulate) {
    struct mp_gemm_desc d = {weight, 0, bias, N, K, precision, MP_DTYPE_F32, activation, accumulate};
    return linear_new(out, &d);
}

enum mp_status mp_linear_init_kn(struct mp_linear **out, const float *weight, int64_t N, int64_t K,
                                 enum mp_precision precision) {
    struct mp_gemm_desc d = {weight, 1, NULL, N, K, precision, MP_DTYPE_F32, MP_OP_NONE, 0};
    return linear_new(out, &d);
}

enum mp_status mp_linear_forward(struct mp_linear *l, float *out, const float *in, int64_t M) {
    return mp_linear_forward_typed(l, out, MP_DTYPE_F32, in, MP_DTYPE_F32, M);
}

enum mp_status mp_linear_forward_typed(struct mp_linear *l, void *out, enum mp_dtype out_type, const void *in,
                                       enum mp_dtype in_type, int64_t M) {
    if (!l || M < 0 || (M > 0 && (!out || !in)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: bad arguments");
    if ((in_type != MP_DTYPE_F32 && in_type != MP_DTYPE_BF16) || (out_type != MP_DTYPE_F32 && out_type != MP_DTYPE_BF16))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: input and output must be F32 or BF16");
    if (l->d.precision == MP_PRECISION_FP32 && (in_type != MP_DTYPE_F32 || out_type != MP_DTYPE_F32))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: an fp32 layer takes and gives F32");
    if (l->d.accumulate && out_type != MP_DTYPE_F32)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "linear_forward: accumulating into BF16 is not supported");
    if (M == 0) return MP_STATUS_OK;
    enum mp_status status;
    if (!l->gemm || l->d.out_type != out_type) {
        mp_gemm_free(l->gemm);
        l->gemm = NULL;
        l->d.out_type = out_type;
        if ((status = mp_gemm_init(&l->gemm, &l->d)) != MP_STATUS_OK) return status;
    }
    const void *src = in;
    if (l->d.precision == MP_PRECISION_BF16 && in_type == MP_DTYPE_F32) { // the kernel takes bf16: round x once
        if (M * l->d.K > l->src_cap) {
            uint16_t *grown = realloc(l->src_bf16, (size_t)(M * l->d.K) * sizeof *grown);
            if (!grown) return mp_error(MP_STATUS_OUT_OF_MEMORY, "linear_forward: bf16 input buffer");
            l->src_bf16 = grown, l->src_cap = M * l->d.K;
        }
        mp_dtype_convert(l->src_bf16, MP_DTYPE_BF16, in, MP_DTYPE_F32, M * l->d.K);
        src = l->src_bf16;
    }
    return mp_gemm_run(l->gemm, out, src, M);
}

int mp_linear_threads(const struct mp_linear *l) { return l ? mp_gemm_threads(l->gemm) : 0; }

const char *mp_linear_backend(const struct mp_linear *l) { return l && l->gemm ? mp_gemm_backend(l->gemm) : "none"; }
