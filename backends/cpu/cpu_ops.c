/*
 * cpu_ops.c - the CPU backend's row-wise operations: get_rows, rms_norm,
 * add, rope, swiglu, kv_store. Attention is in cpu_attn.c, matmul in
 * cpu_matmul.c.
 *
 * All activations are F32. Each operation checks its operands, then splits
 * its rows over the handle's threads when there is enough work to pay for
 * the dispatch (a decode step's one-row operations run on the caller).
 *
 * Numerics follow ggml's CPU backend where llama.cpp's outputs are the
 * reference: rms_norm sums squares in double, rope builds its angles by
 * repeated multiplication in float, silu is x / (1 + e^-x).
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_simd.h"
#include "quant.h"

/* Below this many elements an operation runs on the calling thread only:
 * waking workers would cost more than the work. */
#define KILN_CPU_PAR_MIN_ELEMS 16384

static int threads_for(const kiln_bk_device *dev, int64_t rows, int64_t elems) {
    if (rows < 2 || elems < KILN_CPU_PAR_MIN_ELEMS) return 1;
    int n = dev->n_threads;
    int64_t by_work = elems / (KILN_CPU_PAR_MIN_ELEMS / 2);
    if (by_work < n) n = (int)by_work;
    if (rows < n) n = (int)rows;
    return n < 1 ? 1 : n;
}

/* Runs fn over `rows` rows on as many threads as `elems` of work pays for,
 * in chunks small enough (4 per thread) to balance uneven progress. */
static void run_rows(kiln_bk_device *dev, int64_t rows, int64_t elems, kiln_cpu_range_fn fn, void *ctx) {
    int nth = threads_for(dev, rows, elems);
    int64_t grain = nth > 1 ? (rows + 4 * nth - 1) / (4 * nth) : rows;
    kiln_cpu_threads_for(dev->threads, nth, rows, grain, fn, ctx);
}

static kiln_status need_ubatch(const kiln_bk_device *dev, const char *op) {
    if (!dev->ub.set) return kiln_error(KILN_E_INVALID_ARG, "cpu %s: no ubatch was set", op);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* get_rows                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    const kiln_bk_tensor *table;
    const int32_t *ids;
    kiln_bk_tensor *dst;
    _Atomic int status; /* first failure of kiln_dequantize_row */
} get_rows_args;

static void get_rows_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    get_rows_args *a = ctx;
    const int64_t n = a->table->ne[0];
    for (int64_t r = r0; r < r1; r++) {
        const void *src = kiln_cpu_row(a->table, a->ids[r]);
        float *out = (float *)kiln_cpu_row(a->dst, r);
        if (a->table->type == KILN_TYPE_F32) {
            memcpy(out, src, (size_t)n * sizeof(float));
        } else {
            kiln_status st = kiln_dequantize_row(a->table->type, src, out, n);
            if (st != KILN_OK) {
                int expected = KILN_OK;
                atomic_compare_exchange_strong(&a->status, &expected, st);
                return;
            }
        }
    }
}

kiln_status kiln_cpu_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table,
                              const int32_t *ids, kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu get_rows: device is NULL");
    if ((st = kiln_cpu_tensor_check(table, -1, "get_rows", "table")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "get_rows", "dst")))
        return st;
    if (dst->ne[0] != table->ne[0])
        return kiln_error(KILN_E_INVALID_ARG, "cpu get_rows: dst rows of %lld, table rows of %lld",
                          (long long)dst->ne[0], (long long)table->ne[0]);
    if (dst->ne[1] == 0) return KILN_OK;
    if (!ids) return kiln_error(KILN_E_INVALID_ARG, "cpu get_rows: ids is NULL");
    for (int64_t r = 0; r < dst->ne[1]; r++)
        if (ids[r] < 0 || ids[r] >= table->ne[1])
            return kiln_error(KILN_E_INVALID_ARG, "cpu get_rows: id %d (row %lld) outside [0, %lld)", ids[r],
                              (long long)r, (long long)table->ne[1]);
    get_rows_args a = {table, ids, dst, KILN_OK};
    run_rows(dev, dst->ne[1], dst->ne[1] * dst->ne[0], get_rows_task, &a);
    st = atomic_load(&a.status);
    if (st != KILN_OK)
        return kiln_error(st, "cpu get_rows: cannot convert %s rows to f32", kiln_type_name(table->type));
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* rms_norm                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    const kiln_bk_device *dev;
    const kiln_bk_tensor *x, *w;
    kiln_bk_tensor *dst;
    float eps;
} rms_norm_args;

/* Sum of squares like ggml: each square rounded to float, summed in
 * double. Four double accumulators keep it fast; the order change is far
 * below float resolution. */
static double sum_squares_scalar(const float *x, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)(x[i] * x[i]);
        s1 += (double)(x[i + 1] * x[i + 1]);
        s2 += (double)(x[i + 2] * x[i + 2]);
        s3 += (double)(x[i + 3] * x[i + 3]);
    }
    for (; i < n; i++) s0 += (double)(x[i] * x[i]);
    return (s0 + s1) + (s2 + s3);
}

#ifdef KILN_CPU_X86
static KILN_AVX2 double sum_squares_avx2(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sq = _mm256_mul_ps(v, v); /* rounded to float, as ggml does */
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    __m256d a = _mm256_add_pd(a0, a1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < n; i++) s += (double)(x[i] * x[i]);
    return s;
}

static KILN_AVX2 void scale_mul_avx2(const float *x, float scale, const float *w, float *y, int64_t n) {
    const __m256 vs = _mm256_set1_ps(scale);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = (x[i] * scale) * w[i];
}
#endif

static void rms_norm_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    rms_norm_args *a = ctx;
    const int64_t n = a->x->ne[0];
    const float *w = (const float *)kiln_cpu_row(a->w, 0);
    for (int64_t r = r0; r < r1; r++) {
        const float *x = (const float *)kiln_cpu_row(a->x, r);
        float *y = (float *)kiln_cpu_row(a->dst, r);
#ifdef KILN_CPU_X86
        if (a->dev->isa >= KILN_CPU_ISA_AVX2) {
            const float mean = (float)(sum_squares_avx2(x, n) / (double)n);
            scale_mul_avx2(x, 1.0f / sqrtf(mean + a->eps), w, y, n);
            continue;
        }
#endif
        const float mean = (float)(sum_squares_scalar(x, n) / (double)n);
        const float scale = 1.0f / sqrtf(mean + a->eps);
        /* (x * scale) * w: ggml scales, then multiplies by the weight */
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
    }
}

kiln_status kiln_cpu_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x,
                              const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu rms_norm: device is NULL");
    if ((st = kiln_cpu_tensor_check(x, KILN_TYPE_F32, "rms_norm", "x")) ||
        (st = kiln_cpu_tensor_check(w, KILN_TYPE_F32, "rms_norm", "w")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "rms_norm", "dst")))
        return st;
    if (w->ne[0] != x->ne[0] || w->ne[1] < 1 || dst->ne[0] != x->ne[0] || dst->ne[1] != x->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "cpu rms_norm: shapes x %lldx%lld, w %lldx%lld, dst %lldx%lld",
                          (long long)x->ne[0], (long long)x->ne[1], (long long)w->ne[0], (long long)w->ne[1],
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    if (!(eps >= 0.0f)) return kiln_error(KILN_E_INVALID_ARG, "cpu rms_norm: eps %g", (double)eps);
    if (x->ne[0] == 0 || x->ne[1] == 0) return KILN_OK;
    rms_norm_args a = {dev, x, w, dst, eps};
    run_rows(dev, x->ne[1], x->ne[1] * x->ne[0], rms_norm_task, &a);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* add                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    const kiln_bk_device *dev;
    const kiln_bk_tensor *a, *b;
    kiln_bk_tensor *dst;
} add_args;

#ifdef KILN_CPU_X86
static KILN_AVX2 void add_row_avx2(const float *x, const float *y, float *z, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(z + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) z[i] = x[i] + y[i];
}
#endif

static void add_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    add_args *p = ctx;
    const int64_t n = p->a->ne[0];
    bool bcast = p->b->ne[1] == 1;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = (const float *)kiln_cpu_row(p->a, r);
        const float *y = (const float *)kiln_cpu_row(p->b, bcast ? 0 : r);
        float *z = (float *)kiln_cpu_row(p->dst, r);
#ifdef KILN_CPU_X86
        if (p->dev->isa >= KILN_CPU_ISA_AVX2) {
            add_row_avx2(x, y, z, n);
            continue;
        }
#endif
        for (int64_t i = 0; i < n; i++) z[i] = x[i] + y[i];
    }
}

kiln_status kiln_cpu_add(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                         kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu add: device is NULL");
    if ((st = kiln_cpu_tensor_check(a, KILN_TYPE_F32, "add", "a")) ||
        (st = kiln_cpu_tensor_check(b, KILN_TYPE_F32, "add", "b")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "add", "dst")))
        return st;
    if (b->ne[0] != a->ne[0] || (b->ne[1] != a->ne[1] && b->ne[1] != 1) || dst->ne[0] != a->ne[0] ||
        dst->ne[1] != a->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "cpu add: shapes a %lldx%lld, b %lldx%lld, dst %lldx%lld",
                          (long long)a->ne[0], (long long)a->ne[1], (long long)b->ne[0], (long long)b->ne[1],
                          (long long)dst->ne[0], (long long)dst->ne[1]);
    if (a->ne[0] == 0 || a->ne[1] == 0) return KILN_OK;
    add_args p = {dev, a, b, dst};
    run_rows(dev, a->ne[1], a->ne[1] * a->ne[0], add_task, &p);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* rope                                                                     */
/* ------------------------------------------------------------------------ */

#define KILN_CPU_ROPE_MAX_PAIRS 1024 /* n_rot <= 2048: far beyond any model */

typedef struct {
    const kiln_bk_device *dev;
    kiln_bk_tensor *x;
    kiln_bk_rope r;
    float theta_scale;
    float *table;   /* [n_tokens][n_rot]: cos of each pair, then sin */
    bool fill;      /* compute the table rows first */
} rope_args;

static void rope_head_scalar(float *v, const float *cs, const float *sn, int64_t half, int mode) {
    if (mode == KILN_ROPE_NEOX) {
        for (int64_t i = 0; i < half; i++) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cs[i] - x1 * sn[i];
            v[i + half] = x0 * sn[i] + x1 * cs[i];
        }
    } else {
        for (int64_t i = 0; i < half; i++) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cs[i] - x1 * sn[i];
            v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

#ifdef KILN_CPU_X86
/* The same rotation, 4 pairs (NORM) or 8 pairs (NEOX) per step. Products
 * are rounded before the add/sub, as in the scalar code. */
static KILN_AVX2 void rope_head_avx2(float *v, const float *cs, const float *sn, int64_t half, int mode) {
    int64_t i = 0;
    if (mode == KILN_ROPE_NEOX) {
        for (; i + 8 <= half; i += 8) {
            const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
            const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
            _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
        }
    } else {
        const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        for (; i + 4 <= half; i += 4) {
            const __m256 x = _mm256_loadu_ps(v + 2 * i);                     /* x0 x1 x0' x1' ... */
            const __m256 xs = _mm256_permute_ps(x, 0xb1);                    /* x1 x0 x1' x0' ... */
            const __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cs + i)), dup);
            const __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sn + i)), dup);
            /* even lanes x0*c - x1*s, odd lanes x1*c + x0*s */
            _mm256_storeu_ps(v + 2 * i, _mm256_addsub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(xs, s)));
        }
    }
    if (i < half) {
        /* the rest, pair by pair */
        for (; i < half; i++) {
            float *a = mode == KILN_ROPE_NEOX ? v + i : v + 2 * i;
            float *b = mode == KILN_ROPE_NEOX ? v + i + half : v + 2 * i + 1;
            const float x0 = *a, x1 = *b;
            *a = x0 * cs[i] - x1 * sn[i];
            *b = x0 * sn[i] + x1 * cs[i];
        }
    }
}
#endif

static void rope_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    rope_args *a = ctx;
    const kiln_bk_rope *r = &a->r;
    const int64_t half = r->n_rot / 2;
    for (int64_t t = r0; t < r1; t++) {
        float *cs = a->table + (size_t)t * (size_t)r->n_rot, *sn = cs + half;
        if (a->fill) {
            /* angles exactly as ggml builds them: theta_i = pos * theta_scale^i,
             * iterated in float, divided by the frequency factor, then scaled */
            float theta = (float)a->dev->ub.pos[t];
            for (int64_t i = 0; i < half; i++) {
                const float ff = r->freq_factors ? r->freq_factors[i] : 1.0f;
                const float th = r->freq_scale * (theta / ff);
                cs[i] = cosf(th);
                sn[i] = sinf(th);
                theta *= a->theta_scale;
            }
        }
        float *row = (float *)kiln_cpu_row(a->x, t);
        for (uint32_t h = 0; h < r->n_head; h++) {
            float *v = row + (size_t)h * r->head_dim;
#ifdef KILN_CPU_X86
            if (a->dev->isa >= KILN_CPU_ISA_AVX2) {
                rope_head_avx2(v, cs, sn, half, r->mode);
                continue;
            }
#endif
            rope_head_scalar(v, cs, sn, half, r->mode);
        }
    }
}

/* Points a->table at the handle's cos/sin table for this ubatch and these
 * parameters; a->fill says whether it must be computed. */
static kiln_status rope_table(kiln_bk_device *dev, rope_args *a) {
    kiln_cpu_rope_cache *c = &dev->rope;
    const kiln_bk_rope *r = &a->r;
    const size_t half = r->n_rot / 2;
    bool same = c->valid && c->ub_gen == dev->ub_gen && c->n_rot == r->n_rot &&
                c->freq_base == r->freq_base && c->freq_scale == r->freq_scale &&
                c->has_factors == (r->freq_factors != NULL) &&
                (!r->freq_factors || memcmp(c->factors, r->freq_factors, half * sizeof(float)) == 0);
    a->fill = !same;
    if (!same) {
        size_t need = (size_t)dev->ub.n_tokens * r->n_rot;
        if (need > c->cap) {
            float *t = kiln_realloc(c->table, need * sizeof(float));
            if (!t) return kiln_error(KILN_E_OOM_HOST, "cpu rope: out of memory for a %zu-value angle table", need);
            c->table = t;
            c->cap = need;
        }
        /* valid once this call has filled it (it cannot fail from here on) */
        c->valid = true;
        c->ub_gen = dev->ub_gen;
        c->n_rot = r->n_rot;
        c->freq_base = r->freq_base;
        c->freq_scale = r->freq_scale;
        c->has_factors = r->freq_factors != NULL;
        if (r->freq_factors) memcpy(c->factors, r->freq_factors, half * sizeof(float));
    }
    a->table = c->table;
    return KILN_OK;
}

kiln_status kiln_cpu_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope) {
    kiln_status st;
    if (!dev || !rope) return kiln_error(KILN_E_INVALID_ARG, "cpu rope: NULL device or parameters");
    if ((st = need_ubatch(dev, "rope")) || (st = kiln_cpu_tensor_check(x, KILN_TYPE_F32, "rope", "x")))
        return st;
    rope_args a;
    memset(&a, 0, sizeof a);
    memcpy(&a.r, rope, rope->struct_size < sizeof a.r ? rope->struct_size : sizeof a.r);
    if (rope->struct_size < offsetof(kiln_bk_rope, freq_scale) + sizeof(float)) a.r.freq_scale = 1.0f;
    const kiln_bk_rope *r = &a.r;
    if (r->mode != KILN_ROPE_NORM && r->mode != KILN_ROPE_NEOX)
        return kiln_error(KILN_E_INVALID_ARG, "cpu rope: unknown mode %d", r->mode);
    if (r->n_rot % 2 || r->n_rot > r->head_dim || r->n_rot > 2 * KILN_CPU_ROPE_MAX_PAIRS)
        return kiln_error(KILN_E_INVALID_ARG, "cpu rope: n_rot %u with head_dim %u", r->n_rot, r->head_dim);
    if ((uint64_t)r->n_head * r->head_dim > (uint64_t)x->ne[0])
        return kiln_error(KILN_E_INVALID_ARG, "cpu rope: %u heads of %u do not fit rows of %lld", r->n_head,
                          r->head_dim, (long long)x->ne[0]);
    if (x->ne[1] != (int64_t)dev->ub.n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "cpu rope: %lld rows for a ubatch of %u tokens",
                          (long long)x->ne[1], dev->ub.n_tokens);
    if (r->n_rot == 0 || x->ne[1] == 0 || r->n_head == 0) return KILN_OK;
    a.dev = dev;
    a.x = x;
    a.theta_scale = powf(r->freq_base, -2.0f / (float)r->n_rot);
    if ((st = rope_table(dev, &a))) return st;
    int64_t work = x->ne[1] * (int64_t)r->n_head * r->n_rot * (a.fill ? 4 : 1);
    run_rows(dev, x->ne[1], work, rope_task, &a);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* swiglu                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    const kiln_bk_device *dev;
    const kiln_bk_tensor *gate, *up;
    kiln_bk_tensor *dst;
} swiglu_args;

static void swiglu_row_scalar(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#ifdef KILN_CPU_X86
static KILN_AVX2 void swiglu_row_avx2(const float *g, const float *u, float *y, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = kiln_avx2_exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    swiglu_row_scalar(g + i, u + i, y + i, n - i);
}

static KILN_AVX512 void swiglu_row_avx512(const float *g, const float *u, float *y, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i);
        __m512 e = kiln_avx512_exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    swiglu_row_avx2(g + i, u + i, y + i, n - i);
}
#endif

static void swiglu_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    swiglu_args *a = ctx;
    const int64_t n = a->gate->ne[0];
    for (int64_t r = r0; r < r1; r++) {
        const float *g = (const float *)kiln_cpu_row(a->gate, r);
        const float *u = (const float *)kiln_cpu_row(a->up, r);
        float *y = (float *)kiln_cpu_row(a->dst, r);
#ifdef KILN_CPU_X86
        if (a->dev->isa >= KILN_CPU_ISA_AVX512) {
            swiglu_row_avx512(g, u, y, n);
            continue;
        }
        if (a->dev->isa >= KILN_CPU_ISA_AVX2) {
            swiglu_row_avx2(g, u, y, n);
            continue;
        }
#endif
        swiglu_row_scalar(g, u, y, n);
    }
}

kiln_status kiln_cpu_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate,
                            const kiln_bk_tensor *up, kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu swiglu: device is NULL");
    if ((st = kiln_cpu_tensor_check(gate, KILN_TYPE_F32, "swiglu", "gate")) ||
        (st = kiln_cpu_tensor_check(up, KILN_TYPE_F32, "swiglu", "up")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "swiglu", "dst")))
        return st;
    if (up->ne[0] != gate->ne[0] || up->ne[1] != gate->ne[1] || dst->ne[0] != gate->ne[0] ||
        dst->ne[1] != gate->ne[1])
        return kiln_error(KILN_E_INVALID_ARG, "cpu swiglu: shapes gate %lldx%lld, up %lldx%lld, dst %lldx%lld",
                          (long long)gate->ne[0], (long long)gate->ne[1], (long long)up->ne[0],
                          (long long)up->ne[1], (long long)dst->ne[0], (long long)dst->ne[1]);
    if (gate->ne[0] == 0 || gate->ne[1] == 0) return KILN_OK;
    swiglu_args a = {dev, gate, up, dst};
    /* e^x costs several element-operations: weigh the work accordingly */
    run_rows(dev, gate->ne[1], 4 * gate->ne[1] * gate->ne[0], swiglu_task, &a);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* kv_store                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    const kiln_bk_device *dev;
    const kiln_bk_tensor *src[2];
    kiln_bk_buffer *cache[2];
    uint32_t kv_dim;
} kv_store_args;

static void kv_store_task(void *ctx, int slot, int64_t r0, int64_t r1) {
    kv_store_args *a = ctx;
    const size_t row_bytes = (size_t)a->kv_dim * sizeof(uint16_t);
    for (int j = 0; j < 2; j++) {
        for (int64_t r = r0; r < r1; r++) {
            const float *x = (const float *)kiln_cpu_row(a->src[j], r);
            uint16_t *out = (uint16_t *)(a->cache[j]->data + (size_t)a->dev->ub.kv_cell[r] * row_bytes);
#ifdef KILN_CPU_X86
            if (a->dev->isa >= KILN_CPU_ISA_AVX2) {
                kiln_avx2_f32_to_f16(x, out, a->kv_dim);
                continue;
            }
#endif
            for (uint32_t i = 0; i < a->kv_dim; i++) out[i] = kiln_fp32_to_fp16(x[i]);
        }
    }
}

kiln_status kiln_cpu_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k,
                              const kiln_bk_tensor *v, kiln_bk_buffer *k_cache,
                              kiln_bk_buffer *v_cache, uint32_t kv_dim) {
    kiln_status st;
    if (!dev || !k_cache || !v_cache)
        return kiln_error(KILN_E_INVALID_ARG, "cpu kv_store: NULL device or cache");
    if ((st = need_ubatch(dev, "kv_store")) ||
        (st = kiln_cpu_tensor_check(k, KILN_TYPE_F32, "kv_store", "k")) ||
        (st = kiln_cpu_tensor_check(v, KILN_TYPE_F32, "kv_store", "v")))
        return st;
    const kiln_cpu_ubatch *ub = &dev->ub;
    if (k->ne[0] != kv_dim || v->ne[0] != kv_dim || k->ne[1] != ub->n_tokens || v->ne[1] != ub->n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "cpu kv_store: k %lldx%lld, v %lldx%lld for kv_dim %u, %u tokens",
                          (long long)k->ne[0], (long long)k->ne[1], (long long)v->ne[0], (long long)v->ne[1],
                          kv_dim, ub->n_tokens);
    if (ub->n_tokens == 0 || kv_dim == 0) return KILN_OK;
    if (!ub->has_kv_cell) return kiln_error(KILN_E_INVALID_ARG, "cpu kv_store: the ubatch has no kv cells");
    uint64_t need = (uint64_t)ub->n_cells * kv_dim * sizeof(uint16_t);
    if (k_cache->size < need || v_cache->size < need)
        return kiln_error(KILN_E_INVALID_ARG, "cpu kv_store: caches of %llu/%llu bytes, %u cells need %llu",
                          (unsigned long long)k_cache->size, (unsigned long long)v_cache->size, ub->n_cells,
                          (unsigned long long)need);
    if (k_cache->wrapped || v_cache->wrapped)
        return kiln_error(KILN_E_INVALID_ARG, "cpu kv_store: a cache wraps read-only caller memory");
    kv_store_args a = {dev, {k, v}, {k_cache, v_cache}, kv_dim};
    run_rows(dev, k->ne[1], 2 * k->ne[1] * kv_dim, kv_store_task, &a);
    return KILN_OK;
}
