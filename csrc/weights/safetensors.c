/* weights/safetensors.c: the safetensors reader. The file is mapped read-only; its JSON
 * header is parsed by a bounds-checked parser written for this format alone, and the data
 * spans must tile the file exactly, so a hostile file gives an error, never a wild read. */
#define _POSIX_C_SOURCE 200809L // open flags, mmap, fstat

#include "weights/safetensors.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// A tensor as parsed, before its offsets are checked against the data section.
struct entry {
    struct mp_tensor tensor;
    uint64_t begin, end; // data_offsets, relative to the data section
};

struct mp_safetensors {
    void *map;        // the whole file when opened from a path, else NULL
    size_t map_size;
    struct entry *entries; // sorted by name
    int64_t count;
    char **meta_keys, **meta_values;
    int64_t meta_count;
    char *source;         // the path, or "<memory>"
    atomic_long refs;     // handles held: the opener's, plus one per mp_safetensors_retain
};

// Error messages quote at most this many bytes of a tensor name.
#define NAME_FMT "'%.200s'"

/* ---------------------------------------------------------------- JSON header parser
 * The header is untrusted: every read checks `p < end`, nesting is bounded, every
 * allocation is checked, and the first problem ends the parse with its byte position. */

#define JSON_MAX_DEPTH 64

struct parser {
    const unsigned char *start, *p, *end;
    const char *source;   // the file name, for messages
    const char *tensor;   // the tensor whose entry is being parsed, or NULL
    int64_t max_entries;  // tensors plus metadata entries allowed
    enum mp_status status; // MP_STATUS_OK until the first error
};

static int parse_fail(struct parser *ps, const char *what) {
    if (ps->status == MP_STATUS_OK && ps->tensor)
        ps->status = mp_error(MP_STATUS_BAD_FORMAT,
                              "%s: invalid safetensors header: %s at byte %zu of the JSON (in tensor " NAME_FMT ")",
                              ps->source, what, (size_t)(ps->p - ps->start), ps->tensor);
    else if (ps->status == MP_STATUS_OK)
        ps->status = mp_error(MP_STATUS_BAD_FORMAT, "%s: invalid safetensors header: %s at byte %zu of the JSON",
                              ps->source, what, (size_t)(ps->p - ps->start));
    return -1;
}

static int oom(struct parser *ps) {
    if (ps->status == MP_STATUS_OK)
        ps->status = mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: out of memory while reading the header", ps->source);
    return -1;
}

static void skip_ws(struct parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int expect(struct parser *ps, unsigned char c) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != c) {
        char what[32] = "expected ' '";
        what[10] = (char)c;
        return parse_fail(ps, what);
    }
    ps->p++;
    return 0;
}

// Returns the index of the first byte that is not part of valid UTF-8, or n.
static size_t utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return i;
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        // overlong forms, surrogates and code points past U+10FFFF are not UTF-8
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += len;
    }
    return n;
}

static size_t utf8_put(unsigned char *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { out[0] = (unsigned char)(0xc0 | (cp >> 6)); out[1] = (unsigned char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

static int hex4(struct parser *ps, uint32_t *v) {
    if (ps->end - ps->p < 4) return parse_fail(ps, "truncated \\u escape");
    uint32_t x = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = *ps->p++;
        x <<= 4;
        if (c >= '0' && c <= '9') x |= c - '0';
        else if (c >= 'a' && c <= 'f') x |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') x |= c - 'A' + 10;
        else return parse_fail(ps, "bad hex digit in \\u escape");
    }
    *v = x;
    return 0;
}

// Parses a JSON string into a fresh NUL-terminated buffer (*out, *out_len bytes).
// The header was checked to be UTF-8 beforehand, so raw bytes are copied as they are.
static int parse_string(struct parser *ps, char **out, size_t *out_len) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') return parse_fail(ps, "expected a string");
    ps->p++;
    // Decoded text is never longer than its source, so one allocation suffices.
    const unsigned char *q = ps->p;
    while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end) return parse_fail(ps, "unterminated string");
    unsigned char *buf = malloc((size_t)(q - ps->p) + 1);
    if (!buf) return oom(ps);
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned c = *ps->p++;
        if (c < 0x20) { free(buf); return parse_fail(ps, "control character in string"); }
        if (c != '\\') { buf[n++] = (unsigned char)c; continue; }
        c = *ps->p++;
        switch (c) {
        case '"': case '\\': case '/': buf[n++] = (unsigned char)c; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            uint32_t cp, low;
            if (hex4(ps, &cp)) { free(buf); return -1; }
            if (cp >= 0xd800 && cp <= 0xdbff) { // a high surrogate must pair with a low one
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    free(buf);
                    return parse_fail(ps, "unpaired surrogate in \\u escape");
                }
                ps->p += 2;
                if (hex4(ps, &low)) { free(buf); return -1; }
                if (low < 0xdc00 || low > 0xdfff) { free(buf); return parse_fail(ps, "unpaired surrogate in \\u escape"); }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                free(buf);
                return parse_fail(ps, "unpaired surrogate in \\u escape");
            }
            if (cp == 0) { free(buf); return parse_fail(ps, "NUL character in string"); }
            n += utf8_put(buf + n, cp);
            break;
        }
        default: free(buf); return parse_fail(ps, "invalid escape in string");
        }
    }
    ps->p++; // closing quote
    buf[n] = 0;
    *out = (char *)buf;
    if (out_len) *out_len = n;
    return 0;
}

// A non-negative JSON integer (no sign, fraction or exponent) that fits in int64.
static int parse_uint(struct parser *ps, uint64_t *v) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return parse_fail(ps, "expected a non-negative integer");
    if (*ps->p == '0' && ps->p + 1 < ps->end && ps->p[1] >= '0' && ps->p[1] <= '9')
        return parse_fail(ps, "integer with a leading zero");
    uint64_t x = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        uint64_t d = (uint64_t)(*ps->p - '0');
        if (x > ((uint64_t)INT64_MAX - d) / 10) return parse_fail(ps, "integer too large");
        x = x * 10 + d;
        ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return parse_fail(ps, "expected an integer, found a fraction or exponent");
    *v = x;
    return 0;
}

// [int, int, ...] with at most `cap` items.
static int parse_uint_array(struct parser *ps, uint64_t *vals, int cap, int *count) {
    if (expect(ps, '[')) return -1;
    *count = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 0; }
    for (;;) {
        if (*count == cap) return parse_fail(ps, "too many integers in array");
        if (parse_uint(ps, &vals[(*count)++])) return -1;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        return expect(ps, ']');
    }
}

static int match_literal(struct parser *ps, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) return parse_fail(ps, "invalid value");
    ps->p += n;
    return 0;
}

// Skips any JSON value: fields the format does not define are ignored, as other readers do.
static int skip_value(struct parser *ps, int depth) {
    if (depth > JSON_MAX_DEPTH) return parse_fail(ps, "nesting too deep");
    skip_ws(ps);
    if (ps->p >= ps->end) return parse_fail(ps, "expected a value");
    unsigned c = *ps->p;
    if (c == '"') {
        char *s;
        if (parse_string(ps, &s, NULL)) return -1;
        free(s);
        return 0;
    }
    if (c == '{' || c == '[') {
        unsigned char close = c == '{' ? '}' : ']';
        ps->p++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == close) { ps->p++; return 0; }
        for (;;) {
            if (c == '{') {
                char *key;
                if (parse_string(ps, &key, NULL)) return -1;
                free(key);
                if (expect(ps, ':')) return -1;
            }
            if (skip_value(ps, depth + 1)) return -1;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            return expect(ps, close);
        }
    }
    if (c == 't') return match_literal(ps, "true");
    if (c == 'f') return match_literal(ps, "false");
    if (c == 'n') return match_literal(ps, "null");
    if (c == '-' || (c >= '0' && c <= '9')) { // any JSON number
        if (*ps->p == '-') ps->p++;
        const unsigned char *digits = ps->p;
        while (ps->p < ps->end && ((*ps->p >= '0' && *ps->p <= '9') || *ps->p == '.' || *ps->p == 'e' ||
                                   *ps->p == 'E' || *ps->p == '+' || *ps->p == '-'))
            ps->p++;
        return ps->p > digits ? 0 : parse_fail(ps, "invalid number");
    }
    return parse_fail(ps, "invalid value");
}

// Dtypes of the format that have no NumPy counterpart here.
static const char *const unsupported_dtypes[] = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};

static int parse_tensor(struct parser *ps, struct entry *e) {
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    const char *name = e->tensor.name;
    ps->tensor = name;
    if (expect(ps, '{')) return -1;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') ps->p++;
    else for (;;) {
        char *key;
        size_t key_len;
        if (parse_string(ps, &key, &key_len)) return -1;
        if (expect(ps, ':')) { free(key); return -1; }
        int rc = 0;
        if (strcmp(key, "dtype") == 0) {
            char *dtype;
            size_t len;
            if (have_dtype++) rc = parse_fail(ps, "repeated key \"dtype\"");
            else if (!(rc = parse_string(ps, &dtype, &len))) {
                if (mp_dtype_parse(&e->tensor.dtype, dtype, len) != 0) {
                    int known = 0;
                    for (size_t k = 0; k < sizeof unsupported_dtypes / sizeof *unsupported_dtypes; k++)
                        known |= strcmp(dtype, unsupported_dtypes[k]) == 0;
                    ps->status = mp_error(MP_STATUS_BAD_FORMAT,
                                          known ? "%s: tensor " NAME_FMT " has dtype %.40s, which megapairs does not read"
                                                : "%s: tensor " NAME_FMT " has unknown dtype '%.40s'",
                                          ps->source, name, dtype);
                    rc = -1;
                }
                free(dtype);
            }
        } else if (strcmp(key, "shape") == 0) {
            uint64_t dims[MP_TENSOR_MAX_DIMS];
            int ndim;
            if (have_shape++) rc = parse_fail(ps, "repeated key \"shape\"");
            else if (!(rc = parse_uint_array(ps, dims, MP_TENSOR_MAX_DIMS, &ndim))) {
                e->tensor.ndim = ndim;
                e->tensor.numel = 1;
                for (int d = 0; d < ndim; d++) {
                    e->tensor.shape[d] = (int64_t)dims[d];
                    if (dims[d] != 0 && (uint64_t)e->tensor.numel > (uint64_t)INT64_MAX / dims[d]) {
                        ps->status = mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor " NAME_FMT " has an absurd shape",
                                              ps->source, name);
                        rc = -1;
                        break;
                    }
                    e->tensor.numel *= (int64_t)dims[d];
                }
            }
        } else if (strcmp(key, "data_offsets") == 0) {
            uint64_t offsets[2] = {0, 0};
            int n;
            if (have_offsets++) rc = parse_fail(ps, "repeated key \"data_offsets\"");
            else if (!(rc = parse_uint_array(ps, offsets, 2, &n)) && n != 2)
                rc = parse_fail(ps, "data_offsets must hold two integers");
            e->begin = offsets[0];
            e->end = offsets[1];
        } else {
            rc = skip_value(ps, 1);
        }
        free(key);
        if (rc) return -1;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (expect(ps, '}')) return -1;
        break;
    }
    ps->tensor = NULL;
    const char *missing = !have_dtype ? "dtype" : !have_shape ? "shape" : !have_offsets ? "data_offsets" : NULL;
    if (missing) {
        ps->status = mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor " NAME_FMT " has no \"%s\"", ps->source, name, missing);
        return -1;
    }
    return 0;
}

static int too_many_entries(struct parser *ps, const struct mp_safetensors *st) {
    if (st->count + st->meta_count < ps->max_entries) return 0;
    char what[160];
    snprintf(what, sizeof what, "more than %lld entries (tensors and metadata; raise the limit to read it)",
             (long long)ps->max_entries);
    return parse_fail(ps, what);
}

static int parse_metadata(struct parser *ps, struct mp_safetensors *st) {
    int64_t capacity = 0;
    if (expect(ps, '{')) return -1;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; return 0; }
    for (;;) {
        char *key = NULL, *value = NULL;
        if (too_many_entries(ps, st)) return -1;
        if (parse_string(ps, &key, NULL) || expect(ps, ':')) { free(key); return -1; }
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            free(key);
            return parse_fail(ps, "__metadata__ values must be strings");
        }
        if (parse_string(ps, &value, NULL)) { free(key); return -1; }
        if (st->meta_count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            char **keys = realloc(st->meta_keys, (size_t)capacity * sizeof *keys);
            if (keys) st->meta_keys = keys;
            char **values = keys ? realloc(st->meta_values, (size_t)capacity * sizeof *values) : NULL;
            if (values) st->meta_values = values;
            if (!keys || !values) { free(key); free(value); return oom(ps); }
        }
        st->meta_keys[st->meta_count] = key;
        st->meta_values[st->meta_count++] = value;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        return expect(ps, '}');
    }
}

static int parse_header(struct parser *ps, struct mp_safetensors *st) {
    int64_t capacity = 0;
    int have_metadata = 0;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '{') return parse_fail(ps, "the header is not a JSON object");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') ps->p++;
    else for (;;) {
        char *name;
        if (parse_string(ps, &name, NULL)) return -1;
        if (expect(ps, ':')) { free(name); return -1; }
        if (strcmp(name, "__metadata__") == 0) {
            free(name);
            if (have_metadata++) return parse_fail(ps, "repeated \"__metadata__\"");
            if (parse_metadata(ps, st)) return -1;
        } else {
            if (too_many_entries(ps, st)) { free(name); return -1; }
            if (st->count == capacity) {
                capacity = capacity ? 2 * capacity : 64;
                struct entry *grown = realloc(st->entries, (size_t)capacity * sizeof *grown);
                if (!grown) { free(name); return oom(ps); }
                st->entries = grown;
            }
            struct entry *e = &st->entries[st->count++];
            memset(e, 0, sizeof *e);
            e->tensor.name = name; // owned by the entry from here on
            if (parse_tensor(ps, e)) return -1;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (expect(ps, '}')) return -1;
        break;
    }
    skip_ws(ps); // writers pad the header with spaces to align the data section
    if (ps->p != ps->end) return parse_fail(ps, "unexpected bytes after the JSON object");
    return 0;
}

/* ---------------------------------------------------------------- validation */

static int compare_name(const void *a, const void *b) {
    return strcmp(((const struct entry *)a)->tensor.name, ((const struct entry *)b)->tensor.name);
}

static int compare_span(const void *a, const void *b) {
    const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static enum mp_status check_layout(struct mp_safetensors *st, const unsigned char *data, uint64_t data_size,
                                   uint64_t data_offset, const char *source) {
    for (int64_t i = 0; i < st->count; i++) {
        struct entry *e = &st->entries[i];
        struct mp_tensor *t = &e->tensor;
        if (e->end < e->begin)
            return mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor " NAME_FMT " has data_offsets [%llu, %llu] that end before they begin",
                            source, t->name, (unsigned long long)e->begin, (unsigned long long)e->end);
        if (e->end > data_size)
            return mp_error(MP_STATUS_BAD_FORMAT,
                            "%s: tensor " NAME_FMT " has data_offsets [%llu, %llu] past the end of the data section "
                            "(%llu bytes): the file is truncated or the offsets are wrong",
                            source, t->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                            (unsigned long long)data_size);
        size_t item = mp_dtype_size(t->dtype);
        if ((uint64_t)t->numel > UINT64_MAX / item)
            return mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor " NAME_FMT " has an absurd shape (%lld elements of %s)",
                            source, t->name, (long long)t->numel, mp_dtype_name(t->dtype));
        if ((uint64_t)t->numel * item != e->end - e->begin)
            return mp_error(MP_STATUS_BAD_FORMAT,
                            "%s: tensor " NAME_FMT " has %lld elements of %s (%llu bytes) but data_offsets span %llu bytes",
                            source, t->name, (long long)t->numel, mp_dtype_name(t->dtype),
                            (unsigned long long)((uint64_t)t->numel * item), (unsigned long long)(e->end - e->begin));
        t->nbytes = (size_t)(e->end - e->begin);
        t->offset = data_offset + e->begin;
        t->data = data + e->begin;
    }

    if (st->count > 1) qsort(st->entries, (size_t)st->count, sizeof *st->entries, compare_name); // entries is NULL when empty
    for (int64_t i = 1; i < st->count; i++)
        if (strcmp(st->entries[i - 1].tensor.name, st->entries[i].tensor.name) == 0)
            return mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor name " NAME_FMT " appears more than once", source,
                            st->entries[i].tensor.name);

    // The spans, in file order, must tile [0, data_size).
    enum mp_status status = MP_STATUS_OK;
    struct entry **order = malloc((size_t)(st->count > 0 ? st->count : 1) * sizeof *order);
    if (!order) return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: out of memory", source);
    for (int64_t i = 0; i < st->count; i++) order[i] = &st->entries[i];
    qsort(order, (size_t)st->count, sizeof *order, compare_span);
    uint64_t covered = 0;
    const char *previous = NULL;
    for (int64_t i = 0; i < st->count && status == MP_STATUS_OK; i++) {
        const struct entry *e = order[i];
        if (e->begin > covered)
            status = mp_error(MP_STATUS_BAD_FORMAT,
                              "%s: bytes [%llu, %llu) of the data section belong to no tensor (a hole before " NAME_FMT ")",
                              source, (unsigned long long)covered, (unsigned long long)e->begin, e->tensor.name);
        else if (e->begin < covered)
            status = mp_error(MP_STATUS_BAD_FORMAT, "%s: tensor " NAME_FMT " overlaps tensor " NAME_FMT, source,
                              e->tensor.name, previous);
        covered = e->end;
        previous = e->tensor.name;
    }
    free(order);
    if (status == MP_STATUS_OK && covered != data_size)
        status = mp_error(MP_STATUS_BAD_FORMAT, "%s: the last %llu bytes of the data section belong to no tensor", source,
                          (unsigned long long)(data_size - covered));
    return status;
}

/* ---------------------------------------------------------------- public API */

struct mp_safetensors *mp_safetensors_retain(struct mp_safetensors *st) {
    if (st) atomic_fetch_add(&st->refs, 1);
    return st;
}

const char *mp_safetensors_source(const struct mp_safetensors *st) { return st && st->source ? st->source : ""; }

void mp_safetensors_close(struct mp_safetensors *st) {
    if (!st || atomic_fetch_sub(&st->refs, 1) > 1) return;
    free(st->source);
    for (int64_t i = 0; i < st->count; i++) free((char *)st->entries[i].tensor.name);
    for (int64_t i = 0; i < st->meta_count; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->entries);
    free(st->meta_keys);
    free(st->meta_values);
    if (st->map) munmap(st->map, st->map_size);
    free(st);
}

static enum mp_status parse_bytes(struct mp_safetensors *st, const unsigned char *bytes, size_t size,
                                  const char *source, const struct mp_safetensors_limits *limits) {
    uint64_t max_header = limits && limits->max_header ? limits->max_header : MP_SAFETENSORS_MAX_HEADER;
    int64_t max_tensors = limits && limits->max_tensors > 0 ? limits->max_tensors : MP_SAFETENSORS_MAX_TENSORS;
    if (size < 8)
        return mp_error(MP_STATUS_BAD_FORMAT, "%s: %zu bytes is too short for a safetensors file (8-byte header length)",
                        source, size);
    uint64_t header_len = 0;
    for (int k = 7; k >= 0; k--) header_len = (header_len << 8) | bytes[k];
    if (header_len > max_header)
        return mp_error(MP_STATUS_BAD_FORMAT, "%s: header length %llu is over the limit of %llu bytes; not a safetensors file?",
                        source, (unsigned long long)header_len, (unsigned long long)max_header);
    if (header_len > size - 8)
        return mp_error(MP_STATUS_BAD_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", source,
                        (unsigned long long)header_len, size);
    const unsigned char *header = bytes + 8;
    size_t bad = utf8_check(header, (size_t)header_len);
    if (bad != header_len)
        return mp_error(MP_STATUS_BAD_FORMAT, "%s: header is not valid UTF-8 (byte %zu of the JSON)", source, bad);
    struct parser ps = {.start = header, .p = header, .end = header + header_len, .source = source,
                         .max_entries = max_tensors};
    if (parse_header(&ps, st)) return ps.status;
    return check_layout(st, header + header_len, size - 8 - header_len, 8 + header_len, source);
}

enum mp_status mp_safetensors_open_memory(struct mp_safetensors **out, const void *bytes, size_t size) {
    return mp_safetensors_open_memory_limited(out, bytes, size, NULL);
}

enum mp_status mp_safetensors_open(struct mp_safetensors **out, const char *path) {
    return mp_safetensors_open_limited(out, path, NULL);
}

enum mp_status mp_safetensors_open_memory_limited(struct mp_safetensors **out, const void *bytes, size_t size,
                                                  const struct mp_safetensors_limits *limits) {
    if (!out || (!bytes && size)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "safetensors_open_memory: NULL argument");
    *out = NULL;
    struct mp_safetensors *st = calloc(1, sizeof *st);
    if (!st) return mp_error(MP_STATUS_OUT_OF_MEMORY, "safetensors: out of memory");
    atomic_init(&st->refs, 1);
    enum mp_status status = parse_bytes(st, bytes, size, "<memory>", limits);
    if (status != MP_STATUS_OK) {
        mp_safetensors_close(st);
        return status;
    }
    *out = st;
    return MP_STATUS_OK;
}

enum mp_status mp_safetensors_open_limited(struct mp_safetensors **out, const char *path,
                                           const struct mp_safetensors_limits *limits) {
    if (!out || !path) return mp_error(MP_STATUS_INVALID_ARGUMENT, "safetensors_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mp_error(MP_STATUS_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return mp_error(MP_STATUS_IO, "cannot stat '%s': %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mp_error(MP_STATUS_IO, "'%s' is not a regular file", path);
    }
    struct mp_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        close(fd);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "safetensors: out of memory");
    }
    atomic_init(&st->refs, 1);
    if (!(st->source = strdup(path))) {
        close(fd);
        free(st);
        return mp_error(MP_STATUS_OUT_OF_MEMORY, "safetensors: out of memory");
    }
    size_t size = (size_t)sb.st_size;
    if (size > 0) { // mmap refuses a zero length; parse_bytes reports the empty file
        void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int err = errno;
            close(fd);
            free(st->source);
            free(st);
            return mp_error(MP_STATUS_IO, "cannot map '%s': %s", path, strerror(err));
        }
        st->map = map;
        st->map_size = size;
    }
    close(fd); // the mapping keeps the file
    enum mp_status status = parse_bytes(st, st->map, size, path, limits);
    if (status != MP_STATUS_OK) {
        mp_safetensors_close(st);
        return status;
    }
    *out = st;
    return MP_STATUS_OK;
}

int64_t mp_safetensors_count(const struct mp_safetensors *st) { return st ? st->count : 0; }

const struct mp_tensor *mp_safetensors_tensor(const struct mp_safetensors *st, int64_t i) {
    return st && i >= 0 && i < st->count ? &st->entries[i].tensor : NULL;
}

const struct mp_tensor *mp_safetensors_find(const struct mp_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    int64_t lo = 0, hi = st->count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->entries[mid].tensor.name, name);
        if (c == 0) return &st->entries[mid].tensor;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int64_t mp_safetensors_metadata_count(const struct mp_safetensors *st) { return st ? st->meta_count : 0; }

void mp_safetensors_metadata(const struct mp_safetensors *st, int64_t i, const char **key, const char **value) {
    int ok = st && i >= 0 && i < st->meta_count;
    if (key) *key = ok ? st->meta_keys[i] : NULL;
    if (value) *value = ok ? st->meta_values[i] : NULL;
}

enum mp_status mp_tensor_read(void *out, enum mp_dtype dtype, const struct mp_tensor *t) {
    if (!t || (!out && t->numel > 0)) return mp_error(MP_STATUS_INVALID_ARGUMENT, "tensor_read: NULL argument");
    if (dtype == t->dtype) {
        if (t->nbytes) memcpy(out, t->data, t->nbytes);
        return MP_STATUS_OK;
    }
    enum mp_status status = mp_dtype_convert(out, dtype, t->data, t->dtype, t->numel);
    if (status != MP_STATUS_OK)
        return mp_error(status, "cannot read tensor " NAME_FMT " of dtype %s as %s", t->name, mp_dtype_name(t->dtype),
                        mp_dtype_name(dtype));
    return MP_STATUS_OK;
}
