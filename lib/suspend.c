/*
 * suspend.c - kiln_context_suspend/resume and the residency of a model's
 * weights.
 *
 * Level 1 moves the used part of the KV cache to host memory: the blocks
 * are handed out from the low end of the cache, so the cells up to the
 * highest referenced block form a prefix that holds every stored position;
 * that prefix of each layer's K and V buffer is downloaded into one
 * kiln_malloc'd array (ctx->kv_host), the device buffers are freed and the
 * pool's cache purged. Block tables, sequence lengths and logits stay where
 * they are (host memory), so resume only has to allocate the buffers again
 * and upload the prefix: the cache holds the same bytes as before and every
 * sequence continues bit for bit.
 *
 * Level 2 additionally stops holding the model's weights. A model counts
 * its holders (active and level-1 contexts) and its parked contexts
 * (level 2); the device copy is freed when the holders reach zero with at
 * least one context parked, and re-uploaded from the file mapping by the
 * first context that holds again (resume or create). Weights that wrap the
 * mapping (zero-copy, the CPU backend by default) are never freed: there is
 * no copy to release.
 *
 * Failure leaves the state unchanged: suspend allocates its host copy
 * before freeing anything, resume allocates every device buffer (and takes
 * the weights) before freeing the host copy.
 */
#include <stdio.h>
#include <string.h>

#include "context.h"
#include "draft.h"
#include "memtrack.h"

/* Re-creates the device copy of every released split's weights from the
 * mapping. Called with weights_lock held and no context using the
 * weights. All or nothing: a failure frees what this call uploaded. */
static kiln_status weights_upload(kiln_model *m) {
    kiln_status st = KILN_OK;
    uint32_t s = 0;
    for (; s < m->n_splits && st == KILN_OK; s++)
        if (!m->splits[s].zero_copy && !m->splits[s].weights) st = kiln_model_split_upload(m, s);
    if (st) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        for (uint32_t u = 0; u + 1 < s; u++) {
            kiln_model_split *sp = &m->splits[u];
            if (sp->zero_copy || !sp->weights) continue;
            kiln_mem_buffer_free(sp->bk, sp->weights);
            kiln_model_rebind_split(m, u, NULL);
        }
        return kiln_error(st, "resume: %s", msg);
    }
    m->weights_released = false;
    return KILN_OK;
}

/* Frees the device copies if nobody holds them and somebody is parked.
 * Called with weights_lock held. */
static void weights_maybe_release(kiln_model *m) {
    if (m->weights_holds != 0 || m->weights_parked == 0 || m->weights_released) return;
    bool any = false;
    for (uint32_t s = 0; s < m->n_splits; s++) {
        kiln_model_split *sp = &m->splits[s];
        if (sp->zero_copy || !sp->weights) continue; /* a wrap of the mapping: nothing to release */
        kiln_mem_buffer_free(sp->bk, sp->weights);
        kiln_model_rebind_split(m, s, NULL);
        any = true;
    }
    if (any) {
        m->weights_released = true;
        kiln_log(&m->log, KILN_LOG_INFO, "model %s: weights released (every context suspended)", m->name);
    }
}

kiln_status kiln_context_hold_weights(kiln_context *ctx) {
    kiln_model *m = ctx->model;
    if (ctx->weights_held) return KILN_OK;
    pthread_mutex_lock(&m->weights_lock);
    kiln_status st = KILN_OK;
    if (m->weights_released) st = weights_upload(m);
    if (st == KILN_OK) {
        m->weights_holds++;
        ctx->weights_held = true;
    }
    pthread_mutex_unlock(&m->weights_lock);
    return st;
}

/* Lets go of the weights; parked: the context is suspended at level 2
 * (counted until it resumes or is freed). */
static void let_go(kiln_context *ctx, bool parked) {
    kiln_model *m = ctx->model;
    pthread_mutex_lock(&m->weights_lock);
    if (ctx->weights_held) {
        m->weights_holds--;
        ctx->weights_held = false;
    }
    if (parked) m->weights_parked++;
    weights_maybe_release(m);
    pthread_mutex_unlock(&m->weights_lock);
}

static void unpark(kiln_context *ctx) {
    kiln_model *m = ctx->model;
    pthread_mutex_lock(&m->weights_lock);
    m->weights_parked--;
    pthread_mutex_unlock(&m->weights_lock);
}

void kiln_context_drop_weights(kiln_context *ctx) {
    if (ctx->suspended == 2) unpark(ctx);
    else if (ctx->weights_held) let_go(ctx, false);
}

/* Cells that hold every stored position: up to the highest used block. */
static uint32_t used_cells(const kiln_kv *kv) {
    uint32_t top = 0;
    for (uint32_t b = 0; b < kv->n_blocks; b++)
        if (kv->block_refs[b]) top = b + 1;
    return top * kv->block_size;
}

static kiln_status kv_to_host(kiln_context *ctx) {
    kiln_kv *kv = ctx->kv;
    uint32_t cells = used_cells(kv);
    size_t per = (size_t)cells * kv->kv_dim * 2, total;
    if (!kiln_mul_size(per, (size_t)kv->n_layer * 2, &total))
        return kiln_error(KILN_E_OOM_HOST, "suspend: KV cache too large for host memory");
    uint8_t *host = NULL;
    if (total) {
        KILN_MEM_SCOPE(ctx, KILN_MEM_KV_HOST);
        host = kiln_malloc(total);
        if (!host)
            return kiln_error(KILN_E_OOM_HOST, "suspend: out of host memory for %zu bytes of KV cache", total);
        kiln_status st = KILN_OK;
        uint32_t l = 0;
        for (; l < kv->n_layer && st == KILN_OK; l++) { /* each layer from its own device */
            const kiln_backend_iface *bk = kv->layer_bk[l];
            st = bk->buffer_download(kv->layer_dev[l], kv->k[l], 0, host + (size_t)(2 * l) * per, per);
            if (st == KILN_OK)
                st = bk->buffer_download(kv->layer_dev[l], kv->v[l], 0, host + (size_t)(2 * l + 1) * per, per);
        }
        if (st) {
            kiln_free(host);
            return kiln_error(st, "suspend: KV cache download from %s failed", kv->layer_bk[l - 1]->name);
        }
    }
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        kiln_mem_buffer_free(kv->layer_bk[l], kv->k[l]);
        kiln_mem_buffer_free(kv->layer_bk[l], kv->v[l]);
        kv->k[l] = kv->v[l] = NULL;
    }
    ctx->kv_host = host;
    ctx->kv_host_cells = cells;
    kv->suspended_host_bytes = total;
    return KILN_OK;
}

static void free_kv_buffers(kiln_context *ctx) {
    kiln_kv *kv = ctx->kv;
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        kiln_mem_buffer_free(kv->layer_bk[l], kv->k[l]);
        kiln_mem_buffer_free(kv->layer_bk[l], kv->v[l]);
        kv->k[l] = kv->v[l] = NULL;
    }
}

static kiln_status kv_to_device(kiln_context *ctx) {
    kiln_kv *kv = ctx->kv;
    uint64_t bytes = (uint64_t)kv->n_cells * kv->kv_dim * 2;
    size_t per = (size_t)ctx->kv_host_cells * kv->kv_dim * 2;
    kiln_status st = KILN_OK;
    /* each layer's buffers on its own device (a split model's second
     * device failing frees what the first took, below) */
    for (uint32_t l = 0; l < kv->n_layer && st == KILN_OK; l++) {
        const kiln_backend_iface *bk = kv->layer_bk[l];
        if ((st = kiln_mem_buffer_alloc(bk, kv->layer_dev[l], bytes, KILN_BK_BUF_KV, KILN_MEM_KV, &kv->k[l])) ||
            (st = kiln_mem_buffer_alloc(bk, kv->layer_dev[l], bytes, KILN_BK_BUF_KV, KILN_MEM_KV, &kv->v[l])))
            st = kiln_error(st, "resume: cannot allocate %llu bytes of KV cache for layer %u on %s",
                            (unsigned long long)bytes, l, bk->name);
    }
    for (uint32_t l = 0; l < kv->n_layer && st == KILN_OK && per; l++) {
        const kiln_backend_iface *bk = kv->layer_bk[l];
        kiln_bk_device *dev = kv->layer_dev[l];
        if ((st = bk->buffer_upload(dev, kv->k[l], 0, ctx->kv_host + (size_t)(2 * l) * per, per)) ||
            (st = bk->buffer_upload(dev, kv->v[l], 0, ctx->kv_host + (size_t)(2 * l + 1) * per, per)))
            st = kiln_error(st, "resume: KV cache upload to %s failed", bk->name);
    }
    if (st == KILN_OK && (st = kiln_context_synchronize(ctx)))
        st = kiln_error(st, "resume: a device failed to synchronize");
    if (st) {
        free_kv_buffers(ctx);
        return st;
    }
    kiln_free(ctx->kv_host);
    ctx->kv_host = NULL;
    ctx->kv_host_cells = 0;
    kv->suspended_host_bytes = 0;
    return KILN_OK;
}

static kiln_status fail(kiln_context *ctx, kiln_status st) {
    snprintf(ctx->last_error, sizeof ctx->last_error, "%s", kiln_last_error());
    return st;
}

kiln_status kiln_context_suspend(kiln_context *ctx, int32_t level) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_suspend: ctx is NULL");
    ctx->last_error[0] = '\0';
    if (level != KILN_SUSPEND_KV && level != KILN_SUSPEND_WEIGHTS)
        return fail(ctx, kiln_error(KILN_E_INVALID_ARG, "kiln_context_suspend: level %d (1 or 2)", level));
    if (ctx->in_decode)
        return fail(ctx, kiln_error(KILN_E_BUSY, "kiln_context_suspend: called from the ubatch callback"));
    if (level <= ctx->suspended) return KILN_OK;
    kiln_status st;
    /* a draft follows its target (it resumes by itself on its next decode);
     * suspended first so that its failure leaves the target untouched */
    if (ctx->draft && (st = kiln_draft_suspend(ctx->draft, level))) return fail(ctx, st);
    if (ctx->suspended == 0) {
        if ((st = kiln_context_synchronize(ctx)) || (st = kv_to_host(ctx))) return fail(ctx, st);
        /* the pools only cache here (nothing runs): purging cannot fail on
         * memory, and a failed purge leaves cached bytes, not bad state */
        for (uint32_t s = 0; s < ctx->n_splits; s++)
            if (kiln_context_split_bk(ctx, s)->pool_purge(ctx->sdev[s]) != KILN_OK)
                kiln_log(&ctx->log, KILN_LOG_WARN, "suspend: pool purge failed: %s", kiln_last_error());
        kiln_context_pool_snapshot(ctx);
        ctx->suspended = 1;
    }
    if (level == KILN_SUSPEND_WEIGHTS) {
        let_go(ctx, true);
        ctx->suspended = 2;
    }
    kiln_log(&ctx->log, KILN_LOG_DEBUG, "context suspended (level %d, %u KV cells on host)", ctx->suspended,
             ctx->kv_host_cells);
    return KILN_OK;
}

kiln_status kiln_context_resume_internal(kiln_context *ctx) {
    if (ctx->suspended == 0) return KILN_OK;
    kiln_status st;
    const bool was_parked = ctx->suspended == 2;
    if (was_parked && (st = kiln_context_hold_weights(ctx))) return st;
    if ((st = kv_to_device(ctx))) {
        if (was_parked) let_go(ctx, false); /* still parked: undo the hold only */
        return st;
    }
    if (was_parked) unpark(ctx);
    ctx->suspended = 0;
    kiln_log(&ctx->log, KILN_LOG_DEBUG, "context resumed");
    return KILN_OK;
}

kiln_status kiln_context_resume(kiln_context *ctx) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_resume: ctx is NULL");
    ctx->last_error[0] = '\0';
    if (ctx->in_decode)
        return fail(ctx, kiln_error(KILN_E_BUSY, "kiln_context_resume: called from the ubatch callback"));
    kiln_status st = kiln_context_resume_internal(ctx);
    return st ? fail(ctx, st) : KILN_OK;
}

kiln_status kiln_context_kv_resident(void *owner) {
    kiln_context *ctx = owner;
    return ctx->suspended ? kiln_context_resume_internal(ctx) : KILN_OK;
}

int32_t kiln_context_suspended(const kiln_context *ctx) { return ctx ? ctx->suspended : 0; }
