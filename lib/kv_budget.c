/*
 * kv_budget.c - automatic idle offload: the policy that keeps a context's
 * KV blocks in use within its device budget (kiln_context_params
 * .kv_device_budget) by moving the least recently used idle sequences to
 * host memory, within a host budget (.kv_host_budget) past which the
 * caller's flag KILN_CONTEXT_KV_DROP_LRU either drops the least recently
 * used offloaded sequence or the decode fails with KILN_E_CONTEXT_FULL.
 *
 * Called by kiln_kv_reserve (lib/kv.c) only when the batch needs more
 * blocks than are available. "Idle" means not appended to by the batch
 * being reserved; recency is kv->last_use, stamped by every committed
 * decode. Offloaded sequences come back through the reservation's
 * automatic restore, bit for bit, so nothing is ever recomputed unless it
 * was dropped.
 *
 * The planner decides everything before moving anything, so a
 * KILN_E_CONTEXT_FULL leaves the cache exactly as it was. Ownership: the
 * host rows of an offloaded sequence are owned by its kiln_kv_seq (see
 * lib/kv_offload.c).
 */
#include "kv.h"

enum { PLAN_NONE = 0, PLAN_OFFLOAD = 1, PLAN_DROP = 2 };

uint32_t kiln_kv_available(const kiln_kv *kv) {
    if (!kv->budget_blocks) return kv->n_free; /* automatic offload off */
    uint32_t used = kv->n_blocks - kv->n_free;
    uint32_t room = kv->budget_blocks > used ? kv->budget_blocks - used : 0;
    return room < kv->n_free ? room : kv->n_free;
}

uint64_t kiln_kv_seq_host_bytes(const kiln_kv *kv, uint32_t s) {
    const kiln_kv_seq *q = &kv->seqs[s];
    uint64_t rows = q->host ? q->host_rows : q->len;
    return (uint64_t)kv->n_layer * 2 * rows * kiln_kv_row_bytes(kv);
}

/* Blocks that offloading or dropping s certainly frees: those it alone
 * holds (a block shared with a sequence that stays is not freed; one
 * shared with another leaving sequence is not counted, so the plan errs on
 * the side of moving more). */
static uint32_t blocks_freed(const kiln_kv *kv, uint32_t s) {
    const kiln_kv_seq *q = &kv->seqs[s];
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->n_blocks; i++) n += kv->block_refs[q->blocks[i]] == 1;
    return n;
}

/* The least recently used idle sequence on the device not yet planned, or
 * -1. */
static int32_t lru_on_device(const kiln_kv *kv, const uint32_t *new_tokens) {
    int32_t best = -1;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        const kiln_kv_seq *q = &kv->seqs[s];
        if (new_tokens[s] || q->host || q->n_blocks == 0 || kv->plan[s] != PLAN_NONE) continue;
        if (best < 0 || kv->last_use[s] < kv->last_use[best]) best = (int32_t)s;
    }
    return best;
}

/* The least recently used idle sequence that is (or is planned to be) in
 * host memory, or -1: the one KILN_CONTEXT_KV_DROP_LRU gives up. */
static int32_t lru_on_host(const kiln_kv *kv, const uint32_t *new_tokens) {
    int32_t best = -1;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        bool on_host = (kv->seqs[s].host && kv->plan[s] == PLAN_NONE) || kv->plan[s] == PLAN_OFFLOAD;
        if (new_tokens[s] || !on_host) continue;
        if (best < 0 || kv->last_use[s] < kv->last_use[best]) best = (int32_t)s;
    }
    return best;
}

kiln_status kiln_kv_make_room(kiln_kv *kv, const uint32_t *new_tokens, uint64_t need) {
    for (uint32_t s = 0; s < kv->n_seq; s++) kv->plan[s] = PLAN_NONE;
    uint64_t host = 0, freed = 0, avail = kiln_kv_available(kv);
    /* a sequence this batch brings back does not count: its host copy goes
     * when the decode commits */
    for (uint32_t s = 0; s < kv->n_seq; s++)
        if (kv->seqs[s].host && !new_tokens[s]) host += kiln_kv_seq_host_bytes(kv, s);
    /* blocks beyond the budget cannot be used even when free: the budget
     * counts blocks in use, so each freed block is one more available */
    uint32_t used = kv->n_blocks - kv->n_free;
    uint64_t over = used > kv->budget_blocks ? used - kv->budget_blocks : 0;

    /* plan */
    while (avail + (freed > over ? freed - over : 0) < need) {
        int32_t s = lru_on_device(kv, new_tokens);
        if (s < 0)
            return kiln_error(KILN_E_CONTEXT_FULL,
                              "context full: %llu more KV blocks of %u tokens needed, %llu available within the "
                              "device budget of %u blocks, and no idle sequence left to offload",
                              (unsigned long long)need, kv->block_size, (unsigned long long)avail,
                              kv->budget_blocks);
        uint64_t bytes = kiln_kv_seq_host_bytes(kv, (uint32_t)s);
        kv->plan[s] = PLAN_OFFLOAD;
        while (kv->host_budget && host + bytes > kv->host_budget && kv->plan[s] == PLAN_OFFLOAD) {
            if (!kv->drop_lru)
                return kiln_error(KILN_E_CONTEXT_FULL,
                                  "context full: offloading idle sequence %d (%llu bytes) would exceed the KV host "
                                  "budget of %llu bytes (%llu in use); set KILN_CONTEXT_KV_DROP_LRU to drop the "
                                  "least recently used instead",
                                  s, (unsigned long long)bytes, (unsigned long long)kv->host_budget,
                                  (unsigned long long)host);
            int32_t d = lru_on_host(kv, new_tokens); /* s itself at worst */
            if (d == s) {
                kv->plan[s] = PLAN_DROP; /* no host copy needed */
            } else {
                host -= kiln_kv_seq_host_bytes(kv, (uint32_t)d);
                kv->plan[d] = PLAN_DROP;
            }
        }
        if (kv->plan[s] == PLAN_OFFLOAD) host += bytes;
        freed += blocks_freed(kv, (uint32_t)s);
    }

    /* carry out: drops first (they free host memory for the offloads) */
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        if (kv->plan[s] != PLAN_DROP) continue;
        kiln_kv_seq_drop(kv, s);
        kv->n_dropped++;
    }
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        if (kv->plan[s] != PLAN_OFFLOAD || kv->seqs[s].host) continue;
        kiln_status st = kiln_kv_seq_offload(kv, (int32_t)s);
        if (st) return st;
        kv->n_auto_offloads++;
    }
    return KILN_OK;
}
