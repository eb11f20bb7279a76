#define _POSIX_C_SOURCE 200809L // setenv
/* test_image.c: the image pipeline below Python.
 *
 * - mp_resample_window against a deliberately naive reference of Pillow's resampling
 *   (src/libImaging/Resample.c) that computes the FULL resized image, horizontal pass over
 *   every row into a uint8 intermediate and then the vertical pass, and crops the window
 *   afterwards with zero padding. The two must agree byte for byte on every case.
 * - mp_transform_resized_size against transformers' int(size * long / short).
 * - mp_image_preprocess on a batch mixing raw pixels and JPEG bytes made here with
 *   TurboJPEG's tjCompress2: good items against a hand-made pipeline, bad items refused
 *   one by one, bad arguments refused as a whole; fast mode and CMYK decoding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "check.h"
#include "megapairs.h"

#define COUNT_OF(a) (int)(sizeof(a) / sizeof *(a))

static int has(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

// Deterministic bytes without libc's rand.
static uint8_t next_byte(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint8_t)(*state >> 56);
}

// (H, W, 3) random pixels with rows `stride` bytes apart; the padding is random too, so
// that reading it would change the result.
static uint8_t *random_image(int64_t H, int64_t stride, uint64_t seed) {
    uint8_t *p = xmalloc((size_t)(H * stride));
    for (int64_t i = 0; i < H * stride; i++) p[i] = next_byte(&seed);
    return p;
}

// A smooth pattern with a little noise: what a photograph looks like to a JPEG encoder.
static uint8_t *pattern_image(int W, int H, uint64_t seed) {
    uint8_t *p = xmalloc((size_t)W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *px = p + ((size_t)y * W + x) * 3;
            px[0] = (uint8_t)(255 * x / (W > 1 ? W - 1 : 1));
            px[1] = (uint8_t)(255 * y / (H > 1 ? H - 1 : 1));
            px[2] = (uint8_t)(((x / 8 + y / 8) % 2) ? 200 : 40);
            for (int c = 0; c < 3; c++) {
                int v = px[c] + (next_byte(&seed) % 9) - 4;
                px[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    return p;
}

/* ---------------------------------------------------------------- naive Pillow reference */

// Pillow's filters, written as in Resample.c so that the doubles are the same to the last bit.
static double ref_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}
static double ref_bilinear(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}
static double ref_sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * 3.14159265358979323846;
    return sin(x) / x;
}
static double ref_lanczos(double x) {
    if (-3.0 <= x && x < 3.0) return ref_sinc(x) * ref_sinc(x / 3);
    return 0.0;
}
static double ref_box(double x) {
    if (x > -0.5 && x <= 0.5) return 1.0;
    return 0.0;
}

static const struct ref_filter {
    const char      *name;
    enum mp_resample id;
    double (*fn)(double);
    double support;
} ref_filters[] = {
    {"bicubic", MP_RESAMPLE_BICUBIC, ref_bicubic, 2.0},
    {"bilinear", MP_RESAMPLE_BILINEAR, ref_bilinear, 1.0},
    {"lanczos", MP_RESAMPLE_LANCZOS, ref_lanczos, 3.0},
    {"box", MP_RESAMPLE_BOX, ref_box, 0.5},
};

/* Fixed-point weights of every output index of one axis, in_size -> out_size:
 * xmin[i], count[i] and k[i * stride ...]. */
struct ref_axis {
    int64_t *xmin, *count;
    int32_t *k;
    int64_t  stride;
};

static struct ref_axis ref_axis_weights(int64_t in_size, int64_t out_size, const struct ref_filter *f) {
    double scale = (double)in_size / (double)out_size;
    double filterscale = scale > 1.0 ? scale : 1.0;
    double support = f->support * filterscale;
    struct ref_axis a;
    a.stride = 2 * (int64_t)ceil(support) + 3; // a bound with room to spare
    a.xmin = xmalloc((size_t)out_size * sizeof *a.xmin);
    a.count = xmalloc((size_t)out_size * sizeof *a.count);
    a.k = xmalloc((size_t)(out_size * a.stride) * sizeof *a.k);
    double *w = xmalloc((size_t)a.stride * sizeof *w);
    for (int64_t x = 0; x < out_size; x++) {
        double center = (x + 0.5) * scale;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        int64_t n = xmax - xmin;
        if (n > a.stride) abort(); // the bound above is wrong, not the code under test
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            // Pillow multiplies by 1 / filterscale (its `ss`) rather than dividing.
            w[i] = f->fn((i + xmin - center + 0.5) * (1.0 / filterscale));
            sum += w[i];
        }
        for (int64_t i = 0; i < n; i++) {
            double v = sum != 0.0 ? w[i] / sum : w[i];
            double fixed = v * (double)(1 << 22);
            a.k[x * a.stride + i] = (int32_t)(v < 0 ? fixed - 0.5 : fixed + 0.5); // half away from zero
        }
        a.xmin[x] = xmin;
        a.count[x] = n;
    }
    free(w);
    return a;
}

static void ref_axis_free(struct ref_axis *a) {
    free(a->xmin);
    free(a->count);
    free(a->k);
}

static uint8_t ref_clip(int64_t acc) {
    int64_t v = acc >> 22;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Pillow 13's choice, written out independently of the library: vertical pass first when
// both passes run and the height shrinks by more than twice the width's change.
static int ref_vertical_first(int pillow13, int64_t H, int64_t W, int64_t rh, int64_t rw) {
    return pillow13 && rh != H && rw != W && H - rh > 0 && H - rh > 2 * (W - rw);
}

/* The whole (rh, rw, 3) image as Pillow's Image.resize((rw, rh), filter) makes it:
 * horizontal pass first (Pillow up to 12, and Pillow 13 in most cases), or, with
 * vertical_first, the vertical pass over the input then the horizontal pass. When both
 * passes run the order changes some bytes (the uint8 intermediate rounds differently). */
// The horizontal pass: (H, W, 3) rows `stride` bytes apart -> (H, rw, 3); a copy when rw == W.
static uint8_t *ref_horizontal(const uint8_t *in, int64_t H, int64_t W, int64_t stride, int64_t rw,
                               const struct ref_filter *f) {
    uint8_t *out = xmalloc((size_t)(H * rw * 3));
    if (rw == W) {
        for (int64_t y = 0; y < H; y++) memcpy(out + y * W * 3, in + y * stride, (size_t)W * 3);
        return out;
    }
    struct ref_axis ax = ref_axis_weights(W, rw, f);
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < rw; x++)
            for (int c = 0; c < 3; c++) {
                int64_t acc = 1 << 21;
                for (int64_t i = 0; i < ax.count[x]; i++)
                    acc += (int64_t)in[y * stride + (ax.xmin[x] + i) * 3 + c] * ax.k[x * ax.stride + i];
                out[(y * rw + x) * 3 + c] = ref_clip(acc);
            }
    ref_axis_free(&ax);
    return out;
}

// The vertical pass: (H, W, 3) rows `stride` bytes apart -> (rh, W, 3); a copy when rh == H.
static uint8_t *ref_vertical(const uint8_t *in, int64_t H, int64_t W, int64_t stride, int64_t rh,
                             const struct ref_filter *f) {
    uint8_t *out = xmalloc((size_t)(rh * W * 3));
    if (rh == H) {
        for (int64_t y = 0; y < H; y++) memcpy(out + y * W * 3, in + y * stride, (size_t)W * 3);
        return out;
    }
    struct ref_axis ay = ref_axis_weights(H, rh, f);
    for (int64_t y = 0; y < rh; y++)
        for (int64_t x = 0; x < W * 3; x++) {
            int64_t acc = 1 << 21;
            for (int64_t i = 0; i < ay.count[y]; i++)
                acc += (int64_t)in[(ay.xmin[y] + i) * stride + x] * ay.k[y * ay.stride + i];
            out[y * W * 3 + x] = ref_clip(acc);
        }
    ref_axis_free(&ay);
    return out;
}

static uint8_t *ref_resize(const uint8_t *in, int64_t H, int64_t W, int64_t stride, int64_t rh, int64_t rw,
                           const struct ref_filter *f, int vertical_first) {
    uint8_t *mid, *out;
    if (vertical_first) {
        mid = ref_vertical(in, H, W, stride, rh, f);
        out = ref_horizontal(mid, rh, W, W * 3, rw, f);
    } else {
        mid = ref_horizontal(in, H, W, stride, rw, f);
        out = ref_vertical(mid, H, rw, rw * 3, rh, f);
    }
    free(mid);
    return out;
}

// The (h, w) window at (top, left) of a (rh, rw, 3) image, zero outside it.
static uint8_t *ref_crop(const uint8_t *full, int64_t rh, int64_t rw, int64_t top, int64_t left, int64_t h,
                         int64_t w) {
    uint8_t *out = xmalloc((size_t)(h * w * 3));
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                int64_t sy = top + y, sx = left + x;
                int inside = sy >= 0 && sy < rh && sx >= 0 && sx < rw;
                out[(y * w + x) * 3 + c] = inside ? full[(sy * rw + sx) * 3 + c] : 0;
            }
    return out;
}

/* ---------------------------------------------------------------- resample_window */

// mp_resample_window with buffers of exactly the promised sizes, so ASan sees any overrun.
static enum mp_status run_window(uint8_t **out, const uint8_t *in, int64_t H, int64_t W, int64_t stride,
                                 int64_t rh, int64_t rw, int64_t top, int64_t left, int64_t h, int64_t w,
                                 enum mp_resample filter, enum mp_pass_order order) {
    size_t scratch_size = mp_resample_scratch_size(H, W, rh, rw, h, w, filter);
    void *scratch = xmalloc(scratch_size);
    *out = xmalloc((size_t)(h * w * 3));
    memset(*out, 0xa5, (size_t)(h * w * 3)); // every byte must be written
    enum mp_status s = mp_resample_window(*out, scratch, in, H, W, stride, rh, rw, top, left, h, w, filter, order);
    free(scratch);
    return s;
}

// Compares one window; the message names the whole case.
static void check_window(const char *label, const uint8_t *got, const uint8_t *want, int64_t h, int64_t w,
                         int all_zero) {
    int64_t bad = 0, first = -1, nonzero = 0;
    for (int64_t i = 0; i < h * w * 3; i++) {
        if (got[i] != want[i] && bad++ == 0) first = i;
        nonzero += got[i] != 0;
    }
    if (first >= 0)
        CHECK(0, "%s: %lld of %lld bytes differ; first at row %lld col %lld channel %lld: got %d, expected %d", label,
              (long long)bad, (long long)(h * w * 3), (long long)(first / 3 / w), (long long)(first / 3 % w),
              (long long)(first % 3), got[first], want[first]);
    else
        CHECK(1, "%s", label);
    if (all_zero) CHECK(nonzero == 0, "%s: a window outside the image has %lld nonzero bytes", label, (long long)nonzero);
}

struct window {
    const char *name;
    int64_t     top, left, h, w;
    int         outside; // lies entirely outside the resized image
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// floor((a - b) / 2), as Python's // in transformers' center_crop.
static int64_t floor_half(int64_t a, int64_t b) {
    int64_t d = a - b;
    return d >= 0 ? d / 2 : -((-d + 1) / 2);
}

// Windows of a (rh, rw) resized image: inside, straddling each edge, and entirely outside.
static int make_windows(struct window *win, int64_t rh, int64_t rw) {
    int n = 0;
    if (rh * rw <= (1 << 20)) win[n++] = (struct window){"whole image", 0, 0, rh, rw, 0};
    win[n++] = (struct window){"centre crop 224x224 (padded when smaller)", floor_half(rh, 224), floor_half(rw, 224),
                               224, 224, 0};
    int64_t h3 = max64(1, rh / 3), w3 = max64(1, rw / 3);
    win[n++] = (struct window){"inside, off centre", (rh - h3) * 2 / 3, (rw - w3) / 3, h3, w3, 0};
    win[n++] = (struct window){"bottom-right pixel", rh - 1, rw - 1, 1, 1, 0};
    int64_t h40 = min64(rh, 40), w40 = min64(rw, 40);
    win[n++] = (struct window){"over the top-left corner", -2, -3, h40 + 2, w40 + 3, 0};
    win[n++] = (struct window){"over the bottom-right corner", rh - h40, rw - w40, h40 + 5, w40 + 4, 0};
    win[n++] = (struct window){"one row wider than the image", rh / 2, -1, 1, rw + 2, 0};
    win[n++] = (struct window){"taller than the image, one column", -3, rw / 2, rh + 7, 1, 0};
    win[n++] = (struct window){"outside, just below", rh, 0, 3, min64(rw, 10), 1};
    win[n++] = (struct window){"outside, just left", 0, -7, 4, 7, 1};
    win[n++] = (struct window){"outside, just right", max64(0, rh - 2), rw, 2, 5, 1};
    win[n++] = (struct window){"outside, just above", -6, 0, 6, min64(rw, 9), 1};
    win[n++] = (struct window){"outside, far diagonal", -100, rw + 50, 5, 5, 1};
    return n;
}

static void test_resample_window(void) {
    static const struct { int64_t H, W; } images[] = {
        {1, 1}, {1, 7}, {7, 1}, {3, 5}, {37, 61}, {224, 224}, {300, 200}, {1000, 3},
    };
    int64_t cases = 0;
    for (int ii = 0; ii < COUNT_OF(images); ii++) {
        int64_t H = images[ii].H, W = images[ii].W, stride = 3 * W + 5; // padded rows
        uint8_t *in = random_image(H, stride, 1000 + (uint64_t)ii);

        // Resized sizes: the transformers short side 224, both passes skipped, each pass
        // alone, extreme shapes, and mixed up/down.
        int64_t short224_h, short224_w;
        mp_transform_resized_size(&short224_h, &short224_w, H, W, 224);
        const struct { const char *name; int64_t rh, rw; } sizes[] = {
            {"short side 224", short224_h, short224_w},
            {"unchanged", H, W},
            {"1x1", 1, 1},
            {"2x900", 2, 900},
            {"width only x2+1", H, 2 * W + 1},
            {"height only /2+1", H / 2 + 1, W},
            {"height x3/2+1, width /3+1", H * 3 / 2 + 1, W / 3 + 1},
            {"17x13", 17, 13},
            {"height /3+1, width -1", H / 3 + 1, W > 1 ? W - 1 : 2}, // Pillow 13 goes vertical first
        };
        for (int si = 0; si < COUNT_OF(sizes); si++) {
            int64_t rh = sizes[si].rh, rw = sizes[si].rw;
            for (int fi = 0; fi < 2 * COUNT_OF(ref_filters); fi++) {
                const struct ref_filter *f = &ref_filters[fi / 2];
                enum mp_pass_order order = fi % 2 ? MP_PASS_ORDER_PILLOW13 : MP_PASS_ORDER_PILLOW12;
                int vertical_first = ref_vertical_first(order == MP_PASS_ORDER_PILLOW13, H, W, rh, rw);
                uint8_t *full = ref_resize(in, H, W, stride, rh, rw, f, vertical_first);
                struct window win[16];
                int nwin = make_windows(win, rh, rw);
                for (int wi = 0; wi < nwin; wi++) {
                    const struct window *w = &win[wi];
                    char label[256];
                    snprintf(label, sizeof label,
                             "%lldx%lld -> %lldx%lld (%s), %s, %s first, window '%s' [top %lld, left %lld, %lldx%lld]",
                             (long long)H, (long long)W, (long long)rh, (long long)rw, sizes[si].name, f->name,
                             vertical_first ? "vertical" : "horizontal", w->name,
                             (long long)w->top, (long long)w->left, (long long)w->h, (long long)w->w);
                    uint8_t *got = NULL;
                    enum mp_status s =
                        run_window(&got, in, H, W, stride, rh, rw, w->top, w->left, w->h, w->w, f->id, order);
                    if (CHECK(s == MP_STATUS_OK, "%s: status '%s': %s", label, mp_status_str(s), mp_last_error())) {
                        uint8_t *want = ref_crop(full, rh, rw, w->top, w->left, w->h, w->w);
                        check_window(label, got, want, w->h, w->w, w->outside);
                        free(want);
                    }
                    free(got);
                    cases++;
                }
                free(full);
            }
        }
        free(in);
    }
    printf("resample_window: %lld windows compared with the reference\n", (long long)cases);

    // Bad arguments.
    uint8_t px[3 * 4] = {0}, out[3 * 4];
    uint8_t scratch[4096];
    static const struct {
        const char *name;
        int64_t H, W, stride, rh, rw, h, w;
        int filter;
    } bad[] = {
        {"zero height", 0, 2, 6, 2, 2, 2, 2, MP_RESAMPLE_BICUBIC},
        {"zero width", 2, 0, 6, 2, 2, 2, 2, MP_RESAMPLE_BICUBIC},
        {"stride below 3 * W", 2, 2, 5, 2, 2, 2, 2, MP_RESAMPLE_BICUBIC},
        {"zero resized height", 2, 2, 6, 0, 2, 2, 2, MP_RESAMPLE_BICUBIC},
        {"negative resized width", 2, 2, 6, 2, -1, 2, 2, MP_RESAMPLE_BICUBIC},
        {"zero crop height", 2, 2, 6, 2, 2, 0, 2, MP_RESAMPLE_BICUBIC},
        {"zero crop width", 2, 2, 6, 2, 2, 2, 0, MP_RESAMPLE_BICUBIC},
        {"unknown filter", 2, 2, 6, 2, 2, 2, 2, 4},
        {"negative filter", 2, 2, 6, 2, 2, 2, 2, -1},
    };
    for (int i = 0; i < COUNT_OF(bad); i++) {
        enum mp_status s = mp_resample_window(out, scratch, px, bad[i].H, bad[i].W, bad[i].stride, bad[i].rh, bad[i].rw,
                                              0, 0, bad[i].h, bad[i].w, (enum mp_resample)bad[i].filter,
                                              MP_PASS_ORDER_PILLOW13);
        CHECK(s == MP_STATUS_INVALID_ARGUMENT, "resample_window with %s: status '%s'", bad[i].name, mp_status_str(s));
    }
    CHECK(mp_resample_window(NULL, scratch, px, 2, 2, 6, 2, 2, 0, 0, 2, 2, MP_RESAMPLE_BOX, MP_PASS_ORDER_PILLOW13) == MP_STATUS_INVALID_ARGUMENT,
          "resample_window with NULL out");
    CHECK(mp_resample_window(out, NULL, px, 2, 2, 6, 2, 2, 0, 0, 2, 2, MP_RESAMPLE_BOX, MP_PASS_ORDER_PILLOW13) == MP_STATUS_INVALID_ARGUMENT,
          "resample_window with NULL scratch");
    CHECK(mp_resample_window(out, scratch, NULL, 2, 2, 6, 2, 2, 0, 0, 2, 2, MP_RESAMPLE_BOX, MP_PASS_ORDER_PILLOW13) ==
              MP_STATUS_INVALID_ARGUMENT,
          "resample_window with NULL input");
    CHECK(mp_resample_scratch_size(2, 2, 2, 2, 2, 2, (enum mp_resample)4) == 0, "scratch size of an unknown filter");
    CHECK(mp_resample_window(out, scratch, px, 2, 2, 6, 2, 2, 0, 0, 2, 2, MP_RESAMPLE_BOX, (enum mp_pass_order)2) ==
              MP_STATUS_INVALID_ARGUMENT,
          "resample_window with an unknown pass order");
}

/* ---------------------------------------------------------------- resized size */

static void test_resized_size(void) {
    // Expected values from Python: int(size * long / short) on the long side.
    static const struct { int64_t h, w, resize, want_h, want_w; } cases[] = {
        {224, 224, 224, 224, 224},      // square, already the target
        {300, 200, 224, 336, 224},      // exact: 224 * 300 / 200 = 336.0
        {200, 300, 224, 224, 336},
        {37, 61, 224, 224, 369},        // 369.297...
        {61, 37, 224, 369, 224},
        {1, 1, 224, 224, 224},
        {1, 7, 224, 224, 1568},         // exact
        {7, 1, 224, 1568, 224},
        {3, 1000, 224, 224, 74666},     // 74666.67 truncated, not rounded
        {1000, 3, 224, 74666, 224},
        {224, 300, 224, 224, 300},      // short side already the target
        {300, 224, 224, 300, 224},
        {480, 640, 224, 224, 298},      // 298.67
        {640, 480, 224, 298, 224},
        {1080, 1920, 224, 224, 398},    // 398.22
        {333, 500, 224, 224, 336},      // 336.34
        {500, 333, 224, 336, 224},
        {768, 1024, 256, 256, 341},     // 341.33
        {3, 5, 7, 7, 11},               // 11.67
        {5, 3, 7, 11, 7},
        {100, 150, 1, 1, 1},            // 1.5
        {2, 3, 5, 5, 7},                // 7.5: a tie, truncated
        {99, 100, 98, 98, 98},          // 98.99
        {1, 100000, 224, 224, 22400000},
        {100000, 1, 224, 22400000, 224},
        {300, 200, 0, 300, 200},        // resize 0 keeps the size
    };
    for (int i = 0; i < COUNT_OF(cases); i++) {
        int64_t h = -1, w = -1;
        mp_transform_resized_size(&h, &w, cases[i].h, cases[i].w, cases[i].resize);
        CHECK(h == cases[i].want_h && w == cases[i].want_w, "resized size of %lldx%lld to short side %lld: %lldx%lld, expected %lldx%lld",
              (long long)cases[i].h, (long long)cases[i].w, (long long)cases[i].resize, (long long)h, (long long)w,
              (long long)cases[i].want_h, (long long)cases[i].want_w);
    }
}

/* ---------------------------------------------------------------- JPEG making */

struct jpeg {
    uint8_t *bytes; // malloc'ed with exactly `size` bytes
    size_t   size;
};

// tjCompress2 of `pixels` (pixel format pf); the copy is exactly sized so ASan catches over-reads.
static struct jpeg make_jpeg(const uint8_t *pixels, int W, int H, int pf, int subsamp, int quality, int flags) {
    tjhandle tj = tjInitCompress();
    if (!tj) abort();
    unsigned char *buf = NULL;
    unsigned long size = 0;
    if (tjCompress2(tj, pixels, W, 0, H, pf, &buf, &size, subsamp, quality, flags) != 0) {
        printf("tjCompress2: %s\n", tjGetErrorStr2(tj));
        abort();
    }
    struct jpeg j = {xmalloc(size), size};
    memcpy(j.bytes, buf, size);
    tjFree(buf);
    tjDestroy(tj);
    return j;
}

static struct jpeg make_rgb_jpeg(int W, int H, int subsamp, int flags, uint64_t seed) {
    uint8_t *px = pattern_image(W, H, seed);
    struct jpeg j = make_jpeg(px, W, H, TJPF_RGB, subsamp, 90, flags);
    free(px);
    return j;
}

static struct jpeg make_gray_jpeg(int W, int H, int flags, uint64_t seed) {
    uint8_t *px = pattern_image(W, H, seed);
    uint8_t *gray = xmalloc((size_t)W * H);
    for (int i = 0; i < W * H; i++) gray[i] = px[3 * i + 1];
    struct jpeg j = make_jpeg(gray, W, H, TJPF_GRAY, TJSAMP_GRAY, 90, flags);
    free(gray);
    free(px);
    return j;
}

/* ---------------------------------------------------------------- preprocess */

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static struct mp_transform clip_transform(int64_t resize, int64_t crop_h, int64_t crop_w) {
    struct mp_transform t;
    memset(&t, 0, sizeof t);
    t.resize = resize;
    t.crop_h = crop_h;
    t.crop_w = crop_w;
    for (int c = 0; c < 3; c++) {
        t.mean[c] = clip_mean[c];
        t.std[c] = clip_std[c];
    }
    t.resample = MP_RESAMPLE_BICUBIC;
    t.max_pixels = 0;
    t.fast = 0;
    return t;
}

/* What one item must come out as, built from the public pieces: transformers' resized size,
 * the centre-crop offsets floor((size - crop) / 2), mp_resample_window, then x / 255 in
 * float64 cast to float32, minus mean, over std in float32, CHW. */
static void expected_item(float *out, const uint8_t *pixels, int64_t H, int64_t W, int64_t stride,
                          const struct mp_transform *t) {
    int64_t rh, rw;
    mp_transform_resized_size(&rh, &rw, H, W, t->resize);
    int64_t top = floor_half(rh, t->crop_h), left = floor_half(rw, t->crop_w);
    uint8_t *window = NULL;
    enum mp_status s =
        run_window(&window, pixels, H, W, stride, rh, rw, top, left, t->crop_h, t->crop_w, t->resample, t->pass_order);
    if (s != MP_STATUS_OK) abort();
    int64_t plane = t->crop_h * t->crop_w;
    for (int64_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            float scaled = (float)((double)window[3 * i + c] * (1.0 / 255.0));
            out[c * plane + i] = (scaled - t->mean[c]) / t->std[c];
        }
    free(window);
}

// The full-size decode of a JPEG, as the reference input of an exact-mode item.
static uint8_t *decode_full(const struct jpeg *j, int64_t *H, int64_t *W) {
    struct mp_jpeg_header h;
    if (mp_jpeg_read_header(&h, j->bytes, j->size) != MP_STATUS_OK) abort();
    uint8_t *rgb = xmalloc((size_t)(h.height * h.width * 3));
    if (mp_image_decode_jpeg(rgb, j->bytes, j->size, h.height, h.width) != MP_STATUS_OK) abort();
    *H = h.height;
    *W = h.width;
    return rgb;
}

static int all_zero(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] != 0.0f || signbit(x[i])) return 0;
    return 1;
}

static int all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

enum { MESSAGE_SIZE = 256 };

static void test_preprocess_batch(void) {
    struct mp_transform t = clip_transform(24, 20, 22);
    t.max_pixels = 100000;

    // Raw inputs, with padded rows.
    int64_t rawH[] = {37, 300, 3, 1, 350}, rawW[] = {61, 200, 5, 1, 300};
    uint8_t *raw[5];
    for (int i = 0; i < 5; i++) raw[i] = random_image(rawH[i], 3 * rawW[i] + 4, 77 + (uint64_t)i);

    struct jpeg j420 = make_rgb_jpeg(64, 48, TJSAMP_420, 0, 1);
    struct jpeg j444 = make_rgb_jpeg(45, 70, TJSAMP_444, 0, 2);
    struct jpeg jgray = make_gray_jpeg(40, 30, TJFLAG_PROGRESSIVE, 3);
    struct jpeg jbig = make_rgb_jpeg(400, 300, TJSAMP_420, 0, 4); // 120000 pixels > max_pixels
    struct jpeg truncated = {xmalloc(j420.size * 2 / 3), j420.size * 2 / 3};
    memcpy(truncated.bytes, j420.bytes, truncated.size);
    static const uint8_t garbage[] = "GIF89a, or anything that is not a JPEG";
    static const uint8_t empty[1] = {0xff};

    enum { N = 12 };
    const struct {
        const char           *name;
        struct mp_image_input input;
        int                   raw;     // index into raw[], or -1
        const struct jpeg    *jpeg;    // for an exact-mode comparison, or NULL
        enum mp_status        status;
        const char           *keyword; // in the message of a failed item
    } items[N] = {
        {"raw 37x61", {NULL, 0, raw[0], 37, 61, 3 * 61 + 4}, 0, NULL, MP_STATUS_OK, NULL},
        {"JPEG 64x48 4:2:0", {j420.bytes, j420.size, NULL, 0, 0, 0}, -1, &j420, MP_STATUS_OK, NULL},
        {"garbage bytes", {garbage, sizeof garbage, NULL, 0, 0, 0}, -1, NULL, MP_STATUS_BAD_FORMAT, "SOI"},
        {"raw 300x200", {NULL, 0, raw[1], 300, 200, 3 * 200 + 4}, 1, NULL, MP_STATUS_OK, NULL},
        {"truncated JPEG", {truncated.bytes, truncated.size, NULL, 0, 0, 0}, -1, NULL, MP_STATUS_BAD_FORMAT, "JPEG"},
        {"zero-length bytes", {empty, 0, NULL, 0, 0, 0}, -1, NULL, MP_STATUS_BAD_FORMAT, "SOI"},
        {"JPEG 40x30 progressive gray", {jgray.bytes, jgray.size, NULL, 0, 0, 0}, -1, &jgray, MP_STATUS_OK, NULL},
        {"JPEG 400x300 over max_pixels", {jbig.bytes, jbig.size, NULL, 0, 0, 0}, -1, NULL, MP_STATUS_BAD_FORMAT, "exceeds"},
        {"raw 350x300 over max_pixels", {NULL, 0, raw[4], 350, 300, 3 * 300 + 4}, -1, NULL, MP_STATUS_BAD_FORMAT, "exceeds"},
        {"raw 3x5", {NULL, 0, raw[2], 3, 5, 3 * 5 + 4}, 2, NULL, MP_STATUS_OK, NULL},
        {"JPEG 45x70 4:4:4", {j444.bytes, j444.size, NULL, 0, 0, 0}, -1, &j444, MP_STATUS_OK, NULL},
        {"raw 1x1", {NULL, 0, raw[3], 1, 1, 3 + 4}, 3, NULL, MP_STATUS_OK, NULL},
    };
    struct mp_image_input inputs[N];
    for (int i = 0; i < N; i++) inputs[i] = items[i].input;

    int64_t item = 3 * t.crop_h * t.crop_w;
    float *out = xmalloc((size_t)(N * item) * sizeof *out), *want = xmalloc((size_t)item * sizeof *want);
    for (int64_t i = 0; i < N * item; i++) out[i] = NAN; // every slot must be written
    int32_t status[N];
    char messages[N * MESSAGE_SIZE];
    memset(messages, 0, sizeof messages);
    for (int threads = 1; threads <= 2; threads++) {
        mp_set_num_threads(threads);
        for (int i = 0; i < N; i++) status[i] = -1;
        enum mp_status s = mp_image_preprocess(out, status, messages, MESSAGE_SIZE, inputs, N, &t);
        if (!CHECK(s == MP_STATUS_OK, "preprocess batch (%d threads): status '%s': %s", threads, mp_status_str(s),
                   mp_last_error()))
            continue;
        for (int i = 0; i < N; i++) {
            const float *slot = out + i * item;
            const char *message = messages + i * MESSAGE_SIZE;
            char label[128];
            snprintf(label, sizeof label, "preprocess item %d '%s' (%d threads)", i, items[i].name, threads);
            CHECK(status[i] == (int32_t)items[i].status, "%s: status %d '%s', expected '%s' (%s)", label, status[i],
                  mp_status_str((enum mp_status)status[i]), mp_status_str(items[i].status), message);
            if (items[i].status != MP_STATUS_OK) {
                CHECK(message[0] != 0, "%s: no message", label);
                CHECK(has(message, items[i].keyword), "%s: message '%s' lacks '%s'", label, message, items[i].keyword);
                CHECK(all_zero(slot, item), "%s: the slot of a failed item is not all zeros", label);
                continue;
            }
            if (items[i].raw >= 0) {
                int r = items[i].raw;
                expected_item(want, raw[r], rawH[r], rawW[r], 3 * rawW[r] + 4, &t);
            } else {
                int64_t H, W;
                uint8_t *rgb = decode_full(items[i].jpeg, &H, &W);
                expected_item(want, rgb, H, W, 3 * W, &t);
                free(rgb);
            }
            check_close(slot, want, item, 0.0f, label);
        }
    }
    mp_set_num_threads(0);

    // A crop larger than the resized image: the padding is zero pixels, normalised like any other.
    struct mp_transform padded = clip_transform(8, 11, 13); // odd negative margins: floor, not truncation
    padded.resample = MP_RESAMPLE_LANCZOS;
    struct mp_image_input two[2] = {inputs[0], inputs[1]};
    int64_t pitem = 3 * padded.crop_h * padded.crop_w;
    float *pout = xmalloc((size_t)(2 * pitem) * sizeof *pout), *pwant = xmalloc((size_t)pitem * sizeof *pwant);
    int32_t pstatus[2] = {-1, -1};
    CHECK(mp_image_preprocess(pout, pstatus, NULL, 0, two, 2, &padded) == MP_STATUS_OK, "padded preprocess: %s",
          mp_last_error());
    CHECK(pstatus[0] == MP_STATUS_OK && pstatus[1] == MP_STATUS_OK, "padded preprocess statuses %d %d", pstatus[0],
          pstatus[1]);
    expected_item(pwant, raw[0], 37, 61, 3 * 61 + 4, &padded);
    check_close(pout, pwant, pitem, 0.0f, "padded crop, raw 37x61 -> 8x13, crop 11x13");
    CHECK(pout[0] == (0.0f - clip_mean[0]) / clip_std[0], "padded corner is %g, expected the normalised zero %g",
          (double)pout[0], (double)((0.0f - clip_mean[0]) / clip_std[0]));
    int64_t H, W;
    uint8_t *rgb = decode_full(&j420, &H, &W);
    expected_item(pwant, rgb, H, W, 3 * W, &padded);
    check_close(pout + pitem, pwant, pitem, 0.0f, "padded crop, JPEG 64x48 -> 8x10, crop 11x13");
    free(rgb);

    // resize 0 keeps the size: the window is a plain centre crop of the pixels.
    struct mp_transform keep = clip_transform(0, 5, 4);
    keep.resample = MP_RESAMPLE_BILINEAR;
    float kout[3 * 5 * 4], kwant[3 * 5 * 4];
    int32_t kstatus = -1;
    CHECK(mp_image_preprocess(kout, &kstatus, NULL, 0, &inputs[0], 1, &keep) == MP_STATUS_OK && kstatus == MP_STATUS_OK,
          "resize 0: %s", mp_last_error());
    expected_item(kwant, raw[0], 37, 61, 3 * 61 + 4, &keep);
    check_close(kout, kwant, 3 * 5 * 4, 0.0f, "resize 0, crop 5x4 of raw 37x61");
    for (int64_t i = 0; i < 5 * 4; i++) {
        int64_t y = 16 + i / 4, x = 28 + i % 4; // floor((37 - 5) / 2), floor((61 - 4) / 2)
        float v = (float)((double)raw[0][y * (3 * 61 + 4) + 3 * x] * (1.0 / 255.0));
        if (!CHECK(kout[i] == (v - clip_mean[0]) / clip_std[0], "resize 0: pixel %lld is not the input pixel",
                   (long long)i))
            break;
    }

    // N = 0 needs no buffers.
    CHECK(mp_image_preprocess(NULL, NULL, NULL, 0, NULL, 0, &t) == MP_STATUS_OK, "N = 0: %s", mp_last_error());

    free(out);
    free(want);
    free(pout);
    free(pwant);
    for (int i = 0; i < 5; i++) free(raw[i]);
    free(j420.bytes);
    free(j444.bytes);
    free(jgray.bytes);
    free(jbig.bytes);
    free(truncated.bytes);
}

static void test_preprocess_invalid(void) {
    static const uint8_t pixels[4 * 5 * 3] = {0};
    const struct mp_image_input good = {NULL, 0, pixels, 4, 5, 15};
    static const struct { const char *name; int field; double value; } cases[] = {
        {"crop_h 0", 0, 0}, {"crop_w 0", 1, 0},     {"crop_h -1", 0, -1}, {"std[0] 0", 2, 0},
        {"std[1] 0", 3, 0}, {"std[2] -0", 4, -0.0}, {"resize -1", 5, -1}, {"unknown resample", 6, 4},
        {"negative resample", 6, -1},
    };
    float out[3 * 4 * 4];
    int32_t status[2];
    char messages[2 * 64];
    for (int i = 0; i < COUNT_OF(cases); i++) {
        struct mp_transform t = clip_transform(4, 4, 4);
        switch (cases[i].field) {
        case 0: t.crop_h = (int64_t)cases[i].value; break;
        case 1: t.crop_w = (int64_t)cases[i].value; break;
        case 2: case 3: case 4: t.std[cases[i].field - 2] = (float)cases[i].value; break;
        case 5: t.resize = (int64_t)cases[i].value; break;
        default: t.resample = (enum mp_resample)(int)cases[i].value; break;
        }
        for (int k = 0; k < COUNT_OF(out); k++) out[k] = 7.0f;
        status[0] = 99;
        enum mp_status s = mp_image_preprocess(out, status, messages, 64, &good, 1, &t);
        CHECK(s == MP_STATUS_INVALID_ARGUMENT, "preprocess with %s: status '%s'", cases[i].name, mp_status_str(s));
        CHECK(mp_last_error()[0] != 0, "preprocess with %s: no message", cases[i].name);
        CHECK(out[0] == 7.0f && status[0] == 99, "preprocess with %s wrote its outputs", cases[i].name);
    }

    // Inputs without data; the bad one comes second, after a good one that must not be written either.
    static const struct { const char *name; struct mp_image_input input; } bad_inputs[] = {
        {"NULL pixels and NULL bytes", {NULL, 0, NULL, 4, 5, 15}},
        {"NULL pixels, NULL bytes, size 0", {NULL, 0, NULL, 0, 0, 0}},
        {"height 0", {NULL, 0, pixels, 0, 5, 15}},
        {"width 0", {NULL, 0, pixels, 4, 0, 15}},
        {"negative height", {NULL, 0, pixels, -4, 5, 15}},
        {"row stride below 3 * width", {NULL, 0, pixels, 4, 5, 14}},
    };
    struct mp_transform t = clip_transform(4, 4, 4);
    for (int i = 0; i < COUNT_OF(bad_inputs); i++) {
        struct mp_image_input two[2] = {good, bad_inputs[i].input};
        float out2[2 * 3 * 4 * 4];
        for (int k = 0; k < COUNT_OF(out2); k++) out2[k] = 7.0f;
        status[0] = status[1] = 99;
        enum mp_status s = mp_image_preprocess(out2, status, messages, 64, two, 2, &t);
        CHECK(s == MP_STATUS_INVALID_ARGUMENT, "preprocess with %s: status '%s'", bad_inputs[i].name, mp_status_str(s));
        CHECK(has(mp_last_error(), "item 1"), "preprocess with %s: message '%s' does not name item 1",
              bad_inputs[i].name, mp_last_error());
        CHECK(out2[0] == 7.0f && status[0] == 99 && status[1] == 99, "preprocess with %s wrote its outputs",
              bad_inputs[i].name);
    }

    CHECK(mp_image_preprocess(out, status, NULL, 0, &good, -1, &t) == MP_STATUS_INVALID_ARGUMENT, "N = -1");
    CHECK(mp_image_preprocess(NULL, status, NULL, 0, &good, 1, &t) == MP_STATUS_INVALID_ARGUMENT, "NULL out");
    CHECK(mp_image_preprocess(out, NULL, NULL, 0, &good, 1, &t) == MP_STATUS_INVALID_ARGUMENT, "NULL item_status");
    CHECK(mp_image_preprocess(out, status, NULL, 0, NULL, 1, &t) == MP_STATUS_INVALID_ARGUMENT, "NULL images");
    CHECK(mp_image_preprocess(out, status, NULL, 0, &good, 1, NULL) == MP_STATUS_INVALID_ARGUMENT, "NULL transform");
    // And the good input alone goes through.
    CHECK(mp_image_preprocess(out, status, NULL, 0, &good, 1, &t) == MP_STATUS_OK && status[0] == MP_STATUS_OK,
          "the good input alone: %s", mp_last_error());
}

static void test_preprocess_fast(void) {
    struct jpeg jpegs[] = {
        make_rgb_jpeg(320, 256, TJSAMP_420, 0, 11),                  // decoded at 1/4
        make_rgb_jpeg(200, 500, TJSAMP_422, TJFLAG_PROGRESSIVE, 12), // decoded at 1/4
        make_gray_jpeg(130, 97, 0, 13),                              // decoded at 1/2
        make_rgb_jpeg(33, 20, TJSAMP_444, 0, 14),                    // too small to scale
    };
    const char *names[] = {"320x256 4:2:0", "200x500 4:2:2 progressive", "130x97 gray", "33x20 4:4:4"};
    enum { N = COUNT_OF(jpegs) };
    struct mp_image_input inputs[N];
    for (int i = 0; i < N; i++) inputs[i] = (struct mp_image_input){jpegs[i].bytes, jpegs[i].size, NULL, 0, 0, 0};
    struct mp_transform exact = clip_transform(24, 20, 22), fast = exact;
    fast.fast = 1;
    int64_t item = 3 * 20 * 22;
    float *out_exact = xmalloc((size_t)(N * item) * sizeof(float)), *out_fast = xmalloc((size_t)(N * item) * sizeof(float));
    int32_t st_exact[N], st_fast[N];
    char messages[N * MESSAGE_SIZE];
    CHECK(mp_image_preprocess(out_exact, st_exact, messages, MESSAGE_SIZE, inputs, N, &exact) == MP_STATUS_OK, "exact");
    CHECK(mp_image_preprocess(out_fast, st_fast, messages, MESSAGE_SIZE, inputs, N, &fast) == MP_STATUS_OK, "fast");
    for (int i = 0; i < N; i++) {
        CHECK(st_exact[i] == MP_STATUS_OK, "exact JPEG %s: %s", names[i], messages + i * MESSAGE_SIZE);
        CHECK(st_fast[i] == MP_STATUS_OK, "fast JPEG %s: %s", names[i], messages + i * MESSAGE_SIZE);
        const float *a = out_fast + i * item, *b = out_exact + i * item;
        CHECK(all_finite(a, item), "fast JPEG %s: a non-finite value", names[i]);
        // The DCT-scaled decode is not exact, but a smooth image stays close: in units of
        // 1 / (255 * std), about 4 levels on average.
        double sum = 0.0;
        for (int64_t k = 0; k < item; k++) sum += fabs((double)a[k] - b[k]);
        CHECK(sum / (double)item < 0.06, "fast JPEG %s: mean abs diff %g from exact mode", names[i], sum / (double)item);
    }
    for (int i = 0; i < N; i++) free(jpegs[i].bytes);
    free(out_exact);
    free(out_fast);
}

// CMYK JPEGs (stored as YCCK by libjpeg) decode to Pillow's conversion of Adobe CMYK.
static void test_cmyk(void) {
    enum { W = 24, H = 16 };
    // Four flat quadrants, stored values as Adobe writes them (inverted).
    static const uint8_t quadrants[4][4] = {{255, 255, 255, 255}, {0, 255, 255, 255}, {255, 128, 64, 200}, {30, 60, 90, 120}};
    uint8_t cmyk[W * H * 4];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) memcpy(cmyk + (y * W + x) * 4, quadrants[(y >= H / 2) * 2 + (x >= W / 2)], 4);
    struct jpeg j = make_jpeg(cmyk, W, H, TJPF_CMYK, TJSAMP_444, 100, 0);
    struct mp_jpeg_header h;
    enum mp_status s = mp_jpeg_read_header(&h, j.bytes, j.size);
    if (CHECK(s == MP_STATUS_OK, "CMYK header: %s", mp_last_error())) {
        CHECK(h.components == 4 && h.width == W && h.height == H, "CMYK header: %d components, %lldx%lld",
              (int)h.components, (long long)h.width, (long long)h.height);
        for (int denom = 1; denom <= 2; denom *= 2) {
            int64_t dh = mp_jpeg_scaled(H, denom), dw = mp_jpeg_scaled(W, denom);
            size_t scratch_size = mp_jpeg_scratch_size(&h, denom);
            CHECK(scratch_size == (size_t)(dh * dw * 4), "CMYK scratch size %zu at 1/%d", scratch_size, denom);
            uint8_t *rgb = xmalloc((size_t)(dh * dw * 3)), *scratch = xmalloc(scratch_size);
            s = mp_jpeg_decode(rgb, scratch, &h, j.bytes, j.size, denom, 0);
            if (CHECK(s == MP_STATUS_OK, "CMYK decode at 1/%d: %s", denom, mp_last_error())) {
                // The centre of each quadrant against Pillow's formula.
                int worst = 0;
                for (int q = 0; q < 4; q++) {
                    int64_t y = ((q / 2) * 2 + 1) * dh / 4, x = ((q % 2) * 2 + 1) * dw / 4;
                    int nk = quadrants[q][3];
                    for (int c = 0; c < 3; c++) {
                        int t = (255 - quadrants[q][c]) * nk + 128;
                        int want = nk - (((t >> 8) + t) >> 8);
                        int d = abs((int)rgb[(y * dw + x) * 3 + c] - want);
                        if (d > worst) worst = d;
                    }
                }
                CHECK(worst <= 3, "CMYK decode at 1/%d: off by %d from Pillow's CMYK -> RGB", denom, worst);
            }
            free(rgb);
            free(scratch);
        }
        CHECK(mp_jpeg_decode((uint8_t[W * H * 3]){0}, NULL, &h, j.bytes, j.size, 1, 0) == MP_STATUS_INVALID_ARGUMENT,
              "CMYK decode without scratch");
    }
    // And through the batch, exact and fast.
    struct mp_image_input in = {j.bytes, j.size, NULL, 0, 0, 0};
    for (int fast = 0; fast <= 1; fast++) {
        struct mp_transform t = clip_transform(8, 8, 8);
        t.fast = fast;
        float out[3 * 8 * 8];
        int32_t status = -1;
        char message[MESSAGE_SIZE] = "";
        CHECK(mp_image_preprocess(out, &status, message, sizeof message, &in, 1, &t) == MP_STATUS_OK &&
                  status == MP_STATUS_OK && all_finite(out, 3 * 8 * 8),
              "CMYK JPEG through preprocess (fast %d): %s", fast, message);
    }
    free(j.bytes);
}

int main(void) {
    test_resized_size();
    // Every filter kernel the CPU has (AVX-512, AVX2, portable C) against the reference.
    static const char *const isas[] = {"avx512", "avx2", "generic"};
    for (int i = 0; i < COUNT_OF(isas); i++) {
        setenv("MEGAPAIRS_MAX_ISA", isas[i], 1);
        printf("kernels capped at %s\n", isas[i]);
        test_resample_window();
    }
    unsetenv("MEGAPAIRS_MAX_ISA");
    test_preprocess_batch();
    test_preprocess_invalid();
    test_preprocess_fast();
    test_cmyk();
    return check_summary("test_image");
}
