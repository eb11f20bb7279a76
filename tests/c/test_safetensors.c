/* test_safetensors.c: the safetensors reader against files built byte by byte here, so
 * every case states exactly what is on disk: valid files of each dtype, the conversions
 * of mp_tensor_read with known bit patterns, and one malformed file per way a header or
 * a layout can be wrong, each of which must be refused with MP_STATUS_BAD_FORMAT.
 * Every file is opened from memory and from a temporary path: the two share the parser
 * but not the plumbing (mmap, empty files, messages naming the path). */
#define _POSIX_C_SOURCE 200809L // mkstemp

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "megapairs.h"

/* ---------------------------------------------------------------- building files */

// 8-byte little-endian `header_len`, then `json_len` bytes of JSON, then `data_len` bytes.
// header_len is separate so that a case can lie about it.
static unsigned char *build_raw(uint64_t header_len, const char *json, size_t json_len, const void *data,
                                size_t data_len, size_t *size) {
    *size = 8 + json_len + data_len;
    unsigned char *bytes = calloc(*size, 1);
    if (!bytes) abort();
    for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)(header_len >> (8 * k));
    memcpy(bytes + 8, json, json_len);
    if (data) memcpy(bytes + 8 + json_len, data, data_len); // else zeros, from calloc
    return bytes;
}

static unsigned char *build(const char *json, const void *data, size_t data_len, size_t *size) {
    return build_raw(strlen(json), json, strlen(json), data, data_len, size);
}

// Writes `bytes` to a fresh file under /tmp; the caller unlinks `path`.
static void write_temp(char path[64], const unsigned char *bytes, size_t size) {
    strcpy(path, "/tmp/megapairs_test_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); abort(); }
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, bytes + done, size - done);
        if (n <= 0) { perror("write"); abort(); }
        done += (size_t)n;
    }
    close(fd);
}

static int has(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

// Identical bit for bit, except that any NaN matches any NaN.
static int same_float(float a, float e) { return (isnan(a) && isnan(e)) || (a == e && signbit(a) == signbit(e)); }

/* ---------------------------------------------------------------- one file of every kind */

/* The tensors are listed out of name order, with __metadata__ in the middle, keys in
 * varying order and an unaligned I64: the reader must not depend on any writer habit. */
static const char main_json[] =
    "{\"z.weight\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},\n"
    " \"a.half\": {\"shape\": [4], \"dtype\": \"F16\", \"data_offsets\": [24, 32]},\n"
    " \"B.bf16\": {\"data_offsets\": [32, 36], \"dtype\": \"BF16\", \"shape\": [2]},\n"
    " \"ids\": {\"dtype\": \"I64\", \"shape\": [3], \"data_offsets\": [36, 60]},\n"
    " \"__metadata__\": {\"format\": \"pt\", \"note\": \"caf\\u00e9 \\\"q\\\"\\n\", \"emoji\": \"\\ud83d\\ude00\"},\n"
    " \"pixels\": {\"dtype\": \"U8\", \"shape\": [5], \"data_offsets\": [60, 65]},\n"
    " \"mask\": {\"dtype\": \"BOOL\", \"shape\": [3], \"data_offsets\": [65, 68]},\n"
    " \"scale\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [68, 72]},\n"
    " \"empty\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [72, 72]},\n"
    " \"empty2\": {\"dtype\": \"F16\", \"shape\": [2, 0, 5], \"data_offsets\": [72, 72]},\n"
    " \"\\u00e9\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [72, 73]}}";

enum { MAIN_DATA_LEN = 73 };

static const float z_weight[6] = {1.0f, -2.0f, 3.5f, 0.0f, 1e-3f, 65504.0f};
static const uint16_t a_half[4] = {0x3c00, 0xc000, 0x7c00, 0x0001}; // 1, -2, +inf, 2^-24
static const uint16_t b_bf16[2] = {0x3f80, 0xc040};                 // 1, -3
static const int64_t ids[3] = {-1, 0, (int64_t)1 << 40};
static const uint8_t pixels[5] = {0, 1, 127, 128, 255};
static const uint8_t mask[3] = {1, 0, 1};
static const float scale = 0.5f;
static const uint8_t e_acute[1] = {42};

static void main_data(unsigned char data[MAIN_DATA_LEN]) {
    memcpy(data + 0, z_weight, 24);
    memcpy(data + 24, a_half, 8);
    memcpy(data + 32, b_bf16, 4);
    memcpy(data + 36, ids, 24);
    memcpy(data + 60, pixels, 5);
    memcpy(data + 65, mask, 3);
    memcpy(data + 68, &scale, 4);
    memcpy(data + 72, e_acute, 1);
}

// In bytewise name order: 'B' < 'a' < ... < 'z' < the UTF-8 lead byte of 'é'.
static const struct expected_tensor {
    const char   *name;
    enum mp_dtype dtype;
    int32_t       ndim;
    int64_t       shape[3];
    int64_t       numel;
    uint64_t      begin, end;
} main_tensors[] = {
    {"B.bf16", MP_DTYPE_BF16, 1, {2}, 2, 32, 36},
    {"a.half", MP_DTYPE_F16, 1, {4}, 4, 24, 32},
    {"empty", MP_DTYPE_F32, 2, {0, 3}, 0, 72, 72},
    {"empty2", MP_DTYPE_F16, 3, {2, 0, 5}, 0, 72, 72},
    {"ids", MP_DTYPE_I64, 1, {3}, 3, 36, 60},
    {"mask", MP_DTYPE_BOOL, 1, {3}, 3, 65, 68},
    {"pixels", MP_DTYPE_U8, 1, {5}, 5, 60, 65},
    {"scale", MP_DTYPE_F32, 0, {0}, 1, 68, 72},
    {"z.weight", MP_DTYPE_F32, 2, {2, 3}, 6, 0, 24},
    {"\xc3\xa9", MP_DTYPE_U8, 1, {1}, 1, 72, 73},
};
enum { MAIN_COUNT = sizeof main_tensors / sizeof *main_tensors };

// `file_start` is the first byte of the file when known (opened from memory), else NULL.
static void check_main_file(const struct mp_safetensors *st, const unsigned char *file_start, const char *how) {
    unsigned char data[MAIN_DATA_LEN];
    main_data(data);
    uint64_t data_start = 8 + strlen(main_json);
    CHECK(mp_safetensors_count(st) == MAIN_COUNT, "%s: count %lld", how, (long long)mp_safetensors_count(st));
    for (int i = 0; i < MAIN_COUNT; i++) {
        const struct expected_tensor *x = &main_tensors[i];
        const struct mp_tensor *t = mp_safetensors_tensor(st, i);
        if (!CHECK(t != NULL, "%s: tensor %d is NULL", how, i)) continue;
        CHECK(strcmp(t->name, x->name) == 0, "%s: tensor %d is '%s', expected '%s'", how, i, t->name, x->name);
        CHECK(mp_safetensors_find(st, x->name) == t, "%s: find('%s') is not tensor %d", how, x->name, i);
        CHECK(t->dtype == x->dtype, "%s: '%s' dtype %s", how, x->name, mp_dtype_name(t->dtype));
        CHECK(t->ndim == x->ndim, "%s: '%s' ndim %d", how, x->name, (int)t->ndim);
        int same_shape = 1;
        for (int d = 0; d < x->ndim; d++) same_shape &= t->shape[d] == x->shape[d];
        CHECK(same_shape, "%s: '%s' shape differs", how, x->name);
        CHECK(t->numel == x->numel, "%s: '%s' numel %lld", how, x->name, (long long)t->numel);
        CHECK(t->nbytes == x->end - x->begin, "%s: '%s' nbytes %zu", how, x->name, t->nbytes);
        CHECK(t->offset == data_start + x->begin, "%s: '%s' offset %llu", how, x->name, (unsigned long long)t->offset);
        if (file_start)
            CHECK((const unsigned char *)t->data == file_start + t->offset, "%s: '%s' data does not point into the file",
                  how, x->name);
        CHECK(t->nbytes == 0 || memcmp(t->data, data + x->begin, t->nbytes) == 0, "%s: '%s' bytes differ", how, x->name);
    }
    CHECK(mp_safetensors_tensor(st, -1) == NULL, "%s: tensor(-1) is not NULL", how);
    CHECK(mp_safetensors_tensor(st, MAIN_COUNT) == NULL, "%s: tensor(count) is not NULL", how);

    static const char *const not_there[] = {"", "z", "z.weigh", "z.weight ", "Z.weight", "__metadata__", "e"};
    for (size_t i = 0; i < sizeof not_there / sizeof *not_there; i++)
        CHECK(mp_safetensors_find(st, not_there[i]) == NULL, "%s: find('%s') is not NULL", how, not_there[i]);

    // Metadata keeps file order and decodes escapes, including a surrogate pair.
    static const char *const meta[][2] = {
        {"format", "pt"}, {"note", "caf\xc3\xa9 \"q\"\n"}, {"emoji", "\xf0\x9f\x98\x80"}};
    CHECK(mp_safetensors_metadata_count(st) == 3, "%s: metadata count %lld", how,
          (long long)mp_safetensors_metadata_count(st));
    for (int i = 0; i < 3; i++) {
        const char *key, *value;
        mp_safetensors_metadata(st, i, &key, &value);
        CHECK(key && strcmp(key, meta[i][0]) == 0, "%s: metadata key %d is '%s'", how, i, key ? key : "(null)");
        CHECK(value && strcmp(value, meta[i][1]) == 0, "%s: metadata value %d is '%s'", how, i, value ? value : "(null)");
    }
    const char *key = "x", *value = "x";
    mp_safetensors_metadata(st, 3, &key, &value);
    CHECK(key == NULL && value == NULL, "%s: metadata(3) is not NULL", how);
    mp_safetensors_metadata(st, -1, &key, &value);
    CHECK(key == NULL && value == NULL, "%s: metadata(-1) is not NULL", how);
    mp_safetensors_metadata(st, 0, NULL, NULL); // either output may be skipped
}

// mp_tensor_read on the main file: copies in the stored dtype, conversions between floats.
static void check_main_reads(const struct mp_safetensors *st) {
    float f32[8];
    uint16_t u16[8];
    const struct mp_tensor *t = mp_safetensors_find(st, "a.half");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, t) == MP_STATUS_OK, "read F16 as F32: %s", mp_last_error());
    check_close(f32, (const float[]){1.0f, -2.0f, INFINITY, 0x1p-24f}, 4, 0.0f, "F16 -> F32");
    CHECK(mp_tensor_read(u16, MP_DTYPE_BF16, t) == MP_STATUS_OK, "read F16 as BF16: %s", mp_last_error());
    CHECK(u16[0] == 0x3f80 && u16[1] == 0xc000 && u16[2] == 0x7f80 && u16[3] == 0x3380,
          "F16 -> BF16 gave %04x %04x %04x %04x", u16[0], u16[1], u16[2], u16[3]);
    CHECK(mp_tensor_read(u16, MP_DTYPE_F16, t) == MP_STATUS_OK && memcmp(u16, a_half, 8) == 0, "F16 -> F16 copy");

    t = mp_safetensors_find(st, "B.bf16");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, t) == MP_STATUS_OK, "read BF16 as F32: %s", mp_last_error());
    check_close(f32, (const float[]){1.0f, -3.0f}, 2, 0.0f, "BF16 -> F32");
    CHECK(mp_tensor_read(u16, MP_DTYPE_BF16, t) == MP_STATUS_OK && memcmp(u16, b_bf16, 4) == 0, "BF16 -> BF16 copy");

    t = mp_safetensors_find(st, "z.weight");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, t) == MP_STATUS_OK, "read F32 as F32: %s", mp_last_error());
    check_close(f32, z_weight, 6, 0.0f, "F32 -> F32");
    CHECK(mp_tensor_read(u16, MP_DTYPE_BF16, t) == MP_STATUS_OK, "read F32 as BF16: %s", mp_last_error());
    // 1e-3f = 0x3a83126f rounds down; 65504 = 0x477fe000 rounds up to 65536.
    static const uint16_t z_bf16[6] = {0x3f80, 0xc000, 0x4060, 0x0000, 0x3a83, 0x4780};
    for (int i = 0; i < 6; i++)
        CHECK(u16[i] == z_bf16[i], "F32 -> BF16 [%d]: %04x, expected %04x", i, u16[i], z_bf16[i]);

    t = mp_safetensors_find(st, "scale");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, t) == MP_STATUS_OK && f32[0] == 0.5f, "scalar read");

    int64_t i64[3];
    t = mp_safetensors_find(st, "ids");
    CHECK(mp_tensor_read(i64, MP_DTYPE_I64, t) == MP_STATUS_OK && memcmp(i64, ids, sizeof ids) == 0, "I64 copy");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, t) == MP_STATUS_INVALID_ARGUMENT, "I64 -> F32 must be refused");
    CHECK(has(mp_last_error(), "'ids'") && has(mp_last_error(), "I64"), "I64 -> F32 message: %s", mp_last_error());

    uint8_t u8[5];
    t = mp_safetensors_find(st, "pixels");
    CHECK(mp_tensor_read(u8, MP_DTYPE_U8, t) == MP_STATUS_OK && memcmp(u8, pixels, 5) == 0, "U8 copy");
    t = mp_safetensors_find(st, "mask");
    CHECK(mp_tensor_read(u8, MP_DTYPE_BOOL, t) == MP_STATUS_OK && memcmp(u8, mask, 3) == 0, "BOOL copy");
    CHECK(mp_tensor_read(u16, MP_DTYPE_BF16, t) == MP_STATUS_INVALID_ARGUMENT, "BOOL -> BF16 must be refused");

    // A zero-size tensor needs no output buffer at all.
    t = mp_safetensors_find(st, "empty");
    CHECK(mp_tensor_read(NULL, MP_DTYPE_F32, t) == MP_STATUS_OK, "empty F32 read into NULL: %s", mp_last_error());
    t = mp_safetensors_find(st, "empty2");
    CHECK(mp_tensor_read(NULL, MP_DTYPE_F32, t) == MP_STATUS_OK, "empty F16 read into NULL: %s", mp_last_error());
    CHECK(mp_tensor_read(NULL, MP_DTYPE_F32, mp_safetensors_find(st, "scale")) == MP_STATUS_INVALID_ARGUMENT,
          "NULL output for a non-empty tensor must be refused");
    CHECK(mp_tensor_read(f32, MP_DTYPE_F32, NULL) == MP_STATUS_INVALID_ARGUMENT, "NULL tensor must be refused");
}

static void test_main_file(void) {
    unsigned char data[MAIN_DATA_LEN];
    main_data(data);
    size_t size;
    unsigned char *bytes = build(main_json, data, sizeof data, &size);

    // A successful call leaves the previous message alone.
    mp_error(MP_STATUS_IO, "sentinel");
    struct mp_safetensors *st = NULL;
    CHECK(mp_safetensors_open_memory(&st, bytes, size) == MP_STATUS_OK, "main file from memory: %s", mp_last_error());
    CHECK(strcmp(mp_last_error(), "sentinel") == 0, "success overwrote the error message: %s", mp_last_error());
    if (st) {
        check_main_file(st, bytes, "memory");
        check_main_reads(st);
    }
    mp_safetensors_close(st);

    char path[64];
    write_temp(path, bytes, size);
    st = NULL;
    CHECK(mp_safetensors_open(&st, path) == MP_STATUS_OK, "main file from %s: %s", path, mp_last_error());
    if (st) {
        check_main_file(st, NULL, "file");
        check_main_reads(st);
    }
    mp_safetensors_close(st);
    unlink(path);
    free(bytes);
}

/* ---------------------------------------------------------------- conversion tables */

static const struct { const char *name; uint32_t f32; uint16_t bf16; } f32_to_bf16_cases[] = {
    {"1.0", 0x3f800000, 0x3f80},
    {"tie rounds to even (down)", 0x3f808000, 0x3f80}, // 1.00390625f
    {"tie rounds to even (up)", 0x3f818000, 0x3f82},
    {"just above a tie", 0x3f808001, 0x3f81},
    {"just below a tie", 0x3f807fff, 0x3f80},
    {"negative tie", 0xbf808000, 0xbf80},
    {"FLT_MAX overflows to inf", 0x7f7fffff, 0x7f80},
    {"+inf", 0x7f800000, 0x7f80},
    {"-inf", 0xff800000, 0xff80},
    {"-0", 0x80000000, 0x8000},
    {"smallest subnormal to 0", 0x00000001, 0x0000},
    {"subnormal rounds up", 0x00018000, 0x0002},
    {"quiet NaN", 0x7fc00000, 0x7fc0},
    {"NaN with a low payload", 0x7f800001, 0x7fc0}, // truncation would make it inf
    {"negative NaN", 0xffc00000, 0xffc0},
};

static const struct { const char *name; uint16_t f16; float f32; } f16_cases[] = {
    {"1.0", 0x3c00, 1.0f},
    {"-2.0", 0xc000, -2.0f},
    {"+inf", 0x7c00, INFINITY},
    {"-inf", 0xfc00, -INFINITY},
    {"smallest subnormal", 0x0001, 0x1p-24f},
    {"largest subnormal", 0x03ff, 1023 * 0x1p-24f},
    {"smallest normal", 0x0400, 0x1p-14f},
    {"largest normal", 0x7bff, 65504.0f},
    {"-0", 0x8000, -0.0f},
    {"negative subnormal", 0x8001, -0x1p-24f},
    {"1/3", 0x3555, 0.333251953125f},
    {"NaN", 0x7e00, NAN},
};

static const struct { const char *name; uint16_t bf16; float f32; } bf16_cases[] = {
    {"1.0", 0x3f80, 1.0f},
    {"-3.0", 0xc040, -3.0f},
    {"pi", 0x4049, 3.140625f},
    {"+inf", 0x7f80, INFINITY},
    {"-0", 0x8000, -0.0f},
    {"smallest subnormal", 0x0001, 0x1p-133f},
    {"NaN", 0x7fc0, NAN},
};

#define COUNT_OF(a) (int)(sizeof(a) / sizeof *(a))

// The tables as three tensors of one file, read back through mp_tensor_read.
static void test_conversions(void) {
    enum { N32 = COUNT_OF(f32_to_bf16_cases), N16 = COUNT_OF(f16_cases), NB = COUNT_OF(bf16_cases) };
    unsigned char data[4 * N32 + 2 * N16 + 2 * NB];
    for (int i = 0; i < N32; i++) memcpy(data + 4 * i, &f32_to_bf16_cases[i].f32, 4);
    for (int i = 0; i < N16; i++) memcpy(data + 4 * N32 + 2 * i, &f16_cases[i].f16, 2);
    for (int i = 0; i < NB; i++) memcpy(data + 4 * N32 + 2 * N16 + 2 * i, &bf16_cases[i].bf16, 2);
    char json[512];
    snprintf(json, sizeof json,
             "{\"f32\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"f16\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[%d,%d]},"
             "\"bf16\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[%d,%d]}}",
             N32, 4 * N32, N16, 4 * N32, 4 * N32 + 2 * N16, NB, 4 * N32 + 2 * N16, (int)sizeof data);
    size_t size;
    unsigned char *bytes = build(json, data, sizeof data, &size);
    struct mp_safetensors *st = NULL;
    CHECK(mp_safetensors_open_memory(&st, bytes, size) == MP_STATUS_OK, "conversion file: %s", mp_last_error());
    if (!st) { free(bytes); return; }

    uint16_t b[N32 > N16 ? N32 : N16];
    float f[N32 > N16 ? N32 : N16];
    CHECK(mp_tensor_read(b, MP_DTYPE_BF16, mp_safetensors_find(st, "f32")) == MP_STATUS_OK, "F32 -> BF16");
    for (int i = 0; i < N32; i++) {
        uint16_t want = f32_to_bf16_cases[i].bf16;
        int want_nan = (want & 0x7f80) == 0x7f80 && (want & 0x7f) != 0;
        int ok = want_nan ? ((b[i] & 0x7f80) == 0x7f80 && (b[i] & 0x7f) != 0 && (b[i] & 0x8000) == (want & 0x8000))
                          : b[i] == want;
        CHECK(ok, "F32 -> BF16 '%s': %08x gave %04x, expected %04x", f32_to_bf16_cases[i].name,
              (unsigned)f32_to_bf16_cases[i].f32, b[i], want);
        float x;
        memcpy(&x, &f32_to_bf16_cases[i].f32, 4);
        CHECK(mp_f32_to_bf16(x) == b[i], "mp_f32_to_bf16 '%s' differs from mp_tensor_read", f32_to_bf16_cases[i].name);
    }

    CHECK(mp_tensor_read(f, MP_DTYPE_F32, mp_safetensors_find(st, "f16")) == MP_STATUS_OK, "F16 -> F32");
    CHECK(mp_tensor_read(b, MP_DTYPE_BF16, mp_safetensors_find(st, "f16")) == MP_STATUS_OK, "F16 -> BF16");
    for (int i = 0; i < N16; i++) {
        CHECK(same_float(f[i], f16_cases[i].f32), "F16 -> F32 '%s': %04x gave %.9g, expected %.9g", f16_cases[i].name,
              f16_cases[i].f16, f[i], f16_cases[i].f32);
        CHECK(same_float(mp_f16_to_f32(f16_cases[i].f16), f16_cases[i].f32), "mp_f16_to_f32 '%s'", f16_cases[i].name);
        // F16 -> BF16 goes through f32, which holds every f16 exactly.
        CHECK(same_float(mp_bf16_to_f32(b[i]), mp_bf16_to_f32(mp_f32_to_bf16(f16_cases[i].f32))),
              "F16 -> BF16 '%s': %04x", f16_cases[i].name, b[i]);
    }

    CHECK(mp_tensor_read(f, MP_DTYPE_F32, mp_safetensors_find(st, "bf16")) == MP_STATUS_OK, "BF16 -> F32");
    for (int i = 0; i < NB; i++)
        CHECK(same_float(f[i], bf16_cases[i].f32), "BF16 -> F32 '%s': %04x gave %.9g, expected %.9g",
              bf16_cases[i].name, bf16_cases[i].bf16, f[i], bf16_cases[i].f32);
    mp_safetensors_close(st);
    free(bytes);
}

/* ---------------------------------------------------------------- other valid files */

// Opens `json` + `data_len` zero bytes from a file and from memory; returns the memory
// handle (or NULL after a failed check), whose *bytes the caller frees after closing it.
static struct mp_safetensors *open_valid(const char *name, const char *json, size_t data_len, unsigned char **bytes) {
    size_t size;
    *bytes = build(json, NULL, data_len, &size);
    char path[64];
    write_temp(path, *bytes, size);
    struct mp_safetensors *st = NULL, *from_file = NULL;
    CHECK(mp_safetensors_open(&from_file, path) == MP_STATUS_OK, "valid '%s' from a file: %s", name, mp_last_error());
    mp_safetensors_close(from_file);
    unlink(path);
    if (!CHECK(mp_safetensors_open_memory(&st, *bytes, size) == MP_STATUS_OK, "valid '%s': %s", name, mp_last_error()))
        st = NULL;
    return st;
}

#define F32_1(begin, end) "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" #begin "," #end "]}"

static void test_valid_files(void) {
    // `find` names a tensor that must be there with `ndim` dimensions; `meta` is the first
    // metadata entry, when there is one.
    static const struct {
        const char *name, *json;
        size_t      data_len;
        int64_t     count;
        const char *find;
        int32_t     ndim;
        const char *meta[2];
    } cases[] = {
        {"empty object", "{}", 0, 0, NULL, 0, {NULL}},
        {"whitespace everywhere", " \t\r\n{ \"a\" :\n\t" F32_1(0, 4) " }\n", 4, 1, "a", 1, {NULL}},
        {"padded with trailing spaces", "{\"a\":" F32_1(0, 4) "}" "                                ", 4, 1, "a", 1,
         {NULL}},
        {"metadata only", "{\"__metadata__\":{}}", 0, 0, NULL, 0, {NULL}},
        {"metadata first", "{\"__metadata__\":{\"k\":\"v\"},\"a\":" F32_1(0, 4) "}", 4, 1, "a", 1, {"k", "v"}},
        {"zero-size tensor only", "{\"e\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, 1, "e", 1,
         {NULL}},
        {"zero-size tensors at both ends",
         "{\"e0\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,0]},\"a\":" F32_1(0, 4) ","
         "\"e1\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}", 4, 3, "e0", 2, {NULL}},
        {"8 dimensions", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,2,1,2,1,2,1,2],\"data_offsets\":[0,16]}}", 16, 1, "a", 8,
         {NULL}},
        {"unknown fields of every JSON kind",
         "{\"a\":{\"dtype\":\"F32\",\"x\":{\"k\":[1,-2.5e-3,1E+2,true,false,null,\"s\\u00e9\\/\",{},[]]},"
         "\"shape\":[1],\"y\":-0,\"data_offsets\":[0,4]}}", 4, 1, "a", 1, {NULL}},
        {"deep but sane nesting", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":"
         "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}", 4, 1, "a", 1, {NULL}},
        {"escaped name", "{\"a\\\"b\\\\c\\/d\\t\\b\\f\\r\\u20ac\":" F32_1(0, 4) "}", 4, 1,
         "a\"b\\c/d\t\b\f\r\xe2\x82\xac", 1, {NULL}},
        {"empty name", "{\"\":" F32_1(0, 4) "}", 4, 1, "", 1, {NULL}},
        {"raw UTF-8", "{\"__metadata__\":{\"k\xc3\xa9\":\"\xe2\x82\xac\"},\"\xf0\x9f\x98\x80\":" F32_1(0, 4) "}", 4, 1,
         "\xf0\x9f\x98\x80", 1, {"k\xc3\xa9", "\xe2\x82\xac"}},
        {"big integers", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0,9223372036854775807],\"data_offsets\":[0,0]}}", 0, 1,
         "a", 2, {NULL}},
    };
    unsigned char *bytes;
    for (int i = 0; i < COUNT_OF(cases); i++) {
        const char *name = cases[i].name;
        struct mp_safetensors *st = open_valid(name, cases[i].json, cases[i].data_len, &bytes);
        if (!st) { free(bytes); continue; }
        CHECK(mp_safetensors_count(st) == cases[i].count, "valid '%s': count %lld, expected %lld", name,
              (long long)mp_safetensors_count(st), (long long)cases[i].count);
        for (int64_t k = 0; k < mp_safetensors_count(st); k++) {
            const struct mp_tensor *t = mp_safetensors_tensor(st, k);
            CHECK(t && mp_safetensors_find(st, t->name) == t, "valid '%s': tensor %lld not found by name", name,
                  (long long)k);
        }
        if (cases[i].find) {
            const struct mp_tensor *t = mp_safetensors_find(st, cases[i].find);
            CHECK(t && t->ndim == cases[i].ndim, "valid '%s': no tensor '%s' of %d dimensions", name, cases[i].find,
                  (int)cases[i].ndim);
        }
        const char *key = NULL, *value = NULL;
        mp_safetensors_metadata(st, 0, &key, &value);
        if (cases[i].meta[0])
            CHECK(mp_safetensors_metadata_count(st) == 1 && key && strcmp(key, cases[i].meta[0]) == 0 && value &&
                      strcmp(value, cases[i].meta[1]) == 0,
                  "valid '%s': metadata differs", name);
        else
            CHECK(mp_safetensors_metadata_count(st) == 0 && key == NULL, "valid '%s': unexpected metadata", name);
        mp_safetensors_close(st);
        free(bytes);
    }

    // More tensors than the first allocation holds, listed in reverse name order.
    enum { MANY = 300 };
    char *json = malloc(MANY * 80 + 16), *p = json;
    unsigned char data[MANY];
    p += sprintf(p, "{");
    for (int i = MANY - 1, offset = 0; i >= 0; i--, offset++) {
        p += sprintf(p, "%s\"t%03d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}", i == MANY - 1 ? "" : ",",
                     i, offset, offset + 1);
        data[offset] = (unsigned char)i;
    }
    sprintf(p, "}");
    size_t size;
    bytes = build(json, data, sizeof data, &size);
    struct mp_safetensors *st = NULL;
    CHECK(mp_safetensors_open_memory(&st, bytes, size) == MP_STATUS_OK, "%d tensors: %s", MANY, mp_last_error());
    CHECK(mp_safetensors_count(st) == MANY, "%d tensors: count %lld", MANY, (long long)mp_safetensors_count(st));
    int in_order = 1, found = 1;
    for (int i = 0; st && i < MANY; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%03d", i);
        const struct mp_tensor *ti = mp_safetensors_tensor(st, i);
        in_order &= ti && strcmp(ti->name, name) == 0 && *(const unsigned char *)ti->data == (unsigned char)i;
        found &= mp_safetensors_find(st, name) == ti;
    }
    CHECK(in_order, "%d tensors: not in name order or with the wrong bytes", MANY);
    CHECK(found, "%d tensors: find does not return the tensor of that name", MANY);
    CHECK(mp_safetensors_find(st, "t300") == NULL && mp_safetensors_find(st, "t") == NULL &&
              mp_safetensors_find(st, "t0000") == NULL && mp_safetensors_find(st, "s") == NULL,
          "%d tensors: a missing name was found", MANY);
    mp_safetensors_close(st);

    // The limits: MANY tensors are refused under max_tensors = MANY - 1 (naming the limit,
    // from memory and from a file) and read under MANY; metadata entries count too.
    struct mp_safetensors_limits tight = {.max_tensors = MANY - 1}, enough = {.max_tensors = MANY};
    st = NULL;
    CHECK(mp_safetensors_open_memory_limited(&st, bytes, size, &tight) == MP_STATUS_BAD_FORMAT && st == NULL &&
              has(mp_last_error(), "more than 299 entries"),
          "%d tensors under max_tensors %d: %s", MANY, MANY - 1, mp_last_error());
    char path[64];
    write_temp(path, bytes, size);
    CHECK(mp_safetensors_open_limited(&st, path, &tight) == MP_STATUS_BAD_FORMAT && st == NULL &&
              has(mp_last_error(), path),
          "%d tensors from a file under max_tensors %d: %s", MANY, MANY - 1, mp_last_error());
    CHECK(mp_safetensors_open_limited(&st, path, &enough) == MP_STATUS_OK && mp_safetensors_count(st) == MANY,
          "%d tensors under max_tensors %d: %s", MANY, MANY, mp_last_error());
    mp_safetensors_close(st);
    unlink(path);
    free(bytes);
    struct mp_safetensors_limits two = {.max_tensors = 2}, three = {.max_tensors = 3};
    bytes = build("{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"},\"x\":{\"dtype\":\"U8\",\"shape\":[1],"
                  "\"data_offsets\":[0,1]}}", data, 1, &size);
    st = NULL;
    CHECK(mp_safetensors_open_memory_limited(&st, bytes, size, &two) == MP_STATUS_BAD_FORMAT && st == NULL,
          "1 tensor + 2 metadata entries under max_tensors 2");
    CHECK(mp_safetensors_open_memory_limited(&st, bytes, size, &three) == MP_STATUS_OK,
          "1 tensor + 2 metadata entries under max_tensors 3: %s", mp_last_error());
    mp_safetensors_close(st);

    // The header length limit: a header longer than max_header is refused before parsing.
    struct mp_safetensors_limits short_header = {.max_header = 16};
    st = NULL;
    CHECK(mp_safetensors_open_memory_limited(&st, bytes, size, &short_header) == MP_STATUS_BAD_FORMAT &&
              has(mp_last_error(), "over the limit of 16 bytes"),
          "a header over max_header: %s", mp_last_error());
    free(bytes);
    free(json);
}

/* ---------------------------------------------------------------- malformed files */

// Both ways in must refuse with BAD_FORMAT, leave *st NULL and say `keyword`.
static void expect_bad(const char *name, const unsigned char *bytes, size_t size, const char *keyword) {
    struct mp_safetensors *st = (struct mp_safetensors *)&st; // any non-NULL value
    enum mp_status status = mp_safetensors_open_memory(&st, bytes, size);
    CHECK(status == MP_STATUS_BAD_FORMAT, "bad '%s': status '%s', expected 'bad format'", name, mp_status_str(status));
    CHECK(st == NULL, "bad '%s': the handle is not NULL", name);
    CHECK(has(mp_last_error(), keyword), "bad '%s': message lacks \"%s\": %s", name, keyword, mp_last_error());
    if (status == MP_STATUS_OK) mp_safetensors_close(st);

    char path[64];
    write_temp(path, bytes, size);
    st = NULL;
    status = mp_safetensors_open(&st, path);
    CHECK(status == MP_STATUS_BAD_FORMAT, "bad '%s' from a file: status '%s'", name, mp_status_str(status));
    CHECK(has(mp_last_error(), keyword) && has(mp_last_error(), path), "bad '%s' from a file: message %s", name,
          mp_last_error());
    if (status == MP_STATUS_OK) mp_safetensors_close(st);
    unlink(path);
}

// A well-formed tensor "a" of one F32 element with `extra` appended inside its object.
#define A_WITH(extra) "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]" extra "}}"

static const struct bad_case {
    const char *name, *json;
    size_t      data_len;
    const char *keyword;
} bad_cases[] = {
    // the header is not one JSON object
    {"empty header", "", 0, "not a JSON object"},
    {"header of spaces", "        ", 0, "not a JSON object"},
    {"header is an array", "[]", 0, "not a JSON object"},
    {"header is a string", "\"a\"", 0, "not a JSON object"},
    {"header is null", "null", 0, "not a JSON object"},
    // invalid JSON
    {"truncated before the closing brace", "{\"a\":" F32_1(0, 4), 4, "expected '}'"},
    {"truncated in a key", "{\"a", 0, "unterminated string"},
    {"truncated in a shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1", 0, "expected ']'"},
    {"truncated after a comma", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,", 0, "non-negative integer"},
    {"trailing garbage", "{} x", 0, "unexpected bytes after the JSON object"},
    {"two objects", "{}{}", 0, "unexpected bytes after the JSON object"},
    {"missing colon", "{\"a\" " F32_1(0, 4) "}", 4, "expected ':'"},
    {"missing comma", "{\"a\":" F32_1(0, 4) " \"b\":" F32_1(4, 8) "}", 8, "expected '}'"},
    {"trailing comma", "{\"a\":" F32_1(0, 4) ",}", 4, "expected a string"},
    {"single quotes", "{'a':" F32_1(0, 4) "}", 4, "expected a string"},
    {"unquoted key", "{a:" F32_1(0, 4) "}", 4, "expected a string"},
    {"bad escape", "{\"a\\q\":" F32_1(0, 4) "}", 4, "invalid escape"},
    {"bad hex digit", "{\"\\u12g4\":" F32_1(0, 4) "}", 4, "bad hex digit"},
    {"truncated \\u escape", "{\"\\u1\"", 0, "truncated \\u escape"},
    {"lone high surrogate", "{\"\\ud800\":" F32_1(0, 4) "}", 4, "unpaired surrogate"},
    {"lone low surrogate", "{\"\\udc00\":" F32_1(0, 4) "}", 4, "unpaired surrogate"},
    {"high surrogate and a letter", "{\"\\ud800\\u0041\":" F32_1(0, 4) "}", 4, "unpaired surrogate"},
    {"escaped NUL", "{\"a\\u0000b\":" F32_1(0, 4) "}", 4, "NUL character"},
    {"raw tab in a string", "{\"a\tb\":" F32_1(0, 4) "}", 4, "control character"},
    {"bad literal in an unknown field", A_WITH(",\"x\":tru"), 4, "invalid value"},
    {"bare minus in an unknown field", A_WITH(",\"x\":-"), 4, "invalid number"},
    {"unknown value", A_WITH(",\"x\":@"), 4, "invalid value"},
    {"unclosed array in an unknown field", A_WITH(",\"x\":[1,2"), 4, "expected ']'"},
    // not UTF-8
    {"byte 0xff", "{\"\xff\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"lone continuation byte", "{\"\x80\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"overlong slash", "{\"\xc0\xaf\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"overlong 3-byte form", "{\"\xe0\x80\xaf\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"encoded surrogate", "{\"\xed\xa0\x80\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"past U+10FFFF", "{\"\xf4\x90\x80\x80\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"truncated sequence", "{\"\xe2\x82\":" F32_1(0, 4) "}", 4, "not valid UTF-8"},
    {"sequence cut by the header end", "{}\xe2\x82", 0, "not valid UTF-8"},
    // tensor entries
    {"tensor is a number", "{\"a\":1}", 0, "expected '{'"},
    {"tensor is empty", "{\"a\":{}}", 0, "has no \"dtype\""},
    {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'a' has no \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "'a' has no \"shape\""},
    {"missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'a' has no \"data_offsets\""},
    {"repeated dtype", A_WITH(",\"dtype\":\"F32\""), 4, "repeated key \"dtype\""},
    {"repeated shape", A_WITH(",\"shape\":[1]"), 4, "repeated key \"shape\""},
    {"repeated data_offsets", A_WITH(",\"data_offsets\":[0,4]"), 4, "repeated key \"data_offsets\""},
    {"dtype is a number", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "expected a string"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'F31'"},
    {"lowercase dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'f32'"},
    {"unsupported F8_E4M3", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
     "F8_E4M3, which megapairs does not read"},
    {"unsupported C64", "{\"a\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "does not read"},
    {"shape is a number", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "expected '['"},
    {"negative dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative integer"},
    {"fractional dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "fraction"},
    {"dimension with exponent", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, "exponent"},
    {"dimension with a leading zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4,
     "leading zero"},
    {"dimension as a string", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
     "non-negative integer"},
    {"9 dimensions", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     "too many integers"},
    {"dimension past int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808],\"data_offsets\":[0,1]}}", 1,
     "integer too large"},
    {"shape product past int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,1]}}", 1,
     "absurd shape"},
    {"numel times itemsize past uint64",
     "{\"a\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8, "absurd shape"},
    {"data_offsets with one number", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
     "two integers"},
    {"data_offsets empty", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[]}}", 4, "two integers"},
    {"data_offsets with three numbers", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4,
     "too many integers"},
    {"negative data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
     "non-negative integer"},
    // layout of the data section
    {"end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "end before they begin"},
    {"nbytes mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     "'a' has 2 elements of F32 (8 bytes) but data_offsets span 4 bytes"},
    {"nbytes mismatch F16", "{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 4, "data_offsets span"},
    {"truncated data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "past the end of the data"},
    {"no data at all", "{\"a\":" F32_1(0, 4) "}", 0, "past the end of the data"},
    {"overlapping tensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":" F32_1(4, 8) "}", 8,
     "'b' overlaps tensor 'a'"},
    {"same span twice", "{\"a\":" F32_1(0, 4) ",\"b\":" F32_1(0, 4) "}", 4, "overlaps"},
    {"empty tensor inside another",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, "overlaps"},
    {"hole at the start", "{\"a\":" F32_1(4, 8) "}", 8, "bytes [0, 4) of the data section belong to no tensor"},
    {"hole between tensors", "{\"a\":" F32_1(0, 4) ",\"b\":" F32_1(8, 12) "}", 12, "a hole before 'b'"},
    {"trailing bytes", "{\"a\":" F32_1(0, 4) "}", 8, "the last 4 bytes of the data section belong to no tensor"},
    {"data but no tensors", "{}", 1, "the last 1 bytes"},
    {"duplicate names", "{\"a\":" F32_1(0, 4) ",\"a\":" F32_1(4, 8) "}", 8, "'a' appears more than once"},
    {"duplicate names by escape", "{\"a\":" F32_1(0, 4) ",\"\\u0061\":" F32_1(4, 8) "}", 8, "appears more than once"},
    // metadata
    {"duplicate __metadata__", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "repeated \"__metadata__\""},
    {"number in __metadata__", "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ values must be strings"},
    {"null in __metadata__", "{\"__metadata__\":{\"k\":null}}", 0, "values must be strings"},
    {"object in __metadata__", "{\"__metadata__\":{\"k\":{}}}", 0, "values must be strings"},
    {"__metadata__ is a string", "{\"__metadata__\":\"x\"}", 0, "expected '{'"},
    {"__metadata__ truncated", "{\"__metadata__\":{\"k\":\"v\"", 0, "expected '}'"},
    {"number key in __metadata__", "{\"__metadata__\":{1:\"v\"}}", 0, "expected a string"},
};

static void test_bad_files(void) {
    for (int i = 0; i < COUNT_OF(bad_cases); i++) {
        size_t size;
        unsigned char *bytes = build(bad_cases[i].json, NULL, bad_cases[i].data_len, &size);
        expect_bad(bad_cases[i].name, bytes, size, bad_cases[i].keyword);
        free(bytes);
    }

    // The 8-byte length itself.
    static const unsigned char seven[7] = {2, 0, 0, 0, 0, 0, 0};
    expect_bad("empty file", seven, 0, "too short");
    expect_bad("7-byte file", seven, sizeof seven, "too short");
    static const struct { const char *name; uint64_t header_len; const char *keyword; } lengths[] = {
        {"header length past the limit", MP_SAFETENSORS_MAX_HEADER + 1ull, "over the limit of"},
        {"header length 2^64 - 1", UINT64_MAX, "over the limit of"},
        {"header length 2^63", (uint64_t)1 << 63, "over the limit of"},
        {"header length at the limit, file short", MP_SAFETENSORS_MAX_HEADER, "runs past the end of the file"},
        {"header length one past the file", 3, "runs past the end of the file"},
    };
    for (int i = 0; i < COUNT_OF(lengths); i++) {
        size_t size;
        unsigned char *bytes = build_raw(lengths[i].header_len, "{}", 2, NULL, 0, &size);
        expect_bad(lengths[i].name, bytes, size, lengths[i].keyword);
        free(bytes);
    }
    // NUL is not JSON whitespace, so it cannot pad a header the way spaces do.
    size_t nul_size;
    unsigned char *nul = build_raw(4, "{}\0\0", 4, NULL, 0, &nul_size);
    expect_bad("NUL padding", nul, nul_size, "unexpected bytes after the JSON object");
    free(nul);

    // Nesting bombs in an unknown field must end in an error, not a stack overflow.
    enum { DEPTH = 10000 };
    static const struct { const char *name, *open; } bombs[] = {{"[ bomb", "["}, {"{ bomb", "{\"k\":"}};
    for (int b = 0; b < COUNT_OF(bombs); b++) {
        size_t unit = strlen(bombs[b].open);
        char *json = malloc(64 + DEPTH * unit), *p = json;
        p += sprintf(p, "{\"a\":{\"x\":");
        for (int d = 0; d < DEPTH; d++, p += unit) memcpy(p, bombs[b].open, unit);
        *p = 0;
        size_t size;
        unsigned char *bytes = build(json, NULL, 0, &size);
        expect_bad(bombs[b].name, bytes, size, "nesting too deep");
        free(bytes);
        free(json);
    }

    // A hostile name is quoted, truncated, in a message that still fits.
    enum { LONG = 5000 };
    char *json = malloc(LONG + 64);
    json[0] = '{';
    json[1] = '"';
    memset(json + 2, 'n', LONG);
    strcpy(json + 2 + LONG, "\":{\"shape\":[1],\"data_offsets\":[0,4]}}");
    size_t size;
    unsigned char *bytes = build(json, NULL, 4, &size);
    expect_bad("5000-byte name", bytes, size, "has no \"dtype\"");
    CHECK(strlen(mp_last_error()) < 1024, "message of %zu bytes", strlen(mp_last_error()));
    free(bytes);
    free(json);
}

/* ---------------------------------------------------------------- the API around files */

static void test_api_edges(void) {
    struct mp_safetensors *st = (struct mp_safetensors *)&st;
    CHECK(mp_safetensors_open(&st, "/nonexistent/megapairs/model.safetensors") == MP_STATUS_IO,
          "a missing file is MP_STATUS_IO");
    CHECK(st == NULL, "a missing file leaves the handle NULL");
    CHECK(has(mp_last_error(), "cannot open") && has(mp_last_error(), "/nonexistent/megapairs/model.safetensors"),
          "missing file message: %s", mp_last_error());
    CHECK(mp_safetensors_open(&st, "/tmp") == MP_STATUS_IO, "a directory is MP_STATUS_IO");
    CHECK(has(mp_last_error(), "not a regular file"), "directory message: %s", mp_last_error());

    // An empty file cannot be mapped; it must still be a format error, not an I/O one.
    char path[64];
    write_temp(path, (const unsigned char *)"", 0);
    CHECK(mp_safetensors_open(&st, path) == MP_STATUS_BAD_FORMAT, "an empty file is MP_STATUS_BAD_FORMAT: %s",
          mp_last_error());
    unlink(path);

    CHECK(mp_safetensors_open(NULL, "/tmp/x") == MP_STATUS_INVALID_ARGUMENT, "open(NULL handle)");
    CHECK(mp_safetensors_open(&st, NULL) == MP_STATUS_INVALID_ARGUMENT, "open(NULL path)");
    CHECK(mp_safetensors_open_memory(NULL, "x", 1) == MP_STATUS_INVALID_ARGUMENT, "open_memory(NULL handle)");
    CHECK(mp_safetensors_open_memory(&st, NULL, 16) == MP_STATUS_INVALID_ARGUMENT, "open_memory(NULL bytes, 16)");
    CHECK(mp_safetensors_open_memory(&st, NULL, 0) == MP_STATUS_BAD_FORMAT, "open_memory(NULL bytes, 0)");

    mp_safetensors_close(NULL);
    CHECK(mp_safetensors_count(NULL) == 0 && mp_safetensors_metadata_count(NULL) == 0, "counts of NULL");
    CHECK(mp_safetensors_tensor(NULL, 0) == NULL && mp_safetensors_find(NULL, "a") == NULL, "lookups in NULL");

    size_t size;
    unsigned char *bytes = build("{\"a\":" F32_1(0, 4) "}", NULL, 4, &size);
    CHECK(mp_safetensors_open_memory(&st, bytes, size) == MP_STATUS_OK, "tiny file: %s", mp_last_error());
    CHECK(mp_safetensors_find(st, NULL) == NULL, "find(NULL name)");
    mp_safetensors_close(st);
    free(bytes);
}

int main(void) {
    test_main_file();
    test_conversions();
    test_valid_files();
    test_bad_files();
    test_api_edges();
    return check_summary("test_safetensors");
}
