/*
 * kv.h - the paged KV cache of a context.
 *
 * Storage: per layer one K and one V buffer of n_cells rows of kv_dim F16
 * values on the context's device. Cells are grouped in blocks of
 * block_size; each sequence owns a block table (its logical positions
 * 0..len-1 map to block_table[pos / block_size], slot pos % block_size).
 * Blocks carry a reference count so that later sequence copies can share a
 * prefix (copy-on-write).
 *
 * Decoding goes through a reservation: kiln_kv_reserve() checks and takes
 * every block a batch will need up front (so a full cache is reported
 * before anything changes), and kiln_kv_rollback() undoes it when the
 * decode fails, leaving the cache exactly as before.
 */
#ifndef KILN_KV_H
#define KILN_KV_H

#include "internal.h"
#include "kiln_backend.h"

typedef struct kiln_kv_seq {
    int32_t *blocks;     /* block table, capacity n_blocks */
    uint32_t n_blocks;   /* entries used */
    uint32_t len;        /* positions stored */
} kiln_kv_seq;

struct kiln_kv {
    const kiln_backend_iface *bk;
    kiln_bk_device *dev;
    uint32_t n_layer, kv_dim, block_size, n_blocks, n_cells, n_seq;
    kiln_bk_buffer **k, **v;      /* [n_layer] */
    uint16_t *block_refs;         /* [n_blocks] */
    int32_t *free_blocks;         /* stack of free block ids */
    uint32_t n_free;
    kiln_kv_seq *seqs;            /* [n_seq] */
    uint32_t *saved_len;          /* [n_seq] lengths before the reservation */
    uint32_t *saved_nblocks;      /* [n_seq] */
};

/* Allocates the cache (n_ctx rounded up to whole blocks). */
kiln_status kiln_kv_create(const kiln_backend_iface *bk, kiln_bk_device *dev, uint32_t n_layer,
                           uint32_t kv_dim, uint32_t n_ctx, uint32_t block_size, uint32_t n_seq,
                           kiln_kv **out);
void kiln_kv_destroy(kiln_kv *kv);

/* Reserves room for new_tokens[s] more positions in each sequence s (array
 * of n_seq). KILN_E_CONTEXT_FULL (nothing changed) if blocks run out. */
kiln_status kiln_kv_reserve(kiln_kv *kv, const uint32_t *new_tokens);
/* Keeps a reservation (sequence lengths grow by the reserved counts). */
void kiln_kv_commit(kiln_kv *kv, const uint32_t *new_tokens);
/* Returns every block taken by the last reservation. */
void kiln_kv_rollback(kiln_kv *kv);

/* Cell index of position pos of sequence s (pos within the reservation). */
static inline int32_t kiln_kv_cell(const kiln_kv *kv, uint32_t s, uint32_t pos) {
    return kv->seqs[s].blocks[pos / kv->block_size] * (int32_t)kv->block_size +
           (int32_t)(pos % kv->block_size);
}

#endif
