/*
 * kv_io.c - one sequence's KV state as bytes (export/import) and as a file
 * (save/load).
 *
 * Format, version 1 (all integers little-endian):
 *   0  char[8]  "KILNKV\0\0"
 *   8  u32      format version (1)
 *   12 u32      header bytes (40)
 *   16 u64      model fingerprint (model.h)
 *   24 u32      n_layer
 *   28 u32      kv_dim (n_head_kv * head_dim)
 *   32 u32      n_pos: positions 0..n_pos-1 follow
 *   36 u32      reserved, 0
 *   40 F16      [n_layer][K, V][n_pos][kv_dim] rows
 *   .. u64      checksum of every byte before it
 * Nothing depends on n_ctx, the block size or block placement, so a state
 * moves between contexts of differently sized caches.
 */
#include <stdio.h>
#include <string.h>

#include "hash64.h"
#include "kv.h"
#include "memtrack.h"

#define KV_MAGIC "KILNKV\0\0"
#define KV_VERSION 1u
#define KV_HEADER 40u
#define KV_TRAILER 8u

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A fast 64-bit checksum (8 bytes per step, FNV-style multiply with a
 * rotation); catches truncation and corruption, not adversaries. */
static uint64_t checksum(const uint8_t *p, size_t n) {
    const uint64_t h = kiln_hash64(0xcbf29ce484222325ull ^ n, p, n);
    return h ^ (h >> 32);
}

/* Bytes of the F16 rows of n_pos positions; false on overflow. */
static bool data_bytes(uint32_t n_layer, uint32_t kv_dim, uint32_t n_pos, size_t *out) {
    size_t a;
    return kiln_mul_size((size_t)n_layer * 2, (size_t)kv_dim * 2, &a) && kiln_mul_size(a, n_pos, out);
}

kiln_status kiln_kv_seq_export(kiln_kv *kv, int32_t seq, void *buf, size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!kv || !n_out) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_export: NULL argument");
    *n_out = 0;
    if (seq < 0 || seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_export: sequence %d out of range (n_seq_max %u)", seq,
                          kv->n_seq);
    const kiln_kv_seq *q = &kv->seqs[seq];
    size_t data, total;
    if (!data_bytes(kv->n_layer, kv->kv_dim, q->len, &data) || !kiln_add_size(data, KV_HEADER + KV_TRAILER, &total))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_export: sequence %d is too large", seq);
    *n_out = total;
    if (!buf) return KILN_OK;
    if (capacity < total)
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "kiln_kv_seq_export: %zu bytes needed, capacity %zu", total,
                          capacity);
    uint8_t *p = buf;
    memcpy(p, KV_MAGIC, 8);
    put32(p + 8, KV_VERSION);
    put32(p + 12, KV_HEADER);
    put64(p + 16, kv->fingerprint);
    put32(p + 24, kv->n_layer);
    put32(p + 28, kv->kv_dim);
    put32(p + 32, q->len);
    put32(p + 36, 0);
    uint8_t *rows = p + KV_HEADER;
    if (q->host) {
        /* offloaded: repack from host_rows to len rows per layer and K/V */
        size_t part = (size_t)q->len * kiln_kv_row_bytes(kv), stride = (size_t)q->host_rows * kiln_kv_row_bytes(kv);
        for (uint32_t i = 0; i < kv->n_layer * 2; i++)
            memcpy(rows + i * part, (const uint8_t *)q->host + i * stride, part);
    } else if (q->len > 0) {
        kiln_status st = kiln_kv_rows_download(kv, q->blocks, q->len, rows, q->len);
        if (st) return st; /* the message names the layer and rows */
    }
    put64(rows + data, checksum(p, KV_HEADER + data));
    return KILN_OK;
}

kiln_status kiln_kv_seq_import(kiln_kv *kv, int32_t seq, const void *buf, size_t size) {
    kiln_error_clear();
    if (!kv || (!buf && size > 0)) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_import: NULL argument");
    KILN_MEM_SCOPE(kv->owner, KILN_MEM_STAGING);
    if (seq < 0 || seq >= (int32_t)kv->n_seq)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_import: sequence %d out of range (n_seq_max %u)", seq,
                          kv->n_seq);
    const uint8_t *p = buf;
    if (size < KV_HEADER + KV_TRAILER)
        return kiln_error(KILN_E_FORMAT, "kiln_kv_seq_import: %zu bytes is shorter than the %u-byte header", size,
                          KV_HEADER + KV_TRAILER);
    if (memcmp(p, KV_MAGIC, 8) != 0) return kiln_error(KILN_E_FORMAT, "kiln_kv_seq_import: not KILNKV state");
    uint32_t version = get32(p + 8);
    if (version == 0) return kiln_error(KILN_E_FORMAT, "kiln_kv_seq_import: bad format version 0");
    if (version > KV_VERSION)
        return kiln_error(KILN_E_INCOMPATIBLE, "kiln_kv_seq_import: format version %u is newer than %u", version,
                          KV_VERSION);
    if (get32(p + 12) != KV_HEADER || get32(p + 36) != 0)
        return kiln_error(KILN_E_FORMAT, "kiln_kv_seq_import: bad header (size %u, reserved %u)", get32(p + 12),
                          get32(p + 36));
    uint32_t n_layer = get32(p + 24), kv_dim = get32(p + 28), n_pos = get32(p + 32);
    size_t data, total;
    if (!data_bytes(n_layer, kv_dim, n_pos, &data) || !kiln_add_size(data, KV_HEADER + KV_TRAILER, &total) ||
        total != size)
        return kiln_error(KILN_E_FORMAT,
                          "kiln_kv_seq_import: %zu bytes do not match the header (%u layers, kv_dim %u, %u "
                          "positions): truncated or trailing data",
                          size, n_layer, kv_dim, n_pos);
    if (get64(p + KV_HEADER + data) != checksum(p, KV_HEADER + data))
        return kiln_error(KILN_E_FORMAT, "kiln_kv_seq_import: checksum mismatch (corrupted state)");
    if (n_layer != kv->n_layer || kv_dim != kv->kv_dim)
        return kiln_error(KILN_E_INCOMPATIBLE,
                          "kiln_kv_seq_import: state has %u layers of kv_dim %u, this model %u of %u", n_layer,
                          kv_dim, kv->n_layer, kv->kv_dim);
    if (get64(p + 16) != kv->fingerprint)
        return kiln_error(KILN_E_INCOMPATIBLE,
                          "kiln_kv_seq_import: state is from another model (fingerprint %016llx, this model "
                          "%016llx)",
                          (unsigned long long)get64(p + 16), (unsigned long long)kv->fingerprint);
    uint32_t need = (uint32_t)(((uint64_t)n_pos + kv->block_size - 1) / kv->block_size);
    if (need > kv->n_free)
        return kiln_error(KILN_E_CONTEXT_FULL,
                          "kiln_kv_seq_import: %u positions need %u KV blocks of %u tokens, %u free", n_pos, need,
                          kv->block_size, kv->n_free);
    int32_t *blocks = kiln_malloc((need ? need : 1) * sizeof *blocks);
    if (!blocks) return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_import: out of memory");
    for (uint32_t i = 0; i < need; i++) blocks[i] = kiln_kv_take_block(kv);
    kiln_status st = kiln_kv_rows_upload(kv, blocks, n_pos, p + KV_HEADER, n_pos);
    if (st) {
        for (uint32_t i = need; i > 0; i--) kiln_kv_release_block(kv, blocks[i - 1]);
        kiln_free(blocks);
        return st;
    }
    kiln_kv_seq_drop(kv, (uint32_t)seq);
    kiln_kv_seq *q = &kv->seqs[seq];
    memcpy(q->blocks, blocks, need * sizeof *blocks);
    q->n_blocks = need;
    q->len = n_pos;
    kiln_free(blocks);
    return KILN_OK;
}

kiln_status kiln_kv_seq_save(kiln_kv *kv, int32_t seq, const char *path) {
    kiln_error_clear();
    if (!kv || !path) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_save: NULL argument");
    KILN_MEM_SCOPE(kv->owner, KILN_MEM_STAGING);
    size_t n = 0, plen = strlen(path);
    kiln_status st = kiln_kv_seq_export(kv, seq, NULL, 0, &n);
    if (st) return st;
    uint8_t *buf = kiln_malloc(n);
    char *tmp = kiln_malloc(plen + 5);
    if (!buf || !tmp) {
        kiln_free(buf);
        kiln_free(tmp);
        return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_save: out of memory for %zu bytes", n);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    if ((st = kiln_kv_seq_export(kv, seq, buf, n, &n))) goto out;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = kiln_error(KILN_E_IO, "kiln_kv_seq_save: cannot create '%s'", tmp);
        goto out;
    }
    bool ok = fwrite(buf, 1, n, f) == n;
    ok = fflush(f) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        st = kiln_error(KILN_E_IO, "kiln_kv_seq_save: cannot write '%s'", path);
    }
out:
    kiln_free(buf);
    kiln_free(tmp);
    return st;
}

kiln_status kiln_kv_seq_load(kiln_kv *kv, int32_t seq, const char *path) {
    kiln_error_clear();
    if (!kv || !path) return kiln_error(KILN_E_INVALID_ARG, "kiln_kv_seq_load: NULL argument");
    KILN_MEM_SCOPE(kv->owner, KILN_MEM_STAGING);
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_error(KILN_E_IO, "kiln_kv_seq_load: cannot open '%s'", path);
    kiln_status st = KILN_OK;
    uint8_t *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        st = kiln_error(KILN_E_IO, "kiln_kv_seq_load: cannot size '%s'", path);
        goto out;
    }
    buf = kiln_malloc(size ? (size_t)size : 1);
    if (!buf) {
        st = kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_load: out of memory for %ld bytes of '%s'", size, path);
        goto out;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        st = kiln_error(KILN_E_IO, "kiln_kv_seq_load: cannot read '%s'", path);
        goto out;
    }
    if ((st = kiln_kv_seq_import(kv, seq, buf, (size_t)size))) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        st = kiln_error(st, "%s: %s", path, msg);
    }
out:
    fclose(f);
    kiln_free(buf);
    return st;
}
