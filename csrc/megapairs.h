/* megapairs.h: the C core of megapairs, usable without Python.
 *
 *     #include "megapairs.h"
 *
 *     struct mp_safetensors *st;
 *     if (mp_safetensors_open(&st, "dinov2/model.safetensors") != MP_STATUS_OK) {
 *         log_failure(mp_last_error());  // the message says what failed and why
 *         return 1;
 *     }
 *     // The checkpoint's names for the model's canonical ones (see encoders/vit.h); a file
 *     // saved with canonical names needs none.
 *     struct mp_weight_alias aliases[] = {{"class_embedding", "embeddings.cls_token"}, ...};
 *     struct mp_checkpoint ck = {&st, 1, aliases, sizeof aliases / sizeof *aliases};
 *     struct mp_vit_config config = {MP_VIT_DINOV2, 518, 14, 768, 12, 12, 3072, 0, 0, 0, 1e-6f,
 *                                    MP_ACTIVATION_GELU};
 *     struct mp_vit *vit;
 *     if (mp_vit_init(&vit, &config, &ck) != MP_STATUS_OK) return fail(mp_last_error());
 *     mp_safetensors_close(st);                        // the model holds the mapping it reads
 *
 *     float *emb = malloc(N * 768 * sizeof(float));   // caller-owned output
 *     mp_set_num_threads(2);
 *     mp_vit_encode(vit, emb, pixels, N, 224, positions, MP_VIT_POOL_CLS, MP_PRECISION_BF16);
 *     mp_matmul_nt(scores, emb, emb, N, N, 768, MP_PRECISION_FP32); // (N, D) @ (N, D)^T
 *     mp_vit_free(vit);
 *
 * Conventions: every fallible function returns enum mp_status and leaves a message in
 * mp_last_error(); a handle comes first, then outputs (caller-owned, overwritten), then
 * inputs, then sizes and options; sizes are int64_t; shapes are written beside each pointer. Distinct handles may be used from distinct threads;
 * one handle must not be used by two threads at once unless its header says otherwise. */
#ifndef MEGAPAIRS_H
#define MEGAPAIRS_H

// The public API. Headers not listed here (nn/ but nn/linear.h, core/gemm.h, core/amx.h, core/bf16.h, core/simd.h,
// core/vexp.h, image/resample.h's kernels, text/unicode.h, text/vocab.h, weights/bind.h) are
// internal: their names may change between releases.
#include "core/dtype.h"
#include "core/isa.h"
#include "core/onednn.h"
#include "core/parallel.h"
#include "core/status.h"
#include "encoders/text.h"
#include "encoders/vit.h"
#include "fusion/fusion.h"
#include "image/jpeg.h"
#include "image/preprocess.h"
#include "knn/knn.h"
#include "loss/infonce.h"
#include "nn/linear.h"
#include "text/clip_tokenizer.h"
#include "text/wordpiece.h"
#include "weights/checkpoint.h"
#include "weights/safetensors.h"

#endif
