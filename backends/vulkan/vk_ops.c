/*
 * vk_ops.c - the operations: each checks its operands as the CPU backend
 * does (same errors for the same mistakes), then records one or two
 * compute dispatches into the handle's command buffer (vk_device.c submits
 * them). Shaders: backends/vulkan/shaders/.
 *
 * Operands are bound as storage buffers at the largest offset the device's
 * alignment allows at or below the tensor's offset; the push constants
 * carry the rest of the offset and the strides, in bytes for byte-packed
 * weights and in 32-bit words for F32 activations.
 *
 * Small per-call inputs (token ids, the ubatch tables, the rope cos/sin
 * table) are written into the handle's staging ring, which shaders read
 * directly; the ubatch tables and the rope table are written once per
 * ubatch (and again only if the ring was reset meanwhile).
 *
 * Numerics match the CPU backend's: activations are quantized to the
 * format the CPU dots each weight type with (quant_act.comp), integer sums
 * per block scaled in float; rope angles come from the same host code;
 * K/V are rounded to F16 the same way. What differs is only the order of
 * float additions.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "vk_internal.h"

/* ------------------------------------------------------------------------ */
/* binding and dispatch                                                     */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_bind_range(kiln_bk_device *dev, const kiln_bk_buffer *buf, uint64_t offset, uint64_t size,
                               kiln_vk_bind *out, uint32_t *rem, const char *op) {
    const kiln_vk_shared *sh = dev->sh;
    uint64_t abs_off = buf->blk->offset + offset;
    uint64_t desc = abs_off / sh->storage_align * sh->storage_align;
    uint64_t r = abs_off - desc;
    uint64_t range = (r + size + 3) / 4 * 4 + 16; /* slack: unaligned word reads at the end */
    if (range > buf->chunk->size - desc) range = buf->chunk->size - desc;
    if (range > sh->max_range)
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan %s: an operand of %llu bytes exceeds the device's %llu-byte "
                          "storage buffer range", op, (unsigned long long)size, (unsigned long long)sh->max_range);
    out->buf = buf;
    out->offset = desc;
    out->size = range;
    out->lo = abs_off;
    out->len = size;
    if (rem) *rem = (uint32_t)r;
    return KILN_OK;
}

/* The bindings a pipeline writes (bit i: binding i), from the shaders'
 * declarations; anything not listed is taken to write all of them. */
static uint32_t written_bindings(int which) {
    if (which == KILN_VK_P_QUANT_ACT) return 1u << 1;
    if (which == KILN_VK_P_ROPE) return 1u << 0;
    if (which == KILN_VK_P_KV_STORE) return (1u << 2) | (1u << 3);
    if (which == KILN_VK_P_ATTENTION || which == KILN_VK_P_ATTN_FOLD) return (1u << 3) | (1u << 5);
    if (which == KILN_VK_P_ATTN_DEC) return (1u << 3) | (1u << 5) | (1u << 9) | (1u << 10);
    if (which == KILN_VK_P_ATTN_DEC_ROPE || which == KILN_VK_P_ATTN_DEC_ROPE1)
        return (1u << 3) | (1u << 5) | (1u << 7) | (1u << 8) | (1u << 9) | (1u << 10);
    if (which >= KILN_VK_P_ATTN_TILE_FIRST && which < KILN_VK_P_ATTN_TILE_FIRST + 4) return 1u << 3;
    if (which >= KILN_VK_P_GETROWS_FIRST && which < KILN_VK_P_GETROWS_FIRST + KILN_VK_N_SLOTS) return 1u << 1;
    /* and the quantized activations (act_produce) */
    if (which == KILN_VK_P_RMS_NORM || which == KILN_VK_P_BINARY) return (1u << 2) | (1u << 3);
    if (which == KILN_VK_P_ADD_RMS_NORM) return (1u << 2) | (1u << 4) | (1u << 5);
    if (which == KILN_VK_P_ROPE_KV) return (1u << 0) | (1u << 2) | (1u << 3);
    if (which >= KILN_VK_P_MMVM_FIRST && which < KILN_VK_P_MMVM_FIRST + KILN_VK_N_SLOTS) return 1u << 2;
    if (which >= KILN_VK_P_MMV1_FIRST && which < KILN_VK_P_MMVM1_FIRST + KILN_VK_N_SLOTS) return 1u << 2;
    if (which >= KILN_VK_P_MMV1_IDOT_FIRST && which < KILN_VK_P_IDOT_END) return 1u << 2;
    if (which >= KILN_VK_P_MMV_IDOT_FIRST && which < KILN_VK_P_IDOT8_END) return 1u << 2;
    if (which >= KILN_VK_P_MMVM1S_F16 && which <= KILN_VK_P_MMVM1S_Q4_0S_IDOT) return (1u << 2) | (1u << 3);
    if (which >= KILN_VK_P_MMV1N_F16 && which <= KILN_VK_P_MMV1N_Q4_0S_IDOT)
        return (1u << 2) | (1u << 4) | (1u << 6) | (1u << 7); /* D, S, AQ, the counter */
    if (which >= KILN_VK_P_MMV1R_Q4_0S && which <= KILN_VK_P_MMVM1P_Q4_0S_IDOT) return 1u << 2;
    if (which >= KILN_VK_P_MMVM1SP_Q4_0S && which <= KILN_VK_P_MMVM1SP_Q4_0S_IDOT) return (1u << 2) | (1u << 3);
    if ((which >= KILN_VK_P_MM_FIRST && which < KILN_VK_P_GETROWS_FIRST) ||
        (which >= KILN_VK_P_MMT_FIRST && which < KILN_VK_P_ATTN_TILE_FIRST))
        return 1u << 2; /* every matmul: D */
    return (1u << KILN_VK_MAX_BINDINGS) - 1;
}

/* KILN_VK_SKIP (profiling only, results wrong): the class bits of a
 * pipeline whose dispatches are left out, to time the rest of a step. */
static uint32_t skip_class(int which) {
    if (which == KILN_VK_P_ADD_RMS_NORM || which == KILN_VK_P_RMS_NORM) return 1u;
    if (which == KILN_VK_P_BINARY) return 2u;
    if (which == KILN_VK_P_ATTN_DEC_ROPE || which == KILN_VK_P_ATTN_DEC_ROPE1 || which == KILN_VK_P_ATTN_DEC || which == KILN_VK_P_ATTN_FOLD ||
        which == KILN_VK_P_ROPE_KV || which == KILN_VK_P_ATTENTION || which == KILN_VK_P_KV_STORE ||
        (which >= KILN_VK_P_ATTN_TILE_FIRST && which < KILN_VK_P_ATTN_TILE_FIRST + 4))
        return 4u;
    if (which == KILN_VK_P_QUANT_ACT) return 32u;
    if ((which >= KILN_VK_P_MMT_FIRST && which < KILN_VK_P_MMT_FIRST + KILN_VK_N_SLOTS) ||
        (which >= KILN_VK_P_MMC_FIRST && which < KILN_VK_P_MMVM_FIRST) ||
        (which >= KILN_VK_P_MMCW_FIRST && which < KILN_VK_P_MMCW_FIRST + KILN_VK_N_SLOTS))
        return 64u; /* batch products (prefill) */
    if ((which >= KILN_VK_P_MMV1_FIRST && which < KILN_VK_P_MMVM1_FIRST) ||
        (which >= KILN_VK_P_MMV1_IDOT_FIRST && which < KILN_VK_P_MMVM1_IDOT_FIRST) ||
        (which >= KILN_VK_P_MMV1N_F16 && which <= KILN_VK_P_MMV1N_Q4_0S_IDOT) ||
        (which >= KILN_VK_P_MMV1R_Q4_0S && which <= KILN_VK_P_MMV1R_Q4_0S_IDOT))
        return 8u; /* one product, one row: o, down, output */
    if ((which >= KILN_VK_P_MMVM1_FIRST && which < KILN_VK_P_MMVM1_FIRST + KILN_VK_N_SLOTS) ||
        (which >= KILN_VK_P_MMVM1_IDOT_FIRST && which < KILN_VK_P_IDOT_END) ||
        (which >= KILN_VK_P_MMVM1S_F16 && which <= KILN_VK_P_MMVM1S_Q4_0S_IDOT) ||
        (which >= KILN_VK_P_MMVM1P_Q4_0S && which <= KILN_VK_P_MMVM1SP_Q4_0S_IDOT))
        return 16u; /* q/k/v, gate/up */
    return 0u;
}

/* Only the barriers that are needed: one before a dispatch that reads or
 * writes what a dispatch since the last barrier wrote, or writes what one
 * read (q, k and v, or gate and up, or the two ropes run side by side).
 * Ranges are the operands' own bytes (reads 16 more): a shader touches
 * nothing else of its bindings. */
static void hazard_barrier(kiln_bk_device *dev, VkCommandBuffer cmd, int which, const kiln_vk_bind *binds,
                           uint32_t n_binds) {
    const uint32_t wmask = written_bindings(which);
    if (dev->skip & 1024u) return; /* KILN_VK_SKIP: no barriers (profiling only) */
    bool need = dev->barrier_all ? dev->n_pend > 0 : dev->n_pend + n_binds > KILN_VK_MAX_PENDING;
    for (uint32_t i = 0; i < n_binds && !need; i++) {
        const VkBuffer vb = binds[i].buf->chunk->buf;
        const bool w = (wmask >> i) & 1u;
        /* writes: the operand's bytes; reads: 16 bytes more (word reads
         * past an unaligned end) */
        const uint64_t lo = binds[i].lo, hi = lo + binds[i].len + (w ? 0 : 16);
        for (uint32_t j = 0; j < dev->n_pend && !need; j++) {
            const kiln_vk_pending *pp = &dev->pend[j];
            need = pp->buf == vb && lo < pp->hi && pp->lo < hi && (pp->write || w);
        }
    }
    if (need) {
        if (dev->barrier_full) kiln_vk_barrier_cmd(cmd);
        else kiln_vk_barrier_compute(cmd);
        dev->n_pend = 0;
        if (dev->graph_mode == 1) dev->rec_barriers++;
    }
    for (uint32_t i = 0; i < n_binds; i++) {
        kiln_vk_pending *pp = &dev->pend[dev->n_pend++];
        pp->buf = binds[i].buf->chunk->buf;
        pp->write = (wmask >> i) & 1u;
        pp->lo = binds[i].lo;
        pp->hi = binds[i].lo + binds[i].len + (pp->write ? 0 : 16);
    }
}

kiln_status kiln_vk_dispatch(kiln_bk_device *dev, int which, const kiln_vk_bind *binds, uint32_t n_binds,
                             const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz) {
    kiln_vk_shared *sh = dev->sh;
    if (gx == 0 || gy == 0 || gz == 0) return KILN_OK;
    if (gx > sh->max_groups[0] || gy > sh->max_groups[1] || gz > sh->max_groups[2])
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan backend: %u x %u x %u workgroups exceed the device's limits",
                          gx, gy, gz);
    if (dev->skip && (skip_class(which) & dev->skip)) return KILN_OK;
    VkCommandBuffer cmd = dev->cmd;
    const bool in_graph = dev->graph_mode == 1 || dev->graph_mode == 2;
    if (in_graph) {
        /* everything the recorded command depends on: a replay with the
         * same hash records the same commands */
        struct { int32_t which; uint32_t n_binds, push_size, groups[3]; } head = {which, n_binds, push_size, {gx, gy, gz}};
        kiln_vk_graph_hash(dev, &head, sizeof head);
        kiln_vk_graph_hash(dev, push, push_size);
        for (uint32_t i = 0; i < n_binds; i++) {
            uint64_t d[3] = {0, binds[i].offset, binds[i].size};
            VkBuffer vb = binds[i].buf->chunk->buf;
            memcpy(d, &vb, sizeof vb < sizeof d[0] ? sizeof vb : sizeof d[0]);
            kiln_vk_graph_hash(dev, d, sizeof d);
        }
        if (dev->graph_mode == 2 || dev->graph_failed) return KILN_OK; /* replay: checked and staged only */
        cmd = dev->graph_new.cmd;
    }
    VkPipeline pipe;
    kiln_status st = kiln_vk_pipeline(sh, which, &pipe);
    struct timespec t0;
    if (st == KILN_OK && dev->profile) {
        st = kiln_vk_finish(dev);
        clock_gettime(CLOCK_MONOTONIC, &t0);
    }
    if (st == KILN_OK && !in_graph) st = kiln_vk_begin(dev);
    if (st != KILN_OK) return st;
    VkDescriptorBufferInfo bi[KILN_VK_MAX_BINDINGS];
    VkWriteDescriptorSet w[KILN_VK_MAX_BINDINGS];
    memset(w, 0, sizeof w);
    for (uint32_t i = 0; i < n_binds; i++) {
        bi[i].buffer = binds[i].buf->chunk->buf;
        bi[i].offset = binds[i].offset;
        bi[i].range = binds[i].size;
        w[i].sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
        w[i].dstBinding = i;
        w[i].descriptorCount = 1;
        w[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        w[i].pBufferInfo = &bi[i];
    }
    hazard_barrier(dev, cmd, which, binds, n_binds);
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    sh->push_descriptor(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, sh->layout, 0, n_binds, w);
    vkCmdPushConstants(cmd, sh->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size, push);
    vkCmdDispatch(cmd, gx, gy, gz);
    if (in_graph) {
        dev->rec_dispatches++;
        kiln_vk_graph *g = &dev->graph_new;
        if (g->ts_pool && g->ts_n + 1 < KILN_VK_TS_MAX) {
            g->ts_which[g->ts_n++] = (uint16_t)which;
            vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, g->ts_pool, g->ts_n);
        }
        return KILN_OK;
    }
    dev->n_ops++;
    if (dev->profile) {
        st = kiln_vk_finish(dev);
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        dev->prof_ms[which] += (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        dev->prof_n[which]++;
        return st;
    }
    return KILN_OK;
}

void kiln_vk_act_written(kiln_bk_device *dev, const kiln_bk_buffer *buf, uint64_t offset, uint64_t size) {
    kiln_vk_act_cache *c = &dev->act_cache;
    if (!c->valid || c->src != buf) return;
    if (offset < c->offset + c->extent && c->offset < offset + size) c->valid = false;
}


/* ------------------------------------------------------------------------ */
/* tensor checks                                                            */
/* ------------------------------------------------------------------------ */

/* As the CPU backend's check: a readable 2-D view of `type` (any type the
 * shaders know if type < 0), inside its buffer; *extent = bytes from
 * offset to the end of the last row. Offsets and strides must be 4-byte
 * aligned for F32 (word addressing) and 2-byte aligned otherwise. */
kiln_status kiln_vk_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op, const char *what,
                                uint64_t *extent) {
    if (!t || !t->buf) return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s is NULL", op, what);
    if (type >= 0 && t->type != type)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s is %s, expected %s", op, what, kiln_vk_type_name(t->type),
                          kiln_vk_type_name(type));
    uint32_t be, bb;
    if (!kiln_vk_type_geometry(t->type, &be, &bb))
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan %s: %s has type %d, which this backend does not handle", op,
                          what, (int)t->type);
    if (t->ne[0] < 0 || t->ne[1] < 0) return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s has a negative shape", op, what);
    if (t->ne[0] % be != 0)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s rows of %lld are not whole %s blocks", op, what,
                          (long long)t->ne[0], kiln_vk_type_name(t->type));
    *extent = 0;
    if (t->ne[0] == 0 || t->ne[1] == 0) return KILN_OK;
    uint64_t row = (uint64_t)t->ne[0] / be * bb;
    if (t->ne[1] > 1 && t->row_stride < row)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s row stride %llu < row size %llu", op, what,
                          (unsigned long long)t->row_stride, (unsigned long long)row);
    uint64_t n1 = (uint64_t)t->ne[1] - 1;
    if (t->ne[1] > 1 && t->row_stride > (UINT64_MAX - row) / n1)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s extent overflows", op, what);
    uint64_t ext = n1 * (t->ne[1] > 1 ? t->row_stride : 0) + row;
    if (t->offset > t->buf->size || ext > t->buf->size - t->offset)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s [%llu, +%llu) outside its %llu-byte buffer", op, what,
                          (unsigned long long)t->offset, (unsigned long long)ext, (unsigned long long)t->buf->size);
    unsigned align = (t->type == KILN_VK_T_F32 || t->type == KILN_VK_T_Q4_K || t->type == KILN_VK_T_Q5_K) ? 4 : 2;
    if ((t->offset | (t->ne[1] > 1 ? t->row_stride : 0)) % align)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: %s rows are not %u-byte aligned", op, what, align);
    if (ext > UINT32_MAX || (t->ne[1] > 1 && t->row_stride > UINT32_MAX))
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan %s: %s spans more than 4 GiB", op, what);
    kiln_status st = kiln_vk_layout_check(t, op); /* a layout its kernels can read (vk_layout.c) */
    if (st) return st;
    *extent = ext;
    return KILN_OK;
}

/* Binds an F32 tensor; *off = its first element (words), *stride in words. */
kiln_status kiln_vk_bind_f32(kiln_bk_device *dev, const kiln_bk_tensor *t, uint64_t extent, kiln_vk_bind *b,
                            uint32_t *off, uint32_t *stride, const char *op) {
    uint32_t rem = 0;
    kiln_status st = kiln_vk_bind_range(dev, t->buf, t->offset, extent, b, &rem, op);
    *off = rem / 4;
    *stride = (uint32_t)(t->row_stride / 4);
    return st;
}

kiln_status kiln_vk_need_ubatch(const kiln_bk_device *dev, const char *op) {
    if (!dev->ub.set) return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: no ubatch was set", op);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* ubatch                                                                   */
/* ------------------------------------------------------------------------ */

/* Ubatches of more than this many tokens take the tiled prefill attention
 * (attn_tile.glsl); decode and speculative verify batches keep
 * attention.comp (their rows keep the decode kernel's bits). */
#define KILN_VK_ATTN_TILE_MIN 32

static kiln_status ubatch_validate(const kiln_bk_ubatch *u) {
    uint32_t n = u->n_tokens;
    if (n == 0) return KILN_OK;
    if (u->kv_cell)
        for (uint32_t i = 0; i < n; i++)
            if (u->kv_cell[i] < 0 || (uint32_t)u->kv_cell[i] >= u->n_cells)
                return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: token %u: kv cell %d outside [0, %u)",
                                  i, u->kv_cell[i], u->n_cells);
    if (!u->attn_table != !u->attn_n_kv)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: attn_table and attn_n_kv must come together");
    if (!u->attn_table) return KILN_OK;
    if (u->n_block_entries && !u->block_tables)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: block_tables is NULL");
    for (uint32_t i = 0; i < n; i++) {
        int32_t n_kv = u->attn_n_kv[i];
        if (n_kv < 0) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: token %u: attn_n_kv %d", i, n_kv);
        if (n_kv == 0) continue;
        if (u->block_size == 0) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: block_size is 0");
        uint64_t nb = ((uint64_t)n_kv + u->block_size - 1) / u->block_size;
        int32_t t0 = u->attn_table[i];
        if (t0 < 0 || (uint64_t)t0 + nb > u->n_block_entries)
            return kiln_error(KILN_E_INVALID_ARG,
                              "vulkan backend: set_ubatch: token %u: block table [%d, +%llu) outside %u entries", i, t0,
                              (unsigned long long)nb, u->n_block_entries);
        for (uint64_t j = 0; j < nb; j++) {
            int32_t b = u->block_tables[(uint64_t)t0 + j];
            if (b < 0 || ((uint64_t)b + 1) * u->block_size > u->n_cells)
                return kiln_error(KILN_E_INVALID_ARG,
                                  "vulkan backend: set_ubatch: token %u: block %d (entry %llu) outside %u cells", i, b,
                                  (unsigned long long)((uint64_t)t0 + j), u->n_cells);
        }
    }
    return KILN_OK;
}

kiln_status kiln_vk_set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ubp) {
    if (!dev || !ubp) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: NULL device or ubatch");
    kiln_bk_ubatch u;
    memset(&u, 0, sizeof u);
    memcpy(&u, ubp, ubp->struct_size < sizeof u ? ubp->struct_size : sizeof u);
    if (u.n_tokens && !u.pos) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: set_ubatch: pos is NULL");
    kiln_status st = ubatch_validate(&u);
    if (st != KILN_OK) return st;
    kiln_vk_ubatch *ub = &dev->ub;
    size_t n = u.n_tokens;
    /* tiles of the prefill attention: at most one per token, 3 ints each */
    const bool tiles = n > KILN_VK_ATTN_TILE_MIN && u.attn_table;
    size_t need = 4 * n + u.n_block_entries + (tiles ? 3 * n : 0);
    if (need > ub->cap) {
        int32_t *d = kiln_realloc(ub->data, need * sizeof(int32_t));
        if (!d) return kiln_error(KILN_E_OOM_HOST, "vulkan backend: set_ubatch: out of memory for %u tokens", u.n_tokens);
        ub->data = d;
        ub->cap = need;
    }
    int32_t *pos = ub->data, *cell = pos + n, *tab = cell + n, *nkv = tab + n, *bt = nkv + n;
    if (n) memcpy(pos, u.pos, n * sizeof(int32_t));
    if (n && u.kv_cell) memcpy(cell, u.kv_cell, n * sizeof(int32_t));
    else if (n) memset(cell, 0, n * sizeof(int32_t));
    if (n && u.attn_table) {
        memcpy(tab, u.attn_table, n * sizeof(int32_t));
        memcpy(nkv, u.attn_n_kv, n * sizeof(int32_t));
    } else if (n) {
        memset(tab, 0, 2 * n * sizeof(int32_t));
    }
    if (u.n_block_entries) memcpy(bt, u.block_tables, (size_t)u.n_block_entries * sizeof(int32_t));
    /* runs of up to 64 consecutive tokens with the same block table (as
     * the CUDA backend's tiles64), with the run's largest n_kv */
    uint32_t n_tiles = 0;
    if (tiles) {
        int32_t *t = bt + u.n_block_entries;
        for (uint32_t i = 0; i < n; i++) {
            if (i == 0 || tab[i] != tab[i - 1] || t[3 * n_tiles - 2] == 64) {
                t[3 * n_tiles] = (int32_t)i;
                t[3 * n_tiles + 1] = 0;
                t[3 * n_tiles + 2] = 0;
                n_tiles++;
            }
            t[3 * n_tiles - 2]++;
            if (nkv[i] > t[3 * n_tiles - 1]) t[3 * n_tiles - 1] = nkv[i];
        }
    }
    ub->n_tiles = n_tiles;
    ub->set = true;
    ub->has_kv_cell = u.kv_cell != NULL;
    ub->has_attn = u.attn_table != NULL;
    ub->n_tokens = u.n_tokens;
    ub->n_block_entries = u.n_block_entries;
    ub->block_size = u.block_size;
    ub->n_cells = u.n_cells;
    ub->gen++;
    ub->ring_epoch = 0;
    return KILN_OK;
}

/* The ubatch tables (kv_cell, attn_table, attn_n_kv, block tables, tiles)
 * in the ring; *b binds them, in this order, from word 0. */
kiln_status kiln_vk_ubatch_bind(kiln_bk_device *dev, kiln_vk_bind *b, const char *op) {
    kiln_vk_ubatch *ub = &dev->ub;
    uint64_t bytes = (3ull * ub->n_tokens + ub->n_block_entries + 3ull * ub->n_tiles) * sizeof(int32_t);
    if (ub->ring_epoch != dev->ring_epoch) {
        kiln_vk_slice s;
        kiln_status st = kiln_vk_ring_alloc(dev, bytes, &s);
        if (st != KILN_OK) return st;
        memcpy(s.ptr, ub->data + ub->n_tokens, bytes);
        ub->ring_epoch = dev->ring_epoch;
        ub->ring_offset = s.offset;
        ub->ring_buf = s.buf;
    }
    return kiln_vk_bind_range(dev, ub->ring_buf, ub->ring_offset, bytes, b, NULL, op);
}

/* ------------------------------------------------------------------------ */
/* get_rows, rms_norm, add, swiglu                                          */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table, const int32_t *ids,
                             kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t te, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan get_rows: device is NULL");
    if ((st = kiln_vk_tensor_check(table, -1, "get_rows", "table", &te)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "get_rows", "dst", &de)))
        return st;
    if (dst->ne[0] != table->ne[0])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan get_rows: dst rows of %lld, table rows of %lld",
                          (long long)dst->ne[0], (long long)table->ne[0]);
    if (dst->ne[1] == 0 || dst->ne[0] == 0) return KILN_OK;
    if (!ids) return kiln_error(KILN_E_INVALID_ARG, "vulkan get_rows: ids is NULL");
    for (int64_t r = 0; r < dst->ne[1]; r++)
        if (ids[r] < 0 || ids[r] >= table->ne[1])
            return kiln_error(KILN_E_INVALID_ARG, "vulkan get_rows: id %d (row %lld) outside [0, %lld)", ids[r],
                              (long long)r, (long long)table->ne[1]);
    const int slot = kiln_vk_weight_slot(table);
    const uint64_t rows = (uint64_t)dst->ne[1];
    kiln_vk_slice s;
    if ((st = kiln_vk_ring_alloc(dev, rows * sizeof(int32_t), &s))) return st;
    memcpy(s.ptr, ids, rows * sizeof(int32_t));
    kiln_vk_bind b[4];
    uint32_t t_rem;
    struct { uint32_t t_off, t_stride, d_off, d_stride, n, rows, ids_off; } pc;
    if ((st = kiln_vk_bind_range(dev, table->buf, table->offset, te, &b[0], &t_rem, "get_rows")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[1], &pc.d_off, &pc.d_stride, "get_rows")) ||
        (st = kiln_vk_bind_range(dev, s.buf, s.offset, rows * sizeof(int32_t), &b[2], NULL, "get_rows")))
        return st;
    b[3] = b[0];
    pc.t_off = t_rem;
    pc.t_stride = (uint32_t)table->row_stride;
    pc.n = (uint32_t)dst->ne[0];
    pc.rows = (uint32_t)rows;
    pc.ids_off = 0;
    uint32_t be, bb;
    kiln_vk_type_geometry(table->type, &be, &bb);
    uint32_t gx = be == 1 ? kiln_vk_div_up(pc.n, 64) : kiln_vk_div_up(pc.n / 32, 64);
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    return kiln_vk_dispatch(dev, KILN_VK_P_GETROWS_FIRST + slot, b, 4, &pc, sizeof pc, gx, pc.rows, 1);
}

kiln_status kiln_vk_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *w, float eps,
                             kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t xe, we, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm: device is NULL");
    if ((st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "rms_norm", "x", &xe)) ||
        (st = kiln_vk_tensor_check(w, KILN_VK_T_F32, "rms_norm", "w", &we)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "rms_norm", "dst", &de)))
        return st;
    if (w->ne[0] != x->ne[0] || w->ne[1] < 1 || dst->ne[0] != x->ne[0] || dst->ne[1] != x->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm: shapes x %lldx%lld, w %lldx%lld, dst %lldx%lld",
                          (long long)x->ne[0], (long long)x->ne[1], (long long)w->ne[0], (long long)w->ne[1],
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    if (!(eps >= 0.0f)) return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm: eps %g", (double)eps);
    if (x->ne[0] == 0 || x->ne[1] == 0) return KILN_OK;
    struct { uint32_t x_off, x_stride, w_off, d_off, d_stride, n, rows; float eps; uint32_t qmode, q_stride; } pc;
    uint32_t dummy;
    kiln_vk_bind b[4];
    if ((st = kiln_vk_bind_f32(dev, x, xe, &b[0], &pc.x_off, &pc.x_stride, "rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, w, we, &b[1], &pc.w_off, &dummy, "rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.d_off, &pc.d_stride, "rms_norm")))
        return st;
    pc.n = (uint32_t)x->ne[0];
    pc.rows = (uint32_t)x->ne[1];
    pc.eps = eps;
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    if ((st = kiln_vk_act_produce(dev, dst, de, KILN_VK_QMODES_ALL, &b[3], &pc.qmode, &pc.q_stride, "rms_norm"))) return st;
    st = kiln_vk_dispatch(dev, KILN_VK_P_RMS_NORM, b, 4, &pc, sizeof pc, pc.rows, 1, 1);
    if (st == KILN_OK) kiln_vk_act_produced(dev, dst, de, pc.qmode);
    return st;
}

static kiln_status binary(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *bt,
                          kiln_bk_tensor *dst, uint32_t mode, const char *op) {
    kiln_status st;
    uint64_t ae, be, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: device is NULL", op);
    if ((st = kiln_vk_tensor_check(a, KILN_VK_T_F32, op, mode ? "gate" : "a", &ae)) ||
        (st = kiln_vk_tensor_check(bt, KILN_VK_T_F32, op, mode ? "up" : "b", &be)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, op, "dst", &de)))
        return st;
    bool shapes = bt->ne[0] == a->ne[0] && dst->ne[0] == a->ne[0] && dst->ne[1] == a->ne[1] &&
                  (bt->ne[1] == a->ne[1] || (mode == 0 && bt->ne[1] == 1));
    if (!shapes)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: shapes %lldx%lld, %lldx%lld, dst %lldx%lld", op,
                          (long long)a->ne[0], (long long)a->ne[1], (long long)bt->ne[0], (long long)bt->ne[1],
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    if (a->ne[0] == 0 || a->ne[1] == 0) return KILN_OK;
    struct { uint32_t a_off, a_stride, b_off, b_stride, d_off, d_stride, n, rows, mode, qmode, q_stride; } pc;
    kiln_vk_bind b[4];
    if ((st = kiln_vk_bind_f32(dev, a, ae, &b[0], &pc.a_off, &pc.a_stride, op)) ||
        (st = kiln_vk_bind_f32(dev, bt, be, &b[1], &pc.b_off, &pc.b_stride, op)) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.d_off, &pc.d_stride, op)))
        return st;
    if (bt->ne[1] == 1) pc.b_stride = 0;
    pc.n = (uint32_t)a->ne[0];
    pc.rows = (uint32_t)a->ne[1];
    pc.mode = mode;
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    if ((st = kiln_vk_act_produce(dev, dst, de, KILN_VK_QMODES_ALL, &b[3], &pc.qmode, &pc.q_stride, op))) return st;
    st = kiln_vk_dispatch(dev, KILN_VK_P_BINARY, b, 4, &pc, sizeof pc, kiln_vk_div_up(pc.n, 256), pc.rows, 1);
    if (st == KILN_OK) kiln_vk_act_produced(dev, dst, de, pc.qmode);
    return st;
}

kiln_status kiln_vk_add(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b, kiln_bk_tensor *dst) {
    return binary(dev, a, b, dst, 0, "add");
}

kiln_status kiln_vk_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate, const kiln_bk_tensor *up,
                           kiln_bk_tensor *dst) {
    return binary(dev, gate, up, dst, 1, "swiglu");
}

/* ------------------------------------------------------------------------ */
/* matmul                                                                   */
/* ------------------------------------------------------------------------ */

/* Activation format per weight type (see types.glsl): 0 the F32 rows as
 * they are, 1 F16-rounded, 2 BF16-rounded, 3 Q8_0, 4 Q8_1, 5 Q8_K; and 6,
 * for the matrix cores whatever the weights: F16 packed in pairs, rows
 * padded to whole 32-element chunks (quant_act.comp). */
uint32_t kiln_vk_act_mode(int32_t type) {
    switch (type) {
    case KILN_VK_T_F32: return 0;
    case KILN_VK_T_F16: return 1;
    case KILN_VK_T_BF16: return 2;
    case KILN_VK_T_Q4_0: case KILN_VK_T_Q5_0: case KILN_VK_T_Q8_0: return 3;
    case KILN_VK_T_Q4_1: case KILN_VK_T_Q5_1: return 4;
    default: return 5;
    }
}

uint64_t kiln_vk_act_row_words(uint32_t mode, uint64_t k) {
    switch (mode) {
    case 1: case 2: return k;
    case 3: return k / 4 + k / 32;
    case 4: return k / 4 + 2 * (k / 32);
    case 5: return k / 4 + k / 256 + k / 16;
    case 6: return (k + 31) / 32 * 16;
    default: return k;
    }
}

#define KILN_VK_MM_MC 4 /* activation rows per workgroup (mm.glsl MC) */
#define KILN_VK_MMT_TILE 64 /* weight and activation rows per workgroup (mmt.glsl BN, BM) */
#define KILN_VK_MMC_BN 128 /* weight rows per workgroup (mmc1.glsl BN; mmc.glsl's: sh->mmc_bn) */
#define KILN_VK_MMC1_BM 64 /* activation rows per workgroup of the previous kernel (mmc1.glsl BM) */

kiln_status kiln_vk_scratch_reserve(kiln_bk_device *dev, kiln_bk_buffer **buf, uint64_t bytes) {
    kiln_status st;
    if (*buf && (*buf)->size >= bytes) return KILN_OK;
    /* the old scratch may be read by recorded work: finish it first */
    if (*buf && (st = kiln_vk_finish(dev))) return st;
    kiln_bk_buffer *nb = NULL;
    uint64_t want = *buf && (*buf)->size * 2 > bytes ? (*buf)->size * 2 : bytes;
    if ((st = kiln_vk_buffer_new(dev, KILN_VK_MEM_DEVICE, want, &nb)) &&
        (want == bytes || (st = kiln_vk_buffer_new(dev, KILN_VK_MEM_DEVICE, bytes, &nb))))
        return st;
    kiln_vk_buffer_free(*buf);
    *buf = nb;
    dev->act_gen++; /* recorded graphs name the old one */
    return KILN_OK;
}

/* The handle's activation scratch (dev->act), at least `bytes`. */
kiln_status kiln_vk_act_scratch(kiln_bk_device *dev, uint64_t bytes) {
    return kiln_vk_scratch_reserve(dev, &dev->act, bytes);
}

bool kiln_vk_act_want_is(const kiln_vk_act_want *e, const kiln_bk_tensor *t) {
    return e->mode && e->buf == t->buf && e->offset == t->offset && e->row_stride == t->row_stride &&
           e->k == t->ne[0] && e->m == t->ne[1];
}

/* Remembers that a matmul read x in format `mode` (act_want). */
static void act_want_note(kiln_bk_device *dev, const kiln_bk_tensor *x, uint32_t mode) {
    for (uint32_t i = 0; i < KILN_VK_ACT_WANTS; i++)
        if (kiln_vk_act_want_is(&dev->act_want[i], x)) {
            dev->act_want[i].mode = mode;
            return;
        }
    kiln_vk_act_want *e = &dev->act_want[dev->act_want_next];
    dev->act_want_next = (dev->act_want_next + 1) % KILN_VK_ACT_WANTS;
    e->buf = x->buf;
    e->offset = x->offset;
    e->row_stride = x->row_stride;
    e->k = x->ne[0];
    e->m = x->ne[1];
    e->mode = mode;
}

/* For an operation that writes dst (rms_norm, add_rms_norm, swiglu,
 * attention): if a matmul read those rows quantized lately in a format
 * the operation can write (bit m of `modes`: format m), *qmode is that format and *qb
 * binds the scratch to quantize them into (the dispatch's last binding),
 * *q_stride its row words; otherwise *qmode = 0 and *qb binds dst again
 * (the shader does not touch it). Call act_produced after the dispatch. */
kiln_status kiln_vk_act_produce(kiln_bk_device *dev, const kiln_bk_tensor *dst, uint64_t de, uint32_t modes,
                               kiln_vk_bind *qb, uint32_t *qmode, uint32_t *q_stride, const char *op) {
    kiln_status st;
    *qmode = 0;
    *q_stride = 0;
    const int64_t K = dst->ne[0], M = dst->ne[1];
    for (uint32_t i = 0; i < KILN_VK_ACT_WANTS && !(dev->no_fused_mask & 2u); i++) {
        const uint32_t mode = dev->act_want[i].mode;
        if (!kiln_vk_act_want_is(&dev->act_want[i], dst) || !((modes >> mode) & 1u) || (mode >= 3 && K % (mode == 5 ? 256 : 32)))
            continue;
        const uint64_t row_words = kiln_vk_act_row_words(mode, (uint64_t)K);
        const uint64_t bytes = (uint64_t)M * row_words * 4;
        if ((st = kiln_vk_act_scratch(dev, bytes))) return st;
        dev->act_cache.valid = false; /* overwritten */
        *qmode = mode;
        *q_stride = (uint32_t)row_words;
        return kiln_vk_bind_range(dev, dev->act, 0, bytes, qb, NULL, op);
    }
    return kiln_vk_bind_range(dev, dst->buf, dst->offset, de, qb, NULL, op);
}

/* After the dispatch act_produce prepared: the scratch holds dst's rows. */
void kiln_vk_act_produced(kiln_bk_device *dev, const kiln_bk_tensor *dst, uint64_t de, uint32_t qmode) {
    if (!qmode) return;
    kiln_vk_act_cache *c = &dev->act_cache;
    c->valid = true;
    c->src = dst->buf;
    c->offset = dst->offset;
    c->extent = de;
    c->row_stride = dst->row_stride;
    c->k = dst->ne[0];
    c->m = dst->ne[1];
    c->mode = qmode;
    c->q_off = 0;
}

/* The activations x in format `mode` (kiln_vk_act_mode) in the handle's scratch,
 * quantized by one quant_act dispatch unless the scratch already holds
 * them (act_cache: q, k and v, or gate and up, share one); *b binds them,
 * *a_off and *a_stride (words) address them. */
kiln_status kiln_vk_quantize_act(kiln_bk_device *dev, const kiln_bk_tensor *x, uint64_t xe, uint32_t mode,
                                kiln_vk_bind *b, uint32_t *a_off, uint32_t *a_stride) {
    kiln_status st;
    const int64_t K = x->ne[0], M = x->ne[1];
    const uint64_t row_words = kiln_vk_act_row_words(mode, (uint64_t)K);
    const uint64_t bytes = (uint64_t)M * row_words * 4;
    kiln_vk_act_cache *c = &dev->act_cache;
    if (mode <= 5) act_want_note(dev, x, mode); /* not the matrix cores' F16 pairs */
    bool hit = c->valid && c->src == x->buf && c->offset == x->offset && c->row_stride == x->row_stride &&
               c->k == K && c->m == M && c->mode == mode;
    if (!hit) {
        c->valid = false;
        if ((st = kiln_vk_act_scratch(dev, bytes))) return st;
        struct { uint32_t x_off, x_stride, a_off, a_stride, K, M, mode; } qc;
        kiln_vk_bind qb[2];
        uint32_t rem;
        if ((st = kiln_vk_bind_f32(dev, x, xe, &qb[0], &qc.x_off, &qc.x_stride, "matmul")) ||
            (st = kiln_vk_bind_range(dev, dev->act, 0, bytes, &qb[1], &rem, "matmul")))
            return st;
        qc.a_off = 0;
        qc.a_stride = (uint32_t)row_words;
        qc.K = (uint32_t)K;
        qc.M = (uint32_t)M;
        qc.mode = mode;
        /* one invocation per element (F16/BF16) or packed pair (mode 6),
         * else a workgroup per 256 */
        uint32_t gx = mode == 6 ? kiln_vk_div_up(row_words, 64) : mode <= 2 ? kiln_vk_div_up((uint64_t)K, 64) : kiln_vk_div_up((uint64_t)K, 256);
        if ((st = kiln_vk_dispatch(dev, KILN_VK_P_QUANT_ACT, qb, 2, &qc, sizeof qc, gx, (uint32_t)M, 1)))
            return st;
        c->valid = true;
        c->src = x->buf;
        c->offset = x->offset;
        c->extent = xe;
        c->row_stride = x->row_stride;
        c->k = K;
        c->m = M;
        c->mode = mode;
        c->q_off = 0;
    }
    uint32_t rem;
    if ((st = kiln_vk_bind_range(dev, dev->act, 0, (uint64_t)c->q_off * 4 + bytes, b, &rem, "matmul"))) return st;
    *a_off = c->q_off;
    *a_stride = (uint32_t)row_words;
    return KILN_OK;
}

/* The decode kernel of weight slot `slot` for M activation rows, from the
 * family `first` (mmv, mmvm): one row goes through the family built for
 * one row (KILN_VK_MMV_UNROLL), with integer dot products where the device
 * and the type have them (the same bits), and so do several rows (batched
 * decode, verify batches: idot8_first; KILN_VK_NO_IDOT8=1 not). */
int kiln_vk_mmv_pipeline(const kiln_bk_device *dev, int64_t M, int slot, int first, int first1, int idot_first,
                        int idot8_first) {
    const int ii = kiln_vk_idot_index(slot);
    const bool idot = ii >= 0 && dev->sh->idot;
    if (!dev->mmv_unroll || M != 1) return idot && M > 1 && !dev->no_idot8 ? idot8_first + ii : first + slot;
    return idot ? idot_first + ii : first1 + slot;
}

kiln_status kiln_vk_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                           kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t we, xe, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul: device is NULL");
    if ((st = kiln_vk_tensor_check(w, -1, "matmul", "w", &we)) || (st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "matmul", "x", &xe)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "matmul", "dst", &de)))
        return st;
    const int64_t K = w->ne[0], N = w->ne[1], M = x->ne[1];
    if (x->ne[0] != K || dst->ne[0] != N || dst->ne[1] != M)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul: w %lldx%lld, x %lldx%lld, dst %lldx%lld",
                          (long long)K, (long long)N, (long long)x->ne[0], (long long)M, (long long)dst->ne[0],
                          (long long)dst->ne[1]);
    if (N == 0 || M == 0) return KILN_OK;
    const uint32_t mode = kiln_vk_act_mode(w->type);
    if (mode >= 3 && K % 32) /* not reachable: tensor_check saw whole blocks */
        return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul: K %lld", (long long)K);
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);

    kiln_vk_bind b[3];
    struct { uint32_t w_off, w_stride, a_off, a_stride, d_off, d_stride, K, N, M, n_base, passes, m_base; } pc;
    memset(&pc, 0, sizeof pc);
    if (K == 0) {
        /* nothing to sum: zeros, through a matmul over an empty K would be
         * a degenerate dispatch; the CPU writes zeros too */
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan matmul: K = 0");
    }
    const bool use_mmv = M <= KILN_VK_MMV_MAX && dev->sh->subgroup_add && !dev->no_mmv;
    bool use_mmc = !use_mmv && M > KILN_VK_MM_MC && !dev->no_tiled && (dev->sh->coopmat || dev->sh->coopmat_emulate);
    /* KILN_VK_MMC_OLD: the previous matrix-core kernel (F32 activations
     * converted per tile), to compare both in one run */
    bool mmc_old = use_mmc && dev->sh->coopmat && dev->mmc_old;
    /* float weights (F32, F16, BF16) are the types whose activations are
     * dotted as they are or rounded: act modes 0-2 */
    const bool mmc_ws = dev->sh->mmc_ws == 2u || (dev->sh->mmc_ws == 1u && mode <= 2u);
    int mmc_first = mmc_old ? KILN_VK_P_MMC1_FIRST
                    : dev->sh->coopmat ? (mmc_ws ? KILN_VK_P_MMCW_FIRST : KILN_VK_P_MMC_FIRST)
                                       : KILN_VK_P_MMCE_FIRST;
    if (use_mmc) {
        /* a driver that rejects the kernel: the previous matrix-core kernel
         * for this handle if it builds, else the portable path from now on */
        VkPipeline pipe;
        const int ws = kiln_vk_weight_slot(w);
        if (kiln_vk_pipeline(dev->sh, mmc_first + ws, &pipe) != KILN_OK && !mmc_old && dev->sh->coopmat &&
            kiln_vk_pipeline(dev->sh, KILN_VK_P_MMC1_FIRST + ws, &pipe) == KILN_OK) {
            kiln_log(&dev->log, KILN_LOG_WARN, "vulkan backend: the cooperative matrix kernel cannot be built: "
                     "the previous one (mmc1) for this handle");
            dev->mmc_old = mmc_old = true;
            mmc_first = KILN_VK_P_MMC1_FIRST;
        }
        if (kiln_vk_pipeline(dev->sh, mmc_first + ws, &pipe) != KILN_OK) {
            kiln_log(&dev->log, KILN_LOG_WARN, "vulkan backend: the cooperative matrix kernel cannot be built: "
                     "the portable tiled matmul from now on");
            dev->sh->coopmat = dev->sh->coopmat_emulate = false;
            use_mmc = false;
        }
    }
    /* the matrix cores take F16 rows, converted once per product (and
     * shared by q/k/v, gate/up like the quantized ones) */
    const uint32_t amode = use_mmc && !mmc_old ? 6 : mode;
    if (amode == 0 || mmc_old) {
        /* the F32 rows as they are (the previous matrix-core kernel converts them per tile) */
        if ((st = kiln_vk_bind_f32(dev, x, xe, &b[1], &pc.a_off, &pc.a_stride, "matmul"))) return st;
    } else {
        if ((st = kiln_vk_quantize_act(dev, x, xe, amode, &b[1], &pc.a_off, &pc.a_stride))) return st;
        /* mmc.glsl reads 16-byte vectors (the scratch starts aligned) */
        if (amode == 6) pc.a_stride /= 4;
    }
    uint32_t w_rem;
    if ((st = kiln_vk_bind_range(dev, w->buf, w->offset, we, &b[0], &w_rem, "matmul")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.d_off, &pc.d_stride, "matmul")))
        return st;
    pc.w_off = w_rem;
    pc.w_stride = (uint32_t)w->row_stride;
    pc.K = (uint32_t)K;
    pc.N = (uint32_t)N;
    pc.M = (uint32_t)M;
    const int slot = kiln_vk_weight_slot(w);
    const uint64_t max_x = dev->sh->max_groups[0];
    if (use_mmc) {
        /* batches on matrix cores: 128 x 128 tiles (the previous kernel 64 x
         * 128), F16 x F16 -> F32; F16 weights on 16-byte boundaries, whole
         * chunks, are read as 16-byte vectors */
        const uint32_t bm = mmc_old ? KILN_VK_MMC1_BM : dev->sh->mmc_bm, bn = mmc_old ? KILN_VK_MMC_BN : dev->sh->mmc_bn;
        const uint32_t gy = kiln_vk_div_up((uint64_t)M, bm);
        pc.passes = w->type == KILN_VK_T_F16 && K % 32 == 0 && pc.w_off % 16 == 0 && pc.w_stride % 16 == 0 &&
                    b[0].offset % 16 == 0;
        const uint64_t groups_n = kiln_vk_div_up((uint64_t)N, bn);
        /* mmc.glsl's MFIRST: the weight tiles along y */
        const bool mfirst = !mmc_old && dev->sh->mmc_mfirst;
        const uint64_t max_n = mfirst ? dev->sh->max_groups[1] : max_x;
        for (uint64_t g0 = 0; g0 < groups_n; g0 += max_n) {
            uint64_t gx = groups_n - g0 < max_n ? groups_n - g0 : max_n;
            pc.n_base = (uint32_t)(g0 * bn);
            if ((st = kiln_vk_dispatch(dev, mmc_first + slot, b, 3, &pc, (mmc_old ? 10 : 11) * sizeof(uint32_t),
                                       mfirst ? gy : (uint32_t)gx, mfirst ? (uint32_t)gx : gy, 1)))
                return st;
        }
        return KILN_OK;
    }
    if (use_mmv) {
        /* decode: subgroups over row pairs with a grid stride; enough
         * workgroups for every row pair at once on a GPU, about 32 on a CPU
         * implementation (each workgroup costs more than its arithmetic) */
        const kiln_vk_shared *sh = dev->sh;
        uint64_t gx = kiln_vk_div_up(kiln_vk_div_up((uint64_t)N, kiln_vk_mmv_rows(sh, slot)),
                                     kiln_vk_mmv_groups_per_wg(sh, KILN_VK_MMV_WG, kiln_vk_kq(w)));
        if (sh->is_cpu && gx > 32) gx = 32;
        if (gx > max_x) gx = max_x;
        pc.n_base = dev->mmv_unroll | (kiln_vk_kq(w) ? 2u : 0u); /* mmv.glsl: `unroll`, bit 1 the KQ order */
        pc.m_base = 0;
        /* F16 rows and activations on 16-byte boundaries: 16-byte loads */
        pc.passes = w->type == KILN_VK_T_F16 && pc.w_off % 16 == 0 && pc.w_stride % 16 == 0 && K % 8 == 0 &&
                    pc.a_off % 4 == 0 && pc.a_stride % 4 == 0 && b[0].offset % 16 == 0 && b[1].offset % 16 == 0;
        const int pipe = kiln_vk_mmv_pipeline(dev, M, slot, KILN_VK_P_MMV_FIRST, KILN_VK_P_MMV1_FIRST,
                                              KILN_VK_P_MMV1_IDOT_FIRST, KILN_VK_P_MMV_IDOT_FIRST);
        return kiln_vk_dispatch(dev, pipe, b, 3, &pc, sizeof pc, (uint32_t)gx, kiln_vk_div_up((uint64_t)M, KILN_VK_MMV_MT), 1);
    }
    if (M > KILN_VK_MM_MC && !dev->no_tiled) {
        /* batches: 64 x 64 tiles through shared memory */
        const uint32_t gy = kiln_vk_div_up((uint64_t)M, KILN_VK_MMT_TILE);
        const uint64_t groups_n = kiln_vk_div_up((uint64_t)N, KILN_VK_MMT_TILE);
        for (uint64_t g0 = 0; g0 < groups_n; g0 += max_x) {
            uint64_t gx = groups_n - g0 < max_x ? groups_n - g0 : max_x;
            pc.n_base = (uint32_t)(g0 * KILN_VK_MMT_TILE);
            if ((st = kiln_vk_dispatch(dev, KILN_VK_P_MMT_FIRST + slot, b, 3, &pc, 10 * sizeof(uint32_t),
                                       (uint32_t)gx, gy, 1)))
                return st;
        }
        return KILN_OK;
    }
    /* a few activation rows (decode, drafts): 8 invocations per weight row,
     * every weight read once per group of 4 activation rows */
    const int pipe = (dev->sh->subgroup_arith ? KILN_VK_P_MMSG_FIRST : KILN_VK_P_MM_FIRST) + slot;
    const uint64_t row_groups = kiln_vk_div_up((uint64_t)N, 8);
    /* a CPU implementation pays per workgroup: about 32 of them */
    pc.passes = dev->sh->is_cpu ? (uint32_t)(row_groups + 31) / 32 : 1;
    if (pc.passes == 0) pc.passes = 1;
    const uint64_t groups_n = kiln_vk_div_up(row_groups, pc.passes);
    const uint32_t gy = kiln_vk_div_up((uint64_t)M, KILN_VK_MM_MC);
    for (uint64_t g0 = 0; g0 < groups_n; g0 += max_x) {
        uint64_t gx = groups_n - g0 < max_x ? groups_n - g0 : max_x;
        pc.n_base = (uint32_t)(g0 * 8 * pc.passes);
        if ((st = kiln_vk_dispatch(dev, pipe, b, 3, &pc, sizeof pc, (uint32_t)gx, gy, 1))) return st;
    }
    return KILN_OK;
}
