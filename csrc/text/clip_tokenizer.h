/* text/clip_tokenizer.h: CLIP's byte-level BPE, id for id the same as open_clip's
 * SimpleTokenizer and `tokenize` on text that is already cleaned and lower-cased (the
 * cleaning, ftfy + html.unescape + whitespace collapse + str.lower, is megapairs/text.py's).
 *
 *     struct mp_clip_bpe *bpe;
 *     if (mp_clip_bpe_init_openai(&bpe, merges_text, size, 48894, "bpe_simple_vocab_16e6.txt") != MP_STATUS_OK)
 *         return error;                                   // mp_last_error() names the file and line
 *     int64_t ids[2 * 77];                                // (N, T) = (2, 77)
 *     mp_clip_bpe_encode_batch(bpe, ids, texts, sizes, 2, 77);   // sot ... eot 0 0 ...
 *     mp_clip_bpe_free(bpe);
 *
 * Pipeline per text: pre-tokenisation by open_clip's pattern (special tokens, then
 * 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ with IGNORECASE, leftmost
 * alternative first, unmatched characters skipped); each word's UTF-8 bytes become
 * byte-alphabet symbols, the last one with "</w>"; symbols merge by rank; the symbols'
 * vocabulary ids are the tokens.
 *
 * Thread-safety: the handle keeps a word cache per OpenMP thread (bounded, emptied when
 * full), so encode calls mutate it. One handle must not be used by two threads at once
 * (the Python binding serialises calls with a lock); a batch call itself runs texts in
 * parallel. */
#ifndef MP_TEXT_CLIP_TOKENIZER_H
#define MP_TEXT_CLIP_TOKENIZER_H

#include <stdint.h>

#include "core/status.h"

// open_clip keeps merges lines[1 : 49152 - 256 - 2 + 1] of bpe_simple_vocab_16e6.txt.
#define MP_CLIP_BPE_OPENAI_MERGES (49152 - 256 - 2)

struct mp_clip_bpe;

// From the text of bpe_simple_vocab_16e6.txt (the gunzipped .gz): a header line, then one
// merge "a b" per line, of which the first n_merges are used. The vocabulary is built as
// open_clip builds it: the 256 byte symbols, the same with "</w>", one token per merge,
// then <start_of_text> and <end_of_text>. `source` names the file in messages.
// Returns MP_STATUS_BAD_FORMAT naming the line of a merge that is not two symbols.
enum mp_status mp_clip_bpe_init_openai(struct mp_clip_bpe **bpe,
                                       const char          *merges_text, // (size) bytes
                                       int64_t              size,
                                       int64_t              n_merges,
                                       const char          *source);

// From a Hugging Face vocab.json (token strings and their ids, V of each, parsed by the
// caller) and the text of merges.txt ("#version" lines and empty lines skipped, then one
// merge "a b" per line). sot and eot name the start/end tokens ("<|startoftext|>",
// "<|endoftext|>"). Returns MP_STATUS_BAD_FORMAT naming the file (and line) when a merge
// is not two symbols, a symbol or merge result is not in the vocabulary, an id is
// negative, or a byte symbol or sot/eot is missing.
enum mp_status mp_clip_bpe_init_hf(struct mp_clip_bpe **bpe,
                                   const char *const   *tokens,      // (V) UTF-8, not NUL-terminated
                                   const int64_t       *token_sizes, // (V) bytes
                                   const int64_t       *token_ids,   // (V)
                                   int64_t              V,
                                   const char          *merges_text, // (size) bytes
                                   int64_t              size,
                                   const char          *sot,         // NUL-terminated
                                   const char          *eot,
                                   const char          *vocab_source,
                                   const char          *merges_source);

// Frees the handle and its caches. NULL is a no-op.
void mp_clip_bpe_free(struct mp_clip_bpe *bpe);

// Distinct token strings (open_clip's len(encoder)); ids lie in [0, mp_clip_bpe_max_id].
int64_t mp_clip_bpe_vocab_size(const struct mp_clip_bpe *bpe);
int64_t mp_clip_bpe_max_id(const struct mp_clip_bpe *bpe);
int64_t mp_clip_bpe_sot(const struct mp_clip_bpe *bpe);
int64_t mp_clip_bpe_eot(const struct mp_clip_bpe *bpe);

// The tokens of one text without sot/eot (open_clip SimpleTokenizer.encode after cleaning).
// `ids` holds `size` entries, the most a text of `size` bytes can produce.
// Returns MP_STATUS_INVALID_ARGUMENT, with the byte offset, if the text is not UTF-8.
enum mp_status mp_clip_bpe_encode(struct mp_clip_bpe *bpe,
                                  int64_t            *ids,   // (size)
                                  int64_t            *count, // tokens written
                                  const char         *text,  // (size) bytes of UTF-8
                                  int64_t             size);

// N texts into rows of T ids: sot, the tokens, eot, then zeros. A text with more than
// T - 2 tokens keeps the first T - 2 and still ends with eot (open_clip `tokenize`).
// Returns MP_STATUS_INVALID_ARGUMENT if T < 2 or a text is not UTF-8 (naming the first such text).
enum mp_status mp_clip_bpe_encode_batch(struct mp_clip_bpe *bpe,
                                        int64_t            *ids,   // (N, T)
                                        const char *const  *texts, // (N) UTF-8, not NUL-terminated
                                        const int64_t      *sizes, // (N) bytes
                                        int64_t             N,
                                        int64_t             T);

// The bytes the tokens spell: each token's byte-alphabet characters mapped back to bytes,
// "</w>" included (open_clip decode before its utf-8 decode and "</w>" -> " "). Writes at
// most `capacity` bytes to `out` (NULL when capacity is 0) and sets *size to the full length.
// Returns MP_STATUS_INVALID_ARGUMENT naming an id that is out of range or has no token,
// or whose token has a character outside the byte alphabet.
enum mp_status mp_clip_bpe_decode(const struct mp_clip_bpe *bpe,
                                  char                     *out,  // (capacity)
                                  int64_t                   capacity,
                                  int64_t                  *size,
                                  const int64_t            *ids,  // (n)
                                  int64_t                   n);

// BPE of one pre-tokenised word (its raw UTF-8 bytes): the symbols' ids, at most `size`.
// The heap-based fast path the encoders use, and `_naive`, open_clip's bpe() loop as
// written (min-rank pair, merge all its occurrences left to right, repeat), kept as the
// reference the C tests compare it with. Neither uses the word cache.
enum mp_status mp_clip_bpe_word(struct mp_clip_bpe *bpe, int64_t *ids, int64_t *count, const char *word, int64_t size);
enum mp_status mp_clip_bpe_word_naive(const struct mp_clip_bpe *bpe, int64_t *ids, int64_t *count, const char *word,
                                      int64_t size);

#endif
