/* image/preprocess.h: a batch of images to a (N, 3, crop_h, crop_w) float32 tensor, each
 * image decoded, resized, centre-cropped and normalised in one pass, images in parallel.
 *
 * The resize and crop follow transformers' CLIPImageProcessor / BitImageProcessor
 * (use_fast=False): shortest side -> `resize` with the long side truncated
 * (int(resize * long / short)), Pillow's resampling, crop offsets floor((size - crop) / 2)
 * with zero padding when the image is smaller than the crop, then x / 255, minus mean,
 * over std, in float32. */
#ifndef MP_IMAGE_PREPROCESS_H
#define MP_IMAGE_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "image/resample.h"

// One input: JPEG bytes, or decoded RGB pixels (then `bytes` is NULL).
struct mp_image_input {
    const uint8_t *bytes;
    size_t         size;
    const uint8_t *pixels;     // (height, width, 3) uint8, rows `row_stride` bytes apart
    int64_t        height, width, row_stride;
};

struct mp_transform {
    int64_t          resize;              // shortest side after resizing; 0 keeps the size
    int64_t          crop_h, crop_w;      // output size
    float            mean[3], std[3];     // per channel, applied to x / 255
    enum mp_resample resample;
    int64_t          max_pixels;          // larger images are refused (decompression bombs); 0: no limit
    int              fast;                // JPEG: decode at a DCT scale 1/2..1/8 and fast IDCT/upsampling
    enum mp_pass_order pass_order;        // the Pillow release whose resize to reproduce
};

// Output size of resizing (height, width) so that its shortest side is `resize`.
void mp_transform_resized_size(int64_t *out_h, int64_t *out_w, int64_t height, int64_t width, int64_t resize);

// Processes every image. A failing image gets a non-OK item_status, its message in
// messages[i * message_size ...] and zeros in its output slot; the others are unaffected.
// Returns non-OK only for bad arguments (then nothing is written).
enum mp_status mp_image_preprocess(float                       *out,          // (N, 3, crop_h, crop_w)
                                   int32_t                     *item_status,  // (N) enum mp_status
                                   char                        *messages,     // (N, message_size)
                                   size_t                       message_size,
                                   const struct mp_image_input *images,       // (N)
                                   int64_t                      N,
                                   const struct mp_transform   *transform);

// Decodes one JPEG to RGB at full size (the `decode` of the Python API).
enum mp_status mp_image_decode_jpeg(uint8_t *rgb, const uint8_t *bytes, size_t size, int64_t height, int64_t width);

#endif
