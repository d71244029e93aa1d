/*
 * test_lifecycle.c - the memory lifecycle of a context: device enumeration,
 * pool statistics, purge and cap, the ubatch callback (indices, token
 * counts, KV lengths, cancel with the cache left as before), automatic
 * purge, suspend/resume at both levels (continuations bit-identical to a
 * context never suspended, weights released only when every context of a
 * model is suspended), create/free and suspend/resume cycles that end at
 * the baseline, and allocation failures during suspend and resume.
 *
 * Written against the public API plus lib/context.h for the residency
 * checks; every backend is expected to pass it (the CPU backend here).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "internal.h"
#include "kiln.h"
#include "kt.h"

#define MODEL "models/tiny-target-q4_0.gguf"

static kiln_model *load(uint32_t flags) {
    const char *path = kt_shared(MODEL);
    if (!path) return NULL;
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.flags = flags;
    kiln_model *m = NULL;
    KT_CHECK_OK(kt_model_load(path, &mp, &m));
    return m;
}

static kiln_context_params params(void) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 512;
    cp.n_ubatch = 128;
    cp.n_seq_max = 2;
    cp.n_threads = 2;
    cp.kv_block_size = 16;
    return cp;
}

static kiln_context *make_ctx(kiln_model *m, const kiln_context_params *cp) {
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(m, cp, &c));
    return c;
}

/* n deterministic tokens starting from seed, all inside the vocabulary */
static void tokens(kiln_model *m, int32_t *t, uint32_t n, uint32_t seed) {
    uint32_t nv = (uint32_t)kiln_model_n_vocab(m);
    for (uint32_t i = 0; i < n; i++) t[i] = (int32_t)((seed * 131u + i * 7919u + 3u) % (nv - 1) + 1);
}

/* Decodes tokens at the end of sequence seq; logits of the last only. */
static kiln_status decode_seq(kiln_context *c, const int32_t *t, uint32_t n, int32_t seq) {
    int32_t *sid = malloc(n * sizeof *sid);
    for (uint32_t i = 0; i < n; i++) sid[i] = seq;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = t;
    b.seq_id = sid;
    kiln_status st = kiln_decode(c, &b);
    free(sid);
    return st;
}

static int32_t argmax(const float *l, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

static kiln_pool_stats pool(kiln_context *c) {
    kiln_pool_stats s;
    kiln_pool_stats_init(&s);
    KT_CHECK_OK(kiln_context_pool_stats(c, &s));
    return s;
}

/* ---- devices ---- */

static void test_devices(void) {
    KT_CHECK(kiln_backend_device_count("cpu") == 1);
    KT_CHECK(kiln_backend_device_count(NULL) == 1);
    KT_CHECK(kiln_backend_device_count("no-such-backend") == -1);
    KT_CHECK(strstr(kiln_last_error(), "no-such-backend") != NULL);
    kiln_device_info info;
    kiln_device_info_init(&info);
    KT_CHECK(info.struct_size == sizeof info);
    KT_CHECK_OK(kiln_backend_device_info("cpu", 0, &info));
    KT_CHECK(strcmp(info.name, "cpu") == 0);
    KT_CHECK(strcmp(info.backend, "cpu") == 0);
    KT_CHECK(info.mem_total > 0 && info.mem_free > 0 && info.mem_free <= info.mem_total);
    KT_CHECK(info.flags & KILN_DEVICE_HOST_MEMORY);
    KT_CHECK(kiln_backend_device_info("cpu", 1, &info) == KILN_E_NOT_FOUND);
    KT_CHECK(kiln_backend_device_info("cpu", -1, &info) == KILN_E_NOT_FOUND);
    KT_CHECK(kiln_backend_device_info("no-such-backend", 0, &info) == KILN_E_NOT_FOUND);
    KT_CHECK(kiln_backend_device_info("cpu", 0, NULL) == KILN_E_INVALID_ARG);
    /* an older caller's shorter struct: nothing past struct_size is written */
    unsigned char raw[sizeof(kiln_device_info)];
    memset(raw, 0xA5, sizeof raw);
    uint32_t short_size = (uint32_t)offsetof(kiln_device_info, backend);
    memcpy(raw, &short_size, sizeof short_size);
    KT_CHECK_OK(kiln_backend_device_info("cpu", 0, (kiln_device_info *)(void *)raw));
    KT_CHECK(strcmp((const char *)raw + offsetof(kiln_device_info, name), "cpu") == 0);
    for (size_t i = short_size; i < sizeof raw; i++) KT_CHECK(raw[i] == 0xA5);
}

/* ---- pools ---- */

static void test_pool_stats_and_purge(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    kiln_context_params cp = params();
    kiln_context *c = make_ctx(m, &cp);
    kiln_pool_stats s0 = pool(c);
    KT_CHECK(s0.bytes_in_use == 0 && s0.bytes_cached == 0 && s0.n_allocs == 0);
    KT_CHECK(s0.cap > 0); /* the CPU backend's default cap */
    int32_t t[40];
    tokens(m, t, 40, 1);
    KT_CHECK_OK(decode_seq(c, t, 40, 0));
    kiln_pool_stats s1 = pool(c);
    KT_CHECK(s1.n_allocs > 0 && s1.n_frees == s1.n_allocs);
    KT_CHECK(s1.bytes_in_use == 0);
    KT_CHECK(s1.bytes_cached > 0 && s1.bytes_peak >= s1.bytes_cached);
    KT_CHECK(s1.n_device_allocs >= 1 && s1.n_device_allocs <= s1.n_allocs);
    /* a second decode of the same shape reuses the cached buffer */
    KT_CHECK_OK(decode_seq(c, t, 40, 1));
    kiln_pool_stats s2 = pool(c);
    /* (the CPU backend takes one pool buffer per ubatch; GPU backends also
     * take scratch per operation, all of it from the cache) */
    KT_CHECK(s2.n_device_allocs == s1.n_device_allocs);
    KT_CHECK(kt_on_cpu() ? s2.n_allocs == s1.n_allocs + 1 : s2.n_allocs > s1.n_allocs);
    KT_CHECK_OK(kiln_context_pool_purge(c));
    kiln_pool_stats s3 = pool(c);
    KT_CHECK(s3.bytes_cached == 0 && s3.bytes_in_use == 0);
    KT_CHECK(s3.bytes_peak == s2.bytes_peak); /* peak is history */
    KT_CHECK(kiln_context_pool_purge(NULL) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_context_pool_stats(c, NULL) == KILN_E_INVALID_ARG);
    kiln_context_free(c);
    kiln_model_free(m);
}

static void test_pool_cap(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    kiln_context_params cp = params();
    cp.pool_cap = 1u << 20;
    kiln_context *c = make_ctx(m, &cp);
    KT_CHECK(pool(c).cap == (1u << 20));
    int32_t t[200];
    tokens(m, t, 200, 2);
    KT_CHECK_OK(decode_seq(c, t, 200, 0));
    kiln_pool_stats s = pool(c);
    KT_CHECK(s.bytes_cached <= (1u << 20));
    printf("  cap 1 MiB: cached %llu, peak %llu\n", (unsigned long long)s.bytes_cached,
           (unsigned long long)s.bytes_peak);
    /* raise the cap: the next buffers are cached; lower it: trimmed at once */
    KT_CHECK_OK(kiln_context_pool_set_cap(c, 0));
    KT_CHECK(pool(c).cap == 0);
    KT_CHECK_OK(decode_seq(c, t, 150, 1));
    KT_CHECK(pool(c).bytes_cached > (1u << 20));
    KT_CHECK_OK(kiln_context_pool_set_cap(c, 4096));
    s = pool(c);
    KT_CHECK(s.cap == 4096 && s.bytes_cached <= 4096);
    KT_CHECK(kiln_context_pool_set_cap(NULL, 1) == KILN_E_INVALID_ARG);
    kiln_context_free(c);
    kiln_model_free(m);
}

/* ---- the ubatch callback ---- */

typedef struct cb_log {
    uint32_t n_calls;
    uint32_t index[16], n_tokens[16], kv_len[16];
    int32_t cancel_at;          /* cancel when index == cancel_at (-1: never) */
    int32_t pos_max_seen;       /* kiln_kv_seq_pos_max(seq 0) inside */
    kiln_status nested_decode, nested_suspend, nested_resume, purge;
    uint32_t cached_nonzero;    /* prefill ubatches that left bytes cached */
} cb_log;

static int32_t on_ubatch(kiln_context *ctx, uint32_t index, uint32_t n_tokens, uint32_t kv_len, void *user) {
    cb_log *lg = user;
    if (lg->n_calls < 16) {
        lg->index[lg->n_calls] = index;
        lg->n_tokens[lg->n_calls] = n_tokens;
        lg->kv_len[lg->n_calls] = kv_len;
    }
    lg->n_calls++;
    lg->pos_max_seen = kiln_kv_seq_pos_max(kiln_context_kv(ctx), 0);
    int32_t t = 1;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = 1;
    b.tokens = &t;
    lg->nested_decode = kiln_decode(ctx, &b);
    lg->nested_suspend = kiln_context_suspend(ctx, 1);
    lg->nested_resume = kiln_context_resume(ctx);
    kiln_pool_stats s;
    kiln_pool_stats_init(&s);
    if (kiln_context_pool_stats(ctx, &s) == KILN_OK && n_tokens > 1 && s.bytes_cached != 0) lg->cached_nonzero++;
    return lg->cancel_at >= 0 && (int32_t)index == lg->cancel_at;
}

static void test_ubatch_callback(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    cb_log lg;
    memset(&lg, 0, sizeof lg);
    lg.cancel_at = -1;
    kiln_context_params cp = params();
    cp.ubatch_cb = on_ubatch;
    cp.ubatch_user = &lg;
    kiln_context *c = make_ctx(m, &cp);
    int32_t t[300];
    tokens(m, t, 300, 3);
    KT_CHECK_OK(decode_seq(c, t, 300, 0));
    KT_CHECK(lg.n_calls == 3);
    const uint32_t want_n[3] = {128, 128, 44}, want_kv[3] = {128, 256, 300};
    for (uint32_t i = 0; i < 3; i++) {
        KT_CHECKF(lg.index[i] == i && lg.n_tokens[i] == want_n[i] && lg.kv_len[i] == want_kv[i],
                  "ubatch %u: index %u, %u tokens, kv_len %u", i, lg.index[i], lg.n_tokens[i], lg.kv_len[i]);
    }
    KT_CHECK(lg.pos_max_seen == -1); /* lengths are committed when the decode ends */
    KT_CHECK(lg.nested_decode == KILN_E_BUSY);
    KT_CHECK(lg.nested_suspend == KILN_E_BUSY);
    KT_CHECK(lg.nested_resume == KILN_E_BUSY);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 299);
    /* one more token: one ubatch of 1 at kv_len 301 */
    memset(&lg, 0, sizeof lg);
    lg.cancel_at = -1;
    KT_CHECK_OK(decode_seq(c, t, 1, 0));
    KT_CHECK(lg.n_calls == 1 && lg.index[0] == 0 && lg.n_tokens[0] == 1 && lg.kv_len[0] == 301);
    kiln_context_free(c);
    kiln_model_free(m);
}

static void test_cancel(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    const int32_t nv = kiln_model_n_vocab(m);
    int32_t a[40], big[300], next = 5;
    tokens(m, a, 40, 4);
    tokens(m, big, 300, 5);
    /* reference: prompt a, then one token */
    kiln_context_params cp = params();
    kiln_context *ref = make_ctx(m, &cp);
    KT_CHECK_OK(decode_seq(ref, a, 40, 0));
    KT_CHECK_OK(decode_seq(ref, &next, 1, 0));
    float *want = malloc((size_t)nv * sizeof(float));
    memcpy(want, kiln_context_logits(ref, -1), (size_t)nv * sizeof(float));

    cb_log lg;
    memset(&lg, 0, sizeof lg);
    lg.cancel_at = -1;
    cp.ubatch_cb = on_ubatch;
    cp.ubatch_user = &lg;
    kiln_context *c = make_ctx(m, &cp);
    KT_CHECK_OK(decode_seq(c, a, 40, 0));
    lg.cancel_at = 1; /* stop after the 2nd ubatch of the 300-token batch */
    lg.n_calls = 0;
    KT_CHECK(decode_seq(c, big, 300, 0) == KILN_E_CANCELLED);
    KT_CHECK(lg.n_calls == 2);
    KT_CHECK(strstr(kiln_context_last_error(c), "cancel") != NULL);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 39);
    KT_CHECK(kiln_context_logits(c, -1) == NULL);
    /* the next decode continues the sequence exactly */
    lg.cancel_at = -1;
    KT_CHECK_OK(decode_seq(c, &next, 1, 0));
    const float *got = kiln_context_logits(c, -1);
    KT_CHECK(got && memcmp(got, want, (size_t)nv * sizeof(float)) == 0);
    /* cancel at the last ubatch of a two-sequence batch: both roll back */
    lg.cancel_at = 0;
    KT_CHECK(decode_seq(c, big, 10, 1) == KILN_E_CANCELLED);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 1) == -1);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 40);
    free(want);
    kiln_context_free(c);
    kiln_context_free(ref);
    kiln_model_free(m);
}

static void test_auto_purge(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    int32_t t[300];
    tokens(m, t, 300, 6);
    uint64_t peak[2];
    for (int purge = 0; purge < 2; purge++) {
        cb_log lg;
        memset(&lg, 0, sizeof lg);
        lg.cancel_at = -1;
        kiln_context_params cp = params();
        cp.ubatch_cb = on_ubatch;
        cp.ubatch_user = &lg;
        if (purge) cp.flags |= KILN_CONTEXT_AUTO_PURGE;
        kiln_context *c = make_ctx(m, &cp);
        KT_CHECK_OK(decode_seq(c, t, 300, 0));
        KT_CHECK(lg.n_calls == 3);
        if (purge) KT_CHECK(lg.cached_nonzero == 0);
        else KT_CHECK(lg.cached_nonzero == 3);
        kiln_pool_stats s = pool(c);
        if (purge) KT_CHECK(s.bytes_cached == 0);
        /* a single-token ubatch is not a prefill: its buffer stays cached */
        KT_CHECK_OK(decode_seq(c, t, 1, 0));
        if (purge) KT_CHECK(pool(c).bytes_cached > 0);
        peak[purge] = s.bytes_peak;
        kiln_context_free(c);
    }
    printf("  pool peak over a 300-token prefill: %llu bytes without purge, %llu with\n",
           (unsigned long long)peak[0], (unsigned long long)peak[1]);
    KT_CHECK(peak[1] <= peak[0]);
    kiln_model_free(m);
}

/* ---- suspend / resume ---- */

/* Two sequences: prompts, then `steps` greedy tokens each, alternating;
 * suspend_at >= 0: suspend at that level after the prompts (and resume
 * explicitly when `explicit_resume`, else let decode resume). Returns the
 * logits of every step, n_vocab floats per step per sequence. */
static float *conversation(kiln_model *m, int32_t level, bool explicit_resume, uint32_t steps) {
    const int32_t nv = kiln_model_n_vocab(m);
    kiln_context_params cp = params();
    kiln_context *c = make_ctx(m, &cp);
    if (!c) return NULL;
    float *out = calloc((size_t)steps * 2 * nv, sizeof(float));
    int32_t p0[70], p1[33], next[2];
    tokens(m, p0, 70, 7);
    tokens(m, p1, 33, 8);
    KT_CHECK_OK(decode_seq(c, p0, 70, 0));
    next[0] = argmax(kiln_context_logits(c, -1), nv);
    KT_CHECK_OK(decode_seq(c, p1, 33, 1));
    next[1] = argmax(kiln_context_logits(c, -1), nv);
    for (uint32_t i = 0; i < steps; i++) {
        if (level > 0 && i == 1) {
            KT_CHECK_OK(kiln_context_suspend(c, level));
            KT_CHECK(kiln_context_suspended(c) == level);
            KT_CHECK(pool(c).bytes_cached == 0);
            KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 70);
            if (explicit_resume) {
                KT_CHECK_OK(kiln_context_resume(c));
                KT_CHECK(kiln_context_suspended(c) == 0);
            }
        }
        for (int32_t s = 0; s < 2; s++) {
            KT_CHECK_OK(decode_seq(c, &next[s], 1, s));
            KT_CHECK(kiln_context_suspended(c) == 0);
            const float *l = kiln_context_logits(c, -1);
            if (!l) continue;
            memcpy(out + ((size_t)i * 2 + s) * nv, l, (size_t)nv * sizeof(float));
            next[s] = argmax(l, nv);
        }
    }
    kiln_context_free(c);
    return out;
}

static void test_suspend_resume_identical(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    kiln_model *mc = load(KILN_MODEL_NO_MMAP); /* weights in a device copy */
    const uint32_t steps = 4;
    const size_t bytes = (size_t)steps * 2 * kiln_model_n_vocab(m) * sizeof(float);
    float *ref = conversation(m, 0, false, steps);
    struct {
        kiln_model *m;
        int32_t level;
        bool explicit_resume;
    } runs[] = {{m, 1, true}, {m, 1, false}, {m, 2, true}, {m, 2, false}, {mc, 1, true}, {mc, 2, true}, {mc, 2, false}};
    for (size_t r = 0; r < KILN_ARRAY_LEN(runs); r++) {
        float *got = conversation(runs[r].m, runs[r].level, runs[r].explicit_resume, steps);
        KT_CHECKF(ref && got && memcmp(ref, got, bytes) == 0, "run %zu (level %d, %s model, %s resume) differs", r,
                  runs[r].level, runs[r].m == mc ? "copied" : "mapped", runs[r].explicit_resume ? "explicit" : "decode");
        free(got);
    }
    free(ref);
    kiln_model_free(mc);
    kiln_model_free(m);
}

static void test_suspend_states(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared not found");
    kiln_context_params cp = params();
    kiln_context *c = make_ctx(m, &cp);
    KT_CHECK(kiln_context_suspend(c, 0) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_context_suspend(c, 3) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_context_suspend(NULL, 1) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_context_resume(NULL) == KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_context_resume(c)); /* active: no-op */
    KT_CHECK_OK(kiln_context_suspend(c, 1)); /* empty cache */
    KT_CHECK_OK(kiln_context_suspend(c, 1));
    KT_CHECK(kiln_context_suspended(c) == 1);
    KT_CHECK_OK(kiln_context_suspend(c, 2)); /* deepens */
    KT_CHECK_OK(kiln_context_suspend(c, 1)); /* shallower: no-op */
    KT_CHECK(kiln_context_suspended(c) == 2);
    if (kt_on_cpu()) KT_CHECK(m->weights != NULL); /* zero-copy: nothing to release */
    KT_CHECK_OK(kiln_context_resume(c));
    KT_CHECK_OK(kiln_context_resume(c));
    KT_CHECK(kiln_context_suspended(c) == 0);
    /* the KV handle stays valid and usable while suspended */
    int32_t t[20];
    tokens(m, t, 20, 9);
    KT_CHECK_OK(decode_seq(c, t, 20, 0));
    KT_CHECK_OK(kiln_context_suspend(c, 1));
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 19);
    KT_CHECK_OK(kiln_kv_seq_rm(kiln_context_kv(c), 0, 10, -1));
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == 9);
    KT_CHECK_OK(decode_seq(c, t + 10, 10, 0));
    KT_CHECK(kiln_context_suspended(c) == 0);
    /* KV statistics follow the cache to the host and back */
    kiln_kv_stats ks;
    kiln_kv_stats_init(&ks);
    KT_CHECK_OK(kiln_kv_get_stats(kiln_context_kv(c), &ks));
    const uint64_t dev_bytes = ks.bytes_device;
    KT_CHECK(dev_bytes > 0 && ks.bytes_host == 0);
    KT_CHECK_OK(kiln_context_suspend(c, 1));
    KT_CHECK_OK(kiln_kv_get_stats(kiln_context_kv(c), &ks));
    KT_CHECK(ks.bytes_device == 0 && ks.bytes_host > 0 && ks.bytes_host < dev_bytes);
    /* operations that move KV rows resume the context first */
    size_t n_exp = 0;
    KT_CHECK_OK(kiln_kv_seq_export(kiln_context_kv(c), 0, NULL, 0, &n_exp));
    void *exp = malloc(n_exp);
    KT_CHECK_OK(kiln_kv_seq_export(kiln_context_kv(c), 0, exp, n_exp, &n_exp));
    KT_CHECK(kiln_context_suspended(c) == 0);
    KT_CHECK_OK(kiln_kv_get_stats(kiln_context_kv(c), &ks));
    KT_CHECK(ks.bytes_device == dev_bytes && ks.bytes_host == 0);
    KT_CHECK_OK(kiln_context_suspend(c, 2));
    KT_CHECK_OK(kiln_kv_seq_import(kiln_context_kv(c), 1, exp, n_exp));
    KT_CHECK(kiln_context_suspended(c) == 0);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 1) == 19);
    KT_CHECK_OK(kiln_context_suspend(c, 1));
    KT_CHECK_OK(kiln_kv_seq_offload(kiln_context_kv(c), 1));
    KT_CHECK(kiln_context_suspended(c) == 0);
    free(exp);
    /* freeing a suspended context is clean (ASan checks) */
    KT_CHECK_OK(kiln_context_suspend(c, 2));
    kiln_context_free(c);
    kiln_model_free(m);
}

/* Weights of a model shared by two contexts are released only when both
 * are suspended at level 2, and come back with the first resume. */
static void test_weights_residency(void) {
    kiln_model *m = load(KILN_MODEL_NO_MMAP);
    if (!m) KT_SKIP("../shared not found");
    kiln_context_params cp = params();
    kiln_context *a = make_ctx(m, &cp), *b = make_ctx(m, &cp);
    KT_CHECK(m->weights && m->weights_holds == 2);
    KT_CHECK_OK(kiln_context_suspend(a, 2));
    KT_CHECK(m->weights != NULL); /* b still holds them */
    KT_CHECK_OK(kiln_context_suspend(b, 1));
    KT_CHECK(m->weights != NULL);
    KT_CHECK_OK(kiln_context_suspend(b, 2));
    KT_CHECK(m->weights == NULL && m->layers[0].wq.buf == NULL);
    KT_CHECK_OK(kiln_context_resume(a));
    KT_CHECK(m->weights != NULL && m->layers[0].wq.buf == m->weights && m->weights_holds == 1);
    KT_CHECK_OK(kiln_context_suspend(a, 2));
    KT_CHECK(m->weights == NULL);
    /* a new context brings the weights back */
    kiln_context *c = make_ctx(m, &cp);
    KT_CHECK(m->weights != NULL);
    int32_t t[8];
    tokens(m, t, 8, 10);
    KT_CHECK_OK(decode_seq(c, t, 8, 0));
    kiln_context_free(c); /* last holder gone with a and b parked: released */
    KT_CHECK(m->weights == NULL);
    kiln_model_free(m);    /* contexts keep the model alive */
    KT_CHECK_OK(decode_seq(b, t, 8, 0)); /* resumes b, re-uploads */
    kiln_context_free(a);
    kiln_context_free(b);
}

/* ---- cycles ---- */

/* KILN_LIFECYCLE_CYCLES (default 200): fewer for slow backends (lavapipe). */
static int n_cycles(void) {
    const char *s = getenv("KILN_LIFECYCLE_CYCLES");
    int n = s && *s ? atoi(s) : 200;
    return n > 0 ? n : 200;
}

static void test_cycles(void) {
    if (!kt_shared(MODEL)) KT_SKIP("../shared not found");
    const int cycles = n_cycles();
    int32_t t[24];
    kiln_pool_stats first;
    memset(&first, 0, sizeof first);
    for (int i = 0; i < cycles; i++) {
        kiln_model *m = load(0);
        if (!m) break;
        kiln_context_params cp = params();
        kiln_context *c = make_ctx(m, &cp);
        if (!c) {
            kiln_model_free(m);
            break;
        }
        tokens(m, t, 24, 11);
        KT_CHECK_OK(decode_seq(c, t, 24, 0));
        kiln_pool_stats s = pool(c);
        if (i == 0) first = s;
        KT_CHECK(s.bytes_in_use == 0 && s.bytes_cached == first.bytes_cached && s.n_allocs == first.n_allocs &&
                 s.bytes_peak == first.bytes_peak);
        if (i % 2) kiln_model_free(m); /* either free order */
        kiln_context_free(c);
        if (!(i % 2)) kiln_model_free(m);
    }
    kiln_model *m = load(0);
    kiln_context_params cp = params();
    kiln_context *c = make_ctx(m, &cp);
    kiln_pool_stats base = pool(c);
    for (int i = 0; i < cycles; i++) {
        tokens(m, t, 3, 12 + (uint32_t)i);
        KT_CHECK_OK(decode_seq(c, t, 3, i % 2));
        KT_CHECK_OK(kiln_context_suspend(c, 1 + i % 2));
        kiln_pool_stats s = pool(c);
        KT_CHECK(s.bytes_in_use == base.bytes_in_use && s.bytes_cached == base.bytes_cached);
        KT_CHECK_OK(kiln_context_resume(c));
        if (i % 50 == 49) KT_CHECK_OK(kiln_kv_clear(kiln_context_kv(c)));
    }
    KT_CHECK_OK(kiln_context_suspend(c, 1));
    kiln_pool_stats s = pool(c);
    KT_CHECK(s.bytes_in_use == 0 && s.bytes_cached == 0 && s.n_allocs == s.n_frees);
    kiln_context_free(c);
    kiln_model_free(m);
}

/* ---- allocation failures ---- */

static void fault_run(uint32_t model_flags, int32_t level) {
    kiln_model *m = load(model_flags);
    if (!m) return;
    const int32_t nv = kiln_model_n_vocab(m);
    kiln_context_params cp = params();
    int32_t p[50], next = 17;
    tokens(m, p, 50, 13);
    kiln_context *ref = make_ctx(m, &cp);
    KT_CHECK_OK(decode_seq(ref, p, 50, 0));
    KT_CHECK_OK(decode_seq(ref, &next, 1, 0));
    float *want = malloc((size_t)nv * sizeof(float));
    memcpy(want, kiln_context_logits(ref, -1), (size_t)nv * sizeof(float));
    kiln_context_free(ref);

    kiln_context *c = make_ctx(m, &cp);
    KT_CHECK_OK(decode_seq(c, p, 50, 0));
    int points = 0;
    for (uint64_t n = 1; n < 10000; n++) {
        kiln_test_fail_alloc_after(n);
        kiln_status st = kiln_context_suspend(c, level);
        uint64_t made = kiln_test_fail_alloc_after(0);
        if (st != KILN_OK) {
            points++;
            KT_CHECKF(st == KILN_E_OOM_HOST, "suspend, allocation %llu: %d", (unsigned long long)n, st);
            KT_CHECK(kiln_context_suspended(c) == 0); /* still active */
            continue;
        }
        KT_CHECK(kiln_context_suspended(c) == level);
        /* resume, failing the n-th allocation of it until none fails */
        for (uint64_t k = 1; k < 10000; k++) {
            kiln_test_fail_alloc_after(k);
            st = kiln_context_resume(c);
            uint64_t rmade = kiln_test_fail_alloc_after(0);
            if (st == KILN_OK) {
                KT_CHECK(rmade < k);
                break;
            }
            points++;
            KT_CHECKF(st == KILN_E_OOM_HOST, "resume, allocation %llu: %d", (unsigned long long)k, st);
            KT_CHECK(kiln_context_suspended(c) == level); /* still suspended */
        }
        KT_CHECK(kiln_context_suspended(c) == 0);
        if (made < n) break; /* suspend reached every allocation */
        KT_CHECK_OK(kiln_context_suspend(c, level)); /* the next n starts active again */
        KT_CHECK_OK(kiln_context_resume(c));
    }
    /* and the conversation continues exactly */
    KT_CHECK_OK(decode_seq(c, &next, 1, 0));
    const float *got = kiln_context_logits(c, -1);
    KT_CHECK(got && memcmp(got, want, (size_t)nv * sizeof(float)) == 0);
    printf("  level %d, %s weights: %d failure points\n", level, model_flags ? "copied" : "mapped", points);
    /* a plugin backend's own host allocations are its own (not injectable
     * here), so it reaches fewer points than the built-in CPU backend */
    KT_CHECK(points >= (kt_on_cpu() ? 2 : 1));
    free(want);
    kiln_context_free(c);
    kiln_model_free(m);
}

static void test_alloc_failures(void) {
    if (!kt_shared(MODEL)) KT_SKIP("../shared not found");
    fault_run(0, 1);
    fault_run(0, 2);
    fault_run(KILN_MODEL_NO_MMAP, 2);
}

int main(void) {
    KT_RUN(test_devices);
    KT_RUN(test_pool_stats_and_purge);
    KT_RUN(test_pool_cap);
    KT_RUN(test_ubatch_callback);
    KT_RUN(test_cancel);
    KT_RUN(test_auto_purge);
    KT_RUN(test_suspend_resume_identical);
    KT_RUN(test_suspend_states);
    KT_RUN(test_weights_residency);
    KT_RUN(test_cycles);
    KT_RUN(test_alloc_failures);
    return kt_finish();
}
