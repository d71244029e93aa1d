/*
 * kv.c - the paged KV cache: block allocation, per-sequence block tables,
 * reservation/rollback for decode, and the public kiln_kv_* operations.
 */
#include <string.h>

#include "kv.h"

static void release_block(kiln_kv *kv, int32_t b) {
    if (--kv->block_refs[b] == 0) kv->free_blocks[kv->n_free++] = b;
}

kiln_status kiln_kv_create(const kiln_backend_iface *bk, kiln_bk_device *dev, uint32_t n_layer,
                           uint32_t kv_dim, uint32_t n_ctx, uint32_t block_size, uint32_t n_seq,
                           kiln_kv **out) {
    *out = NULL;
    if (block_size == 0 || block_size > 4096 || n_ctx == 0 || n_seq == 0)
        return kiln_error(KILN_E_INVALID_ARG, "kv: bad sizes (block %u, n_ctx %u, n_seq %u)", block_size,
                          n_ctx, n_seq);
    kiln_kv *kv = kiln_calloc(1, sizeof *kv);
    if (!kv) return kiln_error(KILN_E_OOM_HOST, "kv: out of memory");
    kv->bk = bk;
    kv->dev = dev;
    kv->n_layer = n_layer;
    kv->kv_dim = kv_dim;
    kv->block_size = block_size;
    kv->n_blocks = (n_ctx + block_size - 1) / block_size;
    kv->n_cells = kv->n_blocks * block_size;
    kv->n_seq = n_seq;
    kiln_status st = KILN_OK;
    kv->k = kiln_calloc(n_layer, sizeof *kv->k);
    kv->v = kiln_calloc(n_layer, sizeof *kv->v);
    kv->block_refs = kiln_calloc(kv->n_blocks, sizeof *kv->block_refs);
    kv->free_blocks = kiln_calloc(kv->n_blocks, sizeof *kv->free_blocks);
    kv->seqs = kiln_calloc(n_seq, sizeof *kv->seqs);
    kv->saved_len = kiln_calloc(n_seq, sizeof *kv->saved_len);
    kv->saved_nblocks = kiln_calloc(n_seq, sizeof *kv->saved_nblocks);
    if (!kv->k || !kv->v || !kv->block_refs || !kv->free_blocks || !kv->seqs || !kv->saved_len ||
        !kv->saved_nblocks) {
        st = kiln_error(KILN_E_OOM_HOST, "kv: out of memory");
        goto fail;
    }
    for (uint32_t s = 0; s < n_seq; s++) {
        kv->seqs[s].blocks = kiln_calloc(kv->n_blocks, sizeof(int32_t));
        if (!kv->seqs[s].blocks) {
            st = kiln_error(KILN_E_OOM_HOST, "kv: out of memory");
            goto fail;
        }
    }
    for (uint32_t b = 0; b < kv->n_blocks; b++) kv->free_blocks[b] = (int32_t)(kv->n_blocks - 1 - b);
    kv->n_free = kv->n_blocks;
    uint64_t bytes = (uint64_t)kv->n_cells * kv_dim * 2;
    for (uint32_t l = 0; l < n_layer; l++) {
        if ((st = bk->buffer_alloc(dev, bytes, KILN_BK_BUF_KV, &kv->k[l])) ||
            (st = bk->buffer_alloc(dev, bytes, KILN_BK_BUF_KV, &kv->v[l]))) {
            st = kiln_error(st, "kv: cannot allocate %llu bytes for layer %u on %s", (unsigned long long)bytes,
                            l, bk->name);
            goto fail;
        }
    }
    *out = kv;
    return KILN_OK;
fail:
    kiln_kv_destroy(kv);
    return st;
}

void kiln_kv_destroy(kiln_kv *kv) {
    if (!kv) return;
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        if (kv->k && kv->k[l]) kv->bk->buffer_free(kv->k[l]);
        if (kv->v && kv->v[l]) kv->bk->buffer_free(kv->v[l]);
    }
    if (kv->seqs)
        for (uint32_t s = 0; s < kv->n_seq; s++) kiln_free(kv->seqs[s].blocks);
    kiln_free(kv->k);
    kiln_free(kv->v);
    kiln_free(kv->block_refs);
    kiln_free(kv->free_blocks);
    kiln_free(kv->seqs);
    kiln_free(kv->saved_len);
    kiln_free(kv->saved_nblocks);
    kiln_free(kv);
}

kiln_status kiln_kv_reserve(kiln_kv *kv, const uint32_t *new_tokens) {
    uint64_t need = 0;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        const kiln_kv_seq *q = &kv->seqs[s];
        kv->saved_len[s] = q->len;
        kv->saved_nblocks[s] = q->n_blocks;
        uint64_t total = (uint64_t)q->len + new_tokens[s];
        uint64_t blocks = (total + kv->block_size - 1) / kv->block_size;
        if (blocks > q->n_blocks) need += blocks - q->n_blocks;
    }
    if (need > kv->n_free)
        return kiln_error(KILN_E_CONTEXT_FULL, "context full: %llu more KV blocks of %u tokens needed, %u free",
                          (unsigned long long)need, kv->block_size, kv->n_free);
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        kiln_kv_seq *q = &kv->seqs[s];
        uint64_t total = (uint64_t)q->len + new_tokens[s];
        uint32_t blocks = (uint32_t)((total + kv->block_size - 1) / kv->block_size);
        while (q->n_blocks < blocks) {
            int32_t b = kv->free_blocks[--kv->n_free];
            kv->block_refs[b] = 1;
            q->blocks[q->n_blocks++] = b;
        }
    }
    return KILN_OK;
}

void kiln_kv_commit(kiln_kv *kv, const uint32_t *new_tokens) {
    for (uint32_t s = 0; s < kv->n_seq; s++) kv->seqs[s].len += new_tokens[s];
}

void kiln_kv_rollback(kiln_kv *kv) {
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        kiln_kv_seq *q = &kv->seqs[s];
        while (q->n_blocks > kv->saved_nblocks[s]) release_block(kv, q->blocks[--q->n_blocks]);
        q->len = kv->saved_len[s];
    }
}

/* ---- public operations ---- */

static void seq_truncate(kiln_kv *kv, uint32_t s, uint32_t len) {
    kiln_kv_seq *q = &kv->seqs[s];
    if (len >= q->len) return;
    uint32_t blocks = (len + kv->block_size - 1) / kv->block_size;
    while (q->n_blocks > blocks) release_block(kv, q->blocks[--q->n_blocks]);
    q->len = len;
}

kiln_status kiln_kv_clear(kiln_kv *kv) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_clear: kv is NULL");
    for (uint32_t s = 0; s < kv->n_seq; s++) seq_truncate(kv, s, 0);
    return KILN_OK;
}

kiln_status kiln_kv_seq_rm(kiln_kv *kv, int32_t seq, int32_t p0, int32_t p1) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_rm: kv is NULL");
    if (seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_rm: sequence %d out of range (n_seq_max %u)", seq,
                          kv->n_seq);
    if (p0 < 0) p0 = 0;
    uint32_t s0 = seq < 0 ? 0 : (uint32_t)seq, s1 = seq < 0 ? kv->n_seq : (uint32_t)seq + 1;
    for (uint32_t s = s0; s < s1; s++) {
        const kiln_kv_seq *q = &kv->seqs[s];
        if ((uint32_t)p0 >= q->len) continue;
        if (p1 >= 0 && (uint32_t)p1 < q->len && p1 > p0)
            return kiln_error(KILN_E_UNSUPPORTED,
                              "kiln_kv_seq_rm: removing [%d, %d) from the middle of sequence %u (length %u) "
                              "is not supported yet; remove a suffix",
                              p0, p1, s, q->len);
    }
    for (uint32_t s = s0; s < s1; s++)
        if (p1 < 0 || p1 > p0) seq_truncate(kv, s, (uint32_t)p0);
    return KILN_OK;
}

int32_t kiln_kv_seq_pos_max(const kiln_kv *kv, int32_t seq) {
    if (!kv || seq < 0 || seq >= (int32_t)kv->n_seq) return -1;
    return (int32_t)kv->seqs[seq].len - 1;
}
