/* text/vocab.h: the string -> id hash map the tokenizers look tokens up in.
 *
 *     struct mp_vocab v = {0};
 *     if (mp_vocab_put(&v, "hello", 5, 42) != MP_STATUS_OK) return error;
 *     int32_t id = mp_vocab_get(&v, "hello", 5);   // 42; -1 when absent
 *     mp_vocab_free(&v);
 *
 * Keys are byte strings (any bytes, NUL included), copied into the map. Open addressing
 * with linear probing, at most half full. Reads may run on several threads at once;
 * writes need the map to themselves. */
#ifndef MP_TEXT_VOCAB_H
#define MP_TEXT_VOCAB_H

#include <stdint.h>

#include "core/status.h"

struct mp_vocab_entry {
    uint64_t hash;
    int64_t  offset; // of the key in mp_vocab.keys
    int32_t  size;   // key bytes
    int32_t  id;
};

struct mp_vocab {
    char                  *keys;     // the keys, back to back
    int64_t                keys_size, keys_capacity;
    struct mp_vocab_entry *entries;  // in insertion order
    int64_t                count, entries_capacity;
    uint32_t              *slots;    // entry index + 1, 0 when empty; a power of two of them
    int64_t                n_slots;
};

// A 64-bit hash of s[0 .. n).
uint64_t mp_hash_bytes(const char *s, int64_t n);

// Maps the key s[0 .. n) to `id`, replacing the id of an existing equal key (so the last
// of duplicate keys wins, as in a Python dict built from a list). n < 2^31.
enum mp_status mp_vocab_put(struct mp_vocab *v, const char *s, int64_t n, int32_t id);

// The id of the key s[0 .. n), or -1.
int32_t mp_vocab_get(const struct mp_vocab *v, const char *s, int64_t n);

// Same with the hash already computed by mp_hash_bytes(s, n).
int32_t mp_vocab_get_hashed(const struct mp_vocab *v, const char *s, int64_t n, uint64_t hash);

// Frees the storage and zeroes *v; a zeroed map is empty and valid.
void mp_vocab_free(struct mp_vocab *v);

#endif
