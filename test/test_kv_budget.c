/*
 * test_kv_budget.c - automatic idle offload under a device KV budget
 * (kiln_context_params.kv_device_budget / kv_host_budget,
 * KILN_CONTEXT_KV_DROP_LRU): more sequences than fit the budget, decoded
 * round-robin, each give bit for bit the logits they give alone in a big
 * context, with no prompt token evaluated twice; the host budget fails
 * with KILN_E_CONTEXT_FULL (cache unchanged) or drops the least recently
 * used offloaded sequence.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kiln.h"
#include "kt.h"

static const char *target(void) { return kt_shared("models/tiny-target-q4_0.gguf"); }

static kiln_model *g_model;
static int32_t g_vocab;

#define N_SEQ 8
#define N_P 20   /* prompt tokens: one full block of 16 and a partial one */
#define N_ROUND 4 /* single-token decodes per sequence after its prompt */
#define BLOCK 16

static int32_t prompt_tok(int s, int i) { return (int32_t)((i * 37 + s * 101 + 1) % 500); }
static int32_t extra_tok(int s, int r) { return (int32_t)((s * 7 + r * 13 + 3) % 500); }

/* Counts the tokens the model evaluated (every ubatch). */
static int32_t count_tokens(kiln_context *c, uint32_t ub, uint32_t n, uint32_t kv_len, void *user) {
    (void)c, (void)ub, (void)kv_len;
    *(uint64_t *)user += n;
    return 0;
}

static kiln_context *make_ctx(uint32_t n_ctx, uint64_t dev_budget, uint64_t host_budget, uint32_t flags,
                              uint64_t *counter) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = 1;
    cp.n_seq_max = N_SEQ;
    cp.kv_block_size = BLOCK;
    cp.kv_device_budget = dev_budget;
    cp.kv_host_budget = host_budget;
    cp.flags = flags;
    if (counter) {
        cp.ubatch_cb = count_tokens;
        cp.ubatch_user = counter;
    }
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(g_model, &cp, &c));
    return c;
}

/* Decodes n tokens into sequence seq in one batch (last logits only). */
static kiln_status dec(kiln_context *c, int32_t seq, const int32_t *t, uint32_t n) {
    int32_t ids[64];
    for (uint32_t i = 0; i < n; i++) ids[i] = seq;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = t;
    b.seq_id = ids;
    return kiln_decode(c, &b);
}

static kiln_status dec_prompt(kiln_context *c, int s) {
    int32_t p[N_P];
    for (int i = 0; i < N_P; i++) p[i] = prompt_tok(s, i);
    return dec(c, s, p, N_P);
}

static kiln_kv_stats stats(kiln_context *c) {
    kiln_kv_stats st;
    kiln_kv_stats_init(&st);
    KT_CHECK_OK(kiln_kv_get_stats(kiln_context_kv(c), &st));
    return st;
}

static uint64_t block_bytes(void) {
    kiln_context *c = make_ctx(64, 0, 0, 0, NULL);
    uint64_t b = c ? stats(c).block_bytes : 0;
    kiln_context_free(c);
    return b;
}

/* ref[s][step]: logits of sequence s after its prompt (step 0) and after
 * each extra token, decoded alone in a big context. */
static float *g_ref;
static float *ref_at(int s, int step) { return g_ref + ((size_t)s * (N_ROUND + 1) + (size_t)step) * (size_t)g_vocab; }

static void build_refs(void) {
    g_ref = malloc(sizeof(float) * (size_t)g_vocab * N_SEQ * (N_ROUND + 1));
    for (int s = 0; s < N_SEQ; s++) {
        kiln_context *c = make_ctx(512, 0, 0, 0, NULL);
        if (!c) continue;
        KT_CHECK_OK(dec_prompt(c, s));
        const float *l = kiln_context_logits(c, -1);
        if (l) memcpy(ref_at(s, 0), l, sizeof(float) * (size_t)g_vocab);
        for (int r = 0; r < N_ROUND; r++) {
            int32_t t = extra_tok(s, r);
            KT_CHECK_OK(dec(c, s, &t, 1));
            l = kiln_context_logits(c, -1);
            if (l) memcpy(ref_at(s, r + 1), l, sizeof(float) * (size_t)g_vocab);
        }
        kiln_context_free(c);
    }
}

static bool same_as_ref(kiln_context *c, int s, int step) {
    const float *l = kiln_context_logits(c, -1);
    return l && memcmp(l, ref_at(s, step), sizeof(float) * (size_t)g_vocab) == 0;
}

static void test_round_robin(void) {
    if (!g_model) KT_SKIP("../shared models not found");
    const uint64_t bb = block_bytes();
    KT_CHECK(bb > 0);
    /* 7 blocks: about 3 sequences of 2 blocks (plus one spare) */
    const uint32_t budget = 7;
    uint64_t evaluated = 0, submitted = 0;
    kiln_context *c = make_ctx(512, budget * bb, 0, 0, &evaluated);
    if (!c) return;
    kiln_kv *kv = kiln_context_kv(c);
    int mismatches = 0;
    for (int s = 0; s < N_SEQ; s++) {
        KT_CHECK_OK(dec_prompt(c, s));
        submitted += N_P;
        mismatches += !same_as_ref(c, s, 0);
        KT_CHECK(stats(c).n_blocks_used <= budget);
    }
    for (int r = 0; r < N_ROUND; r++) {
        for (int s = 0; s < N_SEQ; s++) {
            KT_CHECK(kiln_kv_seq_pos_max(kv, s) == N_P + r - 1);
            int32_t t = extra_tok(s, r);
            KT_CHECK_OK(dec(c, s, &t, 1));
            submitted++;
            mismatches += !same_as_ref(c, s, r + 1);
            KT_CHECK(stats(c).n_blocks_used <= budget);
        }
    }
    KT_CHECKF(mismatches == 0, "%d decodes differ from the sequence decoded alone", mismatches);
    KT_CHECKF(evaluated == submitted, "evaluated %llu tokens, submitted %llu (re-prefill?)",
              (unsigned long long)evaluated, (unsigned long long)submitted);
    kiln_kv_stats st = stats(c);
    printf("  %llu auto offloads, %llu auto restores, %u of %u sequences offloaded at the end\n",
           (unsigned long long)st.n_auto_offloads, (unsigned long long)st.n_auto_restores, st.n_seq_offloaded,
           st.n_seq);
    KT_CHECK(st.n_auto_offloads > 0 && st.n_auto_restores > 0 && st.n_dropped == 0);
    KT_CHECK(st.n_seq == N_SEQ && st.n_seq_offloaded > 0 && st.bytes_host > 0);
    kiln_context_free(c);
}

/* Host budget of one 20-token sequence, device budget of two. */
static void test_host_budget(void) {
    if (!g_model) KT_SKIP("../shared models not found");
    const uint64_t bb = block_bytes();
    const uint64_t seq_host = bb / BLOCK * N_P; /* host bytes of one offloaded prompt */

    /* default: past the host budget the decode fails and nothing changes */
    kiln_context *c = make_ctx(512, 4 * bb, seq_host, 0, NULL);
    if (!c) return;
    kiln_kv *kv = kiln_context_kv(c);
    KT_CHECK_OK(dec_prompt(c, 0));
    KT_CHECK_OK(dec_prompt(c, 1));
    KT_CHECK_OK(dec_prompt(c, 2)); /* offloads sequence 0 */
    kiln_kv_stats before = stats(c);
    KT_CHECK(before.n_auto_offloads == 1 && before.n_seq_offloaded == 1 && before.bytes_host == seq_host);
    KT_CHECK(dec_prompt(c, 3) == KILN_E_CONTEXT_FULL);
    kiln_kv_stats after = stats(c);
    KT_CHECK(memcmp(&before, &after, sizeof before) == 0);
    for (int s = 0; s < 3; s++) KT_CHECK(kiln_kv_seq_pos_max(kv, s) == N_P - 1);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 3) == -1);
    /* sequence 0 still comes back (its host copy stops counting) */
    int32_t t = extra_tok(0, 0);
    KT_CHECK_OK(dec(c, 0, &t, 1));
    KT_CHECK(same_as_ref(c, 0, 1));
    kiln_context_free(c);

    /* KILN_CONTEXT_KV_DROP_LRU: the least recently used offloaded sequence goes */
    c = make_ctx(512, 4 * bb, seq_host, KILN_CONTEXT_KV_DROP_LRU, NULL);
    if (!c) return;
    kv = kiln_context_kv(c);
    KT_CHECK_OK(dec_prompt(c, 0));
    KT_CHECK_OK(dec_prompt(c, 1));
    KT_CHECK_OK(dec_prompt(c, 2)); /* offloads 0 */
    KT_CHECK_OK(dec_prompt(c, 3)); /* offloads 1, which drops 0 */
    KT_CHECK(same_as_ref(c, 3, 0));
    kiln_kv_stats st = stats(c);
    KT_CHECK(st.n_dropped == 1 && st.n_auto_offloads == 2 && st.n_seq_offloaded == 1);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 0) == -1);
    KT_CHECK(kiln_kv_seq_pos_max(kv, 1) == N_P - 1);
    /* decoding continues: 1 comes back, 2 goes to the host, 3 goes on */
    t = extra_tok(1, 0);
    KT_CHECK_OK(dec(c, 1, &t, 1));
    KT_CHECK(same_as_ref(c, 1, 1));
    t = extra_tok(3, 0);
    KT_CHECK_OK(dec(c, 3, &t, 1));
    KT_CHECK(same_as_ref(c, 3, 1));
    /* the dropped sequence starts over */
    KT_CHECK_OK(dec_prompt(c, 0));
    KT_CHECK(same_as_ref(c, 0, 0));
    kiln_context_free(c);
}

/* Budget 0 (default): no automatic offload, a full cache is
 * KILN_E_CONTEXT_FULL; UINT64_MAX: offload only when the cache runs out. */
static void test_off_and_whole_cache(void) {
    if (!g_model) KT_SKIP("../shared models not found");
    kiln_context *c = make_ctx(6 * BLOCK, 0, 0, 0, NULL); /* room for 3 prompts */
    if (!c) return;
    for (int s = 0; s < 3; s++) KT_CHECK_OK(dec_prompt(c, s));
    KT_CHECK(dec_prompt(c, 3) == KILN_E_CONTEXT_FULL);
    KT_CHECK(stats(c).n_auto_offloads == 0 && stats(c).n_seq_offloaded == 0);
    kiln_context_free(c);
    c = make_ctx(6 * BLOCK, UINT64_MAX, 0, 0, NULL);
    if (!c) return;
    for (int s = 0; s < 3; s++) KT_CHECK_OK(dec_prompt(c, s));
    KT_CHECK(stats(c).n_auto_offloads == 0);
    KT_CHECK_OK(dec_prompt(c, 3));
    KT_CHECK(same_as_ref(c, 3, 0));
    kiln_kv_stats st = stats(c);
    KT_CHECK(st.n_auto_offloads == 1 && st.n_seq_offloaded == 1);
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) == N_P - 1);
    kiln_context_free(c);
}

/* Allocation failures inside a decode that offloads automatically: each
 * returns KILN_E_OOM_HOST, the failing sequence keeps its length, every
 * other sequence is intact (on the device or offloaded), and decoding then
 * continues with the reference logits (LeakSanitizer checks the frees). */
static void test_alloc_failures(void) {
    if (!g_model) KT_SKIP("../shared models not found");
    const uint64_t bb = block_bytes();
    int failures = 0;
    for (uint64_t n = 1; n < 1000; n++) {
        kiln_context *c = make_ctx(512, 4 * bb, 0, 0, NULL);
        if (!c) return;
        kiln_kv *kv = kiln_context_kv(c);
        KT_CHECK_OK(dec_prompt(c, 0));
        KT_CHECK_OK(dec_prompt(c, 1));
        kiln_test_fail_alloc_after(n);
        kiln_status st = dec_prompt(c, 2); /* offloads 0 */
        uint64_t made = kiln_test_fail_alloc_after(0);
        if (st) {
            KT_CHECKF(st == KILN_E_OOM_HOST, "allocation %llu: status %d (%s)", (unsigned long long)n, st,
                      kiln_last_error());
            KT_CHECK(kiln_kv_seq_pos_max(kv, 2) == -1);
            failures++;
            KT_CHECK_OK(dec_prompt(c, 2));
        }
        KT_CHECK(same_as_ref(c, 2, 0));
        for (int s = 0; s < 2; s++) KT_CHECK(kiln_kv_seq_pos_max(kv, s) == N_P - 1);
        int32_t t = extra_tok(0, 0);
        KT_CHECK_OK(dec(c, 0, &t, 1)); /* comes back */
        KT_CHECK(same_as_ref(c, 0, 1));
        kiln_context_free(c);
        if (!st && made < n) break; /* the n-th allocation was never reached */
    }
    printf("  %d allocation failure points checked\n", failures);
    KT_CHECK(failures >= 1);
}

int main(void) {
    if (target()) {
        kiln_model_params mp;
        kiln_model_params_init(&mp);
        if (kt_model_load(target(), &mp, &g_model) == KILN_OK) g_vocab = kiln_model_n_vocab(g_model);
    }
    if (g_model) build_refs();
    KT_RUN(test_round_robin);
    KT_RUN(test_host_budget);
    KT_RUN(test_off_and_whole_cache);
    KT_RUN(test_alloc_failures);
    free(g_ref);
    kiln_model_free(g_model);
    return kt_finish();
}
