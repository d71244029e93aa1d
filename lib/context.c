/*
 * context.c - contexts and decoding: batch validation, KV reservation,
 * splitting into ubatches, per-ubatch metadata for the backend, logits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "context.h"
#include "draft.h"
#include "memtrack.h"

void kiln_context_params_init_sized(kiln_context_params *p, uint32_t size) {
    kiln_context_params d;
    memset(&d, 0, sizeof d);
    d.n_ctx = 4096;
    d.n_ubatch = 512;
    d.n_seq_max = 16;
    d.n_threads = 0;
    d.kv_block_size = 32;
    d.log_level = KILN_LOG_ERROR;
    kiln_params_emit(p, size, &d, sizeof d);
}

void kiln_batch_init_sized(kiln_batch *b, uint32_t size) {
    kiln_batch d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(b, size, &d, sizeof d);
}

/* Records a failure on the context (and the thread) and returns it. */
static kiln_status ctx_fail(kiln_context *ctx, kiln_status st) {
    snprintf(ctx->last_error, sizeof ctx->last_error, "%s", kiln_last_error());
    return st;
}

const char *kiln_context_last_error(const kiln_context *ctx) { return ctx ? ctx->last_error : ""; }

kiln_kv *kiln_context_kv(kiln_context *ctx) { return ctx ? ctx->kv : NULL; }

void kiln_context_free(kiln_context *ctx) {
    if (!ctx) return;
    if (ctx->draft) kiln_draft_detach(ctx->draft); /* a draft follows its target */
    kiln_kv_destroy(ctx->kv); /* NULL buffers while suspended are skipped */
    kiln_free(ctx->kv_host);
    if (ctx->model) kiln_context_drop_weights(ctx);
    for (uint32_t s = 0; ctx->sdev && s < ctx->n_splits; s++)
        if (ctx->sdev[s]) kiln_mem_device_close(kiln_context_split_bk(ctx, s), ctx->sdev[s]);
    kiln_free(ctx->sdev);
    kiln_free(ctx->stage);
    kiln_free(ctx->logits);
    kiln_free(ctx->logit_row);
    kiln_free(ctx->ub_pos);
    kiln_free(ctx->ub_cell);
    kiln_free(ctx->ub_table);
    kiln_free(ctx->ub_nkv);
    kiln_free(ctx->ub_out);
    kiln_free(ctx->ub_blocks);
    kiln_free(ctx->batch_seq_pos);
    kiln_free(ctx->seq_table_off);
    kiln_free(ctx->seq_new);
    kiln_free(ctx->seq_next);
    kiln_model_release(ctx->model);
    kiln_free(ctx);
    kiln_mem_owner_close(ctx); /* the leak guard: nothing may still be tagged to ctx */
}

kiln_status kiln_context_create(kiln_model *model, const kiln_context_params *params, kiln_context **out) {
    kiln_error_clear();
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_create: out is NULL");
    *out = NULL;
    if (!model) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_create: model is NULL");
    if (!model->dev) return kiln_error(KILN_E_INVALID_ARG, "kiln_context_create: model was loaded vocab-only");
    kiln_context_params p;
    kiln_context_params_init(&p);
    kiln_status st;
    if (params && (st = kiln_params_copy(&p, sizeof p, params))) return st;
    if (p.n_ctx == 0 || p.n_ubatch == 0 || p.n_seq_max == 0 || p.kv_block_size == 0 || p.n_seq_max > 4096 ||
        p.kv_block_size > 4096 || p.n_ubatch > 65536 || p.n_ctx > (1u << 24))
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_context_create: bad params (n_ctx %u, n_ubatch %u, n_seq_max %u, block %u)",
                          p.n_ctx, p.n_ubatch, p.n_seq_max, p.kv_block_size);
    if (p.n_ctx > model->hp.n_ctx_train) p.n_ctx = model->hp.n_ctx_train;
    if (p.n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = nc > 0 ? (int32_t)nc : 1;
    }

    kiln_context *ctx = kiln_calloc(1, sizeof *ctx);
    if (!ctx) return kiln_error(KILN_E_OOM_HOST, "kiln_context_create: out of memory");
    /* everything allocated from here on is tagged to the context */
    kiln_mem_owner_open(KILN_MEM_OWNER_CONTEXT, ctx, model->name[0] ? model->name : model->arch_name);
    KILN_MEM_SCOPE(ctx, KILN_MEM_SCRATCH);
    kiln_model_retain(model);
    ctx->model = model;
    ctx->params = p;
    ctx->bk = model->bk;
    if (p.log_fn) kiln_logger_init(&ctx->log, p.log_fn, p.log_user, p.log_level);
    else ctx->log = model->log;

    /* the plugin logs through the context's logger (sink or process default) */
    kiln_bk_open_params op = {sizeof op, p.n_threads, KILN_LOG_DEBUG, kiln_log_sink, &ctx->log};
    const kiln_hparams *hp = &model->hp;
    uint32_t ub = p.n_ubatch, ns = p.n_seq_max;
    if ((st = kiln_context_hold_weights(ctx))) goto fail;
    ctx->sdev = kiln_calloc(model->n_splits, sizeof *ctx->sdev);
    if (!ctx->sdev) {
        st = kiln_error(KILN_E_OOM_HOST, "kiln_context_create: out of memory");
        goto fail;
    }
    ctx->n_splits = model->n_splits;
    for (uint32_t s = 0; s < model->n_splits; s++) {
        const kiln_model_split *sp = &model->splits[s];
        if ((st = kiln_mem_device_open(sp->bk, sp->device_index, &op, ctx, &ctx->sdev[s]))) goto fail;
        if (p.pool_cap) sp->bk->pool_set_cap(ctx->sdev[s], p.pool_cap);
    }
    ctx->dev = ctx->sdev[0];
    if (model->n_splits > 1 && !(ctx->stage = kiln_calloc((size_t)ub * hp->n_embd, sizeof(float)))) {
        st = kiln_error(KILN_E_OOM_HOST, "kiln_context_create: out of memory");
        goto fail;
    }
    {
        const char *ng = getenv("KILN_NO_GRAPHS"); /* debugging: every op eager */
        ctx->no_graphs = ng && *ng && strcmp(ng, "0") != 0;
    }
    {
        KILN_MEM_SCOPE(NULL, KILN_MEM_KV);
        /* each layer's KV cache on the layer's device */
        const kiln_backend_iface **lbk = kiln_calloc(hp->n_layer, sizeof *lbk);
        kiln_bk_device **ldev = kiln_calloc(hp->n_layer, sizeof *ldev);
        if (lbk && ldev) {
            for (uint32_t l = 0; l < hp->n_layer; l++) {
                lbk[l] = kiln_context_split_bk(ctx, model->layer_split[l]);
                ldev[l] = ctx->sdev[model->layer_split[l]];
            }
            st = kiln_kv_create(lbk, ldev, hp->n_layer, hp->n_head_kv * hp->head_dim, p.n_ctx, p.kv_block_size,
                                ns, &ctx->kv);
        } else {
            st = kiln_error(KILN_E_OOM_HOST, "kiln_context_create: out of memory");
        }
        kiln_free(lbk);
        kiln_free(ldev);
    }
    if (st) goto fail;
    ctx->kv->fingerprint = model->fingerprint; /* checked by kiln_kv_seq_import */
    ctx->kv->resident = kiln_context_kv_resident;
    ctx->kv->owner = ctx;
    if (p.kv_device_budget) { /* whole blocks, at least one, at most the cache */
        uint64_t bb = (uint64_t)hp->n_layer * 2 * p.kv_block_size * kiln_kv_row_bytes(ctx->kv);
        uint64_t nb = bb ? p.kv_device_budget / bb : ctx->kv->n_blocks;
        ctx->kv->budget_blocks = (uint32_t)KILN_MIN(KILN_MAX(nb, 1), (uint64_t)ctx->kv->n_blocks);
    }
    ctx->kv->host_budget = p.kv_host_budget;
    ctx->kv->drop_lru = (p.flags & KILN_CONTEXT_KV_DROP_LRU) != 0;
    ctx->kv->rope = (kiln_bk_rope){sizeof(kiln_bk_rope), hp->rope_mode, hp->n_head_kv, hp->head_dim, hp->n_rot,
                                   hp->rope_freq_base, hp->rope_freq_scale, model->rope_freqs};
    ctx->ub_pos = kiln_calloc(ub, sizeof(int32_t));
    ctx->ub_cell = kiln_calloc(ub, sizeof(int32_t));
    ctx->ub_table = kiln_calloc(ub, sizeof(int32_t));
    ctx->ub_nkv = kiln_calloc(ub, sizeof(int32_t));
    ctx->ub_out = kiln_calloc(ub, sizeof(int32_t));
    ctx->seq_table_off = kiln_calloc(ns, sizeof(int32_t));
    ctx->seq_new = kiln_calloc(ns, sizeof(uint32_t));
    ctx->seq_next = kiln_calloc(ns, sizeof(uint32_t));
    if (!ctx->ub_pos || !ctx->ub_cell || !ctx->ub_table || !ctx->ub_nkv || !ctx->ub_out || !ctx->seq_table_off ||
        !ctx->seq_new || !ctx->seq_next) {
        st = kiln_error(KILN_E_OOM_HOST, "kiln_context_create: out of memory");
        goto fail;
    }
    kiln_context_pool_snapshot(ctx);
    *out = ctx;
    return KILN_OK;
fail: {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kiln_last_error());
    kiln_context_free(ctx);
    return kiln_error(st, "%s", msg);
}
}

/* Grows an array to hold at least n elements. */
static bool grow(void **p, uint32_t *cap, uint32_t n, size_t elem) {
    if (n <= *cap) return true;
    uint32_t c = *cap ? *cap : 16;
    while (c < n) c = c > UINT32_MAX / 2 ? n : c * 2;
    void *q = kiln_realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* Fills the ubatch tables for batch tokens [i0, i1) and sends them to the
 * backend. Positions were validated and reserved by kiln_decode. */
static kiln_status set_ubatch(kiln_context *ctx, const int32_t *seq_of,
                              const int32_t *pos_of, uint32_t i0, uint32_t i1) {
    kiln_kv *kv = ctx->kv;
    uint32_t n = i1 - i0, n_entries = 0;
    for (uint32_t s = 0; s < kv->n_seq; s++) ctx->seq_table_off[s] = -1;
    for (uint32_t i = i0; i < i1; i++) {
        int32_t s = seq_of[i];
        if (ctx->seq_table_off[s] < 0) {
            uint32_t nb = kv->seqs[s].n_blocks;
            if (!grow((void **)&ctx->ub_blocks, &ctx->ub_blocks_cap, n_entries + nb, sizeof(int32_t)))
                return kiln_error(KILN_E_OOM_HOST, "decode: out of memory");
            memcpy(ctx->ub_blocks + n_entries, kv->seqs[s].blocks, nb * sizeof(int32_t));
            ctx->seq_table_off[s] = (int32_t)n_entries;
            n_entries += nb;
        }
        int32_t p = pos_of[i];
        ctx->ub_pos[i - i0] = p;
        ctx->ub_cell[i - i0] = kiln_kv_cell(kv, (uint32_t)s, (uint32_t)p);
        ctx->ub_table[i - i0] = ctx->seq_table_off[s];
        ctx->ub_nkv[i - i0] = p + 1;
    }
    kiln_bk_ubatch ub = {sizeof ub, n, ctx->ub_pos, ctx->ub_cell, ctx->ub_table, ctx->ub_nkv,
                         ctx->ub_blocks, n_entries, kv->block_size, kv->n_cells};
    kiln_status st = KILN_OK;
    for (uint32_t s = 0; s < ctx->n_splits && st == KILN_OK; s++) /* every split's layers use it */
        st = kiln_context_split_bk(ctx, s)->set_ubatch(ctx->sdev[s], &ub);
    return st;
}

/* Between ubatches: the automatic purge after a prefill ubatch, then the
 * caller's callback, which may cancel the decode. */
static kiln_status after_ubatch(kiln_context *ctx, uint32_t index, uint32_t n, const int32_t *pos) {
    if ((ctx->params.flags & KILN_CONTEXT_AUTO_PURGE) && n > 1) {
        for (uint32_t s = 0; s < ctx->n_splits; s++) {
            kiln_status st = kiln_context_split_bk(ctx, s)->pool_purge(ctx->sdev[s]);
            if (st) return kiln_error(st, "decode: automatic pool purge after ubatch %u failed", index);
        }
    }
    if (!ctx->params.ubatch_cb) return KILN_OK;
    uint32_t kv_len = 0;
    for (uint32_t i = 0; i < n; i++) kv_len = KILN_MAX(kv_len, (uint32_t)pos[i] + 1);
    if (ctx->params.ubatch_cb(ctx, index, n, kv_len, ctx->params.ubatch_user) != 0)
        return kiln_error(KILN_E_CANCELLED, "kiln_decode: cancelled by the ubatch callback after ubatch %u; the "
                          "KV cache is as before the call", index);
    return KILN_OK;
}

kiln_status kiln_decode(kiln_context *ctx, const kiln_batch *batch) {
    kiln_error_clear();
    if (!ctx) return kiln_error(KILN_E_INVALID_ARG, "kiln_decode: ctx is NULL");
    ctx->last_error[0] = '\0';
    KILN_MEM_SCOPE(ctx, KILN_MEM_SCRATCH);
    if (!batch) return ctx_fail(ctx, kiln_error(KILN_E_INVALID_ARG, "kiln_decode: batch is NULL"));
    if (ctx->in_decode)
        return ctx_fail(ctx, kiln_error(KILN_E_BUSY, "kiln_decode: called from the ubatch callback"));
    kiln_batch b;
    kiln_batch_init(&b);
    kiln_status st = kiln_params_copy(&b, sizeof b, batch);
    if (st) return ctx_fail(ctx, st);
    /* a suspended context comes back by itself (and stays suspended if it
     * cannot: nothing else has changed yet) */
    if ((st = kiln_context_resume_internal(ctx))) return ctx_fail(ctx, st);
    const kiln_model *m = ctx->model;
    kiln_kv *kv = ctx->kv;
    const uint32_t n = b.n_tokens, n_vocab = m->hp.n_vocab;
    if (n == 0 || !b.tokens)
        return ctx_fail(ctx, kiln_error(KILN_E_INVALID_ARG, "kiln_decode: empty batch"));

    /* host scratch for this batch: resolved seq and pos per token */
    /* resolved seq and pos per token, in scratch kept across decodes (no
     * allocation per token in steady state) */
    if (n > ctx->batch_cap) {
        if (n > UINT32_MAX / 2)
            return ctx_fail(ctx, kiln_error(KILN_E_INVALID_ARG, "kiln_decode: batch of %u tokens is too large", n));
        int32_t *p = kiln_realloc(ctx->batch_seq_pos, (size_t)n * 2 * sizeof(int32_t));
        if (!p) return ctx_fail(ctx, kiln_error(KILN_E_OOM_HOST, "kiln_decode: out of memory"));
        ctx->batch_seq_pos = p;
        ctx->batch_cap = n;
    }
    int32_t *seq_of = ctx->batch_seq_pos, *pos_of = seq_of + n;

    memset(ctx->seq_new, 0, kv->n_seq * sizeof(uint32_t));
    for (uint32_t s = 0; s < kv->n_seq; s++) ctx->seq_next[s] = kv->seqs[s].len;
    uint32_t n_out = 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t t = b.tokens[i];
        int32_t s = b.seq_id ? b.seq_id[i] : 0;
        if (t < 0 || (uint32_t)t >= n_vocab) {
            st = kiln_error(KILN_E_INVALID_ARG, "kiln_decode: token %d at index %u out of range (n_vocab %u)", t,
                            i, n_vocab);
            goto out;
        }
        if (s < 0 || (uint32_t)s >= kv->n_seq) {
            st = kiln_error(KILN_E_INVALID_ARG, "kiln_decode: seq_id %d at index %u out of range (n_seq_max %u)",
                            s, i, kv->n_seq);
            goto out;
        }
        uint32_t expect = ctx->seq_next[s];
        if (b.pos && b.pos[i] != (int32_t)expect) {
            st = kiln_error(KILN_E_INVALID_ARG,
                            "kiln_decode: token %u of sequence %d has position %d, expected %u (positions must "
                            "continue the sequence)",
                            i, s, b.pos[i], expect);
            goto out;
        }
        if (expect >= (uint32_t)INT32_MAX) {
            st = kiln_error(KILN_E_CONTEXT_FULL, "kiln_decode: sequence %d is at the maximum position", s);
            goto out;
        }
        seq_of[i] = s;
        pos_of[i] = (int32_t)expect;
        ctx->seq_next[s] = expect + 1;
        ctx->seq_new[s]++;
        if (b.logits ? b.logits[i] != 0 : i == n - 1) n_out++;
    }
    if (!grow((void **)&ctx->logit_row, &ctx->logit_row_cap, n, sizeof(int32_t))) {
        st = kiln_error(KILN_E_OOM_HOST, "kiln_decode: out of memory");
        goto out;
    }
    if (n_out > ctx->logits_rows_cap) {
        float *l = kiln_realloc(ctx->logits, (size_t)n_out * n_vocab * sizeof(float));
        if (!l) {
            st = kiln_error(KILN_E_OOM_HOST, "kiln_decode: out of memory for %u rows of logits", n_out);
            goto out;
        }
        ctx->logits = l;
        ctx->logits_rows_cap = n_out;
    }
    if ((st = kiln_kv_reserve(kv, ctx->seq_new))) goto out;

    ctx->n_batch_last = 0; /* logits are invalid until this decode succeeds */
    ctx->in_decode = true;
    uint32_t row = 0, ub_index = 0;
    for (uint32_t i0 = 0; i0 < n; i0 += ctx->params.n_ubatch, ub_index++) {
        uint32_t i1 = KILN_MIN(n, i0 + ctx->params.n_ubatch), u_out = 0, row0 = row;
        for (uint32_t i = i0; i < i1; i++) {
            bool want = b.logits ? b.logits[i] != 0 : i == n - 1;
            ctx->logit_row[i] = want ? (int32_t)row++ : -1;
            if (want) ctx->ub_out[u_out++] = (int32_t)(i - i0);
        }
        if ((st = set_ubatch(ctx, seq_of, pos_of, i0, i1)) ||
            (st = kiln_forward_ubatch(ctx, b.tokens + i0, i1 - i0, ctx->ub_out, u_out,
                                      ctx->logits + (size_t)row0 * n_vocab))) {
            kiln_kv_rollback(kv);
            goto out;
        }
        if ((st = after_ubatch(ctx, ub_index, i1 - i0, pos_of + i0))) {
            kiln_kv_rollback(kv);
            goto out;
        }
    }
    kiln_kv_commit(kv, ctx->seq_new);
    ctx->n_batch_last = n;
out:
    ctx->in_decode = false;
    kiln_context_pool_snapshot(ctx); /* for kiln_memory_report (any thread) */
    return st ? ctx_fail(ctx, st) : KILN_OK;
}

const float *kiln_context_logits(kiln_context *ctx, int32_t i) {
    if (!ctx) return NULL;
    int32_t n = (int32_t)ctx->n_batch_last;
    if (i < 0) i += n;
    if (i < 0 || i >= n) return NULL;
    int32_t row = ctx->logit_row[i];
    return row < 0 ? NULL : ctx->logits + (size_t)row * ctx->model->hp.n_vocab;
}
