/* knn/knn.c: exact top-k and band search. Score tiles come from one bf16 or fp32 GEMM,
 * a proven rounding bound decides which candidates could still change the answer, and
 * those are rescored in double, so the result equals a float64 brute force. */
#include "knn/knn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/simd.h"

// A candidate: its corpus index and the upper bound of its score (the GEMM score in the
// approximate mode).
struct candidate {
    double  ub;
    int64_t j;
};

// The selection state of one query: a min-heap of the k best certified lower bounds (so
// lb[0] is a lower bound of the k-th best true score once the heap holds k), and the
// candidates whose upper bound reached it.
struct row_state {
    double           *lb;
    int64_t           n_lb;
    struct candidate *cand;
    int64_t           n_cand, cap;
    int               failed; // out of memory
};

static void heap_push_min(double *h, int64_t *n, int64_t k, double x) {
    if (*n < k) { // sift up
        int64_t i = (*n)++;
        while (i > 0 && h[(i - 1) / 2] > x) h[i] = h[(i - 1) / 2], i = (i - 1) / 2;
        h[i] = x;
        return;
    }
    if (x <= h[0]) return;
    int64_t i = 0; // replace the root, sift down
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= k) break;
        if (c + 1 < k && h[c + 1] < h[c]) c++;
        if (h[c] >= x) break;
        h[i] = h[c], i = c;
    }
    h[i] = x;
}

// Drops the candidates whose upper bound fell below the threshold.
static void compact(struct row_state *r, double threshold) {
    int64_t n = 0;
    for (int64_t i = 0; i < r->n_cand; i++)
        if (r->cand[i].ub >= threshold) r->cand[n++] = r->cand[i];
    r->n_cand = n;
}

static int add_candidate(struct row_state *r, double ub, int64_t j, double threshold) {
    if (r->n_cand == r->cap) {
        compact(r, threshold);
        if (r->n_cand * 2 >= r->cap) { // still half full or more: grow
            int64_t cap = r->cap ? 2 * r->cap : 64;
            struct candidate *grown = realloc(r->cand, (size_t)cap * sizeof *grown);
            if (!grown) return -1;
            r->cand = grown, r->cap = cap;
        }
    }
    r->cand[r->n_cand++] = (struct candidate){ub, j};
    return 0;
}

/* One query against one scored corpus block: s[0..n) are the GEMM scores of corpus rows
 * j0..; the error bound of score j is qa * cp[j] + qb * cr[j] (see vector_terms). A score can
 * only matter if its upper bound reaches both lo and the current threshold; 16-score blocks
 * whose largest upper bound does not are skipped whole. */
MP_CLONES static void select_block(struct row_state *r, const float *s, const double *cp, const double *cr,
                                   const float *cpf, const float *crf, double qa, double qb, int64_t j0, int64_t n,
                                   int64_t self, double lo, double hi, int64_t k) {
    double threshold = r->n_lb == k ? r->lb[0] : -INFINITY;
    double floor = threshold > lo ? threshold : lo;
    float fa = (float)qa, fb = (float)qb;
    for (int64_t b = 0; b < n; b += 16) {
        int64_t w = n - b < 16 ? n - b : 16;
        // Pre-check in float, 16 lanes: skip the block when even its largest upper bound, with
        // a margin for the float rounding (relative 2^-20, absolute 2^-100), is below the floor.
        float top = -INFINITY, mag = 0.0f; // mag: the largest |s| + e, what the rounding scales with
        if (w == 16) {
#pragma omp simd reduction(max : top, mag)
            for (int i = 0; i < 16; i++) {
                float e = fa * cpf[b + i] + fb * crf[b + i], ub = s[b + i] + e, m = fabsf(s[b + i]) + e;
                top = ub > top ? ub : top;
                mag = m > mag ? m : mag;
            }
        } else {
            for (int64_t i = 0; i < w; i++) {
                float e = fa * cpf[b + i] + fb * crf[b + i], ub = s[b + i] + e, m = fabsf(s[b + i]) + e;
                top = ub > top ? ub : top;
                mag = m > mag ? m : mag;
            }
        }
        double margin = (double)mag * 0x1p-20 + 0x1p-100;
        if ((double)top + margin < floor && isfinite(top)) continue;
        for (int64_t i = 0; i < w; i++) {
            int64_t j = j0 + b + i;
            double sc = s[b + i], e = qa * cp[b + i] + qb * cr[b + i], ub = sc + e, lb = sc - e;
            if (!isfinite(sc)) ub = INFINITY, lb = -INFINITY; // overflowed: decide in double
            if (ub < floor || ub <= lo || lb >= hi || j == self) continue;
            if (add_candidate(r, ub, j, threshold)) {
                r->failed = 1;
                return;
            }
            if (lb > lo && ub < hi) { // certainly in the band: its lower bound may raise the threshold
                heap_push_min(r->lb, &r->n_lb, k, lb);
                if (r->n_lb == k) {
                    threshold = r->lb[0];
                    floor = threshold > lo ? threshold : lo;
                }
            }
        }
    }
}

// <a, b> in double precision (each product is exact in double), eight partial sums so the
// loop vectorises.
MP_CLONES static double dot_double(const float *a, const float *b, int64_t d) {
    double acc[8] = {0};
    int64_t t = 0;
    for (; t + 8 <= d; t += 8)
#pragma omp simd
        for (int i = 0; i < 8; i++) acc[i] += (double)a[t + i] * (double)b[t + i];
    double sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; t < d; t++) sum += (double)a[t] * (double)b[t];
    return sum;
}

static int by_score(const void *pa, const void *pb) {
    const struct candidate *a = pa, *b = pb; // ub holds the final score here
    if (a->ub != b->ub) return a->ub > b->ub ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

// The query's final answer: rescored (exact) or GEMM scores, band, order, padding. Returns
// how many candidates it scored.
static int64_t finish_row(struct row_state *r, float *scores, double *scores64, int64_t *indices, const float *q,
                          const float *corpus, int64_t d, int64_t k, double lo, double hi, int exact) {
    double threshold = r->n_lb == k ? r->lb[0] : -INFINITY;
    int64_t n = 0, scored = 0;
    for (int64_t i = 0; i < r->n_cand; i++) {
        struct candidate c = r->cand[i];
        if (c.ub < threshold) continue;
        scored++;
        if (exact && i + 1 < r->n_cand) { // the next row is a random read: start it early
            const char *next = (const char *)(corpus + r->cand[i + 1].j * d);
            for (int64_t line = 0; line < d * (int64_t)sizeof(float); line += 64) __builtin_prefetch(next + line);
        }
        if (exact) c.ub = dot_double(q, corpus + c.j * d, d);
        if (c.ub > lo && c.ub < hi) r->cand[n++] = c;
    }
    if (n > 1) qsort(r->cand, (size_t)n, sizeof *r->cand, by_score);
    for (int64_t i = 0; i < k; i++) {
        scores[i] = i < n ? (float)r->cand[i].ub : -INFINITY;
        if (scores64) scores64[i] = i < n ? r->cand[i].ub : -INFINITY;
        indices[i] = i < n ? r->cand[i].j : -1;
    }
    return scored;
}

/* The GEMM error bound, per vector. With x^ the vector the GEMM multiplies (x itself in fp32,
 * x rounded to bf16 otherwise), r = x - x^, n = ||x^|| and rho = ||r||:
 *   |x^.y^ - x.y| = |x^.r_y + r_x.y^ + r_x.r_y| <= n_x rho_y + rho_x n_y + rho_x rho_y,
 * and the fp32 accumulation of the (exact) products x^_t y^_t adds at most
 * gamma_d * sum |x^_t y^_t| <= gamma_d n_x n_y, gamma_d = d u / (1 - d u), u = 2^-24. So
 *   err(x, y) <= n_x (rho_y + gamma_d n_y) + rho_x (n_y + rho_y) = a_x p_y + b_x r_y
 * with a = n, b = rho for queries and p = rho + gamma_d n, r = n + rho for the corpus. The
 * norms are computed in double and scaled by (1 + 2^-20) to cover that arithmetic. Using the
 * actual rounding residuals rather than the worst case (2^-8 relative) makes the bound about
 * three times tighter for bf16, and so the candidate sets about three times smaller. */
// x rounded to the nearest bf16 (ties to even) and widened back, for finite x: what
// mp_dtype_convert gives the GEMM.
static inline float round_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&x, &bits, sizeof x);
    return x;
}

MP_CLONES static void vector_terms(const float *x, int64_t d, int bf16, double *n_out, double *rho_out) {
    double n = 0.0, rho = 0.0;
    for (int64_t t = 0; t < d; t++) {
        double v = x[t], h = bf16 ? (double)round_to_bf16(x[t]) : v;
        n += h * h, rho += (v - h) * (v - h);
    }
    double safety = 1.0 + ldexp(1.0, -20);
    *n_out = sqrt(n) * safety, *rho_out = sqrt(rho) * safety;
}

enum mp_status mp_knn_search(float *scores, double *scores64, int64_t *indices, const float *queries, int64_t Q,
                             const float *corpus,
                             int64_t M, int64_t d, int64_t k, double lo, double hi, int exclude_self,
                             enum mp_precision precision, int exact, struct mp_knn_stats *stats) {
    if (Q < 0 || M < 0 || d <= 0 || k <= 0 || (Q > 0 && (!scores || !indices || !queries)) || (M > 0 && !corpus))
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "knn_search: bad arguments (Q=%lld M=%lld d=%lld k=%lld)",
                        (long long)Q, (long long)M, (long long)d, (long long)k);
    if (!(lo < hi)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "knn_search: need lo < hi");
    if (precision != MP_PRECISION_FP32 && precision != MP_PRECISION_BF16)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "knn_search: unknown precision");
    if (stats) stats->candidates = 0;
    if (Q == 0) return MP_STATUS_OK;
    int bf16 = precision == MP_PRECISION_BF16;
    double u32 = ldexp(1.0, -24), gamma = (double)(d + 2) * u32 / (1.0 - (double)(d + 2) * u32);
    int64_t BQ = Q < MP_KNN_QUERY_BLOCK ? Q : MP_KNN_QUERY_BLOCK;
    int64_t BC = M < MP_KNN_CORPUS_BLOCK ? (M > 0 ? M : 1) : MP_KNN_CORPUS_BLOCK;
    float *tile = malloc((size_t)(BQ * BC) * sizeof *tile);
    // error-bound terms: the whole corpus once (16 bytes a row), a query block at a time
    double *cp = malloc((size_t)(M > 0 ? M : 1) * sizeof *cp), *cr = malloc((size_t)(M > 0 ? M : 1) * sizeof *cr);
    double *qa = malloc((size_t)BQ * sizeof *qa), *qb_ = malloc((size_t)BQ * sizeof *qb_);
    float *cpf = malloc((size_t)(M > 0 ? M : 1) * sizeof *cpf), *crf = malloc((size_t)(M > 0 ? M : 1) * sizeof *crf);
    uint16_t *q16 = bf16 ? malloc((size_t)(BQ * d) * sizeof *q16) : NULL;
    uint16_t *c16 = bf16 ? malloc((size_t)(BC * d) * sizeof *c16) : NULL;
    struct row_state *rows = calloc((size_t)BQ, sizeof *rows);
    double *lb = malloc((size_t)(BQ * k) * sizeof *lb);
    enum mp_status status = MP_STATUS_OK;
    if (!tile || !cp || !cr || !cpf || !crf || !qa || !qb_ || !rows || !lb || (bf16 && (!q16 || !c16))) {
        status = mp_error(MP_STATUS_OUT_OF_MEMORY, "knn_search: cannot allocate a %lld x %lld score tile",
                          (long long)BQ, (long long)BC);
        goto done;
    }
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < M; j++) {
        double n, rho;
        vector_terms(corpus + j * d, d, bf16, &n, &rho);
        cp[j] = exact ? rho + gamma * n : 0.0, cr[j] = exact ? n + rho : 0.0;
        cpf[j] = (float)cp[j], crf[j] = (float)cr[j]; // for the pre-check, which keeps a margin
    }
    for (int64_t q0 = 0; q0 < Q; q0 += BQ) {
        int64_t nq = Q - q0 < BQ ? Q - q0 : BQ;
        const float *qb = queries + q0 * d;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nq; i++) {
            double n, rho;
            vector_terms(qb + i * d, d, bf16, &n, &rho);
            qa[i] = exact ? n : 0.0, qb_[i] = exact ? rho : 0.0;
            rows[i].lb = lb + i * k, rows[i].n_lb = 0, rows[i].n_cand = 0, rows[i].failed = 0;
        }
        if (bf16) mp_dtype_convert(q16, MP_DTYPE_BF16, qb, MP_DTYPE_F32, nq * d);
        for (int64_t j0 = 0; j0 < M; j0 += BC) {
            int64_t nc = M - j0 < BC ? M - j0 : BC;
            const float *cb = corpus + j0 * d;
            // tile = q_block @ c_block^T (c read transposed through its strides)
            const int64_t out_strides[4] = {nq * nc, nq * nc, nc, 1}, a_strides[4] = {nq * d, nq * d, d, 1},
                          b_strides[4] = {nc * d, nc * d, 1, d};
            if (bf16) {
                mp_dtype_convert(c16, MP_DTYPE_BF16, cb, MP_DTYPE_F32, nc * d);
                status = mp_matmul(tile, MP_DTYPE_F32, out_strides, q16, MP_DTYPE_BF16, a_strides, c16, MP_DTYPE_BF16,
                                   b_strides, 1, 1, nq, nc, d, precision, 0);
            } else {
                status = mp_matmul(tile, MP_DTYPE_F32, out_strides, qb, MP_DTYPE_F32, a_strides, cb, MP_DTYPE_F32,
                                   b_strides, 1, 1, nq, nc, d, precision, 0);
            }
            if (status) goto done;
#pragma omp parallel for schedule(dynamic, 16)
            for (int64_t i = 0; i < nq; i++)
                select_block(&rows[i], tile + i * nc, cp + j0, cr + j0, cpf + j0, crf + j0, qa[i], qb_[i], j0, nc,
                             exclude_self ? q0 + i : -1, lo, hi, k);
        }
        int failed = 0;
        int64_t candidates = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : candidates) reduction(| : failed)
        for (int64_t i = 0; i < nq; i++) {
            failed |= rows[i].failed;
            if (rows[i].failed) continue;
            candidates += finish_row(&rows[i], scores + (q0 + i) * k, scores64 ? scores64 + (q0 + i) * k : NULL,
                                     indices + (q0 + i) * k, qb + i * d, corpus, d, k, lo, hi, exact);
        }
        if (stats) stats->candidates += candidates;
        if (failed) {
            status = mp_error(MP_STATUS_OUT_OF_MEMORY, "knn_search: out of memory for candidates");
            goto done;
        }
    }
done:
    for (int64_t i = 0; rows && i < BQ; i++) free(rows[i].cand);
    free(rows), free(lb), free(tile), free(cp), free(cr), free(cpf), free(crf), free(qa), free(qb_), free(q16), free(c16);
    return status;
}
