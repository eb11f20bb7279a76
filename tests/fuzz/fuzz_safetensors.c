/* fuzz_safetensors.c: libFuzzer target for the safetensors reader. The input is a whole
 * file. Opening must either fail with a message or yield a handle whose every promise
 * holds: tensors in name order and found by name, data inside the input, reads that
 * stay within numel elements. ASan and UBSan turn a broken promise into a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "weights/safetensors.h"

// Keeps reads from being optimised away without printing anything.
static volatile unsigned char sink;

static int is_float(enum mp_dtype dtype) {
    return dtype == MP_DTYPE_F32 || dtype == MP_DTYPE_F16 || dtype == MP_DTYPE_BF16 || dtype == MP_DTYPE_F64;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mp_safetensors *st = NULL;
    enum mp_status status = mp_safetensors_open_memory(&st, data, size);
    if (status != MP_STATUS_OK) {
        if (st != NULL || mp_last_error()[0] == 0) abort(); // a failure leaves no handle and says why
        return 0;
    }

    const uint8_t *data_end = data + size;
    int64_t count = mp_safetensors_count(st);
    const struct mp_tensor *previous = NULL;
    for (int64_t i = 0; i < count; i++) {
        const struct mp_tensor *t = mp_safetensors_tensor(st, i);
        if (!t || mp_safetensors_find(st, t->name) != t) abort();
        if (previous && strcmp(previous->name, t->name) >= 0) abort(); // sorted, no duplicates
        previous = t;
        if (t->ndim < 0 || t->ndim > MP_TENSOR_MAX_DIMS || t->numel < 0) abort();
        if ((uint64_t)t->numel * mp_dtype_size(t->dtype) != t->nbytes) abort();
        if (t->nbytes > 0) {
            const uint8_t *bytes = t->data;
            // ASan only sees the input buffer, so check the span against it explicitly too.
            if (bytes < data || bytes + t->nbytes > data_end || (uint64_t)(bytes - data) != t->offset) abort();
            sink ^= bytes[0];
            sink ^= bytes[t->nbytes - 1];
        }
        if (is_float(t->dtype) && t->numel < (1 << 20)) {
            // Exactly numel floats, so ASan flags a write past them; +1 keeps malloc(0) from NULL.
            float *out = malloc((size_t)t->numel * sizeof *out + (t->numel == 0));
            if (!out) abort();
            if (mp_tensor_read(out, MP_DTYPE_F32, t) != MP_STATUS_OK) abort();
            if (mp_tensor_read(out, MP_DTYPE_BF16, t) != MP_STATUS_OK) abort();
            free(out);
        }
    }
    if (mp_safetensors_tensor(st, count) != NULL) abort();

    for (int64_t i = 0; i < mp_safetensors_metadata_count(st); i++) {
        const char *key = NULL, *value = NULL;
        mp_safetensors_metadata(st, i, &key, &value);
        if (!key || !value) abort();
        sink ^= (unsigned char)(strlen(key) + strlen(value));
    }
    mp_safetensors_close(st);
    return 0;
}
