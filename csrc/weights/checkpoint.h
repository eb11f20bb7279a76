/* weights/checkpoint.h: where an encoder reads its weights from: safetensors files and the
 * aliases that map the model's canonical tensor names onto the checkpoint's own.
 *
 * A source is `name` (leading dims of 1 dropped), `name^T` (a 2-D tensor stored
 * transposed), `a + b + c` (equal parts concatenated along the first dimension), `a | b`
 * (the first alternative whose tensors all exist) or `zeros`; "{i}" in a name stands for the
 * layer index. A canonical name without an alias is read as it is. */
#ifndef MP_WEIGHTS_CHECKPOINT_H
#define MP_WEIGHTS_CHECKPOINT_H

#include <stdint.h>

#include "weights/safetensors.h"

struct mp_weight_alias {
    const char *name;   // a canonical name pattern of the model's table
    const char *source; // what to read for it (see above)
};

// Where a model's weights come from: one or more files (the shards of one checkpoint) and
// the aliases of its layout.
struct mp_checkpoint {
    struct mp_safetensors *const *files;
    int64_t                       file_count;
    const struct mp_weight_alias *aliases;
    int64_t                       alias_count;
};

#endif
