/* nn/layers.h: the transformer layers of the encoders, fp32, rows in parallel.
 * Shapes: N rows of D features; B batch, T tokens, H heads, hd = D / H. Outputs are
 * caller-owned; `out` may equal `in` where a comment says so. */
#ifndef MP_NN_LAYERS_H
#define MP_NN_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"

// out = (in - mean) / sqrt(var + eps) * weight + bias per row (torch.nn.functional.layer_norm).
// Statistics in double: rows of 1024 floats keep full fp32 accuracy. out may equal in.
void layernorm_forward(float       *out,    // (N, D)
                       const float *in,     // (N, D)
                       const float *weight, // (D)
                       const float *bias,   // (D)
                       int64_t      N,
                       int64_t      D,
                       float        eps);

// layernorm_forward with the result rounded to bf16 (the input of a bf16 matmul).
void layernorm_forward_bf16(uint16_t    *out, // (N, D) bf16
                            const float *in,  // (N, D)
                            const float *weight,
                            const float *bias,
                            int64_t      N,
                            int64_t      D,
                            float        eps);

// In place: gelu (erf form, torch's default), or quick_gelu x * sigmoid(1.702 x) (OpenAI CLIP).
void gelu_forward(float *x, int64_t n);
void quick_gelu_forward(float *x, int64_t n);

// SwiGLU gate: out[n, i] = silu(in[n, i]) * in[n, H + i], silu(z) = z * sigmoid(z); each
// input row holds the gate projection then the up projection (DINOv2-g's MLP).
void swiglu_forward(float       *out, // (N, H)
                    const float *in,  // (N, 2 * H)
                    int64_t      N,
                    int64_t      H);

// Multi-head self-attention, no mask: out[b, t, h] = softmax(q k^T / sqrt(hd)) v for each head.
// qkv rows hold q, k and v side by side; a chunk of images at a time, the heads are copied
// into dense per-head blocks (q, k^T, v) for two batched matmuls around the softmax.
// `scores` holds attention_scores_size(...) floats: the chunk's scores, then the head copies.
// Matmuls run at `precision`, softmax in fp32.
enum mp_status attention_forward(float            *out,    // (B, T, D)
                                 float            *scores, // attention_scores_size(B, T, D, H)
                                 const float      *qkv,    // (B, T, 3 * D)
                                 int64_t           B,
                                 int64_t           T,
                                 int64_t           D,
                                 int64_t           H,
                                 enum mp_precision precision);

// attention_forward on bf16 q, k, v with a bf16 output: scores and softmax in fp32, the
// probabilities rounded to bf16 for p v. `work` holds the probabilities and per-head copies
// of q, k^T and v for a chunk of images.
size_t attention_bf16_workspace_size(int64_t B, int64_t T, int64_t D, int64_t H);

enum mp_status attention_forward_bf16(uint16_t       *out,    // (B, T, D) bf16
                                      float          *scores, // attention_scores_size(B, T, 0, H): scores only
                                      uint16_t       *work,   // attention_bf16_workspace_size(B, T, D, H)
                                      const uint16_t *qkv,    // (B, T, 3 * D) bf16
                                      int64_t         B,
                                      int64_t         T,
                                      int64_t         D,
                                      int64_t         H);

size_t attention_scores_size(int64_t B, int64_t T, int64_t D, int64_t H);

// Multi-head self-attention over N packed sequences of different lengths: sequence s holds
// rows offsets[s] .. offsets[s + 1] - 1 of qkv and out (offsets nondecreasing from 0). With
// `causal`, token t attends to tokens 0..t of its sequence only (the CLIP text tower).
enum mp_status attention_varlen_forward(float         *out,     // (offsets[N], D)
                                        const float   *qkv,     // (offsets[N], 3 * D)
                                        const int64_t *offsets, // (N + 1)
                                        int64_t        N,
                                        int64_t        D,
                                        int64_t        H,
                                        int            causal);

// Naive reference of attention_forward (scalar loops, scores one row at a time), for tests.
void attention_forward_naive(float *out, const float *qkv, int64_t B, int64_t T, int64_t D, int64_t H);

#endif
