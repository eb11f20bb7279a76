/* core/isa.h: the cap on the instruction sets of megapairs' own hand-written kernels, in one
 * place. Each kernel with variants takes the widest the CPU runs, up to the cap: the bf16
 * linear layers run on our AMX kernel (core/amx.c) or oneDNN's, the resampling filter on
 * AVX-512, AVX2 or plain C (image/resample.c). Capping is how the tests run every path.
 *
 *     mp_set_max_isa(MP_ISA_AVX512);   // or MEGAPAIRS_MAX_ISA=avx512 in the environment
 *
 * oneDNN's own dispatch (mp_matmul, fp32 layers) has its own cap, ONEDNN_MAX_CPU_ISA. */
#ifndef MP_CORE_ISA_H
#define MP_CORE_ISA_H

#include <stdint.h>

enum mp_isa {
    MP_ISA_GENERIC = 0, // portable C only
    MP_ISA_AVX2    = 1,
    MP_ISA_AVX512  = 2, // our AMX kernels off: oneDNN does all bf16 work
    MP_ISA_AMX     = 3, // everything the CPU and the OS allow (the default)
};

// 1 when the AMX kernels will run: the CPU has AMX-TILE, AMX-BF16 and AVX512-BF16, the OS
// granted this process the tile state (arch_prctl, Linux >= 5.16), and the ISA cap allows
// it. The hardware check runs once per process.
int mp_amx_usable(void);

// Caps the ISA of megapairs' own kernels for this process and returns the previous cap.
// Until this is called, the cap follows MEGAPAIRS_MAX_ISA, read at each query: "amx",
// "avx512", "avx2" or "generic" (case-insensitive, a prefix is enough: "AVX512_CORE" is
// avx512; unset: amx; anything else: generic). Layers keep the kernel they were planned
// with; a layer planned after the call follows the new cap.
enum mp_isa mp_set_max_isa(enum mp_isa isa);
enum mp_isa mp_get_max_isa(void);

// The tile loop's peak on this CPU, for benchmarks: `iters` steps of four 16 x 16 x 32 tile
// products with no memory traffic, on every OpenMP thread of the caller; FLOP/s, or 0 when
// AMX is not usable.
double mp_amx_peak_flops(int64_t iters);

#endif
