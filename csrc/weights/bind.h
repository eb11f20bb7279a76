/* weights/bind.h (internal): a model's weights bound by name from safetensors files.
 *
 * Each model has one table of rules (encoders/vit.c, encoders/text.c): a canonical name
 * ("layers.{i}.attn.qkv.weight", {i} the layer index), a shape rule over the model's
 * dimensions, and the field the tensor goes to. A checkpoint layout renames tensors with
 * aliases, canonical name pattern -> source pattern, where a source is
 *
 *     name                      the tensor itself (leading dims of 1 are dropped)
 *     name^T                    a 2-D tensor stored transposed
 *     a + b + c                 equal parts concatenated along the first dimension
 *     a | b                     the first alternative whose tensors all exist
 *     zeros                     a tensor of zeros
 *
 * and a rule without an alias reads its canonical name. F32 tensors read as they are stored
 * stay views of the mapping (the model then holds the file); anything converted,
 * concatenated or transposed is copied, in fp32. */
#ifndef MP_WEIGHTS_BIND_H
#define MP_WEIGHTS_BIND_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "weights/checkpoint.h"
#include "weights/safetensors.h"

#define MP_RULE_MAX_DIMS 4

// One row of a model's table. shape[] holds indices into the model's dimension table
// (0 ends the shape, so dimension tables start at index 1). The rule applies when the
// model's flags include all of `when`; per-layer rules (a "{i}" in the name) write into
// struct mp_block at `field`, the others into the model's struct.
struct mp_weight_rule {
    const char *name;
    uint8_t     shape[MP_RULE_MAX_DIMS];
    uint32_t    when;
    size_t      field; // offsetof the `const float *` it sets
};

// The weights a model holds: the files its views point into, and its own copies.
struct mp_weights {
    struct mp_safetensors **files;
    int64_t                 file_count;
    void                  **owned;
    int64_t                 owned_count, owned_cap;
};

// Binds every rule of `rules` that applies to `flags`: into `model` (global rules) and into
// `layers` blocks of `layer_size` bytes at `layer0` (per-layer rules). Errors name the
// tensor, its shape and the expected one, and the file.
enum mp_status mp_weights_bind(struct mp_weights           *weights,
                               void                        *model,
                               void                        *layer0,
                               size_t                       layer_size,
                               int64_t                      layers,
                               const struct mp_weight_rule *rules,
                               int64_t                      rule_count,
                               const int64_t               *dims,
                               uint32_t                     flags,
                               const struct mp_checkpoint  *checkpoint,
                               const char                  *who);

// Makes *tensor (numel floats) the model's own copy, so the model may change it.
enum mp_status mp_weights_own(struct mp_weights *weights, const float **tensor, int64_t numel);

void mp_weights_free(struct mp_weights *weights);

#endif
