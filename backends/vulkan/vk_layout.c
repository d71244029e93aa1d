/*
 * vk_layout.c - the Vulkan backend's own weight layouts (the iface's
 * weight_prepare, kiln_bk_tensor.layout).
 *
 * KILN_VK_LAYOUT_Q4_0_SPLIT: a Q4_0 row of nb = K/32 blocks (GGUF: 18-byte
 * blocks, F16 d then 16 bytes of nibbles) is stored as the nb 16-byte
 * nibble arrays, then the nb scales; same size. GGUF's blocks are only
 * 2-byte aligned, so a decode lane reads its block as nine halves or
 * unaligned words; split, it reads the block's nibbles with one 16-byte
 * load and its scale with one 2-byte load (mmv.glsl with types.glsl's
 * T_Q4_0S, the *_q4_0s kernels). As CUDA's layout of the same name: the
 * lead measured 1.3-1.7x on the H100 for CUDA's decode kernel.
 *
 * Which rows: K % 256 == 0 (a row is whole 16-byte groups and its scales
 * whole words), rows starting on 16-byte boundaries (offset and stride),
 * a row of at most 16 KiB (q4_0_split.comp stages a row in shared memory;
 * K up to 29127, every model's). Other Q4_0 tensors and other types keep
 * the GGUF layout. KILN_VK_LAYOUT=0 (read at device open) keeps every
 * weight in the GGUF layout, to compare.
 *
 * The rearrangement is a dispatch recorded after the upload's copies (the
 * copies end with a barrier, the hazard tracking orders the rest), in the
 * handle's command buffer like the upload itself: the core synchronizes
 * once after all tensors are prepared.
 */
#include "vk_internal.h"

#define SPLIT_MAX_ROW_BYTES 16384u /* q4_0_split.comp MAXW words */

/* The tensor's first byte within its chunk's VkBuffer: the split kernels
 * index 16-byte vectors from bindings whose offsets are multiples of the
 * (power of two) storage alignment, so this 16-byte aligned makes their
 * offsets 16-byte aligned too. */
static uint64_t abs_offset(const kiln_bk_tensor *w) { return w->buf->blk->offset + w->offset; }

/* Whether w's rows can be (or were) split. */
static bool split_rows_ok(const kiln_bk_tensor *w) {
    const int64_t K = w->ne[0], N = w->ne[1];
    if (w->type != KILN_VK_T_Q4_0 || K <= 0 || N <= 0 || K % 256) return false;
    const uint64_t row = (uint64_t)(K / 32) * 18;
    if (row > SPLIT_MAX_ROW_BYTES) return false;
    if (N > 1 && (w->row_stride < row || w->row_stride % 16)) return false;
    return abs_offset(w) % 16 == 0;
}

/* Whether a split weight's rows are summed in KQ order (mmv.glsl): long,
 * few rows, K >= 8192 and 2048 <= N <= K / 2 (a 7B model's down product,
 * 14336 x 4096; not q/k/v, o, gate/up or the output, which their fused
 * kernels or a wide grid serve). On the H100 the down product's 2048
 * subgroups (two rows each) are one wave, each lane walking 14 chunks in
 * dependent rounds of loads; in KQ order four subgroups share a row pair.
 * KILN_VK_KQ=0: never; =2: every split weight (tests). Needs subgroups of
 * 4 to 128 invocations (mmv.glsl's kq_part). */
static bool kq_rows(const kiln_bk_device *dev, const kiln_bk_tensor *w) {
    const kiln_vk_shared *sh = dev->sh;
    const int64_t K = w->ne[0], N = w->ne[1];
    if (dev->kq_mode == 0 || !sh->subgroup_add || sh->subgroup_size < 4 || sh->subgroup_size > 128) return false;
    return dev->kq_mode == 2 || (K >= 8192 && N >= 2048 && N <= K / 2);
}

/* Q4_0 in the split bytes (either summation order). */
static bool split_q4_0(const kiln_bk_tensor *w) {
    return w->type == KILN_VK_T_Q4_0 &&
           (w->layout == KILN_VK_LAYOUT_Q4_0_SPLIT || w->layout == KILN_VK_LAYOUT_Q4_0_SPLIT_KQ);
}

int kiln_vk_weight_slot(const kiln_bk_tensor *w) {
    return split_q4_0(w) ? KILN_VK_SLOT_Q4_0S : kiln_vk_type_slot(w->type);
}

kiln_status kiln_vk_layout_check(const kiln_bk_tensor *w, const char *op) {
    if (w->layout == KILN_VK_LAYOUT_GGUF) return KILN_OK;
    if (split_q4_0(w)) {
        /* empty views read nothing; any other must be rows as prepared
         * (a view of some rows of a prepared tensor is) */
        if (w->ne[0] == 0 || w->ne[1] == 0 || split_rows_ok(w)) return KILN_OK;
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: a split-layout q4_0 weight whose rows are not whole 256-element "
                          "groups on 16-byte boundaries", op);
    }
    return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: weight layout %d of a %s tensor is not this backend's", op,
                      (int)w->layout, kiln_vk_type_name(w->type));
}

kiln_status kiln_vk_weight_prepare(kiln_bk_device *dev, const kiln_bk_tensor *w, int32_t *layout) {
    if (!layout) return kiln_error(KILN_E_INVALID_ARG, "vulkan weight_prepare: layout is NULL");
    *layout = KILN_VK_LAYOUT_GGUF;
    if (!dev || !w || !w->buf) return kiln_error(KILN_E_INVALID_ARG, "vulkan weight_prepare: NULL device or tensor");
    if (w->layout != KILN_VK_LAYOUT_GGUF)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan weight_prepare: the tensor is in layout %d already",
                          (int)w->layout);
    if (dev->no_weight_layout || !split_rows_ok(w)) return KILN_OK;
    const uint64_t N = (uint64_t)w->ne[1], row = (uint64_t)(w->ne[0] / 32) * 18;
    const uint64_t stride = N > 1 ? w->row_stride : row;
    if (stride > UINT32_MAX || (N - 1) > (UINT64_MAX - row) / stride)
        return KILN_OK; /* beyond what the kernels address; matmul refuses it anyway */
    const uint64_t extent = (N - 1) * stride + row;
    if (w->offset > w->buf->size || extent > w->buf->size - w->offset)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan weight_prepare: [%llu, +%llu) outside a %llu-byte buffer",
                          (unsigned long long)w->offset, (unsigned long long)extent,
                          (unsigned long long)w->buf->size);
    if (extent > UINT32_MAX) return KILN_OK; /* as above */
    if (dev->graph_mode) return kiln_error(KILN_E_INTERNAL, "vulkan weight_prepare: inside a graph");
    kiln_vk_bind b;
    uint32_t rem;
    kiln_status st = kiln_vk_bind_range(dev, w->buf, w->offset, extent, &b, &rem, "weight_prepare");
    if (st) return st;
    if (rem % 16) return KILN_OK; /* not reachable: abs_offset is 16-byte aligned */
    kiln_vk_act_written(dev, w->buf, w->offset, extent);
    struct { uint32_t w_off, w_stride, nb, row_base; } pc = {rem, (uint32_t)stride, (uint32_t)(w->ne[0] / 32), 0};
    const uint64_t max_x = dev->sh->max_groups[0];
    for (uint64_t r0 = 0; r0 < N; r0 += max_x) {
        const uint64_t gx = N - r0 < max_x ? N - r0 : max_x;
        pc.row_base = (uint32_t)r0;
        if ((st = kiln_vk_dispatch(dev, KILN_VK_P_Q4_0_SPLIT, &b, 1, &pc, sizeof pc, (uint32_t)gx, 1, 1)))
            return st; /* the core frees the buffer: half-split rows are never read */
    }
    *layout = kq_rows(dev, w) ? KILN_VK_LAYOUT_Q4_0_SPLIT_KQ : KILN_VK_LAYOUT_Q4_0_SPLIT;
    return KILN_OK;
}
