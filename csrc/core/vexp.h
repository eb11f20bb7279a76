/* core/vexp.h: a vectorisable exp for fp32, shared by the softmax of the encoders and the loss. */
#ifndef MP_CORE_VEXP_H
#define MP_CORE_VEXP_H

#include <stdint.h>
#include <string.h>

/* exp for fp32 in plain arithmetic, 16 values at a time, so it compiles to vector code at
 * every ISA (a libm call would stop vectorisation, and GCC leaves a loop scalar when the clamp
 * below shares it with the float-to-int conversion, hence three loops). Range reduction
 * x = n ln2 + r with ln2 split in two, a degree-6 polynomial for e^r on [-ln2/2, ln2/2] (the
 * Cephes expf coefficients, about 1 ulp), then 2^n through the exponent bits. Inputs are
 * <= 0 here (softmax after subtracting the max, sigmoid of -|z|); below -87.3 the result is 0
 * (e^-87.3 is the smallest normal float), and -inf gives 0. dst may equal src. */
enum { EXP_BLOCK = 16 };

static inline void exp_nonpositive16(float *dst, const float *src) {
    float x[EXP_BLOCK], keep[EXP_BLOCK], y[EXP_BLOCK], pow2[EXP_BLOCK];
    int32_t bits[EXP_BLOCK];
#pragma omp simd
    for (int i = 0; i < EXP_BLOCK; i++) {
        keep[i] = src[i] >= -87.3f ? 1.0f : 0.0f;
        x[i] = src[i] >= -87.3f ? src[i] : -87.3f;
    }
#pragma omp simd
    for (int i = 0; i < EXP_BLOCK; i++) {
        float t = x[i] * 1.44269504088896341f + 0.5f;
        int32_t k = (int32_t)t;
        k -= (float)k > t; // floor for negative t
        float n = (float)k;
        float r = x[i] - n * 0.693359375f + n * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        y[i] = (p * r * r + r + 1.0f) * keep[i];
        bits[i] = (k + 127) << 23;
    }
    memcpy(pow2, bits, sizeof pow2); // 2^n
#pragma omp simd
    for (int i = 0; i < EXP_BLOCK; i++) dst[i] = y[i] * pow2[i];
}

#endif
