/* image/jpeg.h: JPEG access through libjpeg-turbo's TurboJPEG API (the only file that
 * includes turbojpeg.h). Input bytes are untrusted: every failure is a status, never a
 * crash, and the library's own message becomes the error text. */
#ifndef MP_IMAGE_JPEG_H
#define MP_IMAGE_JPEG_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

struct mp_jpeg_header {
    int64_t height, width;
    int32_t components; // 1 for grayscale, 3 for YCbCr/RGB, 4 for CMYK/YCCK
    int32_t progressive; // 1 when the image uses a progressive scan
};

// Reads the frame header of the JPEG in `bytes` without decoding pixels. Returns
// MP_STATUS_BAD_FORMAT when the bytes are not a readable JPEG.
enum mp_status mp_jpeg_read_header(struct mp_jpeg_header *header, const uint8_t *bytes, size_t size);

// Output size of a decode at scale 1/denom (denom in 1, 2, 4, 8): the ceiling of each side,
// as libjpeg computes it.
int64_t mp_jpeg_scaled(int64_t size, int denom);

// The largest denom in {8, 4, 2, 1} whose scaled short side is still >= min_short.
int mp_jpeg_pick_scale(const struct mp_jpeg_header *header, int64_t min_short);

// Decodes to RGB at scale 1/denom. `header` comes from mp_jpeg_read_header on the same bytes.
// Grayscale is replicated to three channels and CMYK/YCCK converted as Pillow's
// convert("RGB") does (Adobe-inverted CMYK assumed, as Pillow assumes). fast != 0 allows
// the fast integer IDCT and plain upsampling. A truncated stream is an error, as in Pillow;
// recoverable corruption warnings are not. `scratch` holds mp_jpeg_scratch_size(...) bytes.
enum mp_status mp_jpeg_decode(uint8_t                     *rgb,     // (scaled H, scaled W, 3)
                              void                        *scratch,
                              const struct mp_jpeg_header *header,
                              const uint8_t               *bytes,
                              size_t                       size,
                              int                          denom,
                              int                          fast);

size_t mp_jpeg_scratch_size(const struct mp_jpeg_header *header, int denom);

// The libjpeg-turbo version compiled against, as "MAJOR.MINOR.PATCH" when known, or "unknown".
const char *mp_jpeg_library_version(void);

#endif
