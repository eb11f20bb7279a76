/* fuzz_jpeg.c: libFuzzer target for the JPEG path of the image pipeline. The input is the
 * bytes of one file. The header reader must either refuse it with a message or report a
 * sane frame; a frame of at most MAX_PIXELS then goes through mp_image_preprocess (decode,
 * resize, crop, normalise) in exact and in fast mode. The item must come out OK with
 * finite values, or BAD_FORMAT with a message and a zeroed slot: any other status, a
 * crash or an ASan/UBSan report is a bug. TurboJPEG itself is not instrumented, so
 * coverage guidance only sees csrc/; ASan still checks every buffer csrc/ hands it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image/jpeg.h"
#include "image/preprocess.h"

enum { MAX_PIXELS = 4000000, RESIZE = 32, CROP = 24, ITEM = 3 * CROP * CROP, MESSAGE_SIZE = 256 };

static void run(const uint8_t *data, size_t size, int fast) {
    struct mp_transform t = {
        .resize = RESIZE,
        .crop_h = CROP,
        .crop_w = CROP,
        .mean = {0.48145466f, 0.4578275f, 0.40821073f},
        .std = {0.26862954f, 0.26130258f, 0.27577711f},
        .resample = MP_RESAMPLE_BICUBIC,
        .max_pixels = MAX_PIXELS,
        .fast = fast,
        .pass_order = fast ? MP_PASS_ORDER_PILLOW12 : MP_PASS_ORDER_PILLOW13, // both orders get fuzzed
    };
    struct mp_image_input image = {.bytes = data, .size = size};
    static float out[ITEM];
    static char message[MESSAGE_SIZE];
    int32_t status = -1;
    for (int i = 0; i < ITEM; i++) out[i] = NAN; // the item must overwrite its whole slot
    message[0] = 0;
    if (mp_image_preprocess(out, &status, message, MESSAGE_SIZE, &image, 1, &t) != MP_STATUS_OK) abort();
    if (status == MP_STATUS_OK) {
        for (int i = 0; i < ITEM; i++)
            if (!isfinite(out[i])) abort();
    } else if (status == MP_STATUS_BAD_FORMAT) {
        if (message[0] == 0) abort(); // a refusal says why
        for (int i = 0; i < ITEM; i++)
            if (out[i] != 0.0f) abort();
    } else {
        abort(); // out of memory, backend error, ...: not an answer to bad bytes
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct mp_jpeg_header header;
    enum mp_status status = mp_jpeg_read_header(&header, data, size);
    if (status != MP_STATUS_OK) {
        if (status != MP_STATUS_BAD_FORMAT || mp_last_error()[0] == 0) abort();
        return 0;
    }
    if (header.width <= 0 || header.height <= 0 || header.width > 65535 || header.height > 65535) abort();
    if (header.components != 1 && header.components != 3 && header.components != 4) abort();
    if (header.progressive != 0 && header.progressive != 1) abort();
    if (header.width * header.height > MAX_PIXELS) return 0;
    run(data, size, 0);
    run(data, size, 1);
    return 0;
}
