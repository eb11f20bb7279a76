#include "image/resample.h"

#include <math.h>
#include <string.h>

// Pillow keeps 8 bits for the result and 2 for the overshoot of negative lobes.
#define PRECISION_BITS (32 - 8 - 2)

struct filter {
    double (*weight)(double x);
    double support;
};

static double bicubic(double x) { // a = -0.5, as Pillow (PyTorch uses -0.75)
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double bilinear(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= 3.14159265358979323846;
    return sin(x) / x;
}

static double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

static double box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static const struct filter filters[] = {
    [MP_RESAMPLE_BICUBIC] = {bicubic, 2.0},
    [MP_RESAMPLE_BILINEAR] = {bilinear, 1.0},
    [MP_RESAMPLE_LANCZOS] = {lanczos, 3.0},
    [MP_RESAMPLE_BOX] = {box, 0.5},
};

// Taps per output sample for resizing `in_size` to `out_size`.
static int64_t taps(int64_t in_size, int64_t out_size, const struct filter *f) {
    double scale = (double)(float)in_size / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    return (int64_t)ceil(f->support * filterscale) * 2 + 1;
}

/* Fixed-point coefficients of output samples [first, first + count) for resizing
 * in_size -> out_size, as Pillow's precompute_coeffs + normalize_coeffs_8bpc compute them
 * (double arithmetic, then round half away from zero). k holds count * ksize ints,
 * bounds count * 2 (first input index, number of inputs); w is ksize doubles of scratch. */
static void coefficients(int32_t *k, int64_t *bounds, double *w, int64_t in_size, int64_t out_size,
                         int64_t first, int64_t count, int64_t ksize, const struct filter *f) {
    // Pillow takes the box edges as floats: (float)in_size - 0.0f.
    double scale = (double)(float)in_size / (double)out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * filterscale;
    double inv_filterscale = 1.0 / filterscale;
    for (int64_t i = 0; i < count; i++) {
        int64_t xx = first + i;
        double center = (xx + 0.5) * scale;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int64_t x = 0; x < xmax; x++) {
            w[x] = f->weight((x + xmin - center + 0.5) * inv_filterscale);
            ww += w[x];
        }
        for (int64_t x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[i * ksize + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
        }
        bounds[2 * i] = xmin;
        bounds[2 * i + 1] = xmax;
    }
}

static inline uint8_t clip8(int32_t acc) {
    int32_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Clips [start, start + len) to [0, size): the part of a window inside the image.
static void clip_range(int64_t *lo, int64_t *hi, int64_t start, int64_t len, int64_t size) {
    *lo = start < 0 ? 0 : start > size ? size : start;
    *hi = start + len < 0 ? 0 : start + len > size ? size : start + len;
}

struct plan {
    int64_t col_lo, col_hi, row_lo, row_hi; // window part inside the resized image
    int64_t kx, ky;                          // taps per sample, 0 when the pass is skipped
};

static struct plan make_plan(int64_t H, int64_t W, int64_t rh, int64_t rw, int64_t top, int64_t left,
                             int64_t crop_h, int64_t crop_w, const struct filter *f) {
    struct plan p;
    clip_range(&p.col_lo, &p.col_hi, left, crop_w, rw);
    clip_range(&p.row_lo, &p.row_hi, top, crop_h, rh);
    p.kx = rw != W ? taps(W, rw, f) : 0; // Pillow skips a pass whose size does not change
    p.ky = rh != H ? taps(H, rh, f) : 0;
    return p;
}

size_t mp_resample_scratch_size(int64_t H, int64_t W, int64_t resized_h, int64_t resized_w, int64_t crop_h,
                                int64_t crop_w, enum mp_resample filter) {
    if (filter < MP_RESAMPLE_BICUBIC || filter > MP_RESAMPLE_BOX || H <= 0 || W <= 0 || resized_h <= 0 ||
        resized_w <= 0 || crop_h <= 0 || crop_w <= 0)
        return 0;
    const struct filter *f = &filters[filter];
    int64_t kx = taps(W, resized_w, f), ky = taps(H, resized_h, f);
    size_t bytes = 0;
    bytes += (size_t)(crop_w * kx) * sizeof(int32_t) + (size_t)crop_w * 2 * sizeof(int64_t);
    bytes += (size_t)(crop_h * ky) * sizeof(int32_t) + (size_t)crop_h * 2 * sizeof(int64_t);
    bytes += (size_t)(kx > ky ? kx : ky) * sizeof(double); // unnormalised weights of one sample
    bytes += (size_t)H * (size_t)crop_w * 3;                // horizontal-pass intermediate, at most every input row
    return bytes + 64;
}

enum mp_status mp_resample_window(uint8_t *out, void *scratch, const uint8_t *in, int64_t H, int64_t W,
                                  int64_t in_stride, int64_t resized_h, int64_t resized_w, int64_t top,
                                  int64_t left, int64_t crop_h, int64_t crop_w, enum mp_resample filter) {
    if (!out || !scratch || !in || H <= 0 || W <= 0 || in_stride < 3 * W || resized_h <= 0 || resized_w <= 0 ||
        crop_h <= 0 || crop_w <= 0 || filter < MP_RESAMPLE_BICUBIC || filter > MP_RESAMPLE_BOX)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "resample_window: bad arguments");
    const struct filter *f = &filters[filter];
    struct plan p = make_plan(H, W, resized_h, resized_w, top, left, crop_h, crop_w, f);
    int64_t ncols = p.col_hi - p.col_lo, nrows = p.row_hi - p.row_lo;
    memset(out, 0, (size_t)(crop_h * crop_w * 3));
    if (ncols <= 0 || nrows <= 0) return MP_STATUS_OK;

    // Carve the scratch buffer: coefficients first, then the intermediate.
    unsigned char *cursor = scratch;
    int32_t *kx = (int32_t *)cursor;
    cursor += (size_t)(ncols * (p.kx ? p.kx : 1)) * sizeof(int32_t);
    int64_t *bx = (int64_t *)(((uintptr_t)cursor + 7) & ~(uintptr_t)7);
    cursor = (unsigned char *)(bx + 2 * ncols);
    int32_t *ky = (int32_t *)cursor;
    cursor += (size_t)(nrows * (p.ky ? p.ky : 1)) * sizeof(int32_t);
    int64_t *by = (int64_t *)(((uintptr_t)cursor + 7) & ~(uintptr_t)7);
    cursor = (unsigned char *)(by + 2 * nrows);
    double *w = (double *)cursor;
    cursor += (size_t)(p.kx > p.ky ? p.kx : p.ky) * sizeof(double);
    uint8_t *mid = cursor;

    // Vertical coefficients decide which input rows the horizontal pass must produce.
    int64_t row_first = p.row_lo, row_count = nrows;
    if (p.ky) {
        coefficients(ky, by, w, H, resized_h, p.row_lo, nrows, p.ky, f);
        row_first = by[0];
        row_count = by[2 * (nrows - 1)] + by[2 * (nrows - 1) + 1] - row_first;
    }
    if (p.kx) coefficients(kx, bx, w, W, resized_w, p.col_lo, ncols, p.kx, f);

    // Horizontal pass: rows [row_first, row_first + row_count) of the input, window columns only.
    const uint8_t *src = in;
    int64_t src_stride = in_stride, src_col0 = 0;
    if (p.kx) {
        for (int64_t y = 0; y < row_count; y++) {
            const uint8_t *line = in + (row_first + y) * in_stride;
            uint8_t *dst = mid + y * ncols * 3;
            for (int64_t xx = 0; xx < ncols; xx++) {
                const int32_t *k = kx + xx * p.kx;
                const uint8_t *px = line + bx[2 * xx] * 3;
                int64_t n = bx[2 * xx + 1];
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int64_t x = 0; x < n; x++) {
                    s0 += px[3 * x + 0] * k[x];
                    s1 += px[3 * x + 1] * k[x];
                    s2 += px[3 * x + 2] * k[x];
                }
                dst[3 * xx + 0] = clip8(s0);
                dst[3 * xx + 1] = clip8(s1);
                dst[3 * xx + 2] = clip8(s2);
            }
        }
        src = mid;
        src_stride = ncols * 3;
    } else {
        src = in + row_first * in_stride; // width unchanged: read the input's window columns directly
        src_col0 = p.col_lo;
    }

    // Vertical pass into the window of `out`.
    uint8_t *dst0 = out + ((p.row_lo - top) * crop_w + (p.col_lo - left)) * 3;
    for (int64_t yy = 0; yy < nrows; yy++) {
        uint8_t *dst = dst0 + yy * crop_w * 3;
        if (!p.ky) { // height unchanged: copy the row
            memcpy(dst, src + (yy + p.row_lo - row_first) * src_stride + src_col0 * 3, (size_t)ncols * 3);
            continue;
        }
        const int32_t *k = ky + yy * p.ky;
        int64_t ymin = by[2 * yy] - row_first, n = by[2 * yy + 1];
        for (int64_t c = 0; c < ncols * 3; c++) {
            int32_t s = 1 << (PRECISION_BITS - 1);
            const uint8_t *col = src + ymin * src_stride + src_col0 * 3 + c;
            for (int64_t y = 0; y < n; y++) s += col[y * src_stride] * k[y];
            dst[c] = clip8(s);
        }
    }
    return MP_STATUS_OK;
}
