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
 *
 * Sequence copies share blocks by reference (refcount++). Full blocks are
 * never written again, so only a shared, partially filled last block needs
 * copying before an append: the reservation does that copy-on-write.
 *
 * Offload (lib/kv_offload.c): a sequence's rows move into one host buffer
 * it owns (host, host_rows rows per layer and K/V) and its device blocks
 * are released; len is kept. A reservation that appends to an offloaded
 * sequence restores it first (the host copy is freed on commit and kept on
 * rollback). Export/import/save/load live in lib/kv_io.c.
 */
#ifndef KILN_KV_H
#define KILN_KV_H

#include "internal.h"
#include "kiln_backend.h"

typedef struct kiln_kv_seq {
    int32_t *blocks;     /* block table, capacity n_blocks */
    uint32_t n_blocks;   /* entries used (0 while offloaded) */
    uint32_t len;        /* positions stored (on device or on the host) */
    /* offloaded rows, owned: layout [layer][K, V][host_rows][kv_dim] F16;
     * NULL when the sequence lives on the device */
    uint16_t *host;
    uint32_t host_rows;  /* rows per layer and K/V in host (>= len) */
} kiln_kv_seq;

struct kiln_kv {
    /* each layer's K/V buffers live on that layer's device (the context's
     * handle for the layer's split, lib/context.h); bk/dev are layer 0's */
    const kiln_backend_iface *bk;
    kiln_bk_device *dev;
    const kiln_backend_iface **layer_bk;  /* [n_layer] */
    kiln_bk_device **layer_dev;           /* [n_layer] */
    uint32_t n_layer, kv_dim, block_size, n_blocks, n_cells, n_seq;
    kiln_bk_buffer **k, **v;      /* [n_layer] */
    uint16_t *block_refs;         /* [n_blocks] */
    int32_t *free_blocks;         /* stack of free block ids */
    uint32_t n_free;
    kiln_kv_seq *seqs;            /* [n_seq] */
    uint32_t *saved_len;          /* [n_seq] lengths before the reservation */
    uint32_t *saved_nblocks;      /* [n_seq] */
    int32_t *saved_cow;           /* [n_seq] block replaced by a copy-on-write, or -1 */
    uint8_t *saved_restored;      /* [n_seq] 1: restored from the host by the reservation */
    uint64_t fingerprint;         /* the model's (model.h), set by the context */
    /* Set by the context (lib/suspend.c): while the context is suspended
     * the K/V buffers are NULL and their contents on the host; operations
     * that move rows call resident(owner) first, which brings them back.
     * suspended_host_bytes: size of that host copy (0 when active). */
    kiln_status (*resident)(void *owner);
    void *owner;
    uint64_t suspended_host_bytes;
    /* the model's RoPE of K (n_head = n_head_kv), set by the context: a
     * middle removal re-rotates the K rows it shifts (lib/kv_shift.c);
     * n_rot == 0 means unknown, and middle removal is unsupported */
    kiln_bk_rope rope;
    /* Automatic idle offload (set by the context, see kiln_kv_reserve):
     * the reservation keeps the device blocks in use at or under
     * budget_blocks (0: off, the default) by offloading the
     * least recently used idle sequences; their host rows may total at most
     * host_budget bytes (0: unlimited), past which drop_lru drops the least
     * recently used offloaded idle sequence instead of failing. */
    uint32_t budget_blocks;
    uint64_t host_budget;
    bool drop_lru;
    uint64_t use_clock;           /* bumped by every committed decode */
    uint64_t *last_use;           /* [n_seq] use_clock of its last decode */
    uint8_t *plan;                /* [n_seq] scratch of the offload planner */
    uint64_t n_auto_offloads, n_auto_restores, n_dropped; /* statistics */
};

/* Allocates the cache (n_ctx rounded up to whole blocks), layer l's
 * buffers through (bks[l], devs[l]) (arrays of n_layer, copied). */
kiln_status kiln_kv_create(const kiln_backend_iface *const *bks, kiln_bk_device *const *devs, uint32_t n_layer,
                           uint32_t kv_dim, uint32_t n_ctx, uint32_t block_size, uint32_t n_seq,
                           kiln_kv **out);
void kiln_kv_destroy(kiln_kv *kv);

/* Reserves room for new_tokens[s] more positions in each sequence s (array
 * of n_seq). With a device budget (budget_blocks != 0), when the blocks
 * needed exceed the free blocks within it, least recently used idle sequences (new_tokens 0) are
 * first offloaded to host memory (lib/kv_budget.c). Those offloads (and,
 * with drop_lru, drops) stay even if this reservation or the decode later
 * fails: an offloaded sequence is intact and comes back on its next decode.
 * KILN_E_CONTEXT_FULL (nothing changed) if no idle sequence can make room
 * or the host budget forbids it; KILN_E_OOM_HOST or KILN_E_BACKEND from an
 * offload (earlier offloads of this call kept). */
kiln_status kiln_kv_reserve(kiln_kv *kv, const uint32_t *new_tokens);
/* Keeps a reservation (sequence lengths grow by the reserved counts). */
void kiln_kv_commit(kiln_kv *kv, const uint32_t *new_tokens);
/* Returns every block taken by the last reservation. */
void kiln_kv_rollback(kiln_kv *kv);

/* Takes a free block (refcount 1); the caller checked n_free > 0. */
static inline int32_t kiln_kv_take_block(kiln_kv *kv) {
    int32_t b = kv->free_blocks[--kv->n_free];
    kv->block_refs[b] = 1;
    return b;
}
/* Drops one reference; the block is free again at zero. */
static inline void kiln_kv_release_block(kiln_kv *kv, int32_t b) {
    if (--kv->block_refs[b] == 0) kv->free_blocks[kv->n_free++] = b;
}
/* Bytes of one F16 row. */
static inline uint64_t kiln_kv_row_bytes(const kiln_kv *kv) { return (uint64_t)kv->kv_dim * 2; }
/* Releases sequence s's device blocks and host copy; it becomes empty. */
void kiln_kv_seq_drop(kiln_kv *kv, uint32_t s);

/* ---- lib/kv_offload.c ---- */

/* Moves rows [0, n) of layer buffers between the device blocks of table
 * `blocks` and a host array laid out [layer][K, V][stride][kv_dim]. */
kiln_status kiln_kv_rows_download(kiln_kv *kv, const int32_t *blocks, uint32_t n, void *host,
                                  uint32_t stride);
kiln_status kiln_kv_rows_upload(kiln_kv *kv, const int32_t *blocks, uint32_t n, const void *host,
                                uint32_t stride);
/* Brings offloaded sequence s back onto fresh device blocks, keeping the
 * host copy (the caller frees it once it is sure). The caller checked
 * that enough blocks are free. On failure the blocks are returned and s is
 * offloaded as before. */
kiln_status kiln_kv_seq_upload_host(kiln_kv *kv, uint32_t s);
/* Frees sequence s's host copy. */
void kiln_kv_seq_free_host(kiln_kv *kv, uint32_t s);

/* ---- lib/kv_budget.c ---- */

/* Free blocks a reservation may take: n_free, limited by budget_blocks
 * when that is set. */
uint32_t kiln_kv_available(const kiln_kv *kv);
/* Makes need blocks available (see kiln_kv_reserve) by offloading (or,
 * with drop_lru, dropping) least recently used sequences with
 * new_tokens[s] == 0. Plans first, so KILN_E_CONTEXT_FULL changes
 * nothing; KILN_E_OOM_HOST / KILN_E_BACKEND keep offloads already done. */
kiln_status kiln_kv_make_room(kiln_kv *kv, const uint32_t *new_tokens, uint64_t need);
/* Host bytes of sequence s's rows once offloaded (or now, if it is). */
uint64_t kiln_kv_seq_host_bytes(const kiln_kv *kv, uint32_t s);

/* ---- lib/kv_shift.c ---- */

/* Removes positions [p0, p1) from the middle of sequence s (p0 < p1 <
 * len): positions >= p1 move down by p1 - p0 and their K rows are rotated
 * back by that distance. The rewritten tail goes into fresh blocks, so
 * KILN_E_CONTEXT_FULL, KILN_E_OOM_HOST or a backend error leave s as it
 * was. */
kiln_status kiln_kv_seq_remove_middle(kiln_kv *kv, uint32_t s, uint32_t p0, uint32_t p1);

/* Cell index of position pos of sequence s (pos within the reservation). */
static inline int32_t kiln_kv_cell(const kiln_kv *kv, uint32_t s, uint32_t pos) {
    return kv->seqs[s].blocks[pos / kv->block_size] * (int32_t)kv->block_size +
           (int32_t)(pos % kv->block_size);
}

#endif
