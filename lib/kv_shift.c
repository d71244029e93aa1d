/*
 * kv_shift.c - removing a range from the middle of a sequence ("remove and
 * shift").
 *
 * kiln's attention reads positions 0..len-1 of a sequence, so a hole cannot
 * stay: the rows of positions >= p1 move down by d = p1 - p0. Their K rows
 * were rotated (RoPE) for their old positions; rotations compose, so
 * rotating by -d gives the rotation of the new position (up to rounding:
 * the rows are F16). V has no position and moves as is. As with
 * llama.cpp's context shift, the shifted rows still carry what they
 * attended to before the removal: the result is close to, not equal to, a
 * fresh prefill without the removed tokens.
 *
 * Atomicity: the first block touched and everything after it are read into
 * a host staging buffer, rebuilt there and uploaded into fresh blocks; only
 * then are the old tail blocks released (shared ones keep the other
 * sequences' references, so copies are never disturbed). An offloaded
 * sequence is rebuilt in its host buffer in place (nothing can fail).
 */
#include <math.h>
#include <string.h>

#include "kv.h"
#include "quant.h"
#include "memtrack.h"

#define MAX_PAIRS 1024

/* cos/sin of the rotation by -d for each pair, as the forward pass builds
 * its angles (theta_i = pos * base^(-2i/n_rot), / freq factor, * scale). */
static void shift_table(const kiln_bk_rope *r, uint32_t d, float *cs, float *sn) {
    const float theta_scale = powf(r->freq_base, -2.0f / (float)r->n_rot);
    float theta = -(float)d;
    for (uint32_t i = 0; i < r->n_rot / 2; i++) {
        const float ff = r->freq_factors ? r->freq_factors[i] : 1.0f;
        const float th = r->freq_scale * (theta / ff);
        cs[i] = cosf(th);
        sn[i] = sinf(th);
        theta *= theta_scale;
    }
}

/* Rotates one K row (n_head heads of head_dim F16 values) in place. */
static void rotate_row(const kiln_bk_rope *r, uint16_t *row, const float *cs, const float *sn) {
    const uint32_t half = r->n_rot / 2;
    for (uint32_t h = 0; h < r->n_head; h++) {
        uint16_t *v = row + (size_t)h * r->head_dim;
        for (uint32_t i = 0; i < half; i++) {
            uint16_t *a = r->mode == KILN_ROPE_NEOX ? v + i : v + 2 * i;
            uint16_t *b = r->mode == KILN_ROPE_NEOX ? v + i + half : v + 2 * i + 1;
            const float x0 = kiln_fp16_to_fp32(*a), x1 = kiln_fp16_to_fp32(*b);
            *a = kiln_fp32_to_fp16(x0 * cs[i] - x1 * sn[i]);
            *b = kiln_fp32_to_fp16(x0 * sn[i] + x1 * cs[i]);
        }
    }
}

/* In a host array [layer][K, V][stride][kv_dim] whose row 0 is position
 * `base`: moves rows of positions [p1, len) to p0 and re-rotates their K. */
static void shift_rows(kiln_kv *kv, uint16_t *h, uint32_t stride, uint32_t base, uint32_t p0, uint32_t p1,
                       uint32_t len, const float *cs, const float *sn) {
    const size_t rd = kv->kv_dim, n = len - p1;
    for (uint32_t l = 0; l < kv->n_layer; l++) {
        for (uint32_t c = 0; c < 2; c++) {
            uint16_t *part = h + ((size_t)l * 2 + c) * stride * rd;
            memmove(part + (size_t)(p0 - base) * rd, part + (size_t)(p1 - base) * rd, n * rd * sizeof *h);
            if (c == 0)
                for (size_t i = 0; i < n; i++) rotate_row(&kv->rope, part + (size_t)(p0 - base + i) * rd, cs, sn);
        }
    }
}

kiln_status kiln_kv_seq_remove_middle(kiln_kv *kv, uint32_t s, uint32_t p0, uint32_t p1) {
    const kiln_bk_rope *r = &kv->rope;
    if (r->n_rot == 0 || r->n_rot % 2 || r->n_rot > r->head_dim || r->n_rot / 2 > MAX_PAIRS ||
        (uint64_t)r->n_head * r->head_dim != kv->kv_dim ||
        (r->mode != KILN_ROPE_NORM && r->mode != KILN_ROPE_NEOX))
        return kiln_error(KILN_E_UNSUPPORTED, "kiln_kv_seq_rm: this model's RoPE cannot be shifted (n_rot %u)",
                          r->n_rot);
    kiln_kv_seq *q = &kv->seqs[s];
    const uint32_t len = q->len, d = p1 - p0, new_len = len - d;
    float cs[MAX_PAIRS], sn[MAX_PAIRS];
    shift_table(r, d, cs, sn);
    if (q->host) {
        shift_rows(kv, q->host, q->host_rows, 0, p0, p1, len, cs, sn);
        q->len = new_len;
        return KILN_OK;
    }
    const uint32_t bs = kv->block_size, b0 = p0 / bs, r0 = b0 * bs;
    const uint32_t n_old = len - r0, n_new = new_len - r0, nb = (n_new + bs - 1) / bs;
    if (nb > kv->n_free)
        return kiln_error(KILN_E_CONTEXT_FULL,
                          "kiln_kv_seq_rm: shifting sequence %u needs %u free KV blocks of %u tokens, %u free", s,
                          nb, bs, kv->n_free);
    size_t rows_bytes;
    if (!kiln_mul_size((size_t)kv->n_layer * 2 * n_old, (size_t)kiln_kv_row_bytes(kv), &rows_bytes) ||
        rows_bytes > SIZE_MAX - (size_t)nb * sizeof(int32_t))
        return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_rm: sequence %u is too large to shift", s);
    /* one allocation: the new block ids, then the staging rows */
    KILN_MEM_SCOPE(kv->owner, KILN_MEM_STAGING);
    int32_t *fresh = kiln_malloc((size_t)nb * sizeof(int32_t) + rows_bytes);
    if (!fresh) return kiln_error(KILN_E_OOM_HOST, "kiln_kv_seq_rm: out of memory shifting sequence %u", s);
    uint16_t *stage = (uint16_t *)(fresh + nb);
    kiln_status st = kiln_kv_rows_download(kv, q->blocks + b0, n_old, stage, n_old);
    if (st) {
        kiln_free(fresh);
        return st;
    }
    shift_rows(kv, stage, n_old, r0, p0, p1, len, cs, sn);
    for (uint32_t i = 0; i < nb; i++) fresh[i] = kiln_kv_take_block(kv);
    if ((st = kiln_kv_rows_upload(kv, fresh, n_new, stage, n_old))) {
        for (uint32_t i = nb; i > 0; i--) kiln_kv_release_block(kv, fresh[i - 1]);
        kiln_free(fresh);
        return st;
    }
    while (q->n_blocks > b0) kiln_kv_release_block(kv, q->blocks[--q->n_blocks]);
    memcpy(q->blocks + b0, fresh, (size_t)nb * sizeof(int32_t));
    q->n_blocks = b0 + nb;
    q->len = new_len;
    kiln_free(fresh);
    return KILN_OK;
}
