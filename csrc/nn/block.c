/* nn/block.c: the transformer layer every encoder stacks (pre-norm or post-norm, dense or
 * packed tokens, fp32 or bf16), its buffer plan and the activation arena. The encoders only
 * assemble embeddings, blocks and pooling around it. */
#include "nn/block.h"

#include <stdlib.h>

#include "nn/layers.h"

// bf16 q/k/v and attention output: dense batches only (packed attention reads fp32).
static int bf16_attention(const struct mp_tokens *t, enum mp_precision precision) {
    return precision == MP_PRECISION_BF16 && !t->offsets;
}

void mp_block_buffers(struct mp_block_buffers *buf, float *f32, uint16_t *bf16, size_t *n32, size_t *n16,
                      const struct mp_block_config *c, const struct mp_tokens *t, enum mp_precision precision) {
    size_t R = (size_t)t->rows, D = (size_t)c->width, M = (size_t)c->mlp, M1 = c->swiglu ? 2 * M : M;
    int bf16_run = precision == MP_PRECISION_BF16, bf16_att = bf16_attention(t, precision);
    int h32 = !bf16_run && !c->post_norm; // post-norm reads x itself
    size_t scores = t->offsets ? 0 : attention_scores_size(t->B, t->T, bf16_att ? 0 : c->width, c->heads);
    // In order: fp32 h, qkv, att, mlp, gated, scores; bf16 h, qkv, att, mlp, attention workspace.
    size_t sizes[] = {h32 ? R * D : 0,
                      bf16_att ? 0 : R * 3 * D,
                      bf16_att ? 0 : R * D,
                      bf16_run && !c->swiglu ? 0 : R * M1,
                      c->swiglu ? R * M : 0,
                      scores};
    size_t halves[] = {bf16_run && !c->post_norm ? R * D : 0,
                       bf16_att ? R * 3 * D : 0,
                       bf16_att ? R * D : 0,
                       bf16_run && !c->swiglu ? R * M : 0,
                       bf16_att ? attention_bf16_workspace_size(t->B, t->T, c->width, c->heads) : 0};
    float **views[] = {&buf->h, &buf->qkv, &buf->att, &buf->mlp, &buf->gated, &buf->scores};
    uint16_t **half_views[] = {&buf->h16, &buf->qkv16, &buf->att16, &buf->mlp16, &buf->probs16};
    *n32 = *n16 = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        if (f32) *views[i] = sizes[i] ? f32 + *n32 : NULL;
        *n32 += sizes[i];
    }
    for (size_t i = 0; i < sizeof halves / sizeof *halves; i++) {
        if (f32) *half_views[i] = halves[i] && bf16 ? bf16 + *n16 : NULL;
        *n16 += halves[i];
    }
}

// The block's linear layers for `precision`, packed on first use: bias, activation and the
// residual add fused into the matmuls.
static enum mp_status block_linears(struct mp_block *b, const struct mp_block_config *c, enum mp_precision p) {
    if (b->qkv[p]) return MP_STATUS_OK;
    int64_t D = c->width, M = c->mlp, M1 = c->swiglu ? 2 * M : M;
    enum mp_activation_op act = c->swiglu                                    ? MP_OP_NONE // gated after the matmul
                                : c->activation == MP_ACTIVATION_QUICK_GELU ? MP_OP_QUICK_GELU
                                                                            : MP_OP_GELU;
    enum mp_status s;
    if ((s = mp_linear_init(&b->qkv[p], b->qkv_w, b->qkv_b, 3 * D, D, p, MP_OP_NONE, 0)) ||
        (s = mp_linear_init(&b->out[p], b->out_w, b->out_b, D, D, p, MP_OP_NONE, 1)) ||
        (s = mp_linear_init(&b->fc1[p], b->fc1_w, b->fc1_b, M1, D, p, act, 0)) ||
        (s = mp_linear_init(&b->fc2[p], b->fc2_w, b->fc2_b, D, M, p, MP_OP_NONE, 1))) {
        mp_linear_free(b->qkv[p]), mp_linear_free(b->out[p]), mp_linear_free(b->fc1[p]), mp_linear_free(b->fc2[p]);
        b->qkv[p] = b->out[p] = b->fc1[p] = b->fc2[p] = NULL;
    }
    return s;
}

void mp_block_release(struct mp_block *b) {
    for (int p = 0; p < 2; p++) {
        mp_linear_free(b->qkv[p]), mp_linear_free(b->out[p]), mp_linear_free(b->fc1[p]), mp_linear_free(b->fc2[p]);
        b->qkv[p] = b->out[p] = b->fc1[p] = b->fc2[p] = NULL;
    }
}

// x += attn(h) Wo^T + bo, with h the (normalised) input, F32 or BF16.
static enum mp_status attention_residual(float *x, const struct mp_block_buffers *buf, struct mp_block *b,
                                         const struct mp_block_config *c, const struct mp_tokens *t,
                                         enum mp_precision p, const void *h, enum mp_dtype h_type) {
    const enum mp_dtype F32 = MP_DTYPE_F32, BF16 = MP_DTYPE_BF16;
    enum mp_status s;
    if (bf16_attention(t, p)) {
        if ((s = mp_linear_forward_typed(b->qkv[p], buf->qkv16, BF16, h, h_type, t->rows)) ||
            (s = attention_forward_bf16(buf->att16, buf->scores, buf->probs16, buf->qkv16, t->B, t->T, c->width,
                                        c->heads)))
            return s;
        return mp_linear_forward_typed(b->out[p], x, F32, buf->att16, BF16, t->rows);
    }
    if ((s = mp_linear_forward_typed(b->qkv[p], buf->qkv, F32, h, h_type, t->rows))) return s;
    s = t->offsets ? attention_varlen_forward(buf->att, buf->qkv, t->offsets, t->N, c->width, c->heads, t->causal)
                   : attention_forward(buf->att, buf->scores, buf->qkv, t->B, t->T, c->width, c->heads, p);
    return s ? s : mp_linear_forward(b->out[p], x, buf->att, t->rows);
}

// x += mlp(h): fc1 with its activation (or the SwiGLU gate after it), then fc2 accumulated.
static enum mp_status mlp_residual(float *x, const struct mp_block_buffers *buf, struct mp_block *b,
                                   const struct mp_block_config *c, const struct mp_tokens *t, enum mp_precision p,
                                   const void *h, enum mp_dtype h_type) {
    const enum mp_dtype F32 = MP_DTYPE_F32, BF16 = MP_DTYPE_BF16;
    enum mp_status s;
    if (c->swiglu) {
        if ((s = mp_linear_forward_typed(b->fc1[p], buf->mlp, F32, h, h_type, t->rows))) return s;
        swiglu_forward(buf->gated, buf->mlp, t->rows, c->mlp);
        return mp_linear_forward(b->fc2[p], x, buf->gated, t->rows);
    }
    if (p == MP_PRECISION_BF16) {
        if ((s = mp_linear_forward_typed(b->fc1[p], buf->mlp16, BF16, h, h_type, t->rows))) return s;
        return mp_linear_forward_typed(b->fc2[p], x, F32, buf->mlp16, BF16, t->rows);
    }
    if ((s = mp_linear_forward_typed(b->fc1[p], buf->mlp, F32, h, h_type, t->rows))) return s;
    return mp_linear_forward(b->fc2[p], x, buf->mlp, t->rows);
}

enum mp_status mp_block_forward(float *x, const struct mp_block_buffers *buf, struct mp_block *b,
                                const struct mp_block_config *c, const struct mp_tokens *t, enum mp_precision p) {
    enum mp_status s = block_linears(b, c, p);
    if (s) return s;
    int64_t R = t->rows, D = c->width;
    if (c->post_norm) {
        if ((s = attention_residual(x, buf, b, c, t, p, x, MP_DTYPE_F32))) return s;
        layernorm_forward(x, x, b->ln1_w, b->ln1_b, R, D, c->eps);
        if ((s = mlp_residual(x, buf, b, c, t, p, x, MP_DTYPE_F32))) return s;
        layernorm_forward(x, x, b->ln2_w, b->ln2_b, R, D, c->eps);
        return MP_STATUS_OK;
    }
    const float *ln_w[2] = {b->ln1_w, b->ln2_w}, *ln_b[2] = {b->ln1_b, b->ln2_b};
    for (int half = 0; half < 2; half++) {
        const void *h;
        enum mp_dtype h_type;
        if (p == MP_PRECISION_BF16) {
            layernorm_forward_bf16(buf->h16, x, ln_w[half], ln_b[half], R, D, c->eps);
            h = buf->h16, h_type = MP_DTYPE_BF16;
        } else {
            layernorm_forward(buf->h, x, ln_w[half], ln_b[half], R, D, c->eps);
            h = buf->h, h_type = MP_DTYPE_F32;
        }
        s = half == 0 ? attention_residual(x, buf, b, c, t, p, h, h_type) : mlp_residual(x, buf, b, c, t, p, h, h_type);
        if (s) return s;
    }
    return MP_STATUS_OK;
}

enum mp_status mp_arena_reserve(struct mp_arena *a, size_t n32, size_t n16, const char *who) {
    if (n32 > a->cap32) {
        free(a->f32);
        a->cap32 = 0;
        if (!(a->f32 = malloc(n32 * sizeof *a->f32))) goto oom;
        a->cap32 = n32;
    }
    if (n16 > a->cap16) {
        free(a->bf16);
        a->cap16 = 0;
        if (!(a->bf16 = malloc(n16 * sizeof *a->bf16))) goto oom;
        a->cap16 = n16;
    }
    return MP_STATUS_OK;
oom:
    return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: cannot allocate %zu + %zu activation values", who, n32, n16);
}

void mp_arena_free(struct mp_arena *a) {
    free(a->f32), free(a->bf16);
    a->f32 = NULL, a->bf16 = NULL, a->cap32 = a->cap16 = 0;
}
