/*
 * context.h - a context: a model reference, compute device handles of its
 * own (one per split of the model: its thread pool or stream and transient
 * pool), the paged KV cache and the logits of the last batch.
 */
#ifndef KILN_CONTEXT_H
#define KILN_CONTEXT_H

#include "kv.h"
#include "model.h"

struct kiln_context {
    kiln_model *model;             /* counted reference */
    kiln_logger log;
    kiln_context_params params;
    /* A compute device handle per split of the model (model->splits[s]:
     * its backend and device index), each with its own stream or thread
     * pool and transient pool; bk/dev are split 0's (the only one of an
     * unsplit model). */
    const kiln_backend_iface *bk;
    kiln_bk_device *dev;
    kiln_bk_device **sdev;         /* [model->n_splits] */
    uint32_t n_splits;
    float *stage;                  /* host staging of the activations between splits, n_ubatch rows */
    kiln_kv *kv;
    char last_error[512];

    /* logits of the last batch: n_out rows of n_vocab */
    float *logits;
    uint64_t logits_rows_cap;
    int32_t *logit_row;            /* [batch token] row or -1 */
    uint32_t logit_row_cap;
    uint32_t n_batch_last;
    bool no_graphs;                /* KILN_NO_GRAPHS set: never record backend graphs */

    /* host scratch for building ubatches, sized at create */
    int32_t *ub_pos, *ub_cell, *ub_table, *ub_nkv, *ub_out, *ub_blocks;
    uint32_t ub_blocks_cap;
    int32_t *batch_seq_pos;        /* [2 * batch_cap]: resolved seq, then pos, per batch token */
    uint32_t batch_cap;
    int32_t *seq_table_off;        /* [n_seq] offset of a seq's table in ub_blocks or -1 */
    uint32_t *seq_new;             /* [n_seq] tokens the batch adds */
    uint32_t *seq_next;            /* [n_seq] next position while planning */

    /* the draft attached to this (target) context or NULL; not owned: the
     * context's free detaches it (lib/draft.h) */
    struct kiln_draft *draft;

    /* lifecycle (lib/suspend.c). While suspended (level >= 1) the KV
     * cache's per-layer device buffers kv->k[l], kv->v[l] are NULL and their
     * used prefix lives in kv_host; the block tables stay in kv. */
    int32_t suspended;             /* 0 active, 1 KV on host, 2 also weights let go */
    uint8_t *kv_host;              /* K then V of each layer, kv_host_cells rows each */
    uint32_t kv_host_cells;        /* cells saved per buffer (a prefix of n_cells) */
    bool weights_held;             /* counted in model->weights_holds */
    bool in_decode;                /* inside kiln_decode (the ubatch callback may run) */
};

/* Suspend/resume internals (lib/suspend.c). kiln_context_hold_weights()
 * makes the model's weights resident (re-uploading them if every holder had
 * let go) and counts this context as a holder; kiln_context_drop_weights()
 * undoes it at free. kiln_context_resume_internal() is kiln_context_resume
 * without the public checks, for kiln_decode. */
kiln_status kiln_context_hold_weights(kiln_context *ctx);
void kiln_context_drop_weights(kiln_context *ctx);
kiln_status kiln_context_resume_internal(kiln_context *ctx);
/* The KV cache's resident() hook: resumes the context (an opaque owner). */
kiln_status kiln_context_kv_resident(void *ctx);

/* The backend of split s of the context's model. Split 0's is read from
 * ctx->bk, so that a test may run a context on a wrapped iface (one
 * operation replaced: test/ggml_attn.h) by setting ctx->bk alone. */
static inline const kiln_backend_iface *kiln_context_split_bk(const kiln_context *ctx, uint32_t s) {
    return s == 0 ? ctx->bk : ctx->model->splits[s].bk;
}
/* Records every device handle's pool statistics for the memory report. */
void kiln_context_pool_snapshot(kiln_context *ctx);
/* Waits for every device handle's queued work; the first error. */
kiln_status kiln_context_synchronize(kiln_context *ctx);

/* Runs the model on one ubatch whose metadata was set with set_ubatch;
 * writes n_out rows of logits (for ubatch rows out_idx[]) to logits. */
kiln_status kiln_forward_ubatch(kiln_context *ctx, const int32_t *tokens, uint32_t n,
                                const int32_t *out_idx, uint32_t n_out, float *logits);

#endif
