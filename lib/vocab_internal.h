/*
 * vocab_internal.h - the kiln_vocab structure and what the tokenizer files
 * share (vocab.c: loading, special tokens, pieces; vocab_spm.c: SPM;
 * vocab_bpe.c: byte-level BPE; vocab_pretok.c: BPE pre-tokenizers).
 * Not installed; not part of any ABI.
 */
#ifndef KILN_VOCAB_INTERNAL_H
#define KILN_VOCAB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vocab.h"

/* Token attributes as bit flags (a token can gain CONTROL on top of its
 * file type, e.g. "<|im_end|>" stored as user-defined), mirroring how
 * llama.cpp reasons about them. */
enum {
    KILN_ATTR_UNKNOWN = 1u << 0,
    KILN_ATTR_UNUSED = 1u << 1,
    KILN_ATTR_NORMAL = 1u << 2,
    KILN_ATTR_CONTROL = 1u << 3,
    KILN_ATTR_USER_DEFINED = 1u << 4,
    KILN_ATTR_BYTE = 1u << 5,
    KILN_ATTR_LSTRIP = 1u << 7, /* eat whitespace left of a special match */
    KILN_ATTR_RSTRIP = 1u << 8, /* eat whitespace right of a special match */
    KILN_ATTR_EOG = 1u << 12,   /* ends generation */
};

typedef enum { KILN_VOCAB_SPM = 1, KILN_VOCAB_BPE = 2 } kiln_vocab_kind;

/* BPE pre-tokenizers (tokenizer.ggml.pre), each a fixed list of splitting
 * passes reproduced by hand in vocab_pretok.c. */
typedef enum {
    KILN_PRE_DEFAULT = 0, /* "default" or missing */
    KILN_PRE_GPT2,        /* "gpt-2" and its aliases */
    KILN_PRE_LLAMA3,      /* "llama-bpe", "llama3", "llama-v3" */
    KILN_PRE_QWEN2,       /* "qwen2", "deepseek-r1-qwen" */
    KILN_PRE_DEEPSEEK_LLM /* "deepseek-llm" */
} kiln_pre_kind;

typedef struct kiln_vtoken {
    uint32_t text_off, text_len;   /* in kiln_vocab.text */
    uint32_t piece_off, piece_len; /* decoded bytes, in kiln_vocab.pieces */
    float score;
    uint16_t attr;  /* KILN_ATTR_* */
    uint8_t type;   /* KILN_TOKEN_* as stored (0 if undefined) */
} kiln_vtoken;

typedef struct kiln_merge {
    uint32_t off;    /* "left right" in kiln_vocab.merge_text */
    uint32_t llen;   /* left is [off, off+llen), right after the space */
    uint32_t rlen;
} kiln_merge;

struct kiln_vocab {
    kiln_vocab_kind kind;
    kiln_pre_kind pre;

    int32_t n_tokens;
    kiln_vtoken *tok;
    char *text;     /* all token texts, back to back */
    char *pieces;   /* all decoded pieces, back to back */

    /* token text -> id: open addressing, power-of-two size, id + 1 (0 =
     * empty slot). */
    uint32_t *tmap;
    size_t tmap_mask;

    /* BPE merges: (left, right) -> rank, same scheme, rank + 1. */
    uint32_t n_merges;
    kiln_merge *merges;
    char *merge_text;
    uint32_t *mmap;
    size_t mmap_mask;

    int32_t bos, eos, unk, eot, eom, pad;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;

    /* Token ids that may be matched literally in text (control, user-
     * defined, unknown), longest text first. */
    int32_t *special;
    size_t n_special;

    /* SPM byte fallback: the id of "<0xNN>" (or of the single byte), -1. */
    int32_t byte_tok[256];
};

/* ---- growable arrays used while tokenizing (kiln_malloc'd) ---- */

typedef struct kiln_ivec {
    int32_t *v;
    size_t n, cap;
} kiln_ivec;

kiln_status kiln_ivec_push(kiln_ivec *a, int32_t x);
/* Makes room for `more` elements past n. */
kiln_status kiln_ivec_reserve(kiln_ivec *a, size_t more);
void kiln_ivec_free(kiln_ivec *a);

/* ---- shared lookups (vocab.c) ---- */

/* Id of the token whose text is s[0..n), or -1. */
int32_t kiln_vocab_find(const kiln_vocab *v, const char *s, size_t n);
/* Rank of the merge (l, r), or -1. */
int32_t kiln_vocab_merge_rank(const kiln_vocab *v, const char *l, size_t ln, const char *r,
                              size_t rn);
uint64_t kiln_vocab_hash(const char *s, size_t n);

/* ---- the two tokenizers: append the ids of one raw-text fragment ---- */

/* SPM: text is the fragment with the prefix space already added. */
kiln_status kiln_spm_tokenize(const kiln_vocab *v, const char *text, size_t n, kiln_ivec *out);
kiln_status kiln_bpe_tokenize(const kiln_vocab *v, const char *text, size_t n, kiln_ivec *out);

/* ---- BPE pre-tokenizers (vocab_pretok.c) ---- */

/* Splits cps[0..n) (flags[i] = kiln_ucd_flags(cps[i])) into words the way
 * the pre-tokenizer `pre` does; appends each word's length, in code points,
 * to words. */
kiln_status kiln_pretok_split(kiln_pre_kind pre, const uint32_t *cps, const uint16_t *flags,
                              size_t n, kiln_ivec *words);

#endif /* KILN_VOCAB_INTERNAL_H */
