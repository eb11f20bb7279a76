/* nn/block.h: one transformer layer, written once for every encoder: the pre-norm block of
 * ViT, DINOv2 and the CLIP text tower, and the post-norm block of BERT, over dense batches
 * (B sequences of T tokens) or packed sequences of any lengths.
 *
 *     pre-norm:  x += attn(ln1(x)); x += mlp(ln2(x))
 *     post-norm: x = ln1(x + attn(x)); x = ln2(x + mlp(x))
 *
 *     struct mp_block_buffers buf;
 *     size_t n32, n16;
 *     mp_block_buffers(&buf, NULL, NULL, &n32, &n16, &config, &tokens, precision); // sizes
 *     mp_block_buffers(&buf, f32, bf16, &n32, &n16, &config, &tokens, precision);  // views
 *     for (l = 0; l < L; l++) mp_block_forward(x, &buf, &blocks[l], &config, &tokens, precision);
 *
 * bf16 runs keep the matmul inputs (LayerNorm outputs, the MLP hidden layer and, on dense
 * batches, q/k/v and the attention output) in bf16; the residual stream, scores and softmax
 * stay fp32. A block's linear layers are packed on first use per precision. */
#ifndef MP_NN_BLOCK_H
#define MP_NN_BLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"
#include "nn/activation.h"
#include "nn/linear.h"

struct mp_block_config {
    int64_t            width;  // D
    int64_t            heads;  // H
    int64_t            mlp;    // M: MLP hidden features (SwiGLU: per half)
    int                swiglu; // fc1 gives the gate rows then the up rows; no activation in the matmul
    int                post_norm;
    float              eps;    // LayerNorm epsilon
    enum mp_activation activation;
};

// The tokens of one call: rows = B * T for a dense batch (offsets NULL), else offsets[N]
// packed rows, sequence s at rows offsets[s] .. offsets[s + 1] - 1; causal masks each token
// to those before it (the CLIP text tower; packed only).
struct mp_tokens {
    int64_t        rows;
    int64_t        B, T;    // dense
    const int64_t *offsets; // packed: (N + 1)
    int64_t        N;
    int            causal;
};

// One layer's weights (the encoder's, bound by name; they outlive the block) and its packed
// linear layers per precision.
struct mp_block {
    const float *ln1_w, *ln1_b;  // (D)
    const float *qkv_w, *qkv_b;  // (3D, D), (3D): q, k, v rows
    const float *out_w, *out_b;  // (D, D), (D)
    const float *ln2_w, *ln2_b;  // (D)
    const float *fc1_w, *fc1_b;  // (M1, D), (M1), M1 = 2M with SwiGLU
    const float *fc2_w, *fc2_b;  // (D, M), (D)
    struct mp_linear *qkv[2], *out[2], *fc1[2], *fc2[2]; // by enum mp_precision
};

// The activations a block needs besides the residual stream, as views of two arenas.
struct mp_block_buffers {
    float    *h, *qkv, *att, *mlp, *gated, *scores;
    uint16_t *h16, *qkv16, *att16, *mlp16, *probs16;
};

// Sizes (floats, bf16 halves) of the buffers for `tokens` into *n32, *n16; with f32 (and
// bf16 when *n16 > 0) given, also points `buf` into them.
void mp_block_buffers(struct mp_block_buffers *buf, float *f32, uint16_t *bf16, size_t *n32, size_t *n16,
                      const struct mp_block_config *config, const struct mp_tokens *tokens,
                      enum mp_precision precision);

// x (rows, D), the residual stream, in place. `precision` is the caller's, already checked.
enum mp_status mp_block_forward(float                         *x,
                                const struct mp_block_buffers *buf,
                                struct mp_block               *block,
                                const struct mp_block_config  *config,
                                const struct mp_tokens        *tokens,
                                enum mp_precision              precision);

// Frees the packed linear layers (not the weights).
void mp_block_release(struct mp_block *block);

// Activation memory kept by an encoder between calls, grown when a call needs more.
struct mp_arena {
    float    *f32;
    uint16_t *bf16;
    size_t    cap32, cap16;
};

// Makes room for n32 floats and n16 halves; MP_STATUS_OUT_OF_MEMORY naming `who`.
enum mp_status mp_arena_reserve(struct mp_arena *arena, size_t n32, size_t n16, const char *who);
void mp_arena_free(struct mp_arena *arena);

#endif
