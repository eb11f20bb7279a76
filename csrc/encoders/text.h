/* encoders/text.h: one text Transformer for the CLIP text tower and BERT-family sentence
 * encoders, on packed token sequences of any lengths (no padding is ever computed).
 *
 *     struct mp_text *m;
 *     mp_text_init(&m, &config, &checkpoint);      // weights by name, see weights/bind.h
 *     int64_t offsets[] = {0, 9, 21};               // two sequences: 9 and 12 tokens
 *     mp_text_encode(m, out, ids, NULL, offsets, 2, MP_TEXT_POOL_LAST, MP_PRECISION_FP32);
 *     mp_text_free(m);
 *
 * Tensors by canonical name (encoders/text.c has the table; layouts alias their own names
 * onto these, see weights/bind.h). V vocabulary, P positions, D width, M mlp, E projection,
 * Y token types:
 *   token_embedding (V, D), position_embedding (P, D),
 *   token_type_embedding (Y, D), embedding_norm.weight, embedding_norm.bias (D) [BERT],
 *   layers.{i}.norm1.weight, .norm1.bias (D), layers.{i}.attn.qkv.weight (3D, D), .qkv.bias (3D),
 *   layers.{i}.attn.out.weight (D, D), .out.bias (D), layers.{i}.norm2.weight, .norm2.bias (D),
 *   layers.{i}.mlp.fc1.weight (M, D), .fc1.bias (M), layers.{i}.mlp.fc2.weight (D, M), .fc2.bias (D),
 *   final_norm.weight, final_norm.bias (D) [CLIP], projection (E, D) [CLIP, E > 0].
 *   CLIP is pre-norm with a causal mask: x += attn(ln1(x)); x += mlp(ln2(x)).
 *   BERT is post-norm, unmasked: x = ln1(x + attn(x)); x = ln2(x + mlp(x)).
 * F32 tensors are used in place from the mapping (the handle holds the file). A handle must
 * not be used by two threads at once. */
#ifndef MP_ENCODERS_TEXT_H
#define MP_ENCODERS_TEXT_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"
#include "nn/activation.h"
#include "weights/checkpoint.h"

enum mp_text_kind { MP_TEXT_CLIP = 0, MP_TEXT_BERT };

// What mp_text_encode returns per sequence. LAST: the last token (CLIP pools at the end-of-text
// token: pass each sequence up to and including it), after the final LayerNorm and the
// projection. MEAN: the mean of the sequence's final hidden states (sentence-transformers'
// mean pooling over the attention mask). CLS: the first token's final hidden state.
enum mp_text_pooling { MP_TEXT_POOL_LAST = 0, MP_TEXT_POOL_MEAN, MP_TEXT_POOL_CLS };

struct mp_text_config {
    enum mp_text_kind  kind;
    int64_t            vocab;       // V
    int64_t            positions;   // P: the longest sequence
    int64_t            token_types; // Y: BERT; 0 for CLIP
    int64_t            width;       // D
    int64_t            layers;      // L
    int64_t            heads;       // H
    int64_t            mlp;         // M
    int64_t            projection;  // E: CLIP text projection, 0 for none; 0 for BERT
    float              eps;         // LayerNorm epsilon
    enum mp_activation activation;
};

struct mp_text;

// Reads the weights of `config` from `checkpoint`. Returns MP_STATUS_INVALID_ARGUMENT for an
// inconsistent config, MP_STATUS_BAD_FORMAT naming a missing or misshapen tensor.
enum mp_status mp_text_init(struct mp_text **text, const struct mp_text_config *config,
                            const struct mp_checkpoint *checkpoint);

// Encodes N packed sequences: sequence s is ids[offsets[s] .. offsets[s + 1]), 1 to P tokens,
// positions counted from 0 in each. token_types is NULL (all type 0) or packed like ids (BERT
// only). Ids out of range give MP_STATUS_INVALID_ARGUMENT naming the sequence and token.
enum mp_status mp_text_encode(struct mp_text      *text,
                              float               *out,         // (N, mp_text_output_dim(text, pooling))
                              const int64_t       *ids,         // (offsets[N])
                              const int64_t       *token_types, // (offsets[N]) or NULL
                              const int64_t       *offsets,     // (N + 1), offsets[0] == 0
                              int64_t              N,
                              enum mp_text_pooling pooling,
                              enum mp_precision    precision);

// Width of one output row for `pooling`: E for CLIP LAST with a projection, else D; 0 if the
// model does not offer it (CLIP pools only LAST).
int64_t mp_text_output_dim(const struct mp_text *text, enum mp_text_pooling pooling);

void mp_text_free(struct mp_text *text);

#endif
