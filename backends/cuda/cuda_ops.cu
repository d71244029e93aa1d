/*
 * cuda_ops.cu - the row and element-wise operations of the CUDA backend:
 * get_rows, rms_norm, add, rope, swiglu, kv_store. Each checks its
 * arguments like the CPU backend (the reference), hashes them for graph
 * replay (kcu_op) and enqueues one kernel on the handle's stream.
 *
 * Numerics follow the CPU backend: rms_norm sums squares in double, rope
 * builds its angles by repeated multiplication in float, silu is
 * x / (1 + e^-x), KV is stored as F16 rounded to nearest.
 */
#include <string.h>

#include "cuda_quant.cuh"

KCU_PDL_EARLY_DEFINE(kcu_ops_set_pdl_early)

/* ------------------------------------------------------------------------ */
/* get_rows                                                                 */
/* ------------------------------------------------------------------------ */

template <int T>
static __global__ void get_rows_kernel(const uint8_t *table, uint64_t rs, const int32_t *ids, float *dst,
                                       uint64_t ds, int64_t groups) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int64_t r = blockIdx.y;
    const uint8_t *row = table + (uint64_t)ids[r] * rs;
    float *y = dst + r * ds;
    for (int64_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
        float v[32];
        kcu_dq32<T>(row, g, groups, v);
#pragma unroll
        for (int i = 0; i < 32; i++) y[32 * g + i] = v[i];
    }
}

/* Float tables whose rows are not a multiple of 32. */
static __global__ void get_rows_f32_kernel(const uint8_t *table, uint64_t rs, const int32_t *ids, float *dst,
                                           uint64_t ds, int64_t n, int type) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int64_t r = blockIdx.y;
    const uint8_t *row = table + (uint64_t)ids[r] * rs;
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v;
        if (type == KCU_F32) v = ((const float *)row)[i];
        else if (type == KCU_F16) v = __half2float(((const __half *)row)[i]);
        else v = __uint_as_float((uint32_t)((const uint16_t *)row)[i] << 16);
        dst[r * ds + i] = v;
    }
}

kiln_status kcu_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table, const int32_t *ids, kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(table, -1, "get_rows", "table")) ||
        (st = kcu_tensor_check(dst, KCU_F32, "get_rows", "dst")))
        return st;
    if (dst->ne[0] != table->ne[0])
        return kcu_error(KILN_E_INVALID_ARG, "cuda get_rows: dst rows of %lld, table rows of %lld",
                         (long long)dst->ne[0], (long long)table->ne[0]);
    const int64_t n = dst->ne[1];
    if (n == 0) return KILN_OK;
    if (!ids) return kcu_error(KILN_E_INVALID_ARG, "cuda get_rows: ids is NULL");
    if (n > 65535) return kcu_error(KILN_E_INVALID_ARG, "cuda get_rows: %lld rows at once", (long long)n);
    for (int64_t r = 0; r < n; r++)
        if (ids[r] < 0 || ids[r] >= table->ne[1])
            return kcu_error(KILN_E_INVALID_ARG, "cuda get_rows: id %d (row %lld) outside [0, %lld)", ids[r],
                             (long long)r, (long long)table->ne[1]);
    const void *d_ids;
    if ((st = kcu_stage(dev, ids, (size_t)n * sizeof(int32_t), &d_ids))) return st;
    struct { kiln_bk_tensor a, b; const void *ids; } args;
    memset(&args, 0, sizeof args);
    args.a = *table;
    args.b = *dst;
    args.ids = d_ids;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    const uint8_t *tp = kcu_tensor_ptr(table);
    float *dp = (float *)kcu_tensor_ptr(dst);
    const uint64_t ds = dst->row_stride / sizeof(float);
    const int64_t K = table->ne[0];
    const bool float_type = table->type == KCU_F32 || table->type == KCU_F16 || table->type == KCU_BF16;
    if (float_type && K % 32) {
        dim3 grid((unsigned)((K + 255) / 256 < 64 ? (K + 255) / 256 : 64), (unsigned)n);
        kcu_launch(get_rows_f32_kernel, grid, 256, 0, dev->stream, tp, table->row_stride, (const int32_t *)d_ids, dp, ds, K,
                                                            table->type);
        KCU_LAUNCHED("get_rows");
        return KILN_OK;
    }
    const int64_t groups = K / 32;
    dim3 grid((unsigned)((groups + 127) / 128 < 64 ? (groups + 127) / 128 : 64), (unsigned)n);
#define GR(T_)                                                                                                   \
    case T_:                                                                                                     \
        kcu_launch(get_rows_kernel<T_>, grid, 128, 0, dev->stream, tp, table->row_stride, (const int32_t *)d_ids, dp, ds, \
                                                           groups);                                              \
        break;
    switch (kcu_wtype(table)) {
        GR(KCU_F32) GR(KCU_F16) GR(KCU_BF16) GR(KCU_Q4_0) GR(KCU_Q4_0S) GR(KCU_Q8_0S) GR(KCU_Q6_KS) GR(KCU_Q4_1) GR(KCU_Q5_0) GR(KCU_Q5_1) GR(KCU_Q8_0)
        GR(KCU_Q4_K) GR(KCU_Q5_K) GR(KCU_Q6_K)
    default: return kcu_error(KILN_E_UNSUPPORTED, "cuda get_rows: type %d", table->type);
    }
#undef GR
    KCU_LAUNCHED("get_rows");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* rms_norm                                                                 */
/* ------------------------------------------------------------------------ */

/* The sum of every thread's s over the block (blockDim a multiple of 32),
 * returned to all threads. */
static __device__ __forceinline__ double kcu_block_sum(double s) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) part[0] = s;
    }
    __syncthreads();
    return part[0];
}

static __global__ void rms_norm_kernel(const float *x, uint64_t xs, const float *w, float *y, uint64_t ys, int64_t n,
                                       float eps, int8_t *xq, float *xd) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const float *xr = x + blockIdx.x * xs;
    float *yr = y + blockIdx.x * ys;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)xr[i] * (double)xr[i];
    const float mean = (float)(kcu_block_sum(s) / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        yr[i] = v;
        /* n % 32 == 0 and blockDim % 32 == 0: a warp holds one whole block */
        if (xq) kcu_q8_store(v, i, xq + blockIdx.x * n, xd + blockIdx.x * (n / 32));
    }
}

kiln_status kcu_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *w, float eps,
                         kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(x, KCU_F32, "rms_norm", "x")) ||
        (st = kcu_tensor_check(w, KCU_F32, "rms_norm", "w")) || (st = kcu_tensor_check(dst, KCU_F32, "rms_norm", "dst")))
        return st;
    if (w->ne[0] != x->ne[0] || w->ne[1] < 1 || dst->ne[0] != x->ne[0] || dst->ne[1] != x->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda rms_norm: shapes x %lldx%lld, w %lldx%lld, dst %lldx%lld",
                         (long long)x->ne[0], (long long)x->ne[1], (long long)w->ne[0], (long long)w->ne[1],
                         (long long)dst->ne[0], (long long)dst->ne[1]);
    if (!(eps >= 0.0f)) return kcu_error(KILN_E_INVALID_ARG, "cuda rms_norm: eps %g", (double)eps);
    if (x->ne[0] == 0 || x->ne[1] == 0) return KILN_OK;
    if (x->ne[1] > 0x7fffffff) return kcu_error(KILN_E_INVALID_ARG, "cuda rms_norm: too many rows");
    struct { kiln_bk_tensor a, b, c; float eps; } args;
    memset(&args, 0, sizeof args);
    args.a = *x, args.b = *w, args.c = *dst, args.eps = eps;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    const int threads = x->ne[0] >= 4096 ? 1024 : x->ne[0] >= 1024 ? 256 : x->ne[0] >= 256 ? 128 : 64;
    int8_t *xq;
    float *xd;
    if ((st = kcu_xq_produce(dev, kcu_tensor_ptr(dst), dst->row_stride, dst->ne[0], dst->ne[1], &xq, &xd))) return st;
    kcu_launch(rms_norm_kernel, (unsigned)x->ne[1], threads, 0, dev->stream, 
        (const float *)kcu_tensor_ptr(x), x->row_stride / 4, (const float *)kcu_tensor_ptr(w),
        (float *)kcu_tensor_ptr(dst), dst->row_stride / 4, x->ne[0], eps, xq, xd);
    KCU_LAUNCHED("rms_norm");
    return KILN_OK;
}

/* sum = a + b, then dst = rms_norm(sum) * w: one block per row. The sum is
 * written first and read back by the same threads, so the arithmetic is
 * exactly add's followed by rms_norm's. */
static __global__ void add_rms_norm_kernel(const float *a, uint64_t as, const float *b, uint64_t bs, float *sum,
                                           uint64_t ss, const float *w, float *y, uint64_t ys, int64_t n, float eps,
                                           int8_t *xq, float *xd) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const float *ar = a + blockIdx.x * as, *br = b + blockIdx.x * bs;
    float *sr = sum + blockIdx.x * ss, *yr = y + blockIdx.x * ys;
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = ar[i] + br[i];
        sr[i] = v;
        s += (double)v * (double)v;
    }
    const float mean = (float)(kcu_block_sum(s) / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = __fmul_rn(__fmul_rn(sr[i], scale), w[i]);
        yr[i] = v;
        if (xq) kcu_q8_store(v, i, xq + blockIdx.x * n, xd + blockIdx.x * (n / 32));
    }
}

/* The same with each thread's (at most VPT) values kept in registers and
 * every load issued before the reduction: one memory round trip instead of
 * three in a row of a decode step (the same sums in the same order, so the
 * same bits as add_rms_norm_kernel). */
template <int VPT>
static __global__ void add_rms_norm_reg_kernel(const float *a, uint64_t as, const float *b, uint64_t bs, float *sum,
                                               uint64_t ss, const float *w, float *y, uint64_t ys, int64_t n, float eps,
                                               int8_t *xq, float *xd) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const float *ar = a + blockIdx.x * as, *br = b + blockIdx.x * bs;
    float *sr = sum + blockIdx.x * ss, *yr = y + blockIdx.x * ys;
    float v[VPT], wv[VPT];
#pragma unroll
    for (int k = 0; k < VPT; k++) {
        const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
        v[k] = i < n ? ar[i] + br[i] : 0.0f;
        wv[k] = i < n ? w[i] : 0.0f;
    }
    double s = 0.0;
#pragma unroll
    for (int k = 0; k < VPT; k++) {
        const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
        if (i < n) {
            sr[i] = v[k];
            s += (double)v[k] * (double)v[k];
        }
    }
    const float mean = (float)(kcu_block_sum(s) / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
#pragma unroll
    for (int k = 0; k < VPT; k++) {
        const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
        if (i < n) {
            const float o = __fmul_rn(__fmul_rn(v[k], scale), wv[k]);
            yr[i] = o;
            if (xq) kcu_q8_store(o, i, xq + blockIdx.x * n, xd + blockIdx.x * (n / 32));
        }
    }
}

kiln_status kcu_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                             kiln_bk_tensor *sum, const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(a, KCU_F32, "add_rms_norm", "a")) ||
        (st = kcu_tensor_check(b, KCU_F32, "add_rms_norm", "b")) ||
        (st = kcu_tensor_check(sum, KCU_F32, "add_rms_norm", "sum")) ||
        (st = kcu_tensor_check(w, KCU_F32, "add_rms_norm", "w")) ||
        (st = kcu_tensor_check(dst, KCU_F32, "add_rms_norm", "dst")))
        return st;
    const int64_t n = a->ne[0], rows = a->ne[1];
    if (b->ne[0] != n || b->ne[1] != rows || sum->ne[0] != n || sum->ne[1] != rows || w->ne[0] != n ||
        dst->ne[0] != n || dst->ne[1] != rows)
        return kcu_error(KILN_E_INVALID_ARG, "cuda add_rms_norm: shapes differ");
    if (!(eps >= 0.0f)) return kcu_error(KILN_E_INVALID_ARG, "cuda add_rms_norm: eps %g", (double)eps);
    if (n == 0 || rows == 0) return KILN_OK;
    if (rows > 0x7fffffff) return kcu_error(KILN_E_INVALID_ARG, "cuda add_rms_norm: too many rows");
    struct { kiln_bk_tensor a, b, s, w, d; float eps; } args;
    memset(&args, 0, sizeof args);
    args.a = *a, args.b = *b, args.s = *sum, args.w = *w, args.d = *dst, args.eps = eps;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (dev->skip & KCU_SKIP_NORM) return KILN_OK;
    int8_t *xq;
    float *xd;
    if ((st = kcu_xq_produce(dev, kcu_tensor_ptr(dst), dst->row_stride, n, rows, &xq, &xd))) return st;
    const int threads = n >= 4096 ? 1024 : n >= 1024 ? 256 : n >= 256 ? 128 : 64;
    if (n <= 4 * threads && (!xq || n % 32 == 0)) {
        kcu_launch(add_rms_norm_reg_kernel<4>, (unsigned)rows, threads, 0, dev->stream, (const float *)kcu_tensor_ptr(a),
                   a->row_stride / 4, (const float *)kcu_tensor_ptr(b), b->row_stride / 4, (float *)kcu_tensor_ptr(sum),
                   sum->row_stride / 4, (const float *)kcu_tensor_ptr(w), (float *)kcu_tensor_ptr(dst),
                   dst->row_stride / 4, n, eps, xq, xd);
        KCU_LAUNCHED("add_rms_norm");
        return KILN_OK;
    }
    kcu_launch(add_rms_norm_kernel, (unsigned)rows, threads, 0, dev->stream, (const float *)kcu_tensor_ptr(a),
               a->row_stride / 4, (const float *)kcu_tensor_ptr(b), b->row_stride / 4, (float *)kcu_tensor_ptr(sum),
               sum->row_stride / 4, (const float *)kcu_tensor_ptr(w), (float *)kcu_tensor_ptr(dst),
               dst->row_stride / 4, n, eps, xq, xd);
    KCU_LAUNCHED("add_rms_norm");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* add                                                                      */
/* ------------------------------------------------------------------------ */

static __global__ void add_kernel(const float *a, uint64_t as, const float *b, uint64_t bs, float *y, uint64_t ys,
                                  int64_t n, int64_t rows) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int64_t total = n * rows;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / n, c = i % n;
        y[r * ys + c] = a[r * as + c] + b[r * bs + c];
    }
}

kiln_status kcu_add(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b, kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(a, KCU_F32, "add", "a")) ||
        (st = kcu_tensor_check(b, KCU_F32, "add", "b")) || (st = kcu_tensor_check(dst, KCU_F32, "add", "dst")))
        return st;
    if (b->ne[0] != a->ne[0] || (b->ne[1] != a->ne[1] && b->ne[1] != 1) || dst->ne[0] != a->ne[0] ||
        dst->ne[1] != a->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda add: shapes a %lldx%lld, b %lldx%lld, dst %lldx%lld",
                         (long long)a->ne[0], (long long)a->ne[1], (long long)b->ne[0], (long long)b->ne[1],
                         (long long)dst->ne[0], (long long)dst->ne[1]);
    const int64_t total = a->ne[0] * a->ne[1];
    if (total == 0) return KILN_OK;
    struct { kiln_bk_tensor a, b, c; } args;
    memset(&args, 0, sizeof args);
    args.a = *a, args.b = *b, args.c = *dst;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    const uint64_t bs = b->ne[1] == 1 ? 0 : b->row_stride / 4;
    const int64_t blocks = (total + 255) / 256;
    kcu_launch(add_kernel, (unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, dev->stream, 
        (const float *)kcu_tensor_ptr(a), a->row_stride / 4, (const float *)kcu_tensor_ptr(b), bs,
        (float *)kcu_tensor_ptr(dst), dst->row_stride / 4, a->ne[0], a->ne[1]);
    KCU_LAUNCHED("add");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* rope                                                                     */
/* ------------------------------------------------------------------------ */

/* One thread per (token, pair): the angle is built by repeated
 * multiplication exactly as the CPU backend (and ggml) builds it, then the
 * pair is rotated in every head. */
/* One block per token, one thread per (head, pair): every head's rotation
 * is independent, so all of them are in flight at once (a thread per pair
 * looping over 32 heads was a chain of 32 dependent memory round trips).
 * The angle is built by repeated multiplication exactly as the CPU backend
 * (and ggml) builds it. */
static __global__ void rope_kernel(float *x, uint64_t xs, const int32_t *pos, int n_head, int head_dim, int half,
                                   int neox, float theta_scale, float freq_scale, const float *ff) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int t = blockIdx.x;
    const float p = (float)pos[t];
    float *row = x + (uint64_t)t * xs;
    for (int k = threadIdx.x; k < n_head * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        float theta = p;
        for (int j = 0; j < i; j++) theta = __fmul_rn(theta, theta_scale);
        const float th = __fmul_rn(freq_scale, __fdiv_rn(theta, ff ? ff[i] : 1.0f));
        const float c = cosf(th), s = sinf(th);
        float *v = row + (int64_t)h * head_dim;
        float *a = neox ? v + i : v + 2 * i;
        float *b = neox ? v + i + half : v + 2 * i + 1;
        const float x0 = *a, x1 = *b;
        *a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        *b = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

/* Checks rope's arguments and fills r with them (defaults for fields an
 * older caller's struct lacks). */
static kiln_status rope_args(const kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_rope *rope,
                             kiln_bk_rope *r) {
    kiln_status st;
    if (!rope) return kcu_error(KILN_E_INVALID_ARG, "cuda rope: parameters are NULL");
    if ((st = kcu_tensor_check(x, KCU_F32, "rope", "x"))) return st;
    memset(r, 0, sizeof *r);
    memcpy(r, rope, rope->struct_size < sizeof *r ? rope->struct_size : sizeof *r);
    if (rope->struct_size < offsetof(kiln_bk_rope, freq_scale) + sizeof(float)) r->freq_scale = 1.0f;
    if (!dev->ub.set) return kcu_error(KILN_E_INVALID_ARG, "cuda rope: no ubatch set");
    if (r->mode != KILN_ROPE_NORM && r->mode != KILN_ROPE_NEOX)
        return kcu_error(KILN_E_INVALID_ARG, "cuda rope: unknown mode %d", r->mode);
    if (r->n_rot % 2 || r->n_rot > r->head_dim || r->n_rot > 2048)
        return kcu_error(KILN_E_INVALID_ARG, "cuda rope: n_rot %u with head_dim %u", r->n_rot, r->head_dim);
    if ((uint64_t)r->n_head * r->head_dim > (uint64_t)x->ne[0])
        return kcu_error(KILN_E_INVALID_ARG, "cuda rope: %u heads of %u do not fit rows of %lld", r->n_head,
                         r->head_dim, (long long)x->ne[0]);
    if (x->ne[1] != (int64_t)dev->ub.n_tokens)
        return kcu_error(KILN_E_INVALID_ARG, "cuda rope: %lld rows for a ubatch of %u tokens", (long long)x->ne[1],
                         dev->ub.n_tokens);
    return KILN_OK;
}

kiln_status kcu_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope) {
    kiln_status st;
    if ((st = kcu_use(dev))) return st;
    kiln_bk_rope r;
    if ((st = rope_args(dev, x, rope, &r))) return st;
    if (r.n_rot == 0 || x->ne[1] == 0 || r.n_head == 0) return KILN_OK;
    const int half = (int)r.n_rot / 2;
    const void *ff = NULL;
    if (r.freq_factors && (st = kcu_stage(dev, r.freq_factors, (size_t)half * sizeof(float), &ff))) return st;
    struct { kiln_bk_tensor x; kiln_bk_rope r; const void *ff; } args;
    memset(&args, 0, sizeof args);
    args.x = *x;
    args.r = r;
    args.r.freq_factors = NULL;
    args.ff = ff;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    const float theta_scale = powf(r.freq_base, -2.0f / (float)r.n_rot);
    const int pairs = (int)r.n_head * half;
    kcu_launch(rope_kernel, (unsigned)x->ne[1], (unsigned)(pairs >= 1024 ? 1024 : (pairs + 31) / 32 * 32), 0,
               dev->stream, 
        (float *)kcu_tensor_ptr(x), x->row_stride / 4, dev->ub.pos, (int)r.n_head, (int)r.head_dim, half,
        r.mode == KILN_ROPE_NEOX, theta_scale, r.freq_scale, (const float *)ff);
    KCU_LAUNCHED("rope");
    return KILN_OK;
}

/* rope of q and k and the store of k and v into the cache, one block per
 * token: threads take q's pairs, then k's (writing the rotated pair to k and,
 * rounded to F16, to the cache), then v's elements. The same arithmetic as
 * rope_kernel and kv_store_kernel, so the same bits. */
static __global__ void rope_kv_store_kernel(float *q, uint64_t qs, float *k, uint64_t ks, const float *v,
                                            uint64_t vs, __half *kc, __half *vc, const int32_t *pos,
                                            const int32_t *cell, int n_head, int n_head_kv, int head_dim, int half,
                                            int neox, float theta_scale, float freq_scale, const float *ff,
                                            int kv_dim) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int t = blockIdx.x;
    const float p = (float)pos[t];
    const int nq = n_head * half, nk = n_head_kv * half, total = nq + nk + kv_dim;
    const uint64_t c = (uint64_t)cell[t] * (uint64_t)kv_dim;
    /* the rotation of pair i is the same for every head of q and k: each
     * computed once (the dependent chain of multiplications and the
     * sine/cosine are most of this kernel's time) */
    __shared__ float rcs[KCU_ROPE_HALF_MAX], rsn[KCU_ROPE_HALF_MAX];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = p;
        for (int m = 0; m < i; m++) theta = __fmul_rn(theta, theta_scale);
        const float th = __fmul_rn(freq_scale, __fdiv_rn(theta, ff ? ff[i] : 1.0f));
        rcs[i] = cosf(th);
        rsn[i] = sinf(th);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        if (j >= nq + nk) { /* v */
            const int i = j - nq - nk;
            vc[c + i] = __float2half_rn(v[(uint64_t)t * vs + i]);
            continue;
        }
        const bool is_q = j < nq;
        const int kk = is_q ? j : j - nq, h = kk / half, i = kk % half;
        const float cs = rcs[i], sn = rsn[i];
        float *row = is_q ? q + (uint64_t)t * qs : k + (uint64_t)t * ks;
        const int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float *vh = row + (int64_t)h * head_dim;
        const float x0 = vh[ia], x1 = vh[ib];
        const float a = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        const float b = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
        vh[ia] = a;
        vh[ib] = b;
        if (!is_q) {
            kc[c + (uint64_t)h * head_dim + ia] = __float2half_rn(a);
            kc[c + (uint64_t)h * head_dim + ib] = __float2half_rn(b);
        }
    }
    /* k's elements past the rotated part of each head (n_rot < head_dim) */
    const int rot = 2 * half;
    if (rot < head_dim)
        for (int j = threadIdx.x; j < n_head_kv * head_dim; j += blockDim.x)
            if (j % head_dim >= rot) kc[c + j] = __float2half_rn(k[(uint64_t)t * ks + j]);
}

kiln_status kcu_rope_kv_plan(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_tensor *k,
                             const kiln_bk_tensor *v, const kiln_bk_rope *rq, const kiln_bk_rope *rk,
                             const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache, uint32_t kv_dim,
                             struct kcu_rope_plan *plan) {
    kiln_status st;
    memset(plan, 0, sizeof *plan);
    kiln_bk_rope a, b;
    if ((st = rope_args(dev, q, rq, &a)) || (st = rope_args(dev, k, rk, &b))) return st;
    /* the fused kernels cover the forward pass's case: the same rotation
     * for q and k, k's heads exactly kv_dim wide; anything else in steps */
    const bool same = a.mode == b.mode && a.n_rot == b.n_rot && a.head_dim == b.head_dim &&
                      a.freq_base == b.freq_base && a.freq_scale == b.freq_scale &&
                      a.freq_factors == b.freq_factors && (uint64_t)b.n_head * b.head_dim == kv_dim &&
                      a.n_rot / 2 <= KCU_ROPE_HALF_MAX;
    if (!same || a.n_rot == 0 || a.n_head == 0 || !v || v->ne[1] != k->ne[1] || q->ne[1] == 0) return KILN_OK;
    if ((st = kcu_tensor_check(v, KCU_F32, "kv_store", "v"))) return st;
    if (!k_cache || !v_cache) return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: cache buffer is NULL");
    const struct kcu_ubatch *ub = &dev->ub;
    if (!ub->has_kv) return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: no ubatch with kv cells");
    if (k->ne[0] < kv_dim || v->ne[0] < kv_dim)
        return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: k/v of %lld/%lld for kv_dim %u", (long long)k->ne[0],
                         (long long)v->ne[0], kv_dim);
    const uint64_t need = (uint64_t)ub->n_cells * kv_dim * 2;
    if (k_cache->size < need || v_cache->size < need)
        return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: caches of %llu bytes, %u cells need %llu",
                         (unsigned long long)k_cache->size, ub->n_cells, (unsigned long long)need);
    plan->half = (int)a.n_rot / 2;
    if (a.freq_factors && (st = kcu_stage(dev, a.freq_factors, (size_t)plan->half * sizeof(float), &plan->ff)))
        return st;
    plan->fused = true;
    plan->n_head = (int)a.n_head;
    plan->n_head_kv = (int)b.n_head;
    plan->head_dim = (int)a.head_dim;
    plan->neox = a.mode == KILN_ROPE_NEOX;
    plan->theta_scale = powf(a.freq_base, -2.0f / (float)a.n_rot);
    plan->freq_scale = a.freq_scale;
    plan->a = a;
    plan->b = b;
    plan->a.freq_factors = plan->b.freq_factors = NULL; /* hashed by value: ff is the staged copy */
    return KILN_OK;
}

kiln_status kcu_rope_kv_store(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                              const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                              kiln_bk_buffer *v_cache, uint32_t kv_dim) {
    kiln_status st;
    if ((st = kcu_use(dev))) return st;
    struct kcu_rope_plan rp;
    if ((st = kcu_rope_kv_plan(dev, q, k, v, rq, rk, k_cache, v_cache, kv_dim, &rp))) return st;
    if (!rp.fused) {
        if ((st = kcu_rope(dev, q, rq)) || (st = kcu_rope(dev, k, rk))) return st;
        return kcu_kv_store(dev, k, v, k_cache, v_cache, kv_dim);
    }
    struct { kiln_bk_tensor q, k, v; kiln_bk_rope a, b; const void *ff, *kc, *vc; uint32_t d; } args;
    memset(&args, 0, sizeof args);
    args.q = *q, args.k = *k, args.v = *v, args.a = rp.a, args.b = rp.b;
    args.ff = rp.ff, args.kc = k_cache->ptr, args.vc = v_cache->ptr, args.d = kv_dim;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (dev->skip & KCU_SKIP_ROPE) return KILN_OK;
    const struct kcu_ubatch *ub = &dev->ub;
    const int items = (rp.n_head + rp.n_head_kv) * rp.half + (int)kv_dim;
    kcu_launch(rope_kv_store_kernel, (unsigned)q->ne[1], (unsigned)(items >= 1024 ? 1024 : (items + 31) / 32 * 32), 0,
               dev->stream, (float *)kcu_tensor_ptr(q), q->row_stride / 4, (float *)kcu_tensor_ptr(k),
               k->row_stride / 4, (const float *)kcu_tensor_ptr(v), v->row_stride / 4, (__half *)k_cache->ptr,
               (__half *)v_cache->ptr, ub->pos, ub->kv_cell, rp.n_head, rp.n_head_kv, rp.head_dim, rp.half, (int)rp.neox,
               rp.theta_scale, rp.freq_scale, (const float *)rp.ff, (int)kv_dim);
    KCU_LAUNCHED("rope_kv_store");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* swiglu                                                                   */
/* ------------------------------------------------------------------------ */

static __global__ void swiglu_kernel(const float *g, uint64_t gs, const float *u, uint64_t us, float *y, uint64_t ys,
                                     int64_t n, int64_t rows, int8_t *xq, float *xd) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int64_t total = n * rows;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / n, c = i % n;
        const float a = g[r * gs + c];
        const float v = __fmul_rn(__fdiv_rn(a, 1.0f + expf(-a)), u[r * us + c]);
        y[r * ys + c] = v;
        /* n % 32 == 0: a warp's 32 consecutive i are one block of one row */
        if (xq) kcu_q8_store(v, i, xq, xd);
    }
}

kiln_status kcu_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate, const kiln_bk_tensor *up, kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(gate, KCU_F32, "swiglu", "gate")) ||
        (st = kcu_tensor_check(up, KCU_F32, "swiglu", "up")) || (st = kcu_tensor_check(dst, KCU_F32, "swiglu", "dst")))
        return st;
    if (up->ne[0] != gate->ne[0] || up->ne[1] != gate->ne[1] || dst->ne[0] != gate->ne[0] || dst->ne[1] != gate->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda swiglu: shapes differ");
    const int64_t total = gate->ne[0] * gate->ne[1];
    if (total == 0) return KILN_OK;
    struct { kiln_bk_tensor a, b, c; } args;
    memset(&args, 0, sizeof args);
    args.a = *gate, args.b = *up, args.c = *dst;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (dev->skip & KCU_SKIP_SWIGLU) return KILN_OK;
    const int64_t blocks = (total + 255) / 256;
    int8_t *xq;
    float *xd;
    if ((st = kcu_xq_produce(dev, kcu_tensor_ptr(dst), dst->row_stride, dst->ne[0], dst->ne[1], &xq, &xd))) return st;
    kcu_launch(swiglu_kernel, (unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, dev->stream, 
        (const float *)kcu_tensor_ptr(gate), gate->row_stride / 4, (const float *)kcu_tensor_ptr(up),
        up->row_stride / 4, (float *)kcu_tensor_ptr(dst), dst->row_stride / 4, gate->ne[0], gate->ne[1], xq, xd);
    KCU_LAUNCHED("swiglu");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* kv_store                                                                 */
/* ------------------------------------------------------------------------ */

static __global__ void kv_store_kernel(const float *k, uint64_t ks, const float *v, uint64_t vs, __half *kc,
                                       __half *vc, const int32_t *cell, int kv_dim) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int t = blockIdx.x;
    const uint64_t c = (uint64_t)cell[t] * (uint64_t)kv_dim;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < kv_dim; i += gridDim.y * blockDim.x) {
        kc[c + i] = __float2half_rn(k[(uint64_t)t * ks + i]);
        vc[c + i] = __float2half_rn(v[(uint64_t)t * vs + i]);
    }
}

kiln_status kcu_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                         kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(k, KCU_F32, "kv_store", "k")) ||
        (st = kcu_tensor_check(v, KCU_F32, "kv_store", "v")))
        return st;
    if (!k_cache || !v_cache) return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: cache buffer is NULL");
    const struct kcu_ubatch *ub = &dev->ub;
    if (!ub->set || !ub->has_kv) return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: no ubatch with kv cells");
    if (k->ne[0] < kv_dim || v->ne[0] < kv_dim || k->ne[1] != (int64_t)ub->n_tokens || v->ne[1] != k->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: k/v of %lldx%lld for kv_dim %u and %u tokens",
                         (long long)k->ne[0], (long long)k->ne[1], kv_dim, ub->n_tokens);
    const uint64_t need = (uint64_t)ub->n_cells * kv_dim * 2;
    if (k_cache->size < need || v_cache->size < need)
        return kcu_error(KILN_E_INVALID_ARG, "cuda kv_store: caches of %llu bytes, %u cells need %llu",
                         (unsigned long long)k_cache->size, ub->n_cells, (unsigned long long)need);
    if (ub->n_tokens == 0 || kv_dim == 0) return KILN_OK;
    struct { kiln_bk_tensor k, v; const void *kc, *vc; uint32_t d; } args;
    memset(&args, 0, sizeof args);
    args.k = *k, args.v = *v, args.kc = k_cache->ptr, args.vc = v_cache->ptr, args.d = kv_dim;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    kcu_launch(kv_store_kernel, dim3(ub->n_tokens, (kv_dim + 255) / 256), 256, 0, dev->stream, 
        (const float *)kcu_tensor_ptr(k), k->row_stride / 4, (const float *)kcu_tensor_ptr(v), v->row_stride / 4,
        (__half *)k_cache->ptr, (__half *)v_cache->ptr, ub->kv_cell, (int)kv_dim);
    KCU_LAUNCHED("kv_store");
    return KILN_OK;
}
