/* image/jpeg.c: the one file that talks to TurboJPEG: header reads, decodes with DCT
 * scaling, and the library's errors turned into statuses with its message. */
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

int64_t mp_jpeg_scaled(int64_t size, int denom) { return (size + denom - 1) / denom; }

int mp_jpeg_pick_scale(const struct mp_jpeg_header *header, int64_t min_short) {
    int64_t short_side = header->height < header->width ? header->height : header->width;
    for (int denom = 8; denom > 1; denom /= 2)
        if (mp_jpeg_scaled(short_side, denom) >= min_short) return denom;
    return 1;
}

size_t mp_jpeg_scratch_size(const struct mp_jpeg_header *header, int denom) {
    // CMYK decodes to four channels before conversion; other colour spaces need nothing.
    if (header->components != 4) return 0;
    return (size_t)mp_jpeg_scaled(header->height, denom) * (size_t)mp_jpeg_scaled(header->width, denom) * 4;
}

// Pillow's cmyk2rgb on inverted (Adobe) CMYK: with c' = 255 - stored value,
// out = clip(nk - c' * nk / 255) where nk = 255 - k'. MULDIV255 rounds as Pillow does.
static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static void cmyk_to_rgb(uint8_t *rgb, const uint8_t *cmyk, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        int nk = cmyk[4 * i + 3]; // 255 - (255 - stored k)
        for (int c = 0; c < 3; c++) {
            int v = nk - muldiv255(255 - cmyk[4 * i + c], nk);
            rgb[3 * i + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

enum mp_status mp_jpeg_decode(uint8_t *rgb, void *scratch, const struct mp_jpeg_header *header, const uint8_t *bytes,
                              size_t size, int denom, int fast) {
    if (!rgb || !header || !bytes || (denom != 1 && denom != 2 && denom != 4 && denom != 8) ||
        (header->components == 4 && !scratch) || size > (size_t)0xffffffffu)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "jpeg_decode: bad arguments");
    int64_t height = mp_jpeg_scaled(header->height, denom), width = mp_jpeg_scaled(header->width, denom);
    tjhandle tj = tjInitDecompress();
    if (!tj) return mp_error(MP_STATUS_BACKEND, "TurboJPEG: %s", tjGetErrorStr2(NULL));
    int cmyk = header->components == 4;
    int flags = fast ? TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE : 0;
    uint8_t *dst = cmyk ? scratch : rgb;
    int rc = tjDecompress2(tj, bytes, (unsigned long)size, dst, (int)width, 0, (int)height, cmyk ? TJPF_CMYK : TJPF_RGB,
                           flags);
    enum mp_status status = MP_STATUS_OK;
    if (rc != 0) {
        const char *message = tjGetErrorStr2(tj);
        // Warnings (extraneous bytes, corrupt-data recovery) still produce the whole image, and
        // Pillow accepts such files; running out of data is the truncation Pillow refuses.
        int truncated = strstr(message, "Premature end") != NULL;
        if (tjGetErrorCode(tj) == TJERR_FATAL || truncated)
            status = mp_error(MP_STATUS_BAD_FORMAT, "cannot decode JPEG: %s", message);
    }
    tjDestroy(tj);
    if (status == MP_STATUS_OK && cmyk) cmyk_to_rgb(rgb, scratch, height * width);
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
