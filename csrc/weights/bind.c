/* weights/bind.c: models read their weights by name. One resolver turns a rule of a
 * model's table plus its alias into a float view or copy, checking the shape once, with
 * messages that name the tensor and the file; the models only declare their tables. */
#include "weights/bind.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_MAX 2048 // bytes of an expanded source or name
#define PARTS_MAX 8   // parts of one concatenation

struct part {
    const struct mp_tensor *t; // NULL for zeros
    int transposed;
    char name[SPEC_MAX];
};

// Writes `pattern` with "{i}" replaced by `layer` into out; -1 when it does not fit.
static int expand(char *out, const char *pattern, int64_t layer) {
    size_t n = 0;
    for (const char *p = pattern; *p;) {
        if (p[0] == '{' && p[1] == 'i' && p[2] == '}') {
            int w = snprintf(out + n, SPEC_MAX - n, "%lld", (long long)layer);
            if (w < 0 || (size_t)w >= SPEC_MAX - n) return -1;
            n += (size_t)w, p += 3;
            continue;
        }
        if (n + 1 >= SPEC_MAX) return -1;
        out[n++] = *p++;
    }
    out[n] = '\0';
    return 0;
}

static const struct mp_tensor *find(const struct mp_checkpoint *ck, const char *name) {
    for (int64_t f = 0; f < ck->file_count; f++) {
        const struct mp_tensor *t = mp_safetensors_find(ck->files[f], name);
        if (t) return t;
    }
    return NULL;
}

static void shape_text(char *out, size_t size, const int64_t *shape, int ndim) {
    size_t n = (size_t)snprintf(out, size, "(");
    for (int d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(out + n, size - n, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (n < size) snprintf(out + n, size - n, ndim == 1 ? ",)" : ")");
}

// Splits [s, end) at `sep` into trimmed pieces copied to out[]; the number of pieces, or -1.
static int split(char out[][SPEC_MAX], int max, const char *s, const char *end, const char *sep) {
    int n = 0;
    size_t sep_len = strlen(sep);
    while (s <= end) {
        const char *next = strstr(s, sep);
        if (!next || next > end) next = end;
        while (s < next && *s == ' ') s++;
        const char *stop = next;
        while (stop > s && stop[-1] == ' ') stop--;
        if (n == max || (size_t)(stop - s) >= SPEC_MAX) return -1;
        memcpy(out[n], s, (size_t)(stop - s));
        out[n][stop - s] = '\0';
        n++;
        s = next + sep_len;
        if (next == end) break;
    }
    return n;
}

// The shape a part must have: rows / parts of the rule's first dimension, transposed if so.
static int part_shape(int64_t *out, const int64_t *shape, int ndim, int parts, int transposed) {
    for (int d = 0; d < ndim; d++) out[d] = shape[d];
    if (shape[0] % parts) return -1;
    out[0] = shape[0] / parts;
    if (transposed) {
        if (ndim != 2) return -1;
        int64_t rows = out[0];
        out[0] = out[1], out[1] = rows;
    }
    return 0;
}

// Does t have `shape` once its extra leading dimensions of 1 are dropped?
static int shape_matches(const struct mp_tensor *t, const int64_t *shape, int ndim) {
    if (t->ndim < ndim) return 0;
    int extra = t->ndim - ndim;
    for (int d = 0; d < extra; d++)
        if (t->shape[d] != 1) return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[extra + d] != shape[d]) return 0;
    return 1;
}

static enum mp_status own(struct mp_weights *w, void *block) {
    if (w->owned_count == w->owned_cap) {
        int64_t cap = w->owned_cap ? 2 * w->owned_cap : 64;
        void **grown = realloc(w->owned, (size_t)cap * sizeof *grown);
        if (!grown) {
            free(block);
            return mp_error(MP_STATUS_OUT_OF_MEMORY, "weights: out of memory");
        }
        w->owned = grown, w->owned_cap = cap;
    }
    w->owned[w->owned_count++] = block;
    return MP_STATUS_OK;
}

// Reads one tensor for `spec` (an expanded source) of `shape` into *out.
static enum mp_status resolve(const float **out, struct mp_weights *w, const struct mp_checkpoint *ck,
                              const char *spec, const int64_t *shape, int ndim, const char *who) {
    static _Thread_local char alts[PARTS_MAX][SPEC_MAX], names[PARTS_MAX][SPEC_MAX];
    static _Thread_local struct part parts[PARTS_MAX];
    const char *file = ck->file_count ? mp_safetensors_source(ck->files[0]) : "";
    const char *sep = *file ? ": " : "";
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    int n_alts = split(alts, PARTS_MAX, spec, spec + strlen(spec), "|");
    if (n_alts < 1) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: source '%.200s' is malformed", who, spec);
    int chosen = -1, n_parts = 0;
    char missing[SPEC_MAX] = "";
    int64_t missing_shape[MP_RULE_MAX_DIMS];
    for (int a = 0; a < n_alts && chosen < 0; a++) {
        char alt[SPEC_MAX];
        memcpy(alt, alts[a], SPEC_MAX);
        int n = split(names, PARTS_MAX, alt, alt + strlen(alt), "+");
        if (n < 1) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: source '%.200s' is malformed", who, spec);
        int complete = 1;
        for (int i = 0; i < n; i++) {
            struct part *p = &parts[i];
            size_t len = strlen(names[i]);
            p->transposed = len > 2 && strcmp(names[i] + len - 2, "^T") == 0;
            memcpy(p->name, names[i], len - (p->transposed ? 2 : 0));
            p->name[len - (p->transposed ? 2 : 0)] = '\0';
            p->t = strcmp(p->name, "zeros") == 0 ? NULL : find(ck, p->name);
            if (!p->t && strcmp(p->name, "zeros") != 0) {
                if (!missing[0]) {
                    memcpy(missing, p->name, SPEC_MAX);
                    if (part_shape(missing_shape, shape, ndim, n, p->transposed))
                        memcpy(missing_shape, shape, sizeof missing_shape);
                }
                complete = 0;
                break;
            }
        }
        if (complete) chosen = a, n_parts = n;
    }
    if (chosen < 0) {
        char text[128];
        shape_text(text, sizeof text, missing_shape, ndim);
        return mp_error(MP_STATUS_BAD_FORMAT, "%s%smissing tensor '%.200s' (expected shape %s)", file, sep, missing,
                        text);
    }
    for (int i = 0; i < n_parts; i++) { // every part must have its share of the shape
        int64_t want[MP_RULE_MAX_DIMS];
        if (part_shape(want, shape, ndim, n_parts, parts[i].transposed))
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: source '%.200s' cannot make a tensor of this shape", who,
                            spec);
        const struct mp_tensor *t = parts[i].t;
        if (!t || shape_matches(t, want, ndim)) continue;
        int64_t padded[MP_TENSOR_MAX_DIMS];
        int pad = t->ndim > ndim ? t->ndim - ndim : 0; // quote the rule as stored: with its leading 1s
        for (int d = 0; d < pad; d++) padded[d] = 1;
        for (int d = 0; d < ndim; d++) padded[pad + d] = want[d];
        char found[256], expected[128];
        shape_text(found, sizeof found, t->shape, t->ndim);
        shape_text(expected, sizeof expected, padded, pad + ndim);
        return mp_error(MP_STATUS_BAD_FORMAT, "%s%stensor '%.200s' has shape %s, expected %s", file, sep,
                        parts[i].name, found, expected);
    }
    const struct mp_tensor *t = parts[0].t;
    if (n_parts == 1 && t && !parts[0].transposed && t->dtype == MP_DTYPE_F32 && (uintptr_t)t->data % 4 == 0) {
        *out = t->data; // a view of the mapping
        return MP_STATUS_OK;
    }
    float *block = malloc((size_t)(numel > 0 ? numel : 1) * sizeof *block);
    if (!block) return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: cannot allocate %lld weights", who, (long long)numel);
    enum mp_status status = own(w, block);
    if (status) return status;
    int64_t share = numel / n_parts;
    for (int i = 0; i < n_parts && status == MP_STATUS_OK; i++) {
        float *dst = block + i * share;
        const struct part *p = &parts[i];
        if (!p->t) {
            memset(dst, 0, (size_t)share * sizeof *dst);
        } else if (!p->transposed) {
            status = mp_tensor_read(dst, MP_DTYPE_F32, p->t);
        } else { // stored (cols, rows): read, then transpose into place
            int64_t rows = shape[0] / n_parts, cols = shape[1];
            float *tmp = malloc((size_t)share * sizeof *tmp);
            if (!tmp) return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: cannot allocate %lld weights", who, (long long)share);
            status = mp_tensor_read(tmp, MP_DTYPE_F32, p->t);
            for (int64_t r = 0; r < rows && status == MP_STATUS_OK; r++)
                for (int64_t c = 0; c < cols; c++) dst[r * cols + c] = tmp[c * rows + r];
            free(tmp);
        }
    }
    *out = block;
    return status;
}

enum mp_status mp_weights_bind(struct mp_weights *w, void *model, void *layer0, size_t layer_size, int64_t layers,
                               const struct mp_weight_rule *rules, int64_t rule_count, const int64_t *dims,
                               uint32_t flags, const struct mp_checkpoint *ck, const char *who) {
    if (!w || !model || !rules || !dims || !ck || (ck->file_count > 0 && !ck->files) || ck->file_count < 0 ||
        (ck->alias_count > 0 && !ck->aliases) || ck->alias_count < 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: NULL argument", who);
    if (ck->file_count == 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: no safetensors file given", who);
    w->files = calloc((size_t)ck->file_count, sizeof *w->files);
    if (!w->files) return mp_error(MP_STATUS_OUT_OF_MEMORY, "%s: out of memory", who);
    for (int64_t f = 0; f < ck->file_count; f++) {
        if (!ck->files[f]) return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: file %lld is NULL", who, (long long)f);
        w->files[w->file_count++] = mp_safetensors_retain(ck->files[f]);
    }
    for (int64_t a = 0; a < ck->alias_count; a++) { // every alias must name a rule: catches typos in layouts
        int64_t r = 0;
        if (!ck->aliases[a].name || !ck->aliases[a].source)
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: alias %lld is NULL", who, (long long)a);
        while (r < rule_count && strcmp(rules[r].name, ck->aliases[a].name) != 0) r++;
        if (r == rule_count)
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: alias for '%.200s', which is not a tensor of this model",
                            who, ck->aliases[a].name);
    }
    char spec[SPEC_MAX];
    for (int64_t r = 0; r < rule_count; r++) {
        const struct mp_weight_rule *rule = &rules[r];
        if ((flags & rule->when) != rule->when) continue;
        const char *source = rule->name;
        for (int64_t a = 0; a < ck->alias_count; a++)
            if (strcmp(ck->aliases[a].name, rule->name) == 0) source = ck->aliases[a].source;
        int64_t shape[MP_RULE_MAX_DIMS];
        int ndim = 0;
        while (ndim < MP_RULE_MAX_DIMS && rule->shape[ndim]) {
            shape[ndim] = dims[rule->shape[ndim]];
            ndim++;
        }
        int per_layer = strstr(rule->name, "{i}") != NULL;
        for (int64_t l = 0; l < (per_layer ? layers : 1); l++) {
            if (expand(spec, source, l))
                return mp_error(MP_STATUS_INVALID_ARGUMENT, "%s: source of '%.200s' is too long", who, rule->name);
            char *base = per_layer ? (char *)layer0 + (size_t)l * layer_size : (char *)model;
            enum mp_status status = resolve((const float **)(void *)(base + rule->field), w, ck, spec, shape, ndim, who);
            if (status) return status;
        }
    }
    return MP_STATUS_OK;
}

enum mp_status mp_weights_own(struct mp_weights *w, const float **tensor, int64_t numel) {
    for (int64_t i = 0; i < w->owned_count; i++)
        if (w->owned[i] == (const void *)*tensor) return MP_STATUS_OK;
    float *copy = malloc((size_t)(numel > 0 ? numel : 1) * sizeof *copy);
    if (!copy) return mp_error(MP_STATUS_OUT_OF_MEMORY, "weights: out of memory");
    enum mp_status status = own(w, copy);
    if (status) return status;
    memcpy(copy, *tensor, (size_t)numel * sizeof *copy);
    *tensor = copy;
    return MP_STATUS_OK;
}

void mp_weights_free(struct mp_weights *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->owned_count; i++) free(w->owned[i]);
    for (int64_t f = 0; f < w->file_count; f++) mp_safetensors_close(w->files[f]);
    free(w->owned), free(w->files);
    memset(w, 0, sizeof *w);
}
