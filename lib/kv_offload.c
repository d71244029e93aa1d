/*
 * kv_offload.c - moving a sequence's KV rows between its device blocks and
 * host memory: the row copy helpers (also used by export/import in
 * kv_io.c) and the public kiln_kv_seq_offload / kiln_kv_seq_restore.
 *
 * Host layout, shared by the offload buffer and the export format:
 * [layer][K, V][stride rows][kv_dim F16]. Rows are copied bit for bit, so
 * a restored sequence decodes exactly as if it had never left the device.
 *
 * Ownership: an offloaded sequence owns seqs[s].host (kiln_malloc'd) until
 * it is restored, dropped, or the cache is destroyed.
 */
#include <string.h>

#include "kv.h"
#include "memtrack.h"

/* Byte offset of rows [row, ...) of (layer l, K or V c) in a host array. */
static uint64_t host_off(const kiln_kv *kv, uint32_t l, uint32_t c, uint32_t stride, uint32_t row) {
    return (((uint64_t)l * 2 + c) * stride + row) * kiln_kv_row_bytes(kv);
}

/* Copies rows [0, n) through the block table in the direction asked. */
static kiln_status rows_move(kiln_kv *kv, const int32_t *blocks, uint32_t n, uint8_t *host, uint32_t stride,
                             bool download) {
    const uint64_t rb = kiln_kv_row_bytes(kv);
    const uint32_t bs = kv->block_size;
    kiln_status rst;
    if (kv->resident && (rst = kv->resident(kv->owner))) return rst; /* a suspended context resumes */
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        for (uint32_t c = 0; c < 2; c++) {
            kiln_bk_buffer *buf = c ? kv->v[l] : kv->k[l];
            for (uint32_t r0 = 0; r0 < n; r0 += bs) {
                uint32_t rows = KILN_MIN(bs, n - r0);
                uint64_t dev_off = (uint64_t)blocks[r0 / bs] * bs * rb;
                uint8_t *h = host + host_off(kv, l, c, stride, r0);
                const kiln_backend_iface *bk = kv->layer_bk[l];
                kiln_status st = download ? bk->buffer_download(kv->layer_dev[l], buf, dev_off, h, rows * rb)
                                          : bk->buffer_upload(kv->layer_dev[l], buf, dev_off, h, rows * rb);
                if (st)
                    return kiln_error(st, "kv: %s of layer %u %c rows %u..%u failed on %s",
                                      download ? "download" : "upload", l, c ? 'V' : 'K', r0, r0 + rows - 1,
                                      bk->name);
            }
        }
    }
    return KILN_OK;
}

kiln_status kiln_kv_rows_download(kiln_kv *kv, const int32_t *blocks, uint32_t n, void *host,
                                  uint32_t stride) {
    return rows_move(kv, blocks, n, (uint8_t *)host, stride, true);
}

kiln_status kiln_kv_rows_upload(kiln_kv *kv, const int32_t *blocks, uint32_t n, const void *host,
                                uint32_t stride) {
    return rows_move(kv, blocks, n, (uint8_t *)(uintptr_t)host, stride, false);
}

kiln_status kiln_kv_seq_upload_host(kiln_kv *kv, uint32_t s) {
    kiln_kv_seq *q = &kv->seqs[s];
    uint32_t need = (q->len + kv->block_size - 1) / kv->block_size;
    for (uint32_t i = 0; i < need; i++) q->blocks[i] = kiln_kv_take_block(kv);
    q->n_blocks = need;
    kiln_status st = kiln_kv_rows_upload(kv, q->blocks, q->len, q->host, q->host_rows);
    if (st) {
        while (q->n_blocks > 0) kiln_kv_release_block(kv, q->blocks[--q->n_blocks]);
        return st;
    }
    return KILN_OK;
}

void kiln_kv_seq_free_host(kiln_kv *kv, uint32_t s) {
    kiln_free(kv->seqs[s].host);
    kv->seqs[s].host = NULL;
    kv->seqs[s].host_rows = 0;
}

kiln_status kiln_kv_seq_offload(kiln_kv *kv, int32_t seq) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_offload: kv is NULL");
    if (seq < 0 || seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_offload: sequence %d out of range (n_seq_max %u)", seq,
                          kv->n_seq);
    kiln_kv_seq *q = &kv->seqs[seq];
    if (q->host || q->len == 0) return KILN_OK;
    size_t bytes;
    if (!kiln_mul_size((size_t)kv->n_layer * 2 * q->len, (size_t)kiln_kv_row_bytes(kv), &bytes))
        return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_offload: sequence %d is too large for host memory", seq);
    KILN_MEM_SCOPE(kv->owner, KILN_MEM_KV_HOST);
    uint16_t *h = kiln_malloc(bytes);
    if (!h)
        return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_offload: out of memory for %zu bytes of sequence %d",
                          bytes, seq);
    kiln_status st = kiln_kv_rows_download(kv, q->blocks, q->len, h, q->len);
    if (st) {
        kiln_free(h);
        return st;
    }
    /* shared blocks keep the other sequences' references */
    while (q->n_blocks > 0) kiln_kv_release_block(kv, q->blocks[--q->n_blocks]);
    q->host = h;
    q->host_rows = q->len;
    return KILN_OK;
}

kiln_status kiln_kv_seq_restore(kiln_kv *kv, int32_t seq) {
    kiln_error_clear();
    if (!kv) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_restore: kv is NULL");
    if (seq < 0 || seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_restore: sequence %d out of range (n_seq_max %u)", seq,
                          kv->n_seq);
    kiln_kv_seq *q = &kv->seqs[seq];
    if (!q->host) return KILN_OK;
    uint32_t need = (q->len + kv->block_size - 1) / kv->block_size;
    if (need > kv->n_free)
        return kiln_error(KILN_E_CONTEXT_FULL,
                          "kiln_kv_seq_restore: sequence %d needs %u KV blocks of %u tokens, %u free", seq, need,
                          kv->block_size, kv->n_free);
    kiln_status st = kiln_kv_seq_upload_host(kv, (uint32_t)seq);
    if (st) return st;
    kiln_kv_seq_free_host(kv, (uint32_t)seq);
    return KILN_OK;
}
