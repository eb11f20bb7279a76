#include "encoders/params.h"

#include <stdlib.h>
#include <string.h>

float *mp_walker_take(struct mp_walker *w, int64_t count) {
    if (w->numel) w->numel[w->n] = count;
    w->n++;
    float *view = w->cursor;
    if (view) w->cursor += count;
    return view;
}

enum mp_status mp_params_copy(float **params, const float *const *tensors, const int64_t *numel, int64_t count,
                              const char *who) {
    *params = NULL;
    int64_t total = 0;
    for (int64_t i = 0; i < count; i++) {
        if (!tensors[i]) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: tensor %lld is NULL", who, (long long)i);
        total += numel[i];
    }
    float *block = malloc((size_t)(total > 0 ? total : 1) * sizeof *block);
    if (!block)
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: cannot allocate %lld parameters", who, (long long)total);
    for (int64_t i = 0, offset = 0; i < count; offset += numel[i], i++)
        memcpy(block + offset, tensors[i], (size_t)numel[i] * sizeof *block);
    *params = block;
    return MP_STATUS_OK;
}

int mp_arena_reserve(void **buf, size_t *cap, size_t n, size_t size) {
    if (n <= *cap) return 0;
    free(*buf);
    *cap = 0;
    if (!(*buf = malloc(n * size))) return -1;
    *cap = n;
    return 0;
}
