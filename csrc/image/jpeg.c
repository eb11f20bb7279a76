#include "image/jpeg.h"

#include <string.h>
#include <turbojpeg.h>
#if defined(__has_include)
#if __has_include(<jconfig.h>)
#include <jconfig.h> // LIBJPEG_TURBO_VERSION
#endif
#endif

// Scans the markers for SOF2 (progressive, Huffman) or SOF10 (progressive, arithmetic).
// Bounded by `size`; a malformed stream only yields "not progressive".
static int is_progressive(const uint8_t *bytes, size_t size) {
    size_t i = 2; // after SOI
    while (i + 4 <= size) {
        if (bytes[i] != 0xff) return 0;
        uint8_t marker = bytes[i + 1];
        if (marker == 0xff) { i++; continue; } // fill byte
        if (marker == 0xc2 || marker == 0xca) return 1;
        if (marker == 0xda || marker == 0xd9) return 0; // start of scan or end: the frame was not progressive
        size_t len = ((size_t)bytes[i + 2] << 8) | bytes[i + 3];
        if (len < 2) return 0;
        i += 2 + len;
    }
    return 0;
}

enum mp_status mp_jpeg_read_header(struct mp_jpeg_header *header, const uint8_t *bytes, size_t size) {
    if (!header || (!bytes && size)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "jpeg_read_header: NULL argument");
    memset(header, 0, sizeof *header);
    if (size < 4 || bytes[0] != 0xff || bytes[1] != 0xd8)
        return mp_error(MP_STATUS_BAD_FORMAT, "not a JPEG: the data does not start with the SOI marker (FF D8)");
    if (size > (size_t)0xffffffffu)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "JPEG of %zu bytes is larger than TurboJPEG accepts", size);
    tjhandle tj = tjInitDecompress();
    if (!tj) return mp_error(MP_STATUS_BACKEND, "TurboJPEG: %s", tjGetErrorStr2(NULL));
    int width = 0, height = 0, subsamp = 0, colorspace = 0;
    enum mp_status status = MP_STATUS_OK;
    if (tjDecompressHeader3(tj, bytes, (unsigned long)size, &width, &height, &subsamp, &colorspace) != 0) {
        status = mp_error(MP_STATUS_BAD_FORMAT, "cannot read JPEG header: %s", tjGetErrorStr2(tj));
    } else if (width <= 0 || height <= 0) {
        // TurboJPEG 2.1 reports success with a 0 x 0 size when the data ends before the frame header
        status = mp_error(MP_STATUS_BAD_FORMAT, "cannot read JPEG header: the data ends before the frame header");
    } else {
        header->width = width;
        header->height = height;
        header->components = colorspace == TJCS_GRAY ? 1 : (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) ? 4 : 3;
        header->progressive = is_progressive(bytes, size);
    }
    tjDestroy(tj);
    return status;
}

const char *mp_jpeg_library_version(void) {
#if defined(LIBJPEG_TURBO_VERSION)
#define MP_STR2(x) #x
#define MP_STR(x) MP_STR2(x)
    return MP_STR(LIBJPEG_TURBO_VERSION);
#else
    return "unknown";
#endif
}
