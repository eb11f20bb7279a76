/* test_text.c: the tokenizers' C core. UTF-8 decoding (invalid sequences included), the
 * generated class table on chosen code points, CLIP's BPE on a hand-made vocabulary (the
 * heap-based merge loop against open_clip's loop, `_naive`, on random words and shuffled
 * merge ranks), WordPiece on a tiny vocabulary, and malformed vocabulary files. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "megapairs.h"
#include "text/unicode.h"
#include "text/vocab.h"

#define COUNT_OF(a) (int)(sizeof(a) / sizeof *(a))

static int has(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

static int same_ids(const int64_t *a, const int64_t *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* ---------------------------------------------------------------- UTF-8 */

static void test_utf8(void) {
    static const struct {
        const char *bytes;
        int         n;
        int         len; // expected length, 0 for invalid
        uint32_t    cp;
    } cases[] = {
        {"A", 1, 1, 0x41},
        {"\xc3\xa9", 2, 2, 0xe9},
        {"\xe4\xb8\xad", 3, 3, 0x4e2d},
        {"\xf0\x9f\x98\x80", 4, 4, 0x1f600},
        {"\xf4\x8f\xbf\xbf", 4, 4, 0x10ffff},
        {"\x80", 1, 0, 0},             // stray continuation byte
        {"\xc0\x80", 2, 0, 0},         // overlong NUL
        {"\xc1\xbf", 2, 0, 0},         // overlong
        {"\xe0\x80\x80", 3, 0, 0},     // overlong 3-byte
        {"\xf0\x80\x80\x80", 4, 0, 0}, // overlong 4-byte
        {"\xed\xa0\x80", 3, 0, 0},     // surrogate U+D800
        {"\xf4\x90\x80\x80", 4, 0, 0}, // U+110000
        {"\xf5\x80\x80\x80", 4, 0, 0}, // lead byte past U+10FFFF
        {"\xe2\x82", 2, 0, 0},         // truncated
        {"\xe2\x28\xa1", 3, 0, 0},     // bad continuation
        {"", 0, 0, 0},                 // nothing to decode
    };
    for (int i = 0; i < COUNT_OF(cases); i++) {
        uint32_t cp = 0xdeadbeef;
        int len = mp_utf8_decode(&cp, cases[i].bytes, cases[i].n);
        CHECK(len == cases[i].len && (len == 0 || cp == cases[i].cp), "utf8 case %d: length %d cp U+%04X, expected %d U+%04X",
              i, len, cp, cases[i].len, cases[i].cp);
    }
    CHECK(mp_utf8_validate("ab\xc3\xa9" "c", 5) == 5, "valid text");
    CHECK(mp_utf8_validate("ab\xc3" "c", 4) == 2, "invalid sequence at byte 2");
    CHECK(mp_utf8_validate("abc\xe4\xb8", 5) == 3, "truncated at the end");
    static const uint32_t cps[] = {0, 0x7f, 0x80, 0x7ff, 0x800, 0xfffd, 0x10000, 0x10ffff};
    for (int i = 0; i < COUNT_OF(cps); i++) {
        char buf[4];
        uint32_t back = 0;
        int n = mp_utf8_encode(buf, cps[i]);
        CHECK(mp_utf8_decode(&back, buf, n) == n && back == cps[i], "round trip of U+%04X", cps[i]);
    }
}

/* ---------------------------------------------------------------- class table */

static void test_flags(void) {
    enum { L = MP_UNICODE_CLIP_LETTER, N = MP_UNICODE_CLIP_NUMBER, S = MP_UNICODE_CLIP_SPACE, O = MP_UNICODE_CLIP_OTHER,
           BS = MP_UNICODE_BERT_SPACE, BC = MP_UNICODE_BERT_CONTROL, BP = MP_UNICODE_BERT_PUNCT,
           BM = MP_UNICODE_BERT_MARK };
    static const struct {
        uint32_t cp;
        uint8_t  flags;
    } cases[] = {
        {'a', L}, {'Z', L}, {'7', N}, {' ', S | BS}, {'\t', S | BS}, {'\n', S | BS}, {'\r', S | BS},
        {'!', O | BP}, {'$', O | BP}, {'`', O | BP}, {'~', O | BP}, {'\'', O | BP},
        {0, O | BC}, {0x1b, O | BC}, {0x7f, O | BC}, {0x0b, S | BC}, // \v: regex whitespace, BERT control
        {0x85, S | BC}, {0xa0, S | BS}, {0x3000, S | BS}, {0x2028, S | BS},
        {0xe9, L}, {0x4e2d, L}, {0xac00, L}, {0x0661, N}, {0x00bd, N}, {0x2160, N},
        {0x0301, O | BM}, {0x0345, BM}, // U+0345: in none of CLIP's classes under IGNORECASE
        {0x200b, O | BC}, {0xfeff, O | BC}, {0xfffd, O | BC}, {0xe000, O | BC}, // Cf, Cf, replacement, Co
        {0x00a1, O | BP}, {0x2014, O | BP}, {0x3001, O | BP}, {0x1f600, O}, {0x00a9, O},
    };
    for (int i = 0; i < COUNT_OF(cases); i++) {
        uint8_t f = mp_unicode_flags(cases[i].cp);
        CHECK(f == cases[i].flags, "flags of U+%04X are 0x%02x, expected 0x%02x", cases[i].cp, f, cases[i].flags);
    }
    CHECK(mp_unicode_flags(0xd800) == 0 && mp_unicode_flags(0x110000) == 0, "surrogates and past U+10FFFF have no flags");
    CHECK(mp_unicode_is_cjk(0x4e2d) && mp_unicode_is_cjk(0x20000) && !mp_unicode_is_cjk(0x3042) && !mp_unicode_is_cjk(0xac00),
          "CJK ranges of bert.rs");
    CHECK(mp_unicode_fold_ascii(0x17f) == 's' && mp_unicode_fold_ascii('S') == 's' && mp_unicode_fold_ascii(0xe9) == 0xe9,
          "IGNORECASE folds");
}

/* ---------------------------------------------------------------- CLIP BPE */

// A bpe file of the open_clip layout: a header line, then merges.
static const char TINY_BPE[] = "#version: test\n"
                               "h e\n"
                               "l l\n"
                               "he ll\n"
                               "o </w>\n" // never applies: "</w>" alone is not a symbol
                               "hell o</w>\n"
                               "a b\n";

static void test_bpe_tiny(void) {
    struct mp_clip_bpe *bpe = NULL;
    enum mp_status status = mp_clip_bpe_init_openai(&bpe, TINY_BPE, (int64_t)strlen(TINY_BPE), 100, "tiny.txt");
    CHECK(status == MP_STATUS_OK, "init: %s", mp_last_error());
    if (status != MP_STATUS_OK) return;
    // ids: 0..255 bytes, 256..511 bytes + </w>, 512.. merges (6), then <start_of_text>, <end_of_text>
    CHECK(mp_clip_bpe_sot(bpe) == 518 && mp_clip_bpe_eot(bpe) == 519, "sot %lld eot %lld", (long long)mp_clip_bpe_sot(bpe),
          (long long)mp_clip_bpe_eot(bpe));
    // "o </w>" joins to "o</w>", already a byte token: 519 distinct strings (open_clip's len(encoder))
    CHECK(mp_clip_bpe_vocab_size(bpe) == 519, "vocab size %lld", (long long)mp_clip_bpe_vocab_size(bpe));

    int64_t ids[64], count = 0;
    // "hello" -> he, ll (512+2=514 "hell"), then hell + o</w> -> "hello</w>" (516)
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "hello", 5) == MP_STATUS_OK && count == 1 && ids[0] == 516,
          "hello -> %lld tokens, first %lld", (long long)count, (long long)ids[0]);
    // "it's": "it" then the contraction "'s" ('s' is byte 's' + </w>)
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "it's", 4) == MP_STATUS_OK && count == 4, "it's -> %lld tokens",
          (long long)count);
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "a <start_of_text>b", 18) == MP_STATUS_OK && count == 3 && ids[1] == 518,
          "special token in text: %lld tokens, second %lld", (long long)count, (long long)ids[1]);
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "  \t ", 4) == MP_STATUS_OK && count == 0, "whitespace only");
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "a\xff", 2) == MP_STATUS_INVALID_ARGUMENT && has(mp_last_error(), "byte 1"),
          "invalid UTF-8: %s", mp_last_error());

    // Batch: sot, tokens, eot, zeros; truncation keeps eot last.
    const char *texts[] = {"hello hello hello", "", "ab"};
    int64_t sizes[] = {17, 0, 2}, rows[3 * 4];
    CHECK(mp_clip_bpe_encode_batch(bpe, rows, texts, sizes, 3, 4) == MP_STATUS_OK, "batch: %s", mp_last_error());
    // "ab" ends a word, so its symbols are a and b</w>: the merge "a b" does not apply.
    int64_t a = 'a' - '!', b_eow = 256 + 'b' - '!';
    int64_t expected[3 * 4] = {518, 516, 516, 519, 518, 519, 0, 0, 518, a, b_eow, 519};
    CHECK(same_ids(rows, expected, 12), "batch rows: %lld %lld %lld %lld | %lld %lld | %lld %lld %lld %lld", (long long)rows[0],
          (long long)rows[1], (long long)rows[2], (long long)rows[3], (long long)rows[4], (long long)rows[5],
          (long long)rows[8], (long long)rows[9], (long long)rows[10], (long long)rows[11]);
    CHECK(mp_clip_bpe_encode_batch(bpe, rows, texts, sizes, 3, 1) == MP_STATUS_INVALID_ARGUMENT, "T = 1 refused");

    // decode spells the bytes back, "</w>" included
    char out[32];
    int64_t size = 0;
    CHECK(mp_clip_bpe_encode(bpe, ids, &count, "hello x", 7) == MP_STATUS_OK, "encode for decode");
    CHECK(mp_clip_bpe_decode(bpe, out, sizeof out, &size, ids, count) == MP_STATUS_OK && size == 14 &&
              memcmp(out, "hello</w>x</w>", 14) == 0,
          "decode: %.*s (%lld bytes)", (int)size, out, (long long)size);
    int64_t bad_id = 9999;
    CHECK(mp_clip_bpe_decode(bpe, out, sizeof out, &size, &bad_id, 1) == MP_STATUS_INVALID_ARGUMENT, "decode of an unknown id");
    mp_clip_bpe_free(bpe);
}

// Random merges over {a, b, c}, ranks shuffled so that a merge may rank before the merges
// that make its symbols: heap and naive loops must still agree on every word.
static void test_bpe_heap_matches_naive(void) {
    unsigned seed = 12345;
#define RAND() (seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff)
    char symbols[64][64];
    int n_symbols = 0;
    for (int i = 0; i < 3; i++) snprintf(symbols[n_symbols++], 64, "%c", 'a' + i);
    for (int i = 0; i < 3; i++) snprintf(symbols[n_symbols++], 64, "%c</w>", 'a' + i);
    char merges[60][136];
    int n_merges = 0;
    while (n_merges < 40 && n_symbols < 64) {
        char x[64], y[64];
        memcpy(x, symbols[RAND() % n_symbols], 64);
        memcpy(y, symbols[RAND() % n_symbols], 64);
        if (strstr(x, "</w>") || strlen(x) + strlen(y) > 24) continue;
        snprintf(merges[n_merges++], 136, "%s %s", x, y);
        snprintf(symbols[n_symbols++], 64, "%.30s%.30s", x, y);
    }
    for (int i = n_merges - 1; i > 0; i--) { // shuffle the ranks
        int j = (int)(RAND() % (unsigned)(i + 1));
        char tmp[136];
        memcpy(tmp, merges[i], 136), memcpy(merges[i], merges[j], 136), memcpy(merges[j], tmp, 136);
    }
    char text[8192] = "#version\n";
    for (int i = 0; i < n_merges; i++) strcat(text, merges[i]), strcat(text, "\n");
    struct mp_clip_bpe *bpe = NULL;
    if (!CHECK(mp_clip_bpe_init_openai(&bpe, text, (int64_t)strlen(text), n_merges, "random") == MP_STATUS_OK, "init: %s",
               mp_last_error()))
        return;
    int mismatches = 0;
    for (int trial = 0; trial < 3000; trial++) {
        char word[48];
        int n = 1 + (int)(RAND() % 40);
        for (int i = 0; i < n; i++) word[i] = (char)('a' + RAND() % 3);
        int64_t fast[48], naive[48], n_fast = -1, n_naive = -2;
        mp_clip_bpe_word(bpe, fast, &n_fast, word, n);
        mp_clip_bpe_word_naive(bpe, naive, &n_naive, word, n);
        if (n_fast != n_naive || !same_ids(fast, naive, n_fast)) {
            if (mismatches++ < 3) printf("  word %.*s: %lld vs %lld symbols\n", n, word, (long long)n_fast, (long long)n_naive);
        }
    }
    CHECK(mismatches == 0, "heap BPE differs from open_clip's loop on %d of 3000 words", mismatches);
    mp_clip_bpe_free(bpe);
#undef RAND
}

static void test_bpe_malformed(void) {
    struct mp_clip_bpe *bpe = (struct mp_clip_bpe *)&bpe; // must come back NULL
    const char bad[] = "#version\na b\nc d e\n";
    CHECK(mp_clip_bpe_init_openai(&bpe, bad, (int64_t)strlen(bad), 10, "bad.txt") == MP_STATUS_BAD_FORMAT && bpe == NULL &&
              has(mp_last_error(), "bad.txt:3"),
          "three symbols: %s", mp_last_error());
    CHECK(mp_clip_bpe_init_openai(&bpe, "", 0, 10, "empty.txt") == MP_STATUS_BAD_FORMAT, "empty file");

    // HF layout: a vocabulary without byte tokens, and merges that do not fit it.
    const char *tokens[] = {"a", "b", "ab", "<|startoftext|>", "<|endoftext|>"};
    int64_t sizes[] = {1, 1, 2, 15, 13}, ids[] = {0, 1, 2, 3, 4};
    CHECK(mp_clip_bpe_init_hf(&bpe, tokens, sizes, ids, 5, "#version: 0.2\na b\n", 18, "<|startoftext|>", "<|endoftext|>",
                              "vocab.json", "merges.txt") == MP_STATUS_BAD_FORMAT &&
              has(mp_last_error(), "vocab.json: no token for byte"),
          "missing byte symbols: %s", mp_last_error());
    CHECK(mp_clip_bpe_init_hf(&bpe, tokens, sizes, ids, 5, "#version: 0.2\na c\n", 18, "<|startoftext|>", "<|endoftext|>",
                              "vocab.json", "merges.txt") == MP_STATUS_BAD_FORMAT &&
              has(mp_last_error(), "merges.txt:2"),
          "merge symbol not in the vocabulary: %s", mp_last_error());
    CHECK(mp_clip_bpe_init_hf(&bpe, tokens, sizes, ids, 5, "a\n", 2, "<|startoftext|>", "<|endoftext|>", "vocab.json",
                              "merges.txt") == MP_STATUS_BAD_FORMAT &&
              has(mp_last_error(), "merges.txt:1"),
          "one-symbol merge: %s", mp_last_error());
    int64_t negative[] = {0, -1, 2, 3, 4};
    CHECK(mp_clip_bpe_init_hf(&bpe, tokens, sizes, negative, 5, "", 0, "<|startoftext|>", "<|endoftext|>", "vocab.json",
                              "merges.txt") == MP_STATUS_BAD_FORMAT,
          "negative id: %s", mp_last_error());
}

/* ---------------------------------------------------------------- WordPiece */

static const char TINY_VOCAB[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n" // 0..4
                                 "hello\nhel\n##lo\n##l\nworld\n"       // 5..9
                                 ",\n!\n\xe4\xb8\xad\ncafe\nab\r\n";   // 10..14 (a CRLF line end)

static struct mp_wordpiece *tiny_wordpiece(int max_chars) {
    const char *specials[] = {"[MASK]", "[CLS]"};
    struct mp_wordpiece_options options = mp_wordpiece_options_default();
    options.specials = specials;
    options.n_specials = 2;
    options.max_input_chars_per_word = max_chars;
    struct mp_wordpiece *wp = NULL;
    enum mp_status status = mp_wordpiece_init(&wp, TINY_VOCAB, (int64_t)strlen(TINY_VOCAB), &options, "tiny.txt");
    CHECK(status == MP_STATUS_OK, "init: %s", mp_last_error());
    return wp;
}

static void test_wordpiece(void) {
    struct mp_wordpiece *wp = tiny_wordpiece(10);
    if (!wp) return;
    CHECK(mp_wordpiece_vocab_size(wp) == 15 && mp_wordpiece_cls(wp) == 2 && mp_wordpiece_sep(wp) == 3 &&
              mp_wordpiece_pad(wp) == 0 && mp_wordpiece_unk(wp) == 1,
          "vocabulary and special ids");
    static const struct {
        const char *text;
        int64_t     expected[8];
        int         n;
    } cases[] = {
        {"Hello, World!", {5, 10, 9, 11}, 4},
        {"hello", {5}, 1},                    // the longest match wins over hel + ##lo
        {"helllo", {6, 8, 7}, 3},             // hel ##l ##lo
        {"lo", {1}, 1},                       // "##lo" only continues a word
        {"helloX", {1}, 1},                   // one missing piece: the whole word is unknown
        {"hello[MASK]world", {5, 4, 9}, 3},   // added tokens split words, matched before lower-casing
        {"[mask]", {1, 1, 1}, 3},             // "[" "mask" "]": not the added token, and not in this vocab
        {"he\x01llo wor\xe2\x80\x8bld", {5, 9}, 2}, // controls and ZWSP are deleted, joining their neighbours
        {"\xe4\xb8\xad\xe4\xb8\xad", {12, 12}, 2},  // CJK ideographs are one-character words
        {"cafe\xcc\x81", {13}, 1},            // NFD input: the accent is stripped
        {"ab\tab\nab\xc2\xa0" "ab", {14, 14, 14, 14}, 4},
        {"abababababab", {1}, 1},             // 12 characters > max_input_chars_per_word = 10
        {"", {0}, 0},
    };
    for (int i = 0; i < COUNT_OF(cases); i++) {
        int64_t ids[32], count = -1;
        enum mp_status status = mp_wordpiece_encode(wp, ids, &count, cases[i].text, (int64_t)strlen(cases[i].text), 32);
        CHECK(status == MP_STATUS_OK && count == cases[i].n && same_ids(ids, cases[i].expected, count),
              "wordpiece '%s': %lld tokens (first %lld), expected %d", cases[i].text, (long long)count,
              (long long)(count > 0 ? ids[0] : -1), cases[i].n);
    }
    // Batch: [CLS] ... [SEP], truncation keeps [SEP], capacities from mp_wordpiece_capacity.
    const char *texts[] = {"hello world hello world", "", "hello"};
    int64_t sizes[] = {23, 0, 5}, offsets[3], lengths[3], total = 0, max_length = 4;
    for (int i = 0; i < 3; i++) offsets[i] = total, total += mp_wordpiece_capacity(sizes[i], max_length);
    int64_t *ids = malloc((size_t)total * sizeof *ids);
    CHECK(mp_wordpiece_encode_batch(wp, ids, lengths, offsets, texts, sizes, 3, max_length) == MP_STATUS_OK, "batch: %s",
          mp_last_error());
    int64_t row0[] = {2, 5, 9, 3}, row1[] = {2, 3}, row2[] = {2, 5, 3};
    CHECK(lengths[0] == 4 && same_ids(ids + offsets[0], row0, 4), "truncated row");
    CHECK(lengths[1] == 2 && same_ids(ids + offsets[1], row1, 2), "empty row");
    CHECK(lengths[2] == 3 && same_ids(ids + offsets[2], row2, 3), "short row");
    CHECK(mp_wordpiece_encode_batch(wp, ids, lengths, offsets, texts, sizes, 3, 1) == MP_STATUS_INVALID_ARGUMENT,
          "max_length 1 refused");
    const char *bad[] = {"ok", "x\xc3"};
    int64_t bad_sizes[] = {2, 2};
    CHECK(mp_wordpiece_encode_batch(wp, ids, lengths, offsets, bad, bad_sizes, 2, 4) == MP_STATUS_INVALID_ARGUMENT &&
              has(mp_last_error(), "text 1"),
          "invalid UTF-8 names the text: %s", mp_last_error());
    free(ids);
    mp_wordpiece_free(wp);
}

static void test_wordpiece_malformed(void) {
    struct mp_wordpiece *wp = NULL;
    const char bad_utf8[] = "[PAD]\n[UNK]\n\xc3\n[CLS]\n[SEP]\n";
    CHECK(mp_wordpiece_init(&wp, bad_utf8, (int64_t)strlen(bad_utf8), NULL, "v.txt") == MP_STATUS_BAD_FORMAT && !wp &&
              has(mp_last_error(), "v.txt:3"),
          "invalid UTF-8 line: %s", mp_last_error());
    const char no_unk[] = "[PAD]\n[CLS]\n[SEP]\n";
    CHECK(mp_wordpiece_init(&wp, no_unk, (int64_t)strlen(no_unk), NULL, "v.txt") == MP_STATUS_BAD_FORMAT &&
              has(mp_last_error(), "[UNK]"),
          "missing [UNK]: %s", mp_last_error());
    CHECK(mp_wordpiece_init(&wp, "", 0, NULL, "v.txt") == MP_STATUS_BAD_FORMAT && has(mp_last_error(), "empty"),
          "empty vocabulary: %s", mp_last_error());
    const char *specials[] = {"[NOPE]"};
    struct mp_wordpiece_options options = mp_wordpiece_options_default();
    options.specials = specials;
    options.n_specials = 1;
    CHECK(mp_wordpiece_init(&wp, TINY_VOCAB, (int64_t)strlen(TINY_VOCAB), &options, "v.txt") == MP_STATUS_BAD_FORMAT,
          "added token missing from the vocabulary: %s", mp_last_error());
}

int main(void) {
    (void)check_close;
    test_utf8();
    test_flags();
    test_bpe_tiny();
    test_bpe_heap_matches_naive();
    test_bpe_malformed();
    test_wordpiece();
    test_wordpiece_malformed();
    return check_summary("test_text");
}
