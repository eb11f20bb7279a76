/* image/resample.h: separable resampling of RGB uint8 images that reproduces Pillow's
 * Image.resize(size, filter) bit for bit (src/libImaging/Resample.c: antialiasing filters
 * stretched by the scale, coefficients in 22-bit fixed point, horizontal pass into a
 * uint8 intermediate, then vertical pass).
 *
 * Only a window of the resized image is computed: every output pixel of Pillow's
 * resize depends on its own row and column coefficients alone, so resizing and then
 * cropping equals computing the crop directly, at the cost of the crop only. */
#ifndef MP_IMAGE_RESAMPLE_H
#define MP_IMAGE_RESAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

enum mp_resample {
    MP_RESAMPLE_BICUBIC = 0, // PIL.Image.BICUBIC (a = -0.5), what CLIP and DINOv2 processors use
    MP_RESAMPLE_BILINEAR,    // PIL.Image.BILINEAR
    MP_RESAMPLE_LANCZOS,     // PIL.Image.LANCZOS
    MP_RESAMPLE_BOX,         // PIL.Image.BOX
};

// Which order Pillow runs the two passes in. Up to Pillow 12 always horizontal then vertical;
// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
// pixels as the width. The uint8 rounding between the passes makes the order visible.
enum mp_pass_order {
    MP_PASS_ORDER_PILLOW12 = 0,
    MP_PASS_ORDER_PILLOW13,
};

// True when `order` runs the vertical pass first for this resize.
int mp_resample_vertical_first(enum mp_pass_order order, int64_t H, int64_t W, int64_t resized_h, int64_t resized_w);

// Resizes `in` to (resized_h, resized_w) as Pillow does and writes the window whose top-left
// corner is (top, left) in the resized image into `out`. Window pixels that fall outside
// the resized image are 0 (the zero padding of transformers' center_crop).
// `scratch` holds mp_resample_scratch_size(...) bytes.
enum mp_status mp_resample_window(uint8_t         *out,       // (crop_h, crop_w, 3)
                                  void            *scratch,
                                  const uint8_t   *in,        // (H, W, 3), rows `in_stride` bytes apart
                                  int64_t          H,
                                  int64_t          W,
                                  int64_t          in_stride,
                                  int64_t          resized_h,
                                  int64_t          resized_w,
                                  int64_t          top,
                                  int64_t          left,
                                  int64_t          crop_h,
                                  int64_t          crop_w,
                                  enum mp_resample filter,
                                  enum mp_pass_order order);

size_t mp_resample_scratch_size(int64_t H, int64_t W, int64_t resized_h, int64_t resized_w, int64_t crop_h,
                                int64_t crop_w, enum mp_resample filter);

#endif
