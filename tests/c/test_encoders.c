/* test_encoders.c: encoders/vit.c and encoders/text.c on tiny random models (CLIP ViT, DINOv2
 * with registers and LayerScale, DINOv2 SwiGLU, CLIP text, BERT) against double-precision
 * references written out plainly here, at fp32 and bf16. The weights reach the models through
 * safetensors files written here under real checkpoint layouts whose aliases use every form
 * of weights/bind.c (name^T, a + b, a | b, zeros, {i}, leading 1s, shards, BF16 storage); broken
 * files and bad calls must be refused with a message naming what is wrong. */
#define _POSIX_C_SOURCE 200809L // mkstemp

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "megapairs.h"

/* fp32: every matmul accumulates in fp32 over K <= 192 terms of unit-scale products and the
 * references are double, so errors stay near K * 2^-24 relative; 1e-4 of the output's largest
 * magnitude leaves a wide margin while catching any wrong weight, mask or pooling.
 * bf16: every matmul input (weights, LayerNorm outputs, the MLP hidden layer, and on dense
 * ViT batches q/k/v, probabilities and the attention output) is rounded to 8 significant bits,
 * a relative error of at most 2^-9 per operand, 2^-8 per product. A path through the models
 * crosses about 12 such roundings (patch or token embedding, 2 x (qkv, attention, out, fc1,
 * fc2), projection); LayerNorm keeps each layer's input at unit scale, so the independent
 * errors add up to a few times 2^-8 ~ 0.004 of the output's scale, and even their aligned sum,
 * 12 * 2^-8 ~ 0.047, stays under the bound 0.05 checked here. That is an estimate, not a proof
 * (softmax and LayerNorm can amplify an error), so the root mean square error must also stay
 * under 2^-7 of the output's scale (typical errors, not only the worst one). Measured on these
 * models: fp32 max error <= 5e-7 of scale; bf16 max <= 0.0075, rms <= 0.0026 of scale. */
#define FP32_TOL 1e-4
#define BF16_TOL 0.05
#define BF16_RMS 0.0078125

/* ---------------------------------------------------------------- allocations */

// Every buffer of one test, freed together.
struct bag {
    void **ptr;
    int    n, cap;
};

static void *bag_alloc(struct bag *b, size_t bytes) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->ptr = realloc(b->ptr, (size_t)b->cap * sizeof *b->ptr);
        if (!b->ptr) abort();
    }
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) abort();
    return b->ptr[b->n++] = p;
}

static void bag_free(struct bag *b) {
    for (int i = 0; i < b->n; i++) free(b->ptr[i]);
    free(b->ptr);
    memset(b, 0, sizeof *b);
}

// n values center + scale * U(-1, 1).
static float *rnd(struct bag *b, int64_t n, unsigned *seed, float center, float scale) {
    float *x = bag_alloc(b, (size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = center + scale * ((float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f);
    return x;
}

static int has(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

/* ---------------------------------------------------------------- writing safetensors files */

#define ST_MAX 256

struct st_entry {
    char         name[160];
    int          bf16;
    int          ndim;
    int64_t      shape[4];
    const float *values; // numel floats, already rounded if bf16
};

struct st_file {
    struct st_entry e[ST_MAX];
    int             n;
};

// Adds tensor `fmt...` of `shape` holding `values` (not copied: written at st_write). A BF16
// tensor rounds `values` in place, so the reference computes with what the file holds.
#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static void st_put(struct st_file *f, int bf16, float *values, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (f->n == ST_MAX) abort();
    struct st_entry *e = &f->e[f->n++];
    va_list args;
    va_start(args, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, args);
    va_end(args);
    e->bf16 = bf16, e->ndim = ndim, e->values = values;
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d], numel *= shape[d];
    for (int64_t i = 0; bf16 && i < numel; i++) values[i] = mp_bf16_to_f32(mp_f32_to_bf16(values[i]));
}

static struct st_entry *st_find(struct st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->e[i].name, name) == 0) return &f->e[i];
    return NULL;
}

static void st_remove(struct st_file *f, const char *name) {
    struct st_entry *e = st_find(f, name);
    if (!e) abort();
    *e = f->e[--f->n];
}

// Writes the file under /tmp: 8-byte little-endian header length, the JSON header padded
// with spaces so the data section starts 8-aligned, then each tensor's bytes in order.
static void st_write(const struct st_file *f, char path[64]) {
    size_t cap = 64 + (size_t)f->n * 320, len = 0, data_len = 0;
    char *json = malloc(cap);
    if (!json) abort();
    json[len++] = '{';
    for (int i = 0; i < f->n; i++) {
        const struct st_entry *e = &f->e[i];
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
        size_t bytes = (size_t)numel * (e->bf16 ? 2 : 4);
        len += (size_t)snprintf(json + len, cap - len, "%s\"%s\": {\"dtype\": \"%s\", \"shape\": [", i ? ", " : "",
                                e->name, e->bf16 ? "BF16" : "F32");
        for (int d = 0; d < e->ndim; d++) len += (size_t)snprintf(json + len, cap - len, d ? ", %lld" : "%lld", (long long)e->shape[d]);
        len += (size_t)snprintf(json + len, cap - len, "], \"data_offsets\": [%zu, %zu]}", data_len, data_len + bytes);
        data_len += bytes;
    }
    json[len++] = '}';
    while ((8 + len) % 8) json[len++] = ' ';
    size_t size = 8 + len + data_len;
    unsigned char *file = malloc(size), *p = file + 8 + len;
    if (!file) abort();
    for (int k = 0; k < 8; k++) file[k] = (unsigned char)((uint64_t)len >> (8 * k));
    memcpy(file + 8, json, len);
    for (int i = 0; i < f->n; i++) {
        const struct st_entry *e = &f->e[i];
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
        for (int64_t j = 0; j < numel; j++) {
            uint32_t bits;
            memcpy(&bits, &e->values[j], 4);
            if (e->bf16) bits = mp_f32_to_bf16(e->values[j]);
            for (int k = 0; k < (e->bf16 ? 2 : 4); k++) *p++ = (unsigned char)(bits >> (8 * k));
        }
    }
    strcpy(path, "/tmp/megapairs_encoders_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); abort(); }
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, file + done, size - done);
        if (n <= 0) { perror("write"); abort(); }
        done += (size_t)n;
    }
    close(fd);
    free(json), free(file);
}

// Writes `f`, opens it and unlinks it at once: a model must keep the mapping it reads.
static struct mp_safetensors *st_open(const struct st_file *f, char path[64]) {
    st_write(f, path);
    struct mp_safetensors *st = NULL;
    if (!CHECK(mp_safetensors_open(&st, path) == MP_STATUS_OK, "open %s: %s", path, mp_last_error())) st = NULL;
    unlink(path);
    return st;
}

#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__}

// `values` (rows, cols) stored transposed, as (cols, rows).
#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static void st_put_t(struct st_file *f, struct bag *bag, const float *values, int64_t rows, int64_t cols,
                     const char *fmt, ...) {
    float *t = bag_alloc(bag, (size_t)(rows * cols) * sizeof *t);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) t[c * rows + r] = values[r * cols + c];
    char name[160];
    va_list args;
    va_start(args, fmt);
    vsnprintf(name, sizeof name, fmt, args);
    va_end(args);
    st_put(f, 0, t, SHAPE(cols, rows), "%s", name);
}

/* ---------------------------------------------------------------- the reference, in double */

#define MAX_LAYERS 4

// One layer's canonical weights (encoders/vit.h, text.h); ls1, ls2 NULL without LayerScale.
struct ref_layer {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ls1;
    float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b, *ls2;
};

struct ref_block_config {
    int64_t            D, H, M;
    int                swiglu, post_norm, causal;
    double             eps;
    enum mp_activation act;
};

// Weights scaled so every linear layer keeps unit-scale inputs at unit scale.
static void ref_layer_init(struct ref_layer *w, struct bag *b, unsigned *seed, int64_t D, int64_t M, int swiglu,
                           int layer_scale) {
    int64_t M1 = swiglu ? 2 * M : M;
    float aD = sqrtf(3.0f / (float)D), aM = sqrtf(3.0f / (float)M);
    w->ln1_w = rnd(b, D, seed, 1.0f, 0.2f), w->ln1_b = rnd(b, D, seed, 0.0f, 0.1f);
    w->qkv_w = rnd(b, 3 * D * D, seed, 0.0f, aD), w->qkv_b = rnd(b, 3 * D, seed, 0.0f, 0.1f);
    w->out_w = rnd(b, D * D, seed, 0.0f, aD), w->out_b = rnd(b, D, seed, 0.0f, 0.1f);
    w->ln2_w = rnd(b, D, seed, 1.0f, 0.2f), w->ln2_b = rnd(b, D, seed, 0.0f, 0.1f);
    w->fc1_w = rnd(b, M1 * D, seed, 0.0f, aD), w->fc1_b = rnd(b, M1, seed, 0.0f, 0.1f);
    w->fc2_w = rnd(b, D * M, seed, 0.0f, aM), w->fc2_b = rnd(b, D, seed, 0.0f, 0.1f);
    w->ls1 = layer_scale ? rnd(b, D, seed, 0.5f, 0.3f) : NULL;
    w->ls2 = layer_scale ? rnd(b, D, seed, 0.5f, 0.3f) : NULL;
}

// torch.nn.functional.layer_norm of one row (biased variance); y may be x.
static void ref_layernorm(double *y, const double *x, const float *w, const float *b, int64_t D, double eps) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < D; i++) mean += x[i];
    mean /= (double)D;
    for (int64_t i = 0; i < D; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (double)D;
    for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + (b ? b[i] : 0.0);
}

// y (N) = W (N, K) x (K) + b, b NULL for none.
static void ref_linear(double *y, const double *x, const float *W, const float *b, int64_t N, int64_t K) {
    for (int64_t n = 0; n < N; n++) {
        double s = b ? b[n] : 0.0;
        for (int64_t k = 0; k < K; k++) s += (double)W[n * K + k] * x[k];
        y[n] = s;
    }
}

static double ref_activation(double v, enum mp_activation act) {
    return act == MP_ACTIVATION_QUICK_GELU ? v / (1.0 + exp(-1.702 * v)) : 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
}

// Multi-head attention over one sequence of T tokens, qkv rows (q | k | v); `causal` lets
// token i see tokens 0..i only.
static void ref_attention(double *out, const double *qkv, int64_t T, int64_t D, int64_t H, int causal) {
    int64_t hd = D / H;
    double *p = malloc((size_t)T * sizeof *p);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < T; i++) {
            int64_t J = causal ? i + 1 : T;
            double max = -INFINITY, sum = 0;
            for (int64_t j = 0; j < J; j++) {
                double s = 0;
                for (int64_t d = 0; d < hd; d++) s += qkv[i * 3 * D + h * hd + d] * qkv[j * 3 * D + D + h * hd + d];
                p[j] = s / sqrt((double)hd);
                max = p[j] > max ? p[j] : max;
            }
            for (int64_t j = 0; j < J; j++) sum += (p[j] = exp(p[j] - max));
            for (int64_t d = 0; d < hd; d++) {
                double o = 0;
                for (int64_t j = 0; j < J; j++) o += p[j] / sum * qkv[j * 3 * D + 2 * D + h * hd + d];
                out[i * D + h * hd + d] = o;
            }
        }
    free(p);
}

// The MLP of one row: fc1, activation (or SwiGLU: silu(gate) * up), fc2.
static void ref_mlp(double *y, const double *x, const struct ref_layer *w, const struct ref_block_config *c) {
    int64_t D = c->D, M = c->M, M1 = c->swiglu ? 2 * M : M;
    double *m = malloc((size_t)M1 * sizeof *m);
    ref_linear(m, x, w->fc1_w, w->fc1_b, M1, D);
    for (int64_t i = 0; i < M; i++)
        m[i] = c->swiglu ? m[i] / (1.0 + exp(-m[i])) * m[M + i] : ref_activation(m[i], c->act);
    ref_linear(y, m, w->fc2_w, w->fc2_b, D, M);
    free(m);
}

// One layer over one sequence x (T, D), in place:
//   pre-norm:  x += ls1 * attn(ln1(x)); x += ls2 * mlp(ln2(x))
//   post-norm: x = ln1(x + attn(x)); x = ln2(x + mlp(x))
static void ref_block(double *x, int64_t T, const struct ref_layer *w, const struct ref_block_config *c) {
    int64_t D = c->D;
    double *h = malloc((size_t)(T * D) * sizeof *h), *qkv = malloc((size_t)(T * 3 * D) * sizeof *qkv);
    double *att = malloc((size_t)(T * D) * sizeof *att), *y = malloc((size_t)D * sizeof *y);
    for (int64_t t = 0; t < T; t++) {
        const double *in = x + t * D;
        if (!c->post_norm) ref_layernorm(h + t * D, in, w->ln1_w, w->ln1_b, D, c->eps), in = h + t * D;
        ref_linear(qkv + t * 3 * D, in, w->qkv_w, w->qkv_b, 3 * D, D);
    }
    ref_attention(att, qkv, T, D, c->H, c->causal);
    for (int64_t t = 0; t < T; t++) {
        ref_linear(y, att + t * D, w->out_w, w->out_b, D, D);
        for (int64_t i = 0; i < D; i++) x[t * D + i] += (w->ls1 ? w->ls1[i] : 1.0) * y[i];
        if (c->post_norm) ref_layernorm(x + t * D, x + t * D, w->ln1_w, w->ln1_b, D, c->eps);
    }
    for (int64_t t = 0; t < T; t++) {
        const double *in = x + t * D;
        if (!c->post_norm) ref_layernorm(h, in, w->ln2_w, w->ln2_b, D, c->eps), in = h;
        ref_mlp(y, in, w, c);
        for (int64_t i = 0; i < D; i++) x[t * D + i] += (w->ls2 ? w->ls2[i] : 1.0) * y[i];
        if (c->post_norm) ref_layernorm(x + t * D, x + t * D, w->ln2_w, w->ln2_b, D, c->eps);
    }
    free(h), free(qkv), free(att), free(y);
}

/* ---------------------------------------------------------------- ViT reference */

struct vit_ref {
    struct mp_vit_config c;
    float *class_emb, *registers, *patch_w, *patch_b, *pos, *pre_w, *pre_b, *post_w, *post_b, *proj;
    struct ref_layer layers[MAX_LAYERS];
};

static void vit_ref_init(struct vit_ref *w, struct bag *b, const struct mp_vit_config *c, unsigned seed) {
    memset(w, 0, sizeof *w);
    w->c = *c;
    int64_t D = c->width, p = c->patch_size, G = c->image_size / p, K = 3 * p * p;
    int clip = c->kind == MP_VIT_CLIP;
    w->class_emb = rnd(b, D, &seed, 0.0f, 1.0f);
    if (c->registers) w->registers = rnd(b, c->registers * D, &seed, 0.0f, 1.0f);
    w->patch_w = rnd(b, D * K, &seed, 0.0f, sqrtf(3.0f / (float)K));
    if (!clip) w->patch_b = rnd(b, D, &seed, 0.0f, 0.1f);
    w->pos = rnd(b, (1 + G * G) * D, &seed, 0.0f, 0.5f);
    if (clip) w->pre_w = rnd(b, D, &seed, 1.0f, 0.2f), w->pre_b = rnd(b, D, &seed, 0.0f, 0.1f);
    for (int64_t l = 0; l < c->layers; l++) ref_layer_init(&w->layers[l], b, &seed, D, c->mlp, c->swiglu, !clip);
    w->post_w = rnd(b, D, &seed, 1.0f, 0.2f), w->post_b = rnd(b, D, &seed, 0.0f, 0.1f);
    if (clip) w->proj = rnd(b, c->projection * D, &seed, 0.0f, sqrtf(3.0f / (float)D));
}

static int64_t ref_vit_dim(const struct mp_vit_config *c, enum mp_vit_pooling pooling) {
    if (c->kind == MP_VIT_CLIP) return c->projection;
    return pooling == MP_VIT_POOL_CLS_MEAN ? 2 * c->width : c->width;
}

// (N, ref_vit_dim) embeddings of N images of S x S pixels, as transformers computes them:
// a stride-p convolution (pixels past g * p dropped), class token + registers + patches,
// position embeddings on class and patches, [pre-LN], blocks, pooling.
static double *ref_vit(struct bag *b, const struct vit_ref *w, const float *pixels, int64_t N, int64_t S,
                       const float *positions, enum mp_vit_pooling pooling) {
    const struct mp_vit_config *c = &w->c;
    int64_t D = c->width, p = c->patch_size, R = c->registers, g = S / p, P = g * g, T = 1 + R + P;
    int64_t E = ref_vit_dim(c, pooling);
    const float *pos = positions ? positions : w->pos;
    struct ref_block_config bc = {D, c->heads, c->mlp, c->swiglu, 0, 0, c->eps, c->activation};
    double *out = bag_alloc(b, (size_t)(N * E) * sizeof *out);
    double *x = malloc((size_t)(T * D) * sizeof *x), *cls = malloc((size_t)D * sizeof *cls);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t i = 0; i < D; i++) x[i] = (double)w->class_emb[i] + pos[i];
        for (int64_t r = 0; r < R; r++)
            for (int64_t i = 0; i < D; i++) x[(1 + r) * D + i] = w->registers[r * D + i];
        for (int64_t gy = 0; gy < g; gy++)
            for (int64_t gx = 0; gx < g; gx++) {
                double *dst = x + (1 + R + gy * g + gx) * D;
                for (int64_t d = 0; d < D; d++) {
                    double s = w->patch_b ? w->patch_b[d] : 0.0;
                    for (int64_t ch = 0; ch < 3; ch++)
                        for (int64_t ky = 0; ky < p; ky++)
                            for (int64_t kx = 0; kx < p; kx++)
                                s += (double)w->patch_w[((d * 3 + ch) * p + ky) * p + kx] *
                                     pixels[((n * 3 + ch) * S + gy * p + ky) * S + gx * p + kx];
                    dst[d] = s + pos[(1 + gy * g + gx) * D + d];
                }
            }
        if (w->pre_w)
            for (int64_t t = 0; t < T; t++) ref_layernorm(x + t * D, x + t * D, w->pre_w, w->pre_b, D, c->eps);
        for (int64_t l = 0; l < c->layers; l++) ref_block(x, T, &w->layers[l], &bc);
        double *row = out + n * E;
        if (c->kind == MP_VIT_CLIP) { // post-LN on the class token, then the projection (no bias)
            ref_layernorm(cls, x, w->post_w, w->post_b, D, c->eps);
            ref_linear(row, cls, w->proj, NULL, c->projection, D);
            continue;
        }
        for (int64_t t = 0; t < T; t++) ref_layernorm(x + t * D, x + t * D, w->post_w, w->post_b, D, c->eps);
        double *mean = row + (pooling == MP_VIT_POOL_CLS_MEAN ? D : 0);
        if (pooling != MP_VIT_POOL_MEAN) memcpy(row, x, (size_t)D * sizeof *row);
        if (pooling != MP_VIT_POOL_CLS)
            for (int64_t i = 0; i < D; i++) {
                double s = 0;
                for (int64_t t = 1 + R; t < T; t++) s += x[t * D + i]; // patches only
                mean[i] = s / (double)P;
            }
    }
    free(x), free(cls);
    return out;
}

/* ---------------------------------------------------------------- text reference */

struct text_ref {
    struct mp_text_config c;
    float *tok, *pos, *types, *emb_w, *emb_b, *final_w, *final_b, *proj;
    struct ref_layer layers[MAX_LAYERS];
};

static void text_ref_init(struct text_ref *w, struct bag *b, const struct mp_text_config *c, unsigned seed) {
    memset(w, 0, sizeof *w);
    w->c = *c;
    int64_t D = c->width;
    int bert = c->kind == MP_TEXT_BERT;
    w->tok = rnd(b, c->vocab * D, &seed, 0.0f, 1.0f);
    w->pos = rnd(b, c->positions * D, &seed, 0.0f, 0.5f);
    if (bert) {
        w->types = rnd(b, c->token_types * D, &seed, 0.0f, 0.5f);
        w->emb_w = rnd(b, D, &seed, 1.0f, 0.2f), w->emb_b = rnd(b, D, &seed, 0.0f, 0.1f);
    }
    for (int64_t l = 0; l < c->layers; l++) ref_layer_init(&w->layers[l], b, &seed, D, c->mlp, 0, 0);
    if (!bert) {
        w->final_w = rnd(b, D, &seed, 1.0f, 0.2f), w->final_b = rnd(b, D, &seed, 0.0f, 0.1f);
        if (c->projection) w->proj = rnd(b, c->projection * D, &seed, 0.0f, sqrtf(3.0f / (float)D));
    }
}

// (N, E or D) embeddings of N packed sequences; `projection` is the config's E (0: none).
static double *ref_text(struct bag *b, const struct text_ref *w, const int64_t *ids, const int64_t *types,
                        const int64_t *offsets, int64_t N, enum mp_text_pooling pooling, int64_t projection) {
    const struct mp_text_config *c = &w->c;
    int64_t D = c->width, E = projection ? projection : D;
    int bert = c->kind == MP_TEXT_BERT;
    struct ref_block_config bc = {D, c->heads, c->mlp, 0, bert, !bert, c->eps, c->activation};
    double *out = bag_alloc(b, (size_t)(N * E) * sizeof *out);
    double *last = malloc((size_t)D * sizeof *last);
    for (int64_t s = 0; s < N; s++) {
        int64_t T = offsets[s + 1] - offsets[s];
        const int64_t *id = ids + offsets[s], *type = types ? types + offsets[s] : NULL;
        double *x = malloc((size_t)(T * D) * sizeof *x);
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < D; i++)
                x[t * D + i] = (double)w->tok[id[t] * D + i] + w->pos[t * D + i] +
                               (bert ? w->types[(type ? type[t] : 0) * D + i] : 0.0);
        if (bert)
            for (int64_t t = 0; t < T; t++) ref_layernorm(x + t * D, x + t * D, w->emb_w, w->emb_b, D, c->eps);
        for (int64_t l = 0; l < c->layers; l++) ref_block(x, T, &w->layers[l], &bc);
        double *row = out + s * E;
        if (!bert) { // the last token, final LN, [projection]
            ref_layernorm(last, x + (T - 1) * D, w->final_w, w->final_b, D, c->eps);
            if (projection) ref_linear(row, last, w->proj, NULL, E, D);
            else memcpy(row, last, (size_t)D * sizeof *row);
        } else if (pooling == MP_TEXT_POOL_CLS) {
            memcpy(row, x, (size_t)D * sizeof *row);
        } else {
            for (int64_t i = 0; i < D; i++) {
                double sum = 0;
                for (int64_t t = 0; t < T; t++) sum += x[t * D + i];
                row[i] = sum / (double)T;
            }
        }
        free(x);
    }
    free(last);
    return out;
}

/* ---------------------------------------------------------------- comparing */

// fp32 within FP32_TOL of the output's largest magnitude; bf16 within BF16_TOL of it, its
// RMS error within BF16_RMS of it, and not equal to fp32 (the bf16 path did run).
static void check_output(const float *got, const double *want, int64_t n, enum mp_precision precision,
                         const float *fp32, const char *label) {
    double scale = 0, sq = 0;
    float *expected = malloc((size_t)n * sizeof *expected);
    for (int64_t i = 0; i < n; i++) expected[i] = (float)want[i], scale = fmax(scale, fabs(want[i]));
    char text[160];
    snprintf(text, sizeof text, "%s %s", label, precision == MP_PRECISION_BF16 ? "bf16" : "fp32");
    CHECK(scale > 0.1, "%s: reference output of scale %g is degenerate", text, scale);
    check_close(got, expected, n, (float)((precision == MP_PRECISION_BF16 ? BF16_TOL : FP32_TOL) * scale), text);
    if (precision == MP_PRECISION_BF16) {
        int differs = 0;
        for (int64_t i = 0; i < n; i++) sq += (got[i] - want[i]) * (got[i] - want[i]), differs |= got[i] != fp32[i];
        double rms = sqrt(sq / (double)n);
        CHECK(rms <= BF16_RMS * scale, "%s: rms error %g above %g", text, rms, BF16_RMS * scale);
        CHECK(differs, "%s: identical to fp32, bf16 was not used", text);
    }
    free(expected);
}

// Encodes at fp32 then bf16 and checks both against `want` (n values).
static void check_vit(struct mp_vit *vit, const double *want, const float *pixels, int64_t N, int64_t S,
                      const float *positions, enum mp_vit_pooling pooling, const char *label) {
    int64_t dim = mp_vit_output_dim(vit, pooling), n = N * dim;
    float *out[2] = {malloc((size_t)n * sizeof(float)), malloc((size_t)n * sizeof(float))};
    for (int prec = 0; prec < 2; prec++) {
        enum mp_status s = mp_vit_encode(vit, out[prec], pixels, N, S, positions, pooling, (enum mp_precision)prec);
        if (CHECK(s == MP_STATUS_OK, "%s: encode: %s", label, mp_last_error()))
            check_output(out[prec], want, n, (enum mp_precision)prec, out[0], label);
    }
    free(out[0]), free(out[1]);
}

static void check_text(struct mp_text *m, const double *want, const int64_t *ids, const int64_t *types,
                       const int64_t *offsets, int64_t N, enum mp_text_pooling pooling, const char *label) {
    int64_t dim = mp_text_output_dim(m, pooling), n = N * dim;
    float *out[2] = {malloc((size_t)n * sizeof(float)), malloc((size_t)n * sizeof(float))};
    for (int prec = 0; prec < 2; prec++) {
        enum mp_status s = mp_text_encode(m, out[prec], ids, types, offsets, N, pooling, (enum mp_precision)prec);
        if (CHECK(s == MP_STATUS_OK, "%s: encode: %s", label, mp_last_error()))
            check_output(out[prec], want, n, (enum mp_precision)prec, out[0], label);
    }
    free(out[0]), free(out[1]);
}

/* ---------------------------------------------------------------- CLIP ViT: OpenCLIP layout */

static const struct mp_vit_config clip_vit_config = {MP_VIT_CLIP, 24, 8, 32, 2, 2, 64, 16, 0, 0, 1e-5f,
                                                     MP_ACTIVATION_QUICK_GELU};

// OpenCLIP's visual tower: fused in_proj (3D, D) and the projection stored (D, E).
static const struct mp_weight_alias openclip_visual[] = {
    {"class_embedding", "visual.class_embedding"},
    {"patch_embedding.weight", "visual.conv1.weight"},
    {"position_embedding", "visual.positional_embedding"},
    {"pre_norm.weight", "visual.ln_pre.weight"},
    {"pre_norm.bias", "visual.ln_pre.bias"},
    {"layers.{i}.norm1.weight", "visual.transformer.resblocks.{i}.ln_1.weight"},
    {"layers.{i}.norm1.bias", "visual.transformer.resblocks.{i}.ln_1.bias"},
    {"layers.{i}.attn.qkv.weight", "visual.transformer.resblocks.{i}.attn.in_proj_weight"},
    {"layers.{i}.attn.qkv.bias", "visual.transformer.resblocks.{i}.attn.in_proj_bias"},
    {"layers.{i}.attn.out.weight", "visual.transformer.resblocks.{i}.attn.out_proj.weight"},
    {"layers.{i}.attn.out.bias", "visual.transformer.resblocks.{i}.attn.out_proj.bias"},
    {"layers.{i}.norm2.weight", "visual.transformer.resblocks.{i}.ln_2.weight"},
    {"layers.{i}.norm2.bias", "visual.transformer.resblocks.{i}.ln_2.bias"},
    {"layers.{i}.mlp.fc1.weight", "visual.transformer.resblocks.{i}.mlp.c_fc.weight"},
    {"layers.{i}.mlp.fc1.bias", "visual.transformer.resblocks.{i}.mlp.c_fc.bias"},
    {"layers.{i}.mlp.fc2.weight", "visual.transformer.resblocks.{i}.mlp.c_proj.weight"},
    {"layers.{i}.mlp.fc2.bias", "visual.transformer.resblocks.{i}.mlp.c_proj.bias"},
    {"post_norm.weight", "visual.ln_post.weight"},
    {"post_norm.bias", "visual.ln_post.bias"},
    {"projection", "visual.proj^T"},
};
#define N_ALIASES(a) ((int64_t)(sizeof(a) / sizeof *(a)))

static void put_openclip_visual(struct st_file *f, struct bag *b, struct vit_ref *w) {
    const struct mp_vit_config *c = &w->c;
    int64_t D = c->width, p = c->patch_size, G = c->image_size / p, M = c->mlp;
    st_put(f, 0, w->class_emb, SHAPE(D), "visual.class_embedding");
    st_put(f, 0, w->patch_w, SHAPE(D, 3, p, p), "visual.conv1.weight");
    st_put(f, 0, w->pos, SHAPE(1 + G * G, D), "visual.positional_embedding");
    st_put(f, 0, w->pre_w, SHAPE(D), "visual.ln_pre.weight");
    st_put(f, 0, w->pre_b, SHAPE(D), "visual.ln_pre.bias");
    for (int64_t l = 0; l < c->layers; l++) {
        struct ref_layer *y = &w->layers[l];
        const char *at = "visual.transformer.resblocks";
        long long i = (long long)l;
        st_put(f, 0, y->ln1_w, SHAPE(D), "%s.%lld.ln_1.weight", at, i);
        st_put(f, 0, y->ln1_b, SHAPE(D), "%s.%lld.ln_1.bias", at, i);
        st_put(f, 0, y->qkv_w, SHAPE(3 * D, D), "%s.%lld.attn.in_proj_weight", at, i);
        st_put(f, 0, y->qkv_b, SHAPE(3 * D), "%s.%lld.attn.in_proj_bias", at, i);
        st_put(f, 0, y->out_w, SHAPE(D, D), "%s.%lld.attn.out_proj.weight", at, i);
        st_put(f, 0, y->out_b, SHAPE(D), "%s.%lld.attn.out_proj.bias", at, i);
        st_put(f, 0, y->ln2_w, SHAPE(D), "%s.%lld.ln_2.weight", at, i);
        st_put(f, 0, y->ln2_b, SHAPE(D), "%s.%lld.ln_2.bias", at, i);
        st_put(f, 0, y->fc1_w, SHAPE(M, D), "%s.%lld.mlp.c_fc.weight", at, i);
        st_put(f, 0, y->fc1_b, SHAPE(M), "%s.%lld.mlp.c_fc.bias", at, i);
        st_put(f, 0, y->fc2_w, SHAPE(D, M), "%s.%lld.mlp.c_proj.weight", at, i);
        st_put(f, 0, y->fc2_b, SHAPE(D), "%s.%lld.mlp.c_proj.bias", at, i);
    }
    st_put(f, 0, w->post_w, SHAPE(D), "visual.ln_post.weight");
    st_put(f, 0, w->post_b, SHAPE(D), "visual.ln_post.bias");
    st_put_t(f, b, w->proj, c->projection, D, "visual.proj");
}

static void test_clip_vit(void) {
    struct bag b = {0};
    struct vit_ref w;
    vit_ref_init(&w, &b, &clip_vit_config, 101);
    static struct st_file f;
    f.n = 0;
    put_openclip_visual(&f, &b, &w);
    char path[64];
    struct mp_safetensors *st = st_open(&f, path);
    struct mp_checkpoint ck = {&st, 1, openclip_visual, N_ALIASES(openclip_visual)};
    struct mp_vit *vit = NULL;
    if (st && CHECK(mp_vit_init(&vit, &clip_vit_config, &ck) == MP_STATUS_OK, "clip vit init: %s", mp_last_error())) {
        mp_safetensors_close(st), st = NULL; // the model holds the mapping
        int64_t S = 24, N = 3;
        unsigned seed = 5;
        const float *pixels = rnd(&b, N * 3 * S * S, &seed, 0.0f, 1.5f);
        CHECK(mp_vit_output_dim(vit, MP_VIT_POOL_CLS) == 16 && mp_vit_output_dim(vit, MP_VIT_POOL_MEAN) == 0 &&
                  mp_vit_output_dim(vit, MP_VIT_POOL_CLS_MEAN) == 0,
              "clip vit output dims");
        CHECK(memcmp(mp_vit_positions(vit), w.pos, (size_t)(10 * 32) * sizeof(float)) == 0,
              "mp_vit_positions is the checkpoint's table");
        check_vit(vit, ref_vit(&b, &w, pixels, N, S, NULL, MP_VIT_POOL_CLS), pixels, N, S, NULL, MP_VIT_POOL_CLS,
                  "clip vit N=3");
        // A smaller batch next: the model's buffers and packed layers are reused.
        check_vit(vit, ref_vit(&b, &w, pixels + 3 * S * S, 1, S, NULL, MP_VIT_POOL_CLS), pixels + 3 * S * S, 1, S,
                  NULL, MP_VIT_POOL_CLS, "clip vit N=1");
        float out[16];
        CHECK(mp_vit_encode(vit, out, pixels, 1, 32, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32) ==
                      MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "24"),
              "clip vit refuses 32-pixel images: %s", mp_last_error());
        CHECK(mp_vit_encode(vit, out, pixels, 1, S, NULL, MP_VIT_POOL_MEAN, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "clip vit has no MEAN pooling");
        CHECK(mp_vit_encode(vit, out, pixels, 1, S, NULL, MP_VIT_POOL_CLS, (enum mp_precision)7) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "clip vit refuses an unknown precision");
        CHECK(mp_vit_encode(vit, NULL, NULL, 0, S, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32) == MP_STATUS_OK,
              "clip vit encodes an empty batch: %s", mp_last_error());
    }
    mp_vit_free(vit);
    mp_safetensors_close(st);
    bag_free(&b);
}

/* ---------------------------------------------------------------- DINOv2: transformers layout */

static const struct mp_vit_config dinov2_config = {MP_VIT_DINOV2, 32, 8, 32, 2, 2, 64, 0, 2, 0, 1e-6f,
                                                   MP_ACTIVATION_GELU};

/* transformers' Dinov2WithRegisters names, with q/k/v concatenated; the key bias is absent
 * (zeros in the middle of a concatenation) and the second layer's fc2 bias is missing from
 * the file, so `| zeros` supplies it. Two shards: embeddings and layer 0, then the rest. */
static const struct mp_weight_alias hf_dinov2[] = {
    {"class_embedding", "embeddings.cls_token"},
    {"register_tokens", "embeddings.register_tokens"},
    {"patch_embedding.weight", "embeddings.patch_embeddings.projection.weight"},
    {"patch_embedding.bias", "embeddings.patch_embeddings.projection.bias"},
    {"position_embedding", "embeddings.position_embeddings"},
    {"layers.{i}.norm1.weight", "encoder.layer.{i}.norm1.weight"},
    {"layers.{i}.norm1.bias", "encoder.layer.{i}.norm1.bias"},
    {"layers.{i}.attn.qkv.weight", "encoder.layer.{i}.attention.attention.query.weight + "
                                   "encoder.layer.{i}.attention.attention.key.weight + "
                                   "encoder.layer.{i}.attention.attention.value.weight"},
    {"layers.{i}.attn.qkv.bias",
     "encoder.layer.{i}.attention.attention.query.bias+zeros+ encoder.layer.{i}.attention.attention.value.bias"},
    {"layers.{i}.attn.out.weight", "encoder.layer.{i}.attention.output.dense.weight"},
    {"layers.{i}.attn.out.bias", "encoder.layer.{i}.attention.output.dense.bias"},
    {"layers.{i}.scale1", "encoder.layer.{i}.layer_scale1.lambda1"},
    {"layers.{i}.norm2.weight", "encoder.layer.{i}.norm2.weight"},
    {"layers.{i}.norm2.bias", "encoder.layer.{i}.norm2.bias"},
    {"layers.{i}.mlp.fc1.weight", "encoder.layer.{i}.mlp.fc1.weight"},
    {"layers.{i}.mlp.fc1.bias", "encoder.layer.{i}.mlp.fc1.bias"},
    {"layers.{i}.mlp.fc2.weight", "encoder.layer.{i}.mlp.fc2.weight"},
    {"layers.{i}.mlp.fc2.bias", "encoder.layer.{i}.mlp.fc2.bias | zeros"},
    {"layers.{i}.scale2", "encoder.layer.{i}.layer_scale2.lambda1"},
    {"post_norm.weight", "layernorm.weight"},
    {"post_norm.bias", "layernorm.bias"},
};

static void put_hf_dinov2(struct st_file *shard[2], struct vit_ref *w) {
    const struct mp_vit_config *c = &w->c;
    int64_t D = c->width, p = c->patch_size, G = c->image_size / p, M = c->mlp, R = c->registers;
    struct st_file *f = shard[0];
    st_put(f, 0, w->class_emb, SHAPE(1, 1, D), "embeddings.cls_token");
    st_put(f, 0, w->registers, SHAPE(1, R, D), "embeddings.register_tokens");
    st_put(f, 0, w->patch_w, SHAPE(D, 3, p, p), "embeddings.patch_embeddings.projection.weight");
    st_put(f, 0, w->patch_b, SHAPE(D), "embeddings.patch_embeddings.projection.bias");
    st_put(f, 0, w->pos, SHAPE(1, 1 + G * G, D), "embeddings.position_embeddings");
    for (int64_t l = 0; l < c->layers; l++) {
        struct ref_layer *y = &w->layers[l];
        f = shard[l > 0];
        long long i = (long long)l;
        const char *at = "encoder.layer";
        st_put(f, 0, y->ln1_w, SHAPE(D), "%s.%lld.norm1.weight", at, i);
        st_put(f, 0, y->ln1_b, SHAPE(D), "%s.%lld.norm1.bias", at, i);
        const char *qkv[3] = {"query", "key", "value"};
        for (int k = 0; k < 3; k++) st_put(f, 0, y->qkv_w + k * D * D, SHAPE(D, D), "%s.%lld.attention.attention.%s.weight", at, i, qkv[k]);
        memset(y->qkv_b + D, 0, (size_t)D * sizeof *y->qkv_b); // no key bias in this checkpoint
        st_put(f, 0, y->qkv_b, SHAPE(D), "%s.%lld.attention.attention.query.bias", at, i);
        st_put(f, 0, y->qkv_b + 2 * D, SHAPE(D), "%s.%lld.attention.attention.value.bias", at, i);
        st_put(f, 0, y->out_w, SHAPE(D, D), "%s.%lld.attention.output.dense.weight", at, i);
        st_put(f, 0, y->out_b, SHAPE(D), "%s.%lld.attention.output.dense.bias", at, i);
        st_put(f, 0, y->ls1, SHAPE(D), "%s.%lld.layer_scale1.lambda1", at, i);
        st_put(f, 0, y->ln2_w, SHAPE(D), "%s.%lld.norm2.weight", at, i);
        st_put(f, 0, y->ln2_b, SHAPE(D), "%s.%lld.norm2.bias", at, i);
        st_put(f, 0, y->fc1_w, SHAPE(M, D), "%s.%lld.mlp.fc1.weight", at, i);
        st_put(f, 0, y->fc1_b, SHAPE(M), "%s.%lld.mlp.fc1.bias", at, i);
        st_put(f, 0, y->fc2_w, SHAPE(D, M), "%s.%lld.mlp.fc2.weight", at, i);
        if (l == 0) st_put(f, 0, y->fc2_b, SHAPE(D), "%s.%lld.mlp.fc2.bias", at, i);
        else memset(y->fc2_b, 0, (size_t)D * sizeof *y->fc2_b); // absent: `| zeros`
        st_put(f, 0, y->ls2, SHAPE(D), "%s.%lld.layer_scale2.lambda1", at, i);
    }
    f = shard[1];
    st_put(f, 0, w->post_w, SHAPE(D), "layernorm.weight");
    st_put(f, 0, w->post_b, SHAPE(D), "layernorm.bias");
}

static void test_dinov2(void) {
    struct bag b = {0};
    struct vit_ref w;
    vit_ref_init(&w, &b, &dinov2_config, 202);
    static struct st_file f0, f1;
    f0.n = f1.n = 0;
    struct st_file *shards[2] = {&f0, &f1};
    put_hf_dinov2(shards, &w);
    char path[2][64];
    struct mp_safetensors *st[2] = {st_open(&f0, path[0]), st_open(&f1, path[1])};
    struct mp_checkpoint ck = {st, 2, hf_dinov2, N_ALIASES(hf_dinov2)};
    struct mp_vit *vit = NULL;
    if (st[0] && st[1] &&
        CHECK(mp_vit_init(&vit, &dinov2_config, &ck) == MP_STATUS_OK, "dinov2 init: %s", mp_last_error())) {
        mp_safetensors_close(st[0]), mp_safetensors_close(st[1]);
        st[0] = st[1] = NULL;
        int64_t D = 32, N = 2;
        unsigned seed = 9;
        CHECK(mp_vit_output_dim(vit, MP_VIT_POOL_CLS) == D && mp_vit_output_dim(vit, MP_VIT_POOL_MEAN) == D &&
                  mp_vit_output_dim(vit, MP_VIT_POOL_CLS_MEAN) == 2 * D,
              "dinov2 output dims");
        // The checkpoint's 4x4 grid; then 35 pixels (the convolution drops the last 3 rows
        // and columns, same grid); then 24 pixels, a 3x3 grid with caller-given positions.
        const int64_t sizes[] = {32, 35, 24};
        const float *positions = rnd(&b, (1 + 9) * D, &seed, 0.0f, 0.5f);
        for (int k = 0; k < 3; k++) {
            int64_t S = sizes[k];
            const float *pos = S == 24 ? positions : NULL;
            const float *pixels = rnd(&b, N * 3 * S * S, &seed, 0.0f, 1.5f);
            const enum mp_vit_pooling poolings[] = {MP_VIT_POOL_CLS_MEAN, MP_VIT_POOL_CLS, MP_VIT_POOL_MEAN};
            const char *names[] = {"CLS_MEAN", "CLS", "MEAN"};
            for (int q = 0; q < 3; q++) {
                char label[80];
                snprintf(label, sizeof label, "dinov2 S=%lld %s", (long long)S, names[q]);
                check_vit(vit, ref_vit(&b, &w, pixels, N, S, pos, poolings[q]), pixels, N, S, pos, poolings[q], label);
            }
        }
        float out[64];
        const float *pixels = rnd(&b, 3 * 24 * 24, &seed, 0.0f, 1.0f);
        CHECK(mp_vit_encode(vit, out, pixels, 1, 24, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32) ==
                      MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "position"),
              "dinov2 needs positions for a 3x3 grid: %s", mp_last_error());
        CHECK(mp_vit_encode(vit, out, pixels, 1, 7, NULL, MP_VIT_POOL_CLS, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "dinov2 refuses images smaller than a patch");
    }
    mp_vit_free(vit);
    mp_safetensors_close(st[0]), mp_safetensors_close(st[1]);
    bag_free(&b);
}

/* ---------------------------------------------------------------- DINOv2-g style: SwiGLU, BF16 file */

static const struct mp_vit_config dinov2_swiglu_config = {MP_VIT_DINOV2, 16, 8, 16, 2, 2, 24, 0, 0, 1, 1e-6f,
                                                          MP_ACTIVATION_GELU};

// Canonical names need no alias; only fc1 comes from two halves stored transposed.
static const struct mp_weight_alias swiglu_aliases[] = {
    {"layers.{i}.mlp.fc1.weight", "layers.{i}.mlp.w1^T + layers.{i}.mlp.w2^T"},
};

static void test_dinov2_swiglu(void) {
    struct bag b = {0};
    struct vit_ref w;
    const struct mp_vit_config *c = &dinov2_swiglu_config;
    vit_ref_init(&w, &b, c, 303);
    int64_t D = c->width, p = c->patch_size, G = c->image_size / p, M = c->mlp;
    static struct st_file f;
    f.n = 0;
    // Every tensor stored as BF16 (read by conversion, copied); the reference uses the rounded values.
    st_put(&f, 1, w.class_emb, SHAPE(D), "class_embedding");
    st_put(&f, 1, w.patch_w, SHAPE(D, 3, p, p), "patch_embedding.weight");
    st_put(&f, 1, w.patch_b, SHAPE(D), "patch_embedding.bias");
    st_put(&f, 1, w.pos, SHAPE(1 + G * G, D), "position_embedding");
    for (long long l = 0; l < c->layers; l++) {
        struct ref_layer *y = &w.layers[l];
        st_put(&f, 1, y->ln1_w, SHAPE(D), "layers.%lld.norm1.weight", l);
        st_put(&f, 1, y->ln1_b, SHAPE(D), "layers.%lld.norm1.bias", l);
        st_put(&f, 1, y->qkv_w, SHAPE(3 * D, D), "layers.%lld.attn.qkv.weight", l);
        st_put(&f, 1, y->qkv_b, SHAPE(3 * D), "layers.%lld.attn.qkv.bias", l);
        st_put(&f, 1, y->out_w, SHAPE(D, D), "layers.%lld.attn.out.weight", l);
        st_put(&f, 1, y->out_b, SHAPE(D), "layers.%lld.attn.out.bias", l);
        st_put(&f, 1, y->ls1, SHAPE(D), "layers.%lld.scale1", l);
        st_put(&f, 1, y->ln2_w, SHAPE(D), "layers.%lld.norm2.weight", l);
        st_put(&f, 1, y->ln2_b, SHAPE(D), "layers.%lld.norm2.bias", l);
        // The transposed halves are stored F32 (st_put_t), holding bf16 values like the rest.
        for (int64_t i = 0; i < 2 * M * D; i++) y->fc1_w[i] = mp_bf16_to_f32(mp_f32_to_bf16(y->fc1_w[i]));
        st_put_t(&f, &b, y->fc1_w, M, D, "layers.%lld.mlp.w1", l);         // gate rows
        st_put_t(&f, &b, y->fc1_w + M * D, M, D, "layers.%lld.mlp.w2", l); // up rows
        st_put(&f, 1, y->fc1_b, SHAPE(2 * M), "layers.%lld.mlp.fc1.bias", l);
        st_put(&f, 1, y->fc2_w, SHAPE(D, M), "layers.%lld.mlp.fc2.weight", l);
        st_put(&f, 1, y->fc2_b, SHAPE(D), "layers.%lld.mlp.fc2.bias", l);
        st_put(&f, 1, y->ls2, SHAPE(D), "layers.%lld.scale2", l);
    }
    st_put(&f, 1, w.post_w, SHAPE(D), "post_norm.weight");
    st_put(&f, 1, w.post_b, SHAPE(D), "post_norm.bias");
    char path[64];
    struct mp_safetensors *st = st_open(&f, path);
    struct mp_checkpoint ck = {&st, 1, swiglu_aliases, N_ALIASES(swiglu_aliases)};
    struct mp_vit *vit = NULL;
    if (st && CHECK(mp_vit_init(&vit, c, &ck) == MP_STATUS_OK, "dinov2 swiglu init: %s", mp_last_error())) {
        int64_t S = 16, N = 3;
        unsigned seed = 13;
        const float *pixels = rnd(&b, N * 3 * S * S, &seed, 0.0f, 1.5f);
        check_vit(vit, ref_vit(&b, &w, pixels, N, S, NULL, MP_VIT_POOL_CLS_MEAN), pixels, N, S, NULL,
                  MP_VIT_POOL_CLS_MEAN, "dinov2 swiglu CLS_MEAN");
    }
    mp_vit_free(vit);
    mp_safetensors_close(st);
    bag_free(&b);
}

/* ---------------------------------------------------------------- CLIP text: transformers layout */

static const struct mp_text_config clip_text_config = {MP_TEXT_CLIP, 50, 12, 0, 32, 2, 2, 64, 16, 1e-5f,
                                                       MP_ACTIVATION_QUICK_GELU};

#define HF_TEXT "text_model.encoder.layers.{i}."
static const struct mp_weight_alias hf_clip_text[] = {
    {"token_embedding", "text_model.embeddings.token_embedding.weight"},
    {"position_embedding", "text_model.embeddings.position_embedding.weight"},
    {"layers.{i}.norm1.weight", HF_TEXT "layer_norm1.weight"},
    {"layers.{i}.norm1.bias", HF_TEXT "layer_norm1.bias"},
    {"layers.{i}.attn.qkv.weight",
     HF_TEXT "self_attn.q_proj.weight + " HF_TEXT "self_attn.k_proj.weight + " HF_TEXT "self_attn.v_proj.weight"},
    {"layers.{i}.attn.qkv.bias",
     HF_TEXT "self_attn.q_proj.bias + " HF_TEXT "self_attn.k_proj.bias + " HF_TEXT "self_attn.v_proj.bias"},
    {"layers.{i}.attn.out.weight", HF_TEXT "self_attn.out_proj.weight"},
    {"layers.{i}.attn.out.bias", HF_TEXT "self_attn.out_proj.bias"},
    {"layers.{i}.norm2.weight", HF_TEXT "layer_norm2.weight"},
    {"layers.{i}.norm2.bias", HF_TEXT "layer_norm2.bias"},
    {"layers.{i}.mlp.fc1.weight", HF_TEXT "mlp.fc1.weight"},
    {"layers.{i}.mlp.fc1.bias", HF_TEXT "mlp.fc1.bias"},
    {"layers.{i}.mlp.fc2.weight", HF_TEXT "mlp.fc2.weight"},
    {"layers.{i}.mlp.fc2.bias", HF_TEXT "mlp.fc2.bias"},
    {"final_norm.weight", "text_model.final_layer_norm.weight"},
    {"final_norm.bias", "text_model.final_layer_norm.bias"},
    {"projection", "text_projection.weight"},
};

static void put_hf_clip_text(struct st_file *f, struct text_ref *w) {
    const struct mp_text_config *c = &w->c;
    int64_t D = c->width, M = c->mlp;
    st_put(f, 1, w->tok, SHAPE(c->vocab, D), "text_model.embeddings.token_embedding.weight"); // BF16: converted
    st_put(f, 0, w->pos, SHAPE(c->positions, D), "text_model.embeddings.position_embedding.weight");
    for (long long l = 0; l < c->layers; l++) {
        struct ref_layer *y = &w->layers[l];
        const char *at = "text_model.encoder.layers";
        st_put(f, 0, y->ln1_w, SHAPE(D), "%s.%lld.layer_norm1.weight", at, l);
        st_put(f, 0, y->ln1_b, SHAPE(D), "%s.%lld.layer_norm1.bias", at, l);
        const char *qkv[3] = {"q", "k", "v"};
        for (int k = 0; k < 3; k++) {
            st_put(f, 0, y->qkv_w + k * D * D, SHAPE(D, D), "%s.%lld.self_attn.%s_proj.weight", at, l, qkv[k]);
            st_put(f, 0, y->qkv_b + k * D, SHAPE(D), "%s.%lld.self_attn.%s_proj.bias", at, l, qkv[k]);
        }
        st_put(f, 0, y->out_w, SHAPE(D, D), "%s.%lld.self_attn.out_proj.weight", at, l);
        st_put(f, 0, y->out_b, SHAPE(D), "%s.%lld.self_attn.out_proj.bias", at, l);
        st_put(f, 0, y->ln2_w, SHAPE(D), "%s.%lld.layer_norm2.weight", at, l);
        st_put(f, 0, y->ln2_b, SHAPE(D), "%s.%lld.layer_norm2.bias", at, l);
        st_put(f, 0, y->fc1_w, SHAPE(M, D), "%s.%lld.mlp.fc1.weight", at, l);
        st_put(f, 0, y->fc1_b, SHAPE(M), "%s.%lld.mlp.fc1.bias", at, l);
        st_put(f, 0, y->fc2_w, SHAPE(D, M), "%s.%lld.mlp.fc2.weight", at, l);
        st_put(f, 0, y->fc2_b, SHAPE(D), "%s.%lld.mlp.fc2.bias", at, l);
    }
    st_put(f, 0, w->final_w, SHAPE(D), "text_model.final_layer_norm.weight");
    st_put(f, 0, w->final_b, SHAPE(D), "text_model.final_layer_norm.bias");
    st_put(f, 0, w->proj, SHAPE(c->projection, D), "text_projection.weight");
}

static void test_clip_text(void) {
    struct bag b = {0};
    struct text_ref w;
    text_ref_init(&w, &b, &clip_text_config, 404);
    static struct st_file f;
    f.n = 0;
    put_hf_clip_text(&f, &w);
    char path[64];
    struct mp_safetensors *st = st_open(&f, path);
    struct mp_checkpoint ck = {&st, 1, hf_clip_text, N_ALIASES(hf_clip_text)};
    // Three sequences of 1, 7 and 12 (= P) tokens, the last of each standing for end-of-text.
    const int64_t offsets[] = {0, 1, 8, 20};
    int64_t ids[20], N = 3;
    unsigned seed = 21;
    for (int i = 0; i < 20; i++) ids[i] = rand_r(&seed) % 50;
    struct mp_text *m = NULL;
    if (st && CHECK(mp_text_init(&m, &clip_text_config, &ck) == MP_STATUS_OK, "clip text init: %s", mp_last_error())) {
        CHECK(mp_text_output_dim(m, MP_TEXT_POOL_LAST) == 16 && mp_text_output_dim(m, MP_TEXT_POOL_MEAN) == 0 &&
                  mp_text_output_dim(m, MP_TEXT_POOL_CLS) == 0,
              "clip text output dims");
        check_text(m, ref_text(&b, &w, ids, NULL, offsets, N, MP_TEXT_POOL_LAST, 16), ids, NULL, offsets, N,
                   MP_TEXT_POOL_LAST, "clip text");
        float out[3 * 16];
        const int64_t types[20] = {0};
        CHECK(mp_text_encode(m, out, ids, NULL, offsets, N, MP_TEXT_POOL_MEAN, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "clip text has no MEAN pooling");
        CHECK(mp_text_encode(m, out, ids, types, offsets, N, MP_TEXT_POOL_LAST, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "clip text refuses token types");
        int64_t bad_ids[20];
        memcpy(bad_ids, ids, sizeof bad_ids);
        bad_ids[10] = 50; // sequence 2, token 2
        CHECK(mp_text_encode(m, out, bad_ids, NULL, offsets, N, MP_TEXT_POOL_LAST, MP_PRECISION_FP32) ==
                      MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "sequence 2, token 2") &&
                  has(mp_last_error(), "50"),
              "id out of range named: %s", mp_last_error());
        const int64_t too_long[] = {0, 13};
        CHECK(mp_text_encode(m, out, ids, NULL, too_long, 1, MP_TEXT_POOL_LAST, MP_PRECISION_FP32) ==
                      MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "13 tokens"),
              "13 tokens for 12 positions: %s", mp_last_error());
        const int64_t empty[] = {0, 1, 1};
        CHECK(mp_text_encode(m, out, ids, NULL, empty, 2, MP_TEXT_POOL_LAST, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "an empty sequence is refused");
    }
    mp_text_free(m), m = NULL;
    // The same file without the projection (E = 0): the final LayerNorm's output, D wide.
    struct mp_text_config unprojected = clip_text_config;
    unprojected.projection = 0;
    if (st && CHECK(mp_text_init(&m, &unprojected, &ck) == MP_STATUS_OK, "clip text E=0 init: %s", mp_last_error())) {
        CHECK(mp_text_output_dim(m, MP_TEXT_POOL_LAST) == 32, "clip text E=0 output dim");
        check_text(m, ref_text(&b, &w, ids, NULL, offsets, N, MP_TEXT_POOL_LAST, 0), ids, NULL, offsets, N,
                   MP_TEXT_POOL_LAST, "clip text E=0");
    }
    mp_text_free(m);
    mp_safetensors_close(st);
    bag_free(&b);
}

/* ---------------------------------------------------------------- BERT: transformers layout */

static const struct mp_text_config bert_config = {MP_TEXT_BERT, 40, 16, 2, 32, 2, 2, 64, 0, 1e-12f,
                                                  MP_ACTIVATION_GELU};

// BertModel's names, which some checkpoints prefix with "bert.": `|` takes either.
#define HF_BERT "encoder.layer.{i}."
static const struct mp_weight_alias hf_bert[] = {
    {"token_embedding", "bert.embeddings.word_embeddings.weight | embeddings.word_embeddings.weight"},
    {"position_embedding", "bert.embeddings.position_embeddings.weight | embeddings.position_embeddings.weight"},
    {"token_type_embedding", "embeddings.token_type_embeddings.weight"},
    {"embedding_norm.weight", "embeddings.LayerNorm.weight"},
    {"embedding_norm.bias", "embeddings.LayerNorm.bias"},
    {"layers.{i}.attn.qkv.weight", HF_BERT "attention.self.query.weight + " HF_BERT "attention.self.key.weight + " HF_BERT
                                   "attention.self.value.weight"},
    {"layers.{i}.attn.qkv.bias",
     HF_BERT "attention.self.query.bias + " HF_BERT "attention.self.key.bias + " HF_BERT "attention.self.value.bias"},
    {"layers.{i}.attn.out.weight", HF_BERT "attention.output.dense.weight"},
    {"layers.{i}.attn.out.bias", HF_BERT "attention.output.dense.bias"},
    {"layers.{i}.norm1.weight", HF_BERT "attention.output.LayerNorm.weight"},
    {"layers.{i}.norm1.bias", HF_BERT "attention.output.LayerNorm.bias"},
    {"layers.{i}.mlp.fc1.weight", HF_BERT "intermediate.dense.weight"},
    {"layers.{i}.mlp.fc1.bias", HF_BERT "intermediate.dense.bias"},
    {"layers.{i}.mlp.fc2.weight", HF_BERT "output.dense.weight"},
    {"layers.{i}.mlp.fc2.bias", HF_BERT "output.dense.bias"},
    {"layers.{i}.norm2.weight", HF_BERT "output.LayerNorm.weight"},
    {"layers.{i}.norm2.bias", HF_BERT "output.LayerNorm.bias"},
};

static void put_hf_bert(struct st_file *f, struct text_ref *w) {
    const struct mp_text_config *c = &w->c;
    int64_t D = c->width, M = c->mlp;
    st_put(f, 0, w->tok, SHAPE(c->vocab, D), "embeddings.word_embeddings.weight");
    st_put(f, 0, w->pos, SHAPE(c->positions, D), "embeddings.position_embeddings.weight");
    st_put(f, 1, w->types, SHAPE(c->token_types, D), "embeddings.token_type_embeddings.weight");
    st_put(f, 0, w->emb_w, SHAPE(D), "embeddings.LayerNorm.weight");
    st_put(f, 0, w->emb_b, SHAPE(D), "embeddings.LayerNorm.bias");
    for (long long l = 0; l < c->layers; l++) {
        struct ref_layer *y = &w->layers[l];
        const char *at = "encoder.layer";
        const char *qkv[3] = {"query", "key", "value"};
        for (int k = 0; k < 3; k++) {
            st_put(f, 0, y->qkv_w + k * D * D, SHAPE(D, D), "%s.%lld.attention.self.%s.weight", at, l, qkv[k]);
            st_put(f, 0, y->qkv_b + k * D, SHAPE(D), "%s.%lld.attention.self.%s.bias", at, l, qkv[k]);
        }
        st_put(f, 0, y->out_w, SHAPE(D, D), "%s.%lld.attention.output.dense.weight", at, l);
        st_put(f, 0, y->out_b, SHAPE(D), "%s.%lld.attention.output.dense.bias", at, l);
        st_put(f, 0, y->ln1_w, SHAPE(D), "%s.%lld.attention.output.LayerNorm.weight", at, l);
        st_put(f, 0, y->ln1_b, SHAPE(D), "%s.%lld.attention.output.LayerNorm.bias", at, l);
        st_put(f, 0, y->fc1_w, SHAPE(M, D), "%s.%lld.intermediate.dense.weight", at, l);
        st_put(f, 0, y->fc1_b, SHAPE(M), "%s.%lld.intermediate.dense.bias", at, l);
        st_put(f, 0, y->fc2_w, SHAPE(D, M), "%s.%lld.output.dense.weight", at, l);
        st_put(f, 0, y->fc2_b, SHAPE(D), "%s.%lld.output.dense.bias", at, l);
        st_put(f, 0, y->ln2_w, SHAPE(D), "%s.%lld.output.LayerNorm.weight", at, l);
        st_put(f, 0, y->ln2_b, SHAPE(D), "%s.%lld.output.LayerNorm.bias", at, l);
    }
}

static void test_bert(void) {
    struct bag b = {0};
    struct text_ref w;
    text_ref_init(&w, &b, &bert_config, 505);
    static struct st_file f;
    f.n = 0;
    put_hf_bert(&f, &w);
    char path[64];
    struct mp_safetensors *st = st_open(&f, path);
    struct mp_checkpoint ck = {&st, 1, hf_bert, N_ALIASES(hf_bert)};
    struct mp_text *m = NULL;
    if (st && CHECK(mp_text_init(&m, &bert_config, &ck) == MP_STATUS_OK, "bert init: %s", mp_last_error())) {
        mp_safetensors_close(st), st = NULL;
        // Four sequences of 5, 16 (= P), 1 and 9 tokens; token types 0 then 1 (a sentence pair).
        const int64_t offsets[] = {0, 5, 21, 22, 31};
        int64_t ids[31], types[31], N = 4;
        unsigned seed = 33;
        for (int s = 0; s < 4; s++)
            for (int64_t t = offsets[s]; t < offsets[s + 1]; t++)
                ids[t] = rand_r(&seed) % 40, types[t] = t - offsets[s] >= (offsets[s + 1] - offsets[s]) / 2;
        CHECK(mp_text_output_dim(m, MP_TEXT_POOL_MEAN) == 32 && mp_text_output_dim(m, MP_TEXT_POOL_CLS) == 32 &&
                  mp_text_output_dim(m, MP_TEXT_POOL_LAST) == 0,
              "bert output dims");
        check_text(m, ref_text(&b, &w, ids, types, offsets, N, MP_TEXT_POOL_MEAN, 0), ids, types, offsets, N,
                   MP_TEXT_POOL_MEAN, "bert MEAN with types");
        check_text(m, ref_text(&b, &w, ids, NULL, offsets, N, MP_TEXT_POOL_MEAN, 0), ids, NULL, offsets, N,
                   MP_TEXT_POOL_MEAN, "bert MEAN");
        check_text(m, ref_text(&b, &w, ids, types, offsets, N, MP_TEXT_POOL_CLS, 0), ids, types, offsets, N,
                   MP_TEXT_POOL_CLS, "bert CLS with types");
        float out[4 * 32];
        types[3] = 2;
        CHECK(mp_text_encode(m, out, ids, types, offsets, N, MP_TEXT_POOL_MEAN, MP_PRECISION_FP32) ==
                      MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "sequence 0, token 3"),
              "token type out of range named: %s", mp_last_error());
        CHECK(mp_text_encode(m, out, ids, NULL, offsets, N, MP_TEXT_POOL_LAST, MP_PRECISION_FP32) ==
                  MP_STATUS_INVALID_ARGUMENT,
              "bert has no LAST pooling");
    }
    mp_text_free(m);
    mp_safetensors_close(st);
    bag_free(&b);
}

/* ---------------------------------------------------------------- broken checkpoints */

// Writes `f`, inits a CLIP ViT (vit != 0) or CLIP/BERT text model from it and expects
// `status` with every `needles` in the message and no model.
static void expect_init_error(const struct st_file *f, int vit, const void *config, const struct mp_weight_alias *aliases,
                              int64_t n_aliases, enum mp_status status, const char *label, const char *needle1,
                              const char *needle2) {
    char path[64];
    struct mp_safetensors *st = st_open(f, path);
    if (!st) return;
    struct mp_checkpoint ck = {&st, 1, aliases, n_aliases};
    struct mp_vit *v = (struct mp_vit *)1;
    struct mp_text *t = (struct mp_text *)1;
    enum mp_status s = vit ? mp_vit_init(&v, config, &ck) : mp_text_init(&t, config, &ck);
    const char *msg = mp_last_error();
    CHECK(s == status && (vit ? v == NULL : t == NULL) && has(msg, needle1) && (!needle2 || has(msg, needle2)),
          "%s: status %s, message '%s' (wanted %s naming '%s'%s%s)", label, mp_status_str(s), msg,
          mp_status_str(status), needle1, needle2 ? " and " : "", needle2 ? needle2 : "");
    if (vit ? v != NULL && v != (struct mp_vit *)1 : t != NULL && t != (struct mp_text *)1) {
        if (vit) mp_vit_free(v);
        else mp_text_free(t);
    }
    mp_safetensors_close(st);
}

static void test_errors(void) {
    struct bag b = {0};
    static struct st_file f;
    struct vit_ref v;
    vit_ref_init(&v, &b, &clip_vit_config, 606);
    const int64_t nv = N_ALIASES(openclip_visual);
    const enum mp_status BAD = MP_STATUS_BAD_FORMAT, INVALID = MP_STATUS_INVALID_ARGUMENT;

    f.n = 0, put_openclip_visual(&f, &b, &v);
    st_remove(&f, "visual.transformer.resblocks.1.mlp.c_proj.weight");
    expect_init_error(&f, 1, &clip_vit_config, openclip_visual, nv, BAD, "missing tensor",
                      "'visual.transformer.resblocks.1.mlp.c_proj.weight'", "(32, 64)");

    f.n = 0, put_openclip_visual(&f, &b, &v);
    struct st_entry *e = st_find(&f, "visual.positional_embedding");
    e->shape[0] = 32, e->shape[1] = 10; // same bytes, transposed shape
    expect_init_error(&f, 1, &clip_vit_config, openclip_visual, nv, BAD, "wrong shape",
                      "'visual.positional_embedding' has shape (32, 10)", "expected (10, 32)");

    f.n = 0, put_openclip_visual(&f, &b, &v);
    e = st_find(&f, "visual.proj"); // stored (D, E) = (32, 16); given as (16, 32) it is not the transpose
    e->shape[0] = 16, e->shape[1] = 32;
    expect_init_error(&f, 1, &clip_vit_config, openclip_visual, nv, BAD, "wrong shape of a ^T source",
                      "'visual.proj' has shape (16, 32)", "expected (32, 16)");

    // A leading 2 is not a dropped 1: class_embedding stored (2, D). The message quotes the
    // rule as it would be stored, with the leading 1.
    f.n = 0, put_openclip_visual(&f, &b, &v);
    st_remove(&f, "visual.class_embedding");
    float *twice = bag_alloc(&b, 2 * 32 * sizeof(float));
    st_put(&f, 0, twice, SHAPE(2, 32), "visual.class_embedding");
    expect_init_error(&f, 1, &clip_vit_config, openclip_visual, nv, BAD, "extra leading dimension",
                      "'visual.class_embedding' has shape (2, 32)", "expected (1, 32)");

    f.n = 0, put_openclip_visual(&f, &b, &v);
    struct mp_weight_alias typo[N_ALIASES(openclip_visual) + 1];
    memcpy(typo, openclip_visual, sizeof openclip_visual);
    typo[nv] = (struct mp_weight_alias){"layers.{i}.attn.qkv_weight", "visual.x"};
    expect_init_error(&f, 1, &clip_vit_config, typo, nv + 1, INVALID, "alias for no tensor of the model",
                      "layers.{i}.attn.qkv_weight", NULL);

    struct mp_vit_config bad = clip_vit_config;
    bad.heads = 3; // 32 % 3 != 0
    expect_init_error(&f, 1, &bad, openclip_visual, nv, INVALID, "heads not dividing width", "inconsistent", NULL);
    bad = clip_vit_config, bad.projection = 0;
    expect_init_error(&f, 1, &bad, openclip_visual, nv, INVALID, "clip without projection", "inconsistent", NULL);
    bad = clip_vit_config, bad.kind = MP_VIT_DINOV2, bad.projection = 0; // DINOv2 rules: patch bias, scales
    expect_init_error(&f, 1, &bad, openclip_visual, nv, BAD, "dinov2 tensor absent from a CLIP file",
                      "'patch_embedding.bias'", "(32,)");

    // Text: a missing part of a concatenation, and `a | b` with neither present.
    struct text_ref t;
    text_ref_init(&t, &b, &clip_text_config, 707);
    f.n = 0, put_hf_clip_text(&f, &t);
    st_remove(&f, "text_model.encoder.layers.1.self_attn.k_proj.bias");
    expect_init_error(&f, 0, &clip_text_config, hf_clip_text, N_ALIASES(hf_clip_text), BAD, "missing part of a + b",
                      "'text_model.encoder.layers.1.self_attn.k_proj.bias'", "(32,)");
    f.n = 0, put_hf_clip_text(&f, &t);
    st_find(&f, "text_model.encoder.layers.0.self_attn.v_proj.weight")->shape[0] = 16;
    st_find(&f, "text_model.encoder.layers.0.self_attn.v_proj.weight")->shape[1] = 64;
    expect_init_error(&f, 0, &clip_text_config, hf_clip_text, N_ALIASES(hf_clip_text), BAD, "wrong shape of a part",
                      "'text_model.encoder.layers.0.self_attn.v_proj.weight' has shape (16, 64)", "expected (32, 32)");

    struct text_ref tb;
    text_ref_init(&tb, &b, &bert_config, 808);
    f.n = 0, put_hf_bert(&f, &tb);
    st_remove(&f, "embeddings.word_embeddings.weight");
    expect_init_error(&f, 0, &bert_config, hf_bert, N_ALIASES(hf_bert), BAD, "no alternative of a | b",
                      "'bert.embeddings.word_embeddings.weight'", "(40, 32)");
    struct mp_text_config bad_text = bert_config;
    bad_text.token_types = 3; // the file holds 2
    f.n = 0, put_hf_bert(&f, &tb);
    expect_init_error(&f, 0, &bad_text, hf_bert, N_ALIASES(hf_bert), BAD, "config disagreeing with the file",
                      "'embeddings.token_type_embeddings.weight' has shape (2, 32)", "expected (3, 32)");
    bad_text = bert_config, bad_text.projection = 8;
    expect_init_error(&f, 0, &bad_text, hf_bert, N_ALIASES(hf_bert), INVALID, "bert with a projection", "inconsistent",
                      NULL);

    // An empty checkpoint and NULL arguments.
    struct mp_checkpoint none = {NULL, 0, NULL, 0};
    struct mp_vit *vit = NULL;
    CHECK(mp_vit_init(&vit, &clip_vit_config, &none) == INVALID && !vit, "vit_init with no file: %s", mp_last_error());
    CHECK(mp_vit_init(NULL, &clip_vit_config, &none) == INVALID, "vit_init(NULL)");
    struct mp_text *text = NULL;
    CHECK(mp_text_init(&text, &bert_config, &none) == INVALID && !text, "text_init with no file: %s", mp_last_error());
    mp_vit_free(NULL), mp_text_free(NULL); // no-ops
    bag_free(&b);
}

int main(void) {
    test_clip_vit();
    test_dinov2();
    test_dinov2_swiglu();
    test_clip_text();
    test_bert();
    test_errors();
    return check_summary("test_encoders");
}
