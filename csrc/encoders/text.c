/* encoders/text.c: the text Transformer assembled from nn/ parts: its weight table, the
 * embeddings of packed sequences, a stack of pre-norm (CLIP, causal) or post-norm (BERT)
 * blocks, and the pooling. */
#include "encoders/text.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "nn/block.h"
#include "weights/bind.h"
#include "nn/layers.h"

struct mp_text {
    struct mp_text_config c;
    struct mp_block_config bc;
    struct mp_weights weights;
    const float *tokens, *positions, *types, *emb_ln_w, *emb_ln_b, *final_ln_w, *final_ln_b, *proj;
    struct mp_block *layers;
    struct mp_linear *projection[2]; // by enum mp_precision, packed on first use
    struct mp_arena arena;
};

enum { D_ = 1, D3, M_, V_, P_, Y_, E_, TEXT_DIMS };
enum { CLIP = 1u, BERT = 2u, PROJECTED = 4u };

#define G(f) offsetof(struct mp_text, f)
#define L(f) offsetof(struct mp_block, f)
static const struct mp_weight_rule text_table[] = {
    {"token_embedding", {V_, D_}, 0, G(tokens)},
    {"position_embedding", {P_, D_}, 0, G(positions)},
    {"token_type_embedding", {Y_, D_}, BERT, G(types)},
    {"embedding_norm.weight", {D_}, BERT, G(emb_ln_w)},
    {"embedding_norm.bias", {D_}, BERT, G(emb_ln_b)},
    {"layers.{i}.norm1.weight", {D_}, 0, L(ln1_w)},
    {"layers.{i}.norm1.bias", {D_}, 0, L(ln1_b)},
    {"layers.{i}.attn.qkv.weight", {D3, D_}, 0, L(qkv_w)},
    {"layers.{i}.attn.qkv.bias", {D3}, 0, L(qkv_b)},
    {"layers.{i}.attn.out.weight", {D_, D_}, 0, L(out_w)},
    {"layers.{i}.attn.out.bias", {D_}, 0, L(out_b)},
    {"layers.{i}.norm2.weight", {D_}, 0, L(ln2_w)},
    {"layers.{i}.norm2.bias", {D_}, 0, L(ln2_b)},
    {"layers.{i}.mlp.fc1.weight", {M_, D_}, 0, L(fc1_w)},
    {"layers.{i}.mlp.fc1.bias", {M_}, 0, L(fc1_b)},
    {"layers.{i}.mlp.fc2.weight", {D_, M_}, 0, L(fc2_w)},
    {"layers.{i}.mlp.fc2.bias", {D_}, 0, L(fc2_b)},
    {"final_norm.weight", {D_}, CLIP, G(final_ln_w)},
    {"final_norm.bias", {D_}, CLIP, G(final_ln_b)},
    {"projection", {E_, D_}, CLIP | PROJECTED, G(proj)},
};
#undef G
#undef L

static int config_valid(const struct mp_text_config *c) {
    int clip = c->kind == MP_TEXT_CLIP, bert = c->kind == MP_TEXT_BERT;
    return (clip || bert) && c->vocab > 0 && c->positions > 0 && c->width > 0 && c->heads > 0 &&
           c->width % c->heads == 0 && c->layers > 0 && c->layers <= 4096 && c->mlp > 0 && c->eps > 0.0f &&
           (clip ? c->token_types == 0 && c->projection >= 0 : c->token_types > 0 && c->projection == 0) &&
           (c->activation == MP_ACTIVATION_GELU || c->activation == MP_ACTIVATION_QUICK_GELU);
}

enum mp_status mp_text_init(struct mp_text **out, const struct mp_text_config *c, const struct mp_checkpoint *ck) {
    if (!out || !c || !ck) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_init: NULL argument");
    *out = NULL;
    if (!config_valid(c)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_init: inconsistent config");
    struct mp_text *m = calloc(1, sizeof *m);
    struct mp_block *layers = m ? calloc((size_t)c->layers, sizeof *layers) : NULL;
    if (!layers) {
        free(m);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "text_init: cannot allocate the model");
    }
    m->c = *c;
    m->layers = layers;
    m->bc = (struct mp_block_config){c->width, c->heads, c->mlp, 0, c->kind == MP_TEXT_BERT, c->eps, c->activation};
    int64_t dims[TEXT_DIMS] = {0};
    dims[D_] = c->width, dims[D3] = 3 * c->width, dims[M_] = c->mlp, dims[V_] = c->vocab, dims[P_] = c->positions;
    dims[Y_] = c->token_types, dims[E_] = c->projection;
    uint32_t flags = (c->kind == MP_TEXT_CLIP ? CLIP : BERT) | (c->projection > 0 ? PROJECTED : 0);
    enum mp_status s = mp_weights_bind(&m->weights, m, layers, sizeof *layers, c->layers, text_table,
                                       (int64_t)(sizeof text_table / sizeof *text_table), dims, flags, ck, "text_init");
    if (s) {
        mp_text_free(m);
        return s;
    }
    *out = m;
    return MP_STATUS_OK;
}

void mp_text_free(struct mp_text *m) {
    if (!m) return;
    for (int64_t l = 0; m->layers && l < m->c.layers; l++) mp_block_release(&m->layers[l]);
    for (int p = 0; p < 2; p++) mp_linear_free(m->projection[p]);
    free(m->layers);
    mp_weights_free(&m->weights);
    mp_arena_free(&m->arena);
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
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: unknown precision %d", (int)precision);
    const struct mp_text_config *c = &m->c;
    int64_t out_dim = mp_text_output_dim(m, pooling);
    if (out_dim == 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: this model has no such pooling");
    if (types && c->kind != MP_TEXT_BERT)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "text_encode: token types are for BERT models only");
    if (N == 0) return MP_STATUS_OK;
    enum mp_status status = check_input(c, ids, types, offsets, N);
    if (status) return status;
    int64_t D = c->width, R = offsets[N];
    int bert = c->kind == MP_TEXT_BERT;

    // Activations, one arena: x residual (R, D), pooled (N, D), then the blocks' buffers.
    struct mp_tokens tokens = {.rows = R, .offsets = offsets, .N = N, .causal = !bert};
    struct mp_block_buffers buf;
    size_t block32, block16;
    mp_block_buffers(&buf, NULL, NULL, &block32, &block16, &m->bc, &tokens, precision);
    if ((status = mp_arena_reserve(&m->arena, (size_t)(R * D + N * D) + block32, block16, "text_encode")))
        return status;
    float *x = m->arena.f32, *pooled = x + R * D;
    mp_block_buffers(&buf, pooled + N * D, m->arena.bf16, &block32, &block16, &m->bc, &tokens, precision);
    if (m->proj && !m->projection[precision] &&
        (status = mp_linear_init(&m->projection[precision], m->proj, NULL, c->projection, D, precision, MP_OP_NONE, 0)))
        return status;

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

    for (int64_t l = 0; l < c->layers; l++)
        if ((status = mp_block_forward(x, &buf, &m->layers[l], &m->bc, &tokens, precision))) return status;

    if (!bert) { // the last token of each sequence, final LayerNorm, projection
        for (int64_t s = 0; s < N; s++) memcpy(pooled + s * D, x + (offsets[s + 1] - 1) * D, (size_t)D * sizeof *x);
        float *dst = m->proj ? pooled : out;
        layernorm_forward(dst, pooled, m->final_ln_w, m->final_ln_b, N, D, c->eps);
        return m->proj ? mp_linear_forward(m->projection[precision], out, pooled, N) : MP_STATUS_OK;
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
