#include "encoders/vit.h"

#include <stdlib.h>
#include <string.h>

#include "nn/layers.h"

struct vit_layer {
    const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
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
    const float *class_emb, *patch_w, *pos, *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b, *proj;
    struct vit_layer *layers;
};

enum { LAYER_TENSORS = 12, HEAD_TENSORS = 5, TAIL_TENSORS = 3 };

int64_t mp_vit_tensor_count(const struct mp_vit_config *c) {
    return HEAD_TENSORS + LAYER_TENSORS * c->layers + TAIL_TENSORS;
}

int64_t mp_vit_tensor_numel(const struct mp_vit_config *c, int64_t i) {
    int64_t D = c->width, M = c->mlp, p = c->patch_size, G = c->image_size / c->patch_size;
    static const int head_kind[HEAD_TENSORS] = {0, 1, 2, 0, 0};
    if (i < HEAD_TENSORS) return head_kind[i] == 0 ? D : head_kind[i] == 1 ? D * 3 * p * p : (1 + G * G) * D;
    i -= HEAD_TENSORS;
    if (i < LAYER_TENSORS * c->layers) {
        const int64_t sizes[LAYER_TENSORS] = {D, D, 3 * D * D, 3 * D, D * D, D, D, D, M * D, M, D * M, D};
        return sizes[i % LAYER_TENSORS];
    }
    i -= LAYER_TENSORS * c->layers;
    return i < 2 ? D : c->projection * D;
}

static int config_valid(const struct mp_vit_config *c) {
    return c->kind == MP_VIT_CLIP && c->patch_size > 0 && c->image_size >= c->patch_size &&
           c->image_size % c->patch_size == 0 && c->width > 0 && c->heads > 0 && c->width % c->heads == 0 &&
           c->layers > 0 && c->mlp > 0 && c->projection > 0 && c->eps > 0.0f &&
           (c->activation == MP_ACTIVATION_GELU || c->activation == MP_ACTIVATION_QUICK_GELU);
}

enum mp_status mp_vit_init(struct mp_vit **out, const struct mp_vit_config *c, const float *const *tensors,
                           int64_t count) {
    if (!out || !c || !tensors) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: NULL argument");
    *out = NULL;
    if (!config_valid(c)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: inconsistent config");
    if (count != mp_vit_tensor_count(c))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: %lld tensors given, the config needs %lld",
                        (long long)count, (long long)mp_vit_tensor_count(c));
    int64_t total = 0;
    for (int64_t i = 0; i < count; i++) {
        if (!tensors[i]) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_init: tensor %lld is NULL", (long long)i);
        total += mp_vit_tensor_numel(c, i);
    }
    struct mp_vit *vit = calloc(1, sizeof *vit);
    float *params = vit ? malloc((size_t)total * sizeof *params) : NULL;
    struct vit_layer *layers = params ? calloc((size_t)c->layers, sizeof *layers) : NULL;
    if (!layers) {
        free(params);
        free(vit);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "vit_init: cannot allocate %lld parameters", (long long)total);
    }
    vit->c = *c;
    vit->params = params;
    vit->layers = layers;
    const float *views[count];
    float *cursor = params;
    for (int64_t i = 0; i < count; i++) {
        int64_t n = mp_vit_tensor_numel(c, i);
        memcpy(cursor, tensors[i], (size_t)n * sizeof *cursor);
        views[i] = cursor;
        cursor += n;
    }
    vit->class_emb = views[0];
    vit->patch_w = views[1];
    vit->pos = views[2];
    vit->pre_ln_w = views[3];
    vit->pre_ln_b = views[4];
    for (int64_t l = 0; l < c->layers; l++) {
        const float *const *v = views + HEAD_TENSORS + l * LAYER_TENSORS;
        layers[l] = (struct vit_layer){v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
    }
    const float *const *tail = views + HEAD_TENSORS + c->layers * LAYER_TENSORS;
    vit->post_ln_w = tail[0];
    vit->post_ln_b = tail[1];
    vit->proj = tail[2];
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
    int64_t D = c->width, M = c->mlp, L = c->layers;
    enum mp_activation_op act = c->activation == MP_ACTIVATION_QUICK_GELU ? MP_OP_QUICK_GELU : MP_OP_GELU;
    enum mp_status s;
    if (!(ls->qkv = calloc((size_t)L, sizeof *ls->qkv)) || !(ls->out = calloc((size_t)L, sizeof *ls->out)) ||
        !(ls->fc1 = calloc((size_t)L, sizeof *ls->fc1)) || !(ls->fc2 = calloc((size_t)L, sizeof *ls->fc2))) {
        s = mp_error(MP_STATUS_OUT_OF_MEMORY, "vit: cannot allocate layer tables");
        goto fail;
    }
    int64_t p = c->patch_size;
    if ((s = mp_linear_init(&ls->patch, vit->patch_w, NULL, D, 3 * p * p, precision, MP_OP_NONE, 0)) ||
        (s = mp_linear_init(&ls->proj, vit->proj, NULL, c->projection, D, precision, MP_OP_NONE, 0)))
        goto fail;
    for (int64_t l = 0; l < L; l++) {
        const struct vit_layer *w = &vit->layers[l];
        if ((s = mp_linear_init(&ls->qkv[l], w->qkv_w, w->qkv_b, 3 * D, D, precision, MP_OP_NONE, 0)) ||
            (s = mp_linear_init(&ls->out[l], w->out_w, w->out_b, D, D, precision, MP_OP_NONE, 1)) ||
            (s = mp_linear_init(&ls->fc1[l], w->fc1_w, w->fc1_b, M, D, precision, act, 0)) ||
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
    free(vit);
}

int64_t mp_vit_output_dim(const struct mp_vit *vit) { return vit ? vit->c.projection : 0; }

// (N, 3, S, S) pixels to (N * G * G, 3 * p * p) rows in the conv weight's (c, ky, kx) order,
// patches row-major over the grid, as transformers flattens the conv output.
static void im2col(float *cols, const float *pixels, int64_t N, int64_t S, int64_t p) {
    int64_t G = S / p, K = 3 * p * p;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G * G; g++) {
            int64_t gy = g / G, gx = g % G;
            float *row = cols + (n * G * G + g) * K;
            for (int64_t c = 0; c < 3; c++)
                for (int64_t ky = 0; ky < p; ky++)
                    memcpy(row + (c * p + ky) * p, pixels + ((n * 3 + c) * S + gy * p + ky) * S + gx * p,
                           (size_t)p * sizeof *row);
        }
}

enum mp_status mp_vit_encode(struct mp_vit *vit, float *embeddings, const float *pixels, int64_t N,
                             enum mp_precision precision) {
    if (!vit || N < 0 || (N > 0 && (!embeddings || !pixels)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "vit_encode: bad arguments");
    if (N == 0) return MP_STATUS_OK;
    const struct mp_vit_config *c = &vit->c;
    int64_t D = c->width, M = c->mlp, p = c->patch_size, G = c->image_size / p, P = G * G, T = P + 1;
    int64_t K = 3 * p * p, BT = N * T;

    // Activations: one allocation, named views (llm.c style).
    size_t sizes[] = {(size_t)(N * P * K), (size_t)(N * P * D), (size_t)(BT * D), (size_t)(BT * D),
                      (size_t)(BT * 3 * D), (size_t)(BT * D), (size_t)(BT * M), (size_t)(N * D),
                      attention_scores_size(N, T, c->heads)};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += sizes[i];
    float *arena = malloc(total * sizeof *arena);
    if (!arena) return mp_error(MP_STATUS_OUT_OF_MEMORY, "vit_encode: cannot allocate activations for %lld images",
                                (long long)N);
    float *cols = arena, *patches = cols + sizes[0], *x = patches + sizes[1], *h = x + sizes[2];
    float *qkv = h + sizes[3], *att = qkv + sizes[4], *mlp = att + sizes[5], *pooled = mlp + sizes[6];
    float *scores = pooled + sizes[7];
    enum mp_status status;

    if ((status = linears_init(vit, precision)) != MP_STATUS_OK) goto done;
    const struct vit_linears *ls = &vit->linears[precision];

    // Patch embedding (a stride-p convolution without bias) as one matmul.
    im2col(cols, pixels, N, c->image_size, p);
    if ((status = mp_linear_forward(ls->patch, patches, cols, N * P)) != MP_STATUS_OK) goto done;
    // Tokens: class embedding, then the patches; plus position embeddings; then pre-LayerNorm.
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < T; t++) {
            const float *src = t == 0 ? vit->class_emb : patches + (n * P + t - 1) * D;
            float *dst = x + (n * T + t) * D;
            for (int64_t i = 0; i < D; i++) dst[i] = src[i] + vit->pos[t * D + i];
        }
    layernorm_forward(x, x, vit->pre_ln_w, vit->pre_ln_b, BT, D, c->eps);

    for (int64_t l = 0; l < c->layers; l++) {
        const struct vit_layer *w = &vit->layers[l];
        layernorm_forward(h, x, w->ln1_w, w->ln1_b, BT, D, c->eps);
        if ((status = mp_linear_forward(ls->qkv[l], qkv, h, BT)) != MP_STATUS_OK) goto done;
        if ((status = attention_forward(att, scores, qkv, N, T, D, c->heads, precision)) != MP_STATUS_OK) goto done;
        if ((status = mp_linear_forward(ls->out[l], x, att, BT)) != MP_STATUS_OK) goto done; // x += attn @ Wo^T + bo
        layernorm_forward(h, x, w->ln2_w, w->ln2_b, BT, D, c->eps);
        if ((status = mp_linear_forward(ls->fc1[l], mlp, h, BT)) != MP_STATUS_OK) goto done;  // act(h @ W1^T + b1)
        if ((status = mp_linear_forward(ls->fc2[l], x, mlp, BT)) != MP_STATUS_OK) goto done;  // x += mlp @ W2^T + b2
    }

    // Pooled output: the class token after post-LayerNorm, then the visual projection.
    for (int64_t n = 0; n < N; n++) memcpy(pooled + n * D, x + n * T * D, (size_t)D * sizeof *pooled);
    layernorm_forward(pooled, pooled, vit->post_ln_w, vit->post_ln_b, N, D, c->eps);
    status = mp_linear_forward(ls->proj, embeddings, pooled, N);
done:
    free(arena);
    return status;
}
