/* weights/safetensors.h: a bounds-checked reader of .safetensors files.
 *
 * Layout: 8-byte little-endian header length H, H bytes of UTF-8 JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value"}}
 * then the data section, where every tensor's bytes are [begin, end) counted from its
 * start. A file is accepted only if each tensor's span equals prod(shape) * itemsize and
 * the spans tile the data section exactly: no overlap, no hole, no trailing byte.
 *
 *     struct mp_safetensors *st;
 *     if (mp_safetensors_open(&st, "model.safetensors") != MP_STATUS_OK) return error;
 *     const struct mp_tensor *w = mp_safetensors_find(st, "visual.proj");
 *     mp_tensor_read(out, MP_DTYPE_F32, w);   // out holds w->numel floats
 *     mp_safetensors_close(st);
 *
 * The file is memory-mapped read-only; tensor data pointers stay valid until close.
 * A handle may be read from several threads at once; closing it must wait for them. */
#ifndef MP_WEIGHTS_SAFETENSORS_H
#define MP_WEIGHTS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/status.h"

#define MP_TENSOR_MAX_DIMS 8
#define MP_SAFETENSORS_MAX_HEADER 100000000 // bytes; larger headers are refused as absurd
#define MP_SAFETENSORS_MAX_TENSORS 100000   // entries (tensors + metadata); real shards hold thousands

// What a file may ask for. A zero field takes the default above.
struct mp_safetensors_limits {
    uint64_t max_header;  // bytes of JSON header
    int64_t  max_tensors; // tensors plus "__metadata__" entries
};

struct mp_tensor {
    const char   *name;                       // NUL-terminated UTF-8
    enum mp_dtype dtype;
    int32_t       ndim;                       // 0 for a scalar
    int64_t       shape[MP_TENSOR_MAX_DIMS];
    int64_t       numel;                      // product of shape (1 for a scalar)
    const void   *data;                       // numel * mp_dtype_size(dtype) bytes, any alignment
    size_t        nbytes;
    uint64_t      offset;                     // of data from the start of the file
};

struct mp_safetensors;

// Opens and validates `path`. Returns MP_STATUS_IO if the file cannot be opened or mapped,
// MP_STATUS_BAD_FORMAT (message naming the problem and the tensor) if it is malformed.
enum mp_status mp_safetensors_open(struct mp_safetensors **st, const char *path);

// Same over `size` bytes the caller keeps alive and unchanged until close.
enum mp_status mp_safetensors_open_memory(struct mp_safetensors **st, const void *bytes, size_t size);

// mp_safetensors_open / _open_memory under `limits` (NULL: the defaults). A header over
// either limit is MP_STATUS_BAD_FORMAT, found before anything it asks for is allocated.
enum mp_status mp_safetensors_open_limited(struct mp_safetensors **st, const char *path,
                                           const struct mp_safetensors_limits *limits);
enum mp_status mp_safetensors_open_memory_limited(struct mp_safetensors **st, const void *bytes, size_t size,
                                                  const struct mp_safetensors_limits *limits);

// Releases the handle: the file is unmapped when the last holder (the opener, or a model
// that retained it) closes it. NULL is a no-op.
void mp_safetensors_close(struct mp_safetensors *st);

// Takes one more hold on `st` (a model whose weights are views of the mapping does), released
// by one more mp_safetensors_close. Holding is thread-safe. Returns st.
struct mp_safetensors *mp_safetensors_retain(struct mp_safetensors *st);

// The path the handle was opened from, or "" for one opened from memory.
const char *mp_safetensors_source(const struct mp_safetensors *st);

// Tensors in name order (bytewise), i in [0, count).
int64_t mp_safetensors_count(const struct mp_safetensors *st);
const struct mp_tensor *mp_safetensors_tensor(const struct mp_safetensors *st, int64_t i);

// The tensor called `name`, or NULL.
const struct mp_tensor *mp_safetensors_find(const struct mp_safetensors *st, const char *name);

// "__metadata__" entries, string to string, in file order, i in [0, count).
int64_t mp_safetensors_metadata_count(const struct mp_safetensors *st);
void mp_safetensors_metadata(const struct mp_safetensors *st, int64_t i, const char **key, const char **value);

// Copies `t` into `out`, converting to `dtype`: MP_DTYPE_F32 or MP_DTYPE_BF16 (bit patterns)
// from any float dtype, or t->dtype itself (a plain copy, the way to read integers).
// `out` holds t->numel elements of `dtype`.
enum mp_status mp_tensor_read(void *out, enum mp_dtype dtype, const struct mp_tensor *t);

#endif
