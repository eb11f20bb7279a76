/* test_core.c: the pieces of the core below the file formats: statuses and the
 * thread-local error message, the thread-count setting, dtypes, the oneDNN matmul
 * against a double-precision reference, and the JPEG header reader. */
#define _POSIX_C_SOURCE 200809L

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "megapairs.h"

#define COUNT_OF(a) (int)(sizeof(a) / sizeof *(a))

static int has(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

/* ---------------------------------------------------------------- status and errors */

static void test_status_str(void) {
    static const struct { enum mp_status status; const char *str; } cases[] = {
        {MP_STATUS_OK, "ok"},
        {MP_STATUS_INVALID_ARGUMENT, "invalid argument"},
        {MP_STATUS_OUT_OF_MEMORY, "out of memory"},
        {MP_STATUS_IO, "i/o error"},
        {MP_STATUS_BAD_FORMAT, "bad format"},
        {MP_STATUS_BACKEND, "backend error"},
    };
    for (int i = 0; i < COUNT_OF(cases); i++) {
        const char *s = mp_status_str(cases[i].status);
        CHECK(s && strcmp(s, cases[i].str) == 0, "mp_status_str(%d) is '%s', expected '%s'", (int)cases[i].status,
              s ? s : "(null)", cases[i].str);
    }
    CHECK(mp_status_str((enum mp_status)99) != NULL, "mp_status_str of an unknown status is NULL");
}

struct error_thread {
    int  started_empty;    // the new thread saw no message of the main thread
    enum mp_status status; // what mp_error returned there
    char seen[64];         // its own message, as it read it back
};

static void *error_thread_main(void *arg) {
    struct error_thread *r = arg;
    r->started_empty = mp_last_error()[0] == 0;
    r->status = mp_error(MP_STATUS_BACKEND, "thread message %d", 2);
    snprintf(r->seen, sizeof r->seen, "%s", mp_last_error());
    return NULL;
}

static void test_errors(void) {
    CHECK(mp_error(MP_STATUS_IO, "cannot open '%s': %s", "x.bin", "denied") == MP_STATUS_IO, "mp_error returns its status");
    CHECK(strcmp(mp_last_error(), "cannot open 'x.bin': denied") == 0, "message round trip: %s", mp_last_error());
    CHECK(mp_error(MP_STATUS_OK, "%d%%", 5) == MP_STATUS_OK && strcmp(mp_last_error(), "5%") == 0,
          "formatting: %s", mp_last_error());

    // A message longer than the buffer is cut, still terminated.
    char *long_text = malloc(5001);
    memset(long_text, 'x', 5000);
    long_text[5000] = 0;
    mp_error(MP_STATUS_BAD_FORMAT, "%s", long_text);
    size_t n = strlen(mp_last_error());
    CHECK(n > 0 && n < 5000 && strspn(mp_last_error(), "x") == n, "long message kept %zu bytes", n);
    free(long_text);

    mp_error(MP_STATUS_IO, "main message");
    struct error_thread r = {0};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, error_thread_main, &r) == 0, "pthread_create");
    pthread_join(thread, NULL);
    CHECK(r.started_empty, "a new thread sees another thread's message");
    CHECK(r.status == MP_STATUS_BACKEND && strcmp(r.seen, "thread message 2") == 0, "the thread's own message: %s",
          r.seen);
    CHECK(strcmp(mp_last_error(), "main message") == 0, "the thread changed the main thread's message: %s",
          mp_last_error());
}

/* ---------------------------------------------------------------- threads */

static void test_threads(int openmp_default) {
    CHECK(mp_get_num_threads() == openmp_default, "default count %d, OpenMP says %d", mp_get_num_threads(),
          openmp_default);
    mp_set_num_threads(3);
    CHECK(mp_get_num_threads() == 3, "after set(3): %d", mp_get_num_threads());
    CHECK(omp_get_max_threads() == 3, "set(3) does not apply to the calling thread: %d", omp_get_max_threads());

    struct mp_thread_scope scope = mp_thread_scope_begin(2);
    CHECK(omp_get_max_threads() == 2, "inside scope(2): %d", omp_get_max_threads());
    mp_thread_scope_end(scope);
    CHECK(omp_get_max_threads() == 3, "after scope(2): %d", omp_get_max_threads());
    scope = mp_thread_scope_begin(0); // 0: the process-wide default
    CHECK(omp_get_max_threads() == 3, "inside scope(0): %d", omp_get_max_threads());
    mp_thread_scope_end(scope);

    static const int resets[] = {0, -5};
    for (int i = 0; i < COUNT_OF(resets); i++) {
        mp_set_num_threads(7);
        mp_set_num_threads(resets[i]);
        CHECK(mp_get_num_threads() == openmp_default, "set(%d) gives %d, expected the OpenMP default %d", resets[i],
              mp_get_num_threads(), openmp_default);
        CHECK(omp_get_max_threads() == openmp_default, "set(%d) leaves the calling thread at %d", resets[i],
              omp_get_max_threads());
    }
}

/* ---------------------------------------------------------------- dtypes */

static void test_dtypes(void) {
    static const struct { enum mp_dtype dtype; const char *name; size_t size; } cases[] = {
        {MP_DTYPE_F32, "F32", 4}, {MP_DTYPE_F16, "F16", 2}, {MP_DTYPE_BF16, "BF16", 2}, {MP_DTYPE_F64, "F64", 8},
        {MP_DTYPE_BOOL, "BOOL", 1}, {MP_DTYPE_U8, "U8", 1}, {MP_DTYPE_I8, "I8", 1},     {MP_DTYPE_U16, "U16", 2},
        {MP_DTYPE_I16, "I16", 2},   {MP_DTYPE_U32, "U32", 4}, {MP_DTYPE_I32, "I32", 4}, {MP_DTYPE_U64, "U64", 8},
        {MP_DTYPE_I64, "I64", 8},
    };
    CHECK(COUNT_OF(cases) == MP_DTYPE_COUNT, "the table misses a dtype");
    for (int i = 0; i < COUNT_OF(cases); i++) {
        CHECK(strcmp(mp_dtype_name(cases[i].dtype), cases[i].name) == 0, "name of %s", cases[i].name);
        CHECK(mp_dtype_size(cases[i].dtype) == cases[i].size, "size of %s: %zu", cases[i].name,
              mp_dtype_size(cases[i].dtype));
        enum mp_dtype parsed = MP_DTYPE_COUNT;
        CHECK(mp_dtype_parse(&parsed, cases[i].name, strlen(cases[i].name)) == 0 && parsed == cases[i].dtype,
              "parse '%s'", cases[i].name);
    }
    CHECK(mp_dtype_size(MP_DTYPE_COUNT) == 0 && strcmp(mp_dtype_name(MP_DTYPE_COUNT), "?") == 0, "invalid dtype");
    CHECK(mp_dtype_size((enum mp_dtype)-1) == 0 && strcmp(mp_dtype_name((enum mp_dtype)-1), "?") == 0, "dtype -1");

    static const char *const bad_names[] = {"", "F", "F3", "F322", "f32", "bf16", "F8_E4M3", "C64", " F32", "F32 "};
    for (int i = 0; i < COUNT_OF(bad_names); i++) {
        enum mp_dtype parsed = MP_DTYPE_COUNT;
        CHECK(mp_dtype_parse(&parsed, bad_names[i], strlen(bad_names[i])) == -1 && parsed == MP_DTYPE_COUNT,
              "parse '%s' must fail and leave the output alone", bad_names[i]);
    }
    // The name is `len` bytes, not a C string: a prefix parses, a NUL inside does not.
    enum mp_dtype parsed = MP_DTYPE_COUNT;
    CHECK(mp_dtype_parse(&parsed, "BF16xyz", 4) == 0 && parsed == MP_DTYPE_BF16, "parse a 4-byte prefix");
    CHECK(mp_dtype_parse(&parsed, "F32\0", 4) == -1, "parse with an embedded NUL");

    // mp_dtype_convert: F64 sources, unaligned sources, and the refused pairs.
    const double f64[3] = {1.0, -0.1, 1e300};
    unsigned char unaligned[1 + sizeof f64];
    memcpy(unaligned + 1, f64, sizeof f64);
    float f32[3];
    uint16_t bf16[3];
    CHECK(mp_dtype_convert(f32, MP_DTYPE_F32, unaligned + 1, MP_DTYPE_F64, 3) == MP_STATUS_OK, "F64 -> F32");
    check_close(f32, (const float[]){1.0f, -0.1f, INFINITY}, 3, 0.0f, "F64 -> F32 (unaligned)");
    CHECK(mp_dtype_convert(bf16, MP_DTYPE_BF16, unaligned + 1, MP_DTYPE_F64, 3) == MP_STATUS_OK, "F64 -> BF16");
    CHECK(bf16[0] == 0x3f80 && bf16[1] == 0xbdcd && bf16[2] == 0x7f80, "F64 -> BF16: %04x %04x %04x", bf16[0], bf16[1],
          bf16[2]);
    CHECK(mp_dtype_convert(NULL, MP_DTYPE_F32, NULL, MP_DTYPE_F16, 0) == MP_STATUS_OK, "n = 0 needs no buffers");
    static const struct { const char *name; enum mp_dtype dst, src; int64_t n; } refused[] = {
        {"negative count", MP_DTYPE_F32, MP_DTYPE_F16, -1},
        {"integer source", MP_DTYPE_F32, MP_DTYPE_I64, 1},
        {"bool source", MP_DTYPE_BF16, MP_DTYPE_BOOL, 1},
        {"F16 destination", MP_DTYPE_F16, MP_DTYPE_F32, 1},
        {"F64 destination", MP_DTYPE_F64, MP_DTYPE_F32, 1},
        {"invalid destination", MP_DTYPE_COUNT, MP_DTYPE_F32, 1},
    };
    for (int i = 0; i < COUNT_OF(refused); i++) {
        uint64_t in = 0, out = 0;
        CHECK(mp_dtype_convert(&out, refused[i].dst, &in, refused[i].src, refused[i].n) == MP_STATUS_INVALID_ARGUMENT,
              "convert with %s must be refused", refused[i].name);
    }
    uint16_t one = 0;
    CHECK(mp_dtype_convert(NULL, MP_DTYPE_F32, &one, MP_DTYPE_F16, 1) == MP_STATUS_INVALID_ARGUMENT, "NULL output");
}

// mp_dtype_convert against the scalar conversions, for every float source read from an
// unaligned buffer, at sizes on both sides of the parallel threshold and the block size.
static void test_convert_bulk(void) {
    static const enum mp_dtype sources[] = {MP_DTYPE_F32, MP_DTYPE_F16, MP_DTYPE_BF16, MP_DTYPE_F64};
    static const int64_t sizes[] = {1, 7, 4096, 4097, 2 * 65536 + 123};
    for (int si = 0; si < COUNT_OF(sources); si++) {
        enum mp_dtype src_dtype = sources[si];
        size_t item = mp_dtype_size(src_dtype);
        for (int ni = 0; ni < COUNT_OF(sizes); ni++) {
            int64_t n = sizes[ni];
            unsigned char *buffer = malloc((size_t)n * item + 1), *src = buffer + 1;
            float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
            uint16_t *want16 = malloc((size_t)n * 2), *got16 = malloc((size_t)n * 2);
            uint64_t state = 42;
            for (int64_t i = 0; i < n; i++) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                // Random bit patterns: every NaN, infinity and subnormal kind turns up.
                uint16_t h = (uint16_t)(state >> 48);
                uint32_t w = (uint32_t)(state >> 32);
                double d = (double)(int32_t)w * 0x1p-20;
                switch (src_dtype) {
                case MP_DTYPE_F16: memcpy(src + 2 * i, &h, 2); want[i] = mp_f16_to_f32(h); break;
                case MP_DTYPE_BF16: memcpy(src + 2 * i, &h, 2); want[i] = mp_bf16_to_f32(h); break;
                case MP_DTYPE_F32: memcpy(src + 4 * i, &w, 4); memcpy(&want[i], &w, 4); break;
                default: memcpy(src + 8 * i, &d, 8); want[i] = (float)d; break;
                }
                if (src_dtype == MP_DTYPE_BF16) want16[i] = h; // a copy: NaN payloads are kept as they are
                else want16[i] = mp_f32_to_bf16(want[i]);
            }
            enum mp_status s32 = mp_dtype_convert(got, MP_DTYPE_F32, src, src_dtype, n);
            enum mp_status s16 = mp_dtype_convert(got16, MP_DTYPE_BF16, src, src_dtype, n);
            int64_t bad32 = 0, bad16 = 0;
            for (int64_t i = 0; i < n; i++) {
                bad32 += memcmp(&got[i], &want[i], 4) != 0;
                bad16 += got16[i] != want16[i];
            }
            CHECK(s32 == MP_STATUS_OK && bad32 == 0, "bulk %s -> F32, n = %lld: %lld values differ from the scalar",
                  mp_dtype_name(src_dtype), (long long)n, (long long)bad32);
            CHECK(s16 == MP_STATUS_OK && bad16 == 0, "bulk %s -> BF16, n = %lld: %lld values differ from the scalar",
                  mp_dtype_name(src_dtype), (long long)n, (long long)bad16);
            free(buffer);
            free(want);
            free(got);
            free(want16);
            free(got16);
        }
    }
}

/* ---------------------------------------------------------------- matmul */

// Deterministic values in [-1, 1) without libc's rand.
static float next_value(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *random_matrix(int64_t n, uint64_t seed) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = next_value(&seed);
    return x;
}

// out = a @ b^T in double, and *scale = the largest sum of |a_ik * b_jk|, the size an
// accumulation error is relative to.
static void reference_nt(float *out, const float *a, const float *b, int64_t M, int64_t N, int64_t K, double *scale) {
    *scale = 1.0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double sum = 0.0, magnitude = 0.0;
            for (int64_t k = 0; k < K; k++) {
                sum += (double)a[i * K + k] * b[j * K + k];
                magnitude += fabs((double)a[i * K + k] * b[j * K + k]);
            }
            out[i * N + j] = (float)sum;
            if (magnitude > *scale) *scale = magnitude;
        }
}

static void round_to_bf16(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = mp_bf16_to_f32(mp_f32_to_bf16(x[i]));
}

static const struct matmul_case { const char *name; int64_t M, N, K; } matmul_cases[] = {
    {"1x1x1", 1, 1, 1},
    {"3x5x7", 3, 5, 7},
    {"64x33x17", 64, 33, 17},
    {"1x100x300 (one query)", 1, 100, 300},
    {"129x65x257", 129, 65, 257},
    {"M = 0", 0, 4, 3},
    {"N = 0", 4, 0, 3},
    {"K = 0 gives zeros", 2, 3, 0},
};

static void test_matmul_case(const struct matmul_case *c, enum mp_precision precision) {
    const char *pname = precision == MP_PRECISION_BF16 ? "bf16" : "fp32";
    float *a = random_matrix(c->M * c->K, 1 + (uint64_t)c->M), *b = random_matrix(c->N * c->K, 2 + (uint64_t)c->N);
    int64_t n_out = c->M * c->N;
    float *out = malloc((size_t)(n_out + 1) * sizeof *out), *ref = malloc((size_t)(n_out + 1) * sizeof *ref);
    for (int64_t i = 0; i <= n_out; i++) out[i] = NAN; // every output must be written, nothing past it
    if (precision == MP_PRECISION_BF16) { // the reference sees the inputs the kernel sees
        round_to_bf16(a, c->M * c->K);
        round_to_bf16(b, c->N * c->K);
    }
    double scale;
    reference_nt(ref, a, b, c->M, c->N, c->K, &scale);
    enum mp_status status = mp_matmul_nt(out, a, b, c->M, c->N, c->K, precision);
    char label[96];
    snprintf(label, sizeof label, "matmul %s %s", pname, c->name);
    if (CHECK(status == MP_STATUS_OK, "%s: %s", label, mp_last_error())) {
        // bf16 products are exact in f32, so both differ from the reference by f32 summation
        // only; the bf16 bound leaves room for kernels that split the sum differently.
        float tol = (float)((precision == MP_PRECISION_BF16 ? 1e-4 : 1e-5) * scale);
        check_close(out, ref, n_out, tol, label);
        CHECK(isnan(out[n_out]), "%s: wrote past the output", label);
    }
    free(a);
    free(b);
    free(out);
    free(ref);
}

struct matmul_thread {
    int    ok;
    double max_diff;
};

// Several threads run the same primitive at once: the engine is shared, scratchpads are not.
static void *matmul_thread_main(void *arg) {
    struct matmul_thread *r = arg;
    enum { M = 64, N = 48, K = 40 };
    float *a = random_matrix(M * K, 11), *b = random_matrix(N * K, 12), out[M * N], ref[M * N];
    double scale;
    reference_nt(ref, a, b, M, N, K, &scale);
    r->ok = 1;
    for (int rep = 0; rep < 20; rep++) {
        r->ok &= mp_matmul_nt(out, a, b, M, N, K, rep % 2 ? MP_PRECISION_FP32 : MP_PRECISION_BF16) == MP_STATUS_OK;
        for (int i = 0; i < M * N; i++)
            if (fabs((double)out[i] - ref[i]) / scale > r->max_diff) r->max_diff = fabs((double)out[i] - ref[i]) / scale;
    }
    free(a);
    free(b);
    return NULL;
}

static void test_matmul(void) {
    for (int threads = 1; threads <= 2; threads++) {
        mp_set_num_threads(threads);
        for (int i = 0; i < COUNT_OF(matmul_cases); i++) {
            test_matmul_case(&matmul_cases[i], MP_PRECISION_FP32);
            test_matmul_case(&matmul_cases[i], MP_PRECISION_BF16);
        }
    }
    mp_set_num_threads(0);

    enum { THREADS = 4 };
    pthread_t threads[THREADS];
    struct matmul_thread results[THREADS] = {{0}};
    for (int t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, matmul_thread_main, &results[t]);
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        // bf16 inputs against an f32 reference: 2^-8 relative per input, well under 1e-2 of the scale.
        CHECK(results[t].ok && results[t].max_diff < 1e-2, "concurrent matmul in thread %d: ok %d, max diff %g", t,
              results[t].ok, results[t].max_diff);
    }

    float x = 1.0f, out = 0.0f;
    static const struct { const char *name; int64_t M, N, K; int precision; } invalid[] = {
        {"negative M", -1, 1, 1, MP_PRECISION_FP32},
        {"negative N", 1, -1, 1, MP_PRECISION_FP32},
        {"negative K", 1, 1, -1, MP_PRECISION_BF16},
        {"unknown precision", 1, 1, 1, 7},
    };
    for (int i = 0; i < COUNT_OF(invalid); i++) {
        enum mp_status s = mp_matmul_nt(&out, &x, &x, invalid[i].M, invalid[i].N, invalid[i].K,
                                        (enum mp_precision)invalid[i].precision);
        CHECK(s == MP_STATUS_INVALID_ARGUMENT, "matmul with %s: status '%s'", invalid[i].name, mp_status_str(s));
    }
    CHECK(has(mp_last_error(), "precision"), "unknown precision message: %s", mp_last_error());
}

static void test_onednn_info(void) {
    struct mp_onednn_info info;
    memset(&info, 0, sizeof info);
    CHECK(mp_onednn_info(&info) == MP_STATUS_OK, "mp_onednn_info: %s", mp_last_error());
    CHECK(info.version_major == 3, "oneDNN major version %d", info.version_major);
    CHECK(info.cpu_runtime && strcmp(info.cpu_runtime, "OpenMP") == 0, "oneDNN CPU runtime '%s'",
          info.cpu_runtime ? info.cpu_runtime : "(null)");
    CHECK(info.cpu_isa != NULL && info.version_hash != NULL, "ISA and hash are set");
    printf("oneDNN %d.%d.%d (%s), runtime %s, ISA %s\n", info.version_major, info.version_minor, info.version_patch,
           info.version_hash ? info.version_hash : "?", info.cpu_runtime ? info.cpu_runtime : "?",
           info.cpu_isa ? info.cpu_isa : "?");
    CHECK(mp_onednn_info(NULL) == MP_STATUS_INVALID_ARGUMENT, "mp_onednn_info(NULL)");
}

/* ---------------------------------------------------------------- JPEG */

/* Made with TurboJPEG's tjCompress2 at quality 75 from a patterned image: a baseline
 * 4:2:0 colour image of 5x3 pixels and a progressive grayscale one of 3x2. */
// jpeg_rgb_5x3: 5x3, 678 bytes
static const uint8_t jpeg_rgb_5x3[] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06, 0x05, 0x08,
    0x07, 0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b, 0x0c, 0x19, 0x12,
    0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20, 0x24, 0x2e, 0x27, 0x20,
    0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31, 0x34, 0x34, 0x34, 0x1f, 0x27,
    0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x09, 0x09,
    0x09, 0x0c, 0x0b, 0x0c, 0x18, 0x0d, 0x0d, 0x18, 0x32, 0x21, 0x1c, 0x21, 0x32, 0x32, 0x32, 0x32,
    0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32,
    0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32,
    0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0x32, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x03, 0x00, 0x05, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
    0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05,
    0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21,
    0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23,
    0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
    0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5,
    0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1,
    0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xff, 0xc4, 0x00, 0x1f, 0x01, 0x00, 0x03,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x11, 0x00,
    0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77, 0x00,
    0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13,
    0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15,
    0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27,
    0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
    0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4,
    0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9,
    0xfa, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3f, 0x00, 0xc6,
    0xf1, 0x25, 0xcd, 0xc6, 0x89, 0x6f, 0x69, 0xfd, 0x99, 0x3c, 0xb6, 0x9e, 0x61, 0x0a, 0xfe, 0x53,
    0x95, 0xdc, 0x16, 0x08, 0x30, 0x3f, 0x0d, 0xc7, 0xf3, 0x34, 0x51, 0x45, 0x74, 0xd1, 0xc3, 0x51,
    0xab, 0x4a, 0x33, 0xa9, 0x04, 0xdb, 0x4a, 0xed, 0xa4, 0xde, 0xc7, 0x1a, 0xc4, 0xd6, 0x87, 0xbb,
    0x19, 0xb4, 0xbd, 0x59, 0xff, 0xd9,
};
// jpeg_gray_3x2_progressive: 3x2, 297 bytes
static const uint8_t jpeg_gray_3x2_progressive[] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x06, 0x06, 0x07, 0x06, 0x05, 0x08,
    0x07, 0x07, 0x07, 0x09, 0x09, 0x08, 0x0a, 0x0c, 0x14, 0x0d, 0x0c, 0x0b, 0x0b, 0x0c, 0x19, 0x12,
    0x13, 0x0f, 0x14, 0x1d, 0x1a, 0x1f, 0x1e, 0x1d, 0x1a, 0x1c, 0x1c, 0x20, 0x24, 0x2e, 0x27, 0x20,
    0x22, 0x2c, 0x23, 0x1c, 0x1c, 0x28, 0x37, 0x29, 0x2c, 0x30, 0x31, 0x34, 0x34, 0x34, 0x1f, 0x27,
    0x39, 0x3d, 0x38, 0x32, 0x3c, 0x2e, 0x33, 0x34, 0x32, 0xff, 0xc2, 0x00, 0x0b, 0x08, 0x00, 0x02,
    0x00, 0x03, 0x01, 0x01, 0x11, 0x00, 0xff, 0xc4, 0x00, 0x14, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0xff, 0xda, 0x00, 0x08,
    0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0x77, 0xff, 0xc4, 0x00, 0x15, 0x10, 0x01, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x13, 0xff, 0xda,
    0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x05, 0x02, 0x11, 0x28, 0xff, 0x00, 0xff, 0xc4, 0x00, 0x17,
    0x10, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x02, 0x00, 0x23, 0x91, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x06, 0x3f, 0x02, 0x35,
    0x8c, 0x9f, 0xff, 0xc4, 0x00, 0x16, 0x10, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x51, 0x61, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01,
    0x00, 0x01, 0x3f, 0x21, 0x80, 0x94, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x00, 0x10,
    0xff, 0x00, 0xff, 0xc4, 0x00, 0x16, 0x10, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x81, 0xf0, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01,
    0x00, 0x01, 0x3f, 0x10, 0x9b, 0x64, 0x7f, 0xff, 0xd9,
};

static void test_jpeg(void) {
    static const struct {
        const char *name;
        const uint8_t *bytes;
        size_t size;
        int64_t width, height;
        int32_t components, progressive;
    } valid[] = {
        {"baseline colour 5x3", jpeg_rgb_5x3, sizeof jpeg_rgb_5x3, 5, 3, 3, 0},
        {"progressive gray 3x2", jpeg_gray_3x2_progressive, sizeof jpeg_gray_3x2_progressive, 3, 2, 1, 1},
    };
    for (int i = 0; i < COUNT_OF(valid); i++) {
        struct mp_jpeg_header h;
        enum mp_status s = mp_jpeg_read_header(&h, valid[i].bytes, valid[i].size);
        if (!CHECK(s == MP_STATUS_OK, "jpeg '%s': %s", valid[i].name, mp_last_error())) continue;
        CHECK(h.width == valid[i].width && h.height == valid[i].height, "jpeg '%s': %lldx%lld", valid[i].name,
              (long long)h.width, (long long)h.height);
        CHECK(h.components == valid[i].components, "jpeg '%s': %d components", valid[i].name, (int)h.components);
        CHECK(h.progressive == valid[i].progressive, "jpeg '%s': progressive %d", valid[i].name, (int)h.progressive);
    }

    static const uint8_t garbage[] = "not a jpeg at all, just text";
    static const uint8_t soi_then_garbage[] = {0xff, 0xd8, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07};
    static const uint8_t soi_eoi[] = {0xff, 0xd8, 0xff, 0xd9};
    // Frame headers TurboJPEG itself refuses; its message must come through.
    static const uint8_t sos_first[] = {0xff, 0xd8, 0xff, 0xda, 0x00, 0x02, 0xff, 0xd9};
    static const uint8_t short_marker[] = {0xff, 0xd8, 0xff, 0xc0, 0x00, 0x02, 0xff, 0xd9};
    static const uint8_t zero_height[] = {0xff, 0xd8, 0xff, 0xc0, 0x00, 0x0b, 0x08, 0x00, 0x00,
                                          0x00, 0x05, 0x01, 0x01, 0x11, 0x00, 0xff, 0xd9};
    static const struct { const char *name; const uint8_t *bytes; size_t size; const char *keyword; } bad[] = {
        {"empty", NULL, 0, "SOI"},
        {"empty, non-NULL", garbage, 0, "SOI"},
        {"text", garbage, sizeof garbage, "SOI"},
        {"SOI alone", jpeg_rgb_5x3, 2, "SOI"},
        {"SOI then garbage", soi_then_garbage, sizeof soi_then_garbage, "JPEG header"},
        {"cut before the frame header", jpeg_rgb_5x3, 20, "ends before the frame header"},
        {"SOI then EOI", soi_eoi, sizeof soi_eoi, "ends before the frame header"},
        {"SOS before SOF", sos_first, sizeof sos_first, "SOS before SOF"},
        {"marker length 2", short_marker, sizeof short_marker, "marker length"},
        {"zero height", zero_height, sizeof zero_height, "Empty JPEG image"},
        {"cut inside the Huffman tables", jpeg_rgb_5x3, 339, "JPEG header"},
    };
    for (int i = 0; i < COUNT_OF(bad); i++) {
        struct mp_jpeg_header h;
        enum mp_status s = mp_jpeg_read_header(&h, bad[i].bytes, bad[i].size);
        CHECK(s == MP_STATUS_BAD_FORMAT, "jpeg '%s': status '%s'", bad[i].name, mp_status_str(s));
        CHECK(has(mp_last_error(), bad[i].keyword), "jpeg '%s': message %s", bad[i].name, mp_last_error());
        CHECK(h.width == 0 && h.height == 0, "jpeg '%s': header not cleared", bad[i].name);
    }
    CHECK(mp_jpeg_read_header(NULL, jpeg_rgb_5x3, sizeof jpeg_rgb_5x3) == MP_STATUS_INVALID_ARGUMENT, "NULL header");
    struct mp_jpeg_header h;
    CHECK(mp_jpeg_read_header(&h, NULL, 4) == MP_STATUS_INVALID_ARGUMENT, "NULL bytes with a size");
    CHECK(mp_jpeg_library_version() != NULL, "library version is NULL");
}

int main(void) {
    int openmp_default = omp_get_max_threads(); // before anything changes this thread's count
    test_status_str();
    test_errors();
    test_threads(openmp_default);
    test_dtypes();
    test_convert_bulk();
    test_onednn_info();
    test_matmul();
    test_jpeg();
    return check_summary("test_core");
}
