/*
 * vk_attn.c - rope, the KV store and attention (vk_ops.c's conventions):
 * rope with the CPU backend's cos/sin table, kv_store, attention (prefill
 * tiles, the decode kernel, a long context's splits and their fold), and
 * the fused decode entries rope_kv_store and rope_kv_attention.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "vk_internal.h"

/* ------------------------------------------------------------------------ */
/* rope                                                                     */
/* ------------------------------------------------------------------------ */

#define KILN_VK_ROPE_MAX_PAIRS 1024

/* The cos/sin table of the current ubatch in the ring, built exactly as
 * the CPU backend builds it (backends/cpu/cpu_ops.c), reused by q and k. */
static kiln_status rope_table(kiln_bk_device *dev, const kiln_bk_rope *r, uint64_t *offset,
                              const kiln_bk_buffer **buf) {
    kiln_vk_rope_cache *c = &dev->rope;
    const size_t half = r->n_rot / 2;
    bool same = c->valid && c->ub_gen == dev->ub.gen && c->ring_epoch == dev->ring_epoch && c->n_rot == r->n_rot &&
                c->freq_base == r->freq_base && c->freq_scale == r->freq_scale &&
                c->has_factors == (r->freq_factors != NULL) &&
                (!r->freq_factors || memcmp(c->factors, r->freq_factors, half * sizeof(float)) == 0);
    if (same) {
        *offset = c->ring_offset;
        *buf = c->ring_buf;
        return KILN_OK;
    }
    const size_t n = dev->ub.n_tokens, need = n * r->n_rot;
    kiln_vk_slice s;
    kiln_status st = kiln_vk_ring_alloc(dev, need * sizeof(float), &s);
    if (st != KILN_OK) return st;
    float *table = (float *)s.ptr;
    const float theta_scale = powf(r->freq_base, -2.0f / (float)r->n_rot);
    for (size_t t = 0; t < n; t++) {
        float *cs = table + t * r->n_rot, *sn = cs + half;
        float theta = (float)dev->ub.data[t];
        for (size_t i = 0; i < half; i++) {
            const float ff = r->freq_factors ? r->freq_factors[i] : 1.0f;
            const float th = r->freq_scale * (theta / ff);
            cs[i] = cosf(th);
            sn[i] = sinf(th);
            theta *= theta_scale;
        }
    }
    c->valid = true;
    c->ub_gen = dev->ub.gen;
    c->ring_epoch = dev->ring_epoch;
    c->ring_offset = s.offset;
    c->ring_buf = s.buf;
    c->n_rot = r->n_rot;
    c->freq_base = r->freq_base;
    c->freq_scale = r->freq_scale;
    c->has_factors = r->freq_factors != NULL;
    if (r->freq_factors) memcpy(c->factors, r->freq_factors, half * sizeof(float));
    *offset = s.offset;
    *buf = s.buf;
    return KILN_OK;
}

/* rope's checks; *r: the parameters (defaults for fields the caller's
 * struct lacks), *xe: x's extent. */
static kiln_status rope_check(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_rope *rope, kiln_bk_rope *r_out,
                              uint64_t *xe) {
    kiln_status st;
    if (!dev || !rope) return kiln_error(KILN_E_INVALID_ARG, "vulkan rope: NULL device or parameters");
    if ((st = kiln_vk_need_ubatch(dev, "rope")) || (st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "rope", "x", xe))) return st;
    kiln_bk_rope r;
    memset(&r, 0, sizeof r);
    memcpy(&r, rope, rope->struct_size < sizeof r ? rope->struct_size : sizeof r);
    if (rope->struct_size < offsetof(kiln_bk_rope, freq_scale) + sizeof(float)) r.freq_scale = 1.0f;
    if (r.mode != KILN_ROPE_NORM && r.mode != KILN_ROPE_NEOX)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rope: unknown mode %d", r.mode);
    if (r.n_rot % 2 || r.n_rot > r.head_dim || r.n_rot > 2 * KILN_VK_ROPE_MAX_PAIRS)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rope: n_rot %u with head_dim %u", r.n_rot, r.head_dim);
    if ((uint64_t)r.n_head * r.head_dim > (uint64_t)x->ne[0])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rope: %u heads of %u do not fit rows of %lld", r.n_head,
                          r.head_dim, (long long)x->ne[0]);
    if (x->ne[1] != (int64_t)dev->ub.n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rope: %lld rows for a ubatch of %u tokens", (long long)x->ne[1],
                          dev->ub.n_tokens);
    *r_out = r;
    return KILN_OK;
}

kiln_status kiln_vk_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope) {
    kiln_status st;
    uint64_t xe;
    kiln_bk_rope r;
    if ((st = rope_check(dev, x, rope, &r, &xe))) return st;
    if (r.n_rot == 0 || x->ne[1] == 0 || r.n_head == 0) return KILN_OK;
    uint64_t toff;
    const kiln_bk_buffer *tbuf;
    if ((st = rope_table(dev, &r, &toff, &tbuf))) return st;
    struct { uint32_t x_off, x_stride, n_head, head_dim, n_rot, mode, t_off, rows; } pc;
    kiln_vk_bind b[2];
    if ((st = kiln_vk_bind_f32(dev, x, xe, &b[0], &pc.x_off, &pc.x_stride, "rope")) ||
        (st = kiln_vk_bind_range(dev, tbuf, toff, (uint64_t)x->ne[1] * r.n_rot * sizeof(float), &b[1], NULL,
                                 "rope")))
        return st;
    pc.n_head = r.n_head;
    pc.head_dim = r.head_dim;
    pc.n_rot = r.n_rot;
    pc.mode = (uint32_t)r.mode;
    pc.t_off = 0;
    pc.rows = (uint32_t)x->ne[1];
    kiln_vk_act_written(dev, x->buf, x->offset, xe);
    return kiln_vk_dispatch(dev, KILN_VK_P_ROPE, b, 2, &pc, sizeof pc, kiln_vk_div_up((uint64_t)r.n_head * (r.n_rot / 2), 64),
                            pc.rows, 1);
}

/* ------------------------------------------------------------------------ */
/* kv_store, attention                                                      */
/* ------------------------------------------------------------------------ */

/* kv_store's checks: *ke, *ve the extents of k and v, *need the bytes of
 * each cache the ubatch's cells span; *noop when there is nothing to store. */
static kiln_status kv_store_check(kiln_bk_device *dev, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                  const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache, uint32_t kv_dim,
                                  uint64_t *ke, uint64_t *ve, uint64_t *need, bool *noop) {
    kiln_status st;
    *noop = true;
    if (!dev || !k_cache || !v_cache) return kiln_error(KILN_E_INVALID_ARG, "vulkan kv_store: NULL device or cache");
    if ((st = kiln_vk_need_ubatch(dev, "kv_store")) || (st = kiln_vk_tensor_check(k, KILN_VK_T_F32, "kv_store", "k", ke)) ||
        (st = kiln_vk_tensor_check(v, KILN_VK_T_F32, "kv_store", "v", ve)))
        return st;
    const kiln_vk_ubatch *ub = &dev->ub;
    if (k->ne[0] != kv_dim || v->ne[0] != kv_dim || k->ne[1] != ub->n_tokens || v->ne[1] != ub->n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan kv_store: k %lldx%lld, v %lldx%lld for kv_dim %u, %u tokens",
                          (long long)k->ne[0], (long long)k->ne[1], (long long)v->ne[0], (long long)v->ne[1], kv_dim,
                          ub->n_tokens);
    if (ub->n_tokens == 0 || kv_dim == 0) return KILN_OK;
    if (!ub->has_kv_cell) return kiln_error(KILN_E_INVALID_ARG, "vulkan kv_store: the ubatch has no kv cells");
    if (kv_dim % 2) return kiln_error(KILN_E_UNSUPPORTED, "vulkan kv_store: odd kv_dim %u", kv_dim);
    *need = (uint64_t)ub->n_cells * kv_dim * sizeof(uint16_t);
    if (k_cache->size < *need || v_cache->size < *need)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan kv_store: caches of %llu/%llu bytes, %u cells need %llu",
                          (unsigned long long)k_cache->size, (unsigned long long)v_cache->size, ub->n_cells,
                          (unsigned long long)*need);
    *noop = false;
    return KILN_OK;
}

kiln_status kiln_vk_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                             kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim) {
    kiln_status st;
    uint64_t ke, ve, need;
    bool noop;
    if ((st = kv_store_check(dev, k, v, k_cache, v_cache, kv_dim, &ke, &ve, &need, &noop)) || noop) return st;
    const kiln_vk_ubatch *ub = &dev->ub;
    kiln_vk_bind b[5];
    struct { uint32_t k_off, k_stride, v_off, v_stride, kv_dim, rows, cell_off; } pc;
    if ((st = kiln_vk_ubatch_bind(dev, &b[4], "kv_store")) || (st = kiln_vk_bind_f32(dev, k, ke, &b[0], &pc.k_off, &pc.k_stride, "kv_store")) ||
        (st = kiln_vk_bind_f32(dev, v, ve, &b[1], &pc.v_off, &pc.v_stride, "kv_store")) ||
        (st = kiln_vk_bind_range(dev, k_cache, 0, need, &b[2], NULL, "kv_store")) ||
        (st = kiln_vk_bind_range(dev, v_cache, 0, need, &b[3], NULL, "kv_store")))
        return st;
    pc.kv_dim = kv_dim;
    pc.rows = ub->n_tokens;
    pc.cell_off = 0;
    kiln_vk_act_written(dev, k_cache, 0, need);
    kiln_vk_act_written(dev, v_cache, 0, need);
    return kiln_vk_dispatch(dev, KILN_VK_P_KV_STORE, b, 5, &pc, sizeof pc, kiln_vk_div_up(kv_dim / 2, 64), pc.rows, 1);
}

#define KILN_VK_ATTN_MAX_HEAD_DIM 256 /* attention.comp MAXD */

/* attention's checks: *a the parameters (zeros for fields the caller's
 * struct lacks), *qe and *de the extents of q and dst, *need the bytes of
 * each cache its cells span; *noop when the ubatch has no tokens. */
static kiln_status attn_check(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                              const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, const kiln_bk_tensor *dst,
                              kiln_bk_attn *a, uint64_t *qe, uint64_t *de, uint64_t *need, bool *noop) {
    kiln_status st;
    *noop = true;
    if (!dev || !k_cache || !v_cache || !attn)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan attention: NULL device, cache or parameters");
    if ((st = kiln_vk_need_ubatch(dev, "attention")) || (st = kiln_vk_tensor_check(q, KILN_VK_T_F32, "attention", "q", qe)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "attention", "dst", de)))
        return st;
    memset(a, 0, sizeof *a);
    memcpy(a, attn, attn->struct_size < sizeof *a ? attn->struct_size : sizeof *a);
    const kiln_vk_ubatch *ub = &dev->ub;
    if (a->n_head == 0 || a->n_head_kv == 0 || a->n_head % a->n_head_kv || a->head_dim == 0)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan attention: %u heads, %u kv heads, head_dim %u", a->n_head,
                          a->n_head_kv, a->head_dim);
    const uint64_t qw = (uint64_t)a->n_head * a->head_dim;
    if ((uint64_t)q->ne[0] < qw || dst->ne[0] != q->ne[0] || q->ne[1] != ub->n_tokens || dst->ne[1] != q->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan attention: q %lldx%lld, dst %lldx%lld for %u heads of %u, %u tokens",
                          (long long)q->ne[0], (long long)q->ne[1], (long long)dst->ne[0], (long long)dst->ne[1],
                          a->n_head, a->head_dim, ub->n_tokens);
    if (ub->n_tokens == 0) return KILN_OK;
    if (!ub->has_attn) return kiln_error(KILN_E_INVALID_ARG, "vulkan attention: the ubatch has no block tables");
    if (a->head_dim > KILN_VK_ATTN_MAX_HEAD_DIM || a->head_dim % 2)
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan attention: head_dim %u (even, at most %d)", a->head_dim,
                          KILN_VK_ATTN_MAX_HEAD_DIM);
    const uint32_t kv_dim = a->n_head_kv * a->head_dim;
    *need = (uint64_t)ub->n_cells * kv_dim * sizeof(uint16_t);
    if (k_cache->size < *need || v_cache->size < *need)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan attention: caches of %llu/%llu bytes, %u cells need %llu",
                          (unsigned long long)k_cache->size, (unsigned long long)v_cache->size, ub->n_cells,
                          (unsigned long long)*need);
    *noop = false;
    return KILN_OK;
}

/* attn_dec.comp for small ubatches on subgroup devices (a row's bits
 * depend only on its own positions there too, so decode and verify rows
 * agree) */
static bool attn_dec_usable(const kiln_bk_device *dev) {
    return dev->sh->subgroup_add && dev->sh->subgroup_size >= 8 && dev->sh->subgroup_size <= 32 && !dev->attn_dec_old;
}

/* The dst modes attention can quantize its output to for the next matmul:
 * where a head holds whole blocks (F16/BF16 rounding; Q8_0/Q8_1 with
 * head_dim % 32 == 0) and the heads fill the row. */
static uint32_t attn_out_modes(const kiln_bk_attn *a, const kiln_bk_tensor *dst) {
    return (uint64_t)dst->ne[0] != (uint64_t)a->n_head * a->head_dim ? 0u : a->head_dim % 32 ? 0x6u : 0x1eu;
}

/* attn_io.glsl's push constants (attention.comp, attn_dec.glsl); the rope
 * variant's go on after them. */
typedef struct attn_push {
    uint32_t q_off, q_stride, d_off, d_stride, n_head, n_head_kv, head_dim, kv_dim;
    float scale;
    uint32_t block_size, tab_off, nkv_off, bt_off;
    uint32_t qmode, q_words, row_k;
    uint32_t split_len, n_splits, p_off; /* a long context's decode in splits (attn_dec_split) */
    uint32_t cnt_off; /* != 0: the last split folds, counting from this word of binding 10 */
    uint32_t split_min; /* splits of split_min..split_len positions by the row's n_kv (attn_split_len) */
} attn_push;

/* The fields that come from the parameters and the ubatch (the caller
 * sets the offsets and strides of its bindings). */
static void attn_push_fill(attn_push *pc, const kiln_bk_attn *a, const kiln_vk_ubatch *ub) {
    pc->n_head = a->n_head;
    pc->n_head_kv = a->n_head_kv;
    pc->head_dim = a->head_dim;
    pc->kv_dim = a->n_head_kv * a->head_dim;
    pc->scale = a->scale;
    pc->block_size = ub->block_size ? ub->block_size : 1;
    pc->tab_off = ub->n_tokens;
    pc->nkv_off = 2 * ub->n_tokens;
    pc->bt_off = 3 * ub->n_tokens;
    pc->row_k = a->n_head * a->head_dim;
    pc->split_len = pc->n_splits = pc->p_off = pc->cnt_off = pc->split_min = 0;
}

/* Dispatches an attention pipeline (a workgroup per head, token and of
 * `splits` splits) whose push constants `push` (size bytes) begin with
 * *pc: its output dst is also quantized, into binding 5, where the next
 * matmul wants it so. */
static kiln_status attn_dispatch(kiln_bk_device *dev, int which, kiln_vk_bind *b, uint32_t n_binds, attn_push *pc,
                                 const void *push, uint32_t size, const kiln_bk_attn *a, const kiln_bk_tensor *dst,
                                 uint64_t de, uint32_t splits, const char *op) {
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    kiln_status st = kiln_vk_act_produce(dev, dst, de, attn_out_modes(a, dst), &b[5], &pc->qmode, &pc->q_words, op);
    if (st == KILN_OK) st = kiln_vk_dispatch(dev, which, b, n_binds, push, size, a->n_head, dev->ub.n_tokens, splits);
    if (st == KILN_OK) kiln_vk_act_produced(dev, dst, de, pc->qmode);
    return st;
}

#define KILN_VK_ATTN_SPLITS_MAX 64   /* splits of a row at most (longer splits in larger contexts) */
#define KILN_VK_ATTN_SPLIT_TOKENS 32 /* ubatches that may split: decode steps and verify batches */

/* Splits of len positions (0: none), longer (a multiple of 32) where the
 * n_cells of the cache would take more than KILN_VK_ATTN_SPLITS_MAX. */
static uint32_t split_cap(uint32_t len, uint32_t n_cells) {
    if (len && kiln_vk_div_up(n_cells, len) > KILN_VK_ATTN_SPLITS_MAX)
        len = kiln_vk_div_up(kiln_vk_div_up(n_cells, KILN_VK_ATTN_SPLITS_MAX), 32) * 32;
    return len;
}

/* Decode attention over a long context (attn_dec.glsl, attn_dec_rope.comp
 * as `which`): with the handle's split setting and a context of at least
 * attn_split_min cells, a workgroup per (head, token, split of split_len
 * positions) leaves its state in the handle's split scratch (binding 9)
 * and the row's last split to finish folds them into dst, counting on
 * the handle's counters (binding 10; KILN_VK_ATTN_FOLD_APART: a second
 * dispatch, attn_fold.comp, the same bits); otherwise one workgroup per
 * (head, token) walks every position. The choice and the split length
 * depend only on the context (for ubatches of up to 32 tokens), so a verify
 * batch's rows keep the bits of decode steps. b has
 * 11 entries, those past n_binds are filled here. */
static kiln_status attn_dec_dispatch(kiln_bk_device *dev, int which, kiln_vk_bind *b, uint32_t n_binds,
                                     attn_push *pc, const void *push, uint32_t size, const kiln_bk_attn *a,
                                     const kiln_bk_tensor *dst, uint64_t de, const char *op) {
    const kiln_vk_ubatch *ub = &dev->ub;
    kiln_status st;
    /* at most KILN_VK_ATTN_SPLITS_MAX splits (longer ones in larger
     * contexts), so the scratch stays small: n_tokens x n_head x 64 x
     * (head_dim + 2) floats, 1 MiB for a 7B decode step */
    const uint32_t sl = split_cap(dev->attn_split, ub->n_cells);
    /* a row's splits are between sl_min and sl long by its n_kv (about 16
     * of them, attn_split_len); the grid has enough for sl_min */
    uint32_t sl_min = split_cap(dev->attn_split_short < sl ? dev->attn_split_short : sl, ub->n_cells);
    if (sl_min > sl) sl_min = sl;
    /* the shaders name binding 9 either way: dst's (written anyway) when
     * not splitting; 6..8 where unused, q's; 10 the counters */
    for (uint32_t i = n_binds; i < 9; i++) b[i] = b[0];
    b[9] = b[3];
    if ((st = kiln_vk_bind_range(dev, dev->wg_cnt, 0, dev->wg_cnt->size, &b[10], NULL, op))) return st;
    if (!sl || ub->n_tokens > KILN_VK_ATTN_SPLIT_TOKENS || ub->n_cells < dev->attn_split_min || ub->n_cells <= sl) {
        /* without splits, the variant that loads its first K/V before its
         * prologue (the same bits; attn_dec.glsl KILN_ATTN_DEC_EARLY) */
        if (which == KILN_VK_P_ATTN_DEC_ROPE && dev->sh->attn_early) which = KILN_VK_P_ATTN_DEC_ROPE1;
        return attn_dispatch(dev, which, b, 11, pc, push, size, a, dst, de, 1, op);
    }
    const uint32_t ns = kiln_vk_div_up(ub->n_cells, sl_min);
    const uint64_t bytes = (uint64_t)ub->n_tokens * a->n_head * ns * (a->head_dim + 2) * sizeof(float);
    if ((st = kiln_vk_scratch_reserve(dev, &dev->attn_part, bytes))) return st;
    if ((st = kiln_vk_bind_range(dev, dev->attn_part, 0, bytes, &b[9], NULL, op))) return st;
    pc->split_len = sl;
    pc->split_min = sl_min;
    pc->n_splits = ns;
    pc->p_off = 0;
    if (!dev->attn_fold_apart && (uint64_t)ub->n_tokens * a->n_head <= KILN_VK_ATTN_CNT_N) {
        pc->cnt_off = KILN_VK_ATTN_CNT_OFF; /* one dispatch: the last split folds */
        return attn_dispatch(dev, which, b, 11, pc, push, size, a, dst, de, ns, op);
    }
    pc->cnt_off = 0;
    pc->qmode = 0;
    b[5] = b[3]; /* the quantized output is the fold's (act_produce binds it there) */
    if ((st = kiln_vk_dispatch(dev, which, b, 11, push, size, a->n_head, ub->n_tokens, ns))) return st;
    return attn_dispatch(dev, KILN_VK_P_ATTN_FOLD, b, 10, pc, push, size, a, dst, de, 1, op);
}

kiln_status kiln_vk_attention(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                              const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t qe, de, need;
    bool noop;
    kiln_bk_attn a;
    if ((st = attn_check(dev, q, k_cache, v_cache, attn, dst, &a, &qe, &de, &need, &noop)) || noop) return st;
    const kiln_vk_ubatch *ub = &dev->ub;
    const uint32_t kv_dim = a.n_head_kv * a.head_dim;
    kiln_vk_bind b[11];
    attn_push pc;
    if ((st = kiln_vk_ubatch_bind(dev, &b[4], "attention")) ||
        (st = kiln_vk_bind_f32(dev, q, qe, &b[0], &pc.q_off, &pc.q_stride, "attention")) ||
        (st = kiln_vk_bind_range(dev, k_cache, 0, need, &b[1], NULL, "attention")) ||
        (st = kiln_vk_bind_range(dev, v_cache, 0, need, &b[2], NULL, "attention")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[3], &pc.d_off, &pc.d_stride, "attention")))
        return st;
    /* prefill: tiles of up to 64 tokens (attn_tile.glsl) where the head
     * size has a kernel, the caches are bound from their first byte
     * (16-byte rows) and the shared memory fits */
    int tile_pipe = -1;
    const uint32_t tile_shared = (a.head_dim == 128 ? 17 * 64 * 16 : 9 * 64 * 16) + 4 * 192 * 16 + 128 * 4 + 16;
    if (ub->n_tiles > 0 && !dev->attn_old && (a.head_dim == 64 || a.head_dim == 128) && b[1].lo == b[1].offset &&
        b[2].lo == b[2].offset && dev->sh->max_shared >= tile_shared) {
        const int d = a.head_dim == 128 ? 1 : 0;
        VkPipeline pipe;
        tile_pipe = KILN_VK_P_ATTN_TILE_FIRST + 2 + d; /* without matrix cores */
        if (dev->sh->coopmat && !dev->attn_no_mc) {
            if (kiln_vk_pipeline(dev->sh, KILN_VK_P_ATTN_TILE_FIRST + d, &pipe) == KILN_OK) {
                tile_pipe = KILN_VK_P_ATTN_TILE_FIRST + d;
            } else {
                kiln_log(&dev->log, KILN_LOG_WARN, "vulkan backend: the matrix-core attention kernel cannot be "
                         "built: prefill attention without matrix cores for this handle");
                dev->attn_no_mc = true;
            }
        }
    }
    if (tile_pipe >= 0) {
        struct {
            uint32_t q_off, q_stride, d_off, d_stride, group, kv_dim;
            float scale;
            uint32_t block_size, nkv_off, bt_off, tab_off, tiles_off;
            float lazy;
        } tc;
        tc.q_off = pc.q_off;
        tc.q_stride = pc.q_stride;
        tc.d_off = pc.d_off;
        tc.d_stride = pc.d_stride;
        tc.group = a.n_head / a.n_head_kv;
        tc.kv_dim = kv_dim;
        tc.scale = a.scale;
        tc.block_size = ub->block_size ? ub->block_size : 1;
        tc.nkv_off = 2 * ub->n_tokens;
        tc.bt_off = 3 * ub->n_tokens;
        tc.tab_off = ub->n_tokens;
        tc.tiles_off = 3 * ub->n_tokens + ub->n_block_entries;
        tc.lazy = dev->attn_eager ? 0.0f : 8.0f;
        kiln_vk_act_written(dev, dst->buf, dst->offset, de);
        return kiln_vk_dispatch(dev, tile_pipe, b, 5, &tc, sizeof tc, ub->n_tiles, a.n_head, 1);
    }
    attn_push_fill(&pc, &a, ub);
    if (attn_dec_usable(dev))
        return attn_dec_dispatch(dev, KILN_VK_P_ATTN_DEC, b, 6, &pc, &pc, sizeof pc, &a, dst, de, "attention");
    return attn_dispatch(dev, KILN_VK_P_ATTENTION, b, 6, &pc, &pc, sizeof pc, &a, dst, de, 1, "attention");
}


#define KILN_VK_ROPE_KV_MAX_HEAD_DIM 256 /* rope_kv.comp MAXD */

/* rope(q), rope(k), kv_store(k, v) in one dispatch (rope_kv.comp) where q,
 * k and v are rows of one buffer and both ropes use one table; otherwise
 * the three operations. Every check runs before anything is recorded. */
/* Whether rope_kv.comp's work can be done in one dispatch: q, k and v in
 * one buffer (their bytes [*lo, *hi) of it, addressable in 32-bit words)
 * and both ropes with one table. */
static bool rope_kv_fusable(const kiln_bk_tensor *q, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                            const kiln_bk_rope *r1, const kiln_bk_rope *r2, uint64_t qe, uint64_t ke, uint64_t ve,
                            uint32_t kv_dim, uint64_t *lo, uint64_t *hi) {
    const uint32_t half = r1->n_rot / 2;
    bool fuse = q->buf == k->buf && v->buf == k->buf && r1->mode == r2->mode && r1->head_dim == r2->head_dim &&
                r1->n_rot == r2->n_rot && r1->freq_base == r2->freq_base && r1->freq_scale == r2->freq_scale &&
                !r1->freq_factors == !r2->freq_factors &&
                (!r1->freq_factors || r1->freq_factors == r2->freq_factors ||
                 memcmp(r1->freq_factors, r2->freq_factors, half * sizeof(float)) == 0) &&
                r1->n_rot > 0 && r1->n_head > 0 && r1->head_dim % 2 == 0 &&
                r1->head_dim <= KILN_VK_ROPE_KV_MAX_HEAD_DIM && (uint64_t)r2->n_head * r2->head_dim == kv_dim;
    *lo = UINT64_MAX;
    *hi = 0;
    const kiln_bk_tensor *t3[3] = {q, k, v};
    const uint64_t e3[3] = {qe, ke, ve};
    for (int i = 0; i < 3 && fuse; i++) {
        if (t3[i]->offset < *lo) *lo = t3[i]->offset;
        if (t3[i]->offset + e3[i] > *hi) *hi = t3[i]->offset + e3[i];
    }
    return fuse && *hi - *lo <= UINT32_MAX - 64;
}

/* Where q, k and v start in a binding of their buffer from byte lo (rem:
 * the binding's offset to lo), and their row strides, in 32-bit words. */
static void qkv_words(const kiln_bk_tensor *q, const kiln_bk_tensor *k, const kiln_bk_tensor *v, uint64_t lo,
                      uint32_t rem, uint32_t *q_off, uint32_t *q_stride, uint32_t *k_off, uint32_t *k_stride,
                      uint32_t *v_off, uint32_t *v_stride) {
    *q_off = (uint32_t)((rem + (q->offset - lo)) / 4);
    *k_off = (uint32_t)((rem + (k->offset - lo)) / 4);
    *v_off = (uint32_t)((rem + (v->offset - lo)) / 4);
    *q_stride = (uint32_t)(q->row_stride / 4);
    *k_stride = (uint32_t)(k->row_stride / 4);
    *v_stride = (uint32_t)(v->row_stride / 4);
}

/* The rope table and the ubatch tables in the ring (*b binds the latter);
 * a ring reset by the second (full ring) drops the first: stage both again. */
static kiln_status rope_kv_stage(kiln_bk_device *dev, const kiln_bk_rope *r, uint64_t *toff,
                                 const kiln_bk_buffer **tbuf, kiln_vk_bind *b, const char *op) {
    kiln_status st;
    for (int tries = 0; tries < 2; tries++) {
        if ((st = rope_table(dev, r, toff, tbuf)) || (st = kiln_vk_ubatch_bind(dev, b, op))) return st;
        if (dev->rope.ring_epoch == dev->ring_epoch) return KILN_OK;
    }
    return kiln_error(KILN_E_INTERNAL, "vulkan %s: the staging ring cannot hold the ubatch's tables", op);
}

kiln_status kiln_vk_rope_kv_store(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                  const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                                  kiln_bk_buffer *v_cache, uint32_t kv_dim) {
    kiln_status st;
    kiln_bk_rope r1, r2;
    uint64_t qe, ke, ke2, ve, need;
    bool noop;
    if ((st = rope_check(dev, q, rq, &r1, &qe)) || (st = rope_check(dev, k, rk, &r2, &ke)) ||
        (st = kv_store_check(dev, k, v, k_cache, v_cache, kv_dim, &ke2, &ve, &need, &noop)))
        return st;
    uint64_t lo, hi;
    const bool fuse = !noop && !(dev->no_fused_mask & 16u) &&
                      rope_kv_fusable(q, k, v, &r1, &r2, qe, ke, ve, kv_dim, &lo, &hi);
    const uint32_t half = r1.n_rot / 2;
    if (!fuse) {
        if ((st = kiln_vk_rope(dev, q, rq)) || (st = kiln_vk_rope(dev, k, rk))) return st;
        return kiln_vk_kv_store(dev, k, v, k_cache, v_cache, kv_dim);
    }
    uint64_t toff = 0;
    const kiln_bk_buffer *tbuf = NULL;
    kiln_vk_bind b[5];
    if ((st = rope_kv_stage(dev, &r1, &toff, &tbuf, &b[4], "rope_kv_store"))) return st;
    const uint32_t rows = dev->ub.n_tokens;
    struct {
        uint32_t q_off, q_stride, k_off, k_stride, v_off, v_stride;
        uint32_t n_head, head_dim, n_rot, mode, t_off, q_groups;
        uint32_t kv_dim, cell_off;
    } pc;
    uint32_t rem;
    if ((st = kiln_vk_bind_range(dev, q->buf, lo, hi - lo, &b[0], &rem, "rope_kv_store")) ||
        (st = kiln_vk_bind_range(dev, tbuf, toff, (uint64_t)rows * r1.n_rot * sizeof(float), &b[1], NULL,
                                 "rope_kv_store")) ||
        (st = kiln_vk_bind_range(dev, k_cache, 0, need, &b[2], NULL, "rope_kv_store")) ||
        (st = kiln_vk_bind_range(dev, v_cache, 0, need, &b[3], NULL, "rope_kv_store")))
        return st;
    qkv_words(q, k, v, lo, rem, &pc.q_off, &pc.q_stride, &pc.k_off, &pc.k_stride, &pc.v_off, &pc.v_stride);
    pc.n_head = r1.n_head;
    pc.head_dim = r1.head_dim;
    pc.n_rot = r1.n_rot;
    pc.mode = (uint32_t)r1.mode;
    pc.t_off = 0;
    pc.q_groups = kiln_vk_div_up((uint64_t)r1.n_head * half, 64);
    pc.kv_dim = kv_dim;
    pc.cell_off = 0;
    kiln_vk_act_written(dev, q->buf, q->offset, qe);
    kiln_vk_act_written(dev, k->buf, k->offset, ke);
    kiln_vk_act_written(dev, k_cache, 0, need);
    kiln_vk_act_written(dev, v_cache, 0, need);
    return kiln_vk_dispatch(dev, KILN_VK_P_ROPE_KV, b, 5, &pc, sizeof pc, pc.q_groups + r2.n_head, rows, 1);
}

/* rope_kv_store + attention. A single token on a subgroup device (a decode
 * step) in one dispatch of attn_dec_rope.comp: each workgroup ropes its
 * head of q and its KV head of k itself, the group's first head stores k
 * and v, and the token's own row is read from shared memory (the same F16
 * values), so nothing waits for a store in the same dispatch. Several
 * tokens (a verify batch may attend to its own new rows, stored by other
 * workgroups) and everything else: the two operations. */
kiln_status kiln_vk_rope_kv_attention(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k,
                                      const kiln_bk_tensor *v, const kiln_bk_rope *rq, const kiln_bk_rope *rk,
                                      kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim,
                                      const kiln_bk_attn *attn, kiln_bk_tensor *dst) {
    kiln_status st;
    kiln_bk_rope r1, r2;
    kiln_bk_attn a;
    uint64_t qe, ke, ke2, ve, need, qe2, de, need2, lo, hi; /* need2 == need where fused: same kv_dim */
    bool noop, noop2;
    if ((st = rope_check(dev, q, rq, &r1, &qe)) || (st = rope_check(dev, k, rk, &r2, &ke)) ||
        (st = kv_store_check(dev, k, v, k_cache, v_cache, kv_dim, &ke2, &ve, &need, &noop)) ||
        (st = attn_check(dev, q, k_cache, v_cache, attn, dst, &a, &qe2, &de, &need2, &noop2)))
        return st;
    const kiln_vk_ubatch *ub = &dev->ub;
    const bool fuse = !noop && !noop2 && ub->n_tokens == 1 && ub->n_cells >= 2 && !(dev->no_fused_mask & 32u) && attn_dec_usable(dev) &&
                      rope_kv_fusable(q, k, v, &r1, &r2, qe, ke, ve, kv_dim, &lo, &hi) &&
                      r1.n_head == a.n_head && r1.head_dim == a.head_dim && r2.n_head == a.n_head_kv &&
                      (uint64_t)r1.n_head * r1.head_dim == (uint64_t)q->ne[0];
    if (!fuse) {
        if ((st = kiln_vk_rope_kv_store(dev, q, k, v, rq, rk, k_cache, v_cache, kv_dim))) return st;
        return kiln_vk_attention(dev, q, k_cache, v_cache, attn, dst);
    }
    struct {
        attn_push h;
        uint32_t k_off, k_stride, v_off, v_stride, n_rot, mode, t_off, cell_off;
    } pc;
    uint64_t toff = 0;
    const kiln_bk_buffer *tbuf = NULL;
    kiln_vk_bind b[11];
    uint32_t rem;
    if ((st = rope_kv_stage(dev, &r1, &toff, &tbuf, &b[4], "rope_kv_attention")) ||
        (st = kiln_vk_bind_range(dev, q->buf, lo, hi - lo, &b[0], &rem, "rope_kv_attention")) ||
        (st = kiln_vk_bind_range(dev, k_cache, 0, need, &b[1], NULL, "rope_kv_attention")) ||
        (st = kiln_vk_bind_range(dev, v_cache, 0, need, &b[2], NULL, "rope_kv_attention")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[3], &pc.h.d_off, &pc.h.d_stride, "rope_kv_attention")) ||
        (st = kiln_vk_bind_range(dev, tbuf, toff, (uint64_t)ub->n_tokens * r1.n_rot * sizeof(float), &b[6], NULL,
                                 "rope_kv_attention")))
        return st;
    b[7] = b[1];
    b[8] = b[2];
    qkv_words(q, k, v, lo, rem, &pc.h.q_off, &pc.h.q_stride, &pc.k_off, &pc.k_stride, &pc.v_off, &pc.v_stride);
    attn_push_fill(&pc.h, &a, ub);
    pc.n_rot = r1.n_rot;
    pc.mode = (uint32_t)r1.mode;
    pc.t_off = 0;
    pc.cell_off = 0;
    kiln_vk_act_written(dev, k_cache, 0, need);
    kiln_vk_act_written(dev, v_cache, 0, need);
    return attn_dec_dispatch(dev, KILN_VK_P_ATTN_DEC_ROPE, b, 9, &pc.h, &pc, sizeof pc, &a, dst, de,
                             "rope_kv_attention");
}
