/* core/dtype.h: element types of tensors the core reads, and conversions between
 * the floating-point ones.
 *
 * Half and bfloat16 values travel as their uint16_t bit patterns. Conversions to f32
 * are exact; f32 -> bf16 rounds to nearest even (as torch.Tensor.to(torch.bfloat16)
 * does) and keeps NaN a NaN. */
#ifndef MP_CORE_DTYPE_H
#define MP_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

enum mp_dtype {
    MP_DTYPE_F32 = 0,
    MP_DTYPE_F16,
    MP_DTYPE_BF16,
    MP_DTYPE_F64,
    MP_DTYPE_BOOL,
    MP_DTYPE_U8,
    MP_DTYPE_I8,
    MP_DTYPE_U16,
    MP_DTYPE_I16,
    MP_DTYPE_U32,
    MP_DTYPE_I32,
    MP_DTYPE_U64,
    MP_DTYPE_I64,
    MP_DTYPE_COUNT,
};

// Bytes per element; 0 for an invalid dtype.
size_t mp_dtype_size(enum mp_dtype dtype);

// The safetensors spelling ("F32", "BF16", "I64", ...); "?" for an invalid dtype.
const char *mp_dtype_name(enum mp_dtype dtype);

// Parses a safetensors spelling of `len` bytes. Returns 0 and sets *dtype, or -1.
int mp_dtype_parse(enum mp_dtype *dtype, const char *name, size_t len);

float mp_f16_to_f32(uint16_t h);
float mp_bf16_to_f32(uint16_t b);
uint16_t mp_f32_to_bf16(float f);

// Converts n elements of `src` (dtype `src_dtype`, any alignment) into `dst`.
// dst_dtype is MP_DTYPE_F32 (from F32, F16, BF16, F64) or MP_DTYPE_BF16 (from F32,
// F16, BF16, F64). Returns MP_STATUS_INVALID_ARGUMENT for any other pair.
enum mp_status mp_dtype_convert(void          *dst,       // (n) of dst_dtype
                                enum mp_dtype  dst_dtype,
                                const void    *src,       // (n) of src_dtype
                                enum mp_dtype  src_dtype,
                                int64_t        n);

#endif
