/*
 * consumer.c - the "old binary" ABI check.
 *
 * The Makefile compiles this file once per header snapshot
 * test/abi/kiln-X.Y.Z.h (the public header as released in X.Y.Z) into
 * build/abi/consumer-X.Y.Z, and relinks it only when this file or the
 * snapshot changes, never because the library changed. test/abi.sh then runs
 * it against the freshly built libkiln.so.0 (LD_LIBRARY_PATH), as an
 * application built against an old release runs against a new one.
 *
 *     consumer-X.Y.Z SYMBOLS_FILE [MODEL.gguf]
 *
 * Exit status: 0 passed, 1 failed, 77 skipped (part of the API it needs is
 * not in the library yet).
 *
 * Every API function is referenced weakly so that, while the 0.1 API is
 * still being implemented, a function the library does not export yet makes
 * the check skip instead of failing to load. A function that is missing but
 * listed in the committed symbol list (SYMBOLS_FILE) fails: it was removed.
 *
 * Limits (see docs/ARCHITECTURE.md): the binary is compiled with today's
 * compiler from today's consumer.c, so it checks the layout and calling
 * convention of the snapshot header, not every behaviour of an old release.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

#pragma weak kiln_status_str
#pragma weak kiln_last_error
#pragma weak kiln_version
#pragma weak kiln_version_number
#pragma weak kiln_log_set_default
#pragma weak kiln_model_params_init_sized
#pragma weak kiln_model_load
#pragma weak kiln_model_free
#pragma weak kiln_model_info_init_sized
#pragma weak kiln_model_get_info
#pragma weak kiln_tokenize
#pragma weak kiln_detokenize
#pragma weak kiln_context_params_init_sized
#pragma weak kiln_context_create
#pragma weak kiln_context_free
#pragma weak kiln_batch_init_sized
#pragma weak kiln_decode
#pragma weak kiln_context_logits
#pragma weak kiln_sampler_params_init_sized

static int n_failed;
static int n_missing;
static char *symbols; /* the committed symbol list, one name per line */

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            printf("  FAIL consumer.c:%d: %s\n", __LINE__, #cond);             \
            n_failed++;                                                        \
        }                                                                      \
    } while (0)

static int in_symbol_list(const char *name) {
    size_t n = strlen(name);
    for (const char *p = symbols; p && *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return 1;
        p = end ? end + 1 : p + len;
    }
    return 0;
}

/* 1 if the function is there; otherwise records a skip or a failure. */
static int have(void (*fn)(void), const char *name) {
    if (fn) return 1;
    if (in_symbol_list(name)) {
        printf("  FAIL %s is in the symbol list but not in the library\n", name);
        n_failed++;
    } else {
        printf("  missing (not implemented yet): %s\n", name);
        n_missing++;
    }
    return 0;
}
#define HAVE(fn) have((void (*)(void))(fn), #fn)

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    char chunk[4096];
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + got + 1 > cap) {
            size_t ncap = (len + got + 1) * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + len, chunk, got);
        len += got;
    }
    fclose(f);
    if (!buf) buf = calloc(1, 1);
    else buf[len] = '\0';
    return buf;
}

/* Calls an _init function on a struct followed by guard bytes: a library
 * newer than this binary must not write past the struct size this binary
 * knows. struct_size is preset as a careful caller would. */
#define GUARD 64
#define CHECK_INIT(type, init_fn)                                              \
    do {                                                                       \
        if (!HAVE(init_fn##_sized)) break;                                     \
        unsigned char buf_[sizeof(type) + GUARD];                              \
        memset(buf_, 0xA5, sizeof buf_);                                       \
        type *p_ = (type *)(void *)buf_;                                       \
        p_->struct_size = (uint32_t)sizeof(type);                              \
        init_fn(p_);                                                           \
        size_t bad_ = 0;                                                       \
        for (size_t i_ = sizeof(type); i_ < sizeof buf_; i_++)                 \
            bad_ += buf_[i_] != 0xA5;                                          \
        if (bad_) printf("  FAIL %s wrote past sizeof(%s)\n", #init_fn, #type); \
        if (p_->struct_size != sizeof(type))                                   \
            printf("  FAIL %s: struct_size %u, expected %u\n", #init_fn,       \
                   (unsigned)p_->struct_size, (unsigned)sizeof(type));         \
        if (bad_ || p_->struct_size != sizeof(type)) n_failed++;               \
    } while (0)

static int log_calls;
static void log_cb(int32_t level, const char *msg, void *user) {
    (void)level;
    (void)msg;
    (void)user;
    log_calls++;
}

static int argmax(const float *x, int32_t n) {
    int best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int)i;
    return best;
}

/* End to end with the API of the snapshot: load, tokenize, greedy decode,
 * detokenize; frees the model before the context (any order is safe). */
static void check_generation(const char *model_path) {
    if (!HAVE(kiln_model_load) || !HAVE(kiln_model_free) || !HAVE(kiln_tokenize) ||
        !HAVE(kiln_detokenize) || !HAVE(kiln_context_params_init_sized) ||
        !HAVE(kiln_context_create) || !HAVE(kiln_context_free) || !HAVE(kiln_batch_init_sized) ||
        !HAVE(kiln_decode) || !HAVE(kiln_context_logits) || !HAVE(kiln_model_params_init_sized))
        return;
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    kiln_model *model = NULL;
    kiln_status st = kiln_model_load(model_path, &mp, &model);
    if (st != KILN_OK) {
        printf("  FAIL kiln_model_load(%s) -> %d: %s\n", model_path, (int)st, kiln_last_error());
        n_failed++;
        return;
    }
    if (HAVE(kiln_model_info_init_sized) && HAVE(kiln_model_get_info)) {
        kiln_model_info info;
        kiln_model_info_init(&info);
        CHECK(kiln_model_get_info(model, &info) == KILN_OK);
        CHECK(strcmp(info.arch, "llama") == 0);
        CHECK(info.n_vocab == 4096);
    }
    const char *prompt = "In the beginning";
    int32_t tokens[64];
    size_t n_prompt = 0;
    CHECK(kiln_tokenize(model, prompt, strlen(prompt), KILN_TOKENIZE_ADD_BOS, NULL, 0,
                        &n_prompt) == KILN_OK);
    CHECK(n_prompt > 1 && n_prompt < 32);
    if (n_prompt <= 1 || n_prompt >= 32 ||
        kiln_tokenize(model, prompt, strlen(prompt), KILN_TOKENIZE_ADD_BOS, tokens, 64,
                      &n_prompt) != KILN_OK) {
        kiln_model_free(model);
        n_failed++;
        return;
    }
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 128;
    cp.n_threads = 2;
    kiln_context *ctx = NULL;
    st = kiln_context_create(model, &cp, &ctx);
    if (st != KILN_OK) {
        printf("  FAIL kiln_context_create -> %d: %s\n", (int)st, kiln_last_error());
        kiln_model_free(model);
        n_failed++;
        return;
    }
    size_t n = n_prompt;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = (uint32_t)n_prompt;
    b.tokens = tokens;
    for (int step = 0; step < 12; step++) {
        st = kiln_decode(ctx, &b);
        if (st != KILN_OK) {
            printf("  FAIL kiln_decode -> %d: %s\n", (int)st, kiln_last_error());
            n_failed++;
            break;
        }
        const float *logits = kiln_context_logits(ctx, -1);
        CHECK(logits != NULL);
        if (!logits) break;
        tokens[n] = argmax(logits, 4096);
        kiln_batch_init(&b);
        b.n_tokens = 1;
        b.tokens = &tokens[n];
        n++;
    }
    char text[512];
    size_t n_text = 0;
    st = kiln_detokenize(model, tokens, n, KILN_DETOK_SKIP_SPECIAL, text, sizeof text - 1,
                         &n_text);
    CHECK(st == KILN_OK);
    if (st == KILN_OK && n_text < sizeof text) {
        text[n_text] = '\0';
        printf("  greedy: \"%s\"\n", text);
        /* ../shared/README.md: greedy from "In the beginning" with tiny-target-f16 */
        CHECK(strncmp(text, "In the beginning of the year, in the day", 39) == 0);
    }
    kiln_model_free(model); /* before the context: the context keeps it alive */
    kiln_context_free(ctx);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SYMBOLS_FILE [MODEL.gguf]\n", argv[0]);
        return 2;
    }
    symbols = read_file(argv[1]);
    if (!symbols) {
        fprintf(stderr, "consumer: cannot read %s\n", argv[1]);
        return 1;
    }

    if (HAVE(kiln_version_number) && HAVE(kiln_version)) {
        uint32_t v = kiln_version_number();
        printf("  built against %d.%d.%d, running with %s\n", KILN_VERSION_MAJOR,
               KILN_VERSION_MINOR, KILN_VERSION_PATCH, kiln_version());
        CHECK(v / 10000 == KILN_VERSION_MAJOR); /* same SONAME major */
        CHECK(v >= KILN_VERSION_NUMBER);        /* never older than the header */
        unsigned ma = 0, mi = 0, pa = 0;
        CHECK(sscanf(kiln_version(), "%u.%u.%u", &ma, &mi, &pa) == 3);
        CHECK(ma * 10000 + mi * 100 + pa == v);
    }
    if (HAVE(kiln_status_str)) {
        CHECK(strcmp(kiln_status_str(KILN_OK), "ok") == 0);
        CHECK(strcmp(kiln_status_str(-12345), "unknown status") == 0);
        for (int s = KILN_E_INVALID_ARG; s >= KILN_E_INTERNAL; s--)
            CHECK(strcmp(kiln_status_str(s), "unknown status") != 0);
    }
    if (HAVE(kiln_last_error)) CHECK(kiln_last_error() != NULL);
    if (HAVE(kiln_log_set_default)) {
        kiln_log_set_default(log_cb, NULL, KILN_LOG_DEBUG);
        kiln_log_set_default(NULL, NULL, KILN_LOG_ERROR);
    }

    CHECK_INIT(kiln_model_params, kiln_model_params_init);
    CHECK_INIT(kiln_model_info, kiln_model_info_init);
    CHECK_INIT(kiln_context_params, kiln_context_params_init);
    CHECK_INIT(kiln_batch, kiln_batch_init);
    CHECK_INIT(kiln_sampler_params, kiln_sampler_params_init);

    if (argc > 2) check_generation(argv[2]);
    else printf("  no model given: generation not checked\n");

    free(symbols);
    if (n_failed) {
        printf("consumer: %d failure(s)\n", n_failed);
        return 1;
    }
    if (n_missing) {
        printf("consumer: passed what exists; %d function(s) not implemented yet\n", n_missing);
        return 77;
    }
    printf("consumer: ok\n");
    return 0;
}
