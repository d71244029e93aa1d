/*
 * pool.c - the public view of a context's transient pool: statistics, purge
 * and cap, forwarded to the context's own backend device handles (one per
 * split of the model; each context opens its own, so these never touch
 * another context's or the model's memory). The cap applies to each
 * device's pool. Safe inside the ubatch callback: the forward pass
 * has returned its activation buffer by then, so a purge frees everything
 * the pool caches and nothing in use.
 */
#include <stdio.h>
#include <string.h>

#include "context.h"
#include "memtrack.h"

void kiln_pool_stats_init_sized(kiln_pool_stats *s, uint32_t size) {
    kiln_pool_stats d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(s, size, &d, sizeof d);
}

void kiln_context_pool_snapshot(kiln_context *ctx) {
    for (uint32_t s = 0; s < ctx->n_splits; s++) kiln_mem_pool_snapshot(kiln_context_split_bk(ctx, s), ctx->sdev[s]);
}

kiln_status kiln_context_synchronize(kiln_context *ctx) {
    kiln_status first = KILN_OK;
    for (uint32_t s = 0; s < ctx->n_splits; s++) {
        kiln_status st = kiln_context_split_bk(ctx, s)->synchronize(ctx->sdev[s]);
        if (st && first == KILN_OK) first = st;
    }
    return first;
}

/* A split model's context has a pool per device handle: the statistics
 * are their sums (the peak is the sum of the pools' peaks, an upper bound
 * of the simultaneous peak), the cap is the one every pool has. */
kiln_status kiln_context_pool_stats(kiln_context *ctx, kiln_pool_stats *out) {
    kiln_error_clear();
    if (!ctx || !out || out->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_stats: NULL argument or bad struct_size");
    kiln_pool_stats full;
    memset(&full, 0, sizeof full);
    for (uint32_t s = 0; s < ctx->n_splits; s++) {
        kiln_bk_pool_stats bs;
        memset(&bs, 0, sizeof bs);
        bs.struct_size = sizeof bs;
        kiln_status st = kiln_context_split_bk(ctx, s)->pool_stats(ctx->sdev[s], &bs);
        if (st) return st;
        full.bytes_in_use += bs.bytes_in_use;
        full.bytes_cached += bs.bytes_cached;
        full.bytes_peak += bs.bytes_peak;
        full.cap = bs.cap;
        full.n_allocs += bs.n_allocs;
        full.n_frees += bs.n_frees;
        full.n_device_allocs += bs.n_device_allocs;
    }
    kiln_context_pool_snapshot(ctx);
    uint32_t n = out->struct_size < sizeof full ? out->struct_size : (uint32_t)sizeof full;
    full.struct_size = n;
    memcpy(out, &full, n);
    return KILN_OK;
}

kiln_status kiln_context_pool_purge(kiln_context *ctx) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_purge: ctx is NULL");
    kiln_status st = KILN_OK;
    uint32_t s = 0;
    for (; s < ctx->n_splits && st == KILN_OK; s++) st = kiln_context_split_bk(ctx, s)->pool_purge(ctx->sdev[s]);
    kiln_context_pool_snapshot(ctx);
    if (st) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        return kiln_error(st, "kiln_context_pool_purge: backend %s: %s", kiln_context_split_bk(ctx, s - 1)->name,
                          msg);
    }
    return KILN_OK;
}

kiln_status kiln_context_pool_set_cap(kiln_context *ctx, uint64_t bytes) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_set_cap: ctx is NULL");
    for (uint32_t s = 0; s < ctx->n_splits; s++) kiln_context_split_bk(ctx, s)->pool_set_cap(ctx->sdev[s], bytes);
    kiln_context_pool_snapshot(ctx);
    return KILN_OK;
}
