/*
 * test_api.c - the public API's contracts: NULL and bad arguments give
 * statuses, bad files give clear errors, a full context leaves the KV cache
 * as it was, handles may be freed in any order, short params structs get
 * defaults, allocation failures anywhere in load/create/decode return a
 * status and leak nothing (run under ASan/LSan in CI).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "kiln.h"
#include "kt.h"

static const char *target(void) { return kt_shared("models/tiny-target-q4_0.gguf"); }

static kiln_context *ctx_for(kiln_model *m, uint32_t n_ctx) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = 1;
    cp.n_seq_max = 2;
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(m, &cp, &c));
    return c;
}

static void test_status_strings(void) {
    KT_CHECK(strcmp(kiln_status_str(KILN_OK), "ok") == 0);
    KT_CHECK(strcmp(kiln_status_str(KILN_E_FORMAT), "malformed input") == 0);
    KT_CHECK(strcmp(kiln_status_str(-999), "unknown status") == 0);
    KT_CHECK(strcmp(kiln_version(), "0.1.0") == 0);
    KT_CHECK(kiln_version_number() == KILN_VERSION_NUMBER);
}

static void test_null_args(void) {
    kiln_model *m = (kiln_model *)1;
    KT_CHECK(kiln_model_load(NULL, NULL, &m) == KILN_E_INVALID_ARG && m == NULL);
    KT_CHECK(kiln_model_load("x", NULL, NULL) == KILN_E_INVALID_ARG);
    kiln_context *c = (kiln_context *)1;
    KT_CHECK(kiln_context_create(NULL, NULL, &c) == KILN_E_INVALID_ARG && c == NULL);
    KT_CHECK(kiln_decode(NULL, NULL) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_context_logits(NULL, 0) == NULL);
    KT_CHECK(kiln_kv_clear(NULL) == KILN_E_INVALID_ARG);
    size_t n;
    KT_CHECK(kiln_tokenize(NULL, "a", 1, 0, NULL, 0, &n) == KILN_E_INVALID_ARG);
    kiln_model_free(NULL);
    kiln_context_free(NULL);
    kiln_sampler_free(NULL);
    kiln_detokenizer_free(NULL);
}

static void test_bad_files(void) {
    kiln_model *m = NULL;
    KT_CHECK(kiln_model_load("/nonexistent/model.gguf", NULL, &m) == KILN_E_IO);
    KT_CHECK(strstr(kiln_last_error(), "/nonexistent/model.gguf") != NULL);
    char path[] = "/tmp/kiln-test-XXXXXX";
    int fd = mkstemp(path);
    KT_CHECK(fd >= 0);
    KT_CHECK(write(fd, "GGUF\x03\0\0\0garbage", 15) == 15);
    close(fd);
    KT_CHECK(kiln_model_load(path, NULL, &m) == KILN_E_FORMAT && m == NULL);
    KT_CHECK(kiln_last_error()[0] != '\0');
    unlink(path);
    /* a valid GGUF that is not a model */
    const char *voc = kt_shared("vocab/vocab-gpt-2.gguf");
    if (voc) {
        kiln_status st = kiln_model_load(voc, NULL, &m);
        KT_CHECK(st != KILN_OK && m == NULL);
    }
    /* unknown backend */
    if (target()) {
        kiln_model_params mp;
        kiln_model_params_init(&mp);
        mp.backend = "no-such-backend";
        KT_CHECK(kiln_model_load(target(), &mp, &m) == KILN_E_NOT_FOUND && m == NULL);
        mp.backend = NULL;
        mp.device = 7;
        KT_CHECK(kiln_model_load(target(), &mp, &m) == KILN_E_NOT_FOUND && m == NULL);
    }
}

static void test_short_params(void) {
    if (!target()) KT_SKIP("../shared not found");
    /* an "old" caller that knew only struct_size and n_ctx */
    struct { uint32_t struct_size; uint32_t n_ctx; } old = {8, 64};
    kiln_model *m = NULL;
    KT_CHECK_OK(kiln_model_load(target(), NULL, &m));
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(m, (const kiln_context_params *)&old, &c));
    struct { uint32_t struct_size; } tiny = {2};
    kiln_context *c2 = NULL;
    KT_CHECK(kiln_context_create(m, (const kiln_context_params *)&tiny, &c2) == KILN_E_INVALID_ARG);
    kiln_context_free(c);
    kiln_model_free(m);
}

static void decode_tokens(kiln_context *c, int n, int32_t seq, kiln_status want) {
    int32_t toks[256], seqs[256];
    for (int i = 0; i < n; i++) {
        toks[i] = 10 + i;
        seqs[i] = seq;
    }
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = (uint32_t)n;
    b.tokens = toks;
    b.seq_id = seqs;
    KT_CHECKF(kiln_decode(c, &b) == want, "decode of %d tokens: %s", n, kiln_last_error());
}

static void test_context_full(void) {
    if (!target()) KT_SKIP("../shared not found");
    kiln_model *m = NULL;
    KT_CHECK_OK(kiln_model_load(target(), NULL, &m));
    kiln_context *c = ctx_for(m, 64);
    kiln_kv *kv = kiln_context_kv(c);
    decode_tokens(c, 40, 0, KILN_OK);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == 39);
    decode_tokens(c, 30, 1, KILN_E_CONTEXT_FULL);
    KT_CHECK(strstr(kiln_context_last_error(c), "context full") != NULL);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == 39 && kiln_kv_seq_pos_max(kv, 1) == -1);
    decode_tokens(c, 24, 0, KILN_OK); /* exactly fills 64 */
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == 63);
    decode_tokens(c, 1, 0, KILN_E_CONTEXT_FULL);
    KT_CHECK_OK(kiln_kv_seq_rm(kv, 0, 32, -1));
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == 31);
    KT_CHECK(kiln_kv_seq_rm(kv, -1, 4, 8) == KILN_E_UNSUPPORTED); /* middle of every sequence */
    decode_tokens(c, 32, 1, KILN_OK);
    /* bad tokens, positions, sequence ids */
    int32_t bad = 1 << 30, pos = 5, seq = 9;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = 1;
    b.tokens = &bad;
    KT_CHECK(kiln_decode(c, &b) == KILN_E_INVALID_ARG);
    int32_t ok = 3;
    b.tokens = &ok;
    b.pos = &pos;
    KT_CHECK(kiln_decode(c, &b) == KILN_E_INVALID_ARG);
    b.pos = NULL;
    b.seq_id = &seq;
    KT_CHECK(kiln_decode(c, &b) == KILN_E_INVALID_ARG);
    b.n_tokens = 0;
    KT_CHECK(kiln_decode(c, &b) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == 31 && kiln_kv_seq_pos_max(kv, 1) == 31);
    kiln_context_free(c);
    kiln_model_free(m);
}

static void test_free_order(void) {
    if (!target()) KT_SKIP("../shared not found");
    for (int order = 0; order < 2; order++) {
        kiln_model *m = NULL;
        KT_CHECK_OK(kiln_model_load(target(), NULL, &m));
        kiln_context *c = ctx_for(m, 64);
        if (order == 0) {
            kiln_model_free(m); /* the context keeps it alive */
            decode_tokens(c, 5, 0, KILN_OK);
            kiln_context_free(c);
        } else {
            kiln_context_free(c);
            kiln_model_free(m);
        }
    }
}

/* Fail the n-th allocation for every n reached by load + create + decode. */
static void test_alloc_failures(void) {
    if (!target()) KT_SKIP("../shared not found");
    int failures = 0;
    for (uint64_t n = 1; n < 100000; n++) {
        kiln_test_fail_alloc_after(n);
        kiln_model *m = NULL;
        kiln_context *c = NULL;
        kiln_status st = kiln_model_load(target(), NULL, &m);
        if (st == KILN_OK) {
            kiln_context_params cp;
            kiln_context_params_init(&cp);
            cp.n_ctx = 64;
            cp.n_threads = 1;
            st = kiln_context_create(m, &cp, &c);
        }
        if (st == KILN_OK) {
            int32_t t[3] = {0, 5, 9};
            kiln_batch b;
            kiln_batch_init(&b);
            b.n_tokens = 3;
            b.tokens = t;
            st = kiln_decode(c, &b);
            if (st != KILN_OK) {
                /* the context is still usable after a failed decode */
                kiln_test_fail_alloc_after(0);
                KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == -1);
                KT_CHECK_OK(kiln_decode(c, &b));
            }
        }
        uint64_t made = kiln_test_fail_alloc_after(0);
        kiln_context_free(c);
        kiln_model_free(m);
        if (st == KILN_OK && made < n) break; /* every allocation was reached */
        KT_CHECKF(st == KILN_E_OOM_HOST, "allocation %llu: status %d (%s)", (unsigned long long)n, st,
                  kiln_last_error());
        failures++;
    }
    printf("  %d allocation failure points checked\n", failures);
    KT_CHECK(failures > 10);
}

int main(void) {
    KT_RUN(test_status_strings);
    KT_RUN(test_null_args);
    KT_RUN(test_bad_files);
    KT_RUN(test_short_params);
    KT_RUN(test_context_full);
    KT_RUN(test_free_order);
    KT_RUN(test_alloc_failures);
    return kt_finish();
}
