/* core/dtype.c: element sizes and the float conversions between F32, F16 and BF16 (round
 * to nearest even), one loop per type for the compiler to vectorise, parallel over large
 * arrays. */
#include "core/dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[MP_DTYPE_COUNT] = {
    [MP_DTYPE_F32] = {"F32", 4}, [MP_DTYPE_F16] = {"F16", 2}, [MP_DTYPE_BF16] = {"BF16", 2},
    [MP_DTYPE_F64] = {"F64", 8}, [MP_DTYPE_BOOL] = {"BOOL", 1}, [MP_DTYPE_U8] = {"U8", 1},
    [MP_DTYPE_I8] = {"I8", 1},   [MP_DTYPE_U16] = {"U16", 2},   [MP_DTYPE_I16] = {"I16", 2},
    [MP_DTYPE_U32] = {"U32", 4}, [MP_DTYPE_I32] = {"I32", 4},   [MP_DTYPE_U64] = {"U64", 8},
    [MP_DTYPE_I64] = {"I64", 8},
};

static int dtype_valid(enum mp_dtype dtype) { return dtype >= 0 && dtype < MP_DTYPE_COUNT; }

size_t mp_dtype_size(enum mp_dtype dtype) { return dtype_valid(dtype) ? dtype_table[dtype].size : 0; }

const char *mp_dtype_name(enum mp_dtype dtype) { return dtype_valid(dtype) ? dtype_table[dtype].name : "?"; }

int mp_dtype_parse(enum mp_dtype *dtype, const char *name, size_t len) {
    for (int d = 0; d < MP_DTYPE_COUNT; d++) {
        if (strlen(dtype_table[d].name) == len && memcmp(dtype_table[d].name, name, len) == 0) {
            *dtype = (enum mp_dtype)d;
            return 0;
        }
    }
    return -1;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float mp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    if (exponent == 0x1f) // inf or nan, payload kept
        return bits_f32(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) { // zero or subnormal: mantissa * 2^-24, exact in f32
        float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    return bits_f32(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float mp_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t mp_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if (isnan(f)) // truncating could turn a NaN with a low payload into inf
        return (uint16_t)((u >> 16) | 0x0040);
    u += 0x7fff + ((u >> 16) & 1); // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}

// One loop per source dtype, so that each compiles to a vectorised loop (memcpy loads
// allow any alignment, which safetensors data does not guarantee).
static void widen_f16(float *out, const unsigned char *in, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, in + 2 * i, 2);
        out[i] = mp_f16_to_f32(v);
    }
}

static void widen_bf16(float *out, const unsigned char *in, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, in + 2 * i, 2);
        out[i] = mp_bf16_to_f32(v);
    }
}

static void narrow_f64(float *out, const unsigned char *in, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, in + 8 * i, 8);
        out[i] = (float)v;
    }
}

static void to_f32(float *out, const unsigned char *in, enum mp_dtype dtype, int64_t n) {
    switch (dtype) {
    case MP_DTYPE_F32: memcpy(out, in, (size_t)n * 4); break;
    case MP_DTYPE_F16: widen_f16(out, in, n); break;
    case MP_DTYPE_BF16: widen_bf16(out, in, n); break;
    case MP_DTYPE_F64: narrow_f64(out, in, n); break;
    default: break; // unreachable: callers check the dtype first
    }
}

static int is_float(enum mp_dtype dtype) {
    return dtype == MP_DTYPE_F32 || dtype == MP_DTYPE_F16 || dtype == MP_DTYPE_BF16 || dtype == MP_DTYPE_F64;
}

enum mp_status mp_dtype_convert(void *dst, enum mp_dtype dst_dtype, const void *src, enum mp_dtype src_dtype,
                                int64_t n) {
    if (n < 0 || (n > 0 && (!dst || !src)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "convert: bad buffer or count %lld", (long long)n);
    if (!is_float(src_dtype) || (dst_dtype != MP_DTYPE_F32 && dst_dtype != MP_DTYPE_BF16))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "cannot convert %s to %s", mp_dtype_name(src_dtype),
                        mp_dtype_name(dst_dtype));
    const unsigned char *in = src;
    if (dst_dtype == MP_DTYPE_F32) {
        to_f32(dst, in, src_dtype, n);
    } else if (src_dtype == MP_DTYPE_BF16) {
        memcpy(dst, src, (size_t)n * 2);
    } else if (src_dtype == MP_DTYPE_F32) {
        uint16_t *out = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, in + 4 * i, 4);
            out[i] = mp_f32_to_bf16(v);
        }
    } else { // F16 and F64 to bf16 go through f32 in blocks, as torch's conversions do
        uint16_t *out = dst;
        enum { BLOCK = 4096 };
        size_t item = mp_dtype_size(src_dtype);
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t b = 0; b < n; b += BLOCK) {
            float wide[BLOCK];
            int64_t len = n - b < BLOCK ? n - b : BLOCK;
            to_f32(wide, in + (size_t)b * item, src_dtype, len);
            for (int64_t i = 0; i < len; i++) out[b + i] = mp_f32_to_bf16(wide[i]);
        }
    }
    return MP_STATUS_OK;
}
