/* text/clip_tokenizer.c: CLIP's byte-level BPE: the vocabulary and merges loaders, the
 * pre-tokenising pattern written as a scanner over code-point classes, and the merge loop
 * with a bounded per-thread cache of words already split. */
#include "text/clip_tokenizer.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "text/unicode.h"
#include "text/vocab.h"

#define EOW "</w>"
#define EOW_SIZE 4

// Word cache of one thread: words of at most CACHE_MAX_WORD bytes and their ids. When any
// part is full the whole cache is emptied, so its memory stays bounded (~600 KB).
#define CACHE_SLOTS 16384     // a power of two
#define CACHE_ENTRIES 8192    // at most half the slots
#define CACHE_KEY_BYTES (1 << 17)
#define CACHE_IDS (1 << 15)
#define CACHE_MAX_WORD 64

// A batch runs on OpenMP threads from this many texts on.
#define PARALLEL_MIN_TEXTS 64

struct cache_entry {
    uint64_t hash;
    int32_t  key_offset, key_size;
    int32_t  ids_offset, ids_count;
};

struct worker {
    uint32_t           *slots;   // (CACHE_SLOTS) entry index + 1, 0 when empty
    struct cache_entry *entries; // (CACHE_ENTRIES)
    char               *keys;    // (CACHE_KEY_BYTES)
    int32_t            *ids;     // (CACHE_IDS)
    int32_t             n_entries, keys_used, ids_used;
    // BPE scratch for one word of up to `capacity` bytes
    int32_t            *sym, *prev, *next, *word_ids; // (capacity)
    uint64_t           *heap;                         // (3 * capacity) (rank << 32 | position)
    int32_t            *round;                        // (3 * capacity) positions popped for one rank
    int64_t             capacity;
};

struct merge {
    int32_t left, right, merged; // ids
};

struct special {
    const char *text; // NUL-terminated, in the vocabulary
    int64_t     size;
    int32_t     id;
};

struct mp_clip_bpe {
    struct mp_vocab vocab;            // token string -> id
    char          **id_tokens;        // (max_id + 1) token of each id (NULL: none), owned
    int32_t        *id_token_sizes;   // (max_id + 1)
    int64_t         max_id;
    int32_t         byte_id[256];     // symbol of byte b inside a word
    int32_t         byte_eow_id[256]; // symbol of byte b ending a word
    struct merge   *merges;           // (n_merges) by rank
    int64_t         n_merges;
    uint64_t       *pair_keys;        // (n_pair_slots) left << 32 | right, UINT64_MAX when empty
    int32_t        *pair_ranks;       // (n_pair_slots)
    int64_t         n_pair_slots;
    struct special  specials[2];      // sot, eot: the pattern's first alternatives
    char           *owned_specials[2]; // their strings, when copied from the caller
    struct worker  *workers;          // (n_workers), one per OpenMP thread
    int             n_workers;
};

/* ---------------------------------------------------------------- byte alphabet */

// matches open_clip bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the
// other 68 bytes, in increasing order, for U+0100 onwards. `order` lists bytes in the order
// of that dict (open_clip's first 256 vocabulary entries).
static void byte_alphabet(uint32_t byte_char[256], uint8_t order[256]) {
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) {
            byte_char[b] = (uint32_t)b;
            order[k++] = (uint8_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        if (!((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))) {
            byte_char[b] = 256u + (uint32_t)extra++;
            order[k++] = (uint8_t)b;
        }
    }
}

// The byte a byte-alphabet character stands for, or -1.
static int alphabet_byte(uint32_t cp) {
    if ((cp >= '!' && cp <= '~') || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    int n = (int)(cp - 256);
    for (int b = 0; b < 256; b++) {
        if (!((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) && n-- == 0) return b;
    }
    return -1;
}

/* ---------------------------------------------------------------- merge table */

static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static int64_t pair_slot(uint64_t key, int64_t n_slots) {
    return (int64_t)((key * 0x9e3779b97f4a7c15ull) >> 20 & (uint64_t)(n_slots - 1));
}

// Rank of merging (left, right), or -1.
static int32_t pair_rank(const struct mp_clip_bpe *bpe, int32_t left, int32_t right) {
    uint64_t key = pair_key(left, right);
    for (int64_t i = pair_slot(key, bpe->n_pair_slots);; i = (i + 1) & (bpe->n_pair_slots - 1)) {
        if (bpe->pair_keys[i] == key) return bpe->pair_ranks[i];
        if (bpe->pair_keys[i] == UINT64_MAX) return -1;
    }
}

// Fills the pair table from bpe->merges; a later merge of the same pair replaces the
// earlier one (open_clip's bpe_ranks = dict(zip(merges, range(...)))). Merges whose
// left symbol is -1 (a symbol that cannot occur) are skipped.
static enum mp_status build_pairs(struct mp_clip_bpe *bpe) {
    int64_t n = 1024;
    while (n < 2 * bpe->n_merges) n *= 2;
    bpe->pair_keys = malloc((size_t)n * sizeof *bpe->pair_keys);
    bpe->pair_ranks = malloc((size_t)n * sizeof *bpe->pair_ranks);
    if (!bpe->pair_keys || !bpe->pair_ranks) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for the merge table");
    memset(bpe->pair_keys, 0xff, (size_t)n * sizeof *bpe->pair_keys);
    bpe->n_pair_slots = n;
    for (int64_t r = 0; r < bpe->n_merges; r++) {
        const struct merge *m = &bpe->merges[r];
        if (m->left < 0) continue;
        uint64_t key = pair_key(m->left, m->right);
        int64_t i = pair_slot(key, n);
        while (bpe->pair_keys[i] != UINT64_MAX && bpe->pair_keys[i] != key) i = (i + 1) & (n - 1);
        bpe->pair_keys[i] = key;
        bpe->pair_ranks[i] = (int32_t)r;
    }
    return MP_STATUS_OK;
}

/* ---------------------------------------------------------------- BPE of one word */

static int grow_scratch(struct worker *w, int64_t n) {
    if (n <= w->capacity) return 0;
    int64_t cap = w->capacity ? w->capacity : 64;
    while (cap < n) cap *= 2;
    int32_t *sym = realloc(w->sym, (size_t)cap * sizeof *sym);
    if (sym) w->sym = sym;
    int32_t *prev = realloc(w->prev, (size_t)cap * sizeof *prev);
    if (prev) w->prev = prev;
    int32_t *next = realloc(w->next, (size_t)cap * sizeof *next);
    if (next) w->next = next;
    int32_t *word_ids = realloc(w->word_ids, (size_t)cap * sizeof *word_ids);
    if (word_ids) w->word_ids = word_ids;
    uint64_t *heap = realloc(w->heap, (size_t)cap * 3 * sizeof *heap);
    if (heap) w->heap = heap;
    int32_t *round = realloc(w->round, (size_t)cap * 3 * sizeof *round);
    if (round) w->round = round;
    if (!sym || !prev || !next || !word_ids || !heap || !round) return -1;
    w->capacity = cap;
    return 0;
}

static void heap_push(uint64_t *heap, int64_t *n, uint64_t v) {
    int64_t i = (*n)++;
    while (i > 0 && heap[(i - 1) / 2] > v) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = v;
}

static uint64_t heap_pop(uint64_t *heap, int64_t *n) {
    uint64_t top = heap[0], last = heap[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap[c + 1] < heap[c]) c++;
        if (heap[c] >= last) break;
        heap[i] = heap[c];
        i = c;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

static void push_pair(const struct mp_clip_bpe *bpe, struct worker *w, int64_t *heap_size, int32_t pos) {
    int32_t right = w->next[pos];
    if (right < 0) return;
    int32_t rank = pair_rank(bpe, w->sym[pos], w->sym[right]);
    if (rank >= 0) heap_push(w->heap, heap_size, (uint64_t)rank << 32 | (uint32_t)pos);
}

// matches open_clip SimpleTokenizer.bpe(): each round takes the pair of lowest rank and
// merges all its non-overlapping occurrences left to right. Here every adjacent pair sits
// in a heap keyed (rank, position); a round first pops every entry of the lowest rank (in
// position order), then merges them left to right, skipping the stale ones. Pairs the
// round creates go to the heap for later rounds, even when they rank lower (a merges
// file need not list a merge after those that make its symbols), exactly as in
// open_clip. O(n log n) per word.
// Writes the ids to w->word_ids; returns their count, or -1 when out of memory.
static int64_t bpe_word_heap(const struct mp_clip_bpe *bpe, struct worker *w, const unsigned char *word, int64_t n) {
    if (n > INT32_MAX / 4 || grow_scratch(w, n)) return -1;
    for (int64_t i = 0; i < n; i++) {
        w->sym[i] = i == n - 1 ? bpe->byte_eow_id[word[i]] : bpe->byte_id[word[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i == n - 1 ? -1 : (int32_t)i + 1;
    }
    int64_t heap_size = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(bpe, w, &heap_size, i);
    while (heap_size > 0) {
        int32_t rank = (int32_t)(w->heap[0] >> 32);
        const struct merge *m = &bpe->merges[rank];
        int64_t n_round = 0;
        while (heap_size > 0 && (int32_t)(w->heap[0] >> 32) == rank)
            w->round[n_round++] = (int32_t)(heap_pop(w->heap, &heap_size) & 0xffffffffu);
        for (int64_t k = 0; k < n_round; k++) {
            int32_t pos = w->round[k];
            int32_t right = w->next[pos];
            // stale: pos was merged away as a right symbol (sym -1), or its pair changed
            if (w->sym[pos] != m->left || right < 0 || w->sym[right] != m->right) continue;
            w->sym[pos] = m->merged;
            w->sym[right] = -1;
            w->next[pos] = w->next[right];
            if (w->next[right] >= 0) w->prev[w->next[right]] = pos;
            if (w->prev[pos] >= 0) push_pair(bpe, w, &heap_size, w->prev[pos]);
            push_pair(bpe, w, &heap_size, pos);
        }
    }
    int64_t count = 0;
    for (int32_t i = 0; i >= 0; i = w->next[i]) w->word_ids[count++] = w->sym[i];
    return count;
}

enum mp_status mp_clip_bpe_word_naive(const struct mp_clip_bpe *bpe, int64_t *ids, int64_t *count, const char *word,
                                      int64_t size) {
    const unsigned char *u = (const unsigned char *)word;
    *count = 0;
    if (size <= 0) return MP_STATUS_OK;
    int32_t *sym = malloc((size_t)size * sizeof *sym);
    if (!sym) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a word of %lld bytes", (long long)size);
    int64_t n = size;
    for (int64_t i = 0; i < n; i++) sym[i] = i == n - 1 ? bpe->byte_eow_id[u[i]] : bpe->byte_id[u[i]];
    while (n > 1) {
        int32_t best = -1; // min(pairs, key=rank)
        for (int64_t i = 0; i + 1 < n; i++) {
            int32_t r = pair_rank(bpe, sym[i], sym[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        const struct merge *m = &bpe->merges[best];
        int64_t j = 0;
        for (int64_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == m->left && sym[i + 1] == m->right) {
                sym[j++] = m->merged;
                i += 2;
            } else {
                sym[j++] = sym[i++];
            }
        }
        n = j;
    }
    for (int64_t i = 0; i < n; i++) ids[i] = sym[i];
    *count = n;
    free(sym);
    return MP_STATUS_OK;
}

/* ---------------------------------------------------------------- word cache */

static void worker_free(struct worker *w) {
    free(w->slots);
    free(w->entries);
    free(w->keys);
    free(w->ids);
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->word_ids);
    free(w->heap);
    free(w->round);
    memset(w, 0, sizeof *w);
}

static int worker_init(struct worker *w) {
    w->slots = calloc(CACHE_SLOTS, sizeof *w->slots);
    w->entries = malloc(CACHE_ENTRIES * sizeof *w->entries);
    w->keys = malloc(CACHE_KEY_BYTES);
    w->ids = malloc(CACHE_IDS * sizeof *w->ids);
    if (!w->slots || !w->entries || !w->keys || !w->ids || grow_scratch(w, CACHE_MAX_WORD)) {
        worker_free(w);
        return -1;
    }
    return 0;
}

// Makes one worker per thread the calling thread's parallel regions may use.
static enum mp_status ensure_workers(struct mp_clip_bpe *bpe, int n) {
    if (n <= bpe->n_workers) return MP_STATUS_OK;
    struct worker *workers = realloc(bpe->workers, (size_t)n * sizeof *workers);
    if (!workers) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for %d tokenizer caches", n);
    bpe->workers = workers;
    for (int i = bpe->n_workers; i < n; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        if (worker_init(&workers[i])) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a tokenizer cache");
        bpe->n_workers = i + 1;
    }
    return MP_STATUS_OK;
}

static void cache_clear(struct worker *w) {
    memset(w->slots, 0, CACHE_SLOTS * sizeof *w->slots);
    w->n_entries = w->keys_used = w->ids_used = 0;
}

// The cached ids of word[0 .. n) (n <= CACHE_MAX_WORD), or NULL.
static const int32_t *cache_get(const struct worker *w, const char *word, int64_t n, uint64_t hash, int32_t *count) {
    for (uint32_t i = (uint32_t)hash & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        uint32_t slot = w->slots[i];
        if (!slot) return NULL;
        const struct cache_entry *e = &w->entries[slot - 1];
        if (e->hash == hash && e->key_size == n && memcmp(w->keys + e->key_offset, word, (size_t)n) == 0) {
            *count = e->ids_count;
            return w->ids + e->ids_offset;
        }
    }
}

static void cache_put(struct worker *w, const char *word, int64_t n, uint64_t hash, const int32_t *ids, int64_t count) {
    if (w->n_entries == CACHE_ENTRIES || w->keys_used + n > CACHE_KEY_BYTES || w->ids_used + count > CACHE_IDS)
        cache_clear(w);
    struct cache_entry *e = &w->entries[w->n_entries];
    *e = (struct cache_entry){hash, w->keys_used, (int32_t)n, w->ids_used, (int32_t)count};
    memcpy(w->keys + w->keys_used, word, (size_t)n);
    memcpy(w->ids + w->ids_used, ids, (size_t)count * sizeof *ids);
    w->keys_used += (int32_t)n;
    w->ids_used += (int32_t)count;
    uint32_t i = (uint32_t)hash & (CACHE_SLOTS - 1);
    while (w->slots[i]) i = (i + 1) & (CACHE_SLOTS - 1);
    w->slots[i] = (uint32_t)++w->n_entries;
}

/* ---------------------------------------------------------------- pre-tokenisation */

// Length in bytes of the match of `pattern` (ASCII or UTF-8) at text[0 .. n) when each
// pair of characters is compared the way regex's IGNORECASE compares them, or 0.
static int64_t match_ignorecase(const char *text, int64_t n, const char *pattern, int64_t pattern_size) {
    int64_t i = 0, j = 0;
    while (j < pattern_size) {
        uint32_t a, b;
        int la = mp_utf8_decode(&a, text + i, n - i), lb = mp_utf8_decode(&b, pattern + j, pattern_size - j);
        if (!la || !lb || mp_unicode_fold_ascii(a) != mp_unicode_fold_ascii(b)) return 0;
        i += la;
        j += lb;
    }
    return i;
}

// matches open_clip's pattern alternatives 's|'t|'re|'ve|'m|'ll|'d (IGNORECASE):
// the length of the contraction at text[0] == '\'', or 0.
static int64_t match_contraction(const char *text, int64_t n) {
    static const char *const endings[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (int k = 0; k < 7; k++) {
        int64_t m = match_ignorecase(text + 1, n - 1, endings[k], (int64_t)strlen(endings[k]));
        if (m) return 1 + m;
    }
    return 0;
}

// Length of the run at text[0 .. n) of characters having `flag`.
static int64_t run_length(const char *text, int64_t n, uint8_t flag) {
    int64_t i = 0;
    while (i < n) {
        uint32_t cp;
        int len = (unsigned char)text[i] < 0x80 ? (cp = (unsigned char)text[i], 1) : mp_utf8_decode(&cp, text + i, n - i);
        if (!len || !(mp_unicode_flags(cp) & flag)) break;
        i += len;
    }
    return i;
}


// Appends the ids of one word to out[*count ..], stopping at `limit`.
static int emit_word(const struct mp_clip_bpe *bpe, struct worker *w, const char *word, int64_t n, int64_t *out,
                     int64_t *count, int64_t limit) {
    int32_t k = 0;
    const int32_t *ids = NULL;
    uint64_t hash = 0;
    if (n <= CACHE_MAX_WORD) {
        hash = mp_hash_bytes(word, n);
        ids = cache_get(w, word, n, hash, &k);
    }
    if (!ids) {
        int64_t m = bpe_word_heap(bpe, w, (const unsigned char *)word, n);
        if (m < 0) return MP_ENCODE_NO_MEMORY;
        if (n <= CACHE_MAX_WORD) cache_put(w, word, n, hash, w->word_ids, m);
        ids = w->word_ids;
        k = (int32_t)m;
    }
    for (int32_t i = 0; i < k && *count < limit; i++) out[(*count)++] = ids[i];
    return MP_ENCODE_OK;
}

// matches open_clip SimpleTokenizer.encode() on cleaned text: re.findall with the pattern
// special|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (IGNORECASE), each
// match byte-encoded and BPE'd. Writes at most `limit` ids; stops once it has them.
// A special-token match whose bytes differ from the token (a case-folded variant) is BPE'd
// as one word, as open_clip does (only the exact string is in its cache).
static int encode_text(const struct mp_clip_bpe *bpe, struct worker *w, int64_t *out, int64_t *count, int64_t limit,
                       const char *text, int64_t size, int64_t *bad_byte) {
    *count = 0;
    int64_t bad = mp_utf8_validate(text, size);
    if (bad < size) {
        *bad_byte = bad;
        return MP_ENCODE_BAD_UTF8;
    }
    int64_t i = 0;
    while (i < size && *count < limit) {
        const char *p = text + i;
        int64_t rest = size - i, m = 0;
        uint32_t cp;
        int len = mp_utf8_decode(&cp, p, rest);
        for (int k = 0; k < 2 && !m; k++) {
            unsigned char first = (unsigned char)bpe->specials[k].text[0];
            int letter = (first | 0x20) >= 'a' && (first | 0x20) <= 'z';
            if (first < 0x80 && !letter && (unsigned char)*p != first) continue; // "<...": nothing folds to '<'
            m = match_ignorecase(p, rest, bpe->specials[k].text, bpe->specials[k].size);
            if (m && m == bpe->specials[k].size && memcmp(p, bpe->specials[k].text, (size_t)m) == 0) {
                out[(*count)++] = bpe->specials[k].id;
                i += m;
                goto next;
            }
        }
        if (!m && cp == '\'') m = match_contraction(p, rest);
        if (!m) {
            uint8_t f = mp_unicode_flags(cp);
            if (f & MP_UNICODE_CLIP_LETTER) m = run_length(p, rest, MP_UNICODE_CLIP_LETTER);
            else if (f & MP_UNICODE_CLIP_NUMBER) m = len;
            else if (f & MP_UNICODE_CLIP_OTHER) m = run_length(p, rest, MP_UNICODE_CLIP_OTHER);
        }
        if (!m) { // whitespace, or U+0345 which no alternative matches: findall moves on
            i += len;
            continue;
        }
        if (emit_word(bpe, w, p, m, out, count, limit)) return MP_ENCODE_NO_MEMORY;
        i += m;
    next:;
    }
    return MP_ENCODE_OK;
}

/* ---------------------------------------------------------------- public encode */

enum mp_status mp_clip_bpe_word(struct mp_clip_bpe *bpe, int64_t *ids, int64_t *count, const char *word, int64_t size) {
    *count = 0;
    if (size <= 0) return MP_STATUS_OK;
    enum mp_status status = ensure_workers(bpe, 1);
    if (status != MP_STATUS_OK) return status;
    int64_t n = bpe_word_heap(bpe, &bpe->workers[0], (const unsigned char *)word, size);
    if (n < 0) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a word of %lld bytes", (long long)size);
    for (int64_t i = 0; i < n; i++) ids[i] = bpe->workers[0].word_ids[i];
    *count = n;
    return MP_STATUS_OK;
}

enum mp_status mp_clip_bpe_encode(struct mp_clip_bpe *bpe, int64_t *ids, int64_t *count, const char *text,
                                  int64_t size) {
    *count = 0;
    if (size < 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text size must be >= 0, got %lld", (long long)size);
    enum mp_status status = ensure_workers(bpe, 1);
    if (status != MP_STATUS_OK) return status;
    int64_t bad = 0;
    int result = encode_text(bpe, &bpe->workers[0], ids, count, size, text, size, &bad);
    return mp_encode_status(result, -1, bad);
}

enum mp_status mp_clip_bpe_encode_batch(struct mp_clip_bpe *bpe, int64_t *ids, const char *const *texts,
                                        const int64_t *sizes, int64_t N, int64_t T) {
    if (T < 2) return mp_error(MP_STATUS_INVALID_ARGUMENT, "context length must be >= 2 (sot and eot), got %lld", (long long)T);
    if (N < 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "N must be >= 0, got %lld", (long long)N);
    int n_threads = 1;
#ifdef _OPENMP
    if (N >= PARALLEL_MIN_TEXTS) n_threads = omp_get_max_threads();
#endif
    enum mp_status status = ensure_workers(bpe, n_threads);
    if (status != MP_STATUS_OK) return status;
    // The first failing text (lowest index) is reported after the region, on this thread.
    int64_t failed = N, failed_byte = 0;
    int failure = MP_ENCODE_OK;
    #pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (n_threads > 1)
    for (int64_t i = 0; i < N; i++) {
        int thread = 0;
#ifdef _OPENMP
        thread = omp_get_thread_num();
#endif
        int64_t *row = ids + i * T, count = 0, bad = 0;
        int rc = MP_ENCODE_OK;
        if (sizes[i] < 0) {
            rc = MP_ENCODE_BAD_UTF8;
            bad = -1;
        } else {
            rc = encode_text(bpe, &bpe->workers[thread], row + 1, &count, T - 2, texts[i], sizes[i], &bad);
        }
        row[0] = bpe->specials[0].id;
        row[count + 1] = bpe->specials[1].id;
        for (int64_t t = count + 2; t < T; t++) row[t] = 0;
        if (rc != MP_ENCODE_OK) {
            #pragma omp critical(mp_clip_bpe_failure)
            if (i < failed) {
                failed = i;
                failed_byte = bad;
                failure = rc;
            }
        }
    }
    return mp_encode_status(failure, failed, failed_byte);
}

enum mp_status mp_clip_bpe_decode(const struct mp_clip_bpe *bpe, char *out, int64_t capacity, int64_t *size,
                                  const int64_t *ids, int64_t n) {
    int64_t k = 0;
    for (int64_t t = 0; t < n; t++) {
        int64_t id = ids[t];
        if (id < 0 || id > bpe->max_id || !bpe->id_tokens[id])
            return mp_error(MP_STATUS_INVALID_ARGUMENT, "token id %lld (at %lld) is not in the vocabulary", (long long)id,
                            (long long)t);
        const char *s = bpe->id_tokens[id];
        int64_t m = bpe->id_token_sizes[id];
        for (int64_t i = 0; i < m;) {
            uint32_t cp;
            int len = mp_utf8_decode(&cp, s + i, m - i);
            int b = len ? alphabet_byte(cp) : -1;
            if (b < 0)
                return mp_error(MP_STATUS_INVALID_ARGUMENT, "token %lld has a character outside the byte alphabet",
                                (long long)id);
            if (k < capacity) out[k] = (char)b;
            k++;
            i += len;
        }
    }
    *size = k;
    return MP_STATUS_OK;
}

/* ---------------------------------------------------------------- loading */

int64_t mp_clip_bpe_vocab_size(const struct mp_clip_bpe *bpe) { return bpe->vocab.count; }
int64_t mp_clip_bpe_max_id(const struct mp_clip_bpe *bpe) { return bpe->max_id; }
int64_t mp_clip_bpe_sot(const struct mp_clip_bpe *bpe) { return bpe->specials[0].id; }
int64_t mp_clip_bpe_eot(const struct mp_clip_bpe *bpe) { return bpe->specials[1].id; }

void mp_clip_bpe_free(struct mp_clip_bpe *bpe) {
    if (!bpe) return;
    mp_vocab_free(&bpe->vocab);
    if (bpe->id_tokens)
        for (int64_t i = 0; i <= bpe->max_id; i++) free(bpe->id_tokens[i]);
    free(bpe->id_tokens);
    free(bpe->id_token_sizes);
    free(bpe->merges);
    free(bpe->pair_keys);
    free(bpe->pair_ranks);
    for (int i = 0; i < bpe->n_workers; i++) worker_free(&bpe->workers[i]);
    free(bpe->workers);
    free(bpe->owned_specials[0]);
    free(bpe->owned_specials[1]);
    free(bpe);
}

// One line of a merges file: [start, end) and its 1-based number.
struct line_reader {
    const char *text;
    int64_t     size, pos, number;
};

static int next_line(struct line_reader *r, const char **line, int64_t *n) {
    if (r->pos >= r->size) return 0;
    const char *start = r->text + r->pos;
    const char *nl = memchr(start, '\n', (size_t)(r->size - r->pos));
    int64_t len = nl ? nl - start : r->size - r->pos;
    r->pos += len + (nl != NULL);
    r->number++;
    *line = start;
    *n = len;
    return 1;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Splits a merge line into its two symbols, as str.split() would; -1 unless there are exactly two.
static int split_merge(const char *line, int64_t n, const char **a, int64_t *na, const char **b, int64_t *nb) {
    const char *parts[3];
    int64_t sizes[3];
    int k = 0;
    for (int64_t i = 0; i < n;) {
        while (i < n && is_space(line[i])) i++;
        if (i == n) break;
        int64_t start = i;
        while (i < n && !is_space(line[i])) i++;
        if (k == 3) return -1;
        parts[k] = line + start;
        sizes[k++] = i - start;
    }
    if (k != 2) return -1;
    *a = parts[0], *na = sizes[0], *b = parts[1], *nb = sizes[1];
    return 0;
}

static enum mp_status bad_line(const char *source, int64_t number, const char *line, int64_t n, const char *what) {
    return mp_error(MP_STATUS_BAD_FORMAT, "%s:%lld: %s, got '%.*s'", source, (long long)number, what,
                    (int)(n < 80 ? n : 80), line);
}

// Sets id_tokens from the vocabulary map: id i gets the string whose final id is i
// (open_clip's decoder = {v: k for k, v in encoder.items()}).
static enum mp_status build_id_tokens(struct mp_clip_bpe *bpe) {
    bpe->max_id = -1;
    for (int64_t e = 0; e < bpe->vocab.count; e++)
        if (bpe->vocab.entries[e].id > bpe->max_id) bpe->max_id = bpe->vocab.entries[e].id;
    int64_t n = bpe->max_id + 1;
    bpe->id_tokens = calloc((size_t)(n > 0 ? n : 1), sizeof *bpe->id_tokens);
    bpe->id_token_sizes = calloc((size_t)(n > 0 ? n : 1), sizeof *bpe->id_token_sizes);
    if (!bpe->id_tokens || !bpe->id_token_sizes) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for the vocabulary");
    for (int64_t e = 0; e < bpe->vocab.count; e++) {
        const struct mp_vocab_entry *entry = &bpe->vocab.entries[e];
        char *s = malloc((size_t)entry->size + 1);
        if (!s) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for the vocabulary");
        memcpy(s, bpe->vocab.keys + entry->offset, (size_t)entry->size);
        s[entry->size] = 0;
        free(bpe->id_tokens[entry->id]); // two strings with one id: the later wins
        bpe->id_tokens[entry->id] = s;
        bpe->id_token_sizes[entry->id] = entry->size;
    }
    return MP_STATUS_OK;
}

// Looks up the 512 byte symbols; `source` names the vocabulary in the message.
static enum mp_status bind_bytes(struct mp_clip_bpe *bpe, const char *source) {
    uint32_t byte_char[256];
    uint8_t order[256];
    byte_alphabet(byte_char, order);
    for (int b = 0; b < 256; b++) {
        char s[8];
        int n = mp_utf8_encode(s, byte_char[b]);
        memcpy(s + n, EOW, EOW_SIZE);
        bpe->byte_id[b] = mp_vocab_get(&bpe->vocab, s, n);
        bpe->byte_eow_id[b] = mp_vocab_get(&bpe->vocab, s, n + EOW_SIZE);
        if (bpe->byte_id[b] < 0 || bpe->byte_eow_id[b] < 0)
            return mp_error(MP_STATUS_BAD_FORMAT, "%s: no token for byte 0x%02x ('%.*s' and '%.*s</w>')", source, b, n, s, n, s);
    }
    return MP_STATUS_OK;
}

static enum mp_status bind_special(struct mp_clip_bpe *bpe, int k, const char *text, const char *source) {
    int32_t id = mp_vocab_get(&bpe->vocab, text, (int64_t)strlen(text));
    if (id < 0) return mp_error(MP_STATUS_BAD_FORMAT, "%s: no token '%s'", source, text);
    bpe->specials[k] = (struct special){text, (int64_t)strlen(text), id};
    return MP_STATUS_OK;
}

static enum mp_status finish(struct mp_clip_bpe *bpe, const char *source) {
    enum mp_status status;
    if ((status = build_id_tokens(bpe)) != MP_STATUS_OK || (status = bind_bytes(bpe, source)) != MP_STATUS_OK ||
        (status = build_pairs(bpe)) != MP_STATUS_OK)
        return status;
    return MP_STATUS_OK;
}

enum mp_status mp_clip_bpe_init_openai(struct mp_clip_bpe **out, const char *merges_text, int64_t size,
                                       int64_t n_merges, const char *source) {
    *out = NULL;
    if (!source) source = "bpe_simple_vocab_16e6.txt";
    if (size < 0 || n_merges < 0 || n_merges > INT32_MAX / 2)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "size and n_merges must be >= 0 (n_merges < 2^30), got %lld and %lld",
                        (long long)size, (long long)n_merges);
    struct mp_clip_bpe *bpe = calloc(1, sizeof *bpe);
    if (!bpe) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a tokenizer");
    enum mp_status status = MP_STATUS_OK;
    struct line_reader r = {merges_text, size, 0, 0};
    const char *line;
    int64_t n;
    // The header line, then up to n_merges merges (a Python slice: fewer lines give fewer merges).
    if (!next_line(&r, &line, &n)) {
        status = mp_error(MP_STATUS_BAD_FORMAT, "%s: empty file", source);
        goto fail;
    }
    bpe->merges = malloc((size_t)(n_merges > 0 ? n_merges : 1) * sizeof *bpe->merges);
    // Merge symbols are kept as (offset, size) pairs into merges_text until the vocabulary exists.
    int64_t *spans = malloc((size_t)(n_merges > 0 ? n_merges : 1) * 4 * sizeof *spans);
    if (!bpe->merges || !spans) {
        free(spans);
        status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for %lld merges", (long long)n_merges);
        goto fail;
    }
    // The vocabulary in open_clip's order: bytes, bytes + </w>, merges, specials.
    uint32_t byte_char[256];
    uint8_t order[256];
    byte_alphabet(byte_char, order);
    int32_t next_id = 0;
    for (int eow = 0; eow < 2 && status == MP_STATUS_OK; eow++) {
        for (int k = 0; k < 256 && status == MP_STATUS_OK; k++) {
            char s[8];
            int m = mp_utf8_encode(s, byte_char[order[k]]);
            if (eow) memcpy(s + m, EOW, EOW_SIZE), m += EOW_SIZE;
            status = mp_vocab_put(&bpe->vocab, s, m, next_id++);
        }
    }
    int64_t count = 0;
    char *joined = NULL;
    int64_t joined_cap = 0;
    while (status == MP_STATUS_OK && count < n_merges && next_line(&r, &line, &n)) {
        const char *a, *b;
        int64_t na, nb;
        if (split_merge(line, n, &a, &na, &b, &nb)) {
            status = bad_line(source, r.number, line, n, "expected a merge of two symbols separated by a space");
            break;
        }
        if (na + nb > joined_cap) {
            joined_cap = 2 * (na + nb);
            char *grown = realloc(joined, (size_t)joined_cap);
            if (!grown) {
                status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for merges");
                break;
            }
            joined = grown;
        }
        memcpy(joined, a, (size_t)na);
        memcpy(joined + na, b, (size_t)nb);
        status = mp_vocab_put(&bpe->vocab, joined, na + nb, next_id++);
        spans[4 * count] = a - merges_text, spans[4 * count + 1] = na;
        spans[4 * count + 2] = b - merges_text, spans[4 * count + 3] = nb;
        count++;
    }
    free(joined);
    if (status == MP_STATUS_OK) status = mp_vocab_put(&bpe->vocab, "<start_of_text>", 15, next_id++);
    if (status == MP_STATUS_OK) status = mp_vocab_put(&bpe->vocab, "<end_of_text>", 13, next_id++);
    // Ids of each merge, looked up in the finished vocabulary (later duplicates win, as in
    // open_clip's dict). A symbol missing from the vocabulary never occurs in a word, so
    // its merge can never apply: it gets left = -1.
    bpe->n_merges = count;
    for (int64_t k = 0; k < count && status == MP_STATUS_OK; k++) {
        const char *a = merges_text + spans[4 * k], *b = merges_text + spans[4 * k + 2];
        int64_t na = spans[4 * k + 1], nb = spans[4 * k + 3];
        struct merge *m = &bpe->merges[k];
        m->left = mp_vocab_get(&bpe->vocab, a, na);
        m->right = mp_vocab_get(&bpe->vocab, b, nb);
        char *ab = malloc((size_t)(na + nb));
        if (!ab) {
            status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for merges");
            break;
        }
        memcpy(ab, a, (size_t)na);
        memcpy(ab + na, b, (size_t)nb);
        m->merged = mp_vocab_get(&bpe->vocab, ab, na + nb);
        free(ab);
        if (m->right < 0) m->left = -1;
    }
    free(spans);
    if (status == MP_STATUS_OK) status = finish(bpe, source);
    if (status == MP_STATUS_OK) status = bind_special(bpe, 0, "<start_of_text>", source);
    if (status == MP_STATUS_OK) status = bind_special(bpe, 1, "<end_of_text>", source);
    if (status != MP_STATUS_OK) goto fail;
    *out = bpe;
    return MP_STATUS_OK;
fail:
    mp_clip_bpe_free(bpe);
    return status;
}

enum mp_status mp_clip_bpe_init_hf(struct mp_clip_bpe **out, const char *const *tokens, const int64_t *token_sizes,
                                   const int64_t *token_ids, int64_t V, const char *merges_text, int64_t size,
                                   const char *sot, const char *eot, const char *vocab_source,
                                   const char *merges_source) {
    *out = NULL;
    if (!vocab_source) vocab_source = "vocab.json";
    if (!merges_source) merges_source = "merges.txt";
    if (V < 0 || size < 0 || !sot || !eot)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "V and size must be >= 0 and sot, eot given");
    struct mp_clip_bpe *bpe = calloc(1, sizeof *bpe);
    if (!bpe) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a tokenizer");
    enum mp_status status = MP_STATUS_OK;
    // Special token strings must outlive the handle; keep copies.
    char *sot_copy = NULL, *eot_copy = NULL;
    for (int64_t i = 0; i < V && status == MP_STATUS_OK; i++) {
        if (token_ids[i] < 0 || token_ids[i] > INT32_MAX / 2 || token_sizes[i] < 0)
            status = mp_error(MP_STATUS_BAD_FORMAT, "%s: token '%.*s' has id %lld, expected an id in [0, 2^30)",
                              vocab_source, (int)(token_sizes[i] < 80 ? token_sizes[i] : 80), tokens[i],
                              (long long)token_ids[i]);
        else if (mp_utf8_validate(tokens[i], token_sizes[i]) != token_sizes[i])
            status = mp_error(MP_STATUS_BAD_FORMAT, "%s: token %lld is not UTF-8", vocab_source, (long long)token_ids[i]);
        else
            status = mp_vocab_put(&bpe->vocab, tokens[i], token_sizes[i], (int32_t)token_ids[i]);
    }
    int64_t cap = 1024, count = 0;
    bpe->merges = malloc((size_t)cap * sizeof *bpe->merges);
    if (status == MP_STATUS_OK && !bpe->merges) status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for merges");
    struct line_reader r = {merges_text, size, 0, 0};
    const char *line;
    int64_t n;
    char *joined = NULL;
    int64_t joined_cap = 0;
    // matches tokenizers' BPE loading: "#version" lines skipped, each merge's symbols and
    // their concatenation must be tokens of the vocabulary.
    while (status == MP_STATUS_OK && next_line(&r, &line, &n)) {
        int64_t len = n;
        while (len > 0 && line[len - 1] == '\r') len--;
        if (len == 0 || (len >= 8 && memcmp(line, "#version", 8) == 0)) continue;
        const char *a, *b;
        int64_t na, nb;
        if (split_merge(line, len, &a, &na, &b, &nb)) {
            status = bad_line(merges_source, r.number, line, len, "expected a merge of two symbols separated by a space");
            break;
        }
        if (count == cap) {
            struct merge *grown = cap < INT32_MAX / 4 ? realloc(bpe->merges, (size_t)(cap * 2) * sizeof *grown) : NULL;
            if (!grown) {
                status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for %lld merges", (long long)cap * 2);
                break;
            }
            bpe->merges = grown;
            cap *= 2;
        }
        if (na + nb > joined_cap) {
            joined_cap = 2 * (na + nb);
            char *grown = realloc(joined, (size_t)joined_cap);
            if (!grown) {
                status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for merges");
                break;
            }
            joined = grown;
        }
        memcpy(joined, a, (size_t)na);
        memcpy(joined + na, b, (size_t)nb);
        struct merge *m = &bpe->merges[count];
        m->left = mp_vocab_get(&bpe->vocab, a, na);
        m->right = mp_vocab_get(&bpe->vocab, b, nb);
        m->merged = mp_vocab_get(&bpe->vocab, joined, na + nb);
        if (m->left < 0 || m->right < 0 || m->merged < 0) {
            status = bad_line(merges_source, r.number, line, len,
                              m->merged < 0 ? "the merged symbol is not in the vocabulary"
                                            : "a symbol of the merge is not in the vocabulary");
            break;
        }
        count++;
    }
    free(joined);
    bpe->n_merges = count;
    if (status == MP_STATUS_OK) status = finish(bpe, vocab_source);
    if (status == MP_STATUS_OK) {
        sot_copy = malloc(strlen(sot) + 1);
        eot_copy = malloc(strlen(eot) + 1);
        if (!sot_copy || !eot_copy) status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory");
        else {
            strcpy(sot_copy, sot);
            strcpy(eot_copy, eot);
        }
    }
    if (status == MP_STATUS_OK) status = bind_special(bpe, 0, sot_copy, vocab_source);
    if (status == MP_STATUS_OK) status = bind_special(bpe, 1, eot_copy, vocab_source);
    if (status != MP_STATUS_OK) {
        free(sot_copy);
        free(eot_copy);
        mp_clip_bpe_free(bpe);
        return status;
    }
    bpe->owned_specials[0] = sot_copy;
    bpe->owned_specials[1] = eot_copy;
    *out = bpe;
    return MP_STATUS_OK;
}
