/* encoders/vit.h: one Vision Transformer trunk for CLIP vision towers and DINOv2.
 *
 *     struct mp_vit *vit;
 *     mp_vit_init(&vit, &config, tensors, count);   // tensors in mp_vit's canonical order
 *     mp_vit_encode(vit, out, pixels, N, S, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32);
 *     mp_vit_free(vit);
 *
 * Canonical tensor order (the Python layer maps checkpoint names to it; mp_vit_tensor_numel
 * gives each size). D width, p patch, G = image_size / p, M mlp, E projection, R registers.
 *   MP_VIT_CLIP:   class_embedding (D), patch_weight (D, 3, p, p), position_embedding (1 + G*G, D),
 *                  pre_ln_weight (D), pre_ln_bias (D), the layers, post_ln_weight (D),
 *                  post_ln_bias (D), projection (E, D).
 *   MP_VIT_DINOV2: class_embedding (D), register_tokens (R, D) if R > 0, patch_weight (D, 3, p, p),
 *                  patch_bias (D), position_embedding (1 + G*G, D), the layers, norm_weight (D),
 *                  norm_bias (D).
 *   Per layer: ln1_weight, ln1_bias (D), qkv_weight (3D, D), qkv_bias (3D), out_weight (D, D),
 *              out_bias (D), [DINOv2: layer_scale1 (D)], ln2_weight, ln2_bias (D),
 *              fc1_weight (M, D) (SwiGLU: (2M, D), the gate rows then the up rows), fc1_bias,
 *              fc2_weight (D, M), fc2_bias (D), [DINOv2: layer_scale2 (D)].
 * The handle copies the weights (LayerScale is folded into the output projections); a handle
 * must not be used by two threads at once. */
#ifndef MP_ENCODERS_VIT_H
#define MP_ENCODERS_VIT_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"

enum mp_vit_kind { MP_VIT_CLIP = 0, MP_VIT_DINOV2 };
enum mp_activation { MP_ACTIVATION_GELU = 0, MP_ACTIVATION_QUICK_GELU };

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

// Number of tensors mp_vit_init expects for `config` (-1 for an inconsistent config), and the
// element count of tensor i (-1 when out of range).
int64_t mp_vit_tensor_count(const struct mp_vit_config *config);
int64_t mp_vit_tensor_numel(const struct mp_vit_config *config, int64_t i);

// Returns MP_STATUS_INVALID_ARGUMENT for an inconsistent config or count.
enum mp_status mp_vit_init(struct mp_vit **vit, const struct mp_vit_config *config, const float *const *tensors,
                           int64_t count);

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

void mp_vit_free(struct mp_vit *vit);

#endif
