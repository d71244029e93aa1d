/*
 * vocab.h - tokenizers: SentencePiece-style (SPM, "llama") and byte-level
 * BPE ("gpt2") with the pre-tokenizers default, gpt-2, llama-bpe, qwen2,
 * deepseek-llm. Built from GGUF tokenizer.ggml.* keys.
 *
 * A kiln_vocab is immutable after load; every function is thread-safe.
 */
#ifndef KILN_VOCAB_H
#define KILN_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "kiln.h"

typedef struct kiln_vocab kiln_vocab;

/* Token attributes (from tokenizer.ggml.token_type). */
enum {
    KILN_TOKEN_NORMAL = 1,
    KILN_TOKEN_UNKNOWN = 2,
    KILN_TOKEN_CONTROL = 3,
    KILN_TOKEN_USER_DEFINED = 4,
    KILN_TOKEN_UNUSED = 5,
    KILN_TOKEN_BYTE = 6,
};

/* Builds the tokenizer from g. KILN_E_UNSUPPORTED for an unknown
 * tokenizer.ggml.model or .pre (message names it), KILN_E_FORMAT for
 * inconsistent keys. */
kiln_status kiln_vocab_load(const kiln_gguf *g, kiln_vocab **out);
void kiln_vocab_free(kiln_vocab *v);

int32_t kiln_vocab_n_tokens(const kiln_vocab *v);
int32_t kiln_vocab_bos(const kiln_vocab *v);     /* -1 if none */
int32_t kiln_vocab_eos(const kiln_vocab *v);     /* -1 if none */
bool kiln_vocab_add_bos(const kiln_vocab *v);    /* tokenizer.ggml.add_bos_token */
bool kiln_vocab_is_eog(const kiln_vocab *v, int32_t tok);
int32_t kiln_vocab_token_type(const kiln_vocab *v, int32_t tok);
/* The token's text as stored in the vocab (not decoded). */
const char *kiln_vocab_token_text(const kiln_vocab *v, int32_t tok, size_t *len);

/* Public semantics of kiln_tokenize (flags KILN_TOKENIZE_*; size protocol),
 * token for token what llama.cpp's llama_tokenize gives with add_special =
 * ADD_BOS (only BOS is ever added, never EOS) and parse_special =
 * PARSE_SPECIAL. User-defined tokens are matched in the text even without
 * PARSE_SPECIAL, as in llama.cpp. Invalid UTF-8 never fails. Texts over
 * 512 MiB give KILN_E_INVALID_ARG. */
kiln_status kiln_vocab_tokenize(const kiln_vocab *v, const char *text, size_t text_len,
                                uint32_t flags, int32_t *tokens, size_t capacity,
                                size_t *n_out);
/* The bytes a token stands for (SPM "▁" -> " ", byte tokens <0xNN> -> the
 * byte, BPE byte-level unicode -> raw bytes). Control tokens give "" when
 * KILN_DETOK_SKIP_SPECIAL is set, else their text. Size protocol. */
kiln_status kiln_vocab_token_to_piece(const kiln_vocab *v, int32_t tok, uint32_t flags,
                                      char *buf, size_t capacity, size_t *n_out);
/* The piece of token tok (0 <= tok < n_tokens) under flags KILN_DETOK_*,
 * borrowed from the vocab (valid while it lives; not NUL-terminated).
 * *len 0 (and maybe NULL) when the token renders as nothing. */
const char *kiln_vocab_piece(const kiln_vocab *v, int32_t tok, uint32_t flags, size_t *len);
/* Public semantics of kiln_detokenize: pieces concatenated, as llama.cpp's
 * llama_detokenize (without its clean-up of spaces): when the vocab adds a
 * prefix space (SPM), one leading space of the first piece is removed.
 * With KILN_DETOK_SKIP_SPECIAL a leading BOS (if the vocab adds one) is
 * dropped, and then that space is kept, like llama.cpp's remove_special.
 * Size protocol; KILN_E_INVALID_ARG for an out-of-range token. */
kiln_status kiln_vocab_detokenize(const kiln_vocab *v, const int32_t *tokens, size_t n,
                                  uint32_t flags, char *buf, size_t capacity, size_t *n_out);

#endif /* KILN_VOCAB_H */
