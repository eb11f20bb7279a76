/* megapairs.h: the C core of megapairs, usable without Python.
 *
 *     #include "megapairs.h"
 *
 *     struct mp_safetensors *st;
 *     if (mp_safetensors_open(&st, "model.safetensors") != MP_STATUS_OK) {
 *         log_failure(mp_last_error());  // the message says what failed and why
 *         return 1;
 *     }
 *     const struct mp_tensor *w = mp_safetensors_find(st, "visual.proj");   // (D, E)
 *     float *proj = malloc(w->numel * sizeof(float));
 *     mp_tensor_read(proj, MP_DTYPE_F32, w);                             // F32/F16/BF16 -> f32
 *
 *     float *scores = malloc(N * E * sizeof(float));                     // caller-owned output
 *     mp_set_num_threads(2);
 *     mp_matmul_nt(scores, queries, proj_t, N, E, D, MP_PRECISION_BF16); // (N,D) @ (E,D)^T
 *
 *     free(scores); free(proj);
 *     mp_safetensors_close(st);
 *
 * Conventions: every fallible function returns enum mp_status and leaves a message in
 * mp_last_error(); outputs are caller-owned and overwritten; sizes are int64_t; shapes
 * are written beside each pointer. Distinct handles may be used from distinct threads;
 * one handle must not be used by two threads at once unless its header says otherwise. */
#ifndef MEGAPAIRS_H
#define MEGAPAIRS_H

#include "core/dtype.h"
#include "core/onednn.h"
#include "core/parallel.h"
#include "core/status.h"
#include "encoders/text.h"
#include "encoders/vit.h"
#include "image/jpeg.h"
#include "image/preprocess.h"
#include "image/resample.h"
#include "knn/knn.h"
#include "loss/infonce.h"
#include "text/clip_tokenizer.h"
#include "text/unicode.h"
#include "text/wordpiece.h"
#include "weights/safetensors.h"

#endif
