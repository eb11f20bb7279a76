/* text/vocab.c: an open-addressing hash map from token bytes to ids, owned strings,
 * shared by both tokenizers. */
#include "text/vocab.h"

#include <stdlib.h>
#include <string.h>

uint64_t mp_hash_bytes(const char *s, int64_t n) {
    // 8 bytes at a time, each word multiplied in; a final avalanche (splitmix64's finaliser).
    const uint64_t k = 0x9e3779b97f4a7c15ull;
    uint64_t h = (uint64_t)n * k;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * k;
        h ^= h >> 29;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, (size_t)(n - i));
        h = (h ^ w) * k;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static enum mp_status grow_slots(struct mp_vocab *v) {
    int64_t n_slots = v->n_slots ? v->n_slots * 2 : 1024;
    uint32_t *slots = calloc((size_t)n_slots, sizeof *slots);
    if (!slots) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a vocabulary of %lld tokens", (long long)v->count);
    for (int64_t e = 0; e < v->count; e++) {
        int64_t s = (int64_t)(v->entries[e].hash & (uint64_t)(n_slots - 1));
        while (slots[s]) s = (s + 1) & (n_slots - 1);
        slots[s] = (uint32_t)(e + 1);
    }
    free(v->slots);
    v->slots = slots;
    v->n_slots = n_slots;
    return MP_STATUS_OK;
}

int32_t mp_vocab_get_hashed(const struct mp_vocab *v, const char *s, int64_t n, uint64_t hash) {
    if (!v->n_slots) return -1;
    int64_t mask = v->n_slots - 1;
    for (int64_t i = (int64_t)(hash & (uint64_t)mask);; i = (i + 1) & mask) {
        uint32_t slot = v->slots[i];
        if (!slot) return -1;
        const struct mp_vocab_entry *e = &v->entries[slot - 1];
        if (e->hash == hash && e->size == n && memcmp(v->keys + e->offset, s, (size_t)n) == 0) return e->id;
    }
}

int32_t mp_vocab_get(const struct mp_vocab *v, const char *s, int64_t n) {
    return mp_vocab_get_hashed(v, s, n, mp_hash_bytes(s, n));
}

enum mp_status mp_vocab_put(struct mp_vocab *v, const char *s, int64_t n, int32_t id) {
    if (n < 0 || n > INT32_MAX) return mp_error(MP_STATUS_INVALID_ARGUMENT, "vocabulary key of %lld bytes", (long long)n);
    uint64_t hash = mp_hash_bytes(s, n);
    if (v->n_slots) {
        int64_t mask = v->n_slots - 1;
        for (int64_t i = (int64_t)(hash & (uint64_t)mask); v->slots[i]; i = (i + 1) & mask) {
            struct mp_vocab_entry *e = &v->entries[v->slots[i] - 1];
            if (e->hash == hash && e->size == n && memcmp(v->keys + e->offset, s, (size_t)n) == 0) {
                e->id = id;
                return MP_STATUS_OK;
            }
        }
    }
    if (v->count >= INT32_MAX - 1) return mp_error(MP_STATUS_INVALID_ARGUMENT, "more than 2^31 vocabulary entries");
    if (!v->keys || v->keys_size + n > v->keys_capacity) {
        int64_t cap = v->keys_capacity ? v->keys_capacity * 2 : 1 << 16;
        while (cap < v->keys_size + n) cap *= 2;
        char *keys = realloc(v->keys, (size_t)cap);
        if (!keys) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for vocabulary keys");
        v->keys = keys;
        v->keys_capacity = cap;
    }
    if (v->count == v->entries_capacity) {
        int64_t cap = v->entries_capacity ? v->entries_capacity * 2 : 1024;
        struct mp_vocab_entry *entries = realloc(v->entries, (size_t)cap * sizeof *entries);
        if (!entries) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for vocabulary entries");
        v->entries = entries;
        v->entries_capacity = cap;
    }
    if ((v->count + 1) * 2 > v->n_slots) {
        enum mp_status status = grow_slots(v);
        if (status != MP_STATUS_OK) return status;
    }
    if (n) memcpy(v->keys + v->keys_size, s, (size_t)n);
    v->entries[v->count] = (struct mp_vocab_entry){hash, v->keys_size, (int32_t)n, id};
    v->keys_size += n;
    v->count++;
    int64_t mask = v->n_slots - 1, i = (int64_t)(hash & (uint64_t)mask);
    while (v->slots[i]) i = (i + 1) & mask;
    v->slots[i] = (uint32_t)v->count;
    return MP_STATUS_OK;
}

void mp_vocab_free(struct mp_vocab *v) {
    free(v->keys);
    free(v->entries);
    free(v->slots);
    memset(v, 0, sizeof *v);
}
