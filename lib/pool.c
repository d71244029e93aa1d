/*
 * pool.c - the public view of a context's transient pool: statistics, purge
 * and cap, forwarded to the context's own backend device handle (each
 * context opens its own handle, so these never touch another context's or
 * the model's memory). Safe inside the ubatch callback: the forward pass
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

kiln_status kiln_context_pool_stats(kiln_context *ctx, kiln_pool_stats *out) {
    kiln_error_clear();
    if (!ctx || !out || out->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_stats: NULL argument or bad struct_size");
    kiln_bk_pool_stats bs;
    memset(&bs, 0, sizeof bs);
    bs.struct_size = sizeof bs;
    kiln_status st = ctx->bk->pool_stats(ctx->dev, &bs);
    if (st) return st;
    kiln_mem_pool_snapshot(ctx->bk, ctx->dev);
    kiln_pool_stats full;
    memset(&full, 0, sizeof full);
    full.bytes_in_use = bs.bytes_in_use;
    full.bytes_cached = bs.bytes_cached;
    full.bytes_peak = bs.bytes_peak;
    full.cap = bs.cap;
    full.n_allocs = bs.n_allocs;
    full.n_frees = bs.n_frees;
    full.n_device_allocs = bs.n_device_allocs;
    uint32_t n = out->struct_size < sizeof full ? out->struct_size : (uint32_t)sizeof full;
    full.struct_size = n;
    memcpy(out, &full, n);
    return KILN_OK;
}

kiln_status kiln_context_pool_purge(kiln_context *ctx) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_purge: ctx is NULL");
    kiln_status st = ctx->bk->pool_purge(ctx->dev);
    kiln_mem_pool_snapshot(ctx->bk, ctx->dev);
    if (st) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        return kiln_error(st, "kiln_context_pool_purge: backend %s: %s", ctx->bk->name, msg);
    }
    return KILN_OK;
}

kiln_status kiln_context_pool_set_cap(kiln_context *ctx, uint64_t bytes) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_pool_set_cap: ctx is NULL");
    ctx->bk->pool_set_cap(ctx->dev, bytes);
    kiln_mem_pool_snapshot(ctx->bk, ctx->dev);
    return KILN_OK;
}
