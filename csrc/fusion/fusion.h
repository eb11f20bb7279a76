/* fusion/fusion.h: combining several spaces into one, at the level of embeddings or of scores.
 *
 *     const float *parts[2] = {image, text};  // (N, D) each, one row per query
 *     mp_fuse(query, parts, NULL, 2, N, D, 1); // query = normalise(image + text): a composed query
 *
 *     const float *spaces[3] = {clip, dino, caption};  // (n) scores of the same pairs per space
 *     const float w[3] = {0.5f, 0.3f, 0.2f};
 *     mp_fuse_scores(fused, spaces, w, 3, n);           // fused = 0.5 clip + 0.3 dino + 0.2 caption
 *
 * The output may be one of the inputs (in place): each element is read from every input before
 * it is written. Sums run in fp32 in input order; the L2 norm is accumulated in double. Rows are
 * shared among the OpenMP threads. */
#ifndef MP_FUSION_FUSION_H
#define MP_FUSION_FUSION_H

#include <stdint.h>

#include "core/status.h"

// out = sum_s weights[s] * inputs[s], row-wise L2-normalised when `normalize` is set:
// x / max(||x||, 1e-12), so that a zero row stays zero. weights NULL: all 1. count >= 1.
enum mp_status mp_fuse(float              *out,     // (N, D)
                       const float *const *inputs,  // count pointers to (N, D)
                       const float        *weights, // (count) finite, or NULL
                       int64_t             count,
                       int64_t             N,
                       int64_t             D,
                       int                 normalize);

// out = sum_s weights[s] * scores[s], for n scores of the same items in each space (a
// similarity matrix or a list of pairs, flattened). weights NULL: all 1. count >= 1.
enum mp_status mp_fuse_scores(float              *out,     // (n)
                              const float *const *scores,  // count pointers to (n)
                              const float        *weights, // (count) finite, or NULL
                              int64_t             count,
                              int64_t             n);

#endif
