/* core/bf16.h: fp32 -> bf16 rounding that vectorises, shared by the kernels that feed AMX. */
#ifndef MP_CORE_BF16_H
#define MP_CORE_BF16_H

#include <stdint.h>
#include <string.h>

#include "core/vexp.h"

// Rounds n floats to bf16 (nearest even, NaN kept quiet), as mp_dtype_convert does, in
// blocks whose bits are copied out whole so the integer arithmetic vectorises.
static inline void round_bf16(uint16_t *dst, const float *src, int64_t n) {
    uint32_t bits[EXP_BLOCK] = {0}; // a partial last block computes on defined lanes
    for (int64_t j = 0; j < n; j += EXP_BLOCK) {
        int m = n - j < EXP_BLOCK ? (int)(n - j) : EXP_BLOCK;
        memcpy(bits, src + j, (size_t)m * sizeof *bits);
#pragma omp simd
        for (int i = 0; i < EXP_BLOCK; i++) {
            uint32_t b = bits[i];
            int nan = (b & 0x7fffffffu) > 0x7f800000u;
            bits[i] = nan ? (b >> 16) | 0x40u : (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
        }
        for (int i = 0; i < m; i++) dst[j + i] = (uint16_t)bits[i];
    }
}

#endif
