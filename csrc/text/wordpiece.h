/* text/wordpiece.h: BERT's WordPiece tokenizer, id for id the same as transformers'
 * BertTokenizerFast (the `tokenizers` crate: BertNormalizer, BertPreTokenizer, WordPiece,
 * the [CLS] $A [SEP] template).
 *
 *     struct mp_wordpiece_options options = mp_wordpiece_options_default();
 *     struct mp_wordpiece *wp;
 *     if (mp_wordpiece_init(&wp, vocab_text, size, &options, "vocab.txt") != MP_STATUS_OK) return error;
 *     int64_t ids[64], n;
 *     mp_wordpiece_encode(wp, ids, &n, "Hello, world!", 13, 64);   // hello , world !
 *     mp_wordpiece_free(wp);
 *
 * Per text, in the crate's order: added tokens (options.specials, e.g. "[MASK]") are cut
 * out of the raw text first (leftmost, longest); then clean_text deletes NUL, U+FFFD and
 * control characters and turns whitespace into word breaks; CJK ideographs and
 * punctuation become one-character words; nonspacing marks are deleted when
 * options.strip_accents is set (the crate's Mn table, MP_UNICODE_BERT_MARK); ASCII letters
 * are lower-cased when options.lowercase is set; each word becomes its longest-match-first pieces ("##" on
 * all but the first), or the unknown token when a piece is missing or the word has more
 * than max_input_chars_per_word characters.
 *
 * NFD and lower-casing of non-ASCII text (per character, as the crate does) are the
 * caller's: megapairs/text.py does them with unicodedata before the call.
 * The handle is read-only after init: any number of threads may encode with it at once. */
#ifndef MP_TEXT_WORDPIECE_H
#define MP_TEXT_WORDPIECE_H

#include <stdint.h>

#include "core/status.h"

struct mp_wordpiece_options {
    const char        *unk, *cls, *sep, *pad;       // token strings; each must be in the vocabulary
    const char *const *specials;                    // (n_specials) added tokens matched in the raw text
    int64_t            n_specials;
    const char        *prefix;                      // of continuation pieces, "##"
    int                lowercase;                   // lower-case ASCII letters
    int                strip_accents;               // delete nonspacing marks (the text must be NFD)
    int                tokenize_chinese_chars;      // isolate CJK ideographs
    int64_t            max_input_chars_per_word;    // longer words are unknown
};

// [UNK] [CLS] [SEP] [PAD], no added tokens, "##", lowercase, strip accents, CJK isolated, 100 characters.
struct mp_wordpiece_options mp_wordpiece_options_default(void);

struct mp_wordpiece;

// From the text of vocab.txt: one token per line ("\n" or "\r\n"), id = line number - 1,
// the later of duplicate lines winning (transformers' load_vocab). Returns
// MP_STATUS_BAD_FORMAT naming `source` and the line for a line that is not UTF-8, or
// naming a special token missing from the vocabulary; the options are copied.
enum mp_status mp_wordpiece_init(struct mp_wordpiece                **wp,
                                 const char                          *vocab_text, // (size) bytes
                                 int64_t                              size,
                                 const struct mp_wordpiece_options   *options,
                                 const char                          *source);

// Frees the handle. NULL is a no-op.
void mp_wordpiece_free(struct mp_wordpiece *wp);

// Distinct tokens, and the special ids.
int64_t mp_wordpiece_vocab_size(const struct mp_wordpiece *wp);
int64_t mp_wordpiece_unk(const struct mp_wordpiece *wp);
int64_t mp_wordpiece_cls(const struct mp_wordpiece *wp);
int64_t mp_wordpiece_sep(const struct mp_wordpiece *wp);
int64_t mp_wordpiece_pad(const struct mp_wordpiece *wp);

// The first `limit` tokens of one text, without [CLS]/[SEP]. `ids` holds `limit` entries;
// a text of `size` bytes never has more than `size` tokens.
// Returns MP_STATUS_INVALID_ARGUMENT, with the byte offset, if the text is not UTF-8.
enum mp_status mp_wordpiece_encode(const struct mp_wordpiece *wp,
                                   int64_t                   *ids,   // (limit)
                                   int64_t                   *count,
                                   const char                *text,  // (size) bytes of UTF-8
                                   int64_t                    size,
                                   int64_t                    limit);

// Slots text i needs in mp_wordpiece_encode_batch: min(max_length, size + 2).
int64_t mp_wordpiece_capacity(int64_t size, int64_t max_length);

// N texts, each as [CLS] + its first max_length - 2 tokens + [SEP], written to
// ids[offsets[i] .. offsets[i] + lengths[i]); text i must have mp_wordpiece_capacity
// slots there. Texts run in parallel (OpenMP) for large N.
// Returns MP_STATUS_INVALID_ARGUMENT if max_length < 2 or a text is not UTF-8 (naming the first).
enum mp_status mp_wordpiece_encode_batch(const struct mp_wordpiece *wp,
                                         int64_t                   *ids,     // (sum of capacities)
                                         int64_t                   *lengths, // (N)
                                         const int64_t             *offsets, // (N)
                                         const char *const         *texts,   // (N) UTF-8, not NUL-terminated
                                         const int64_t             *sizes,   // (N) bytes
                                         int64_t                    N,
                                         int64_t                    max_length);

#endif
