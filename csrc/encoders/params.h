/* encoders/params.h: what the encoder handles share: walking a canonical tensor order, one
 * allocation holding every weight, and activation arenas kept between calls. */
#ifndef MP_ENCODERS_PARAMS_H
#define MP_ENCODERS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

// One pass over a model's tensors in canonical order: records each size in numel[] (when
// given) and hands out consecutive views of the parameter block (when cursor is set).
struct mp_walker {
    int64_t n;      // tensors so far
    int64_t *numel; // sizes, or NULL
    float *cursor;  // next parameter, or NULL
};

// The next tensor of `count` elements: its view (NULL when not binding).
float *mp_walker_take(struct mp_walker *w, int64_t count);

// Copies `count` tensors of numel[i] floats into one new allocation (*params). Fails with
// INVALID_ARGUMENT naming a NULL tensor, OUT_OF_MEMORY when the block cannot be allocated.
enum mp_status mp_params_copy(float **params, const float *const *tensors, const int64_t *numel, int64_t count,
                              const char *who);

// Points *buf at >= n elements of `size` bytes, reallocating when the capacity is short;
// -1 when the allocation fails (then *buf is NULL and *cap 0).
int mp_arena_reserve(void **buf, size_t *cap, size_t n, size_t size);

#endif
