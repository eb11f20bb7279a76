/* encoders/vit.c: the Vision Transformer assembled from nn/ parts: its weight table
 * (canonical names and shapes, bound by weights/bind.c), patch embedding, tokens, the stack
 * of pre-norm blocks, and CLIP's / DINOv2's pooling. */
#include "encoders/vit.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "nn/block.h"
#include "weights/bind.h"
#include "nn/layers.h"

struct vit_layer {
    struct mp_block block;
    const float *ls1, *ls2; // DINOv2 LayerScale, folded into the block at init
};

struct mp_vit {
    struct mp_vit_config c;
    struct mp_block_config bc;
    struct mp_weights weights;
    const float *class_emb, *registers, *patch_w, *patch_b, *pos, *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b, *proj;
    struct vit_layer *layers;
    struct mp_linear *patch[2], *projection[2]; // by enum mp_precision, packed on first use
    struct mp_arena arena;                      // activations, kept for the next call
};

// The dimensions the table's shapes name (index 0 unused: a 0 ends a shape).
enum { D_ = 1, D3, M_, M1, E_, R_, P_, C3, POS, VIT_DIMS };
// Flags a rule may require.
enum { CLIP = 1u, DINO = 2u, REGISTERS = 4u };

#define G(f) offsetof(struct mp_vit, f)
#define L(f) offsetof(struct vit_layer, f)
static const struct mp_weight_rule vit_table[] = {
    {"class_embedding", {D_}, 0, G(class_emb)},
    {"register_tokens", {R_, D_}, DINO | REGISTERS, G(registers)},
    {"patch_embedding.weight", {D_, C3, P_, P_}, 0, G(patch_w)},
    {"patch_embedding.bias", {D_}, DINO, G(patch_b)},
    {"position_embedding", {POS, D_}, 0, G(pos)},
    {"pre_norm.weight", {D_}, CLIP, G(pre_ln_w)},
    {"pre_norm.bias", {D_}, CLIP, G(pre_ln_b)},
    {"layers.{i}.norm1.weight", {D_}, 0, L(block.ln1_w)},
    {"layers.{i}.norm1.bias", {D_}, 0, L(block.ln1_b)},
    {"layers.{i}.attn.qkv.weight", {D3, D_}, 0, L(block.qkv_w)},
    {"layers.{i}.attn.qkv.bias", {D3}, 0, L(block.qkv_b)},
    {"layers.{i}.attn.out.weight", {D_, D_}, 0, L(block.out_w)},
    {"layers.{i}.attn.out.bias", {D_}, 0, L(block.out_b)},
    {"layers.{i}.scale1", {D_}, DINO, L(ls1)},
    {"layers.{i}.norm2.weight", {D_}, 0, L(block.ln2_w)},
    {"layers.{i}.norm2.bias", {D_}, 0, L(block.ln2_b)},
    {"layers.{i}.mlp.fc1.weight", {M1, D_}, 0, L(block.fc1_w)},
    {"layers.{i}.mlp.fc1.bias", {M1}, 0, L(block.fc1_b)},
    {"layers.{i}.mlp.fc2.weight", {D_, M_}, 0, L(block.fc2_w)},
    {"layers.{i}.mlp.fc2.bias", {D_}, 0, L(block.fc2_b)},
    {"layers.{i}.scale2", {D_}, DINO, L(ls2)},
    {"post_norm.weight", {D_}, 0, G(post_ln_w)},
    {"post_norm.bias", {D_}, 0, G(post_ln_b)},
    {"projection", {E_, D_}, CLIP, G(proj)},
};
#undef G
#undef L

static int config_valid(const struct mp_vit_config *c) {
    int clip = c->kind == MP_VIT_CLIP, dino = c->kind == MP_VIT_DINOV2;
    return (clip || dino) && c->patch_size > 0 && c->image_size >= c->patch_size && c->image_size <= 65536 &&
           c->width > 0 && c->heads > 0 && c->width % c->heads == 0 && c->layers > 0 && c->layers <= 4096 &&
           c->mlp > 0 && c->eps > 0.0f &&
           (clip ? c->projection > 0 && c->registers == 0 && !c->swiglu && c->image_size % c->patch_size == 0
                 : c->projection == 0 && c->registers >= 0) &&
           (c->activation == MP_ACTIVATION_GELU || c->activation == MP_ACTIVATION_QUICK_GELU);
}

// LayerScale: gamma * (x W^T + b) = x (gamma W)^T + gamma b, so fold gamma into W and b.
static enum mp_status fold_scale(struct mp_weights *w, const float **weight, const float **bias, const float *gamma,
                                 int64_t N, int64_t K) {
    enum mp_status s;
    if ((s = mp_weights_own(w, weight, N * K)) || (s = mp_weights_own(w, bias, N))) return s;
    float *wt = (float *)*weight, *b = (float *)*bias;
    for (int64_t i = 0; i < N; i++) {
        for (int64_t k = 0; k < K; k++) wt[i * K + k] *= gamma[i];
        b[i] *= gamma[i];
    }
    return MP_STATUS_OK;
}

enum mp_status mp_vit_init(struct mp_vit **out, const struct mp_vit_config *c, const struct mp_checkpoint *ck) {
    if (!out || !c || !ck) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: NULL argument");
    *out = NULL;
    if (!config_valid(c)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: inconsistent config");
    struct mp_vit *vit = calloc(1, sizeof *vit);
    struct vit_layer *layers = vit ? calloc((size_t)c->layers, sizeof *layers) : NULL;
    if (!layers) {
        free(vit);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "vit_init: cannot allocate the model");
    }
    vit->c = *c;
    vit->layers = layers;
    vit->bc = (struct mp_block_config){c->width, c->heads, c->mlp, c->swiglu, 0, c->eps, c->activation};
    int64_t D = c->width, G = c->image_size / c->patch_size;
    int64_t dims[VIT_DIMS] = {0};
    dims[D_] = D, dims[D3] = 3 * D, dims[M_] = c->mlp, dims[M1] = c->swiglu ? 2 * c->mlp : c->mlp;
    dims[E_] = c->projection, dims[R_] = c->registers, dims[P_] = c->patch_size, dims[C3] = 3, dims[POS] = 1 + G * G;
    uint32_t flags = (c->kind == MP_VIT_CLIP ? CLIP : DINO) | (c->registers > 0 ? REGISTERS : 0);
    enum mp_status s = mp_weights_bind(&vit->weights, vit, layers, sizeof *layers, c->layers, vit_table,
                                       (int64_t)(sizeof vit_table / sizeof *vit_table), dims, flags, ck, "vit_init");
    for (int64_t l = 0; s == MP_STATUS_OK && c->kind == MP_VIT_DINOV2 && l < c->layers; l++) {
        struct mp_block *b = &layers[l].block;
        if (!(s = fold_scale(&vit->weights, &b->out_w, &b->out_b, layers[l].ls1, D, D)))
            s = fold_scale(&vit->weights, &b->fc2_w, &b->fc2_b, layers[l].ls2, D, c->mlp);
    }
    if (s) {
        mp_vit_free(vit);
        return s;
    }
    *out = vit;
    return MP_STATUS_OK;
}

void mp_vit_free(struct mp_vit *vit) {
    if (!vit) return;
    for (int64_t l = 0; vit->layers && l < vit->c.layers; l++) mp_block_release(&vit->layers[l].block);
    for (int p = 0; p < 2; p++) mp_linear_free(vit->patch[p]), mp_linear_free(vit->projection[p]);
    free(vit->layers);
    mp_weights_free(&vit->weights);
    mp_arena_free(&vit->arena);
    free(vit);
}

const float *mp_vit_positions(const struct mp_vit *vit) { return vit ? vit->pos : NULL; }

int64_t mp_vit_output_dim(const struct mp_vit *vit, enum mp_vit_pooling pooling) {
    if (!vit) return 0;
    if (vit->c.kind == MP_VIT_CLIP) return pooling == MP_VIT_POOL_CLS ? vit->c.projection : 0;
    switch (pooling) {
    case MP_VIT_POOL_CLS:
    case MP_VIT_POOL_MEAN: return vit->c.width;
    case MP_VIT_POOL_CLS_MEAN: return 2 * vit->c.width;
    }
    return 0;
}

// (N, 3, S, S) pixels to (N * g * g, 3 * p * p) rows in the conv weight's (c, ky, kx) order,
// patches row-major over the g x g grid, as transformers flattens the conv output. Pixels
// past g * p (S not a multiple of p) are dropped, as the stride-p convolution drops them.
static void im2col(float *cols, const float *pixels, int64_t N, int64_t S, int64_t p) {
    int64_t g = S / p, K = 3 * p * p;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < g * g; i++) {
            int64_t gy = i / g, gx = i % g;
            float *row = cols + (n * g * g + i) * K;
            for (int64_t c = 0; c < 3; c++)
                for (int64_t ky = 0; ky < p; ky++)
                    memcpy(row + (c * p + ky) * p, pixels + ((n * 3 + c) * S + gy * p + ky) * S + gx * p,
                           (size_t)p * sizeof *row);
        }
}


// The patch embedding and the projection for `precision`, packed on first use.
static enum mp_status vit_linears(struct mp_vit *vit, enum mp_precision p) {
    const struct mp_vit_config *c = &vit->c;
    enum mp_status s = MP_STATUS_OK;
    if (!vit->patch[p])
        s = mp_linear_init(&vit->patch[p], vit->patch_w, vit->patch_b, c->width, 3 * c->patch_size * c->patch_size,
                           p, MP_OP_NONE, 0);
    if (!s && vit->proj && !vit->projection[p])
        s = mp_linear_init(&vit->projection[p], vit->proj, NULL, c->projection, c->width, p, MP_OP_NONE, 0);
    return s;
}

enum mp_status mp_vit_encode(struct mp_vit *vit, float *out, const float *pixels, int64_t N, int64_t S,
                             const float *positions, enum mp_vit_pooling pooling, enum mp_precision precision) {
    if (!vit || N < 0 || (N > 0 && (!out || !pixels)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: bad arguments");
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: unknown precision %d", (int)precision);
    const struct mp_vit_config *c = &vit->c;
    int64_t D = c->width, p = c->patch_size, R = c->registers;
    int64_t out_dim = mp_vit_output_dim(vit, pooling);
    if (out_dim == 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: this model has no such pooling");
    if (S < p || (c->kind == MP_VIT_CLIP && S != c->image_size))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: images of %lld pixels, the model takes %s%lld",
                        (long long)S, c->kind == MP_VIT_CLIP ? "" : "at least ",
                        (long long)(c->kind == MP_VIT_CLIP ? c->image_size : p));
    int64_t g = S / p, P = g * g, T = 1 + R + P, K = 3 * p * p, BT = N * T;
    if (!positions && g != c->image_size / p)
        return mp_error(MP_STATUS_INVALID_ARGUMENT,
                        "vit_encode: a %lldx%lld patch grid needs interpolated position embeddings (the "
                        "checkpoint's are %lldx%lld)",
                        (long long)g, (long long)g, (long long)(c->image_size / p), (long long)(c->image_size / p));
    if (N == 0) return MP_STATUS_OK;
    const float *pos = positions ? positions : vit->pos;

    // Activations: one arena, named views (llm.c style): the trunk's own buffers, then the
    // blocks' (shared by every layer).
    struct mp_tokens tokens = {.rows = BT, .B = N, .T = T};
    struct mp_block_buffers buf;
    size_t block32, block16;
    mp_block_buffers(&buf, NULL, NULL, &block32, &block16, &vit->bc, &tokens, precision);
    size_t own = (size_t)(N * P * K + N * P * D + BT * D + 2 * N * D); // cols, patches, x, pooled
    enum mp_status status = mp_arena_reserve(&vit->arena, own + block32, block16, "vit_encode");
    if (status) return status;
    float *cols = vit->arena.f32, *patches = cols + N * P * K, *x = patches + N * P * D, *pooled = x + BT * D;
    mp_block_buffers(&buf, pooled + 2 * N * D, vit->arena.bf16, &block32, &block16, &vit->bc, &tokens, precision);
    if ((status = vit_linears(vit, precision))) return status;

    // Patch embedding (a stride-p convolution) as one matmul.
    im2col(cols, pixels, N, S, p);
    if ((status = mp_linear_forward(vit->patch[precision], patches, cols, N * P))) return status;
    // Tokens: class token, registers (no position), patches; position embeddings on the class
    // token and the patches.
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < T; t++) {
            float *dst = x + (n * T + t) * D;
            if (t >= 1 && t <= R) {
                memcpy(dst, vit->registers + (t - 1) * D, (size_t)D * sizeof *dst);
                continue;
            }
            int64_t at = t == 0 ? 0 : t - R; // row of the position table
            const float *src = t == 0 ? vit->class_emb : patches + (n * P + t - 1 - R) * D;
            for (int64_t i = 0; i < D; i++) dst[i] = src[i] + pos[at * D + i];
        }
    if (vit->pre_ln_w) layernorm_forward(x, x, vit->pre_ln_w, vit->pre_ln_b, BT, D, c->eps);

    for (int64_t l = 0; l < c->layers; l++)
        if ((status = mp_block_forward(x, &buf, &vit->layers[l].block, &vit->bc, &tokens, precision))) return status;

    // CLIP: the class token after post-LayerNorm, then the visual projection.
    // DINOv2: the final LayerNorm over the tokens each pooling needs.
    float *cls = pooled, *mean = pooled + N * D;
    for (int64_t n = 0; n < N; n++) memcpy(cls + n * D, x + n * T * D, (size_t)D * sizeof *cls);
    layernorm_forward(cls, cls, vit->post_ln_w, vit->post_ln_b, N, D, c->eps);
    if (c->kind == MP_VIT_CLIP) return mp_linear_forward(vit->projection[precision], out, cls, N);
    if (pooling != MP_VIT_POOL_CLS) {
        layernorm_forward(x, x, vit->post_ln_w, vit->post_ln_b, BT, D, c->eps); // class and registers too: cheap
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *tokens_n = x + (n * T + 1 + R) * D;
            double sum[D];
            for (int64_t i = 0; i < D; i++) sum[i] = 0.0;
            for (int64_t t = 0; t < P; t++)
                for (int64_t i = 0; i < D; i++) sum[i] += tokens_n[t * D + i];
            for (int64_t i = 0; i < D; i++) mean[n * D + i] = (float)(sum[i] / (double)P);
        }
    }
    for (int64_t n = 0; n < N; n++) {
        float *row = out + n * out_dim;
        if (pooling != MP_VIT_POOL_MEAN) memcpy(row, cls + n * D, (size_t)D * sizeof *row);
        if (pooling != MP_VIT_POOL_CLS)
            memcpy(row + (pooling == MP_VIT_POOL_CLS_MEAN ? D : 0), mean + n * D, (size_t)D * sizeof *row);
    }
    return MP_STATUS_OK;
}
