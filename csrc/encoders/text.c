#include "encoders/text.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encoders/params.h"
#include "nn/layers.h"
#include "nn/linear.h"

struct text_layer {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};

struct text_linears {
    struct mp_linear *proj;
    struct mp_linear **qkv, **out, **fc1, **fc2; // per layer
};

struct mp_text {
    struct mp_text_config c;
    struct text_linears linears[2]; // by enum mp_precision
    float *params;
    float *tokens, *positions, *types, *emb_ln_w, *emb_ln_b, *final_ln_w, *final_ln_b, *proj;
    struct text_layer *layers;
    float *arena;
    uint16_t *arena_half;
    size_t arena_cap, half_cap;
};


static int config_valid(const struct mp_text_config *c) {
    int clip = c->kind == MP_TEXT_CLIP, bert = c->kind == MP_TEXT_BERT;
    return (clip || bert) && c->vocab > 0 && c->positions > 0 && c->width > 0 && c->heads > 0 &&
           c->width % c->heads == 0 && c->layers > 0 && c->layers <= 4096 && c->mlp > 0 && c->eps > 0.0f &&
           (clip ? c->token_types == 0 && c->projection >= 0 : c->token_types > 0 && c->projection == 0) &&
           (c->activation == MP_ACTIVATION_GELU || c->activation == MP_ACTIVATION_QUICK_GELU);
}



// The canonical order (see text.h), in one place, as encoders/vit.c walks it.
static int64_t walk(const struct mp_text_config *c, int64_t *numel, struct mp_text *m) {
    int64_t D = c->width, M = c->mlp;
    int bert = c->kind == MP_TEXT_BERT;
    struct mp_walker w = {0, numel, m ? m->params : NULL};
    struct mp_text scratch = {0}, *t = m ? m : &scratch;
    t->tokens = mp_walker_take(&w, c->vocab * D);
    t->positions = mp_walker_take(&w, c->positions * D);
    if (bert) {
        t->types = mp_walker_take(&w, c->token_types * D);
        t->emb_ln_w = mp_walker_take(&w, D);
        t->emb_ln_b = mp_walker_take(&w, D);
    }
    for (int64_t l = 0; l < c->layers; l++) {
        struct text_layer layer = {0}, *y = m ? &m->layers[l] : &layer;
        y->ln1_w = mp_walker_take(&w, D);
        y->ln1_b = mp_walker_take(&w, D);
        y->qkv_w = mp_walker_take(&w, 3 * D * D);
        y->qkv_b = mp_walker_take(&w, 3 * D);
        y->out_w = mp_walker_take(&w, D * D);
        y->out_b = mp_walker_take(&w, D);
        y->ln2_w = mp_walker_take(&w, D);
        y->ln2_b = mp_walker_take(&w, D);
        y->fc1_w = mp_walker_take(&w, M * D);
        y->fc1_b = mp_walker_take(&w, M);
        y->fc2_w = mp_walker_take(&w, D * M);
        y->fc2_b = mp_walker_take(&w, D);
    }
    if (!bert) {
        t->final_ln_w = mp_walker_take(&w, D);
        t->final_ln_b = mp_walker_take(&w, D);
        if (c->projection > 0) t->proj = mp_walker_take(&w, c->projection * D);
    }
    return w.n;
}

int64_t mp_text_tensor_count(const struct mp_text_config *c) {
    return c && config_valid(c) ? walk(c, NULL, NULL) : -1;
}

int64_t mp_text_tensor_numel(const struct mp_text_config *c, int64_t i) {
    int64_t n = mp_text_tensor_count(c);
    if (n < 0 || i < 0 || i >= n) return -1;
    int64_t *numel = malloc((size_t)n * sizeof *numel);
    if (!numel) return -1;
    walk(c, numel, NULL);
    int64_t result = numel[i];
    free(numel);
    return result;
}

enum mp_status mp_text_init(struct mp_text **out, const struct mp_text_config *c, const float *const *tensors,
                            int64_t count) {
    if (!out || !c || !tensors) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_init: NULL argument");
    *out = NULL;
    if (!config_valid(c)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_init: inconsistent config");
    int64_t expected = walk(c, NULL, NULL);
    if (count != expected)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_init: %lld tensors given, the config needs %lld",
                        (long long)count, (long long)expected);
    int64_t *numel = malloc((size_t)count * sizeof *numel);
    struct mp_text *m = numel ? calloc(1, sizeof *m) : NULL;
    struct text_layer *layers = m ? calloc((size_t)c->layers, sizeof *layers) : NULL;
    if (!layers) {
        free(m), free(numel);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "text_init: cannot allocate the model");
    }
    walk(c, numel, NULL);
    float *params;
    enum mp_status status = mp_params_copy(&params, tensors, numel, count, "text_init");
    free(numel);
    if (status) {
        free(layers), free(m);
        return status;
    }
    m->c = *c;
    m->params = params;
    m->layers = layers;
    walk(c, NULL, m);
    *out = m;
    return MP_STATUS_OK;
}

static void linears_free(struct text_linears *ls, int64_t layers) {
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

// The linear layers for `precision`, packed on first use: bias, activation and (for the
// pre-norm CLIP and the post-norm BERT alike) the residual add fused into the matmul.
static enum mp_status linears_init(struct mp_text *m, enum mp_precision precision) {
    struct text_linears *ls = &m->linears[precision];
    if (ls->qkv) return MP_STATUS_OK;
    const struct mp_text_config *c = &m->c;
    int64_t D = c->width, M = c->mlp, L = c->layers;
    enum mp_activation_op act = c->activation == MP_ACTIVATION_QUICK_GELU ? MP_OP_QUICK_GELU : MP_OP_GELU;
    enum mp_status s;
    if (!(ls->qkv = calloc((size_t)L, sizeof *ls->qkv)) || !(ls->out = calloc((size_t)L, sizeof *ls->out)) ||
        !(ls->fc1 = calloc((size_t)L, sizeof *ls->fc1)) || !(ls->fc2 = calloc((size_t)L, sizeof *ls->fc2))) {
        s = mp_error(MP_STATUS_OUT_OF_MEMORY, "text: cannot allocate layer tables");
        goto fail;
    }
    if (m->proj && (s = mp_linear_init(&ls->proj, m->proj, NULL, c->projection, D, precision, MP_OP_NONE, 0)))
        goto fail;
    for (int64_t l = 0; l < L; l++) {
        const struct text_layer *w = &m->layers[l];
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

void mp_text_free(struct mp_text *m) {
    if (!m) return;
    linears_free(&m->linears[0], m->c.layers);
    linears_free(&m->linears[1], m->c.layers);
    free(m->layers);
    free(m->params);
    free(m->arena);
    free(m->arena_half);
    free(m);
}

int64_t mp_text_output_dim(const struct mp_text *m, enum mp_text_pooling pooling) {
    if (!m) return 0;
    if (m->c.kind == MP_TEXT_CLIP) return pooling != MP_TEXT_POOL_LAST ? 0 : m->proj ? m->c.projection : m->c.width;
    return pooling == MP_TEXT_POOL_MEAN || pooling == MP_TEXT_POOL_CLS ? m->c.width : 0;
}

// Checks the packing and the ids before any work: every failure names what is wrong.
static enum mp_status check_input(const struct mp_text_config *c, const int64_t *ids, const int64_t *types,
                                  const int64_t *offsets, int64_t N) {
    if (offsets[0] != 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: offsets[0] is %lld, not 0",
                                         (long long)offsets[0]);
    for (int64_t s = 0; s < N; s++) {
        int64_t n = offsets[s + 1] - offsets[s];
        if (n < 1 || n > c->positions)
            return mp_error(MP_STATUS_INVALID_ARGUMENT,
                            "text_encode: sequence %lld has %lld tokens; the model takes 1 to %lld", (long long)s,
                            (long long)n, (long long)c->positions);
        for (int64_t t = offsets[s]; t < offsets[s + 1]; t++) {
            if (ids[t] < 0 || ids[t] >= c->vocab)
                return mp_error(MP_STATUS_INVALID_ARGUMENT,
                                "text_encode: sequence %lld, token %lld: id %lld is outside the vocabulary [0, %lld)",
                                (long long)s, (long long)(t - offsets[s]), (long long)ids[t], (long long)c->vocab);
            if (types && (types[t] < 0 || types[t] >= c->token_types))
                return mp_error(MP_STATUS_INVALID_ARGUMENT,
                                "text_encode: sequence %lld, token %lld: token type %lld is outside [0, %lld)",
                                (long long)s, (long long)(t - offsets[s]), (long long)types[t],
                                (long long)c->token_types);
        }
    }
    return MP_STATUS_OK;
}

enum mp_status mp_text_encode(struct mp_text *m, float *out, const int64_t *ids, const int64_t *types,
                              const int64_t *offsets, int64_t N, enum mp_text_pooling pooling,
                              enum mp_precision precision) {
    if (!m || N < 0 || !offsets || (N > 0 && (!out || !ids)))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: bad arguments");
    const struct mp_text_config *c = &m->c;
    int64_t out_dim = mp_text_output_dim(m, pooling);
    if (out_dim == 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: this model has no such pooling");
    if (types && c->kind != MP_TEXT_BERT)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: token types are for BERT models only");
    if (N == 0) return MP_STATUS_OK;
    enum mp_status status = check_input(c, ids, types, offsets, N);
    if (status) return status;
    int64_t D = c->width, M = c->mlp, R = offsets[N];
    int bf16 = precision == MP_PRECISION_BF16, bert = c->kind == MP_TEXT_BERT;

    // Activations, one allocation: x residual (R, D), h LayerNorm output (R, D), qkv (R, 3D),
    // att (R, D), mlp (R, M), pooled (N, D); bf16 runs keep h and mlp in bf16.
    size_t sizes[] = {(size_t)(R * D), (size_t)(R * D), (size_t)(R * 3 * D), (size_t)(R * D),
                      bf16 ? 0 : (size_t)(R * M), (size_t)(N * D)};
    size_t halves[] = {(size_t)(R * D), (size_t)(R * M)};
    size_t total = 0, total_half = bf16 ? halves[0] + halves[1] : 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += sizes[i];
    if (mp_arena_reserve((void **)&m->arena, &m->arena_cap, total, sizeof *m->arena) ||
       mp_arena_reserve((void **)&m->arena_half, &m->half_cap, total_half, sizeof *m->arena_half))
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "text_encode: cannot allocate activations for %lld tokens",
                        (long long)R);
    float *x = m->arena, *h = x + sizes[0], *qkv = h + sizes[1], *att = qkv + sizes[2], *mlp = att + sizes[3];
    float *pooled = mlp + sizes[4];
    uint16_t *h16 = bf16 ? m->arena_half : NULL, *mlp16 = bf16 ? h16 + halves[0] : NULL;

    if ((status = linears_init(m, precision))) return status;
    const struct text_linears *ls = &m->linears[precision];
    const enum mp_dtype F32 = MP_DTYPE_F32, BF16 = MP_DTYPE_BF16;

    // Embeddings: token + position (+ token type), positions counted per sequence.
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < N; s++)
        for (int64_t r = offsets[s]; r < offsets[s + 1]; r++) {
            const float *tok = m->tokens + ids[r] * D, *pos = m->positions + (r - offsets[s]) * D;
            const float *type = bert ? m->types + (types ? types[r] : 0) * D : NULL;
            float *dst = x + r * D;
            for (int64_t i = 0; i < D; i++) dst[i] = type ? tok[i] + pos[i] + type[i] : tok[i] + pos[i];
        }
    if (bert) layernorm_forward(x, x, m->emb_ln_w, m->emb_ln_b, R, D, c->eps);

    for (int64_t l = 0; l < c->layers; l++) {
        const struct text_layer *w = &m->layers[l];
        if (!bert) { // pre-norm: x += attn(ln1(x)); x += mlp(ln2(x))
            if (bf16) {
                layernorm_forward_bf16(h16, x, w->ln1_w, w->ln1_b, R, D, c->eps);
                status = mp_linear_forward_typed(ls->qkv[l], qkv, F32, h16, BF16, R);
            } else {
                layernorm_forward(h, x, w->ln1_w, w->ln1_b, R, D, c->eps);
                status = mp_linear_forward(ls->qkv[l], qkv, h, R);
            }
            if (status) return status;
            if ((status = attention_varlen_forward(att, qkv, offsets, N, D, c->heads, 1)) ||
                (status = mp_linear_forward(ls->out[l], x, att, R)))
                return status;
            if (bf16) {
                layernorm_forward_bf16(h16, x, w->ln2_w, w->ln2_b, R, D, c->eps);
                if ((status = mp_linear_forward_typed(ls->fc1[l], mlp16, BF16, h16, BF16, R)) ||
                    (status = mp_linear_forward_typed(ls->fc2[l], x, F32, mlp16, BF16, R)))
                    return status;
            } else {
                layernorm_forward(h, x, w->ln2_w, w->ln2_b, R, D, c->eps);
                if ((status = mp_linear_forward(ls->fc1[l], mlp, h, R)) ||
                    (status = mp_linear_forward(ls->fc2[l], x, mlp, R)))
                    return status;
            }
            continue;
        }
        // post-norm: x = ln1(x + attn(x)); x = ln2(x + mlp(x))
        if ((status = mp_linear_forward(ls->qkv[l], qkv, x, R))) return status;
        if ((status = attention_varlen_forward(att, qkv, offsets, N, D, c->heads, 0)) ||
            (status = mp_linear_forward(ls->out[l], x, att, R)))
            return status;
        layernorm_forward(x, x, w->ln1_w, w->ln1_b, R, D, c->eps);
        if (bf16)
            status = mp_linear_forward_typed(ls->fc1[l], mlp16, BF16, x, F32, R);
        else
            status = mp_linear_forward(ls->fc1[l], mlp, x, R);
        if (status) return status;
        if (bf16)
            status = mp_linear_forward_typed(ls->fc2[l], x, F32, mlp16, BF16, R);
        else
            status = mp_linear_forward(ls->fc2[l], x, mlp, R);
        if (status) return status;
        layernorm_forward(x, x, w->ln2_w, w->ln2_b, R, D, c->eps);
    }

    if (!bert) { // the last token of each sequence, final LayerNorm, projection
        for (int64_t s = 0; s < N; s++) memcpy(pooled + s * D, x + (offsets[s + 1] - 1) * D, (size_t)D * sizeof *x);
        float *dst = m->proj ? pooled : out;
        layernorm_forward(dst, pooled, m->final_ln_w, m->final_ln_b, N, D, c->eps);
        return m->proj ? mp_linear_forward(ls->proj, out, pooled, N) : MP_STATUS_OK;
    }
    if (pooling == MP_TEXT_POOL_CLS) {
        for (int64_t s = 0; s < N; s++) memcpy(out + s * D, x + offsets[s] * D, (size_t)D * sizeof *x);
        return MP_STATUS_OK;
    }
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < N; s++) {
        double sum[D];
        for (int64_t i = 0; i < D; i++) sum[i] = 0.0;
        for (int64_t r = offsets[s]; r < offsets[s + 1]; r++)
            for (int64_t i = 0; i < D; i++) sum[i] += x[r * D + i];
        double count = (double)(offsets[s + 1] - offsets[s]);
        for (int64_t i = 0; i < D; i++) out[s * D + i] = (float)(sum[i] / count);
    }
    return MP_STATUS_OK;
}
