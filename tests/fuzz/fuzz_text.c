/* fuzz_text.c: libFuzzer target for the tokenizers (csrc/text/). The first input byte picks
 * what the rest is:
 *   0-3: a text for both tokenizers over small built-in vocabularies (encode, batch rows of
 *        a few lengths, decode of what was encoded);
 *   4:   an open_clip bpe file, then the input itself encoded with it;
 *   5:   a vocab.txt, then the input itself encoded with it;
 *   6:   HF files: vocab tokens one per line, a NUL byte, then merges.txt.
 * A failure must leave no handle and a message; a success must keep every promise (ids in
 * range, sot/[CLS] first, eot/[SEP] last, zero or [PAD] padding). ASan and UBSan turn a
 * broken promise or a bad access into a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/clip_tokenizer.h"
#include "text/wordpiece.h"

static const char BPE[] = "#version: fuzz\n"
                          "t h\nth e</w>\na n\nan d</w>\ni n\nin g</w>\no n\no f</w>\n"
                          "e r\ner s</w>\n\xc3\xa4 \xc2\xa4\n' s</w>\n< s\n"; // "ä ¤" is the UTF-8 of U+00E4
static const char VOCAB[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nand\n##s\n##ing\nof\na\n##b\n,\n.\n!\n\xe4\xb8\xad\n";

static struct mp_clip_bpe *clip_tiny;
static struct mp_wordpiece *wordpiece_tiny;

static void check_failure(enum mp_status status, const void *handle) {
    if (status == MP_STATUS_OK) return;
    if (handle != NULL || mp_last_error()[0] == 0) abort(); // no handle, and a message
}

static void exercise_clip(struct mp_clip_bpe *bpe, const char *text, int64_t size) {
    int64_t *ids = malloc((size_t)(size + 1) * sizeof *ids), count = 0;
    if (!ids) abort();
    enum mp_status status = mp_clip_bpe_encode(bpe, ids, &count, text, size);
    if (status == MP_STATUS_OK) {
        if (count < 0 || count > size) abort();
        for (int64_t i = 0; i < count; i++)
            if (ids[i] < 0 || ids[i] > mp_clip_bpe_max_id(bpe)) abort();
        int64_t bytes = 0;
        if (mp_clip_bpe_decode(bpe, NULL, 0, &bytes, ids, count) != MP_STATUS_OK) abort();
        char *out = malloc((size_t)bytes + 1);
        int64_t again = 0;
        if (!out || mp_clip_bpe_decode(bpe, out, bytes, &again, ids, count) != MP_STATUS_OK || again != bytes) abort();
        free(out);
    } else if (status != MP_STATUS_INVALID_ARGUMENT || mp_last_error()[0] == 0) {
        abort(); // only invalid UTF-8 may fail
    }
    const char *texts[2] = {text, "a"};
    int64_t sizes[2] = {size, 1};
    static const int64_t lengths[] = {2, 3, 8, 77};
    for (int k = 0; k < 4; k++) {
        int64_t T = lengths[k], *rows = malloc((size_t)(2 * T) * sizeof *rows);
        if (!rows) abort();
        enum mp_status batch = mp_clip_bpe_encode_batch(bpe, rows, texts, sizes, 2, T);
        if ((batch == MP_STATUS_OK) != (status == MP_STATUS_OK)) abort();
        if (batch == MP_STATUS_OK) {
            for (int64_t r = 0; r < 2; r++) {
                const int64_t *row = rows + r * T;
                if (row[0] != mp_clip_bpe_sot(bpe)) abort();
                int64_t end = 1;
                while (end < T && row[end] != mp_clip_bpe_eot(bpe)) end++;
                if (end == T) abort();
                for (int64_t t = end + 1; t < T; t++)
                    if (row[t] != 0) abort();
            }
        }
        free(rows);
    }
    free(ids);
}

static void exercise_wordpiece(const struct mp_wordpiece *wp, const char *text, int64_t size) {
    int64_t limit = size < 600 ? size : 600, count = 0;
    int64_t *ids = malloc((size_t)(limit + 1) * sizeof *ids);
    if (!ids) abort();
    enum mp_status status = mp_wordpiece_encode(wp, ids, &count, text, size, limit);
    if (status == MP_STATUS_OK) {
        if (count < 0 || count > limit) abort();
        for (int64_t i = 0; i < count; i++)
            if (ids[i] < 0 || ids[i] > INT32_MAX) abort(); // line numbers of the vocabulary
    } else if (status != MP_STATUS_INVALID_ARGUMENT || mp_last_error()[0] == 0) {
        abort();
    }
    const char *texts[2] = {"the", text};
    int64_t sizes[2] = {3, size}, offsets[2], lengths[2];
    static const int64_t max_lengths[] = {2, 5, 512};
    for (int k = 0; k < 3; k++) {
        int64_t total = 0;
        for (int i = 0; i < 2; i++) offsets[i] = total, total += mp_wordpiece_capacity(sizes[i], max_lengths[k]);
        int64_t *flat = malloc((size_t)total * sizeof *flat);
        if (!flat) abort();
        enum mp_status batch = mp_wordpiece_encode_batch(wp, flat, lengths, offsets, texts, sizes, 2, max_lengths[k]);
        if ((batch == MP_STATUS_OK) != (status == MP_STATUS_OK)) abort();
        if (batch == MP_STATUS_OK) {
            for (int i = 0; i < 2; i++) {
                const int64_t *row = flat + offsets[i];
                if (lengths[i] < 2 || lengths[i] > max_lengths[k] || row[0] != mp_wordpiece_cls(wp) ||
                    row[lengths[i] - 1] != mp_wordpiece_sep(wp))
                    abort();
            }
        }
        free(flat);
    }
    free(ids);
}

static void init_tiny(void) {
    if (clip_tiny) return;
    if (mp_clip_bpe_init_openai(&clip_tiny, BPE, (int64_t)strlen(BPE), 1000, "fuzz") != MP_STATUS_OK) abort();
    const char *specials[] = {"[MASK]", "[CLS]", "[SEP]"};
    struct mp_wordpiece_options options = mp_wordpiece_options_default();
    options.specials = specials;
    options.n_specials = 3;
    options.max_input_chars_per_word = 12;
    if (mp_wordpiece_init(&wordpiece_tiny, VOCAB, (int64_t)strlen(VOCAB), &options, "fuzz") != MP_STATUS_OK) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    init_tiny();
    const char *rest = (const char *)data + 1;
    int64_t n = (int64_t)size - 1;
    switch (data[0] % 8) {
    case 4: {
        struct mp_clip_bpe *bpe = NULL;
        enum mp_status status = mp_clip_bpe_init_openai(&bpe, rest, n, 200, "fuzz.txt");
        check_failure(status, bpe);
        if (bpe) exercise_clip(bpe, rest, n);
        mp_clip_bpe_free(bpe);
        break;
    }
    case 5: {
        struct mp_wordpiece *wp = NULL;
        enum mp_status status = mp_wordpiece_init(&wp, rest, n, NULL, "fuzz.txt");
        check_failure(status, wp);
        if (wp) exercise_wordpiece(wp, rest, n);
        mp_wordpiece_free(wp);
        break;
    }
    case 6: {
        // vocab tokens, one per line, up to a NUL; merges after it. Ids are line numbers.
        const char *nul = memchr(rest, 0, (size_t)n);
        int64_t vocab_size = nul ? nul - rest : n;
        const char *merges = nul ? nul + 1 : rest + n;
        int64_t merges_size = nul ? n - vocab_size - 1 : 0;
        int64_t V = 0;
        const char **tokens = malloc((size_t)(vocab_size + 1) * sizeof *tokens);
        int64_t *sizes = malloc((size_t)(vocab_size + 1) * sizeof *sizes), *ids = malloc((size_t)(vocab_size + 1) * sizeof *ids);
        if (!tokens || !sizes || !ids) abort();
        for (int64_t i = 0, start = 0; i <= vocab_size; i++) {
            if (i == vocab_size || rest[i] == '\n') {
                tokens[V] = rest + start, sizes[V] = i - start, ids[V] = V, V++;
                start = i + 1;
            }
        }
        struct mp_clip_bpe *bpe = NULL;
        enum mp_status status = mp_clip_bpe_init_hf(&bpe, tokens, sizes, ids, V, merges, merges_size, "<s>", "</s>",
                                                    "vocab.json", "merges.txt");
        check_failure(status, bpe);
        if (bpe) exercise_clip(bpe, merges, merges_size);
        mp_clip_bpe_free(bpe);
        free(tokens);
        free(sizes);
        free(ids);
        break;
    }
    default:
        exercise_clip(clip_tiny, rest, n);
        exercise_wordpiece(wordpiece_tiny, rest, n);
        break;
    }
    return 0;
}
