/*
 * test_vocab.c - the tokenizers against llama.cpp's outputs: every vocab
 * test vector in ../shared/vocab, the token lists of the reference logits,
 * plus round trips, the size protocol, special-token parsing, the streaming
 * detokenizer, hostile input and allocation failures.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "detok.h"
#include "gguf.h"
#include "internal.h"
#include "kt.h"
#include "vocab.h"
#include "unicode.h"
#include "vocab_internal.h"

/* ---- helpers ---- */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

static kiln_vocab *load_vocab(const char *rel) {
    const char *path = kt_shared(rel);
    if (!path) return NULL;
    kiln_gguf *g = NULL;
    kiln_vocab *v = NULL;
    KT_CHECK_OK(kiln_gguf_open(path, &g));
    if (g) KT_CHECK_OK(kiln_vocab_load(g, &v));
    kiln_gguf_close(g);
    return v;
}

/* Tokenizes into a malloc'd array (size protocol: count first). */
static int32_t *tok(const kiln_vocab *v, const char *s, size_t n, uint32_t flags, size_t *count) {
    size_t need = 0;
    *count = 0;
    if (kiln_vocab_tokenize(v, s, n, flags, NULL, 0, &need) != KILN_OK) return NULL;
    int32_t *ids = malloc((need ? need : 1) * sizeof(int32_t));
    size_t got = 0;
    if (kiln_vocab_tokenize(v, s, n, flags, ids, need, &got) != KILN_OK || got != need) {
        free(ids);
        return NULL;
    }
    *count = got;
    return ids;
}

static char *detok(const kiln_vocab *v, const int32_t *ids, size_t n, uint32_t flags, size_t *len) {
    size_t need = 0;
    *len = 0;
    if (kiln_vocab_detokenize(v, ids, n, flags, NULL, 0, &need) != KILN_OK) return NULL;
    char *buf = malloc(need + 1);
    size_t got = 0;
    if (kiln_vocab_detokenize(v, ids, n, flags, buf, need, &got) != KILN_OK || got != need) {
        free(buf);
        return NULL;
    }
    buf[got] = 0;
    *len = got;
    return buf;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    printf("    %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf(n > 40 ? " ...\n" : "\n");
}

/* ---- the vocab vectors ---- */

static const char *const k_vocabs[] = {"llama-spm", "phi-3", "gpt-2", "llama3", "qwen3",
                                       "deepseek-llm"};

/* Texts where llama.cpp's own detokenizer does not give the text back
 * (SPM vocabs drop no information, but byte-level BPE maps invalid UTF-8...);
 * every text of the shared vectors is valid UTF-8, so all round-trip. */
static void check_vocab_file(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "vocab/vocab-%s.gguf", name);
    if (!kt_shared(rel)) {
        printf("  skip: %s not found\n", rel);
        kt_case_skipped = 1;
        return;
    }
    kiln_vocab *v = load_vocab(rel);
    KT_CHECKF(v != NULL, "%s: load failed: %s", name, kiln_last_error());
    if (!v) return;

    snprintf(rel, sizeof rel, "vocab/vocab-%s.inp", name);
    char *inp = read_file(kt_shared(rel), NULL);
    snprintf(rel, sizeof rel, "vocab/vocab-%s.out", name);
    char *outf = read_file(kt_shared(rel), NULL);
    KT_CHECK(inp && outf);
    if (!inp || !outf) {
        free(inp);
        free(outf);
        kiln_vocab_free(v);
        return;
    }
    /* Texts are separated (and the last one followed) by the delimiter;
     * .out has one line per text. */
    static const char delim[] = "\n__ggml_vocab_test__\n";
    char *p = inp, *line = outf;
    int n_texts = 0, n_bad = 0, n_rt_bad = 0;
    for (;;) {
        char *d = strstr(p, delim);
        if (!d) break;
        size_t text_len = (size_t)(d - p);
        char *eol = strchr(line, '\n');
        KT_CHECKF(eol != NULL, "%s: .out has too few lines", name);
        if (!eol) break;
        *eol = 0;
        int32_t want[4096];
        size_t n_want = 0;
        for (char *q = line; *q;) {
            char *end;
            long x = strtol(q, &end, 10);
            if (end == q) break;
            want[n_want++] = (int32_t)x;
            q = end;
        }
        size_t n_got = 0;
        int32_t *got = tok(v, p, text_len, 0, &n_got);
        bool same = got && n_got == n_want && memcmp(got, want, n_want * sizeof(int32_t)) == 0;
        if (!same) {
            n_bad++;
            kt_fail(__FILE__, __LINE__, "%s text %d (%zu bytes) differs", name, n_texts, text_len);
            print_ids("want", want, n_want);
            if (got) print_ids("got ", got, n_got);
        }
        if (got) {
            size_t dl;
            char *back = detok(v, got, n_got, 0, &dl);
            if (!back || dl != text_len || memcmp(back, p, text_len) != 0) {
                n_rt_bad++;
                kt_fail(__FILE__, __LINE__, "%s text %d does not round-trip", name, n_texts);
            }
            free(back);
        }
        free(got);
        n_texts++;
        p = d + sizeof(delim) - 1;
        line = eol + 1;
    }
    KT_CHECKF(*line == 0, "%s: .out has extra lines", name);
    KT_CHECKF(n_texts == 46, "%s: %d texts", name, n_texts);
    if (n_bad || n_rt_bad) printf("  %s: %d of %d differ, %d do not round-trip\n", name, n_bad, n_texts, n_rt_bad);
    free(inp);
    free(outf);
    kiln_vocab_free(v);
}

static void test_vocab_vectors(void) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(k_vocabs); i++) check_vocab_file(k_vocabs[i]);
}

/* ---- the reference logits' token lists ---- */

/* prompts.txt: one prompt per line, escapes \n \t \\; the last line is
 * the empty prompt. Unescapes line in place; returns its length. */
static size_t unescape(char *s) {
    size_t o = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '\\' && s[i + 1]) {
            char c = s[++i];
            s[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = 0;
    return o;
}

static uint32_t rd_u32(const unsigned char **p) {
    uint32_t x;
    memcpy(&x, *p, 4);
    *p += 4;
    return x;
}

static void check_reference(const char *model, const char *logits) {
    kiln_vocab *v = load_vocab(model);
    size_t flen = 0;
    char *lg = read_file(kt_shared(logits), &flen);
    char *prompts = read_file(kt_shared("reference/prompts.txt"), NULL);
    KT_CHECK(v && lg && prompts);
    if (v && lg && prompts && flen > 16 && memcmp(lg, "LGTS", 4) == 0) {
        const unsigned char *p = (const unsigned char *)lg + 4, *end = (const unsigned char *)lg + flen;
        uint32_t version = rd_u32(&p), n_vocab = rd_u32(&p), n_prompts = rd_u32(&p);
        KT_CHECK(version == 1);
        KT_CHECK(n_vocab == (uint32_t)kiln_vocab_n_tokens(v));
        char *line = prompts;
        uint32_t done = 0;
        for (uint32_t i = 0; i < n_prompts && p + 4 <= end; i++) {
            char *eol = strchr(line, '\n');
            KT_CHECKF(eol != NULL, "prompts.txt has fewer than %u lines", n_prompts);
            if (!eol) break;
            *eol = 0;
            size_t len = unescape(line);
            uint32_t n_tok = rd_u32(&p);
            if (p + 4 * (size_t)n_tok > end) break;
            int32_t *want = malloc(4 * (size_t)n_tok + 4);
            memcpy(want, p, 4 * (size_t)n_tok);
            p += 4 * (size_t)n_tok;
            uint32_t n_rows = rd_u32(&p);
            p += 4 * (size_t)n_rows + 4 * (size_t)n_rows * n_vocab;
            uint32_t n_gen = rd_u32(&p);
            p += 4 * (size_t)n_gen;

            size_t n_got = 0;
            int32_t *got = tok(v, line, len, KILN_TOKENIZE_ADD_BOS, &n_got);
            bool same = got && n_got == n_tok && memcmp(got, want, 4 * (size_t)n_tok) == 0;
            KT_CHECKF(same, "%s prompt %u (%zu bytes): %zu tokens, want %u", logits, i, len,
                      n_got, n_tok);
            if (!same) {
                print_ids("want", want, n_tok);
                if (got) print_ids("got ", got, n_got);
            }
            free(got);
            free(want);
            line = eol + 1;
            done++;
        }
        KT_CHECKF(done == n_prompts && n_prompts == 9, "%u of %u prompts checked", done, n_prompts);
    }
    free(lg);
    free(prompts);
    kiln_vocab_free(v);
}

static void test_reference_tokens(void) {
    if (!kt_shared("models/tiny-target-f16.gguf") || !kt_shared("reference/tiny-target-f16.logits"))
        KT_SKIP("../shared models or references not found");
    check_reference("models/tiny-target-f16.gguf", "reference/tiny-target-f16.logits");
    check_reference("models/tiny-qwen3-f16.gguf", "reference/tiny-qwen3-f16.logits");
}

/* The long reference prompt must tokenize in well under 10 ms. */
static void test_speed(void) {
    kiln_vocab *v = load_vocab("models/tiny-target-f16.gguf");
    char *prompts = read_file(kt_shared("reference/prompts.txt"), NULL);
    if (!v || !prompts) {
        kiln_vocab_free(v);
        free(prompts);
        KT_SKIP("../shared models not found");
    }
    /* The longest line. */
    char *best = NULL, *line = prompts;
    size_t best_len = 0;
    for (char *eol; (eol = strchr(line, '\n')) != NULL; line = eol + 1) {
        *eol = 0;
        size_t len = unescape(line);
        if (len > best_len) best = line, best_len = len;
    }
    size_t n = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int reps = 20;
    for (int i = 0; i < reps; i++) {
        int32_t *ids = tok(v, best, best_len, KILN_TOKENIZE_ADD_BOS, &n);
        free(ids);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6) / reps;
    printf("  %zu bytes -> %zu tokens in %.3f ms\n", best_len, n, ms);
    KT_CHECK(n == 1052);
    /* Not a benchmark (speed is measured by kiln-bench, never asserted on a
     * shared machine): the bound only catches a quadratic merge loop, which
     * takes seconds here; ~0.1 ms per 1000 tokens when the machine is idle. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
    const double limit = 5000.0;
#else
    const double limit = 1000.0;
#endif
    KT_CHECKF(ms < limit, "tokenizing took %.3f ms", ms);
    free(prompts);
    kiln_vocab_free(v);
}

/* ---- size protocol, getters, special tokens ---- */

static void test_size_protocol(void) {
    kiln_vocab *v = load_vocab("models/tiny-target-f16.gguf");
    if (!v) KT_SKIP("../shared models not found");
    const char *text = "Hello world, in the beginning.";
    size_t n = 0;
    KT_CHECK_OK(kiln_vocab_tokenize(v, text, strlen(text), KILN_TOKENIZE_ADD_BOS, NULL, 0, &n));
    KT_CHECK(n > 2);
    int32_t ids[64];
    for (size_t i = 0; i < 64; i++) ids[i] = -7;
    size_t m = 0;
    KT_CHECK(kiln_vocab_tokenize(v, text, strlen(text), KILN_TOKENIZE_ADD_BOS, ids, n - 1, &m) ==
             KILN_E_BUFFER_TOO_SMALL);
    KT_CHECK(m == n);
    KT_CHECK(ids[0] == -7); /* nothing written */
    KT_CHECK_OK(kiln_vocab_tokenize(v, text, strlen(text), KILN_TOKENIZE_ADD_BOS, ids, n, &m));
    KT_CHECK(m == n && ids[0] == kiln_vocab_bos(v) && ids[n] == -7);
    /* without ADD_BOS: one fewer */
    KT_CHECK_OK(kiln_vocab_tokenize(v, text, strlen(text), 0, NULL, 0, &m));
    KT_CHECK(m == n - 1);
    /* empty text: just BOS, or nothing */
    KT_CHECK_OK(kiln_vocab_tokenize(v, "", 0, KILN_TOKENIZE_ADD_BOS, ids, 64, &m));
    KT_CHECK(m == 1 && ids[0] == 0);
    KT_CHECK_OK(kiln_vocab_tokenize(v, NULL, 0, 0, NULL, 0, &m));
    KT_CHECK(m == 0);
    KT_CHECK(kiln_vocab_tokenize(v, NULL, 3, 0, NULL, 0, &m) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_vocab_tokenize(v, text, 3, 0, NULL, 0, NULL) == KILN_E_INVALID_ARG);

    /* detokenize */
    KT_CHECK_OK(kiln_vocab_tokenize(v, text, strlen(text), 0, ids, 64, &n));
    size_t len = 0;
    KT_CHECK_OK(kiln_vocab_detokenize(v, ids, n, 0, NULL, 0, &len));
    KT_CHECK(len == strlen(text));
    char buf[128];
    memset(buf, 'x', sizeof buf);
    KT_CHECK(kiln_vocab_detokenize(v, ids, n, 0, buf, len - 1, &m) == KILN_E_BUFFER_TOO_SMALL);
    KT_CHECK(m == len && buf[0] == 'x');
    KT_CHECK_OK(kiln_vocab_detokenize(v, ids, n, 0, buf, len, &m));
    KT_CHECK(m == len && memcmp(buf, text, len) == 0 && buf[len] == 'x');
    int32_t bad[2] = {ids[0], 4096};
    KT_CHECK(kiln_vocab_detokenize(v, bad, 2, 0, NULL, 0, &m) == KILN_E_INVALID_ARG);
    bad[1] = -1;
    KT_CHECK(kiln_vocab_detokenize(v, bad, 2, 0, NULL, 0, &m) == KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_vocab_detokenize(v, NULL, 0, 0, NULL, 0, &m));
    KT_CHECK(m == 0);

    /* token_to_piece */
    KT_CHECK_OK(kiln_vocab_token_to_piece(v, 0, 0, NULL, 0, &len));
    KT_CHECK(len == 7); /* "<|bos|>" */
    KT_CHECK(kiln_vocab_token_to_piece(v, 0, 0, buf, 6, &m) == KILN_E_BUFFER_TOO_SMALL && m == 7);
    KT_CHECK_OK(kiln_vocab_token_to_piece(v, 0, 0, buf, 7, &m));
    KT_CHECK(m == 7 && memcmp(buf, "<|bos|>", 7) == 0);
    KT_CHECK_OK(kiln_vocab_token_to_piece(v, 0, KILN_DETOK_SKIP_SPECIAL, buf, 7, &m));
    KT_CHECK(m == 0);
    KT_CHECK(kiln_vocab_token_to_piece(v, 4096, 0, buf, 7, &m) == KILN_E_INVALID_ARG);
    kiln_vocab_free(v);
}

static void test_getters(void) {
    kiln_vocab *v = load_vocab("models/tiny-target-f16.gguf");
    if (!v) KT_SKIP("../shared models not found");
    KT_CHECK(kiln_vocab_n_tokens(v) == 4096);
    KT_CHECK(kiln_vocab_bos(v) == 0 && kiln_vocab_eos(v) == 1);
    KT_CHECK(kiln_vocab_add_bos(v));
    KT_CHECK(kiln_vocab_is_eog(v, 1) && !kiln_vocab_is_eog(v, 0) && !kiln_vocab_is_eog(v, 100));
    KT_CHECK(!kiln_vocab_is_eog(v, -1) && !kiln_vocab_is_eog(v, 4096));
    KT_CHECK(kiln_vocab_token_type(v, 0) == KILN_TOKEN_CONTROL);
    KT_CHECK(kiln_vocab_token_type(v, 100) == KILN_TOKEN_NORMAL);
    KT_CHECK(kiln_vocab_token_type(v, 5000) == 0);
    size_t len;
    const char *t = kiln_vocab_token_text(v, 1, &len);
    KT_CHECK(t && len == 7 && memcmp(t, "<|eos|>", 7) == 0);
    KT_CHECK(kiln_vocab_token_text(v, -3, &len) == NULL && len == 0);
    kiln_vocab_free(v);

    v = load_vocab("vocab/vocab-llama3.gguf");
    if (v) {
        /* <|eot_id|> is an end-of-generation token by its text. */
        KT_CHECK(kiln_vocab_is_eog(v, 128009) && kiln_vocab_is_eog(v, 128001));
        KT_CHECK(!kiln_vocab_is_eog(v, 128000));
        kiln_vocab_free(v);
    }
    v = load_vocab("vocab/vocab-llama-spm.gguf");
    if (v) {
        KT_CHECK(kiln_vocab_token_type(v, 0) == KILN_TOKEN_UNKNOWN);
        KT_CHECK(kiln_vocab_token_type(v, 3) == KILN_TOKEN_BYTE);
        KT_CHECK(kiln_vocab_add_bos(v) && kiln_vocab_bos(v) == 1);
        kiln_vocab_free(v);
    }
}

static bool has(const int32_t *ids, size_t n, int32_t x) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] == x) return true;
    return false;
}

static void test_parse_special(void) {
    kiln_vocab *v = load_vocab("models/tiny-target-f16.gguf");
    if (!v) KT_SKIP("../shared models not found");
    const char *text = "Amen.<|eos|>And<|bos|>";
    size_t n, len;
    int32_t *ids = tok(v, text, strlen(text), KILN_TOKENIZE_PARSE_SPECIAL, &n);
    KT_CHECK(ids && has(ids, n, 1) && has(ids, n, 0) && ids[n - 1] == 0);
    char *back = detok(v, ids, n, 0, &len);
    KT_CHECK(back && len == strlen(text) && memcmp(back, text, len) == 0);
    free(back);
    back = detok(v, ids, n, KILN_DETOK_SKIP_SPECIAL, &len);
    KT_CHECK(back && len == 8 && memcmp(back, "Amen.And", 8) == 0);
    free(back);
    free(ids);
    /* Not parsed: plain text that round-trips. */
    ids = tok(v, text, strlen(text), 0, &n);
    KT_CHECK(ids && !has(ids, n, 1) && !has(ids, n, 0));
    back = detok(v, ids, n, 0, &len);
    KT_CHECK(back && len == strlen(text) && memcmp(back, text, len) == 0);
    free(back);
    free(ids);
    kiln_vocab_free(v);

    /* SPM: text after a special token gets the prefix space again. */
    v = load_vocab("vocab/vocab-llama-spm.gguf");
    if (v) {
        ids = tok(v, "<s>Hello</s>", 12, KILN_TOKENIZE_PARSE_SPECIAL, &n);
        KT_CHECK(ids && n == 3 && ids[0] == 1 && ids[1] == 15043 && ids[2] == 2);
        free(ids);
        ids = tok(v, "Hello", 5, KILN_TOKENIZE_ADD_BOS, &n);
        KT_CHECK(ids && n == 2 && ids[0] == 1 && ids[1] == 15043);
        /* llama.cpp's detokenizer: the prefix space is dropped from the
         * first piece, but kept when a leading BOS is skipped. */
        back = detok(v, ids, n, 0, &len);
        KT_CHECK(back && len == 9 && memcmp(back, "<s> Hello", 9) == 0);
        free(back);
        back = detok(v, ids, n, KILN_DETOK_SKIP_SPECIAL, &len);
        KT_CHECK(back && len == 6 && memcmp(back, " Hello", 6) == 0);
        free(back);
        back = detok(v, ids + 1, 1, 0, &len);
        KT_CHECK(back && len == 5 && memcmp(back, "Hello", 5) == 0);
        free(back);
        free(ids);
        kiln_vocab_free(v);
    }
    /* phi-3: special tokens eat the whitespace after them. */
    v = load_vocab("vocab/vocab-phi-3.gguf");
    if (v) {
        ids = tok(v, "<|user|>\nHi", 11, KILN_TOKENIZE_PARSE_SPECIAL, &n);
        KT_CHECK(ids && n >= 2 && ids[0] == 32010 && !has(ids, n, 13));
        free(ids);
        ids = tok(v, "<|user|>\nHi", 11, 0, &n);
        KT_CHECK(ids && n > 2 && !has(ids, n, 32010) && has(ids, n, 13));
        free(ids);
        kiln_vocab_free(v);
    }
    v = load_vocab("vocab/vocab-llama3.gguf");
    if (v) {
        ids = tok(v, "<|begin_of_text|>Hi", 19, KILN_TOKENIZE_PARSE_SPECIAL, &n);
        KT_CHECK(ids && n == 2 && ids[0] == 128000);
        free(ids);
        ids = tok(v, "<|begin_of_text|>Hi", 19, 0, &n);
        KT_CHECK(ids && n > 2 && !has(ids, n, 128000));
        free(ids);
        kiln_vocab_free(v);
    }
}

/* ---- pre-tokenizers ---- */

static void check_split(kiln_pre_kind pre, const char *text, const char *const *want) {
    uint32_t cps[256];
    uint16_t fl[256];
    size_t n = 0;
    for (size_t pos = 0, len = strlen(text); pos < len;) {
        cps[n] = kiln_utf8_next_lenient(text, len, &pos);
        fl[n] = kiln_ucd_flags(cps[n]);
        n++;
    }
    kiln_ivec words = {0};
    KT_CHECK_OK(kiln_pretok_split(pre, cps, fl, n, &words));
    size_t w = 0, start = 0;
    for (; want[w] && w < words.n; w++) {
        char buf[256];
        size_t o = 0;
        for (size_t i = start; i < start + (size_t)words.v[w]; i++) o += kiln_utf8_put(cps[i], buf + o);
        buf[o] = 0;
        KT_CHECKF(strcmp(buf, want[w]) == 0, "pre %d on '%s': word %zu is '%s', want '%s'", (int)pre,
                  text, w, buf, want[w]);
        start += (size_t)words.v[w];
    }
    KT_CHECKF(!want[w] && w == words.n, "pre %d on '%s': %zu words", (int)pre, text, words.n);
    kiln_ivec_free(&words);
}

static void test_pretokenizers(void) {
    const char *t1 = "Hello, world!!! 12345 $100 a`b";
    check_split(KILN_PRE_DEFAULT, t1,
                (const char *const[]){"Hello", ",", " world", "!!!", " ", "123", "45", " ", "$",
                                      "100", " a", "`", "b", NULL});
    check_split(KILN_PRE_GPT2, "Hello world's  test\n\n",
                (const char *const[]){"Hello", " world", "'s", " ", " test", "\n\n", NULL});
    const char *t2 = "I'M 12345 ok\r\n  x";
    check_split(KILN_PRE_LLAMA3, t2,
                (const char *const[]){"I", "'M", " ", "123", "45", " ok", "\r\n", " ", " x", NULL});
    check_split(KILN_PRE_QWEN2, t2,
                (const char *const[]){"I", "'M", " ", "1", "2", "3", "4", "5", " ok", "\r\n", " ",
                                      " x", NULL});
    check_split(KILN_PRE_DEEPSEEK_LLM, "Hello world\n123 \xE4\xBD\xA0\xE5\xA5\xBD!!",
                (const char *const[]){"Hello", " world", "\n", "123", " ",
                                      "\xE4\xBD\xA0\xE5\xA5\xBD", "!!", NULL});
    /* Trailing whitespace stays one word; U+3000 is whitespace, not CJK. */
    check_split(KILN_PRE_DEEPSEEK_LLM, "ab  \xE3\x80\x80",
                (const char *const[]){"ab", "  \xE3\x80\x80", NULL});
}

/* ---- streaming detokenizer ---- */

/* Pushes token and returns what came out (static buffer). */
static const char *push(kiln_detok *d, int32_t token, size_t *len) {
    static char buf[256];
    size_t need = 0;
    *len = 0;
    if (kiln_detok_push(d, token, NULL, 0, &need) != KILN_OK) return NULL;
    if (need > 0 && kiln_detok_push(d, token, buf, need - 1, len) != KILN_E_BUFFER_TOO_SMALL)
        return NULL;
    if (kiln_detok_push(d, token, buf, sizeof buf, len) != KILN_OK || *len != need) return NULL;
    return buf;
}

static void test_detok_stream(void) {
    kiln_vocab *v = load_vocab("vocab/vocab-llama-spm.gguf");
    if (!v) KT_SKIP("../shared vocab not found");
    kiln_detok *d = NULL;
    KT_CHECK_OK(kiln_detok_create_vocab(v, 0, &d));
    const int32_t byte0 = 3; /* "<0x00>" */
    size_t len;
    const char *out;
    /* 日 = E6 97 A5, one byte token at a time. */
    out = push(d, byte0 + 0xE6, &len);
    KT_CHECK(out && len == 0);
    out = push(d, byte0 + 0x97, &len);
    KT_CHECK(out && len == 0);
    out = push(d, byte0 + 0xA5, &len);
    KT_CHECK(out && len == 3 && memcmp(out, "\xE6\x97\xA5", 3) == 0);
    /* An invalid byte is replaced at once. */
    out = push(d, byte0 + 0xFF, &len);
    KT_CHECK(out && len == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0);
    /* A sequence cut short by a normal piece: U+FFFD, then the piece. */
    out = push(d, byte0 + 0xE6, &len);
    KT_CHECK(out && len == 0);
    out = push(d, 15043, &len); /* "▁Hello" */
    KT_CHECK(out && len == 9 && memcmp(out, "\xEF\xBF\xBD Hello", 9) == 0);
    /* Flush gives the held-back bytes as U+FFFD and resets. */
    out = push(d, byte0 + 0xF0, &len);
    KT_CHECK(out && len == 0);
    out = push(d, byte0 + 0x9F, &len);
    KT_CHECK(out && len == 0);
    char buf[16];
    size_t n = 0;
    KT_CHECK_OK(kiln_detok_flush(d, NULL, 0, &n));
    KT_CHECK(n == 3);
    KT_CHECK(kiln_detok_flush(d, buf, 2, &n) == KILN_E_BUFFER_TOO_SMALL && n == 3);
    KT_CHECK_OK(kiln_detok_flush(d, buf, sizeof buf, &n));
    KT_CHECK(n == 3 && memcmp(buf, "\xEF\xBF\xBD", 3) == 0);
    KT_CHECK_OK(kiln_detok_flush(d, buf, sizeof buf, &n));
    KT_CHECK(n == 0);
    /* Control tokens render unless skipped. */
    out = push(d, 2, &len);
    KT_CHECK(out && len == 4 && memcmp(out, "</s>", 4) == 0);
    KT_CHECK(kiln_detok_push(d, 32000, buf, sizeof buf, &n) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_detok_push(d, -1, buf, sizeof buf, &n) == KILN_E_INVALID_ARG);
    kiln_detok_free(d);
    KT_CHECK_OK(kiln_detok_create_vocab(v, KILN_DETOK_SKIP_SPECIAL, &d));
    out = push(d, 2, &len);
    KT_CHECK(out && len == 0);
    kiln_detok_free(d);
    kiln_detok_free(NULL);
    KT_CHECK(kiln_detok_create_vocab(NULL, 0, &d) == KILN_E_INVALID_ARG && d == NULL);
    kiln_vocab_free(v);

    /* Byte-level BPE: a text with multi-byte characters streamed token by
     * token comes out whole, and every chunk is complete UTF-8. */
    v = load_vocab("models/tiny-target-f16.gguf");
    if (!v) return;
    const char *text = "Na\xC3\xAFve caf\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x99\x82 \xE6\x97\xA5\xE6\x9C\xAC";
    int32_t *ids = tok(v, text, strlen(text), 0, &n);
    KT_CHECK_OK(kiln_detok_create_vocab(v, 0, &d));
    char all[256];
    size_t total = 0;
    bool split_seen = false;
    for (size_t i = 0; ids && i < n; i++) {
        out = push(d, ids[i], &len);
        KT_CHECK(out != NULL);
        if (!out) break;
        size_t piece_len;
        kiln_vocab_piece(v, ids[i], 0, &piece_len);
        if (piece_len != len) split_seen = true;
        for (size_t j = 0; j < len;) {
            int r = kiln_utf8_check((const uint8_t *)out + j, len - j);
            KT_CHECK(r > 0);
            if (r <= 0) break;
            j += (size_t)r;
        }
        memcpy(all + total, out, len);
        total += len;
    }
    KT_CHECK_OK(kiln_detok_flush(d, all + total, sizeof all - total, &len));
    total += len;
    KT_CHECK(total == strlen(text) && memcmp(all, text, total) == 0);
    KT_CHECK(split_seen); /* the 4096-token vocab splits some characters */
    kiln_detok_free(d);
    free(ids);
    kiln_vocab_free(v);
}

/* ---- hostile input ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_invalid_utf8(void) {
    int loaded = 0;
    for (size_t k = 0; k < KILN_ARRAY_LEN(k_vocabs); k++) {
        char rel[128];
        snprintf(rel, sizeof rel, "vocab/vocab-%s.gguf", k_vocabs[k]);
        if (!kt_shared(rel)) continue;
        kiln_vocab *v = load_vocab(rel);
        if (!v) continue;
        loaded++;
        for (int round = 0; round < 200; round++) {
            char text[96];
            size_t len = (size_t)(rnd() % sizeof text);
            for (size_t i = 0; i < len; i++) {
                uint64_t r = rnd();
                /* Mostly bytes that make broken UTF-8, some ASCII. */
                text[i] = (char)(r % 3 == 0 ? 0x20 + (r >> 8) % 0x5F : (r >> 8) & 0xFF);
            }
            for (uint32_t flags = 0; flags < 4; flags++) {
                size_t n;
                int32_t *ids = tok(v, text, len, flags, &n);
                KT_CHECK(ids != NULL);
                for (size_t i = 0; ids && i < n; i++)
                    KT_CHECK(ids[i] >= 0 && ids[i] < kiln_vocab_n_tokens(v));
                free(ids);
            }
        }
        /* Random valid UTF-8 (no special-token syntax) round-trips. */
        for (int round = 0; round < 100; round++) {
            char text[400];
            size_t len = 0;
            for (int c = (int)(rnd() % 60); c > 0; c--) {
                static const uint32_t lo[] = {0x20, 0xA0, 0x370, 0x4E00, 0x1F300, 0x2000, 0x3000};
                static const uint32_t span[] = {0x5F, 0x500, 0x300, 0x5000, 0x300, 0x70, 0x100};
                size_t r = (size_t)(rnd() % KILN_ARRAY_LEN(lo));
                uint32_t cp = lo[r] + (uint32_t)(rnd() % span[r]);
                if (cp == '<' || cp == '[' || cp == 0x2581) continue;
                len += kiln_utf8_put(cp, text + len);
            }
            size_t n, bl;
            int32_t *ids = tok(v, text, len, 0, &n);
            char *back = ids ? detok(v, ids, n, 0, &bl) : NULL;
            KT_CHECKF(back && bl == len && memcmp(back, text, len) == 0,
                      "%s: random text %d does not round-trip", k_vocabs[k], round);
            free(back);
            free(ids);
        }
        kiln_vocab_free(v);
    }
    if (!loaded) KT_SKIP("../shared vocab not found");
}

/* ---- allocation failures ---- */

static void test_alloc_failures(void) {
    const char *path = kt_shared("models/tiny-target-f16.gguf");
    if (!path) KT_SKIP("../shared models not found");
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open(path, &g));
    if (!g) return;
    const char *text = "In the beginning God created the heaven and the earth.\n<|eos|>";
    int failures = 0;
    for (uint64_t n = 1; n < 10000; n++) {
        kiln_vocab *v = NULL;
        kiln_test_fail_alloc_after(n);
        kiln_status st = kiln_vocab_load(g, &v);
        size_t count = 0;
        if (st == KILN_OK)
            st = kiln_vocab_tokenize(v, text, strlen(text), KILN_TOKENIZE_ADD_BOS | KILN_TOKENIZE_PARSE_SPECIAL,
                                     NULL, 0, &count);
        kiln_detok *d = NULL;
        if (st == KILN_OK) st = kiln_detok_create_vocab(v, 0, &d);
        kiln_test_fail_alloc_after(0);
        kiln_detok_free(d);
        kiln_vocab_free(v);
        if (st == KILN_OK) {
            KT_CHECK(count > 10);
            break;
        }
        KT_CHECKF(st == KILN_E_OOM_HOST, "allocation %llu failed with %d (%s)",
                  (unsigned long long)n, st, kiln_last_error());
        if (st != KILN_E_OOM_HOST) break;
        failures++;
    }
    KT_CHECK(failures > 5);
    kiln_gguf_close(g);
}

/* ---- files that are not what they claim ---- */

static kiln_status load_from_writer(kiln_gguf_writer *w, kiln_vocab **v) {
    void *mem = NULL;
    size_t size = 0;
    kiln_gguf *g = NULL;
    *v = NULL;
    kiln_status st = kiln_gguf_writer_write_memory(w, &mem, &size);
    if (st == KILN_OK) st = kiln_gguf_open_memory(mem, size, &g);
    if (st == KILN_OK) st = kiln_vocab_load(g, v);
    kiln_gguf_close(g);
    kiln_free(mem);
    return st;
}

static void test_bad_files(void) {
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
    static const char *const dup[] = {"<unk>", "<s>", "</s>", "a", "a"};
    struct {
        const char *model, *pre;
        const char *const *tokens;
        uint64_t n;
        bool merges;
        kiln_status want;
        const char *msg;
    } cases[] = {
        {"bert", NULL, toks, 6, false, KILN_E_UNSUPPORTED, "bert"},
        {"gpt2", "foo-bar", toks, 6, true, KILN_E_UNSUPPORTED, "foo-bar"},
        {"gpt2", "gpt-2", toks, 6, false, KILN_E_FORMAT, "merges"},
        {"llama", NULL, NULL, 0, false, KILN_E_FORMAT, "tokens"},
        {NULL, NULL, toks, 6, false, KILN_E_FORMAT, "model"},
        {"llama", NULL, dup, 5, false, KILN_E_FORMAT, "duplicate"},
        {"llama", "default", toks, 6, false, KILN_OK, NULL},
        {"gpt2", "default", toks, 6, true, KILN_OK, NULL},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        kiln_gguf_writer *w = NULL;
        KT_CHECK_OK(kiln_gguf_writer_create(&w));
        if (!w) return;
        if (cases[i].model) kiln_gguf_set_str(w, "tokenizer.ggml.model", cases[i].model);
        if (cases[i].pre) kiln_gguf_set_str(w, "tokenizer.ggml.pre", cases[i].pre);
        if (cases[i].model && strcmp(cases[i].model, "llama") == 0)
            kiln_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", false);
        if (cases[i].tokens) kiln_gguf_set_arr_str(w, "tokenizer.ggml.tokens", cases[i].tokens, cases[i].n);
        if (cases[i].merges) {
            static const char *const merges[] = {"a b"};
            kiln_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 1);
        }
        kiln_vocab *v = NULL;
        kiln_status st = load_from_writer(w, &v);
        KT_CHECKF(st == cases[i].want, "case %zu: %d (%s)", i, st, kiln_last_error());
        if (cases[i].msg)
            KT_CHECKF(strstr(kiln_last_error(), cases[i].msg) != NULL, "case %zu: message '%s'", i,
                      kiln_last_error());
        KT_CHECK((st == KILN_OK) == (v != NULL));
        if (v && cases[i].merges) {
            /* A small BPE: "ab" merges, "c" is no token and vanishes. */
            size_t n;
            int32_t *ids = tok(v, "abc", 3, 0, &n);
            KT_CHECK(ids && n == 1 && ids[0] == 5);
            free(ids);
        } else if (v) {
            /* A small SPM without byte tokens or a prefix space: "ab"
             * merges, unknown bytes become <unk>. */
            size_t n;
            int32_t *ids = tok(v, "abz", 3, KILN_TOKENIZE_ADD_BOS, &n);
            KT_CHECK(ids && n == 3 && ids[0] == 1 && ids[1] == 5 && ids[2] == 0);
            free(ids);
        }
        kiln_vocab_free(v);
        kiln_gguf_writer_free(w);
    }
}

int main(void) {
    KT_RUN(test_vocab_vectors);
    KT_RUN(test_reference_tokens);
    KT_RUN(test_speed);
    KT_RUN(test_size_protocol);
    KT_RUN(test_getters);
    KT_RUN(test_parse_special);
    KT_RUN(test_pretokenizers);
    KT_RUN(test_detok_stream);
    KT_RUN(test_invalid_utf8);
    KT_RUN(test_alloc_failures);
    KT_RUN(test_bad_files);
    return kt_finish();
}
