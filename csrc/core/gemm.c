/* core/gemm.c: the one door of the linear layers' matmul (core/gemm.h). It validates the
 * description once and picks the kernel once, at init: AMX for bf16 where usable, oneDNN
 * otherwise. */
#include "core/gemm.h"

#include <omp.h>
#include <stdlib.h>

#include "core/amx.h"

struct mp_gemm {
    struct mp_amx_gemm *amx;       // exactly one of the two is set
    struct mp_onednn_gemm *onednn;
    int amx_threads;               // the OpenMP count of the AMX kernel's last run
};

enum mp_status mp_gemm_init(struct mp_gemm **out, const struct mp_gemm_desc *d) {
    if (!out || !d) return mp_error(MP_STATUS_INVALID_ARGUMENT, "gemm_init: NULL argument");
    *out = NULL;
    if (!d->b || d->N <= 0 || d->K <= 0 || (d->precision != MP_PRECISION_FP32 && d->precision != MP_PRECISION_BF16) ||
        d->activation < MP_OP_NONE || d->activation > MP_OP_QUICK_GELU ||
        (d->out_type != MP_DTYPE_F32 && d->out_type != MP_DTYPE_BF16) ||
        (d->precision == MP_PRECISION_FP32 && d->out_type != MP_DTYPE_F32) ||
        (d->accumulate && d->out_type != MP_DTYPE_F32))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "gemm_init: inconsistent description");
    struct mp_gemm *g = calloc(1, sizeof *g);
    if (!g) return mp_error(MP_STATUS_OUT_OF_MEMORY, "gemm_init: out of memory");
    enum mp_status status = d->precision == MP_PRECISION_BF16 && mp_amx_usable() ? mp_amx_gemm_init(&g->amx, d)
                                                                                 : mp_onednn_gemm_init(&g->onednn, d);
    if (status != MP_STATUS_OK) {
        free(g);
        return status;
    }
    *out = g;
    return MP_STATUS_OK;
}

enum mp_status mp_gemm_run(struct mp_gemm *g, void *out, const void *in, int64_t M) {
    if (!g) return mp_error(MP_STATUS_INVALID_ARGUMENT, "gemm_run: NULL gemm");
    if (g->onednn) return mp_onednn_gemm_run(g->onednn, out, in, M);
    g->amx_threads = omp_get_max_threads();
    return mp_amx_gemm_run(g->amx, out, in, M);
}

void mp_gemm_free(struct mp_gemm *g) {
    if (!g) return;
    mp_amx_gemm_free(g->amx);
    mp_onednn_gemm_free(g->onednn);
    free(g);
}

int mp_gemm_threads(const struct mp_gemm *g) {
    return !g ? 0 : g->onednn ? mp_onednn_gemm_threads(g->onednn) : g->amx_threads;
}

const char *mp_gemm_backend(const struct mp_gemm *g) { return !g ? "none" : g->amx ? "amx" : "onednn"; }
