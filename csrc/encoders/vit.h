/* encoders/vit.h: one Vision Transformer trunk for CLIP vision towers (and, next, DINOv2).
 *
 *     struct mp_vit *vit;
 *     mp_vit_init(&vit, &config, tensors, count);   // tensors in mp_vit's canonical order
 *     mp_vit_encode(vit, embeddings, pixels, N, MP_PRECISION_FP32);
 *     mp_vit_free(vit);
 *
 * Canonical tensor order for MP_VIT_CLIP (the Python layer maps checkpoint names to it):
 *   class_embedding (D), patch_weight (D, 3, p, p), position_embedding (1 + G*G, D),
 *   pre_ln_weight (D), pre_ln_bias (D),
 *   per layer: ln1_weight, ln1_bias (D), qkv_weight (3D, D), qkv_bias (3D), out_weight (D, D),
 *              out_bias (D), ln2_weight, ln2_bias (D), fc1_weight (M, D), fc1_bias (M),
 *              fc2_weight (D, M), fc2_bias (D),
 *   post_ln_weight (D), post_ln_bias (D), projection (E, D).
 * The handle copies the weights; a handle must not be used by two threads at once. */
#ifndef MP_ENCODERS_VIT_H
#define MP_ENCODERS_VIT_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"

enum mp_vit_kind { MP_VIT_CLIP = 0 };
enum mp_activation { MP_ACTIVATION_GELU = 0, MP_ACTIVATION_QUICK_GELU };

struct mp_vit_config {
    enum mp_vit_kind   kind;
    int64_t            image_size;   // S: pixels per side
    int64_t            patch_size;   // p
    int64_t            width;        // D
    int64_t            layers;       // L
    int64_t            heads;        // H
    int64_t            mlp;          // M
    int64_t            projection;   // E (CLIP visual projection)
    float              eps;          // LayerNorm epsilon
    enum mp_activation activation;
};

struct mp_vit;

// Number of tensors mp_vit_init expects for `config`, and the element count of tensor i.
int64_t mp_vit_tensor_count(const struct mp_vit_config *config);
int64_t mp_vit_tensor_numel(const struct mp_vit_config *config, int64_t i);

// Returns MP_STATUS_INVALID_ARGUMENT for an inconsistent config or count.
enum mp_status mp_vit_init(struct mp_vit **vit, const struct mp_vit_config *config, const float *const *tensors,
                           int64_t count);

// Embeddings of N preprocessed images: CLIP's image_embeds before normalisation
// (transformers get_image_features).
enum mp_status mp_vit_encode(struct mp_vit    *vit,
                             float            *embeddings, // (N, E)
                             const float      *pixels,     // (N, 3, S, S)
                             int64_t           N,
                             enum mp_precision precision);

int64_t mp_vit_output_dim(const struct mp_vit *vit);

void mp_vit_free(struct mp_vit *vit);

#endif
