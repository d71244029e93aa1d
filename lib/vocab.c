/*
 * vocab.c - the tokenizer object: loading it from GGUF tokenizer.ggml.*
 * keys, token and merge lookups, literal special-token matching, and the
 * tokenize / token_to_piece / detokenize entry points (see vocab.h). The
 * SPM and BPE algorithms live in vocab_spm.c and vocab_bpe.c.
 *
 * The behaviour follows llama.cpp's tokenizer (llama-vocab.cpp) exactly,
 * including its load-time fix-ups (default special ids, tokens whose text
 * marks them as end-of-generation or control, phi-3's whitespace
 * stripping), so that token ids match llama.cpp's for the same file.
 *
 * Ownership: kiln_vocab_load returns a vocab that owns copies of all token
 * and merge texts (it does not reference the kiln_gguf afterwards); free it
 * with kiln_vocab_free. Statuses: KILN_E_FORMAT (missing or inconsistent
 * keys), KILN_E_UNSUPPORTED (tokenizer model or pre-tokenizer), KILN_E_OOM_HOST,
 * KILN_E_INVALID_ARG (bad arguments), KILN_E_BUFFER_TOO_SMALL (size protocol).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "unicode.h"
#include "vocab_internal.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* Texts longer than this are refused (indices inside the tokenizers are
 * 32-bit, and SPM escaping may triple the size). */
#define MAX_TEXT_LEN ((size_t)INT32_MAX / 4)

/* ------------------------------------------------------------------------ */
/* growable int arrays                                                      */
/* ------------------------------------------------------------------------ */

kiln_status kiln_ivec_reserve(kiln_ivec *a, size_t more) {
    if (a->cap - a->n >= more) return KILN_OK;
    size_t want, bytes;
    if (!kiln_add_size(a->n, more, &want)) return kiln_error(KILN_E_OOM_HOST, "vocab: size overflow");
    size_t cap = a->cap ? a->cap : 16;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) return kiln_error(KILN_E_OOM_HOST, "vocab: size overflow");
        cap *= 2;
    }
    if (!kiln_mul_size(cap, sizeof(int32_t), &bytes))
        return kiln_error(KILN_E_OOM_HOST, "vocab: size overflow");
    int32_t *p = kiln_realloc(a->v, bytes);
    if (!p) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory (%zu bytes)", bytes);
    a->v = p;
    a->cap = cap;
    return KILN_OK;
}

kiln_status kiln_ivec_push(kiln_ivec *a, int32_t x) {
    if (a->n == a->cap) {
        kiln_status st = kiln_ivec_reserve(a, 1);
        if (st) return st;
    }
    a->v[a->n++] = x;
    return KILN_OK;
}

void kiln_ivec_free(kiln_ivec *a) {
    kiln_free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* hashing and lookups                                                      */
/* ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

uint64_t kiln_vocab_hash(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return mix64(h ^ w);
}

static const char *tok_text(const kiln_vocab *v, int32_t id, size_t *len) {
    *len = v->tok[id].text_len;
    return v->text + v->tok[id].text_off;
}

/* The slot of token text s[0..n) in the id table: its entry, or the empty
 * slot where it would go. */
static size_t token_slot(const kiln_vocab *v, const char *s, size_t n) {
    size_t i = (size_t)kiln_vocab_hash(s, n) & v->tmap_mask;
    for (uint32_t e; (e = v->tmap[i]) != 0; i = (i + 1) & v->tmap_mask) {
        const kiln_vtoken *t = &v->tok[e - 1];
        if (t->text_len == n && memcmp(v->text + t->text_off, s, n) == 0) break;
    }
    return i;
}

int32_t kiln_vocab_find(const kiln_vocab *v, const char *s, size_t n) {
    return (int32_t)v->tmap[token_slot(v, s, n)] - 1;
}

static uint64_t pair_hash(const char *l, size_t ln, const char *r, size_t rn) {
    return mix64(kiln_vocab_hash(l, ln) * 0x9E3779B97F4A7C15ull + kiln_vocab_hash(r, rn));
}

/* The slot of the merge (l, r) in the rank table: its entry or an empty
 * slot. */
static size_t merge_slot(const kiln_vocab *v, const char *l, size_t ln, const char *r, size_t rn) {
    size_t i = (size_t)pair_hash(l, ln, r, rn) & v->mmap_mask;
    for (uint32_t e; (e = v->mmap[i]) != 0; i = (i + 1) & v->mmap_mask) {
        const kiln_merge *m = &v->merges[e - 1];
        const char *mt = v->merge_text + m->off;
        if (m->llen == ln && m->rlen == rn && memcmp(mt, l, ln) == 0 &&
            memcmp(mt + ln + 1, r, rn) == 0)
            break;
    }
    return i;
}

int32_t kiln_vocab_merge_rank(const kiln_vocab *v, const char *l, size_t ln, const char *r,
                              size_t rn) {
    if (!v->mmap) return -1;
    return (int32_t)v->mmap[merge_slot(v, l, ln, r, rn)] - 1;
}

/* Open-addressing table size for n entries (load <= 1/2). */
static bool table_size(size_t n, size_t *size) {
    size_t s = 16;
    while (s < n * 2) {
        if (s > SIZE_MAX / 4) return false;
        s *= 2;
    }
    *size = s;
    return true;
}

/* ------------------------------------------------------------------------ */
/* loading                                                                  */
/* ------------------------------------------------------------------------ */

void kiln_vocab_free(kiln_vocab *v) {
    if (!v) return;
    kiln_free(v->tok);
    kiln_free(v->text);
    kiln_free(v->pieces);
    kiln_free(v->tmap);
    kiln_free(v->merges);
    kiln_free(v->merge_text);
    kiln_free(v->mmap);
    kiln_free(v->special);
    kiln_free(v);
}

static bool str_is(const char *s, uint64_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static kiln_status parse_kind(const kiln_gguf *g, kiln_vocab *v) {
    const char *s;
    uint64_t n;
    kiln_status st = kiln_gguf_get_str(g, KEY_MODEL, &s, &n);
    if (st == KILN_E_NOT_FOUND) return kiln_error(KILN_E_FORMAT, "vocab: no %s key", KEY_MODEL);
    if (st) return st;
    if (str_is(s, n, "llama")) {
        v->kind = KILN_VOCAB_SPM;
        v->bos = 1, v->eos = 2, v->unk = 0;
        v->add_space_prefix = true;
        v->add_bos = true;
    } else if (str_is(s, n, "gpt2")) {
        v->kind = KILN_VOCAB_BPE;
        v->bos = 11, v->eos = 11, v->unk = -1;
    } else {
        return kiln_error(KILN_E_UNSUPPORTED, "vocab: unsupported tokenizer model '%.*s' (%s)",
                          (int)KILN_MIN(n, 64), s, KEY_MODEL);
    }
    if (v->kind != KILN_VOCAB_BPE) return KILN_OK;

    /* BPE pre-tokenizer names llama.cpp maps to the patterns we implement. */
    static const struct { const char *name; kiln_pre_kind pre; } pres[] = {
        {"default", KILN_PRE_DEFAULT},   {"gpt-2", KILN_PRE_GPT2},
        {"phi-2", KILN_PRE_GPT2},        {"mpt", KILN_PRE_GPT2},
        {"olmo", KILN_PRE_GPT2},         {"llama-bpe", KILN_PRE_LLAMA3},
        {"llama3", KILN_PRE_LLAMA3},     {"llama-v3", KILN_PRE_LLAMA3},
        {"qwen2", KILN_PRE_QWEN2},       {"deepseek-r1-qwen", KILN_PRE_QWEN2},
        {"deepseek-llm", KILN_PRE_DEEPSEEK_LLM},
    };
    st = kiln_gguf_get_str(g, KEY_PRE, &s, &n);
    if (st == KILN_E_NOT_FOUND || (st == KILN_OK && n == 0)) {
        v->pre = KILN_PRE_DEFAULT;
        return KILN_OK;
    }
    if (st) return st;
    for (size_t i = 0; i < KILN_ARRAY_LEN(pres); i++) {
        if (str_is(s, n, pres[i].name)) {
            v->pre = pres[i].pre;
            if (v->pre == KILN_PRE_LLAMA3) {
                v->ignore_merges = true;
                v->add_bos = true;
            }
            return KILN_OK;
        }
    }
    return kiln_error(KILN_E_UNSUPPORTED, "vocab: unsupported pre-tokenizer '%.*s' (%s)",
                      (int)KILN_MIN(n, 64), s, KEY_PRE);
}

/* A numeric array of at least n elements, converted; *out kiln_malloc'd or
 * NULL when the key is absent. */
static kiln_status read_array(const kiln_gguf *g, const char *key, uint64_t n, bool as_float,
                              void **out) {
    *out = NULL;
    int32_t et;
    uint64_t len;
    kiln_status st = kiln_gguf_get_arr(g, key, &et, &len);
    if (st == KILN_E_NOT_FOUND) return KILN_OK;
    if (st) return st;
    if (len < n)
        return kiln_error(KILN_E_FORMAT, "vocab: %s has %llu elements for %llu tokens", key,
                          (unsigned long long)len, (unsigned long long)n);
    size_t bytes;
    if (len > SIZE_MAX / 4 || !kiln_mul_size((size_t)len, 4, &bytes))
        return kiln_error(KILN_E_FORMAT, "vocab: %s is too large", key);
    void *p = kiln_malloc(bytes);
    if (!p) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory reading %s", key);
    st = as_float ? kiln_gguf_arr_f32(g, key, p, len) : kiln_gguf_arr_i32(g, key, p, len);
    if (st) {
        kiln_free(p);
        return st;
    }
    *out = p;
    return KILN_OK;
}

static uint16_t attr_of_type(int32_t type) {
    switch (type) {
    case KILN_TOKEN_NORMAL: return KILN_ATTR_NORMAL;
    case KILN_TOKEN_UNKNOWN: return KILN_ATTR_UNKNOWN;
    case KILN_TOKEN_CONTROL: return KILN_ATTR_CONTROL;
    case KILN_TOKEN_USER_DEFINED: return KILN_ATTR_USER_DEFINED;
    case KILN_TOKEN_UNUSED: return KILN_ATTR_UNUSED;
    case KILN_TOKEN_BYTE: return KILN_ATTR_BYTE;
    default: return 0; /* undefined */
    }
}

/* Copies the token texts and builds the text -> id table. */
static kiln_status load_tokens(const kiln_gguf *g, kiln_vocab *v) {
    int32_t et;
    uint64_t n;
    kiln_status st = kiln_gguf_get_arr(g, KEY_TOKENS, &et, &n);
    if (st == KILN_E_NOT_FOUND) return kiln_error(KILN_E_FORMAT, "vocab: no %s key", KEY_TOKENS);
    if (st) return st;
    if (et != KILN_GGUF_STRING)
        return kiln_error(KILN_E_FORMAT, "vocab: %s is not an array of strings", KEY_TOKENS);
    if (n == 0 || n > (uint64_t)INT32_MAX / 2)
        return kiln_error(KILN_E_FORMAT, "vocab: %s has %llu tokens", KEY_TOKENS,
                          (unsigned long long)n);
    v->n_tokens = (int32_t)n;

    float *scores = NULL;
    int32_t *types = NULL;
    st = read_array(g, KEY_SCORES, n, true, (void **)&scores);
    if (st == KILN_OK) st = read_array(g, KEY_TYPES, n, false, (void **)&types);

    /* Total text size: empty tokens become "[EMPTY_<id>]" like llama.cpp. */
    size_t total = 0;
    for (uint64_t i = 0; i < n && st == KILN_OK; i++) {
        const char *s;
        uint64_t len;
        st = kiln_gguf_arr_str(g, KEY_TOKENS, i, &s, &len);
        if (st) break;
        if (len == 0) len = 24;
        if (len > UINT32_MAX || !kiln_add_size(total, (size_t)len, &total) || total > UINT32_MAX)
            st = kiln_error(KILN_E_FORMAT, "vocab: token texts are too large");
    }
    size_t tsize = 0;
    if (st == KILN_OK && !table_size((size_t)n, &tsize))
        st = kiln_error(KILN_E_OOM_HOST, "vocab: too many tokens");
    if (st == KILN_OK) {
        v->tok = kiln_calloc((size_t)n, sizeof(kiln_vtoken));
        v->text = kiln_malloc(total ? total : 1);
        v->tmap = kiln_calloc(tsize, sizeof(uint32_t));
        v->tmap_mask = tsize - 1;
        if (!v->tok || !v->text || !v->tmap)
            st = kiln_error(KILN_E_OOM_HOST, "vocab: out of memory for %llu tokens",
                            (unsigned long long)n);
    }
    size_t off = 0;
    for (uint64_t i = 0; i < n && st == KILN_OK; i++) {
        const char *s;
        uint64_t len;
        st = kiln_gguf_arr_str(g, KEY_TOKENS, i, &s, &len);
        if (st) break;
        kiln_vtoken *t = &v->tok[i];
        t->text_off = (uint32_t)off;
        if (len == 0) {
            len = (uint64_t)snprintf(v->text + off, 25, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(v->text + off, s, (size_t)len);
        }
        t->text_len = (uint32_t)len;
        off += (size_t)len;
        t->score = scores ? scores[i] : 0.0f;
        int32_t type = types ? types[i] : KILN_TOKEN_NORMAL;
        t->type = (type >= KILN_TOKEN_NORMAL && type <= KILN_TOKEN_BYTE) ? (uint8_t)type : 0;
        t->attr = types ? attr_of_type(type) : KILN_ATTR_NORMAL;

        const char *txt = v->text + t->text_off;
        size_t slot = token_slot(v, txt, t->text_len);
        if (v->tmap[slot]) {
            st = kiln_error(KILN_E_FORMAT, "vocab: duplicate token '%.*s' (ids %u and %llu)",
                            (int)KILN_MIN(t->text_len, 64u), txt, v->tmap[slot] - 1,
                            (unsigned long long)i);
            break;
        }
        v->tmap[slot] = (uint32_t)i + 1;
    }
    kiln_free(scores);
    kiln_free(types);
    return st;
}

static kiln_status load_merges(const kiln_gguf *g, kiln_vocab *v) {
    int32_t et;
    uint64_t n;
    kiln_status st = kiln_gguf_get_arr(g, KEY_MERGES, &et, &n);
    if (st == KILN_E_NOT_FOUND) return kiln_error(KILN_E_FORMAT, "vocab: no %s key", KEY_MERGES);
    if (st) return st;
    if (et != KILN_GGUF_STRING)
        return kiln_error(KILN_E_FORMAT, "vocab: %s is not an array of strings", KEY_MERGES);
    if (n > (uint64_t)INT32_MAX / 2)
        return kiln_error(KILN_E_FORMAT, "vocab: %s has %llu merges", KEY_MERGES,
                          (unsigned long long)n);
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        uint64_t len;
        st = kiln_gguf_arr_str(g, KEY_MERGES, i, &s, &len);
        if (st) return st;
        if (!kiln_add_size(total, (size_t)len, &total) || total > UINT32_MAX)
            return kiln_error(KILN_E_FORMAT, "vocab: merge texts are too large");
    }
    size_t tsize;
    if (!table_size((size_t)n, &tsize)) return kiln_error(KILN_E_OOM_HOST, "vocab: too many merges");
    v->merges = kiln_calloc(n ? (size_t)n : 1, sizeof(kiln_merge));
    v->merge_text = kiln_malloc(total ? total : 1);
    v->mmap = kiln_calloc(tsize, sizeof(uint32_t));
    v->mmap_mask = tsize - 1;
    if (!v->merges || !v->merge_text || !v->mmap)
        return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory for %llu merges",
                          (unsigned long long)n);
    v->n_merges = (uint32_t)n;
    size_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        uint64_t len;
        st = kiln_gguf_arr_str(g, KEY_MERGES, i, &s, &len);
        if (st) return st;
        kiln_merge *m = &v->merges[i];
        memcpy(v->merge_text + off, s, (size_t)len);
        m->off = (uint32_t)off;
        off += (size_t)len;
        /* "left right", split at the first space after the first byte. A
         * merge without one can never apply (llama.cpp files it under an
         * empty pair); the first of duplicate pairs keeps its rank. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', (size_t)len - 1) : NULL;
        if (!sp) continue;
        m->llen = (uint32_t)(sp - s);
        m->rlen = (uint32_t)(len - m->llen - 1);
        const char *l = v->merge_text + m->off;
        size_t slot = merge_slot(v, l, m->llen, l + m->llen + 1, m->rlen);
        if (!v->mmap[slot]) v->mmap[slot] = (uint32_t)i + 1;
    }
    return KILN_OK;
}

/* An optional token id key; out-of-range values keep the default. */
static void read_id(const kiln_gguf *g, const kiln_vocab *v, const char *key, int32_t *id) {
    if (*id >= v->n_tokens) *id = -1; /* a default past the vocab */
    int64_t x;
    if (kiln_gguf_get_i64(g, key, &x) != KILN_OK) return;
    if (x >= 0 && x < v->n_tokens) *id = (int32_t)x;
}

static void read_bool(const kiln_gguf *g, const char *key, bool *b) {
    bool x;
    if (kiln_gguf_get_bool(g, key, &x) == KILN_OK) *b = x;
}

static bool text_is(const kiln_vocab *v, int32_t id, const char *lit) {
    size_t n;
    const char *s = tok_text(v, id, &n);
    return str_is(s, n, lit);
}

static bool text_in(const kiln_vocab *v, int32_t id, const char *const *list) {
    /* Every name below starts with one of these bytes: skip the rest fast. */
    char c = v->text[v->tok[id].text_off];
    if (c != '<' && c != '[' && c != '_' && c != '\xE2') return false;
    for (; *list; list++)
        if (text_is(v, id, *list)) return true;
    return false;
}

static int32_t find_lit(const kiln_vocab *v, const char *lit) {
    return kiln_vocab_find(v, lit, strlen(lit));
}

/* Special ids from the keys, then llama.cpp's text-based fix-ups: tokens
 * that look like end-of-turn / fill-in-the-middle / end-of-generation
 * markers become control tokens (so plain text never matches them), and the
 * end-of-generation set is built. Candidates are scanned in id order. */
static kiln_status load_specials(const kiln_gguf *g, kiln_vocab *v) {
    int32_t fim[6] = {-1, -1, -1, -1, -1, -1}; /* pre suf mid pad rep sep */
    read_id(g, v, "tokenizer.ggml.bos_token_id", &v->bos);
    read_id(g, v, "tokenizer.ggml.eos_token_id", &v->eos);
    read_id(g, v, "tokenizer.ggml.eot_token_id", &v->eot);
    read_id(g, v, "tokenizer.ggml.eom_token_id", &v->eom);
    read_id(g, v, "tokenizer.ggml.unknown_token_id", &v->unk);
    read_id(g, v, "tokenizer.ggml.padding_token_id", &v->pad);
    read_id(g, v, "tokenizer.ggml.fim_pre_token_id", &fim[0]);
    read_id(g, v, "tokenizer.ggml.fim_suf_token_id", &fim[1]);
    read_id(g, v, "tokenizer.ggml.fim_mid_token_id", &fim[2]);
    read_id(g, v, "tokenizer.ggml.fim_pad_token_id", &fim[3]);
    read_id(g, v, "tokenizer.ggml.fim_rep_token_id", &fim[4]);
    read_id(g, v, "tokenizer.ggml.fim_sep_token_id", &fim[5]);
    read_id(g, v, "tokenizer.ggml.prefix_token_id", &fim[0]);
    read_id(g, v, "tokenizer.ggml.suffix_token_id", &fim[1]);
    read_id(g, v, "tokenizer.ggml.middle_token_id", &fim[2]);

    read_bool(g, "tokenizer.ggml.add_bos_token", &v->add_bos);
    read_bool(g, "tokenizer.ggml.add_eos_token", &v->add_eos);
    if (v->add_bos && v->bos < 0)
        return kiln_error(KILN_E_FORMAT, "vocab: add_bos_token is true but there is no BOS token");
    if (v->add_eos && v->eos < 0)
        return kiln_error(KILN_E_FORMAT, "vocab: add_eos_token is true but there is no EOS token");

    static const char *const eot_names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of"
        "\xE2\x96\x81sentence\xEF\xBD\x9C>", "<end_of_utterance>", NULL};
    static const char *const eom_names[] = {"<|eom_id|>", NULL};
    static const char *const fim_names[6][9] = {
        {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
         "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
         "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL},
        {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
         "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>", "\xE2\x96\x81<SUF>",
         "<|code_suffix|>", "<|suffix|>", NULL},
        {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
         "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>", "\xE2\x96\x81<MID>",
         "<|code_middle|>", "<|middle|>", NULL},
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
        {"<|file_sep|>", NULL},
    };
    static const char *const eog_names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
        "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
        "<turn|>", "<|tool_response>",
        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~[", NULL};
    static const char *const always_user[] = {"<|channel|>", "<|message|>", "<|start|>",
                                              "<|constrain|>", NULL};

    for (int32_t id = 0; id < v->n_tokens; id++) {
        uint16_t *attr = &v->tok[id].attr;
        if (v->eot < 0 && text_in(v, id, eot_names)) {
            v->eot = id;
            *attr |= KILN_ATTR_CONTROL;
        }
        if (v->eom < 0 && text_in(v, id, eom_names)) {
            v->eom = id;
            *attr |= KILN_ATTR_CONTROL;
        }
        for (int k = 0; k < 6; k++) {
            if (fim[k] < 0 && text_in(v, id, fim_names[k])) {
                fim[k] = id;
                *attr |= KILN_ATTR_CONTROL;
            }
        }
    }
    for (int32_t id = 0; id < v->n_tokens; id++) {
        uint16_t *attr = &v->tok[id].attr;
        size_t n;
        const char *s = tok_text(v, id, &n);
        if ((*attr & KILN_ATTR_CONTROL) && memmem(s, n, "unused", 6)) *attr |= KILN_ATTR_UNUSED;
        if (text_in(v, id, eog_names)) *attr |= KILN_ATTR_CONTROL | KILN_ATTR_EOG;
        if (text_in(v, id, always_user)) *attr = KILN_ATTR_USER_DEFINED;
    }
    int32_t eog_extra[] = {fim[3], fim[4], fim[5], v->eos, v->eot, v->eom};
    for (size_t k = 0; k < KILN_ARRAY_LEN(eog_extra); k++)
        if (eog_extra[k] >= 0) v->tok[eog_extra[k]].attr |= KILN_ATTR_EOG;

    /* o200k_harmony / solar-open: "<|end|>" ends a message, not generation. */
    int32_t t_ret = find_lit(v, "<|return|>"), t_call = find_lit(v, "<|call|>");
    int32_t t_calls = find_lit(v, "<|calls|>"), t_flush = find_lit(v, "<|flush|>");
    int32_t t_end = find_lit(v, "<|end|>");
#define IS_EOG(id) ((id) >= 0 && (v->tok[id].attr & KILN_ATTR_EOG))
    bool has_call = IS_EOG(t_call) || IS_EOG(t_calls);
    if (IS_EOG(t_end) && ((IS_EOG(t_ret) && has_call) || (has_call && IS_EOG(t_flush))))
        v->tok[t_end].attr = KILN_ATTR_USER_DEFINED;
    /* gemma4 / paddleocr: "</s>" is an ordinary token there. */
    int32_t t_tool = find_lit(v, "<|tool_response>"), t_s = find_lit(v, "</s>");
    if (IS_EOG(t_tool) && IS_EOG(t_s)) v->tok[t_s].attr = KILN_ATTR_NORMAL;
#undef IS_EOG
    return KILN_OK;
}

/* Special tokens are matched longest text first; ties by id, so the order
 * does not depend on the sort (llama.cpp leaves it unspecified). */
typedef struct special_key {
    uint32_t len;
    int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static kiln_status build_special_cache(const kiln_gguf *g, kiln_vocab *v) {
    const uint16_t want = KILN_ATTR_CONTROL | KILN_ATTR_USER_DEFINED | KILN_ATTR_UNKNOWN;
    size_t n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        if (v->tok[id].attr & want) n++;
    v->special = kiln_malloc((n ? n : 1) * sizeof(int32_t));
    if (!v->special) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory");
    special_key *keys = kiln_malloc((n ? n : 1) * sizeof(special_key));
    if (!keys) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory");
    for (int32_t id = 0; id < v->n_tokens; id++)
        if (v->tok[id].attr & want) keys[v->n_special++] = (special_key){v->tok[id].text_len, id};
    qsort(keys, v->n_special, sizeof(special_key), cmp_special);
    for (size_t i = 0; i < v->n_special; i++) v->special[i] = keys[i].id;
    kiln_free(keys);

    /* phi-3: special tokens swallow the whitespace after them (llama.cpp
     * keys this on general.name). */
    const char *name;
    uint64_t name_len;
    if (kiln_gguf_get_str(g, "general.name", &name, &name_len) == KILN_OK) {
        char low[256];
        size_t m = (size_t)KILN_MIN(name_len, (uint64_t)sizeof(low) - 1);
        for (size_t i = 0; i < m; i++) {
            char c = name[i];
            low[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        if (memmem(low, m, "phi-3", 5) || memmem(low, m, "phi3", 4)) {
            for (size_t i = 0; i < v->n_special; i++) v->tok[v->special[i]].attr |= KILN_ATTR_RSTRIP;
            int32_t t = find_lit(v, "</s>");
            if (t >= 0) v->tok[t].attr |= KILN_ATTR_RSTRIP;
            static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (size_t i = 0; i < KILN_ARRAY_LEN(keep); i++) {
                t = find_lit(v, keep[i]);
                if (t >= 0) v->tok[t].attr &= (uint16_t)~KILN_ATTR_RSTRIP;
            }
        }
    }
    return KILN_OK;
}

/* SPM byte fallback ids: "<0xNN>", else the byte itself as a token. */
static void build_byte_tokens(kiln_vocab *v) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        int32_t id = kiln_vocab_find(v, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = kiln_vocab_find(v, &c, 1);
        }
        v->byte_tok[b] = id;
    }
}

/* The byte of a BYTE token "<0xNN>" (strtol on the two characters after
 * "<0x", as llama.cpp reads it). */
static uint8_t byte_of_token(const char *s, size_t n) {
    char buf[3] = {0, 0, 0};
    if (n > 3) buf[0] = s[3];
    if (n > 4) buf[1] = s[4];
    return (uint8_t)strtol(buf, NULL, 16);
}

/* Appends the decoded bytes of a byte-level BPE token text to dst (or only
 * counts them when dst is NULL); returns the length. Code points outside
 * the byte alphabet are spelled out the way llama.cpp does. */
static size_t decode_bytelevel(const char *s, size_t n, char *dst) {
    size_t out = 0, pos = 0;
    while (pos < n) {
        uint32_t cp = kiln_utf8_next_lenient(s, n, &pos);
        int b = kiln_bytelevel_byte(cp);
        if (b >= 0) {
            if (dst) dst[out] = (char)b;
            out++;
            continue;
        }
        char enc[4];
        size_t el = kiln_utf8_put(cp, enc);
        char tmp[32];
        int k = snprintf(tmp, sizeof(tmp), "[UNK_BYTE_0x");
        for (size_t i = 0; i < el; i++) k += snprintf(tmp + k, sizeof(tmp) - (size_t)k, "%02x", (uint8_t)enc[i]);
        if (dst) memcpy(dst + out, tmp, (size_t)k);
        out += (size_t)k;
        if (dst) memcpy(dst + out, s, n);
        out += n;
        if (dst) dst[out] = ']';
        out++;
    }
    return out;
}

/* The piece of token id with special tokens rendered: writes it to dst when
 * non-NULL; returns its length. */
static size_t render_piece(const kiln_vocab *v, int32_t id, char *dst) {
    const kiln_vtoken *t = &v->tok[id];
    const char *s = v->text + t->text_off;
    size_t n = t->text_len;
    if (t->attr & (KILN_ATTR_UNKNOWN | KILN_ATTR_CONTROL | KILN_ATTR_USER_DEFINED)) {
        if (dst) memcpy(dst, s, n);
        return n;
    }
    if (t->attr & KILN_ATTR_NORMAL) {
        if (v->kind == KILN_VOCAB_BPE) return decode_bytelevel(s, n, dst);
        /* SPM: U+2581 stands for a space. */
        size_t out = 0;
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                if (dst) dst[out] = ' ';
                out++;
                i += 3;
            } else {
                if (dst) dst[out] = s[i];
                out++;
                i++;
            }
        }
        return out;
    }
    if (t->attr & KILN_ATTR_BYTE) {
        if (dst) dst[0] = (char)byte_of_token(s, n);
        return 1;
    }
    return 0; /* unused / undefined tokens render as nothing */
}

static kiln_status build_pieces(kiln_vocab *v) {
    size_t total = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t n = render_piece(v, id, NULL);
        if (!kiln_add_size(total, n, &total) || total > UINT32_MAX)
            return kiln_error(KILN_E_FORMAT, "vocab: decoded token texts are too large");
    }
    v->pieces = kiln_malloc(total ? total : 1);
    if (!v->pieces) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory for pieces");
    size_t off = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t n = render_piece(v, id, v->pieces + off);
        v->tok[id].piece_off = (uint32_t)off;
        v->tok[id].piece_len = (uint32_t)n;
        off += n;
    }
    return KILN_OK;
}

kiln_status kiln_vocab_load(const kiln_gguf *g, kiln_vocab **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "vocab: NULL out");
    *out = NULL;
    if (!g) return kiln_error(KILN_E_INVALID_ARG, "vocab: NULL gguf");
    kiln_vocab *v = kiln_calloc(1, sizeof(*v));
    if (!v) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory");
    v->bos = v->eos = v->unk = v->eot = v->eom = v->pad = -1;

    kiln_status st = parse_kind(g, v);
    if (st == KILN_OK) read_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix);
    if (st == KILN_OK) st = load_tokens(g, v);
    if (st == KILN_OK && v->kind == KILN_VOCAB_BPE) st = load_merges(g, v);
    if (st == KILN_OK) st = load_specials(g, v);
    if (st == KILN_OK) st = build_special_cache(g, v);
    if (st == KILN_OK) {
        build_byte_tokens(v);
        st = build_pieces(v);
    }
    if (st) {
        kiln_vocab_free(v);
        return st;
    }
    *out = v;
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* getters                                                                  */
/* ------------------------------------------------------------------------ */

int32_t kiln_vocab_n_tokens(const kiln_vocab *v) { return v ? v->n_tokens : 0; }
int32_t kiln_vocab_bos(const kiln_vocab *v) { return v ? v->bos : -1; }
int32_t kiln_vocab_eos(const kiln_vocab *v) { return v ? v->eos : -1; }
bool kiln_vocab_add_bos(const kiln_vocab *v) { return v && v->add_bos; }

bool kiln_vocab_is_eog(const kiln_vocab *v, int32_t tok) {
    return v && tok >= 0 && tok < v->n_tokens && (v->tok[tok].attr & KILN_ATTR_EOG);
}

int32_t kiln_vocab_token_type(const kiln_vocab *v, int32_t tok) {
    if (!v || tok < 0 || tok >= v->n_tokens) return 0;
    uint16_t a = v->tok[tok].attr;
    if (a & KILN_ATTR_UNKNOWN) return KILN_TOKEN_UNKNOWN;
    if (a & KILN_ATTR_CONTROL) return KILN_TOKEN_CONTROL;
    if (a & KILN_ATTR_USER_DEFINED) return KILN_TOKEN_USER_DEFINED;
    if (a & KILN_ATTR_BYTE) return KILN_TOKEN_BYTE;
    if (a & KILN_ATTR_UNUSED) return KILN_TOKEN_UNUSED;
    if (a & KILN_ATTR_NORMAL) return KILN_TOKEN_NORMAL;
    return 0;
}

const char *kiln_vocab_token_text(const kiln_vocab *v, int32_t tok, size_t *len) {
    if (!v || tok < 0 || tok >= v->n_tokens) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = v->tok[tok].text_len;
    return v->text + v->tok[tok].text_off;
}

/* ------------------------------------------------------------------------ */
/* tokenize                                                                 */
/* ------------------------------------------------------------------------ */

/* A piece of the input: raw text [off, off+len) or a special token. */
typedef struct frag {
    size_t off, len;
    int32_t token; /* -1 for raw text */
} frag;

typedef struct frag_list {
    frag *f;
    size_t n, cap;
} frag_list;

static kiln_status frag_push(frag_list *l, frag x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8, bytes;
        if (!kiln_mul_size(cap, sizeof(frag), &bytes)) return kiln_error(KILN_E_OOM_HOST, "vocab: size overflow");
        frag *p = kiln_realloc(l->f, bytes);
        if (!p) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory");
        l->f = p;
        l->cap = cap;
    }
    l->f[l->n++] = x;
    return KILN_OK;
}

static bool c_isspace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Cuts the raw fragments at every literal occurrence of the special tokens
 * (longest first), like llama.cpp's tokenizer_st_partition. Without
 * parse_special only user-defined tokens are matched. */
static kiln_status partition(const kiln_vocab *v, const char *text, size_t n, bool parse_special,
                             frag_list *out) {
    frag_list cur = {0}, next = {0};
    kiln_status st = frag_push(&cur, (frag){0, n, -1});
    for (size_t si = 0; si < v->n_special && st == KILN_OK; si++) {
        int32_t id = v->special[si];
        const kiln_vtoken *t = &v->tok[id];
        if (!parse_special && (t->attr & (KILN_ATTR_CONTROL | KILN_ATTR_UNKNOWN))) continue;
        const char *tt = v->text + t->text_off;
        size_t tl = t->text_len;
        next.n = 0;
        bool changed = false;
        for (size_t fi = 0; fi < cur.n && st == KILN_OK; fi++) {
            frag f = cur.f[fi];
            if (f.token >= 0) {
                st = frag_push(&next, f);
                continue;
            }
            size_t off = f.off, len = f.len;
            while (st == KILN_OK) {
                const char *m = len >= tl ? memmem(text + off, len, tt, tl) : NULL;
                if (!m) {
                    if (len > 0) st = frag_push(&next, (frag){off, len, -1});
                    break;
                }
                changed = true;
                size_t mo = (size_t)(m - text);
                size_t left = mo - off;
                if (t->attr & KILN_ATTR_LSTRIP)
                    while (left > 0 && c_isspace(text[off + left - 1])) left--;
                if (left > 0) st = frag_push(&next, (frag){off, left, -1});
                if (st == KILN_OK) st = frag_push(&next, (frag){0, 0, id});
                size_t roff = mo + tl, rlen = off + len - roff;
                if (t->attr & KILN_ATTR_RSTRIP)
                    while (rlen > 0 && c_isspace(text[roff])) roff++, rlen--;
                off = roff;
                len = rlen;
            }
        }
        if (changed) {
            frag_list tmp = cur;
            cur = next;
            next = tmp;
        }
    }
    kiln_free(next.f);
    if (st) {
        kiln_free(cur.f);
        return st;
    }
    *out = cur;
    return KILN_OK;
}

/* SPM input of one fragment: optional leading space, spaces -> U+2581. */
static kiln_status spm_fragment(const kiln_vocab *v, const char *s, size_t n, bool prefix,
                                kiln_ivec *out) {
    size_t spaces = prefix ? 1 : 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    size_t len = n + (prefix ? 1 : 0) + 2 * spaces;
    char *buf = kiln_malloc(len ? len : 1);
    if (!buf) return kiln_error(KILN_E_OOM_HOST, "vocab: out of memory");
    size_t o = 0;
    if (prefix) memcpy(buf + o, "\xE2\x96\x81", 3), o += 3;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') memcpy(buf + o, "\xE2\x96\x81", 3), o += 3;
        else buf[o++] = s[i];
    }
    kiln_status st = kiln_spm_tokenize(v, buf, o, out);
    kiln_free(buf);
    return st;
}

kiln_status kiln_vocab_tokenize(const kiln_vocab *v, const char *text, size_t text_len,
                                uint32_t flags, int32_t *tokens, size_t capacity,
                                size_t *n_out) {
    if (!v || !n_out || (!text && text_len > 0))
        return kiln_error(KILN_E_INVALID_ARG, "tokenize: NULL argument");
    *n_out = 0;
    if (text_len > MAX_TEXT_LEN)
        return kiln_error(KILN_E_INVALID_ARG, "tokenize: text of %zu bytes is too long", text_len);

    frag_list frags = {0};
    kiln_ivec ids = {0};
    kiln_status st = KILN_OK;
    if (text_len > 0) st = partition(v, text, text_len, (flags & KILN_TOKENIZE_PARSE_SPECIAL) != 0, &frags);
    if (st == KILN_OK && (flags & KILN_TOKENIZE_ADD_BOS) && v->add_bos) st = kiln_ivec_push(&ids, v->bos);

    bool prev_special = true; /* SPM: the text start counts as after a special */
    for (size_t i = 0; i < frags.n && st == KILN_OK; i++) {
        const frag *f = &frags.f[i];
        if (f->token >= 0) {
            st = kiln_ivec_push(&ids, f->token);
            prev_special = true;
        } else if (v->kind == KILN_VOCAB_SPM) {
            st = spm_fragment(v, text + f->off, f->len, v->add_space_prefix && prev_special, &ids);
            prev_special = false;
        } else {
            st = kiln_bpe_tokenize(v, text + f->off, f->len, &ids);
        }
    }
    kiln_free(frags.f);
    if (st == KILN_OK) {
        *n_out = ids.n;
        if (tokens) {
            if (capacity < ids.n)
                st = kiln_error(KILN_E_BUFFER_TOO_SMALL, "tokenize: %zu tokens do not fit in %zu",
                                ids.n, capacity);
            else if (ids.n)
                memcpy(tokens, ids.v, ids.n * sizeof(int32_t));
        }
    }
    kiln_ivec_free(&ids);
    return st;
}

/* ------------------------------------------------------------------------ */
/* pieces and detokenize                                                    */
/* ------------------------------------------------------------------------ */

/* The bytes token tok stands for; NULL with *len 0 when it renders as
 * nothing under these flags. */
const char *kiln_vocab_piece(const kiln_vocab *v, int32_t tok, uint32_t flags, size_t *len) {
    const kiln_vtoken *t = &v->tok[tok];
    if ((flags & KILN_DETOK_SKIP_SPECIAL) && (t->attr & (KILN_ATTR_UNKNOWN | KILN_ATTR_CONTROL))) {
        *len = 0;
        return NULL;
    }
    *len = t->piece_len;
    return v->pieces + t->piece_off;
}

kiln_status kiln_vocab_token_to_piece(const kiln_vocab *v, int32_t tok, uint32_t flags,
                                      char *buf, size_t capacity, size_t *n_out) {
    if (!v || !n_out) return kiln_error(KILN_E_INVALID_ARG, "token_to_piece: NULL argument");
    *n_out = 0;
    if (tok < 0 || tok >= v->n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "token_to_piece: token %d is not in [0, %d)", tok,
                          v->n_tokens);
    size_t n;
    const char *p = kiln_vocab_piece(v, tok, flags, &n);
    *n_out = n;
    if (!buf) return KILN_OK;
    if (capacity < n)
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "token_to_piece: %zu bytes do not fit in %zu",
                          n, capacity);
    if (n) memcpy(buf, p, n);
    return KILN_OK;
}

kiln_status kiln_vocab_detokenize(const kiln_vocab *v, const int32_t *tokens, size_t n,
                                  uint32_t flags, char *buf, size_t capacity, size_t *n_out) {
    if (!v || !n_out || (!tokens && n > 0))
        return kiln_error(KILN_E_INVALID_ARG, "detokenize: NULL argument");
    *n_out = 0;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= v->n_tokens)
            return kiln_error(KILN_E_INVALID_ARG, "detokenize: token %d at %zu is not in [0, %d)",
                              tokens[i], i, v->n_tokens);
    /* llama.cpp: the space SPM puts in front of the text is dropped from
     * the first piece; when special tokens are skipped a leading BOS (and
     * a trailing EOS) the vocab adds are dropped too, and then the space is
     * kept. */
    bool strip = v->add_space_prefix;
    if ((flags & KILN_DETOK_SKIP_SPECIAL) && v->add_bos && n > 0 && tokens[0] == v->bos) {
        strip = false;
        tokens++;
        n--;
    }
    if ((flags & KILN_DETOK_SKIP_SPECIAL) && v->add_eos && n > 0 && tokens[n - 1] == v->eos) n--;

    size_t total = 0;
    for (size_t pass = 0; pass < 2; pass++) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            size_t len;
            const char *p = kiln_vocab_piece(v, tokens[i], flags, &len);
            if (i == 0 && strip && len > 0 && p[0] == ' ') p++, len--;
            if (pass == 1 && len) memcpy(buf + o, p, len);
            o += len;
        }
        total = o;
        if (pass == 0) {
            *n_out = total;
            if (!buf) return KILN_OK;
            if (capacity < total)
                return kiln_error(KILN_E_BUFFER_TOO_SMALL, "detokenize: %zu bytes do not fit in %zu",
                                  total, capacity);
        }
    }
    return KILN_OK;
}
