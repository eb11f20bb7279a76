/* loss/infonce.h: InfoNCE over a batch, forward and backward fused, a block of rows at a time.
 *
 *     loss = mean_i [ -s(i, pos_i) / tau + logsumexp_j s(i, j) / tau ],   s = q c^T
 *
 * over every candidate j of the batch (minus false negatives, see `ids`). A block of at most
 * MP_INFONCE_ROWS query rows is scored at once (one GEMM), its softmax taken in place, turned
 * into d loss / d scores, and its contributions to dq (one GEMM) and dc (one GEMM,
 * accumulated) added: the three GEMMs an unfused implementation does, without ever holding
 * the B x N score matrix. The positive's part of the gradient (-1 / tau at (i, pos_i)) is
 * added exactly afterwards, outside the GEMMs. Extra memory: one MP_INFONCE_ROWS x N fp32
 * block plus O(B) doubles; MP_PRECISION_BF16 adds a bf16 copy of the block and c packed
 * twice for AMX (2 N E bf16 values: packing per block would cost as much as the GEMMs).
 *
 *     float loss;
 *     mp_infonce(&loss, dq, dc, NULL, q, c, pos, NULL, B, N, E, 0.02f, NULL, MP_PRECISION_FP32);
 */
#ifndef MP_LOSS_INFONCE_H
#define MP_LOSS_INFONCE_H

#include <stdint.h>

#include "core/onednn.h"
#include "core/status.h"

enum { MP_INFONCE_ROWS = 256 };

// Computes the loss and, when dq / dc / dtau are not NULL, its gradients. pos[i] in [0, N) is
// query i's positive. ids (N) may be NULL; otherwise candidate j != pos[i] with
// ids[j] == ids[pos[i]] is left out of row i's denominator (a duplicate of the positive).
// row_loss (B) may be NULL; it receives each row's term. The GEMMs run at `precision`
// (MP_PRECISION_BF16: bf16 products of q, c and the softmax rounded to bf16, fp32
// accumulation); softmax in fp32, log-sum-exp and the loss sum in double.
enum mp_status mp_infonce(float         *loss,     // scalar: the mean over rows
                          float         *dq,       // (B, E) or NULL
                          float         *dc,       // (N, E) or NULL
                          float         *dtau,     // scalar or NULL
                          const float   *q,        // (B, E)
                          const float   *c,        // (N, E)
                          const int64_t *pos,      // (B)
                          const int64_t *ids,      // (N) or NULL
                          int64_t        B,
                          int64_t        N,
                          int64_t        E,
                          float          tau,
                          float         *row_loss,   // (B) or NULL
                          enum mp_precision precision);

#endif
