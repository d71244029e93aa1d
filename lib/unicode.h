/*
 * unicode.h - the Unicode pieces the tokenizers need: code point flags
 * (general category class + White_Space) from generated tables, lenient and
 * strict UTF-8 decoding, and GPT-2's byte <-> code point map of byte-level
 * BPE. Everything here is pure and thread-safe; nothing allocates.
 */
#ifndef KILN_UNICODE_H
#define KILN_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Code point flags. Exactly one class bit is set for every code point up
 * to U+10FFFF (unassigned ones are UNDEFINED); WHITESPACE is added on top.
 * 0 means "no code point" (used for positions past the end of a text). */
enum {
    KILN_UCD_UNDEFINED = 0x0001,  /* Cn */
    KILN_UCD_NUMBER = 0x0002,     /* \p{N} */
    KILN_UCD_LETTER = 0x0004,     /* \p{L} */
    KILN_UCD_SEPARATOR = 0x0008,  /* \p{Z} */
    KILN_UCD_MARK = 0x0010,       /* \p{M} */
    KILN_UCD_PUNCT = 0x0020,      /* \p{P} */
    KILN_UCD_SYMBOL = 0x0040,     /* \p{S} */
    KILN_UCD_CONTROL = 0x0080,    /* Cc Cf Co Cs */
    KILN_UCD_WHITESPACE = 0x0100, /* PropList White_Space */
};

typedef struct kiln_ucd_run {
    uint32_t start;
    uint16_t flags;
} kiln_ucd_run;

typedef struct kiln_ucd_span {
    uint32_t lo, hi; /* inclusive */
} kiln_ucd_span;

/* Generated tables (lib/unicode_data.c, scripts/gen_unicode.py). */
extern const kiln_ucd_run kiln_ucd_runs[];
extern const size_t kiln_ucd_runs_count;
extern const uint16_t kiln_ucd_latin1[256];
extern const kiln_ucd_span kiln_ucd_deepseek_letters[];
extern const size_t kiln_ucd_deepseek_letters_count;
extern const kiln_ucd_span kiln_ucd_deepseek_punct[];
extern const size_t kiln_ucd_deepseek_punct_count;
extern const kiln_ucd_span kiln_ucd_deepseek_cjk[];
extern const size_t kiln_ucd_deepseek_cjk_count;

/* Flags of cp; code points past U+10FFFF are UNDEFINED. */
uint16_t kiln_ucd_flags(uint32_t cp);
/* Whether cp lies in one of the n sorted, disjoint spans. */
bool kiln_ucd_in_spans(const kiln_ucd_span *spans, size_t n, uint32_t cp);

/* Length of the UTF-8 sequence a lead byte announces, by its high nibble
 * (continuation bytes count 1, F8..FF count 4): how llama.cpp cuts text
 * into symbols before BPE/SPM merging. */
size_t kiln_utf8_lead_len(uint8_t lead);

#define KILN_UTF8_REPLACEMENT 0xFFFDu

/* Decodes the code point at s[*pos] (pos < n) and advances *pos. Lenient in
 * the way llama.cpp's tokenizers are (overlong forms and surrogates are
 * accepted); a byte that does not start a complete sequence, or a value past
 * U+10FFFF, gives U+FFFD and advances by one byte. */
uint32_t kiln_utf8_next_lenient(const char *s, size_t n, size_t *pos);

/* Encodes cp (<= U+10FFFF, surrogates allowed) into out; returns 1..4. */
size_t kiln_utf8_put(uint32_t cp, char *out);

/* Strict check of the sequence at s[0..n), n >= 1: returns its length
 * (1..4) when s starts with a complete, well-formed character; 0 when s is
 * a proper prefix of one (more bytes may complete it); -k when the first k
 * bytes are an ill-formed "maximal subpart" to be replaced by one U+FFFD. */
int kiln_utf8_check(const uint8_t *s, size_t n);

/* GPT-2 byte-level BPE alphabet: every byte maps to a printable code point
 * (printable bytes to themselves, the rest to U+0100 + n in byte order). */
uint32_t kiln_bytelevel_cp(uint8_t byte);
/* The inverse: the byte of a code point of the alphabet, or -1. */
int kiln_bytelevel_byte(uint32_t cp);

#endif /* KILN_UNICODE_H */
