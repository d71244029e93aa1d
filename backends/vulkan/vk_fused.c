/*
 * vk_fused.c - the Vulkan backend's fused decode entries: add_rms_norm,
 * matmul_multi, matmul_add_rms_norm and matmul_swiglu. Each gives the
 * separate operations' bits and falls back to them where its single
 * dispatch does not apply (test_vulkan_ops compares both); see
 * docs/ARCHITECTURE.md, "Fewer dispatches per decode step". The
 * operations and the activation scratch they share live in vk_ops.c.
 */
#include <string.h>

#include "vk_internal.h"

/* ------------------------------------------------------------------------ */
/* fused entries (decode): add_rms_norm, matmul_multi, rope_kv_store        */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                                 kiln_bk_tensor *sum, const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t ae, be, se, we, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan add_rms_norm: device is NULL");
    if ((st = kiln_vk_tensor_check(a, KILN_VK_T_F32, "add_rms_norm", "a", &ae)) ||
        (st = kiln_vk_tensor_check(b, KILN_VK_T_F32, "add_rms_norm", "b", &be)) ||
        (st = kiln_vk_tensor_check(sum, KILN_VK_T_F32, "add_rms_norm", "sum", &se)) ||
        (st = kiln_vk_tensor_check(w, KILN_VK_T_F32, "add_rms_norm", "w", &we)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "add_rms_norm", "dst", &de)))
        return st;
    const int64_t n = a->ne[0], rows = a->ne[1];
    if (b->ne[0] != n || b->ne[1] != rows || sum->ne[0] != n || sum->ne[1] != rows || w->ne[0] != n || w->ne[1] < 1 ||
        dst->ne[0] != n || dst->ne[1] != rows)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan add_rms_norm: shapes a %lldx%lld, b %lldx%lld, sum %lldx%lld, "
                          "w %lldx%lld, dst %lldx%lld", (long long)n, (long long)rows, (long long)b->ne[0],
                          (long long)b->ne[1], (long long)sum->ne[0], (long long)sum->ne[1], (long long)w->ne[0],
                          (long long)w->ne[1], (long long)dst->ne[0], (long long)dst->ne[1]);
    if (!(eps >= 0.0f)) return kiln_error(KILN_E_INVALID_ARG, "vulkan add_rms_norm: eps %g", (double)eps);
    if (n == 0 || rows == 0) return KILN_OK;
    if (dev->no_fused_mask & 8u) {
        if ((st = kiln_vk_add(dev, a, b, sum))) return st;
        return kiln_vk_rms_norm(dev, sum, w, eps, dst);
    }
    struct {
        uint32_t a_off, a_stride, b_off, b_stride, s_off, s_stride, w_off, d_off, d_stride, n, rows;
        float eps;
        uint32_t qmode, q_stride;
    } pc;
    uint32_t dummy;
    kiln_vk_bind bd[6];
    if ((st = kiln_vk_bind_f32(dev, a, ae, &bd[0], &pc.a_off, &pc.a_stride, "add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, b, be, &bd[1], &pc.b_off, &pc.b_stride, "add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, sum, se, &bd[2], &pc.s_off, &pc.s_stride, "add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, w, we, &bd[3], &pc.w_off, &dummy, "add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &bd[4], &pc.d_off, &pc.d_stride, "add_rms_norm")))
        return st;
    pc.n = (uint32_t)n;
    pc.rows = (uint32_t)rows;
    pc.eps = eps;
    kiln_vk_act_written(dev, sum->buf, sum->offset, se);
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    if ((st = kiln_vk_act_produce(dev, dst, de, KILN_VK_QMODES_ALL, &bd[5], &pc.qmode, &pc.q_stride, "add_rms_norm"))) return st;
    st = kiln_vk_dispatch(dev, KILN_VK_P_ADD_RMS_NORM, bd, 6, &pc, sizeof pc, pc.rows, 1, 1);
    if (st == KILN_OK) kiln_vk_act_produced(dev, dst, de, pc.qmode);
    return st;
}

static bool bytes_overlap(const kiln_bk_tensor *a, uint64_t ae, const kiln_bk_tensor *b, uint64_t be) {
    return a->buf == b->buf && a->offset < b->offset + be && b->offset < a->offset + ae;
}

/* A decode dispatch's workgroups along x: `groups` row groups of one
 * subgroup each, `width` invocations per workgroup; about 32 on a CPU
 * implementation (each workgroup costs more than its arithmetic), at most
 * the device's limit (the kernels walk the rest with a grid stride). */
static uint32_t decode_grid(const kiln_vk_shared *sh, uint64_t groups, uint32_t width, bool kq) {
    uint64_t gx = kiln_vk_div_up(groups, kiln_vk_mmv_groups_per_wg(sh, width, kq));
    if (sh->is_cpu && gx > 32) gx = 32;
    if (gx > sh->max_groups[0]) gx = sh->max_groups[0];
    return (uint32_t)gx;
}

/* The push constants every MULTI decode kernel (mmv.glsl) starts with;
 * the fused ones append theirs. */
typedef struct mmvm_push {
    uint32_t a_off, a_stride, K, M, vec, m_base, n_prod;
    uint32_t g_end[3], w_off[3], w_stride[3], d_off[3], d_stride[3], N[3];
    uint32_t unroll;
} mmvm_push;

/* The spans of n weights and of their results, each in one buffer, that
 * a MULTI kernel's two shared bindings cover; false if either is too long
 * for the kernel's 32-bit offsets. */
static bool multi_spans(uint32_t n, const kiln_bk_tensor *const *w, const uint64_t *we, kiln_bk_tensor *const *dst,
                        const uint64_t *de, uint64_t *wlo, uint64_t *whi, uint64_t *dlo, uint64_t *dhi) {
    *wlo = *dlo = UINT64_MAX;
    *whi = *dhi = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (w[i]->offset < *wlo) *wlo = w[i]->offset;
        if (w[i]->offset + we[i] > *whi) *whi = w[i]->offset + we[i];
        if (dst[i]->offset < *dlo) *dlo = dst[i]->offset;
        if (dst[i]->offset + de[i] > *dhi) *dhi = dst[i]->offset + de[i];
    }
    return *whi - *wlo <= UINT32_MAX - 64 && *dhi - *dlo <= UINT32_MAX - 64;
}

/* Each product's place in the shared bindings (w_rem, d_rem: where wlo
 * and dlo land in them) and its row groups of weight slot `slot`; unused
 * entries repeat the last product. Returns the row groups of all. */
static uint64_t multi_products(mmvm_push *m, const kiln_vk_shared *sh, int slot, uint32_t n,
                               const kiln_bk_tensor *const *w, kiln_bk_tensor *const *dst, uint64_t wlo,
                               uint32_t w_rem, uint64_t dlo, uint32_t d_rem) {
    uint64_t groups = 0;
    m->n_prod = n;
    for (uint32_t i = 0; i < 3; i++) {
        const uint32_t j = i < n ? i : n - 1;
        m->w_off[i] = (uint32_t)(w_rem + (w[j]->offset - wlo));
        m->w_stride[i] = (uint32_t)w[j]->row_stride;
        m->d_off[i] = (uint32_t)((d_rem + (dst[j]->offset - dlo)) / 4);
        m->d_stride[i] = (uint32_t)(dst[j]->row_stride / 4);
        m->N[i] = (uint32_t)w[j]->ne[1];
        if (i < n) groups += kiln_vk_div_up((uint64_t)m->N[i], kiln_vk_mmv_rows(sh, slot));
        m->g_end[i] = (uint32_t)groups;
    }
    return groups;
}

/* matmul, then add_rms_norm of its result: one dispatch (mmv1n_TYPE,
 * mmv.glsl KILN_NORM) for a decode row of at most 4096 results whose
 * output overlaps neither the residual nor its sum (the last workgroup
 * reads both after every product row is written); otherwise the two
 * operations. The same bits either way. Only split Q4_0 and F16 weights:
 * on the H100 (Mistral-7B shape, tg128) Q4_0 282.7 -> 300.5 t/s, F16
 * 145.4 -> 147.2, but Q4_K_M 197.8 -> 172.7 (its Q6_K kernel with the
 * epilogue: 128 registers, half the workgroups per SM). KILN_VK_NO_FUSED
 * bit 64: never fused. */
kiln_status kiln_vk_matmul_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                        const kiln_bk_tensor *a, kiln_bk_tensor *sum, const kiln_bk_tensor *nw,
                                        float eps, kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t we, xe, ae, se, nwe, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_add_rms_norm: device is NULL");
    if ((st = kiln_vk_tensor_check(w, -1, "matmul_add_rms_norm", "w", &we)) ||
        (st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "matmul_add_rms_norm", "x", &xe)) ||
        (st = kiln_vk_tensor_check(a, KILN_VK_T_F32, "matmul_add_rms_norm", "a", &ae)) ||
        (st = kiln_vk_tensor_check(sum, KILN_VK_T_F32, "matmul_add_rms_norm", "sum", &se)) ||
        (st = kiln_vk_tensor_check(nw, KILN_VK_T_F32, "matmul_add_rms_norm", "nw", &nwe)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "matmul_add_rms_norm", "dst", &de)))
        return st;
    const int64_t K = w->ne[0], N = w->ne[1], M = x->ne[1];
    const int slot = kiln_vk_weight_slot(w);
    const kiln_vk_shared *sh = dev->sh;
    const uint32_t mode = kiln_vk_act_mode(w->type);
    const int pipe = slot == KILN_VK_SLOT_Q4_0S ? (sh->idot ? KILN_VK_P_MMV1N_Q4_0S_IDOT : KILN_VK_P_MMV1N_Q4_0S)
                     : w->type == KILN_VK_T_F16 ? KILN_VK_P_MMV1N_F16 : -1;
    const bool fuse = !(dev->no_fused_mask & (64u | 8u)) && dev->wg_cnt && M == 1 && N >= 1 && N <= 4096 && K > 0 &&
                      x->ne[0] == K && dst->ne[0] == N && dst->ne[1] == M && a->ne[0] == N && a->ne[1] == M &&
                      sum->ne[0] == N && sum->ne[1] == M && nw->ne[0] == N && nw->ne[1] >= 1 && eps >= 0.0f &&
                      pipe >= 0 && sh->subgroup_add && !dev->no_mmv && dev->mmv_unroll && !(mode >= 3 && K % 32) &&
                      !bytes_overlap(dst, de, a, ae) && !bytes_overlap(dst, de, sum, se) &&
                      !bytes_overlap(dst, de, x, xe) && !bytes_overlap(dst, de, nw, nwe);
    if (!fuse) {
        if ((st = kiln_vk_matmul(dev, w, x, dst))) return st;
        return kiln_vk_add_rms_norm(dev, a, dst, sum, nw, eps, dst);
    }
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    kiln_vk_act_written(dev, sum->buf, sum->offset, se);
    /* x's quantized row and dst's (written by the last workgroup, after
     * every read of x) share the scratch: grow it once, first */
    const kiln_bk_buffer *old_act = dev->act;
    const uint64_t x_words = mode ? kiln_vk_act_row_words(mode, (uint64_t)K) : 0; /* dst's: at most N (F16, BF16) */
    if ((st = kiln_vk_act_scratch(dev, 4 * (x_words > (uint64_t)N ? x_words : (uint64_t)N)))) return st;
    if (dev->act != old_act) dev->act_cache.valid = false;
    struct {
        uint32_t w_off, w_stride, a_off, a_stride, d_off, d_stride, K, N, M, unroll, vec, m_base;
        uint32_t r_off, s_off, nw_off, qmode;
        float eps;
        uint32_t dbg;
    } pc;
    memset(&pc, 0, sizeof pc);
    kiln_vk_bind b[8];
    uint32_t w_rem, dummy;
    if (mode == 0) {
        if ((st = kiln_vk_bind_f32(dev, x, xe, &b[1], &pc.a_off, &pc.a_stride, "matmul_add_rms_norm"))) return st;
    } else if ((st = kiln_vk_quantize_act(dev, x, xe, mode, &b[1], &pc.a_off, &pc.a_stride))) {
        return st;
    }
    if ((st = kiln_vk_bind_range(dev, w->buf, w->offset, we, &b[0], &w_rem, "matmul_add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.d_off, &pc.d_stride, "matmul_add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, a, ae, &b[3], &pc.r_off, &dummy, "matmul_add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, sum, se, &b[4], &pc.s_off, &dummy, "matmul_add_rms_norm")) ||
        (st = kiln_vk_bind_f32(dev, nw, nwe, &b[5], &pc.nw_off, &dummy, "matmul_add_rms_norm")) ||
        (st = kiln_vk_act_produce(dev, dst, de, KILN_VK_QMODES_ALL, &b[6], &pc.qmode, &dummy, "matmul_add_rms_norm")) ||
        (st = kiln_vk_bind_range(dev, dev->wg_cnt, 0, dev->wg_cnt->size, &b[7], NULL, "matmul_add_rms_norm")))
        return st;
    pc.w_off = w_rem;
    pc.w_stride = (uint32_t)w->row_stride;
    pc.K = (uint32_t)K;
    pc.N = (uint32_t)N;
    pc.M = 1;
    pc.unroll = 1u | (kiln_vk_kq(w) ? 2u : 0u); /* mmv.glsl: bit 1 the KQ order */
    pc.vec = w->type == KILN_VK_T_F16 && pc.w_off % 16 == 0 && pc.w_stride % 16 == 0 && K % 8 == 0 &&
             pc.a_off % 4 == 0 && pc.a_stride % 4 == 0 && b[0].offset % 16 == 0 && b[1].offset % 16 == 0;
    pc.eps = eps;
    pc.dbg = dev->norm_dbg;
    /* as matmul's decode dispatch; mmv.glsl is 256 wide with KILN_NORM */
    const uint32_t gx = decode_grid(sh, kiln_vk_div_up((uint64_t)N, kiln_vk_mmv_rows(sh, slot)), 256, kiln_vk_kq(w));
    st = kiln_vk_dispatch(dev, pipe, b, 8, &pc, sizeof pc, gx, 1, 1);
    if (st == KILN_OK) kiln_vk_act_produced(dev, dst, de, pc.qmode);
    return st;
}

/* matmul_swiglu's quantized result: every workgroup writes its block
 * while others still read x's quantized row from the scratch, so the
 * result goes after it, at word *q_off (the act cache remembers where).
 * The format as act_produce picks it, of those the kernel writes (F16,
 * BF16, Q8_0, Q8_1: a block is 32 rows of one workgroup). Reserves the
 * scratch for both before anything binds it. */
static kiln_status swiglu_act_plan(kiln_bk_device *dev, const kiln_bk_tensor *dst, uint32_t x_mode, int64_t K,
                                   uint32_t *qmode, uint32_t *q_off, uint64_t *q_bytes) {
    const int64_t F = dst->ne[0];
    *qmode = 0;
    *q_bytes = 0;
    const uint64_t x_words = x_mode ? kiln_vk_act_row_words(x_mode, (uint64_t)K) : 0;
    *q_off = (uint32_t)((x_words + 63) / 64 * 64); /* 256-byte aligned */
    for (uint32_t i = 0; i < KILN_VK_ACT_WANTS && !(dev->no_fused_mask & 2u); i++) {
        const uint32_t mode = dev->act_want[i].mode;
        if (!kiln_vk_act_want_is(&dev->act_want[i], dst) || mode < 1 || mode > 4 || (mode >= 3 && F % 32)) continue;
        *qmode = mode;
        *q_bytes = kiln_vk_act_row_words(mode, (uint64_t)F) * 4;
        break;
    }
    const kiln_bk_buffer *old = dev->act;
    kiln_status st = kiln_vk_act_scratch(dev, (uint64_t)*q_off * 4 + *q_bytes + (x_words ? 0 : 4));
    if (st == KILN_OK && dev->act != old) dev->act_cache.valid = false;
    return st;
}

/* The products of a swiglu kernel (KILN_SWIGLU): gate as product 0, up
 * as product 1, both in the weight binding from wlo (at w_rem). */
static void swiglu_products(mmvm_push *m, int64_t K, const kiln_bk_tensor *w_gate, const kiln_bk_tensor *w_up,
                            uint64_t wlo, uint32_t w_rem) {
    m->K = (uint32_t)K;
    m->M = 1;
    m->n_prod = 2;
    m->unroll = 1;
    m->w_off[0] = (uint32_t)(w_rem + (w_gate->offset - wlo));
    m->w_off[1] = (uint32_t)(w_rem + (w_up->offset - wlo));
    m->w_stride[0] = (uint32_t)w_gate->row_stride;
    m->w_stride[1] = (uint32_t)w_up->row_stride;
    m->N[0] = m->N[1] = (uint32_t)w_gate->ne[1];
}

/* The rest of a swiglu kernel's dispatch, given its other bindings and
 * push constants (whose quantized result is qmode, at word q_off of the
 * scratch, q_bytes long; swiglu_act_plan): binding 3 (the scratch, or dst
 * again when nothing is quantized), a workgroup per 32 rows, and the act
 * cache told what the scratch holds afterwards. */
static kiln_status swiglu_dispatch(kiln_bk_device *dev, int pipe, kiln_vk_bind *b, uint32_t n_binds, const void *push,
                                   uint32_t push_size, uint32_t qmode, uint32_t q_off, uint64_t q_bytes,
                                   const kiln_bk_tensor *dst, uint64_t de, const char *op) {
    kiln_status st;
    if ((st = qmode ? kiln_vk_bind_range(dev, dev->act, 0, (uint64_t)q_off * 4 + q_bytes, &b[3], NULL, op)
                    : kiln_vk_bind_range(dev, dst->buf, dst->offset, de, &b[3], NULL, op)))
        return st;
    const kiln_vk_shared *sh = dev->sh;
    uint64_t gx = kiln_vk_div_up((uint64_t)dst->ne[0], 32);
    if (sh->is_cpu && gx > 32) gx = 32;
    if (gx > sh->max_groups[0]) gx = sh->max_groups[0];
    if (qmode) dev->act_cache.valid = false; /* the scratch is written */
    st = kiln_vk_dispatch(dev, pipe, b, n_binds, push, push_size, (uint32_t)gx, 1, 1);
    if (st == KILN_OK && qmode) {
        kiln_vk_act_produced(dev, dst, de, qmode);
        dev->act_cache.q_off = q_off;
    }
    return st;
}

/* matmul_multi(gate, up), then swiglu into dst: one dispatch (mmvm1s_TYPE,
 * mmv.glsl KILN_SWIGLU) for one decode row of split Q4_0 or F16 weights in
 * one buffer, 32-row blocks; otherwise the two operations, with `up` for
 * up's product. The same bits either way. H100, Mistral-7B tg128: Q4_0
 * 288-295 -> 305 t/s, F16 about +1%. KILN_VK_NO_FUSED bit 128: never
 * fused. */
kiln_status kiln_vk_matmul_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *w_gate, const kiln_bk_tensor *w_up,
                                  const kiln_bk_tensor *x, kiln_bk_tensor *up, kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t gwe, uwe, xe, ue, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_swiglu: device is NULL");
    if ((st = kiln_vk_tensor_check(w_gate, -1, "matmul_swiglu", "w_gate", &gwe)) ||
        (st = kiln_vk_tensor_check(w_up, -1, "matmul_swiglu", "w_up", &uwe)) ||
        (st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "matmul_swiglu", "x", &xe)) ||
        (st = kiln_vk_tensor_check(up, KILN_VK_T_F32, "matmul_swiglu", "up", &ue)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "matmul_swiglu", "dst", &de)))
        return st;
    const int64_t K = x->ne[0], M = x->ne[1], F = w_gate->ne[1];
    const int slot = kiln_vk_weight_slot(w_gate);
    const kiln_vk_shared *sh = dev->sh;
    const int pipe = slot == KILN_VK_SLOT_Q4_0S ? (sh->idot ? KILN_VK_P_MMVM1S_Q4_0S_IDOT : KILN_VK_P_MMVM1S_Q4_0S)
                     : w_gate->type == KILN_VK_T_F16 ? KILN_VK_P_MMVM1S_F16 : -1;
    const uint64_t wlo = w_gate->offset < w_up->offset ? w_gate->offset : w_up->offset;
    const uint64_t ghi = w_gate->offset + gwe, uhi = w_up->offset + uwe, whi = ghi > uhi ? ghi : uhi;
    bool fuse = !(dev->no_fused_mask & 128u) && pipe >= 0 && M == 1 && F > 0 && K > 0 && w_gate->ne[0] == K &&
                w_up->ne[0] == K && w_up->ne[1] == F && dst->ne[0] == F && dst->ne[1] == M && up->ne[0] == F &&
                up->ne[1] == M && kiln_vk_weight_slot(w_up) == slot && w_up->buf == w_gate->buf &&
                !kiln_vk_kq(w_gate) && !kiln_vk_kq(w_up) &&
                whi - wlo <= UINT32_MAX - 64 && sh->subgroup_add && !dev->no_mmv && dev->mmv_unroll &&
                !bytes_overlap(dst, de, x, xe);
    kiln_vk_bind b[4];
    uint32_t w_rem = 0;
    if (fuse && (st = kiln_vk_bind_range(dev, w_gate->buf, wlo, whi - wlo, &b[0], &w_rem, "matmul_swiglu"))) fuse = false;
    uint32_t wvec = 3;
    for (int i = 0; i < 2 && fuse && w_gate->type == KILN_VK_T_F16; i++) {
        const kiln_bk_tensor *w = i ? w_up : w_gate;
        kiln_vk_bind own;
        uint32_t rem;
        /* matmul's 16-byte loads for both rows, as matmul_multi takes them */
        fuse = kiln_vk_bind_range(dev, w->buf, w->offset, i ? uwe : gwe, &own, &rem, "matmul_swiglu") == KILN_OK &&
               rem % 16 == 0 && w->row_stride % 16 == 0 && own.offset % 16 == 0 && b[0].offset % 16 == 0 &&
               (w_rem + (w->offset - wlo)) % 16 == 0 && K % 8 == 0;
    }
    if (!fuse) {
        const kiln_bk_tensor *w2[2] = {w_gate, w_up};
        kiln_bk_tensor *d2[2] = {dst, up};
        if ((st = kiln_vk_matmul_multi(dev, 2, w2, x, d2))) return st;
        return kiln_vk_swiglu(dev, dst, up, dst);
    }
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    const uint32_t mode = kiln_vk_act_mode(w_gate->type);
    struct {
        mmvm_push m;
        uint32_t qmode, q_off;
    } pc;
    memset(&pc, 0, sizeof pc);
    uint32_t dummy;
    uint64_t q_bytes;
    if ((st = swiglu_act_plan(dev, dst, mode, K, &pc.qmode, &pc.q_off, &q_bytes))) return st;
    if (mode == 0) {
        if ((st = kiln_vk_bind_f32(dev, x, xe, &b[1], &pc.m.a_off, &pc.m.a_stride, "matmul_swiglu"))) return st;
    } else if ((st = kiln_vk_quantize_act(dev, x, xe, mode, &b[1], &pc.m.a_off, &pc.m.a_stride))) {
        return st;
    }
    if ((st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.m.d_off[0], &dummy, "matmul_swiglu"))) return st;
    swiglu_products(&pc.m, K, w_gate, w_up, wlo, w_rem);
    pc.m.vec = wvec;
    /* binding 3, the whole scratch: x's row at 0 */
    return swiglu_dispatch(dev, pipe, b, 4, &pc, sizeof pc, pc.qmode, pc.q_off, q_bytes, dst, de, "matmul_swiglu");
}

/* matmul_multi in one matrix-vector dispatch (mmvm_TYPE): decode batches
 * on a device with the mmv kernels, every weight of one type in one
 * buffer, every result in one buffer. Anything else: matmul n times. */
kiln_status kiln_vk_matmul_multi(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                                 const kiln_bk_tensor *x, kiln_bk_tensor *const *dst) {
    kiln_status st;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_multi: device is NULL");
    if (n < 1 || n > 3 || !w || !dst)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_multi: %u products (1..3) or NULL arrays", n);
    uint64_t we[3], de[3], xe;
    if ((st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "matmul_multi", "x", &xe))) return st;
    const int64_t K = x->ne[0], M = x->ne[1];
    /* Q4_K and Q6_K weights: one dispatch per product (the same bits
     * either way); on the H100 that did better (Mistral-7B Q4_K_M tg128
     * 238.6-239.7 -> 241.9-244.1 t/s, three rounds in one call,
     * bench/NOTES.md session 17). KILN_VK_MULTI_KQUANT=1: one dispatch. */
    const bool kquant = !dev->multi_kquant && w[0] && (w[0]->type == KILN_VK_T_Q4_K || w[0]->type == KILN_VK_T_Q6_K);
    bool fuse = n > 1 && M >= 1 && M <= KILN_VK_MMV_MAX && K > 0 && dev->sh->subgroup_add && !dev->no_mmv &&
                !(dev->no_fused_mask & 4u) && !kquant;
    for (uint32_t i = 0; i < n; i++) {
        if ((st = kiln_vk_tensor_check(w[i], -1, "matmul_multi", "w", &we[i])) ||
            (st = kiln_vk_tensor_check(dst[i], KILN_VK_T_F32, "matmul_multi", "dst", &de[i])))
            return st;
        if (w[i]->ne[0] != K || dst[i]->ne[0] != w[i]->ne[1] || dst[i]->ne[1] != M)
            return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_multi: w %lldx%lld, x %lldx%lld, dst %lldx%lld",
                              (long long)w[i]->ne[0], (long long)w[i]->ne[1], (long long)K, (long long)M,
                              (long long)dst[i]->ne[0], (long long)dst[i]->ne[1]);
        /* one kernel reads them all: one type in one layout */
        fuse = fuse && w[i]->ne[1] > 0 && kiln_vk_weight_slot(w[i]) == kiln_vk_weight_slot(w[0]) && w[i]->buf == w[0]->buf &&
               dst[i]->buf == dst[0]->buf && !kiln_vk_kq(w[i]); /* KQ order: matmul's kernels only */
    }
    /* the spans the two shared bindings cover */
    uint64_t wlo, whi, dlo, dhi;
    fuse = fuse && multi_spans(n, w, we, dst, de, &wlo, &whi, &dlo, &dhi);
    /* The F16 kernel's 16-byte loads where matmul would take them for that
     * product alone (the weight's own binding aligned), so that each
     * product gets matmul's bits; they need the shared binding aligned. */
    kiln_vk_bind b[3];
    uint32_t w_rem = 0, d_rem = 0, wvec = 0;
    if (fuse && ((st = kiln_vk_bind_range(dev, w[0]->buf, wlo, whi - wlo, &b[0], &w_rem, "matmul_multi")) ||
                 (st = kiln_vk_bind_range(dev, dst[0]->buf, dlo, dhi - dlo, &b[2], &d_rem, "matmul_multi"))))
        fuse = false;
    for (uint32_t i = 0; i < n && fuse && w[0]->type == KILN_VK_T_F16; i++) {
        kiln_vk_bind own;
        uint32_t rem;
        if (kiln_vk_bind_range(dev, w[i]->buf, w[i]->offset, we[i], &own, &rem, "matmul_multi")) {
            fuse = false;
            break;
        }
        if (rem % 16 == 0 && w[i]->row_stride % 16 == 0 && own.offset % 16 == 0) {
            wvec |= 1u << i;
            if (b[0].offset % 16 || (w_rem + (w[i]->offset - wlo)) % 16) fuse = false;
        }
    }
    if (!fuse) {
        for (uint32_t i = 0; i < n; i++)
            if ((st = kiln_vk_matmul(dev, w[i], x, dst[i]))) return st;
        return KILN_OK;
    }
    const uint32_t mode = kiln_vk_act_mode(w[0]->type);
    for (uint32_t i = 0; i < n; i++) kiln_vk_act_written(dev, dst[i]->buf, dst[i]->offset, de[i]);
    mmvm_push pc;
    memset(&pc, 0, sizeof pc);
    if (mode == 0) {
        if ((st = kiln_vk_bind_f32(dev, x, xe, &b[1], &pc.a_off, &pc.a_stride, "matmul_multi"))) return st;
    } else if ((st = kiln_vk_quantize_act(dev, x, xe, mode, &b[1], &pc.a_off, &pc.a_stride))) {
        return st;
    }
    pc.K = (uint32_t)K;
    pc.M = (uint32_t)M;
    pc.m_base = 0;
    pc.unroll = dev->mmv_unroll;
    const bool avec = K % 8 == 0 && pc.a_off % 4 == 0 && pc.a_stride % 4 == 0 && b[1].offset % 16 == 0;
    pc.vec = avec ? wvec : 0;
    const int wslot = kiln_vk_weight_slot(w[0]);
    const uint64_t groups = multi_products(&pc, dev->sh, wslot, n, w, dst, wlo, w_rem, dlo, d_rem);
    /* as matmul's decode kernel sizes its grid, for all products' rows */
    const int pipe = kiln_vk_mmv_pipeline(dev, M, wslot, KILN_VK_P_MMVM_FIRST, KILN_VK_P_MMVM1_FIRST,
                                          KILN_VK_P_MMVM1_IDOT_FIRST, KILN_VK_P_MMVM_IDOT_FIRST);
    return kiln_vk_dispatch(dev, pipe, b, 3, &pc, sizeof pc, decode_grid(dev->sh, groups, KILN_VK_MMV_WG, false),
                            kiln_vk_div_up((uint64_t)M, KILN_VK_MMV_MT), 1);
}

/* ------------------------------------------------------------------------ */
/* the norm in the products after it: matmul_add, rms_norm_matmul_multi,    */
/* rms_norm_matmul_swiglu (mmv.glsl KILN_RESADD, KILN_PRENORM)              */
/* ------------------------------------------------------------------------ */

/* Where the three take their one-dispatch form: a decode row of split Q4_0
 * weights on a device with the one-row decode kernels. KILN_VK_NO_FUSED
 * bit 1024: never (the core then keeps the norm in the product before). */
static bool prenorm_weight(const kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t n_rows) {
    return dev && w && n_rows == 1 && !(dev->no_fused_mask & 1024u) && kiln_vk_weight_slot(w) == KILN_VK_SLOT_Q4_0S &&
           dev->sh->subgroup_add && !dev->no_mmv && dev->mmv_unroll;
}

int32_t kiln_vk_prenorm_fused(kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t n_rows) {
    return prenorm_weight(dev, w, n_rows) ? 1 : 0;
}

/* sum = a + matmul(w, x): one dispatch (mmv1r_TYPE) for a decode row,
 * else matmul into tmp, then add. The same bits either way. */
kiln_status kiln_vk_matmul_add(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                               const kiln_bk_tensor *a, kiln_bk_tensor *tmp, kiln_bk_tensor *sum) {
    kiln_status st;
    uint64_t we, xe, ae, te, se;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_add: device is NULL");
    if ((st = kiln_vk_tensor_check(w, -1, "matmul_add", "w", &we)) ||
        (st = kiln_vk_tensor_check(x, KILN_VK_T_F32, "matmul_add", "x", &xe)) ||
        (st = kiln_vk_tensor_check(a, KILN_VK_T_F32, "matmul_add", "a", &ae)) ||
        (st = kiln_vk_tensor_check(tmp, KILN_VK_T_F32, "matmul_add", "tmp", &te)) ||
        (st = kiln_vk_tensor_check(sum, KILN_VK_T_F32, "matmul_add", "sum", &se)))
        return st;
    const int64_t K = w->ne[0], N = w->ne[1], M = x->ne[1];
    if (x->ne[0] != K || a->ne[0] != N || a->ne[1] != M || sum->ne[0] != N || sum->ne[1] != M || tmp->ne[0] != N ||
        tmp->ne[1] != M)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan matmul_add: w %lldx%lld, x %lldx%lld, a %lldx%lld, "
                          "tmp %lldx%lld, sum %lldx%lld", (long long)K, (long long)N, (long long)x->ne[0],
                          (long long)M, (long long)a->ne[0], (long long)a->ne[1], (long long)tmp->ne[0],
                          (long long)tmp->ne[1], (long long)sum->ne[0], (long long)sum->ne[1]);
    const bool fuse = prenorm_weight(dev, w, M) && N > 0 && K > 0 && K % 32 == 0 && !bytes_overlap(sum, se, x, xe) &&
                      (!bytes_overlap(sum, se, a, ae) || (sum->offset == a->offset && sum->row_stride == a->row_stride));
    if (!fuse) {
        if ((st = kiln_vk_matmul(dev, w, x, tmp))) return st;
        return kiln_vk_add(dev, a, tmp, sum);
    }
    const kiln_vk_shared *sh = dev->sh;
    kiln_vk_act_written(dev, sum->buf, sum->offset, se);
    struct {
        uint32_t w_off, w_stride, a_off, a_stride, d_off, d_stride, K, N, M, unroll, vec, m_base;
        uint32_t r_off;
    } pc;
    memset(&pc, 0, sizeof pc);
    kiln_vk_bind b[4];
    uint32_t w_rem, dummy;
    if ((st = kiln_vk_quantize_act(dev, x, xe, kiln_vk_act_mode(w->type), &b[1], &pc.a_off, &pc.a_stride)) ||
        (st = kiln_vk_bind_range(dev, w->buf, w->offset, we, &b[0], &w_rem, "matmul_add")) ||
        (st = kiln_vk_bind_f32(dev, sum, se, &b[2], &pc.d_off, &pc.d_stride, "matmul_add")) ||
        (st = kiln_vk_bind_f32(dev, a, ae, &b[3], &pc.r_off, &dummy, "matmul_add")))
        return st;
    pc.w_off = w_rem;
    pc.w_stride = (uint32_t)w->row_stride;
    pc.K = (uint32_t)K;
    pc.N = (uint32_t)N;
    pc.M = 1;
    pc.unroll = 1u | (kiln_vk_kq(w) ? 2u : 0u); /* mmv.glsl: bit 1 the KQ order */
    const uint32_t gx = decode_grid(sh, kiln_vk_div_up((uint64_t)N, kiln_vk_mmv_rows(sh, KILN_VK_SLOT_Q4_0S)),
                                    KILN_VK_MMV_WG, kiln_vk_kq(w));
    return kiln_vk_dispatch(dev, sh->idot ? KILN_VK_P_MMV1R_Q4_0S_IDOT : KILN_VK_P_MMV1R_Q4_0S, b, 4, &pc, sizeof pc,
                            gx, 1, 1);
}

/* The residual row x (K <= 4096 elements, a multiple of 32) and the norm
 * weights bound for a KILN_PRENORM kernel: b[4], b[5] and their words. */
static kiln_status prenorm_bind(kiln_bk_device *dev, const kiln_bk_tensor *x, uint64_t xe, const kiln_bk_tensor *nw,
                                uint64_t nwe, kiln_vk_bind *b, uint32_t *x_off, uint32_t *nw_off, const char *op) {
    kiln_status st;
    uint32_t dummy;
    if ((st = kiln_vk_bind_f32(dev, x, xe, &b[4], x_off, &dummy, op)) ||
        (st = kiln_vk_bind_f32(dev, nw, nwe, &b[5], nw_off, &dummy, op)))
        return st;
    b[1] = b[4]; /* the kernels read their activations from shared memory: any binding */
    return KILN_OK;
}

/* The checks of the norm's operands, and whether the products may take
 * the fused form for them (one row of at most 4096, blocks of 32). */
static kiln_status prenorm_check(const kiln_bk_tensor *x, const kiln_bk_tensor *nw, float eps, kiln_bk_tensor *h,
                                 uint64_t *xe, uint64_t *nwe, uint64_t *he, const char *op) {
    kiln_status st;
    if ((st = kiln_vk_tensor_check(x, KILN_VK_T_F32, op, "x", xe)) ||
        (st = kiln_vk_tensor_check(nw, KILN_VK_T_F32, op, "nw", nwe)) ||
        (st = kiln_vk_tensor_check(h, KILN_VK_T_F32, op, "h", he)))
        return st;
    if (nw->ne[0] != x->ne[0] || nw->ne[1] < 1 || h->ne[0] != x->ne[0] || h->ne[1] != x->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: x %lldx%lld, nw %lldx%lld, h %lldx%lld", op,
                          (long long)x->ne[0], (long long)x->ne[1], (long long)nw->ne[0], (long long)nw->ne[1],
                          (long long)h->ne[0], (long long)h->ne[1]);
    if (!(eps >= 0.0f)) return kiln_error(KILN_E_INVALID_ARG, "vulkan %s: eps %g", op, (double)eps);
    return KILN_OK;
}

static bool prenorm_row(const kiln_bk_tensor *x) {
    return x->ne[1] == 1 && x->ne[0] > 0 && x->ne[0] <= 4096 && x->ne[0] % 32 == 0;
}

/* h = rms_norm(x) * nw, then matmul_multi(n, w, h, dst): one dispatch
 * (mmvm1p_TYPE) for a decode row of split Q4_0 weights in one buffer, every
 * result in one buffer; otherwise the two operations. The same bits. */
kiln_status kiln_vk_rms_norm_matmul_multi(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                          float eps, kiln_bk_tensor *h, uint32_t n, const kiln_bk_tensor *const *w,
                                          kiln_bk_tensor *const *dst) {
    kiln_status st;
    uint64_t xe, nwe, he, we[3], de[3];
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm_matmul_multi: device is NULL");
    if (n < 1 || n > 3 || !w || !dst)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm_matmul_multi: %u products (1..3) or NULL arrays", n);
    if ((st = prenorm_check(x, nw, eps, h, &xe, &nwe, &he, "rms_norm_matmul_multi"))) return st;
    const int64_t K = x->ne[0];
    bool fuse = prenorm_row(x);
    for (uint32_t i = 0; i < n; i++) {
        if ((st = kiln_vk_tensor_check(w[i], -1, "rms_norm_matmul_multi", "w", &we[i])) ||
            (st = kiln_vk_tensor_check(dst[i], KILN_VK_T_F32, "rms_norm_matmul_multi", "dst", &de[i])))
            return st;
        if (w[i]->ne[0] != K || dst[i]->ne[0] != w[i]->ne[1] || dst[i]->ne[1] != x->ne[1])
            return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm_matmul_multi: w %lldx%lld, x %lldx%lld, "
                              "dst %lldx%lld", (long long)w[i]->ne[0], (long long)w[i]->ne[1], (long long)K,
                              (long long)x->ne[1], (long long)dst[i]->ne[0], (long long)dst[i]->ne[1]);
        fuse = fuse && prenorm_weight(dev, w[i], x->ne[1]) && !kiln_vk_kq(w[i]) && w[i]->ne[1] > 0 && w[i]->buf == w[0]->buf &&
               dst[i]->buf == dst[0]->buf && !bytes_overlap(dst[i], de[i], x, xe) &&
               !bytes_overlap(dst[i], de[i], nw, nwe);
    }
    uint64_t wlo, whi, dlo, dhi;
    fuse = fuse && multi_spans(n, w, we, dst, de, &wlo, &whi, &dlo, &dhi);
    kiln_vk_bind b[6];
    uint32_t w_rem = 0, d_rem = 0;
    if (fuse && (kiln_vk_bind_range(dev, w[0]->buf, wlo, whi - wlo, &b[0], &w_rem, "rms_norm_matmul_multi") ||
                 kiln_vk_bind_range(dev, dst[0]->buf, dlo, dhi - dlo, &b[2], &d_rem, "rms_norm_matmul_multi")))
        fuse = false;
    if (!fuse) {
        if ((st = kiln_vk_rms_norm(dev, x, nw, eps, h))) return st;
        return kiln_vk_matmul_multi(dev, n, w, h, dst);
    }
    for (uint32_t i = 0; i < n; i++) kiln_vk_act_written(dev, dst[i]->buf, dst[i]->offset, de[i]);
    struct {
        mmvm_push m;
        uint32_t x_off, nw_off;
        float eps;
    } pc;
    memset(&pc, 0, sizeof pc);
    if ((st = prenorm_bind(dev, x, xe, nw, nwe, b, &pc.x_off, &pc.nw_off, "rms_norm_matmul_multi"))) return st;
    b[3] = b[4]; /* not declared by the kernel */
    const kiln_vk_shared *sh = dev->sh;
    pc.m.K = (uint32_t)K;
    pc.m.M = 1;
    pc.m.unroll = 1;
    pc.eps = eps;
    const uint64_t groups = multi_products(&pc.m, sh, KILN_VK_SLOT_Q4_0S, n, w, dst, wlo, w_rem, dlo, d_rem);
    /* the workgroup is sh->prenorm_wg wide (specialization constant 14) */
    return kiln_vk_dispatch(dev, sh->idot ? KILN_VK_P_MMVM1P_Q4_0S_IDOT : KILN_VK_P_MMVM1P_Q4_0S, b, 6, &pc,
                            sizeof pc, decode_grid(sh, groups, sh->prenorm_wg, false), 1, 1);
}

/* h = rms_norm(x) * nw, then matmul_swiglu(w_gate, w_up, h, up, dst): one
 * dispatch (mmvm1sp_TYPE) where matmul_swiglu would take one and the row
 * fits; otherwise the two operations. The same bits. */
kiln_status kiln_vk_rms_norm_matmul_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                           float eps, kiln_bk_tensor *h, const kiln_bk_tensor *w_gate,
                                           const kiln_bk_tensor *w_up, kiln_bk_tensor *up, kiln_bk_tensor *dst) {
    kiln_status st;
    uint64_t xe, nwe, he, gwe, uwe, ue, de;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm_matmul_swiglu: device is NULL");
    if ((st = prenorm_check(x, nw, eps, h, &xe, &nwe, &he, "rms_norm_matmul_swiglu")) ||
        (st = kiln_vk_tensor_check(w_gate, -1, "rms_norm_matmul_swiglu", "w_gate", &gwe)) ||
        (st = kiln_vk_tensor_check(w_up, -1, "rms_norm_matmul_swiglu", "w_up", &uwe)) ||
        (st = kiln_vk_tensor_check(up, KILN_VK_T_F32, "rms_norm_matmul_swiglu", "up", &ue)) ||
        (st = kiln_vk_tensor_check(dst, KILN_VK_T_F32, "rms_norm_matmul_swiglu", "dst", &de)))
        return st;
    const int64_t K = x->ne[0], F = w_gate->ne[1];
    if (w_gate->ne[0] != K || w_up->ne[0] != K || w_up->ne[1] != F || dst->ne[0] != F || dst->ne[1] != x->ne[1] ||
        up->ne[0] != F || up->ne[1] != x->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "vulkan rms_norm_matmul_swiglu: w_gate %lldx%lld, w_up %lldx%lld, "
                          "x %lldx%lld, dst %lldx%lld", (long long)w_gate->ne[0], (long long)F,
                          (long long)w_up->ne[0], (long long)w_up->ne[1], (long long)K, (long long)x->ne[1],
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    const uint64_t wlo = w_gate->offset < w_up->offset ? w_gate->offset : w_up->offset;
    const uint64_t ghi = w_gate->offset + gwe, uhi = w_up->offset + uwe, whi = ghi > uhi ? ghi : uhi;
    bool fuse = prenorm_row(x) && prenorm_weight(dev, w_gate, 1) && prenorm_weight(dev, w_up, 1) && !kiln_vk_kq(w_gate) &&
                !kiln_vk_kq(w_up) && F > 0 &&
                w_up->buf == w_gate->buf && whi - wlo <= UINT32_MAX - 64 && !(dev->no_fused_mask & 128u) &&
                !bytes_overlap(dst, de, x, xe) && !bytes_overlap(dst, de, nw, nwe);
    kiln_vk_bind b[6];
    uint32_t w_rem = 0;
    if (fuse && kiln_vk_bind_range(dev, w_gate->buf, wlo, whi - wlo, &b[0], &w_rem, "rms_norm_matmul_swiglu"))
        fuse = false;
    if (!fuse) {
        if ((st = kiln_vk_rms_norm(dev, x, nw, eps, h))) return st;
        return kiln_vk_matmul_swiglu(dev, w_gate, w_up, h, up, dst);
    }
    kiln_vk_act_written(dev, dst->buf, dst->offset, de);
    struct {
        mmvm_push m;
        uint32_t qmode, q_off, x_off, nw_off;
        float eps;
    } pc;
    memset(&pc, 0, sizeof pc);
    uint32_t dummy;
    uint64_t q_bytes;
    /* nothing of x in the scratch: the quantized result from word 0 */
    if ((st = swiglu_act_plan(dev, dst, 0, K, &pc.qmode, &pc.q_off, &q_bytes)) ||
        (st = prenorm_bind(dev, x, xe, nw, nwe, b, &pc.x_off, &pc.nw_off, "rms_norm_matmul_swiglu")) ||
        (st = kiln_vk_bind_f32(dev, dst, de, &b[2], &pc.m.d_off[0], &dummy, "rms_norm_matmul_swiglu")))
        return st;
    swiglu_products(&pc.m, K, w_gate, w_up, wlo, w_rem);
    pc.eps = eps;
    const int pipe = dev->sh->idot ? KILN_VK_P_MMVM1SP_Q4_0S_IDOT : KILN_VK_P_MMVM1SP_Q4_0S;
    return swiglu_dispatch(dev, pipe, b, 6, &pc, sizeof pc, pc.qmode, pc.q_off, q_bytes, dst, de,
                           "rms_norm_matmul_swiglu");
}
