/* encoders/text.h: one text Transformer for the CLIP text tower and BERT-family sentence
 * encoders, on packed token sequences of any lengths (no padding is ever computed).
 *
 *     struct mp_text *m;
 *     mp_text_init(&m, &config, tensors, count);   // tensors in mp_text's canonical order
 *     int64_t offsets[] = {0, 9, 21};               // two sequences: 9 and 12 tokens
 *     mp_text_encode(m, out, ids, NULL, offsets, 2, MP_TEXT_POOL_LAST, MP_PRECISION_FP32);
 *     mp_text_free(m);
 *
 * Canonical tensor order (the Python layer maps checkpoint names to it). V vocabulary, P
 * positions, D width, M mlp, E projection, Y token types.
 *   MP_TEXT_CLIP: token_embedding (V, D), position_embedding (P, D), the layers,
 *                 final_ln_weight (D), final_ln_bias (D), projection (E, D) if E > 0.
 *   MP_TEXT_BERT: word_embedding (V, D), position_embedding (P, D), token_type_embedding (Y, D),
 *                 embedding_ln_weight (D), embedding_ln_bias (D), the layers.
 *   Per layer: ln1_weight, ln1_bias (D), qkv_weight (3D, D), qkv_bias (3D), out_weight (D, D),
 *              out_bias (D), ln2_weight, ln2_bias (D), fc1_weight (M, D), fc1_bias (M),
 *              fc2_weight (D, M), fc2_bias (D).
 *   CLIP is pre-norm with a causal mask: x += attn(ln1(x)); x += mlp(ln2(x)).
 *   BERT is post-norm, unmasked: x = ln1(x + attn(x)); x = ln2(x + mlp(x)).
 * The handle copies the weights and must not be used by two threads at once. */
#ifndef MP_ENCODERS_TEXT_H
#define MP_ENCODERS_TEXT_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"
#include "encoders/vit.h"

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

// Number of tensors mp_text_init expects (-1 for an inconsistent config), and the element
// count of tensor i (-1 when out of range).
int64_t mp_text_tensor_count(const struct mp_text_config *config);
int64_t mp_text_tensor_numel(const struct mp_text_config *config, int64_t i);

enum mp_status mp_text_init(struct mp_text **text, const struct mp_text_config *config, const float *const *tensors,
                            int64_t count);

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
