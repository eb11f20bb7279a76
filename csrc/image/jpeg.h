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

// The libjpeg-turbo version compiled against, as "MAJOR.MINOR.PATCH" when known, or "unknown".
const char *mp_jpeg_library_version(void);

#endif
