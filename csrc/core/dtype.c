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

// Loads element i of a possibly unaligned float array as f32.
static float load_f32(const unsigned char *src, enum mp_dtype dtype, int64_t i) {
    switch (dtype) {
    case MP_DTYPE_F32: {
        float v;
        memcpy(&v, src + 4 * i, 4);
        return v;
    }
    case MP_DTYPE_F16: {
        uint16_t v;
        memcpy(&v, src + 2 * i, 2);
        return mp_f16_to_f32(v);
    }
    case MP_DTYPE_BF16: {
        uint16_t v;
        memcpy(&v, src + 2 * i, 2);
        return mp_bf16_to_f32(v);
    }
    case MP_DTYPE_F64: {
        double v;
        memcpy(&v, src + 8 * i, 8);
        return (float)v;
    }
    default: return 0.0f; // unreachable: callers check the dtype first
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
        float *out = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++) out[i] = load_f32(in, src_dtype, i);
    } else if (src_dtype == MP_DTYPE_BF16) {
        memcpy(dst, src, (size_t)n * 2);
    } else {
        uint16_t *out = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++) out[i] = mp_f32_to_bf16(load_f32(in, src_dtype, i));
    }
    return MP_STATUS_OK;
}
