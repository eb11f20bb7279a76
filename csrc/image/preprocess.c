/* image/preprocess.c: a batch of encoded images to one normalised float32 tensor: decode,
 * shortest-edge resize, centre crop and normalisation per image, images in parallel, each
 * failure reported per image. */
#include "image/preprocess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/jpeg.h"

void mp_transform_resized_size(int64_t *out_h, int64_t *out_w, int64_t height, int64_t width, int64_t resize) {
    if (resize <= 0) {
        *out_h = height;
        *out_w = width;
        return;
    }
    // transformers' get_resize_output_image_size(default_to_square=False): Python's
    // int(size * long / short), a true division then truncation.
    int64_t short_side = height < width ? height : width, long_side = height < width ? width : height;
    int64_t new_long = (int64_t)((double)(resize * long_side) / (double)short_side);
    if (width <= height) {
        *out_w = resize;
        *out_h = new_long;
    } else {
        *out_h = resize;
        *out_w = new_long;
    }
}

// floor((a - b) / 2) for possibly negative a - b, as Python's //.
static int64_t half_floor(int64_t a, int64_t b) { return a >= b ? (a - b) / 2 : -((b - a + 1) / 2); }

// Per-thread buffers, grown as needed and reused across images.
struct workspace {
    uint8_t *decoded; size_t decoded_cap;
    uint8_t *jpeg_scratch; size_t jpeg_cap;
    uint8_t *window; size_t window_cap;
    void *resample; size_t resample_cap;
};

static int reserve(void **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    void *grown = realloc(*buf, need);
    if (!grown) return -1;
    *buf = grown;
    *cap = need;
    return 0;
}

static void workspace_free(struct workspace *ws) {
    free(ws->decoded);
    free(ws->jpeg_scratch);
    free(ws->window);
    free(ws->resample);
}

// One image into its output slot; returns its status and leaves the message in mp_last_error().
static enum mp_status process_one(float *out, struct workspace *ws, const struct mp_image_input *img,
                                  const struct mp_transform *t, const float lut[3][256]) {
    const uint8_t *pixels = img->pixels;
    int64_t height = img->height, width = img->width, stride = img->row_stride;
    int64_t orig_h = height, orig_w = width; // the resize geometry follows the original size
    if (img->bytes) {
        struct mp_jpeg_header header;
        enum mp_status status = mp_jpeg_read_header(&header, img->bytes, img->size);
        if (status != MP_STATUS_OK) return status;
        if (t->max_pixels > 0 && header.height * header.width > t->max_pixels)
            return mp_error(MP_STATUS_BAD_FORMAT,
                            "image of %lld x %lld = %lld pixels exceeds the limit of %lld (a decompression bomb?)",
                            (long long)header.width, (long long)header.height,
                            (long long)(header.height * header.width), (long long)t->max_pixels);
        orig_h = header.height;
        orig_w = header.width;
        int denom = 1;
        if (t->fast) {
            // Keep the decoded short side at least twice the resize target: the antialiased
            // resize that follows then sees enough samples to stay close to exact mode.
            int64_t target = t->resize > 0 ? t->resize : (t->crop_h > t->crop_w ? t->crop_h : t->crop_w);
            denom = mp_jpeg_pick_scale(&header, 2 * target);
        }
        height = mp_jpeg_scaled(header.height, denom);
        width = mp_jpeg_scaled(header.width, denom);
        stride = width * 3;
        if (reserve((void **)&ws->decoded, &ws->decoded_cap, (size_t)(height * width * 3)) ||
            reserve((void **)&ws->jpeg_scratch, &ws->jpeg_cap, mp_jpeg_scratch_size(&header, denom) + 1))
            return mp_error(MP_STATUS_OUT_OF_MEMORY, "cannot allocate %lld x %lld decode buffer", (long long)width,
                            (long long)height);
        status = mp_jpeg_decode(ws->decoded, ws->jpeg_scratch, &header, img->bytes, img->size, denom, t->fast);
        if (status != MP_STATUS_OK) return status;
        pixels = ws->decoded;
    } else if (t->max_pixels > 0 && height * width > t->max_pixels) {
        return mp_error(MP_STATUS_BAD_FORMAT, "image of %lld x %lld = %lld pixels exceeds the limit of %lld",
                        (long long)width, (long long)height, (long long)(height * width), (long long)t->max_pixels);
    }

    // From the original size, so that fast mode (a DCT-scaled decode) lands on the same grid.
    int64_t rh, rw;
    mp_transform_resized_size(&rh, &rw, orig_h, orig_w, t->resize);
    int64_t top = half_floor(rh, t->crop_h), left = half_floor(rw, t->crop_w);
    size_t window_bytes = (size_t)(t->crop_h * t->crop_w * 3);
    size_t scratch_bytes = mp_resample_scratch_size(height, width, rh, rw, t->crop_h, t->crop_w, t->resample);
    if (reserve((void **)&ws->window, &ws->window_cap, window_bytes) ||
        reserve(&ws->resample, &ws->resample_cap, scratch_bytes))
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "cannot allocate resize buffers");
    enum mp_status status = mp_resample_window(ws->window, ws->resample, pixels, height, width, stride, rh, rw, top, left,
                                               t->crop_h, t->crop_w, t->resample, t->pass_order);
    if (status != MP_STATUS_OK) return status;

    // HWC uint8 -> CHW float32 through the per-channel table.
    int64_t plane = t->crop_h * t->crop_w;
    for (int64_t i = 0; i < plane; i++) {
        out[i] = lut[0][ws->window[3 * i + 0]];
        out[plane + i] = lut[1][ws->window[3 * i + 1]];
        out[2 * plane + i] = lut[2][ws->window[3 * i + 2]];
    }
    return MP_STATUS_OK;
}

static int64_t image_cost(const struct mp_image_input *img) {
    return img->bytes ? (int64_t)img->size * 8 : img->height * img->width; // ~8 pixels per JPEG byte
}

static _Thread_local const struct mp_image_input *cost_images; // qsort has no context argument

static int by_cost_descending(const void *a, const void *b) {
    int64_t ca = image_cost(&cost_images[*(const int64_t *)a]), cb = image_cost(&cost_images[*(const int64_t *)b]);
    if (ca != cb) return ca > cb ? -1 : 1;
    return *(const int64_t *)a < *(const int64_t *)b ? -1 : 1;
}

enum mp_status mp_image_preprocess(float *out, int32_t *item_status, char *messages, size_t message_size,
                                   const struct mp_image_input *images, int64_t N, const struct mp_transform *t) {
    if (N < 0 || (N > 0 && (!out || !item_status || !images)) || !t || t->crop_h <= 0 || t->crop_w <= 0 ||
        t->resize < 0 || t->resample < MP_RESAMPLE_BICUBIC || t->resample > MP_RESAMPLE_BOX)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "image_preprocess: bad arguments");
    for (int c = 0; c < 3; c++)
        if (!(t->std[c] != 0.0f))
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "image_preprocess: std[%d] is %g", c, (double)t->std[c]);
    for (int64_t i = 0; i < N; i++) {
        const struct mp_image_input *img = &images[i];
        int ok = img->bytes || (img->pixels && img->height > 0 && img->width > 0 && img->row_stride >= 3 * img->width);
        if (!ok) return mp_error(MP_STATUS_INVALID_ARGUMENT, "image_preprocess: item %lld has no data", (long long)i);
    }

    // transformers rescales in float64 then casts, and normalises in float32: (x - mean) / std.
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)(v * (1.0 / 255.0)) - t->mean[c]) / t->std[c];

    // Largest images first (bytes or pixels as the cost estimate), so that one big image at the
    // end of a batch does not leave the other threads idle.
    int64_t *order = malloc((size_t)(N > 0 ? N : 1) * sizeof *order);
    if (!order) return mp_error(MP_STATUS_OUT_OF_MEMORY, "image_preprocess: out of memory");
    for (int64_t i = 0; i < N; i++) order[i] = i;
    cost_images = images;
    if (N > 1) qsort(order, (size_t)N, sizeof *order, by_cost_descending);

    int64_t item = 3 * t->crop_h * t->crop_w;
#pragma omp parallel
    {
        struct workspace ws = {0};
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < N; j++) {
            int64_t i = order[j];
            float *slot = out + i * item;
            enum mp_status status = process_one(slot, &ws, &images[i], t, (const float(*)[256])lut);
            item_status[i] = (int32_t)status;
            if (status != MP_STATUS_OK) {
                memset(slot, 0, (size_t)item * sizeof *slot); // never leave uninitialised pixels
                if (messages && message_size) snprintf(messages + i * message_size, message_size, "%s", mp_last_error());
            }
        }
        workspace_free(&ws);
    }
    free(order);
    return MP_STATUS_OK;
}

enum mp_status mp_image_decode_jpeg(uint8_t *rgb, const uint8_t *bytes, size_t size, int64_t height, int64_t width) {
    struct mp_jpeg_header header;
    enum mp_status status = mp_jpeg_read_header(&header, bytes, size);
    if (status != MP_STATUS_OK) return status;
    if (header.height != height || header.width != width)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "decode_jpeg: buffer is %lld x %lld, image is %lld x %lld",
                        (long long)width, (long long)height, (long long)header.width, (long long)header.height);
    void *scratch = NULL;
    size_t scratch_bytes = mp_jpeg_scratch_size(&header, 1);
    if (scratch_bytes && !(scratch = malloc(scratch_bytes)))
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "cannot allocate a %lld x %lld CMYK buffer", (long long)width,
                        (long long)height);
    status = mp_jpeg_decode(rgb, scratch, &header, bytes, size, 1, 0);
    free(scratch);
    return status;
}
