/* text/wordpiece.c: BERT's WordPiece tokenizer: the vocabulary loader, the normaliser
 * and pre-tokeniser (Unicode classes from text/unicode.c) and the greedy longest-match
 * split, packing ids with [CLS]/[SEP] as transformers does. */
#include "text/wordpiece.h"

#include <stdlib.h>
#include <string.h>

#include "text/unicode.h"
#include "text/vocab.h"

#define MAX_SPECIALS 64
#define PARALLEL_MIN_TEXTS 64

struct special {
    char   *text; // owned, NUL-terminated
    int64_t size;
    int32_t id;
};

struct mp_wordpiece {
    struct mp_vocab words;         // every token -> id
    struct mp_vocab continuations; // tokens starting with the prefix, prefix removed -> id
    int64_t         longest_word, longest_continuation; // bytes of the longest key in each map
    int32_t         unk, cls, sep, pad;
    struct special  specials[MAX_SPECIALS];
    int64_t         n_specials;
    uint8_t         special_first[256]; // 1 for bytes that start an added token
    int             lowercase, strip_accents, tokenize_chinese_chars;
    int64_t         max_chars;
};

struct mp_wordpiece_options mp_wordpiece_options_default(void) {
    return (struct mp_wordpiece_options){
        .unk = "[UNK]", .cls = "[CLS]", .sep = "[SEP]", .pad = "[PAD]",
        .specials = NULL, .n_specials = 0, .prefix = "##",
        .lowercase = 1, .strip_accents = 1, .tokenize_chinese_chars = 1, .max_input_chars_per_word = 100,
    };
}

int64_t mp_wordpiece_vocab_size(const struct mp_wordpiece *wp) { return wp->words.count; }
int64_t mp_wordpiece_unk(const struct mp_wordpiece *wp) { return wp->unk; }
int64_t mp_wordpiece_cls(const struct mp_wordpiece *wp) { return wp->cls; }
int64_t mp_wordpiece_sep(const struct mp_wordpiece *wp) { return wp->sep; }
int64_t mp_wordpiece_pad(const struct mp_wordpiece *wp) { return wp->pad; }

int64_t mp_wordpiece_capacity(int64_t size, int64_t max_length) {
    return size + 2 < max_length ? size + 2 : max_length;
}

void mp_wordpiece_free(struct mp_wordpiece *wp) {
    if (!wp) return;
    mp_vocab_free(&wp->words);
    mp_vocab_free(&wp->continuations);
    for (int64_t i = 0; i < wp->n_specials; i++) free(wp->specials[i].text);
    free(wp);
}

static enum mp_status bind_token(const struct mp_wordpiece *wp, const char *token, const char *what, const char *source,
                                 int32_t *id) {
    if (!token) return mp_error(MP_STATUS_INVALID_ARGUMENT, "the %s token is not set", what);
    *id = mp_vocab_get(&wp->words, token, (int64_t)strlen(token));
    if (*id < 0) return mp_error(MP_STATUS_BAD_FORMAT, "%s: no %s token '%.100s' in the vocabulary", source, what, token);
    return MP_STATUS_OK;
}

enum mp_status mp_wordpiece_init(struct mp_wordpiece **out, const char *vocab_text, int64_t size,
                                 const struct mp_wordpiece_options *options, const char *source) {
    *out = NULL;
    if (!source) source = "vocab.txt";
    struct mp_wordpiece_options defaults = mp_wordpiece_options_default();
    if (!options) options = &defaults;
    if (size < 0 || options->n_specials < 0 || options->n_specials > MAX_SPECIALS || !options->prefix ||
        options->max_input_chars_per_word < 1)
        return mp_error(MP_STATUS_INVALID_ARGUMENT,
                        "size must be >= 0, at most %d added tokens, a prefix and max_input_chars_per_word >= 1",
                        MAX_SPECIALS);
    struct mp_wordpiece *wp = calloc(1, sizeof *wp);
    if (!wp) return mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory for a tokenizer");
    wp->lowercase = options->lowercase != 0;
    wp->strip_accents = options->strip_accents != 0;
    wp->tokenize_chinese_chars = options->tokenize_chinese_chars != 0;
    wp->max_chars = options->max_input_chars_per_word;
    enum mp_status status = MP_STATUS_OK;
    int64_t prefix_size = (int64_t)strlen(options->prefix), line = 0;
    // matches transformers' load_vocab: readlines(), rstrip("\n"), id = index, later duplicates win
    for (int64_t pos = 0; pos < size && status == MP_STATUS_OK; line++) {
        const char *start = vocab_text + pos;
        const char *nl = memchr(start, '\n', (size_t)(size - pos));
        int64_t n = nl ? nl - start : size - pos;
        pos += n + (nl != NULL);
        if (n > 0 && start[n - 1] == '\r') n--; // a file with CRLF line ends, read in text mode
        if (line > INT32_MAX - 1) {
            status = mp_error(MP_STATUS_BAD_FORMAT, "%s: more than 2^31 lines", source);
            break;
        }
        int64_t bad = mp_utf8_validate(start, n);
        if (bad < n) {
            status = mp_error(MP_STATUS_BAD_FORMAT, "%s:%lld: invalid UTF-8 at byte %lld of the line", source,
                              (long long)line + 1, (long long)bad);
            break;
        }
        status = mp_vocab_put(&wp->words, start, n, (int32_t)line);
        if (n > wp->longest_word) wp->longest_word = n;
        if (status == MP_STATUS_OK && n > prefix_size && memcmp(start, options->prefix, (size_t)prefix_size) == 0) {
            status = mp_vocab_put(&wp->continuations, start + prefix_size, n - prefix_size, (int32_t)line);
            if (n - prefix_size > wp->longest_continuation) wp->longest_continuation = n - prefix_size;
        }
    }
    if (status == MP_STATUS_OK && line == 0) status = mp_error(MP_STATUS_BAD_FORMAT, "%s: empty vocabulary", source);
    if (status == MP_STATUS_OK) status = bind_token(wp, options->unk, "unknown", source, &wp->unk);
    if (status == MP_STATUS_OK) status = bind_token(wp, options->cls, "[CLS]", source, &wp->cls);
    if (status == MP_STATUS_OK) status = bind_token(wp, options->sep, "[SEP]", source, &wp->sep);
    if (status == MP_STATUS_OK) status = bind_token(wp, options->pad, "padding", source, &wp->pad);
    for (int64_t i = 0; i < options->n_specials && status == MP_STATUS_OK; i++) {
        const char *s = options->specials[i];
        int32_t id;
        if (!s || !s[0]) {
            status = mp_error(MP_STATUS_INVALID_ARGUMENT, "added token %lld is empty", (long long)i);
            break;
        }
        if ((status = bind_token(wp, s, "added", source, &id)) != MP_STATUS_OK) break;
        struct special *sp = &wp->specials[wp->n_specials];
        sp->size = (int64_t)strlen(s);
        sp->text = malloc((size_t)sp->size + 1);
        if (!sp->text) {
            status = mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory");
            break;
        }
        memcpy(sp->text, s, (size_t)sp->size + 1);
        sp->id = id;
        wp->special_first[(unsigned char)s[0]] = 1;
        wp->n_specials++;
    }
    if (status != MP_STATUS_OK) {
        mp_wordpiece_free(wp);
        return status;
    }
    *out = wp;
    return MP_STATUS_OK;
}

/* ---------------------------------------------------------------- encoding */

// Appends `id` unless the output is full; returns 1 once it is.
static int put(int64_t *ids, int64_t *count, int64_t limit, int64_t id) {
    if (*count < limit) ids[(*count)++] = id;
    return *count >= limit;
}

// matches tokenizers' WordPiece::tokenize: greedy longest match from the left, the prefix
// on every piece but the first; one missing piece makes the whole word the unknown token.
// word[0 .. n) holds `chars` characters.
static int wordpiece_word(const struct mp_wordpiece *wp, const char *word, int64_t n, int64_t chars, int64_t *ids,
                          int64_t *count, int64_t limit) {
    if (chars > wp->max_chars) return put(ids, count, limit, wp->unk);
    int64_t first = *count, start = 0;
    while (start < n) {
        const struct mp_vocab *map = start == 0 ? &wp->words : &wp->continuations;
        int64_t longest = start == 0 ? wp->longest_word : wp->longest_continuation;
        int64_t end = n - start > longest ? start + longest : n;
        int32_t id = -1;
        while (end > start) {
            while (end > start && end < n && ((unsigned char)word[end] & 0xc0) == 0x80) end--; // a character boundary
            if (end == start) break;
            id = mp_vocab_get(map, word + start, end - start);
            if (id >= 0) break;
            end--;
        }
        if (id < 0) { // the pieces written so far are taken back
            *count = first;
            return put(ids, count, limit, wp->unk);
        }
        if (*count < limit) ids[(*count)++] = id; // past the limit only the word's validity matters
        start = end;
    }
    return *count >= limit;
}

// The added token starting at text[0 .. n), longest first, or NULL.
static const struct special *match_special(const struct mp_wordpiece *wp, const char *text, int64_t n) {
    const struct special *best = NULL;
    for (int64_t k = 0; k < wp->n_specials; k++) {
        const struct special *s = &wp->specials[k];
        if (s->size <= n && (!best || s->size > best->size) && memcmp(text, s->text, (size_t)s->size) == 0) best = s;
    }
    return best;
}


// matches tokenizers' BertNormalizer (clean_text, handle_chinese_chars, the deletion step
// of strip_accents, the ASCII part of lowercase) + BertPreTokenizer + WordPiece, after the
// added-token split.
static int encode_text(const struct mp_wordpiece *wp, int64_t *ids, int64_t *count, int64_t limit, const char *text,
                       int64_t size, int64_t *bad_byte) {
    *count = 0;
    int64_t bad = mp_utf8_validate(text, size);
    if (bad < size) {
        *bad_byte = bad;
        return MP_ENCODE_BAD_UTF8;
    }
    if (limit <= 0) return MP_ENCODE_OK;
    // Bytes of the current word, kept while it has at most max_chars characters (longer
    // words are unknown whatever they hold).
    char stack[512];
    int64_t word_capacity = 4 * wp->max_chars + 4;
    char *word = word_capacity <= (int64_t)sizeof stack ? stack : malloc((size_t)word_capacity);
    if (!word) return MP_ENCODE_NO_MEMORY;
    int64_t n = 0, chars = 0, i = 0;
    int full = 0;
#define END_WORD()                                                                    \
    do {                                                                              \
        if (chars > 0) full = wordpiece_word(wp, word, n, chars, ids, count, limit); \
        n = chars = 0;                                                                \
    } while (0)
    while (i < size && !full) {
        unsigned char c = (unsigned char)text[i];
        if (wp->special_first[c]) {
            const struct special *s = match_special(wp, text + i, size - i);
            if (s) {
                END_WORD();
                if (!full) full = put(ids, count, limit, s->id);
                i += s->size;
                continue;
            }
        }
        uint32_t cp = c;
        int len = c < 0x80 ? 1 : mp_utf8_decode(&cp, text + i, size - i);
        uint8_t f = mp_unicode_flags(cp);
        if ((f & MP_UNICODE_BERT_CONTROL) || (wp->strip_accents && (f & MP_UNICODE_BERT_MARK))) {
            // deleted: the characters around it join
        } else if (f & MP_UNICODE_BERT_SPACE) {
            END_WORD();
        } else if ((f & MP_UNICODE_BERT_PUNCT) || (wp->tokenize_chinese_chars && mp_unicode_is_cjk(cp))) {
            END_WORD();
            if (!full) {
                memcpy(word, text + i, (size_t)len);
                n = len, chars = 1;
                END_WORD();
            }
        } else {
            if (chars < wp->max_chars + 1) {
                if (len == 1 && wp->lowercase && c >= 'A' && c <= 'Z') word[n++] = (char)(c + ('a' - 'A'));
                else memcpy(word + n, text + i, (size_t)len), n += len;
            }
            chars++;
        }
        i += len;
    }
    if (!full) END_WORD();
#undef END_WORD
    if (word != stack) free(word);
    return MP_ENCODE_OK;
}

enum mp_status mp_wordpiece_encode(const struct mp_wordpiece *wp, int64_t *ids, int64_t *count, const char *text,
                                   int64_t size, int64_t limit) {
    *count = 0;
    if (size < 0 || limit < 0)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "size and limit must be >= 0, got %lld and %lld", (long long)size,
                        (long long)limit);
    int64_t bad = 0;
    int result = encode_text(wp, ids, count, limit, text, size, &bad);
    return mp_encode_status(result, -1, bad);
}

enum mp_status mp_wordpiece_encode_batch(const struct mp_wordpiece *wp, int64_t *ids, int64_t *lengths,
                                         const int64_t *offsets, const char *const *texts, const int64_t *sizes,
                                         int64_t N, int64_t max_length) {
    if (max_length < 2)
        return mp_error(MP_STATUS_INVALID_ARGUMENT, "max_length must be >= 2 ([CLS] and [SEP]), got %lld",
                        (long long)max_length);
    int64_t failed = N, failed_byte = 0;
    int failure = MP_ENCODE_OK;
    #pragma omp parallel for schedule(dynamic, 16) if (N >= PARALLEL_MIN_TEXTS)
    for (int64_t i = 0; i < N; i++) {
        int64_t *row = ids + offsets[i], count = 0, bad = -1;
        int64_t capacity = sizes[i] < 0 ? 0 : mp_wordpiece_capacity(sizes[i], max_length);
        int rc = sizes[i] < 0 ? MP_ENCODE_BAD_UTF8 : encode_text(wp, row + 1, &count, capacity - 2, texts[i], sizes[i], &bad);
        if (capacity >= 2) {
            row[0] = wp->cls;
            row[count + 1] = wp->sep;
            lengths[i] = count + 2;
        } else {
            lengths[i] = 0;
        }
        if (rc != MP_ENCODE_OK) {
            #pragma omp critical(mp_wordpiece_failure)
            if (i < failed) {
                failed = i;
                failed_byte = bad;
                failure = rc;
            }
        }
    }
    return mp_encode_status(failure, failed, failed_byte);
}
