/* encoders/vit.h: one Vision Transformer trunk for CLIP vision towers and DINOv2.
 *
 *     struct mp_safetensors *st;
 *     mp_safetensors_open(&st, "dinov2/model.safetensors");
 *     struct mp_weight_alias aliases[] = {{"class_embedding", "embeddings.cls_token"}, ...};
 *     struct mp_checkpoint ck = {&st, 1, aliases, n_aliases};
 *     struct mp_vit *vit;
 *     mp_vit_init(&vit, &config, &ck);       // the model holds the file; st may be closed now
 *     mp_vit_encode(vit, out, pixels, N, S, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32);
 *     mp_vit_free(vit);
 *
 * Tensors by canonical name (encoders/vit.c has the table; a checkpoint layout maps its own
 * names onto these with aliases, see weights/bind.h). D width, p patch, G = image_size / p,
 * M mlp (M1 = 2M with SwiGLU: the gate rows then the up rows), E projection, R registers:
 *   class_embedding (D), register_tokens (R, D) [DINOv2, R > 0],
 *   patch_embedding.weight (D, 3, p, p), patch_embedding.bias (D) [DINOv2],
 *   position_embedding (1 + G*G, D), pre_norm.weight, pre_norm.bias (D) [CLIP],
 *   layers.{i}.norm1.weight, .norm1.bias (D), layers.{i}.attn.qkv.weight (3D, D), .qkv.bias (3D),
 *   layers.{i}.attn.out.weight (D, D), .out.bias (D), layers.{i}.scale1 (D) [DINOv2],
 *   layers.{i}.norm2.weight, .norm2.bias (D), layers.{i}.mlp.fc1.weight (M1, D), .fc1.bias (M1),
 *   layers.{i}.mlp.fc2.weight (D, M), .fc2.bias (D), layers.{i}.scale2 (D) [DINOv2],
 *   post_norm.weight, post_norm.bias (D), projection (E, D) [CLIP].
 * LayerScale is folded into the output projections (those tensors are copied); F32 tensors
 * are otherwise used in place from the mapping. A handle must not be used by two threads at
 * once. */
#ifndef MP_ENCODERS_VIT_H
#define MP_ENCODERS_VIT_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"
#include "nn/activation.h"
#include "weights/checkpoint.h"

enum mp_vit_kind { MP_VIT_CLIP = 0, MP_VIT_DINOV2 };

// What mp_vit_encode returns per image. CLIP: only CLS (the projected class token).
// DINOv2: CLS = the class token after the final norm (transformers' pooler_output);
// MEAN = the mean of the patch tokens after the final norm (class and registers excluded);
// CLS_MEAN = both side by side, 2D wide (the DINOv2 linear-probe input).
enum mp_vit_pooling { MP_VIT_POOL_CLS = 0, MP_VIT_POOL_CLS_MEAN, MP_VIT_POOL_MEAN };

struct mp_vit_config {
    enum mp_vit_kind   kind;
    int64_t            image_size; // S: pixels per side the position embeddings were trained for
    int64_t            patch_size; // p
    int64_t            width;      // D
    int64_t            layers;     // L
    int64_t            heads;      // H
    int64_t            mlp;        // M: MLP hidden features (SwiGLU: per half)
    int64_t            projection; // E: CLIP visual projection; 0 for DINOv2
    int64_t            registers;  // R: DINOv2 register tokens; 0 for CLIP
    int                swiglu;     // DINOv2-g: SwiGLU MLP instead of fc1 -> activation -> fc2
    float              eps;        // LayerNorm epsilon
    enum mp_activation activation;
};

struct mp_vit;

// Reads the weights of `config` from `checkpoint`. Returns MP_STATUS_INVALID_ARGUMENT for an
// inconsistent config, MP_STATUS_BAD_FORMAT naming a missing or misshapen tensor.
enum mp_status mp_vit_init(struct mp_vit **vit, const struct mp_vit_config *config,
                           const struct mp_checkpoint *checkpoint);

// Embeds N preprocessed S x S images (the patch grid is S / p per side, as a stride-p
// convolution floors it). `positions` holds position embeddings for that grid, (1 + g*g, D)
// with g = S / p, interpolated by the caller; NULL means the checkpoint's own table, which
// needs g == G. CLIP accepts only S == image_size and returns transformers'
// get_image_features (before normalisation).
enum mp_status mp_vit_encode(struct mp_vit      *vit,
                             float              *out,       // (N, mp_vit_output_dim(vit, pooling))
                             const float        *pixels,    // (N, 3, S, S)
                             int64_t             N,
                             int64_t             S,
                             const float        *positions, // (1 + g*g, D) or NULL
                             enum mp_vit_pooling pooling,
                             enum mp_precision   precision);

// Width of one output row for `pooling`; 0 if the model does not offer it.
int64_t mp_vit_output_dim(const struct mp_vit *vit, enum mp_vit_pooling pooling);

// The checkpoint's position table, (1 + G*G, D).
const float *mp_vit_positions(const struct mp_vit *vit);

void mp_vit_free(struct mp_vit *vit);

#endif
