/*
 * kv.c - the paged KV cache: block allocation, per-sequence block tables,
 * reservation/rollback for decode (with copy-on-write of a shared last
 * block and automatic restore of offloaded sequences), the public sequence
 * operations and statistics.
 */
#include <string.h>

#include "kv.h"
#include "memtrack.h"

#define release_block kiln_kv_release_block

kiln_status kiln_kv_create(const kiln_backend_iface *const *bks, kiln_bk_device *const *devs, uint32_t n_layer,
                           uint32_t kv_dim, uint32_t n_ctx, uint32_t block_size, uint32_t n_seq,
                           kiln_kv **out) {
    *out = NULL;
    if (block_size == 0 || block_size > 4096 || n_ctx == 0 || n_seq == 0)
        return kiln_error(KILN_E_INVALID_ARG, "kv: bad sizes (block %u, n_ctx %u, n_seq %u)", block_size,
                          n_ctx, n_seq);
    kiln_kv *kv = kiln_calloc(1, sizeof *kv);
    if (!kv) return kiln_error(KILN_E_OOM_HOST, "kv: out of memory");
    kv->bk = bks[0];
    kv->dev = devs[0];
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
    kv->saved_cow = kiln_calloc(n_seq, sizeof *kv->saved_cow);
    kv->saved_restored = kiln_calloc(n_seq, sizeof *kv->saved_restored);
    kv->last_use = kiln_calloc(n_seq, sizeof *kv->last_use);
    kv->plan = kiln_calloc(n_seq, sizeof *kv->plan);
    kv->layer_bk = kiln_calloc(n_layer, sizeof *kv->layer_bk);
    kv->layer_dev = kiln_calloc(n_layer, sizeof *kv->layer_dev);
    if (!kv->layer_bk || !kv->layer_dev || !kv->k || !kv->v || !kv->block_refs || !kv->free_blocks ||
        !kv->seqs || !kv->saved_len || !kv->saved_nblocks || !kv->saved_cow || !kv->saved_restored || !kv->last_use || !kv->plan) {
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
    memcpy(kv->layer_bk, bks, n_layer * sizeof *bks);
    memcpy(kv->layer_dev, devs, n_layer * sizeof *devs);
    for (uint32_t b = 0; b < kv->n_blocks; b++) kv->free_blocks[b] = (int32_t)(kv->n_blocks - 1 - b);
    kv->n_free = kv->n_blocks;
    uint64_t bytes = (uint64_t)kv->n_cells * kv_dim * 2;
    for (uint32_t l = 0; l < n_layer; l++) {
        const kiln_backend_iface *bk = bks[l];
        if ((st = kiln_mem_buffer_alloc(bk, devs[l], bytes, KILN_BK_BUF_KV, KILN_MEM_KV, &kv->k[l])) ||
            (st = kiln_mem_buffer_alloc(bk, devs[l], bytes, KILN_BK_BUF_KV, KILN_MEM_KV, &kv->v[l]))) {
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
        if (kv->k && kv->k[l]) kiln_mem_buffer_free(kv->layer_bk[l], kv->k[l]);
        if (kv->v && kv->v[l]) kiln_mem_buffer_free(kv->layer_bk[l], kv->v[l]);
    }
    kiln_free(kv->layer_bk);
    kiln_free(kv->layer_dev);
    if (kv->seqs)
        for (uint32_t s = 0; s < kv->n_seq; s++) {
            kiln_free(kv->seqs[s].blocks);
            kiln_free(kv->seqs[s].host);
        }
    kiln_free(kv->k);
    kiln_free(kv->v);
    kiln_free(kv->block_refs);
    kiln_free(kv->free_blocks);
    kiln_free(kv->seqs);
    kiln_free(kv->saved_len);
    kiln_free(kv->saved_nblocks);
    kiln_free(kv->saved_cow);
    kiln_free(kv->saved_restored);
    kiln_free(kv->last_use);
    kiln_free(kv->plan);
    kiln_free(kv);
}

/* True if appending to s must first copy its last block: the block is
 * partially filled (so the append writes into it) and shared. */
static bool needs_cow(const kiln_kv *kv, const kiln_kv_seq *q) {
    return !q->host && q->len % kv->block_size != 0 && kv->block_refs[q->blocks[q->len / kv->block_size]] > 1;
}

/* Gives sequence s a private copy of its shared, partially filled last
 * block (only its first len % block_size cells hold data). */
static kiln_status cow_last_block(kiln_kv *kv, uint32_t s) {
    kiln_kv_seq *q = &kv->seqs[s];
    uint32_t last = q->len / kv->block_size;
    int32_t old = q->blocks[last], copy = kiln_kv_take_block(kv);
    uint64_t rb = kiln_kv_row_bytes(kv), n = (uint64_t)(q->len % kv->block_size) * rb;
    uint64_t src = (uint64_t)old * kv->block_size * rb, dst = (uint64_t)copy * kv->block_size * rb;
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        kiln_status st;
        const kiln_backend_iface *bk = kv->layer_bk[l];
        if ((st = bk->buffer_copy(kv->layer_dev[l], kv->k[l], dst, kv->k[l], src, n)) ||
            (st = bk->buffer_copy(kv->layer_dev[l], kv->v[l], dst, kv->v[l], src, n))) {
            release_block(kv, copy);
            return kiln_error(st, "kv: copy-on-write of block %d of sequence %u failed in layer %u", old, s, l);
        }
    }
    kv->block_refs[old]--; /* was > 1: still held by the other sequences */
    q->blocks[last] = copy;
    kv->saved_cow[s] = old;
    return KILN_OK;
}

kiln_status kiln_kv_reserve(kiln_kv *kv, const uint32_t *new_tokens) {
    uint64_t need = 0;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        const kiln_kv_seq *q = &kv->seqs[s];
        kv->saved_len[s] = q->len;
        kv->saved_nblocks[s] = q->n_blocks;
        kv->saved_cow[s] = -1;
        kv->saved_restored[s] = 0;
        if (new_tokens[s] == 0) continue;
        uint64_t total = (uint64_t)q->len + new_tokens[s];
        uint64_t blocks = (total + kv->block_size - 1) / kv->block_size;
        if (blocks > q->n_blocks) need += blocks - q->n_blocks;
        /* Counted per sequence: when several sharers of one block append
         * in the same batch the last one writes in place, so this may
         * overestimate by one block per shared block. */
        if (needs_cow(kv, q)) need++;
    }
    if (need > kiln_kv_available(kv) && kv->budget_blocks) {
        kiln_status st = kiln_kv_make_room(kv, new_tokens, need);
        if (st) return st;
    }
    if (need > kiln_kv_available(kv)) /* shared blocks freed less than planned */
        return kiln_error(KILN_E_CONTEXT_FULL,
                          "context full: %llu more KV blocks of %u tokens needed, %u free within the device budget",
                          (unsigned long long)need, kv->block_size, kiln_kv_available(kv));
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        kiln_kv_seq *q = &kv->seqs[s];
        if (new_tokens[s] == 0) continue;
        kiln_status st = KILN_OK;
        if (q->host) {
            if (!(st = kiln_kv_seq_upload_host(kv, s))) kv->saved_restored[s] = 1;
        } else if (needs_cow(kv, q)) {
            st = cow_last_block(kv, s);
        }
        if (st) {
            kiln_kv_rollback(kv);
            return st;
        }
        uint64_t total = (uint64_t)q->len + new_tokens[s];
        uint32_t blocks = (uint32_t)((total + kv->block_size - 1) / kv->block_size);
        while (q->n_blocks < blocks) q->blocks[q->n_blocks++] = kiln_kv_take_block(kv);
    }
    return KILN_OK;
}

void kiln_kv_commit(kiln_kv *kv, const uint32_t *new_tokens) {
    kv->use_clock++;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        kv->seqs[s].len += new_tokens[s];
        if (new_tokens[s]) kv->last_use[s] = kv->use_clock;
        if (kv->saved_restored[s]) {
            kiln_kv_seq_free_host(kv, s);
            kv->n_auto_restores++;
        }
        kv->saved_restored[s] = 0;
        kv->saved_cow[s] = -1;
    }
}

void kiln_kv_rollback(kiln_kv *kv) {
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        kiln_kv_seq *q = &kv->seqs[s];
        while (q->n_blocks > kv->saved_nblocks[s]) release_block(kv, q->blocks[--q->n_blocks]);
        if (kv->saved_cow[s] >= 0) {
            uint32_t last = kv->saved_len[s] / kv->block_size;
            release_block(kv, q->blocks[last]);
            kv->block_refs[kv->saved_cow[s]]++;
            q->blocks[last] = kv->saved_cow[s];
        }
        q->len = kv->saved_len[s];
        kv->saved_cow[s] = -1;
        kv->saved_restored[s] = 0; /* the host copy is still there */
    }
}

/* ---- public operations ---- */

static void seq_truncate(kiln_kv *kv, uint32_t s, uint32_t len) {
    kiln_kv_seq *q = &kv->seqs[s];
    if (len >= q->len) return;
    if (q->host) { /* offloaded: the host rows past len are simply unused */
        q->len = len;
        if (len == 0) kiln_kv_seq_free_host(kv, s);
        return;
    }
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
        if (p1 >= 0 && (uint32_t)p1 < q->len && p1 > p0) {
            /* a middle range: remove and shift (lib/kv_shift.c), one
             * sequence at a time so that a failure changes nothing */
            if (seq >= 0) return kiln_kv_seq_remove_middle(kv, s, (uint32_t)p0, (uint32_t)p1);
            return kiln_error(KILN_E_UNSUPPORTED,
                              "kiln_kv_seq_rm: removing [%d, %d) from the middle of every sequence at once is "
                              "not supported (sequence %u has length %u); remove it sequence by sequence",
                              p0, p1, s, q->len);
        }
    }
    for (uint32_t s = s0; s < s1; s++)
        if (p1 < 0 || p1 > p0) seq_truncate(kv, s, (uint32_t)p0);
    return KILN_OK;
}

int32_t kiln_kv_seq_pos_max(const kiln_kv *kv, int32_t seq) {
    if (!kv || seq < 0 || seq >= (int32_t)kv->n_seq) return -1;
    return (int32_t)kv->seqs[seq].len - 1;
}

void kiln_kv_seq_drop(kiln_kv *kv, uint32_t s) {
    seq_truncate(kv, s, 0);
    kiln_kv_seq_free_host(kv, s);
}

/* Validates a sequence id of a public call. */
static kiln_status check_seq(const kiln_kv *kv, int32_t seq, const char *fn) {
    if (seq < 0 || seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "%s: sequence %d out of range (n_seq_max %u)", fn, seq, kv->n_seq);
    return KILN_OK;
}

kiln_status kiln_kv_seq_cp(kiln_kv *kv, int32_t src_seq, int32_t dst_seq) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_cp: kv is NULL");
    kiln_status st;
    if ((st = check_seq(kv, src_seq, "kiln_kv_seq_cp")) || (st = check_seq(kv, dst_seq, "kiln_kv_seq_cp")))
        return st;
    if (src_seq == dst_seq) return KILN_OK;
    const kiln_kv_seq *src = &kv->seqs[src_seq];
    kiln_kv_seq *dst = &kv->seqs[dst_seq];
    if (src->host) {
        /* an offloaded source: the copy is offloaded too, with its own rows */
        size_t bytes = (size_t)kv->n_layer * 2 * src->host_rows * kiln_kv_row_bytes(kv);
        KILN_MEM_SCOPE(kv->owner, KILN_MEM_KV_HOST);
        uint16_t *h = kiln_malloc(bytes ? bytes : 1);
        if (!h)
            return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_cp: out of memory copying offloaded sequence %d",
                              src_seq);
        memcpy(h, src->host, bytes);
        kiln_kv_seq_drop(kv, (uint32_t)dst_seq);
        dst->host = h;
        dst->host_rows = src->host_rows;
        dst->len = src->len;
        return KILN_OK;
    }
    kiln_kv_seq_drop(kv, (uint32_t)dst_seq);
    for (uint32_t i = 0; i < src->n_blocks; i++) {
        kv->block_refs[src->blocks[i]]++;
        dst->blocks[i] = src->blocks[i];
    }
    dst->n_blocks = src->n_blocks;
    dst->len = src->len;
    return KILN_OK;
}

kiln_status kiln_kv_seq_keep(kiln_kv *kv, int32_t seq) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_keep: kv is NULL");
    kiln_status st = check_seq(kv, seq, "kiln_kv_seq_keep");
    if (st) return st;
    for (uint32_t s = 0; s < kv->n_seq; s++)
        if (s != (uint32_t)seq) kiln_kv_seq_drop(kv, s);
    return KILN_OK;
}

void kiln_kv_stats_init_sized(kiln_kv_stats *out, uint32_t size) {
    kiln_kv_stats d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(out, size, &d, sizeof d);
}

kiln_status kiln_kv_get_stats(const kiln_kv *kv, kiln_kv_stats *out) {
    kiln_error_clear();
    if (!kv || !out) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_get_stats: NULL argument");
    uint32_t n = out->struct_size;
    if (n < sizeof(uint32_t)) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_stats: bad struct_size %u", n);
    kiln_kv_stats full;
    kiln_kv_stats_init(&full);
    const uint64_t rb = kiln_kv_row_bytes(kv);
    full.block_size = kv->block_size;
    full.n_blocks_total = kv->n_blocks;
    full.n_blocks_free = kv->n_free;
    full.n_blocks_used = kv->n_blocks - kv->n_free;
    for (uint32_t b = 0; b < kv->n_blocks; b++) full.n_blocks_shared += kv->block_refs[b] > 1;
    full.n_seq_max = kv->n_seq;
    for (uint32_t s = 0; s < kv->n_seq; s++) {
        const kiln_kv_seq *q = &kv->seqs[s];
        full.n_seq += q->len > 0;
        if (q->host) {
            full.n_seq_offloaded++;
            full.bytes_host += (uint64_t)kv->n_layer * 2 * q->host_rows * rb;
        }
    }
    full.block_bytes = (uint64_t)kv->n_layer * 2 * kv->block_size * rb;
    full.bytes_device = (uint64_t)kv->n_layer * 2 * kv->n_cells * rb;
    if (kv->n_layer && !kv->k[0]) full.bytes_device = 0; /* context suspended */
    full.bytes_host += kv->suspended_host_bytes;
    full.n_auto_offloads = kv->n_auto_offloads;
    full.n_auto_restores = kv->n_auto_restores;
    full.n_dropped = kv->n_dropped;
    full.struct_size = n < sizeof full ? n : (uint32_t)sizeof full;
    memcpy(out, &full, full.struct_size);
    return KILN_OK;
}
