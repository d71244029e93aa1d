/*
 * vocab_pretok.c - the BPE pre-tokenizers: split a text (as code points)
 * into the words that BPE then merges separately.
 *
 * Each pre-tokenizer is a list of passes, applied in order; a pass splits
 * every segment the previous pass produced and never joins segments. Two
 * kinds of passes exist, reproducing what llama.cpp does (no regex engine):
 *
 *   - "custom" passes for the GPT-2 and Llama-3/Qwen2 patterns, which split
 *     a segment completely into matches;
 *   - "search" passes for simple patterns (a character class run, ...):
 *     the segment is cut into the leftmost matches and the gaps between
 *     them, each its own segment, as std::regex_iterator would.
 *
 * Character classes follow llama.cpp's conventions: \p{L}, \p{N}, \p{P}
 * from the general category, \s = White_Space. Patterns llama.cpp hands to
 * std::wregex see non-ASCII whitespace as U+000B (so it matches \s but no
 * literal class), which class_cp() reproduces.
 *
 * Statuses: KILN_E_OOM_HOST only.
 */
#include "internal.h"
#include "unicode.h"
#include "vocab_internal.h"

enum {
    WS = KILN_UCD_WHITESPACE,
    LET = KILN_UCD_LETTER,
    NUM = KILN_UCD_NUMBER,
};

typedef struct pt_text {
    const uint32_t *cps;
    const uint16_t *fl;
} pt_text;

/* Flags at pos, 0 past the segment end. */
static inline uint16_t flags_at(const pt_text *t, size_t pos, size_t end) {
    return pos < end ? t->fl[pos] : 0;
}

static inline bool is_ws(const pt_text *t, size_t pos) { return (t->fl[pos] & WS) != 0; }

/* The code point as std::wregex sees it in llama.cpp (non-ASCII whitespace
 * replaced by U+000B). */
static inline uint32_t class_cp(const pt_text *t, size_t pos) {
    uint32_t c = t->cps[pos];
    return (c > 0x7F && (t->fl[pos] & WS)) ? 0x0B : c;
}

/* Splitter state for one segment: words are cut at `prev`. */
typedef struct cutter {
    kiln_ivec *out;
    size_t prev;
} cutter;

static kiln_status cut(cutter *c, size_t to) {
    if (to > c->prev) {
        kiln_status st = kiln_ivec_push(c->out, (int32_t)(to - c->prev));
        if (st) return st;
    }
    c->prev = to;
    return KILN_OK;
}

/* 's|'t|'re|'ve|'m|'ll|'d (ASCII case-folded when fold): the length of the
 * contraction at pos, or 0. */
static size_t contraction(const pt_text *t, size_t pos, size_t end, bool fold) {
    if (t->cps[pos] != '\'' || pos + 1 >= end) return 0;
    uint32_t a = t->cps[pos + 1];
    if (fold && a >= 'A' && a <= 'Z') a += 'a' - 'A';
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= end) return 0;
    uint32_t b = t->cps[pos + 2];
    if (fold && b >= 'A' && b <= 'Z') b += 'a' - 'A';
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static kiln_status split_gpt2(const pt_text *t, size_t ini, size_t end, kiln_ivec *out) {
    cutter c = {out, ini};
    size_t pos = ini;
    kiln_status st = KILN_OK;
    while (pos < end && st == KILN_OK) {
        uint32_t cp = t->cps[pos];
        size_t k = contraction(t, pos, end, false);
        if (k) {
            pos += k;
            st = cut(&c, pos);
            continue;
        }
        uint16_t f2 = cp == ' ' ? flags_at(t, pos + 1, end) : t->fl[pos];
        size_t p = pos + (cp == ' ');
        if (f2 & LET) {
            while (flags_at(t, p, end) & LET) p++;
        } else if (f2 & NUM) {
            while (flags_at(t, p, end) & NUM) p++;
        } else if (!(f2 & (WS | LET | NUM)) && f2) {
            for (uint16_t f = f2; !(f & (WS | LET | NUM)) && f; f = flags_at(t, ++p, end)) {}
        } else {
            size_t n_ws = 0;
            while (flags_at(t, pos + n_ws, end) & WS) n_ws++;
            if (n_ws > 1 && pos + n_ws < end) p = pos + n_ws - 1; /* \s+(?!\S) */
            else if (n_ws > 0) p = pos + n_ws;                   /* \s+ */
            else p = pos + 1;                                    /* no match */
        }
        pos = p;
        st = cut(&c, pos);
    }
    return st;
}

/* Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static kiln_status split_llama3(const pt_text *t, size_t ini, size_t end, size_t max_digits,
                                kiln_ivec *out) {
    cutter c = {out, ini};
    size_t pos = ini;
    kiln_status st = KILN_OK;
    while (pos < end && st == KILN_OK) {
        uint32_t cp = t->cps[pos];
        uint16_t f = t->fl[pos];
        size_t k = contraction(t, pos, end, true);
        if (k) {
            pos += k;
            st = cut(&c, pos);
            continue;
        }
        if (!(cp == '\r' || cp == '\n' || (f & NUM)) &&
            ((f & LET) || (flags_at(t, pos + 1, end) & LET))) {
            pos++;
            while (flags_at(t, pos, end) & LET) pos++;
            st = cut(&c, pos);
            continue;
        }
        if (f & NUM) {
            /* Runs of digits in groups of max_digits. */
            size_t start = pos;
            while ((flags_at(t, pos, end) & NUM) && st == KILN_OK) {
                if (++pos - start >= max_digits) {
                    st = cut(&c, pos);
                    start = pos;
                }
            }
            if (st == KILN_OK) st = cut(&c, pos);
            continue;
        }
        uint16_t f2 = cp == ' ' ? flags_at(t, pos + 1, end) : f;
        if (!(f2 & (WS | LET | NUM)) && f) {
            pos += cp == ' ';
            for (uint16_t g = f2; !(g & (WS | LET | NUM)) && g; g = flags_at(t, ++pos, end)) {}
            while (pos < end && (t->cps[pos] == '\r' || t->cps[pos] == '\n')) pos++;
            st = cut(&c, pos);
            continue;
        }
        size_t n_ws = 0, last_nl = 0;
        while (flags_at(t, pos + n_ws, end) & WS) {
            uint32_t w = t->cps[pos + n_ws];
            if (w == '\r' || w == '\n') last_nl = pos + n_ws + 1;
            n_ws++;
        }
        if (last_nl > 0) pos = last_nl;                           /* \s*[\r\n]+ */
        else if (n_ws > 1 && pos + n_ws < end) pos += n_ws - 1;   /* \s+(?!\S) */
        else if (n_ws > 0) pos += n_ws;                           /* \s+ */
        else pos++;                                               /* no match */
        st = cut(&c, pos);
    }
    return st;
}

/* ---- search passes ---- */

typedef enum {
    PAT_NEWLINE,    /* [\r\n] */
    PAT_DS_LETTERS, /* \s?[A-Za-zµÀ-Ö...]+ (deepseek-llm) */
    PAT_DS_PUNCT,   /* \s?[!-/:-~！-／：-～‘-‟　-。]+ (deepseek-llm) */
    PAT_TRAIL_WS,   /* \s+$ */
    PAT_DS_CJK,     /* [一-龥ࠀ-一가-퟿]+ (deepseek-llm) */
    PAT_NUMBERS,    /* \p{N}+ */
    PAT_PUNCT_RUN,  /* [\p{P}\$\+<=>\^~\|]+ (default) */
    PAT_DIGIT3,     /* [0-9][0-9][0-9] (default) */
    PAT_GPT2,       /* custom passes */
    PAT_LLAMA3,
    PAT_QWEN2,
} pattern;

static bool in_class(pattern p, uint32_t cp) {
    switch (p) {
    case PAT_DS_LETTERS:
        return kiln_ucd_in_spans(kiln_ucd_deepseek_letters, kiln_ucd_deepseek_letters_count, cp);
    case PAT_DS_PUNCT:
        return kiln_ucd_in_spans(kiln_ucd_deepseek_punct, kiln_ucd_deepseek_punct_count, cp);
    case PAT_DS_CJK:
        return kiln_ucd_in_spans(kiln_ucd_deepseek_cjk, kiln_ucd_deepseek_cjk_count, cp);
    default:
        return false;
    }
}

/* ASCII part of [\p{P}\$\+<=>\^~\|] as llama.cpp builds it: every printable
 * non-alphanumeric byte except the backquote. */
static bool default_punct(const pt_text *t, size_t pos) {
    uint32_t c = t->cps[pos];
    if (c < 0x80) {
        return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
               (c >= 0x5B && c <= 0x5F) || (c >= 0x7B && c <= 0x7E);
    }
    return (t->fl[pos] & KILN_UCD_PUNCT) != 0;
}

/* Length of the match of p starting exactly at pos (< end), or 0; *next is
 * where the search may resume when there is none. */
static size_t match_at(pattern p, const pt_text *t, size_t pos, size_t end, size_t *next) {
    size_t q;
    *next = pos + 1;
    switch (p) {
    case PAT_NEWLINE:
        return (t->cps[pos] == '\r' || t->cps[pos] == '\n') ? 1 : 0;
    case PAT_DS_LETTERS:
    case PAT_DS_PUNCT:
        q = pos;
        if (is_ws(t, pos) && pos + 1 < end && in_class(p, class_cp(t, pos + 1))) q++;
        if (!in_class(p, class_cp(t, q))) return 0;
        while (q < end && in_class(p, class_cp(t, q))) q++;
        return q - pos;
    case PAT_DS_CJK:
        for (q = pos; q < end && in_class(p, class_cp(t, q)); q++) {}
        return q - pos;
    case PAT_TRAIL_WS:
        for (q = pos; q < end && is_ws(t, q); q++) {}
        if (q == end) return end - pos;
        /* No whitespace run starting inside [pos, q) reaches the end. */
        if (q > pos) *next = q;
        return 0;
    case PAT_NUMBERS:
        for (q = pos; q < end && (t->fl[q] & NUM); q++) {}
        return q - pos;
    case PAT_PUNCT_RUN:
        for (q = pos; q < end && default_punct(t, q); q++) {}
        return q - pos;
    case PAT_DIGIT3:
        for (q = pos; q < end && q < pos + 3 && t->cps[q] >= '0' && t->cps[q] <= '9'; q++) {}
        return q == pos + 3 ? 3 : 0;
    default:
        return 0;
    }
}

/* One pass over one segment: leftmost matches and the gaps between them. */
static kiln_status split_search(pattern p, const pt_text *t, size_t ini, size_t end,
                                kiln_ivec *out) {
    cutter c = {out, ini};
    size_t pos = ini;
    while (pos < end) {
        size_t next;
        size_t m = match_at(p, t, pos, end, &next);
        if (m == 0) {
            pos = next;
            continue;
        }
        kiln_status st = cut(&c, pos); /* the gap, if any */
        if (st == KILN_OK) st = cut(&c, pos + m);
        if (st) return st;
        pos += m;
    }
    return cut(&c, end);
}

static kiln_status run_pass(pattern p, const pt_text *t, size_t ini, size_t end, kiln_ivec *out) {
    switch (p) {
    case PAT_GPT2: return split_gpt2(t, ini, end, out);
    case PAT_LLAMA3: return split_llama3(t, ini, end, 3, out);
    case PAT_QWEN2: return split_llama3(t, ini, end, 1, out);
    default: return split_search(p, t, ini, end, out);
    }
}

kiln_status kiln_pretok_split(kiln_pre_kind pre, const uint32_t *cps, const uint16_t *flags,
                              size_t n, kiln_ivec *words) {
    /* The pattern lists of llama.cpp's pre-tokenizers. "default" is what
     * llama.cpp does for it (not the plain GPT-2 pattern). */
    static const pattern p_default[] = {PAT_PUNCT_RUN, PAT_GPT2, PAT_NUMBERS, PAT_DIGIT3};
    static const pattern p_gpt2[] = {PAT_GPT2};
    static const pattern p_llama3[] = {PAT_LLAMA3};
    static const pattern p_qwen2[] = {PAT_QWEN2};
    static const pattern p_deepseek[] = {PAT_NEWLINE, PAT_DS_LETTERS, PAT_DS_PUNCT,
                                         PAT_TRAIL_WS, PAT_DS_CJK, PAT_NUMBERS};
    const pattern *passes;
    size_t n_passes;
    switch (pre) {
    case KILN_PRE_GPT2: passes = p_gpt2; n_passes = KILN_ARRAY_LEN(p_gpt2); break;
    case KILN_PRE_LLAMA3: passes = p_llama3; n_passes = KILN_ARRAY_LEN(p_llama3); break;
    case KILN_PRE_QWEN2: passes = p_qwen2; n_passes = KILN_ARRAY_LEN(p_qwen2); break;
    case KILN_PRE_DEEPSEEK_LLM: passes = p_deepseek; n_passes = KILN_ARRAY_LEN(p_deepseek); break;
    default: passes = p_default; n_passes = KILN_ARRAY_LEN(p_default); break;
    }
    if (n == 0) return KILN_OK;

    pt_text t = {cps, flags};
    kiln_ivec a = {0}, b = {0};
    kiln_status st = kiln_ivec_push(&a, (int32_t)n);
    for (size_t i = 0; i < n_passes && st == KILN_OK; i++) {
        kiln_ivec *dst = (i + 1 == n_passes) ? words : &b;
        size_t start = 0;
        for (size_t s = 0; s < a.n && st == KILN_OK; s++) {
            size_t len = (size_t)a.v[s];
            st = run_pass(passes[i], &t, start, start + len, dst);
            start += len;
        }
        if (dst == &b) {
            kiln_ivec tmp = a;
            a = b;
            b = tmp;
            b.n = 0;
        }
    }
    kiln_ivec_free(&a);
    kiln_ivec_free(&b);
    return st;
}
