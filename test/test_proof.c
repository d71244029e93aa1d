/*
 * test_proof.c - issue 4's proof of the memory lifecycle, on the public API:
 *
 *  - cycles: load the target model, create a context, load the draft model,
 *    create a draft, decode, kiln_draft_generate, offload/restore and
 *    export/import a sequence, suspend/resume, then free the four handles in
 *    a seeded random order (every 24 cycles cover all 4! orders). After
 *    each cycle the library's live host bytes (kiln_alloc_live_bytes) are
 *    back at their baseline exactly.
 *  - suspend/resume cycles on one target with a draft attached and a
 *    sequence offloaded, levels 1 and 2 alternating, decoding between
 *    cycles: the pool is empty while suspended and its bytes_in_use is back
 *    at its baseline after each cycle; live host bytes stay within a few
 *    KiB of the first cycle's (block tables) and return to the baseline
 *    exactly after the teardown.
 *  - process RSS (/proc/self/statm, anonymous pages) grows by at most 1 MiB
 *    between cycle 50 and the last (only measured when there are enough cycles and no
 *    sanitizer or valgrind distorts it).
 *  - fault injection: for every allocation N reached by each step (load,
 *    create, draft create, decode, draft generate, offload, export, import,
 *    suspend, resume), failing the N-th returns a status, the handles then
 *    still work (the rest of the sequence runs) and free cleanly, and the
 *    live bytes return to the baseline (LeakSanitizer checks the rest in
 *    the sanitized suite).
 *
 * KILN_PROOF_CYCLES sets the number of cycles (default 500, 40 in an ASan
 * build; CI's valgrind run uses 5). KILN_PROOF_FAULT_STRIDE (default 1) tests
 * every k-th N only; KILN_PROOF_FAULT=0 skips the fault injection (the
 * valgrind run: ~7 s per injected run there; ASan/LSan covers it in the
 * sanitized suite); KILN_PROOF_THREADS
 * (default 2) sets the contexts' threads (1 under valgrind, which runs
 * threads one at a time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "kiln.h"
#include "kt.h"

#define TARGET "models/tiny-target-q4_0.gguf"
#define DRAFT "models/tiny-draft-f16.gguf"
#define N_PROMPT 8
#define N_GEN 4
#define SEQ_MAIN 0 /* kiln_draft_generate's sequence */
#define SEQ_SIDE 1 /* decoded, offloaded, exported and imported */

#if defined(__SANITIZE_ADDRESS__)
#define KILN_PROOF_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KILN_PROOF_SANITIZED 1
#endif
#endif
#ifndef KILN_PROOF_SANITIZED
#define KILN_PROOF_SANITIZED 0
#endif

static unsigned env_uint(const char *name, unsigned def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    long v = strtol(s, NULL, 10);
    return v > 0 ? (unsigned)v : def;
}

/* Sanitized builds run ~20x slower: a smaller default keeps the sanitized
 * suite fast (KILN_PROOF_CYCLES still overrides). */
static unsigned n_cycles(void) { return env_uint("KILN_PROOF_CYCLES", KILN_PROOF_SANITIZED ? 40 : 500); }

/* Anonymous resident set size in bytes (statm's resident minus its shared,
 * file-backed pages), 0 if unknown. File pages are left out on purpose:
 * decoding new token ids touches new rows of the mmapped weights, which
 * raises the full RSS without any memory being leaked. */
static uint64_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0, shared = 0;
    int n = fscanf(f, "%lu %lu %lu", &size, &resident, &shared);
    fclose(f);
    if (n != 3 || shared > resident) return 0;
    return (uint64_t)(resident - shared) * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* ---- the handles and the steps ------------------------------------------ */

typedef struct handles {
    kiln_model *tm, *dm;
    kiln_context *tc;
    kiln_draft *d;
} handles;

enum {
    STEP_LOAD_TARGET,
    STEP_CREATE_CONTEXT,
    STEP_LOAD_DRAFT,
    STEP_CREATE_DRAFT,
    STEP_DECODE,
    STEP_GENERATE,
    STEP_OFFLOAD,
    STEP_RESTORE,
    STEP_EXPORT_IMPORT,
    STEP_SUSPEND,
    STEP_RESUME,
    STEP_DECODE_AGAIN,
    N_STEPS
};

static const char *const step_names[N_STEPS] = {
    "load target", "create context", "load draft", "create draft", "decode", "draft generate",
    "offload",     "restore",        "export+import", "suspend",  "resume", "decode again",
};

static void prompt_tokens(int32_t *t, uint32_t n, uint32_t seed) {
    for (uint32_t i = 0; i < n; i++) t[i] = (int32_t)((seed * 131u + i * 7919u + 3u) % 900u + 10u);
}

static kiln_status decode_on(kiln_context *c, const int32_t *t, uint32_t n, int32_t seq) {
    int32_t sid[N_PROMPT];
    for (uint32_t i = 0; i < n; i++) sid[i] = seq;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = t;
    b.seq_id = sid;
    return kiln_decode(c, &b);
}

static kiln_status export_import(kiln_kv *kv, int32_t seq) {
    size_t n = 0;
    kiln_status st = kiln_kv_seq_export(kv, seq, NULL, 0, &n);
    if (st != KILN_OK && st != KILN_E_BUFFER_TOO_SMALL) return st;
    void *buf = malloc(n ? n : 1);
    if (!buf) return KILN_E_OOM_HOST;
    st = kiln_kv_seq_export(kv, seq, buf, n, &n);
    if (st == KILN_OK) st = kiln_kv_seq_import(kv, seq, buf, n);
    free(buf);
    return st;
}

/* Runs one step on h. Steps whose handles are missing (an earlier step
 * failed) are skipped with KILN_OK. */
static kiln_status run_step(handles *h, int step, int32_t suspend_level) {
    int32_t t[N_PROMPT];
    prompt_tokens(t, N_PROMPT, (uint32_t)step);
    switch (step) {
    case STEP_LOAD_TARGET:
        return kt_model_load(kt_shared(TARGET), NULL, &h->tm);
    case STEP_CREATE_CONTEXT: {
        if (!h->tm) return KILN_OK;
        kiln_context_params cp;
        kiln_context_params_init(&cp);
        cp.n_ctx = 256;
        cp.n_ubatch = 64;
        cp.n_seq_max = 2;
        cp.n_threads = (int32_t)env_uint("KILN_PROOF_THREADS", 2);
        cp.kv_block_size = 16;
        return kiln_context_create(h->tm, &cp, &h->tc);
    }
    case STEP_LOAD_DRAFT:
        return kt_model_load(kt_shared(DRAFT), NULL, &h->dm);
    case STEP_CREATE_DRAFT: {
        if (!h->tc || !h->dm) return KILN_OK;
        kiln_draft_params dp;
        kiln_draft_params_init(&dp);
        dp.n_draft = 4;
        return kiln_draft_create(h->tc, h->dm, &dp, &h->d);
    }
    case STEP_DECODE:
        if (!h->tc) return KILN_OK;
        if (kiln_kv_seq_pos_max(kiln_context_kv(h->tc), SEQ_SIDE) >= 128)
            kiln_kv_seq_rm(kiln_context_kv(h->tc), SEQ_SIDE, 0, -1);
        return decode_on(h->tc, t, N_PROMPT, SEQ_SIDE);
    case STEP_GENERATE: {
        if (!h->d) return KILN_OK;
        int32_t out[N_GEN];
        size_t n_out = 0;
        return kiln_draft_generate(h->d, t, N_PROMPT, N_GEN, NULL, out, N_GEN, &n_out);
    }
    case STEP_OFFLOAD:
        return h->tc ? kiln_kv_seq_offload(kiln_context_kv(h->tc), SEQ_SIDE) : KILN_OK;
    case STEP_RESTORE:
        return h->tc ? kiln_kv_seq_restore(kiln_context_kv(h->tc), SEQ_SIDE) : KILN_OK;
    case STEP_EXPORT_IMPORT:
        return h->tc ? export_import(kiln_context_kv(h->tc), SEQ_SIDE) : KILN_OK;
    case STEP_SUSPEND:
        return h->tc ? kiln_context_suspend(h->tc, suspend_level) : KILN_OK;
    case STEP_RESUME:
        return h->tc ? kiln_context_resume(h->tc) : KILN_OK;
    case STEP_DECODE_AGAIN:
        return h->tc ? decode_on(h->tc, t, 1, SEQ_SIDE) : KILN_OK;
    }
    return KILN_E_INTERNAL;
}

/* Frees the four handles in the order given by perm (a permutation of
 * 0..3: 0 target model, 1 context, 2 draft model, 3 draft). */
static void free_in_order(handles *h, const int perm[4]) {
    for (int i = 0; i < 4; i++) {
        switch (perm[i]) {
        case 0: kiln_model_free(h->tm); h->tm = NULL; break;
        case 1: kiln_context_free(h->tc); h->tc = NULL; break;
        case 2: kiln_model_free(h->dm); h->dm = NULL; break;
        case 3: kiln_draft_free(h->d); h->d = NULL; break;
        }
    }
}

/* The k-th (0..23) permutation of 0..3, in lexicographic order. */
static void nth_perm(int k, int perm[4]) {
    int pool[4] = {0, 1, 2, 3}, n = 4;
    static const int fact[4] = {6, 2, 1, 1};
    for (int i = 0; i < 4; i++) {
        int j = k / fact[i];
        k %= fact[i];
        perm[i] = pool[j];
        for (int m = j; m < n - 1; m++) pool[m] = pool[m + 1];
        n--;
    }
}

/* ---- cycles --------------------------------------------------------------- */

static void test_full_cycles(void) {
    if (!kt_shared(TARGET) || !kt_shared(DRAFT)) KT_SKIP("tiny models missing");
    unsigned n = n_cycles();
    uint64_t rng = 0x5EED0F4B00C0FFEEull;
    int orders[24];
    bool seen[24] = {false};
    uint64_t base = kiln_alloc_live_bytes(), rss50 = 0, rss_last = 0;
    unsigned failures = 0;
    for (unsigned c = 0; c < n && failures < 3; c++) {
        if (c % 24 == 0) { /* a fresh shuffle of all 24 orders */
            for (int i = 0; i < 24; i++) orders[i] = i;
            for (int i = 23; i > 0; i--) {
                int j = (int)(rng_next(&rng) % (uint64_t)(i + 1));
                int tmp = orders[i];
                orders[i] = orders[j];
                orders[j] = tmp;
            }
        }
        handles h = {0};
        for (int s = 0; s < N_STEPS; s++) {
            kiln_status st = run_step(&h, s, 1 + (int32_t)(c & 1));
            KT_CHECKF(st == KILN_OK, "cycle %u: %s -> %s (%s)", c, step_names[s], kiln_status_str(st),
                      kiln_last_error());
            if (st != KILN_OK) failures++;
        }
        if (h.tc) {
            kiln_pool_stats ps;
            kiln_pool_stats_init(&ps);
            KT_CHECK_OK(kiln_context_pool_stats(h.tc, &ps));
            KT_CHECKF(ps.bytes_in_use == 0, "cycle %u: pool bytes_in_use %llu", c,
                      (unsigned long long)ps.bytes_in_use);
        }
        int perm[4];
        nth_perm(orders[c % 24], perm);
        seen[orders[c % 24]] = true;
        free_in_order(&h, perm);
        uint64_t live = kiln_alloc_live_bytes();
        KT_CHECKF(live == base, "cycle %u: live host bytes %llu, baseline %llu", c,
                  (unsigned long long)live, (unsigned long long)base);
        if (live != base) failures++;
        if (c == 50) rss50 = rss_bytes();
        rss_last = rss_bytes();
    }
    if (n >= 24)
        for (int i = 0; i < 24; i++) KT_CHECKF(seen[i], "free order %d never used", i);
    printf("  %u full cycles: live host bytes back to %llu after each; RSS at cycle 50 %llu KiB, "
           "at the end %llu KiB\n",
           n, (unsigned long long)base, (unsigned long long)(rss50 >> 10),
           (unsigned long long)(rss_last >> 10));
    if (n > 100 && !KILN_PROOF_SANITIZED && rss50 && rss_last)
        KT_CHECKF(rss_last <= rss50 + (1u << 20), "RSS grew by %lld KiB after cycle 50",
                  (long long)((int64_t)(rss_last - rss50) / 1024));
}

static void test_suspend_cycles(void) {
    if (!kt_shared(TARGET) || !kt_shared(DRAFT)) KT_SKIP("tiny models missing");
    unsigned n = n_cycles();
    uint64_t base = kiln_alloc_live_bytes();
    handles h = {0};
    for (int s = STEP_LOAD_TARGET; s <= STEP_GENERATE; s++) KT_CHECK_OK(run_step(&h, s, 1));
    if (!h.d) goto done;
    kiln_kv *kv = kiln_context_kv(h.tc);
    KT_CHECK_OK(kiln_kv_seq_offload(kv, SEQ_SIDE));
    kiln_pool_stats ps0;
    kiln_pool_stats_init(&ps0);
    KT_CHECK_OK(kiln_context_pool_stats(h.tc, &ps0));
    uint64_t live_first[2] = {0, 0}, live_max = 0, resumed0 = 0, rss50 = 0, rss_last = 0;
    unsigned failures = 0;
    int32_t tok = 42;
    for (unsigned c = 0; c < n && failures < 3; c++) {
        int32_t level = (c & 1) ? KILN_SUSPEND_WEIGHTS : KILN_SUSPEND_KV;
        kiln_status st = kiln_context_suspend(h.tc, level);
        if (st == KILN_OK) st = kiln_context_suspended(h.tc) == level ? KILN_OK : KILN_E_INTERNAL;
        if (st == KILN_OK) { /* suspended: the pool holds nothing */
            kiln_pool_stats sp;
            kiln_pool_stats_init(&sp);
            KT_CHECK_OK(kiln_context_pool_stats(h.tc, &sp));
            KT_CHECKF(sp.bytes_in_use == 0 && sp.bytes_cached == 0,
                      "suspend cycle %u: suspended pool in use %llu, cached %llu", c,
                      (unsigned long long)sp.bytes_in_use, (unsigned long long)sp.bytes_cached);
        }
        if (st == KILN_OK) st = kiln_context_resume(h.tc);
        /* suspend purged the pools (cached buffers are host memory on the
         * CPU backend), so compare resumed states with each other */
        uint64_t resumed = kiln_alloc_live_bytes();
        if (c == 0) resumed0 = resumed;
        KT_CHECKF(resumed <= resumed0 + 4096, "suspend cycle %u: live host bytes %llu after resume, %llu after the first",
                  c, (unsigned long long)resumed, (unsigned long long)resumed0);
        if (resumed > resumed0 + 4096) failures++;
        /* continue decoding sequence 0; every 16 cycles through the draft */
        if (st == KILN_OK && c % 16 == 15) {
            int32_t t[N_PROMPT], out[N_GEN];
            size_t n_out = 0;
            prompt_tokens(t, N_PROMPT, c);
            st = kiln_draft_generate(h.d, t, N_PROMPT, N_GEN, NULL, out, N_GEN, &n_out);
        } else if (st == KILN_OK) {
            st = decode_on(h.tc, &tok, 1, SEQ_MAIN);
            tok = (tok * 31 + 7) % 900 + 10;
        }
        KT_CHECKF(st == KILN_OK, "suspend cycle %u: %s (%s)", c, kiln_status_str(st), kiln_last_error());
        kiln_pool_stats ps;
        kiln_pool_stats_init(&ps);
        KT_CHECK_OK(kiln_context_pool_stats(h.tc, &ps));
        KT_CHECKF(ps.bytes_in_use == ps0.bytes_in_use, "suspend cycle %u: pool bytes_in_use %llu, baseline %llu",
                  c, (unsigned long long)ps.bytes_in_use, (unsigned long long)ps0.bytes_in_use);
        kiln_kv_stats ks;
        kiln_kv_stats_init(&ks);
        KT_CHECK_OK(kiln_kv_get_stats(kv, &ks));
        KT_CHECKF(ks.n_seq_offloaded == 1, "suspend cycle %u: %u sequences offloaded", c, ks.n_seq_offloaded);
        /* compared with the first cycle of the same kind (a draft cycle
         * refills the draft's pool too); decoding may grow sequence 0's
         * block table by a few bytes per block */
        int kind = c % 16 == 15;
        uint64_t live = kiln_alloc_live_bytes();
        if (!live_first[kind]) live_first[kind] = live;
        KT_CHECKF(live <= live_first[kind] + 4096, "suspend cycle %u: live host bytes %llu, first such cycle %llu",
                  c, (unsigned long long)live, (unsigned long long)live_first[kind]);
        if (live > live_max) live_max = live;
        if (st != KILN_OK || live > live_first[kind] + 4096) failures++;
        if (c == 50) rss50 = rss_bytes();
        rss_last = rss_bytes();
    }
    printf("  %u suspend/resume cycles: pool bytes_in_use %llu each time, pool empty while suspended, "
           "live host bytes %llu after the first resume, %llu..%llu after each cycle's decode; "
           "RSS at cycle 50 %llu KiB, at the end %llu KiB\n",
           n, (unsigned long long)ps0.bytes_in_use, (unsigned long long)resumed0, (unsigned long long)live_first[0],
           (unsigned long long)live_max,
           (unsigned long long)(rss50 >> 10), (unsigned long long)(rss_last >> 10));
    if (n > 100 && !KILN_PROOF_SANITIZED && rss50 && rss_last)
        KT_CHECKF(rss_last <= rss50 + (1u << 20), "RSS grew by %lld KiB after cycle 50",
                  (long long)((int64_t)(rss_last - rss50) / 1024));
done:;
    static const int order[4] = {3, 1, 2, 0};
    free_in_order(&h, order);
    KT_CHECK(kiln_alloc_live_bytes() == base);
}

/* ---- fault injection ------------------------------------------------------ */

/* For each step, for every N reached inside it: run the steps before it
 * unfailed, fail its N-th allocation, then run the remaining steps unfailed
 * (the handles must still work: a failed step is allowed to fail, the
 * later ones must succeed when their handles exist), free everything and
 * check the live bytes. A step whose handle creation failed leaves that
 * handle NULL; later steps that need it are skipped. */
static void test_fault_injection(void) {
    if (!kt_shared(TARGET) || !kt_shared(DRAFT)) KT_SKIP("tiny models missing");
    const char *fault = getenv("KILN_PROOF_FAULT");
    if (fault && strcmp(fault, "0") == 0) KT_SKIP("KILN_PROOF_FAULT=0");
    unsigned stride = env_uint("KILN_PROOF_FAULT_STRIDE", 1);
    uint64_t base = kiln_alloc_live_bytes();
    static const int order[4] = {1, 0, 3, 2};
    uint64_t total_runs = 0;
    for (int step = 0; step < N_STEPS; step++) {
        uint64_t reached = 0, failed_calls = 0;
        for (uint64_t nth = 1;; nth += stride) {
            handles h = {0};
            bool bad = false;
            for (int s = 0; s < step; s++)
                if (run_step(&h, s, KILN_SUSPEND_WEIGHTS) != KILN_OK) bad = true;
            KT_CHECKF(!bad, "fault step %s: setup failed", step_names[step]);
            kiln_test_fail_alloc_after(0);
            kiln_test_fail_alloc_after(nth);
            kiln_status st = run_step(&h, step, KILN_SUSPEND_WEIGHTS);
            uint64_t made = kiln_test_fail_alloc_after(0);
            bool fired = made >= nth;
            if (fired) failed_calls++;
            KT_CHECKF(fired || st == KILN_OK, "fault step %s N=%llu: unfailed call -> %s (%s)",
                      step_names[step], (unsigned long long)nth, kiln_status_str(st), kiln_last_error());
            /* the failed call's handle is NULL or still usable: run the rest */
            for (int s = step + 1; s < N_STEPS; s++) {
                kiln_status st2 = run_step(&h, s, KILN_SUSPEND_WEIGHTS);
                KT_CHECKF(st2 == KILN_OK, "fault step %s N=%llu (-> %s): then %s -> %s (%s)",
                          step_names[step], (unsigned long long)nth, kiln_status_str(st), step_names[s],
                          kiln_status_str(st2), kiln_last_error());
                if (st2 != KILN_OK) bad = true;
            }
            free_in_order(&h, order);
            uint64_t live = kiln_alloc_live_bytes();
            KT_CHECKF(live == base, "fault step %s N=%llu: live bytes %llu, baseline %llu", step_names[step],
                      (unsigned long long)nth, (unsigned long long)live, (unsigned long long)base);
            total_runs++;
            if (!fired || bad || live != base) {
                reached = made;
                break;
            }
        }
        printf("  %-14s %4llu allocations, %4llu failed calls tested\n", step_names[step],
               (unsigned long long)reached, (unsigned long long)failed_calls);
    }
    printf("  fault injection: %llu runs\n", (unsigned long long)total_runs);
}

int main(void) {
    KT_RUN(test_fault_injection);
    KT_RUN(test_full_cycles);
    KT_RUN(test_suspend_cycles);
    return kt_finish();
}
