/*
 * cpu_matmul.c - the matmul driver: dst[m][n] = sum_k w[n][k] * x[m][k]
 * for weights W[N][K] of any type cpu_quant.h has dot kernels for.
 *
 * 1. Each activation row of x (F32) is converted once into the format the
 *    weight type is dotted against (e.g. Q8_0 blocks for Q4_0 weights),
 *    into the handle's scratch, rows split over the threads.
 * 2. The N x M output is cut into blocks of BN weight rows x BM activation
 *    rows (multiples of the kernel's tile_nr x tile_nc); threads take
 *    blocks from the pool's counter and hand each whole block to the
 *    kernel, which walks it in register tiles with the weight rows in the
 *    outer loop, so a tile of weight rows stays in L1 while the block's
 *    activation rows stream from L2.
 *
 * Decode (M == 1) is memory-bandwidth bound: the blocks are then runs of
 * weight rows sized so that each thread streams its own rows, with a few
 * blocks per thread for balance.
 *
 * dst must not overlap w or x.
 */
#include <string.h>

#include "cpu_internal.h"
#include "quant.h"

/* Activation rows per block when M is large: 64 rows of a few KiB each
 * stay in L2 while every weight tile of the block passes over them. */
#define KILN_CPU_MM_BM 64
/* Weight rows per block (upper bound; fewer when blocks would be few). */
#define KILN_CPU_MM_BN 128
/* Blocks per thread to aim for, for load balance. */
#define KILN_CPU_MM_BLOCKS_PER_THREAD 4

typedef struct {
    const kiln_cpu_dot_traits *tr;
    const kiln_bk_tensor *x;
    uint8_t *act;
    size_t act_stride;
} quant_args;

static void quant_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    quant_args *a = ctx;
    for (int64_t r = r0; r < r1; r++)
        a->tr->quantize_act((const float *)kiln_cpu_row(a->x, r), a->act + (size_t)r * a->act_stride,
                            a->x->ne[0]);
}

typedef struct {
    const kiln_cpu_dot_traits *tr;
    const uint8_t *w;
    size_t w_stride;
    const uint8_t *act;
    size_t act_stride;
    float *out;
    size_t ldo;
    int64_t k, n, m;
    int64_t bn, bm;         /* block shape */
    int64_t n_bn, n_items;  /* blocks along N, blocks in all */
} mm_args;

static void mm_task(void *ctx, int slot, int64_t first, int64_t last) {
    mm_args *a = ctx;
    for (int64_t item = first; item < last; item++) {
        /* consecutive items share an activation block, so threads working
         * at the same time read the same activations */
        int64_t n0 = (item % a->n_bn) * a->bn, m0 = (item / a->n_bn) * a->bm;
        int64_t n1 = n0 + a->bn < a->n ? n0 + a->bn : a->n;
        int64_t m1 = m0 + a->bm < a->m ? m0 + a->bm : a->m;
        /* one call per block: the kernel walks it in register tiles, weight
         * rows outermost, from the block's corner (a multiple of the tile
         * shape, so the tiling never depends on the blocking) */
        a->tr->dot_tile(a->k, a->out + (size_t)m0 * a->ldo + (size_t)n0, a->ldo, a->w + (size_t)n0 * a->w_stride,
                        a->w_stride, (int)(n1 - n0), a->act + (size_t)m0 * a->act_stride, a->act_stride,
                        (int)(m1 - m0));
    }
}

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

kiln_status kiln_cpu_matmul_traits(kiln_bk_device *dev, const kiln_cpu_dot_traits *tr,
                                   const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                   kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev || !tr) return kiln_error(KILN_E_INVALID_ARG, "cpu matmul: NULL device or kernels");
    if ((st = kiln_cpu_tensor_check(w, -1, "matmul", "w")) ||
        (st = kiln_cpu_tensor_check(x, KILN_TYPE_F32, "matmul", "x")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "matmul", "dst")))
        return st;
    if (w->type != tr->weight_type)
        return kiln_error(KILN_E_INVALID_ARG, "cpu matmul: %s weights given to %s kernels",
                          kiln_type_name(w->type), kiln_type_name(tr->weight_type));
    const int64_t k = w->ne[0], n = w->ne[1], m = x->ne[1];
    if (x->ne[0] != k || dst->ne[0] != n || dst->ne[1] != m)
        return kiln_error(KILN_E_INVALID_ARG, "cpu matmul: w %lldx%lld, x %lldx%lld, dst %lldx%lld",
                          (long long)k, (long long)n, (long long)x->ne[0], (long long)m,
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    if (tr->k_multiple > 1 && k % tr->k_multiple != 0)
        return kiln_error(KILN_E_INVALID_ARG, "cpu matmul: K = %lld is not a multiple of %u for %s",
                          (long long)k, tr->k_multiple, kiln_type_name(w->type));
    if (tr->tile_nr < 1 || tr->tile_nc < 1 || !tr->dot_tile)
        return kiln_error(KILN_E_INTERNAL, "cpu matmul: bad kernel table for %s", kiln_type_name(w->type));
    if (n == 0 || m == 0) return KILN_OK;
    if (k == 0) {
        for (int64_t r = 0; r < m; r++) memset(kiln_cpu_row(dst, r), 0, (size_t)n * sizeof(float));
        return KILN_OK;
    }

    const int nth = dev->n_threads;
    const uint8_t *act;
    size_t act_stride;
    if (tr->quantize_act) {
        uint64_t row = tr->act_row_size ? tr->act_row_size(k) : 0;
        if (row == 0 || row > SIZE_MAX / 2)
            return kiln_error(KILN_E_INTERNAL, "cpu matmul: no activation row size for %s", kiln_type_name(w->type));
        act_stride = kiln_cpu_align_up((size_t)row);
        size_t bytes;
        if (!kiln_mul_size(act_stride, (size_t)m, &bytes))
            return kiln_error(KILN_E_OOM_HOST, "cpu matmul: %lld activation rows are too many", (long long)m);
        if ((st = kiln_cpu_scratch_reserve(dev, bytes))) return st;
        quant_args qa = {tr, x, dev->scratch, act_stride};
        int use = m * k < 32768 ? 1 : (m < nth ? (int)m : nth);
        kiln_cpu_threads_for(dev->threads, use, m, (m + 4 * use - 1) / (4 * use), quant_task, &qa);
        act = dev->scratch;
    } else {
        act = kiln_cpu_row(x, 0);
        act_stride = m > 1 ? x->row_stride : 0;
    }

    mm_args a;
    memset(&a, 0, sizeof a);
    a.tr = tr;
    a.w = kiln_cpu_row(w, 0);
    a.w_stride = n > 1 ? w->row_stride : 0;
    a.act = act;
    a.act_stride = act_stride;
    a.out = (float *)kiln_cpu_row(dst, 0);
    a.ldo = m > 1 ? dst->row_stride / sizeof(float) : (size_t)n;
    a.k = k;
    a.n = n;
    a.m = m;
    const int64_t nr = tr->tile_nr, nc = tr->tile_nc;
    a.bm = m <= KILN_CPU_MM_BM ? round_up(m, nc) : round_up(KILN_CPU_MM_BM, nc);
    const int64_t n_bm = (m + a.bm - 1) / a.bm;
    /* enough blocks for balance, but no smaller than one register tile */
    const int64_t want = (int64_t)nth * KILN_CPU_MM_BLOCKS_PER_THREAD;
    int64_t bn = n_bm >= want ? KILN_CPU_MM_BN : (n * n_bm + want - 1) / want;
    if (bn > KILN_CPU_MM_BN) bn = KILN_CPU_MM_BN;
    a.bn = round_up(bn < 1 ? 1 : bn, nr);
    a.n_bn = (n + a.bn - 1) / a.bn;
    a.n_items = a.n_bn * n_bm;

    /* tiny products (a 64x64 weight times one row) are not worth a dispatch */
    int64_t work = n * m * k;
    int use = work < 65536 ? 1 : (a.n_items < nth ? (int)a.n_items : nth);
    kiln_cpu_threads_for(dev->threads, use, a.n_items, 1, mm_task, &a);
    return KILN_OK;
}

kiln_status kiln_cpu_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w,
                            const kiln_bk_tensor *x, kiln_bk_tensor *dst) {
    if (!dev || !w) return kiln_error(KILN_E_INVALID_ARG, "cpu matmul: NULL device or weights");
    /* a handle lowered to scalar (tests) uses the scalar kernels too */
    const kiln_cpu_dot_traits *tr =
        dev->isa == KILN_CPU_ISA_SCALAR ? kiln_cpu_dot_get_scalar(w->type) : kiln_cpu_dot_get(w->type);
    if (!tr) return kiln_error(KILN_E_UNSUPPORTED, "cpu matmul: no kernels for %s weights", kiln_type_name(w->type));
    return kiln_cpu_matmul_traits(dev, tr, w, x, dst);
}
