#include "encoders/vit.h"

#include <stdlib.h>
#include <string.h>

#include "encoders/params.h"
#include "nn/layers.h"
#include "nn/linear.h"

struct vit_layer {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ls1, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b, *ls2;
};

// The linear layers of one precision, packed for oneDNN on first use.
struct vit_linears {
    struct mp_linear *patch, *proj;
    struct mp_linear **qkv, **out, **fc1, **fc2; // per layer
};

struct mp_vit {
    struct mp_vit_config c;
    struct vit_linears linears[2]; // by enum mp_precision
    float *params; // every weight, one allocation, in canonical order
    float *class_emb, *registers, *patch_w, *patch_b, *pos, *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b, *proj;
    struct vit_layer *layers;
    // The activation arena, kept for the next call (grown when a batch needs more).
    float *arena;
    uint16_t *arena_half; // bf16 activations
    size_t arena_cap, half_cap;
};


static int config_valid(const struct mp_vit_config *c) {
    int clip = c->kind == MP_VIT_CLIP, dino = c->kind == MP_VIT_DINOV2;
    return (clip || dino) && c->patch_size > 0 && c->image_size >= c->patch_size && c->width > 0 && c->heads > 0 &&
           c->width % c->heads == 0 && c->layers > 0 && c->layers <= 4096 && c->mlp > 0 && c->eps > 0.0f &&
           (clip ? c->projection > 0 && c->registers == 0 && !c->swiglu && c->image_size % c->patch_size == 0
                 : c->projection == 0 && c->registers >= 0) &&
           (c->activation == MP_ACTIVATION_GELU || c->activation == MP_ACTIVATION_QUICK_GELU);
}



/* The canonical order, in one place: walks the tensors of `c`, recording each size in
 * numel[] (when given) and binding vit's views to its params (when vit is given). Returns
 * the tensor count. */
static int64_t walk(const struct mp_vit_config *c, int64_t *numel, struct mp_vit *vit) {
    int64_t D = c->width, M = c->mlp, M1 = c->swiglu ? 2 * c->mlp : c->mlp, p = c->patch_size;
    int64_t G = c->image_size / p;
    int dino = c->kind == MP_VIT_DINOV2;
    struct mp_walker w = {0, numel, vit ? vit->params : NULL};
    struct mp_vit scratch = {0}, *t = vit ? vit : &scratch;
    t->class_emb = mp_walker_take(&w, D);
    if (dino && c->registers > 0) t->registers = mp_walker_take(&w, c->registers * D);
    t->patch_w = mp_walker_take(&w, D * 3 * p * p);
    if (dino) t->patch_b = mp_walker_take(&w, D);
    t->pos = mp_walker_take(&w, (1 + G * G) * D);
    if (!dino) {
        t->pre_ln_w = mp_walker_take(&w, D);
        t->pre_ln_b = mp_walker_take(&w, D);
    }
    for (int64_t l = 0; l < c->layers; l++) {
        struct vit_layer layer = {0}, *y = vit ? &vit->layers[l] : &layer;
        y->ln1_w = mp_walker_take(&w, D);
        y->ln1_b = mp_walker_take(&w, D);
        y->qkv_w = mp_walker_take(&w, 3 * D * D);
        y->qkv_b = mp_walker_take(&w, 3 * D);
        y->out_w = mp_walker_take(&w, D * D);
        y->out_b = mp_walker_take(&w, D);
        if (dino) y->ls1 = mp_walker_take(&w, D);
        y->ln2_w = mp_walker_take(&w, D);
        y->ln2_b = mp_walker_take(&w, D);
        y->fc1_w = mp_walker_take(&w, M1 * D);
        y->fc1_b = mp_walker_take(&w, M1);
        y->fc2_w = mp_walker_take(&w, D * M);
        y->fc2_b = mp_walker_take(&w, D);
        if (dino) y->ls2 = mp_walker_take(&w, D);
    }
    t->post_ln_w = mp_walker_take(&w, D);
    t->post_ln_b = mp_walker_take(&w, D);
    if (!dino) t->proj = mp_walker_take(&w, c->projection * D);
    return w.n;
}

int64_t mp_vit_tensor_count(const struct mp_vit_config *c) {
    return c && config_valid(c) ? walk(c, NULL, NULL) : -1;
}

int64_t mp_vit_tensor_numel(const struct mp_vit_config *c, int64_t i) {
    int64_t n = mp_vit_tensor_count(c);
    if (n < 0 || i < 0 || i >= n) return -1;
    int64_t *numel = malloc((size_t)n * sizeof *numel);
    if (!numel) return -1;
    walk(c, numel, NULL);
    int64_t result = numel[i];
    free(numel);
    return result;
}

// LayerScale: gamma * (x W^T + b) = x (gamma W)^T + gamma b, so fold gamma into W and b.
static void fold_scale(float *w, float *b, const float *gamma, int64_t N, int64_t K) {
    for (int64_t i = 0; i < N; i++) {
        for (int64_t k = 0; k < K; k++) w[i * K + k] *= gamma[i];
        b[i] *= gamma[i];
    }
}

enum mp_status mp_vit_init(struct mp_vit **out, const struct mp_vit_config *c, const float *const *tensors,
                           int64_t count) {
    if (!out || !c || !tensors) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: NULL argument");
    *out = NULL;
    if (!config_valid(c)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: inconsistent config");
    int64_t expected = walk(c, NULL, NULL);
    if (count != expected)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: %lld tensors given, the config needs %lld",
                        (long long)count, (long long)expected);
    int64_t *numel = malloc((size_t)count * sizeof *numel);
    struct mp_vit *vit = numel ? calloc(1, sizeof *vit) : NULL;
    struct vit_layer *layers = vit ? calloc((size_t)c->layers, sizeof *layers) : NULL;
    if (!layers) {
        free(vit), free(numel);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "vit_init: cannot allocate the model");
    }
    walk(c, numel, NULL);
    float *params;
    enum mp_status status = mp_params_copy(&params, tensors, numel, count, "vit_init");
    free(numel);
    if (status) {
        free(layers), free(vit);
        return status;
    }
    vit->c = *c;
    vit->params = params;
    vit->layers = layers;
    walk(c, NULL, vit);
    if (c->kind == MP_VIT_DINOV2)
        for (int64_t l = 0; l < c->layers; l++) {
            struct vit_layer *w = &layers[l];
            fold_scale(w->out_w, w->out_b, w->ls1, c->width, c->width);
            fold_scale(w->fc2_w, w->fc2_b, w->ls2, c->width, c->mlp);
        }
    *out = vit;
    return MP_STATUS_OK;
}

static void linears_free(struct vit_linears *ls, int64_t layers) {
    mp_linear_free(ls->patch);
    mp_linear_free(ls->proj);
    for (int64_t l = 0; ls->qkv && l < layers; l++) {
        mp_linear_free(ls->qkv[l]);
        mp_linear_free(ls->out[l]);
        mp_linear_free(ls->fc1[l]);
        mp_linear_free(ls->fc2[l]);
    }
    free(ls->qkv), free(ls->out), free(ls->fc1), free(ls->fc2);
    memset(ls, 0, sizeof *ls);
}

// Creates the linear layers for `precision`: bias, activation and residual fused.
static enum mp_status linears_init(struct mp_vit *vit, enum mp_precision precision) {
    struct vit_linears *ls = &vit->linears[precision];
    if (ls->patch) return MP_STATUS_OK;
    const struct mp_vit_config *c = &vit->c;
    int64_t D = c->width, M = c->mlp, L = c->layers, p = c->patch_size;
    enum mp_activation_op act = c->swiglu                                    ? MP_OP_NONE // gated after the matmul
                                : c->activation == MP_ACTIVATION_QUICK_GELU ? MP_OP_QUICK_GELU
                                                                            : MP_OP_GELU;
    enum mp_status s;
    if (!(ls->qkv = calloc((size_t)L, sizeof *ls->qkv)) || !(ls->out = calloc((size_t)L, sizeof *ls->out)) ||
        !(ls->fc1 = calloc((size_t)L, sizeof *ls->fc1)) || !(ls->fc2 = calloc((size_t)L, sizeof *ls->fc2))) {
        s = mp_error(MP_STATUS_OUT_OF_MEMORY, "vit: cannot allocate layer tables");
        goto fail;
    }
    if ((s = mp_linear_init(&ls->patch, vit->patch_w, vit->patch_b, D, 3 * p * p, precision, MP_OP_NONE, 0)))
        goto fail;
    if (vit->proj && (s = mp_linear_init(&ls->proj, vit->proj, NULL, c->projection, D, precision, MP_OP_NONE, 0)))
        goto fail;
    for (int64_t l = 0; l < L; l++) {
        const struct vit_layer *w = &vit->layers[l];
        int64_t M1 = c->swiglu ? 2 * M : M;
        if ((s = mp_linear_init(&ls->qkv[l], w->qkv_w, w->qkv_b, 3 * D, D, precision, MP_OP_NONE, 0)) ||
            (s = mp_linear_init(&ls->out[l], w->out_w, w->out_b, D, D, precision, MP_OP_NONE, 1)) ||
            (s = mp_linear_init(&ls->fc1[l], w->fc1_w, w->fc1_b, M1, D, precision, act, 0)) ||
            (s = mp_linear_init(&ls->fc2[l], w->fc2_w, w->fc2_b, D, M, precision, MP_OP_NONE, 1)))
            goto fail;
    }
    return MP_STATUS_OK;
fail:
    linears_free(ls, L);
    return s;
}

void mp_vit_free(struct mp_vit *vit) {
    if (!vit) return;
    linears_free(&vit->linears[0], vit->c.layers);
    linears_free(&vit->linears[1], vit->c.layers);
    free(vit->layers);
    free(vit->params);
    free(vit->arena);
    free(vit->arena_half);
    free(vit);
}

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

enum mp_status mp_vit_encode(struct mp_vit *vit, float *out, const float *pixels, int64_t N, int64_t S,
                             const float *positions, enum mp_vit_pooling pooling, enum mp_precision precision) {
    if (!vit || N < 0 || (N > 0 && (!out || !pixels)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: bad arguments");
    const struct mp_vit_config *c = &vit->c;
    int64_t D = c->width, M = c->mlp, p = c->patch_size, R = c->registers;
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

    // Activations: one allocation, named views (llm.c style). bf16 runs keep the matmul inputs
    // (LayerNorm outputs, q/k/v, attention output, MLP hidden) in bf16 and only the residual
    // stream, scores and SwiGLU in fp32.
    int bf16 = precision == MP_PRECISION_BF16;
    int64_t M1 = c->swiglu ? 2 * M : M;
    size_t scores_n = attention_scores_size(N, T, bf16 ? 0 : D, c->heads); // bf16 keeps its head copies in bf16
    size_t sizes[] = {(size_t)(N * P * K),                         // cols
                      (size_t)(N * P * D),                         // patches
                      (size_t)(BT * D),                            // x: residual stream
                      bf16 ? 0 : (size_t)(BT * D),                 // h
                      bf16 ? 0 : (size_t)(BT * 3 * D),             // qkv
                      bf16 ? 0 : (size_t)(BT * D),                 // att
                      bf16 && !c->swiglu ? 0 : (size_t)(BT * M1),  // mlp
                      c->swiglu ? (size_t)(BT * M) : 0,            // gated
                      (size_t)(2 * N * D),                         // pooled
                      scores_n};
    size_t halves[] = {(size_t)(BT * D), (size_t)(BT * 3 * D), (size_t)(BT * D), c->swiglu ? 0 : (size_t)(BT * M),
                       attention_bf16_workspace_size(N, T, D, c->heads)}; // bf16: h, qkv, att, mlp, attention
    size_t total = 0, total_half = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += sizes[i];
    for (size_t i = 0; bf16 && i < sizeof halves / sizeof *halves; i++) total_half += halves[i];
    if (mp_arena_reserve((void **)&vit->arena, &vit->arena_cap, total, sizeof *vit->arena) ||
        mp_arena_reserve((void **)&vit->arena_half, &vit->half_cap, total_half, sizeof *vit->arena_half))
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "vit_encode: cannot allocate activations for %lld images",
                        (long long)N);
    float *arena = vit->arena;
    uint16_t *arena_half = total_half ? vit->arena_half : NULL;
    float *cols = arena, *patches = cols + sizes[0], *x = patches + sizes[1], *h = x + sizes[2];
    float *qkv = h + sizes[3], *att = qkv + sizes[4], *mlp = att + sizes[5], *gated = mlp + sizes[6];
    float *pooled = gated + sizes[7], *scores = pooled + sizes[8];
    uint16_t *h16 = arena_half, *qkv16 = h16 ? h16 + halves[0] : NULL, *att16 = qkv16 ? qkv16 + halves[1] : NULL;
    uint16_t *mlp16 = att16 ? att16 + halves[2] : NULL, *probs16 = mlp16 ? mlp16 + halves[3] : NULL;
    enum mp_status status;

    if ((status = linears_init(vit, precision)) != MP_STATUS_OK) goto done;
    const struct vit_linears *ls = &vit->linears[precision];

    // Patch embedding (a stride-p convolution) as one matmul.
    im2col(cols, pixels, N, S, p);
    if ((status = mp_linear_forward(ls->patch, patches, cols, N * P)) != MP_STATUS_OK) goto done;
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

    const enum mp_dtype F32 = MP_DTYPE_F32, BF16 = MP_DTYPE_BF16;
    for (int64_t l = 0; l < c->layers; l++) {
        const struct vit_layer *w = &vit->layers[l];
        if (bf16) {
            layernorm_forward_bf16(h16, x, w->ln1_w, w->ln1_b, BT, D, c->eps);
            if ((status = mp_linear_forward_typed(ls->qkv[l], qkv16, BF16, h16, BF16, BT)) ||
                (status = attention_forward_bf16(att16, scores, probs16, qkv16, N, T, D, c->heads)) ||
                (status = mp_linear_forward_typed(ls->out[l], x, F32, att16, BF16, BT))) // x += attn Wo^T + bo
                goto done;
            layernorm_forward_bf16(h16, x, w->ln2_w, w->ln2_b, BT, D, c->eps);
            if (c->swiglu) {
                if ((status = mp_linear_forward_typed(ls->fc1[l], mlp, F32, h16, BF16, BT))) goto done;
                swiglu_forward(gated, mlp, BT, M);
                status = mp_linear_forward(ls->fc2[l], x, gated, BT);
            } else {
                if ((status = mp_linear_forward_typed(ls->fc1[l], mlp16, BF16, h16, BF16, BT))) goto done;
                status = mp_linear_forward_typed(ls->fc2[l], x, F32, mlp16, BF16, BT); // x += mlp W2^T + b2
            }
            if (status) goto done;
            continue;
        }
        layernorm_forward(h, x, w->ln1_w, w->ln1_b, BT, D, c->eps);
        if ((status = mp_linear_forward(ls->qkv[l], qkv, h, BT)) != MP_STATUS_OK) goto done;
        if ((status = attention_forward(att, scores, qkv, N, T, D, c->heads, precision)) != MP_STATUS_OK) goto done;
        if ((status = mp_linear_forward(ls->out[l], x, att, BT)) != MP_STATUS_OK) goto done; // x += attn @ Wo^T + bo
        layernorm_forward(h, x, w->ln2_w, w->ln2_b, BT, D, c->eps);
        if ((status = mp_linear_forward(ls->fc1[l], mlp, h, BT)) != MP_STATUS_OK) goto done; // act(h @ W1^T + b1)
        if (c->swiglu) swiglu_forward(gated, mlp, BT, M);
        if ((status = mp_linear_forward(ls->fc2[l], x, c->swiglu ? gated : mlp, BT)) != MP_STATUS_OK) goto done;
    }

    // CLIP: the class token after post-LayerNorm, then the visual projection.
    // DINOv2: the final LayerNorm over the tokens each pooling needs.
    float *cls = pooled, *mean = pooled + N * D;
    for (int64_t n = 0; n < N; n++) memcpy(cls + n * D, x + n * T * D, (size_t)D * sizeof *cls);
    layernorm_forward(cls, cls, vit->post_ln_w, vit->post_ln_b, N, D, c->eps);
    if (c->kind == MP_VIT_CLIP) {
        status = mp_linear_forward(ls->proj, out, cls, N);
        goto done;
    }
    if (pooling != MP_VIT_POOL_CLS) {
        layernorm_forward(x, x, vit->post_ln_w, vit->post_ln_b, BT, D, c->eps); // class and registers too: cheap
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *tokens = x + (n * T + 1 + R) * D;
            double sum[D];
            for (int64_t i = 0; i < D; i++) sum[i] = 0.0;
            for (int64_t t = 0; t < P; t++)
                for (int64_t i = 0; i < D; i++) sum[i] += tokens[t * D + i];
            for (int64_t i = 0; i < D; i++) mean[n * D + i] = (float)(sum[i] / (double)P);
        }
    }
    for (int64_t n = 0; n < N; n++) {
        float *row = out + n * out_dim;
        if (pooling != MP_VIT_POOL_MEAN) memcpy(row, cls + n * D, (size_t)D * sizeof *row);
        if (pooling != MP_VIT_POOL_CLS)
            memcpy(row + (pooling == MP_VIT_POOL_CLS_MEAN ? D : 0), mean + n * D, (size_t)D * sizeof *row);
    }
    status = MP_STATUS_OK;
done:
    return status;
}
