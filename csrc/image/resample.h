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
                                  enum mp_resample filter);

size_t mp_resample_scratch_size(int64_t H, int64_t W, int64_t resized_h, int64_t resized_w, int64_t crop_h,
                                int64_t crop_w, enum mp_resample filter);

#endif
