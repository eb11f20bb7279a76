/* image/resample.c: Pillow's two-pass resampling, bit for bit: filter weights in 22-bit
 * fixed point, a horizontal pass into uint8, a vertical pass, with AVX2 / AVX-512 variants
 * chosen at run time beside the portable reference. */
#include "image/resample.h"

#include "core/isa.h"
#include "core/simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h> // part of the x86-64 baseline: no run-time check needed
#endif

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

/* The two passes. Sums are integers, so any summation order gives Pillow's exact result;
 * both loops are laid out to vectorise, and compiled for AVX-512, AVX2 and the baseline
 * with the best chosen at run time (no -march: one binary runs on every x86-64 CPU).
 * Accumulation is in uint32_t: partial sums may leave the int32 range in another order
 * than Pillow's, and unsigned arithmetic wraps where signed would be undefined; the final
 * sum is always within int32. */

#define ROW_BLOCK 16 // input rows filtered together, one per vector lane

/* block[i * 16 + r] = rows[r][i] for i in [0, n): the transpose of 16 rows of n bytes. */
static void transpose_rows(uint8_t *block, const uint8_t *const rows[ROW_BLOCK], int64_t n) {
    int64_t i = 0;
#if defined(__SSE2__)
    // Four rounds of interleaving transpose a 16 x 16 byte tile; x[j] ends up holding
    // column bitreverse4(j).
    static const int column_of[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    for (; i + 16 <= n; i += 16) {
        __m128i x[16], y[16];
        for (int r = 0; r < 16; r++) x[r] = _mm_loadu_si128((const __m128i *)(rows[r] + i));
        for (int k = 0; k < 8; k++) {
            y[k] = _mm_unpacklo_epi8(x[2 * k], x[2 * k + 1]);
            y[k + 8] = _mm_unpackhi_epi8(x[2 * k], x[2 * k + 1]);
        }
        for (int k = 0; k < 8; k++) {
            x[k] = _mm_unpacklo_epi16(y[2 * k], y[2 * k + 1]);
            x[k + 8] = _mm_unpackhi_epi16(y[2 * k], y[2 * k + 1]);
        }
        for (int k = 0; k < 8; k++) {
            y[k] = _mm_unpacklo_epi32(x[2 * k], x[2 * k + 1]);
            y[k + 8] = _mm_unpackhi_epi32(x[2 * k], x[2 * k + 1]);
        }
        for (int k = 0; k < 8; k++) {
            x[k] = _mm_unpacklo_epi64(y[2 * k], y[2 * k + 1]);
            x[k + 8] = _mm_unpackhi_epi64(y[2 * k], y[2 * k + 1]);
        }
        for (int j = 0; j < 16; j++) _mm_storeu_si128((__m128i *)(block + (i + column_of[j]) * 16), x[j]);
    }
#endif
    for (; i < n; i++)
        for (int r = 0; r < ROW_BLOCK; r++) block[i * 16 + r] = rows[r][i];
}

/* Filters the transposed block: for every output column and channel, the weighted sum of
 * its taps over all ROW_BLOCK rows at once. Three versions of the same integer arithmetic:
 * portable C (the reference, and the fallback), AVX2 and AVX-512, chosen at run time. */
typedef void (*filter_block_fn)(uint8_t *dst, int64_t dst_stride, int64_t rows, const uint8_t *block,
                                const int32_t *k, const int64_t *bounds, int64_t x0, int64_t ncols, int64_t ksize);

static void filter_block_c(uint8_t *dst, int64_t dst_stride, int64_t rows, const uint8_t *block, const int32_t *k,
                           const int64_t *bounds, int64_t x0, int64_t ncols, int64_t ksize) {
    for (int64_t xx = 0; xx < ncols; xx++) {
        const int32_t *kk = k + xx * ksize;
        int64_t xmin = bounds[2 * xx] - x0, n = bounds[2 * xx + 1];
        for (int c = 0; c < 3; c++) {
            uint32_t acc[ROW_BLOCK];
            for (int r = 0; r < ROW_BLOCK; r++) acc[r] = 1u << (PRECISION_BITS - 1);
            for (int64_t t = 0; t < n; t++) {
                const uint8_t *lane = block + ((xmin + t) * 3 + c) * ROW_BLOCK;
                for (int r = 0; r < ROW_BLOCK; r++) acc[r] += (uint32_t)lane[r] * (uint32_t)kk[t];
            }
            for (int64_t r = 0; r < rows; r++) dst[r * dst_stride + 3 * xx + c] = clip8((int32_t)acc[r]);
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void filter_block_avx2(uint8_t *dst, int64_t dst_stride, int64_t rows,
                                                                const uint8_t *block, const int32_t *k,
                                                                const int64_t *bounds, int64_t x0, int64_t ncols,
                                                                int64_t ksize) {
    for (int64_t xx = 0; xx < ncols; xx++) {
        const int32_t *kk = k + xx * ksize;
        int64_t xmin = bounds[2 * xx] - x0, n = bounds[2 * xx + 1];
        for (int c = 0; c < 3; c++) {
            __m256i lo = _mm256_set1_epi32(1 << (PRECISION_BITS - 1)), hi = lo;
            for (int64_t t = 0; t < n; t++) {
                const uint8_t *lane = block + ((xmin + t) * 3 + c) * ROW_BLOCK;
                __m256i w = _mm256_set1_epi32(kk[t]);
                __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)lane));
                __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(lane + 8)));
                lo = _mm256_add_epi32(lo, _mm256_mullo_epi32(a, w));
                hi = _mm256_add_epi32(hi, _mm256_mullo_epi32(b, w));
            }
            int32_t acc[ROW_BLOCK];
            _mm256_storeu_si256((__m256i *)acc, lo);
            _mm256_storeu_si256((__m256i *)(acc + 8), hi);
            for (int64_t r = 0; r < rows; r++) dst[r * dst_stride + 3 * xx + c] = clip8(acc[r]);
        }
    }
}

__attribute__((target("avx512f"))) static void filter_block_avx512(uint8_t *dst, int64_t dst_stride, int64_t rows,
                                                                     const uint8_t *block, const int32_t *k,
                                                                     const int64_t *bounds, int64_t x0,
                                                                     int64_t ncols, int64_t ksize) {
    for (int64_t xx = 0; xx < ncols; xx++) {
        const int32_t *kk = k + xx * ksize;
        int64_t xmin = bounds[2 * xx] - x0, n = bounds[2 * xx + 1];
        for (int c = 0; c < 3; c++) {
            __m512i acc = _mm512_set1_epi32(1 << (PRECISION_BITS - 1));
            for (int64_t t = 0; t < n; t++) {
                const uint8_t *lane = block + ((xmin + t) * 3 + c) * ROW_BLOCK;
                __m512i px = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)lane));
                acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(px, _mm512_set1_epi32(kk[t])));
            }
            int32_t out[ROW_BLOCK];
            _mm512_storeu_si512(out, acc);
            for (int64_t r = 0; r < rows; r++) dst[r * dst_stride + 3 * xx + c] = clip8(out[r]);
        }
    }
}
#endif

// The widest kernel the CPU runs, up to the ISA cap (core/isa.h: MEGAPAIRS_MAX_ISA), to
// compare kernels or work around a misbehaving machine.
static filter_block_fn pick_filter_block(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    enum mp_isa cap = mp_get_max_isa();
    if (cap >= MP_ISA_AVX512 && __builtin_cpu_supports("avx512f")) return filter_block_avx512;
    if (cap >= MP_ISA_AVX2 && __builtin_cpu_supports("avx2")) return filter_block_avx2;
#endif
    return filter_block_c;
}

/* The horizontal pass over a block of `rows` (<= ROW_BLOCK) input rows. The block is first
 * transposed so that each (input column, channel) holds its rows side by side; every tap is
 * then one broadcast multiply-add over all rows, with no per-pixel reduction.
 * k holds ksize taps per output column; `block` holds ROW_BLOCK * 3 * span bytes; `zeros`
 * is a row of at least 3 * span zero bytes standing in for missing rows of a last block. */
static void horizontal_block(uint8_t *dst, int64_t dst_stride, const uint8_t *in, int64_t in_stride, int64_t rows,
                             const int32_t *k, const int64_t *bounds, int64_t ncols, int64_t ksize, uint8_t *block,
                             const uint8_t *zeros, filter_block_fn filter_block) {
    int64_t x0 = bounds[0], x1 = bounds[2 * (ncols - 1)] + bounds[2 * (ncols - 1) + 1];
    const uint8_t *row_ptrs[ROW_BLOCK];
    for (int64_t r = 0; r < ROW_BLOCK; r++) row_ptrs[r] = r < rows ? in + r * in_stride + x0 * 3 : zeros;
    transpose_rows(block, row_ptrs, (x1 - x0) * 3);
    filter_block(dst, dst_stride, rows, block, k, bounds, x0, ncols, ksize);
}

// One row of the vertical pass: `width3` values, each a weighted sum of n rows of `src`.
MP_CLONES static void vertical_row(uint8_t *dst, const uint8_t *src, int64_t stride, const int32_t *k, int64_t n,
                                   int64_t width3, uint32_t *acc) {
    for (int64_t c = 0; c < width3; c++) acc[c] = 1u << (PRECISION_BITS - 1);
    for (int64_t y = 0; y < n; y++) {
        const uint8_t *row = src + y * stride;
        uint32_t weight = (uint32_t)k[y];
        for (int64_t c = 0; c < width3; c++) acc[c] += (uint32_t)row[c] * weight;
    }
    for (int64_t c = 0; c < width3; c++) dst[c] = clip8((int32_t)acc[c]);
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
    bytes += (size_t)(ROW_BLOCK + 1) * 3 * (size_t)W; // transposed block of input rows + a zero row
    bytes += (size_t)crop_w * 3 * sizeof(uint32_t); // vertical-pass accumulators
    bytes += (size_t)(crop_h * ky) * sizeof(int32_t) + (size_t)crop_h * 2 * sizeof(int64_t);
    bytes += (size_t)(kx > ky ? kx : ky) * sizeof(double); // unnormalised weights of one sample
    // First-pass intermediate: every input row of the window's columns, or (vertical first)
    // the window's rows over every input column; and the accumulators of either vertical pass.
    size_t mid_h = (size_t)H * (size_t)crop_w * 3, mid_v = (size_t)crop_h * (size_t)W * 3;
    bytes += mid_h > mid_v ? mid_h : mid_v;
    bytes += (size_t)(W > crop_w ? W : crop_w) * 3 * sizeof(uint32_t);
    return bytes + 64;
}

int mp_resample_vertical_first(enum mp_pass_order order, int64_t H, int64_t W, int64_t resized_h, int64_t resized_w) {
    if (order != MP_PASS_ORDER_PILLOW13 || H == resized_h || W == resized_w) return 0;
    return H > resized_h && H - resized_h > 2 * (W - resized_w);
}

enum mp_status mp_resample_window(uint8_t *out, void *scratch, const uint8_t *in, int64_t H, int64_t W,
                                  int64_t in_stride, int64_t resized_h, int64_t resized_w, int64_t top,
                                  int64_t left, int64_t crop_h, int64_t crop_w, enum mp_resample filter,
                                  enum mp_pass_order order) {
    if (!out || !scratch || !in || H <= 0 || W <= 0 || in_stride < 3 * W || resized_h <= 0 || resized_w <= 0 ||
        crop_h <= 0 || crop_w <= 0 || filter < MP_RESAMPLE_BICUBIC || filter > MP_RESAMPLE_BOX ||
        (order != MP_PASS_ORDER_PILLOW12 && order != MP_PASS_ORDER_PILLOW13))
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
    uint32_t *acc = (uint32_t *)cursor; // one vertical-pass row: window columns, or input columns
    cursor += (size_t)(W > ncols ? W : ncols) * 3 * sizeof(uint32_t);
    uint8_t *block = cursor;
    cursor += (size_t)ROW_BLOCK * 3 * (size_t)W;
    uint8_t *zeros = cursor;
    cursor += (size_t)3 * (size_t)W;
    uint8_t *mid = cursor;

    // Vertical coefficients decide which input rows the horizontal pass must produce.
    int64_t row_first = p.row_lo, row_count = nrows;
    if (p.ky) {
        coefficients(ky, by, w, H, resized_h, p.row_lo, nrows, p.ky, f);
        row_first = by[0];
        row_count = by[2 * (nrows - 1)] + by[2 * (nrows - 1) + 1] - row_first;
    }
    if (p.kx) coefficients(kx, bx, w, W, resized_w, p.col_lo, ncols, p.kx, f);
    uint8_t *dst0 = out + ((p.row_lo - top) * crop_w + (p.col_lo - left)) * 3;

    if (mp_resample_vertical_first(order, H, W, resized_h, resized_w)) {
        // Vertical pass over the input columns the horizontal pass reads, window rows only ...
        int64_t cx0 = bx[0], span = bx[2 * (ncols - 1)] + bx[2 * (ncols - 1) + 1] - cx0;
        for (int64_t yy = 0; yy < nrows; yy++)
            vertical_row(mid + yy * span * 3, in + by[2 * yy] * in_stride + cx0 * 3, in_stride, ky + yy * p.ky,
                         by[2 * yy + 1], span * 3, acc);
        // ... then the horizontal pass over those rows, into the window.
        for (int64_t i = 0; i < ncols; i++) bx[2 * i] -= cx0;
        if (nrows % ROW_BLOCK) memset(zeros, 0, (size_t)3 * (size_t)W);
        filter_block_fn filter_block = pick_filter_block();
        for (int64_t y = 0; y < nrows; y += ROW_BLOCK)
            horizontal_block(dst0 + y * crop_w * 3, crop_w * 3, mid + y * span * 3, span * 3,
                             nrows - y < ROW_BLOCK ? nrows - y : ROW_BLOCK, kx, bx, ncols, p.kx, block, zeros,
                             filter_block);
        return MP_STATUS_OK;
    }

    // Horizontal pass: rows [row_first, row_first + row_count) of the input, window columns only.
    const uint8_t *src = in;
    int64_t src_stride = in_stride, src_col0 = 0;
    if (p.kx) {
        if (row_count % ROW_BLOCK) memset(zeros, 0, (size_t)3 * (size_t)W);
        filter_block_fn filter_block = pick_filter_block();
        for (int64_t y = 0; y < row_count; y += ROW_BLOCK)
            horizontal_block(mid + y * ncols * 3, ncols * 3, in + (row_first + y) * in_stride, in_stride,
                             row_count - y < ROW_BLOCK ? row_count - y : ROW_BLOCK, kx, bx, ncols, p.kx, block, zeros,
                             filter_block);
        src = mid;
        src_stride = ncols * 3;
    } else {
        src = in + row_first * in_stride; // width unchanged: read the input's window columns directly
        src_col0 = p.col_lo;
    }

    // Vertical pass into the window of `out`.
    for (int64_t yy = 0; yy < nrows; yy++) {
        uint8_t *dst = dst0 + yy * crop_w * 3;
        if (!p.ky) { // height unchanged: copy the row
            memcpy(dst, src + (yy + p.row_lo - row_first) * src_stride + src_col0 * 3, (size_t)ncols * 3);
            continue;
        }
        vertical_row(dst, src + (by[2 * yy] - row_first) * src_stride + src_col0 * 3, src_stride, ky + yy * p.ky,
                     by[2 * yy + 1], ncols * 3, acc);
    }
    return MP_STATUS_OK;
}
