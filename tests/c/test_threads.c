/* test_threads.c: the core's entry points called from 4 threads at once, as the Python
 * binding does with the GIL released: exact kNN, the fused InfoNCE loss, the typed matmul,
 * a linear layer per thread, and JPEG decoding. Each thread's results must equal the same
 * call made serially first, bit for bit; ASan/UBSan (make asan) watch the shared state (the
 * engine, the thread-local errors, OpenMP's per-thread counts). A model handle or linear
 * layer is not shared between threads: the binding serialises calls on one handle. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <turbojpeg.h>

#include "check.h"
#include "core/parallel.h"
#include "megapairs.h"
#include "nn/linear.h"

enum { THREADS = 4, ROUNDS = 3, Q = 300, M = 700, D = 48, K = 7, B = 64, N = 160, E = 32 };

struct job {
    int           id;
    float        *x;                 // (M, D): kNN corpus, queries its first Q rows
    float        *q, *c, *w;         // loss inputs (B, E), (N, E); linear weight (E, E)
    int64_t       pos[B];
    unsigned char *jpeg;
    unsigned long jpeg_size;
    // serial results, then each round's
    float   scores[Q * K], loss, dq[B * E], dc[N * E], mm[B * N], lin[B * E];
    int64_t ids[Q * K];
    uint8_t rgb[40 * 56 * 3];
    int     mismatches, failures;
};

static float *random_floats(int64_t n, unsigned *seed) {
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = (float)rand_r(seed) / (float)RAND_MAX * 2.0f - 1.0f;
    return x;
}

// Runs every kernel once into the given outputs; the number of failed calls.
static int run_all(struct job *j, float *scores, int64_t *ids, float *loss, float *dq, float *dc, float *mm,
                   float *lin, uint8_t *rgb) {
    int failed = 0;
    struct mp_thread_scope scope = mp_thread_scope_begin(1 + j->id % 2); // counts differ per thread
    failed += mp_knn_search(scores, NULL, ids, j->x, Q, j->x, M, D, K, -INFINITY, INFINITY, 1, MP_PRECISION_BF16,
                            1, NULL) != MP_STATUS_OK;
    failed += mp_infonce(loss, dq, dc, NULL, j->q, j->c, j->pos, NULL, B, N, E, 0.05f, NULL, MP_PRECISION_FP32) !=
              MP_STATUS_OK;
    failed += mp_matmul_nt(mm, j->q, j->c, B, N, E, MP_PRECISION_FP32) != MP_STATUS_OK;
    struct mp_linear *layer = NULL;
    failed += mp_linear_init(&layer, j->w, NULL, E, E, MP_PRECISION_BF16, MP_OP_GELU, 0) != MP_STATUS_OK;
    if (layer) failed += mp_linear_forward(layer, lin, j->q, B) != MP_STATUS_OK;
    mp_linear_free(layer);
    struct mp_jpeg_header h;
    if (mp_jpeg_read_header(&h, j->jpeg, j->jpeg_size) != MP_STATUS_OK) {
        failed++;
    } else {
        void *scratch = malloc(mp_jpeg_scratch_size(&h, 1) + 1);
        failed += mp_jpeg_decode(rgb, scratch, &h, j->jpeg, j->jpeg_size, 1, 0) != MP_STATUS_OK;
        free(scratch);
    }
    // a refused call sets this thread's message only: another thread's stays its own
    float bad_loss;
    if (mp_infonce(&bad_loss, NULL, NULL, NULL, j->q, j->c, j->pos, NULL, B, N, E, -1.0f, NULL,
                   MP_PRECISION_FP32) == MP_STATUS_OK ||
        !strstr(mp_last_error(), "temperature"))
        failed++;
    mp_thread_scope_end(scope);
    return failed;
}

static int worker(void *arg) {
    struct job *j = arg;
    float *scores = malloc(sizeof j->scores), *dq = malloc(sizeof j->dq), *dc = malloc(sizeof j->dc);
    float *mm = malloc(sizeof j->mm), *lin = malloc(sizeof j->lin), loss;
    int64_t *ids = malloc(sizeof j->ids);
    uint8_t *rgb = malloc(sizeof j->rgb);
    for (int r = 0; r < ROUNDS; r++) {
        j->failures += run_all(j, scores, ids, &loss, dq, dc, mm, lin, rgb);
        j->mismatches += memcmp(scores, j->scores, sizeof j->scores) != 0 || memcmp(ids, j->ids, sizeof j->ids) != 0;
        j->mismatches += loss != j->loss || memcmp(dq, j->dq, sizeof j->dq) != 0 || memcmp(dc, j->dc, sizeof j->dc);
        j->mismatches += memcmp(mm, j->mm, sizeof j->mm) != 0 || memcmp(lin, j->lin, sizeof j->lin) != 0;
        j->mismatches += memcmp(rgb, j->rgb, sizeof j->rgb) != 0;
    }
    free(scores), free(dq), free(dc), free(mm), free(lin), free(ids), free(rgb);
    return 0;
}

int main(void) {
    static struct job jobs[THREADS];
    tjhandle tj = tjInitCompress();
    for (int t = 0; t < THREADS; t++) {
        struct job *j = &jobs[t];
        unsigned seed = 100 + (unsigned)t;
        j->id = t;
        j->x = random_floats(M * D, &seed);
        for (int i = 0; i < 40; i++) j->x[(i + 200) * D + 3] = j->x[i * D + 3]; // some near-ties
        j->q = random_floats(B * E, &seed), j->c = random_floats(N * E, &seed), j->w = random_floats(E * E, &seed);
        for (int i = 0; i < B; i++) j->pos[i] = (i * 7 + t) % N;
        uint8_t *pixels = malloc(40 * 56 * 3);
        for (int i = 0; i < 40 * 56 * 3; i++) pixels[i] = (uint8_t)((i * (t + 3)) % 251);
        CHECK(tjCompress2(tj, pixels, 56, 0, 40, TJPF_RGB, &j->jpeg, &j->jpeg_size, TJSAMP_420, 85, 0) == 0,
              "tjCompress2: %s", tjGetErrorStr2(tj));
        free(pixels);
        CHECK(run_all(j, j->scores, j->ids, &j->loss, j->dq, j->dc, j->mm, j->lin, j->rgb) == 0,
              "serial run of job %d: %s", t, mp_last_error());
    }
    tjDestroy(tj);
    thrd_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) CHECK(thrd_create(&threads[t], worker, &jobs[t]) == thrd_success, "thrd_create");
    for (int t = 0; t < THREADS; t++) thrd_join(threads[t], NULL);
    for (int t = 0; t < THREADS; t++) {
        CHECK(jobs[t].failures == 0, "job %d: %d failed calls from its thread", t, jobs[t].failures);
        CHECK(jobs[t].mismatches == 0, "job %d: %d results differ from the serial run", t, jobs[t].mismatches);
        free(jobs[t].x), free(jobs[t].q), free(jobs[t].c), free(jobs[t].w), tjFree(jobs[t].jpeg);
    }
    (void)check_close;
    return check_summary("test_threads");
}
