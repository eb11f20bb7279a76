/* core/amx.h (internal): the bf16 GEMM of the linear layers on Intel AMX tiles, beside the
 * oneDNN one (core/onednn.c). core/gemm.c picks it for a bf16 gemm when the CPU and the OS
 * allow AMX and MEGAPAIRS_MAX_ISA does not rule it out; everything else goes to oneDNN.
 *
 * Same contract as core/gemm.h: out (M, N) = in (M, K) @ B^T + bias, then the activation,
 * then += out with `accumulate`; inputs bf16, accumulation fp32 (each tile step adds 32
 * products, pairwise, into the fp32 accumulator; K is walked in order), output F32 or BF16
 * (rounded to nearest even once, after the epilogue). B is packed once, at init, into the
 * VNNI tile layout (pairs of k per 32-bit lane, 16 columns per tile, zero-padded to whole
 * tiles), so any N and K work. */
#ifndef MP_CORE_AMX_H
#define MP_CORE_AMX_H

#include <stdint.h>

#include "core/gemm.h"
#include "core/isa.h"
#include "core/status.h"

struct mp_amx_gemm;

// desc is checked by mp_gemm_init; its precision must be MP_PRECISION_BF16. Packs B (f32,
// rounded to bf16 once).
enum mp_status mp_amx_gemm_init(struct mp_amx_gemm **gemm, const struct mp_gemm_desc *desc);
// out (M, N) of desc->out_type from in (M, K) bf16, on the calling thread's OpenMP count.
enum mp_status mp_amx_gemm_run(struct mp_amx_gemm *gemm, void *out, const uint16_t *in, int64_t M);
void mp_amx_gemm_free(struct mp_amx_gemm *gemm);

#endif
