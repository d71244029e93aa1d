/*
 * cpu_attn.c - causal attention over the paged F16 KV cache.
 *
 * For each token t and head h: scores s_p = (q . k_p) * scale for the
 * positions p < attn_n_kv[t] of its sequence, softmax, out = sum_p P_p v_p,
 * where K/V row p of KV head h / (n_head / n_head_kv) lives in cell
 * block_tables[attn_table[t] + p / block_size] * block_size + p % block_size.
 * All arithmetic is F32 (K/V values are converted from F16 exactly).
 *
 * Work is split into items (tile, kv head[, split]). A tile is up to T
 * tokens of one block table (set_ubatch grouped them); an item computes the
 * whole query group of its KV head for those tokens, so every K/V chunk it
 * converts from F16 is used by T * group query rows. KV positions are
 * walked in chunks with an online softmax (running max m, running sum l,
 * unnormalised output O rescaled when m grows), so memory stays constant
 * in the context length. When there are fewer (tile, kv head) pairs than
 * threads (a single long decode), the positions are also split and the
 * partial (m, l, O) merged afterwards.
 *
 * Rows with attn_n_kv == 0 attend to nothing and produce zeros.
 */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_simd.h"
#include "quant.h"

/* Splitting positions: at least this many per split, and only while there
 * are fewer (token, kv head) pairs than KILN_CPU_ATTN_SPLIT_PAIRS. */
#define KILN_CPU_ATTN_SPLIT_MIN 256
#define KILN_CPU_ATTN_SPLIT_PAIRS 8
/* Target query rows per tile (T * group), and the number of items below
 * which tiles get smaller. */
#define KILN_CPU_ATTN_ROWS 32
#define KILN_CPU_ATTN_MIN_ITEMS 16

typedef struct {
    uint32_t first;  /* index into ub.order */
    uint32_t count;  /* tokens */
} attn_tile;

typedef struct {
    const kiln_bk_device *dev;
    const kiln_bk_tensor *q;
    kiln_bk_tensor *dst;
    const uint8_t *k, *v;
    uint32_t n_head_kv, group, head_dim;
    float scale;
    size_t kv_row_bytes;
    uint32_t chunk;         /* positions per chunk (multiple of 16) */
    const attn_tile *tiles;
    uint32_t n_tiles;
    uint32_t n_split;
    uint32_t split_len;     /* positions per split (multiple of chunk) */
    int64_t n_items;
    uint8_t *ws;            /* per-thread workspaces */
    size_t ws_stride;
    float *partial;         /* n_split > 1: [n_items][rows_max][2 + D] */
    uint32_t rows_max;
} attn_args;

/* A thread's workspace, carved from attn_args.ws. Row arrays are padded
 * to rp = rows_max rounded up to 16 (one AVX-512 vector of rows). */
typedef struct {
    float *kc, *vc;   /* [chunk][D] converted K and V rows */
    float *s;         /* [chunk] scores, then probabilities (row kernels) */
    float *m, *l;     /* [rp] running max and sum */
    float *o;         /* [rows][D] unnormalised output */
    float *qt;        /* [D][rp] scaled queries, transposed (tile kernel) */
    float *st;        /* [chunk][rp] scores, then probabilities (tile kernel) */
    float *alpha;     /* [rp] rescale factors (tile kernel) */
    int32_t *nkv;     /* [rp] positions each row attends to (tile kernel) */
} attn_ws;

#define KILN_ATTN_WS_REGIONS 10

static uint32_t pad16(uint32_t n) { return (n + 15) & ~15u; }

static size_t ws_floats(uint32_t chunk, uint32_t rows, uint32_t d, size_t *off) {
    /* offsets in floats, each region 64-byte aligned (16 floats) */
    const uint32_t rp = pad16(rows);
    size_t n = 0;
#define KILN_REGION(i, len) (off[i] = n, n += ((size_t)(len) + 15) & ~(size_t)15)
    KILN_REGION(0, (size_t)chunk * d);
    KILN_REGION(1, (size_t)chunk * d);
    KILN_REGION(2, chunk);
    KILN_REGION(3, rp);
    KILN_REGION(4, rp);
    KILN_REGION(5, (size_t)rows * d);
    KILN_REGION(6, (size_t)d * rp);
    KILN_REGION(7, (size_t)chunk * rp);
    KILN_REGION(8, rp);
    KILN_REGION(9, rp);
#undef KILN_REGION
    return n;
}

static attn_ws ws_get(const attn_args *a, int ith) {
    size_t off[KILN_ATTN_WS_REGIONS];
    ws_floats(a->chunk, a->rows_max, a->head_dim, off);
    float *base = (float *)(a->ws + (size_t)ith * a->ws_stride);
    attn_ws w = {base + off[0], base + off[1], base + off[2], base + off[3], base + off[4],
                 base + off[5], base + off[6], base + off[7], base + off[8], (int32_t *)(base + off[9])};
    return w;
}

/* ---- K/V chunk conversion ---- */

/* Cells of positions p0.. walked through the block table without a
 * division per position. */
typedef struct {
    const int32_t *table;
    uint32_t bs, blk, in;
} cell_walk;

static inline size_t cell_next(cell_walk *cw) {
    size_t cell = (size_t)cw->table[cw->blk] * cw->bs + cw->in;
    if (++cw->in == cw->bs) {
        cw->in = 0;
        cw->blk++;
    }
    return cell;
}

#ifdef KILN_CPU_X86
static KILN_AVX2 void convert_avx2(const uint8_t *cache, size_t row_bytes, size_t off, cell_walk cw, uint32_t n,
                                   uint32_t d, float *out) {
    for (uint32_t c = 0; c < n; c++, out += d) {
        const uint16_t *src = (const uint16_t *)(cache + cell_next(&cw) * row_bytes) + off;
        uint32_t i = 0;
        for (; i + 8 <= d; i += 8)
            _mm256_store_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        for (; i < d; i++) out[i] = _cvtsh_ss(src[i]);
    }
}

static KILN_AVX512 void convert_avx512(const uint8_t *cache, size_t row_bytes, size_t off, cell_walk cw,
                                       uint32_t n, uint32_t d, float *out) {
    for (uint32_t c = 0; c < n; c++, out += d) {
        const uint16_t *src = (const uint16_t *)(cache + cell_next(&cw) * row_bytes) + off;
        for (uint32_t i = 0; i < d; i += 16) /* d % 16 == 0 on this path */
            _mm512_store_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    }
}
#endif

/* Converts K or V rows of positions p0..p0+n-1 (KV head g) to F32 rows of
 * d values, then zeroes rows up to the next multiple of 16: the SIMD
 * kernels read whole groups of positions. */
static void convert_rows(const attn_args *a, const uint8_t *cache, const int32_t *table, uint32_t g,
                         uint32_t p0, uint32_t n, float *out) {
    const uint32_t d = a->head_dim, bs = a->dev->ub.block_size;
    cell_walk cw = {table, bs, p0 / bs, p0 % bs};
    const size_t off = (size_t)g * d;
#ifdef KILN_CPU_X86
    if (a->dev->isa >= KILN_CPU_ISA_AVX512 && d % 16 == 0) convert_avx512(cache, a->kv_row_bytes, off, cw, n, d, out);
    else if (a->dev->isa >= KILN_CPU_ISA_AVX2 && d % 8 == 0) convert_avx2(cache, a->kv_row_bytes, off, cw, n, d, out);
    else
#endif
        for (uint32_t c = 0; c < n; c++) {
            const uint16_t *src = (const uint16_t *)(cache + cell_next(&cw) * a->kv_row_bytes) + off;
            for (uint32_t i = 0; i < d; i++) out[(size_t)c * d + i] = kiln_fp16_to_fp32(src[i]);
        }
    uint32_t n16 = (n + 15) & ~15u;
    if (n16 > n) memset(out + (size_t)n * d, 0, (size_t)(n16 - n) * d * sizeof(float));
}

/* ---- one query row against one chunk: scalar ---- */

static void row_chunk_scalar(const float *q, const float *kc, const float *vc, uint32_t n, uint32_t d,
                             float scale, float *s, float *m, float *l, float *o) {
    float mx = -INFINITY;
    for (uint32_t c = 0; c < n; c++) {
        const float *k = kc + (size_t)c * d;
        float acc = 0.0f;
        for (uint32_t i = 0; i < d; i++) acc += q[i] * k[i];
        s[c] = acc * scale;
        if (s[c] > mx) mx = s[c];
    }
    if (mx > *m) {
        float alpha = expf(*m - mx); /* 0 on the first chunk (m = -inf) */
        *l *= alpha;
        for (uint32_t i = 0; i < d; i++) o[i] *= alpha;
        *m = mx;
    }
    float sum = 0.0f;
    for (uint32_t c = 0; c < n; c++) {
        s[c] = expf(s[c] - *m);
        sum += s[c];
    }
    *l += sum;
    for (uint32_t c = 0; c < n; c++) {
        const float *v = vc + (size_t)c * d;
        const float p = s[c];
        for (uint32_t i = 0; i < d; i++) o[i] += p * v[i];
    }
}

/* ---- one query row against one chunk: AVX2 (d % 8 == 0) ---- */

#ifdef KILN_CPU_X86
static KILN_AVX2 void row_chunk_avx2(const float *q, const float *kc, const float *vc, uint32_t n,
                                     uint32_t d, float scale, float *s, float *m, float *l, float *o) {
    const uint32_t n8 = (n + 7) & ~7u;
    const __m256 vscale = _mm256_set1_ps(scale);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    /* scores, eight positions at a time; K rows past n are zeros */
    for (uint32_t c = 0; c < n8; c += 8) {
        const float *k = kc + (size_t)c * d;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(),
               a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
        for (uint32_t i = 0; i < d; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + i), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + d + i), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 2 * (size_t)d + i), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 3 * (size_t)d + i), a3);
            a4 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 4 * (size_t)d + i), a4);
            a5 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 5 * (size_t)d + i), a5);
            a6 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 6 * (size_t)d + i), a6);
            a7 = _mm256_fmadd_ps(qv, _mm256_load_ps(k + 7 * (size_t)d + i), a7);
        }
        __m256 sc = _mm256_mul_ps(kiln_avx2_hsum8(a0, a1, a2, a3, a4, a5, a6, a7), vscale);
        if (c + 8 > n) { /* mask positions past n */
            const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            __m256i lim = _mm256_set1_epi32((int)(n - c));
            __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, idx));
            sc = _mm256_blendv_ps(ninf, sc, keep);
        }
        _mm256_store_ps(s + c, sc);
        vmax = _mm256_max_ps(vmax, sc);
    }
    const float mx = kiln_avx2_hmax(vmax);
    if (mx > *m) {
        const float alpha = expf(*m - mx); /* 0 on the first chunk (m = -inf) */
        *l *= alpha;
        const __m256 va = _mm256_set1_ps(alpha);
        for (uint32_t i = 0; i < d; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), va));
        *m = mx;
    }
    /* probabilities; masked positions are exactly 0 */
    const __m256 vm = _mm256_set1_ps(*m);
    __m256 vsum = _mm256_setzero_ps();
    for (uint32_t c = 0; c < n8; c += 8) {
        __m256 sc = _mm256_load_ps(s + c);
        __m256 p = kiln_avx2_exp(_mm256_sub_ps(sc, vm));
        p = _mm256_and_ps(p, _mm256_cmp_ps(sc, ninf, _CMP_NEQ_OQ));
        _mm256_store_ps(s + c, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    *l += kiln_avx2_hsum(vsum);
    /* o += sum_c p_c v_c, 32 output values in registers at a time */
    uint32_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m256 o0 = _mm256_loadu_ps(o + i), o1 = _mm256_loadu_ps(o + i + 8);
        __m256 o2 = _mm256_loadu_ps(o + i + 16), o3 = _mm256_loadu_ps(o + i + 24);
        for (uint32_t c = 0; c < n; c++) {
            const float *v = vc + (size_t)c * d + i;
            __m256 p = _mm256_broadcast_ss(s + c);
            o0 = _mm256_fmadd_ps(p, _mm256_load_ps(v), o0);
            o1 = _mm256_fmadd_ps(p, _mm256_load_ps(v + 8), o1);
            o2 = _mm256_fmadd_ps(p, _mm256_load_ps(v + 16), o2);
            o3 = _mm256_fmadd_ps(p, _mm256_load_ps(v + 24), o3);
        }
        _mm256_storeu_ps(o + i, o0);
        _mm256_storeu_ps(o + i + 8, o1);
        _mm256_storeu_ps(o + i + 16, o2);
        _mm256_storeu_ps(o + i + 24, o3);
    }
    for (; i < d; i += 8) {
        __m256 o0 = _mm256_loadu_ps(o + i);
        for (uint32_t c = 0; c < n; c++)
            o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + c), _mm256_load_ps(vc + (size_t)c * d + i), o0);
        _mm256_storeu_ps(o + i, o0);
    }
}
#endif

/* ---- a tile of query rows against one chunk: AVX-512 (d % 16 == 0) ----
 *
 * Scores are computed transposed, S^T[c][r] = sum_i K[c][i] * Q^T[i][r]:
 * broadcasting a K value against a vector of 16 rows needs no horizontal
 * sums, and Q^T is built once per item. The softmax then runs down the
 * columns (one lane per row), and O += P V uses the K/V chunk once for
 * two rows at a time. */

#ifdef KILN_CPU_X86
/* S^T for four positions c..c+3 and 32 rows r0..r0+31 */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk4x32(const float *qt, uint32_t rp, uint32_t r0, const float *k, uint32_t d, float *st) {
    __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps(), a10 = _mm512_setzero_ps(),
           a11 = _mm512_setzero_ps(), a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps(),
           a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
    const float *q = qt + r0;
    for (uint32_t i = 0; i < d; i++, q += rp) {
        const __m512 q0 = _mm512_load_ps(q), q1 = _mm512_load_ps(q + 16);
        __m512 b = _mm512_set1_ps(k[i]);
        a00 = _mm512_fmadd_ps(q0, b, a00), a01 = _mm512_fmadd_ps(q1, b, a01);
        b = _mm512_set1_ps(k[d + i]);
        a10 = _mm512_fmadd_ps(q0, b, a10), a11 = _mm512_fmadd_ps(q1, b, a11);
        b = _mm512_set1_ps(k[2 * d + i]);
        a20 = _mm512_fmadd_ps(q0, b, a20), a21 = _mm512_fmadd_ps(q1, b, a21);
        b = _mm512_set1_ps(k[3 * d + i]);
        a30 = _mm512_fmadd_ps(q0, b, a30), a31 = _mm512_fmadd_ps(q1, b, a31);
    }
    float *o = st + r0;
    _mm512_store_ps(o, a00), _mm512_store_ps(o + 16, a01);
    o += rp;
    _mm512_store_ps(o, a10), _mm512_store_ps(o + 16, a11);
    o += rp;
    _mm512_store_ps(o, a20), _mm512_store_ps(o + 16, a21);
    o += rp;
    _mm512_store_ps(o, a30), _mm512_store_ps(o + 16, a31);
}

/* the same for 16 rows */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk4x16(const float *qt, uint32_t rp, uint32_t r0, const float *k, uint32_t d, float *st) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const float *q = qt + r0;
    for (uint32_t i = 0; i < d; i++, q += rp) {
        const __m512 q0 = _mm512_load_ps(q);
        a0 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[i]), a0);
        a1 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[d + i]), a1);
        a2 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[2 * d + i]), a2);
        a3 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[3 * d + i]), a3);
    }
    float *o = st + r0;
    _mm512_store_ps(o, a0);
    _mm512_store_ps(o + rp, a1);
    _mm512_store_ps(o + 2 * (size_t)rp, a2);
    _mm512_store_ps(o + 3 * (size_t)rp, a3);
}

/* [sum(a0), ..., sum(a15)]: sixteen horizontal sums at once, by halving
 * the vectors three times (256-bit, 128-bit, then within 128 bits). */
#define KILN_HALF256(x, y) _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xee))
#define KILN_HALF128(x, y) _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xdd))
static inline KILN_AVX512 __attribute__((always_inline)) __m512
hsum16(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 a4, __m512 a5, __m512 a6, __m512 a7, __m512 a8,
       __m512 a9, __m512 a10, __m512 a11, __m512 a12, __m512 a13, __m512 a14, __m512 a15) {
    /* b_i: low half from a_i, high half from a_(i+8) */
    const __m512 b0 = KILN_HALF256(a0, a8), b1 = KILN_HALF256(a1, a9), b2 = KILN_HALF256(a2, a10),
                 b3 = KILN_HALF256(a3, a11), b4 = KILN_HALF256(a4, a12), b5 = KILN_HALF256(a5, a13),
                 b6 = KILN_HALF256(a6, a14), b7 = KILN_HALF256(a7, a15);
    /* c_i quads: a_i, a_(i+8), a_(i+4), a_(i+12) */
    const __m512 c0 = KILN_HALF128(b0, b4), c1 = KILN_HALF128(b1, b5), c2 = KILN_HALF128(b2, b6),
                 c3 = KILN_HALF128(b3, b7);
    const __m512 e0 = _mm512_add_ps(_mm512_unpacklo_ps(c0, c1), _mm512_unpackhi_ps(c0, c1));
    const __m512 e1 = _mm512_add_ps(_mm512_unpacklo_ps(c2, c3), _mm512_unpackhi_ps(c2, c3));
    /* quads: [a0..a3], [a8..a11], [a4..a7], [a12..a15] */
    const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(e0, e1, 0x44), _mm512_shuffle_ps(e0, e1, 0xee));
    return _mm512_shuffle_f32x4(f, f, _MM_SHUFFLE(3, 1, 2, 0));
}
#undef KILN_HALF256
#undef KILN_HALF128

/* Scores of one query row (row-major, scaled) against 16 K rows, by dot
 * products. The sixteen accumulators are spelled out so that they stay in
 * registers. */
static inline KILN_AVX512 __attribute__((always_inline)) __m512 qk_dot16(const float *q, const float *k, uint32_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
           a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    for (uint32_t i = 0; i < d; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
        const float *kk = k + i;
#define KILN_ACC(j) a##j = _mm512_fmadd_ps(qv, _mm512_load_ps(kk + (size_t)(j) * d), a##j)
        KILN_ACC(0), KILN_ACC(1), KILN_ACC(2), KILN_ACC(3), KILN_ACC(4), KILN_ACC(5), KILN_ACC(6), KILN_ACC(7);
        KILN_ACC(8), KILN_ACC(9), KILN_ACC(10), KILN_ACC(11), KILN_ACC(12), KILN_ACC(13), KILN_ACC(14), KILN_ACC(15);
#undef KILN_ACC
    }
    return hsum16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15);
}

/* O_r = O_r * alpha_r + sum_c P[r][c] V[c] for rows 0..rows-1, two rows at
 * a time so that each V row loaded serves both. P[r][c] is at
 * p[r * p_row + c * p_pos]; a row pair walks the positions either attends
 * to (ne), where the other's P is 0. */
static inline KILN_AVX512 __attribute__((always_inline)) void
pv_avx512(attn_ws *w, uint32_t rows, uint32_t p0, uint32_t n, uint32_t d, const float *p, size_t p_row,
          size_t p_pos) {
    for (uint32_t r = 0; r < rows; r += 2) {
        const bool pair = r + 1 < rows;
        int32_t last = w->nkv[r];
        if (pair && w->nkv[r + 1] > last) last = w->nkv[r + 1];
        uint32_t ne = last <= (int32_t)p0 ? 0 : (uint32_t)last - p0 < n ? (uint32_t)last - p0 : n;
        float *o0 = w->o + (size_t)r * d, *o1 = pair ? o0 + d : o0;
        const __m512 al0 = _mm512_set1_ps(w->alpha[r]), al1 = _mm512_set1_ps(pair ? w->alpha[r + 1] : 1.0f);
        const float *p0s = p + (size_t)r * p_row, *p1s = pair ? p0s + p_row : p0s;
        uint32_t i = 0;
        for (; i + 64 <= d; i += 64) {
            __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i), al0);
            __m512 x1 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 16), al0);
            __m512 x2 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 32), al0);
            __m512 x3 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 48), al0);
            __m512 y0 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i), al1);
            __m512 y1 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 16), al1);
            __m512 y2 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 32), al1);
            __m512 y3 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 48), al1);
            for (uint32_t c = 0; c < ne; c++) {
                const float *v = w->vc + (size_t)c * d + i;
                const __m512 v0 = _mm512_load_ps(v), v1 = _mm512_load_ps(v + 16);
                const __m512 v2 = _mm512_load_ps(v + 32), v3 = _mm512_load_ps(v + 48);
                const __m512 pa = _mm512_set1_ps(p0s[c * p_pos]), pb = _mm512_set1_ps(p1s[c * p_pos]);
                x0 = _mm512_fmadd_ps(pa, v0, x0), x1 = _mm512_fmadd_ps(pa, v1, x1);
                x2 = _mm512_fmadd_ps(pa, v2, x2), x3 = _mm512_fmadd_ps(pa, v3, x3);
                y0 = _mm512_fmadd_ps(pb, v0, y0), y1 = _mm512_fmadd_ps(pb, v1, y1);
                y2 = _mm512_fmadd_ps(pb, v2, y2), y3 = _mm512_fmadd_ps(pb, v3, y3);
            }
            /* a lone last row (o1 == o0) is written twice with equal values */
            _mm512_storeu_ps(o1 + i, y0), _mm512_storeu_ps(o1 + i + 16, y1);
            _mm512_storeu_ps(o1 + i + 32, y2), _mm512_storeu_ps(o1 + i + 48, y3);
            _mm512_storeu_ps(o0 + i, x0), _mm512_storeu_ps(o0 + i + 16, x1);
            _mm512_storeu_ps(o0 + i + 32, x2), _mm512_storeu_ps(o0 + i + 48, x3);
        }
        for (; i < d; i += 16) {
            __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i), al0);
            __m512 y0 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i), al1);
            for (uint32_t c = 0; c < ne; c++) {
                const __m512 v0 = _mm512_load_ps(w->vc + (size_t)c * d + i);
                x0 = _mm512_fmadd_ps(_mm512_set1_ps(p0s[c * p_pos]), v0, x0);
                y0 = _mm512_fmadd_ps(_mm512_set1_ps(p1s[c * p_pos]), v0, y0);
            }
            _mm512_storeu_ps(o1 + i, y0);
            _mm512_storeu_ps(o0 + i, x0);
        }
    }
}

/* Fewer than 8 rows (decode): dot-product scores, softmax along each row
 * (16 positions per vector), P row-major in w->st as [rows][chunk]. The
 * queries are row-major and scaled in w->qt. */
static KILN_AVX512 void rows_chunk_avx512(attn_ws *w, uint32_t chunk, uint32_t rows, uint32_t p0, uint32_t n,
                                          uint32_t d) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (uint32_t r = 0; r < rows; r++) {
        float *sr = w->st + (size_t)r * chunk;
        const int32_t nk = w->nkv[r];
        const uint32_t nv = nk <= (int32_t)p0 ? 0 : (uint32_t)nk - p0 < n ? (uint32_t)nk - p0 : n;
        w->alpha[r] = 1.0f;
        /* P is 0 where the row does not attend (its pair partner may) */
        const uint32_t nv16 = (nv + 15) & ~15u;
        if (nv16 < n) memset(sr + nv16, 0, (size_t)(n - nv16) * sizeof(float));
        if (nv == 0) continue;
        const float *q = w->qt + (size_t)r * d;
        __m512 vmax = ninf;
        for (uint32_t c = 0; c < nv; c += 16) {
            __m512 sc = qk_dot16(q, w->kc + (size_t)c * d, d);
            if (c + 16 > nv) sc = _mm512_mask_mov_ps(ninf, (__mmask16)((1u << (nv - c)) - 1), sc);
            _mm512_store_ps(sr + c, sc);
            vmax = _mm512_max_ps(vmax, sc);
        }
        const float mx = _mm512_reduce_max_ps(vmax);
        if (mx > w->m[r]) {
            w->alpha[r] = expf(w->m[r] - mx); /* 0 on the first chunk (m = -inf) */
            w->l[r] *= w->alpha[r];
            w->m[r] = mx;
        }
        const __m512 vm = _mm512_set1_ps(w->m[r]);
        __m512 sum = _mm512_setzero_ps();
        for (uint32_t c = 0; c < nv; c += 16) {
            const __m512 sc = _mm512_load_ps(sr + c);
            const __mmask16 live = _mm512_cmp_ps_mask(sc, ninf, _CMP_NEQ_OQ);
            const __m512 pr = _mm512_maskz_mov_ps(live, kiln_avx512_exp(_mm512_sub_ps(sc, vm)));
            _mm512_store_ps(sr + c, pr);
            sum = _mm512_add_ps(sum, pr);
        }
        w->l[r] += _mm512_reduce_add_ps(sum);
    }
    pv_avx512(w, rows, p0, n, d, w->st, chunk, 1);
}

/* 8 rows or more: transposed scores (see above), softmax down the columns
 * (one lane per row). Q^T is in w->qt. */
static KILN_AVX512 void tile_chunk_avx512(attn_ws *w, uint32_t rp, uint32_t rows, uint32_t p0, uint32_t n,
                                          uint32_t d) {
    /* scores; K rows past n are zeros (convert_rows pads to 16) */
    for (uint32_t c = 0; c < n; c += 4) {
        const float *k = w->kc + (size_t)c * d;
        float *st = w->st + (size_t)c * rp;
        uint32_t r0 = 0;
        for (; r0 + 32 <= rp; r0 += 32) qk4x32(w->qt, rp, r0, k, d, st);
        if (r0 < rp) qk4x16(w->qt, rp, r0, k, d, st);
    }
    /* mask, running max, probabilities, running sum: one lane per row */
    const __m512 ninf = _mm512_set1_ps(-INFINITY), one = _mm512_set1_ps(1.0f);
    for (uint32_t r0 = 0; r0 < rp; r0 += 16) {
        const __m512i nk = _mm512_load_si512((const void *)(w->nkv + r0));
        __m512 vmax = ninf;
        for (uint32_t c = 0; c < n; c++) {
            float *sp = w->st + (size_t)c * rp + r0;
            __mmask16 live = _mm512_cmpgt_epi32_mask(nk, _mm512_set1_epi32((int)(p0 + c)));
            __m512 sc = _mm512_mask_mov_ps(ninf, live, _mm512_load_ps(sp));
            _mm512_store_ps(sp, sc);
            vmax = _mm512_max_ps(vmax, sc);
        }
        const __m512 m_old = _mm512_load_ps(w->m + r0);
        const __m512 m_new = _mm512_max_ps(m_old, vmax);
        const __mmask16 finite = _mm512_cmp_ps_mask(m_new, ninf, _CMP_NEQ_OQ);
        const __m512 alpha = _mm512_mask_mov_ps(one, finite, kiln_avx512_exp(_mm512_sub_ps(m_old, m_new)));
        __m512 sum = _mm512_setzero_ps();
        for (uint32_t c = 0; c < n; c++) {
            float *sp = w->st + (size_t)c * rp + r0;
            const __m512 sc = _mm512_load_ps(sp);
            const __mmask16 live = _mm512_cmp_ps_mask(sc, ninf, _CMP_NEQ_OQ);
            const __m512 p = _mm512_maskz_mov_ps(live, kiln_avx512_exp(_mm512_sub_ps(sc, m_new)));
            _mm512_store_ps(sp, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_store_ps(w->m + r0, m_new);
        _mm512_store_ps(w->l + r0, _mm512_fmadd_ps(_mm512_load_ps(w->l + r0), alpha, sum));
        _mm512_store_ps(w->alpha + r0, alpha);
    }
    pv_avx512(w, rows, p0, n, d, w->st, 1, rp);
}
#endif

/* ---- one work item ---- */

static void attn_item(attn_args *a, int64_t item, attn_ws *w) {
    const kiln_cpu_ubatch *ub = &a->dev->ub;
    const uint32_t d = a->head_dim, group = a->group;
    const uint32_t split = (uint32_t)(item % a->n_split);
    const int64_t pair = item / a->n_split;
    const uint32_t g = (uint32_t)(pair % a->n_head_kv);
    /* the latest tiles attend to the most positions: hand them out first */
    const attn_tile *tile = &a->tiles[a->n_tiles - 1 - (uint32_t)(pair / a->n_head_kv)];
    const uint32_t rows = tile->count * group;
    const int32_t *order = ub->order + tile->first;
    const int32_t *table = ub->block_tables + ub->attn_table[order[0]];

    int32_t max_kv = 0;
    for (uint32_t j = 0; j < tile->count; j++)
        if (ub->attn_n_kv[order[j]] > max_kv) max_kv = ub->attn_n_kv[order[j]];
    const uint32_t p_begin = split * a->split_len;
    uint32_t p_end = p_begin + a->split_len;
    if (p_end > (uint32_t)max_kv) p_end = (uint32_t)max_kv;

    const uint32_t rp = pad16(rows);
    for (uint32_t r = 0; r < rp; r++) {
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
    }
    memset(w->o, 0, (size_t)rows * d * sizeof(float));
#ifdef KILN_CPU_X86
    const bool simd = a->dev->isa >= KILN_CPU_ISA_AVX2 && d % 8 == 0;
    /* AVX-512: queries scaled once per item, transposed from 8 rows up
     * (the tile kernel broadcasts K values against 16 rows at a time),
     * row-major below (dot products). Padding rows attend to nothing. */
    const bool tile_kernel = a->dev->isa >= KILN_CPU_ISA_AVX512 && d % 16 == 0;
    if (tile_kernel) {
        for (uint32_t r = 0; r < rp; r++) {
            if (r >= rows) {
                w->nkv[r] = 0;
                if (rows >= 8)
                    for (uint32_t i = 0; i < d; i++) w->qt[(size_t)i * rp + r] = 0.0f;
                continue;
            }
            const int32_t t = order[r / group];
            const uint32_t h = g * group + r % group;
            const float *q = (const float *)kiln_cpu_row(a->q, t) + (size_t)h * d;
            w->nkv[r] = ub->attn_n_kv[t];
            if (rows >= 8)
                for (uint32_t i = 0; i < d; i++) w->qt[(size_t)i * rp + r] = q[i] * a->scale;
            else
                for (uint32_t i = 0; i < d; i++) w->qt[(size_t)r * d + i] = q[i] * a->scale;
        }
    }
#endif
    for (uint32_t p0 = p_begin; p0 < p_end; p0 += a->chunk) {
        uint32_t n = p_end - p0 < a->chunk ? p_end - p0 : a->chunk;
        convert_rows(a, a->k, table, g, p0, n, w->kc);
        convert_rows(a, a->v, table, g, p0, n, w->vc);
#ifdef KILN_CPU_X86
        if (tile_kernel) {
            if (rows < 8) rows_chunk_avx512(w, a->chunk, rows, p0, n, d);
            else tile_chunk_avx512(w, rp, rows, p0, n, d);
            continue;
        }
#endif
        for (uint32_t r = 0; r < rows; r++) {
            const int32_t t = order[r / group];
            const int32_t n_kv = ub->attn_n_kv[t];
            if ((int32_t)p0 >= n_kv) continue;
            uint32_t nv = (uint32_t)n_kv - p0 < n ? (uint32_t)n_kv - p0 : n;
            const uint32_t h = g * group + r % group;
            const float *q = (const float *)kiln_cpu_row(a->q, t) + (size_t)h * d;
            float *o = w->o + (size_t)r * d;
#ifdef KILN_CPU_X86
            if (simd) {
                row_chunk_avx2(q, w->kc, w->vc, nv, d, a->scale, w->s, &w->m[r], &w->l[r], o);
                continue;
            }
#endif
            row_chunk_scalar(q, w->kc, w->vc, nv, d, a->scale, w->s, &w->m[r], &w->l[r], o);
        }
    }

    for (uint32_t r = 0; r < rows; r++) {
        const float *o = w->o + (size_t)r * d;
        if (a->n_split > 1) {
            float *pt = a->partial + ((size_t)item * a->rows_max + r) * (2 + d);
            pt[0] = w->m[r];
            pt[1] = w->l[r];
            memcpy(pt + 2, o, (size_t)d * sizeof(float));
            continue;
        }
        const int32_t t = order[r / group];
        const uint32_t h = g * group + r % group;
        float *out = (float *)kiln_cpu_row(a->dst, t) + (size_t)h * d;
        const float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
        for (uint32_t i = 0; i < d; i++) out[i] = o[i] * inv;
    }
}

static void attn_task(void *ctx, int slot, int64_t first, int64_t last) {
    attn_args *a = ctx;
    attn_ws w = ws_get(a, slot);
    for (int64_t item = first; item < last; item++) attn_item(a, item, &w);
}

/* Combines the splits of every (tile, kv head) pair into dst. */
static void attn_merge(attn_args *a) {
    const kiln_cpu_ubatch *ub = &a->dev->ub;
    const uint32_t d = a->head_dim, group = a->group;
    const int64_t n_pairs = a->n_items / a->n_split;
    for (int64_t pair = 0; pair < n_pairs; pair++) {
        const uint32_t g = (uint32_t)(pair % a->n_head_kv);
        const attn_tile *tile = &a->tiles[a->n_tiles - 1 - (uint32_t)(pair / a->n_head_kv)];
        const int32_t *order = ub->order + tile->first;
        for (uint32_t r = 0; r < tile->count * group; r++) {
            const int32_t t = order[r / group];
            const uint32_t h = g * group + r % group;
            float *out = (float *)kiln_cpu_row(a->dst, t) + (size_t)h * d;
            float mx = -INFINITY;
            for (uint32_t s = 0; s < a->n_split; s++) {
                const float *pt = a->partial + ((size_t)(pair * a->n_split + s) * a->rows_max + r) * (2 + d);
                if (pt[1] > 0.0f && pt[0] > mx) mx = pt[0];
            }
            float l = 0.0f;
            for (uint32_t i = 0; i < d; i++) out[i] = 0.0f;
            for (uint32_t s = 0; s < a->n_split; s++) {
                const float *pt = a->partial + ((size_t)(pair * a->n_split + s) * a->rows_max + r) * (2 + d);
                if (!(pt[1] > 0.0f)) continue;
                const float f = expf(pt[0] - mx);
                l += pt[1] * f;
                for (uint32_t i = 0; i < d; i++) out[i] += pt[2 + i] * f;
            }
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            for (uint32_t i = 0; i < d; i++) out[i] *= inv;
        }
    }
}

/* Tiles of at most `per` tokens over the ubatch's runs; returns the count
 * (tiles may be NULL to count only). */
static uint32_t make_tiles(const kiln_cpu_ubatch *ub, uint32_t per, attn_tile *tiles) {
    uint32_t n = 0;
    for (uint32_t r = 0; r < ub->n_runs; r++) {
        for (uint32_t i = ub->run_start[r]; i < ub->run_start[r + 1]; i += per) {
            uint32_t end = ub->run_start[r + 1];
            if (tiles) {
                tiles[n].first = i;
                tiles[n].count = end - i < per ? end - i : per;
            }
            n++;
        }
    }
    return n;
}

kiln_status kiln_cpu_attention(kiln_bk_device *dev, const kiln_bk_tensor *q,
                               const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache,
                               const kiln_bk_attn *attn, kiln_bk_tensor *dst) {
    kiln_status st;
    if (!dev || !attn || !k_cache || !v_cache)
        return kiln_error(KILN_E_INVALID_ARG, "cpu attention: NULL device, parameters or cache");
    kiln_bk_attn p;
    memset(&p, 0, sizeof p);
    memcpy(&p, attn, attn->struct_size < sizeof p ? attn->struct_size : sizeof p);
    const kiln_cpu_ubatch *ub = &dev->ub;
    if (!ub->set || (!ub->has_attn && ub->n_tokens))
        return kiln_error(KILN_E_INVALID_ARG, "cpu attention: the ubatch has no attention tables");
    if ((st = kiln_cpu_tensor_check(q, KILN_TYPE_F32, "attention", "q")) ||
        (st = kiln_cpu_tensor_check(dst, KILN_TYPE_F32, "attention", "dst")))
        return st;
    if (p.n_head == 0 || p.n_head_kv == 0 || p.head_dim == 0 || p.n_head % p.n_head_kv)
        return kiln_error(KILN_E_INVALID_ARG, "cpu attention: %u heads, %u kv heads, head_dim %u", p.n_head,
                          p.n_head_kv, p.head_dim);
    const int64_t width = (int64_t)p.n_head * p.head_dim;
    if (q->ne[0] != width || dst->ne[0] != width || q->ne[1] != ub->n_tokens || dst->ne[1] != ub->n_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "cpu attention: q %lldx%lld, dst %lldx%lld for %u heads of %u, %u tokens",
                          (long long)q->ne[0], (long long)q->ne[1], (long long)dst->ne[0], (long long)dst->ne[1],
                          p.n_head, p.head_dim, ub->n_tokens);
    const size_t kv_row = (size_t)p.n_head_kv * p.head_dim * sizeof(uint16_t);
    const uint64_t need = (uint64_t)ub->n_cells * kv_row;
    if (k_cache->size < need || v_cache->size < need)
        return kiln_error(KILN_E_INVALID_ARG, "cpu attention: caches of %llu/%llu bytes, %u cells need %llu",
                          (unsigned long long)k_cache->size, (unsigned long long)v_cache->size, ub->n_cells,
                          (unsigned long long)need);
    if (ub->n_tokens == 0) return KILN_OK;
    if (p.head_dim > 16384) return kiln_error(KILN_E_UNSUPPORTED, "cpu attention: head_dim %u", p.head_dim);

    attn_args a;
    memset(&a, 0, sizeof a);
    a.dev = dev;
    a.q = q;
    a.dst = dst;
    a.k = k_cache->data;
    a.v = v_cache->data;
    a.n_head_kv = p.n_head_kv;
    a.group = p.n_head / p.n_head_kv;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.kv_row_bytes = kv_row;
    /* chunk: ~8 KiB of converted K (and as much V), a multiple of 16 */
    uint32_t chunk = 2048 / p.head_dim;
    a.chunk = chunk < 16 ? 16 : chunk > 64 ? 64 : chunk & ~15u;

    /* tokens per tile: about KILN_CPU_ATTN_ROWS query rows, fewer when that
     * would leave too few items to share. Never a function of the thread
     * count: the tiling picks the kernel, and results must not depend on
     * how many threads ran. */
    const int nth = dev->n_threads;
    uint32_t per = KILN_CPU_ATTN_ROWS / a.group;
    if (per < 1) per = 1;
    while (per > 1 && (int64_t)make_tiles(ub, per, NULL) * p.n_head_kv < KILN_CPU_ATTN_MIN_ITEMS) per /= 2;
    a.n_tiles = make_tiles(ub, per, NULL);
    a.rows_max = per * a.group;

    /* Few (token, kv head) pairs and a long context (decode): split the
     * positions too. The split depends on the problem only, never on the
     * thread count or the tiling, so results are identical for any number
     * of threads. */
    const int64_t n_pairs = (int64_t)a.n_tiles * p.n_head_kv;
    const int64_t n_tok_kv = (int64_t)ub->n_tokens * p.n_head_kv;
    a.n_split = 1;
    if (n_tok_kv < KILN_CPU_ATTN_SPLIT_PAIRS && ub->max_n_kv >= 2 * KILN_CPU_ATTN_SPLIT_MIN) {
        int64_t want = (KILN_CPU_ATTN_SPLIT_PAIRS + n_tok_kv - 1) / n_tok_kv;
        int64_t most = ub->max_n_kv / KILN_CPU_ATTN_SPLIT_MIN;
        a.n_split = (uint32_t)(want < most ? want : most);
    }
    uint32_t len = ((uint32_t)ub->max_n_kv + a.n_split - 1) / a.n_split;
    a.split_len = (len + a.chunk - 1) / a.chunk * a.chunk;
    if (a.split_len == 0) a.split_len = a.chunk;
    a.n_items = n_pairs * a.n_split;

    /* scratch: tiles | workspaces | partials */
    size_t off[KILN_ATTN_WS_REGIONS];
    size_t tiles_bytes = kiln_cpu_align_up((size_t)a.n_tiles * sizeof(attn_tile));
    a.ws_stride = kiln_cpu_align_up(ws_floats(a.chunk, a.rows_max, p.head_dim, off) * sizeof(float));
    size_t partial_bytes = 0;
    if (a.n_split > 1) partial_bytes = (size_t)a.n_items * a.rows_max * (2 + p.head_dim) * sizeof(float);
    size_t total = tiles_bytes + a.ws_stride * (size_t)nth + partial_bytes;
    if ((st = kiln_cpu_scratch_reserve(dev, total))) return st;
    attn_tile *tiles = (attn_tile *)dev->scratch;
    make_tiles(ub, per, tiles);
    a.tiles = tiles;
    a.ws = dev->scratch + tiles_bytes;
    a.partial = a.n_split > 1 ? (float *)(a.ws + a.ws_stride * (size_t)nth) : NULL;

    int use = a.n_items < nth ? (int)a.n_items : nth;
    kiln_cpu_threads_for(dev->threads, use, a.n_items, 1, attn_task, &a);
    if (a.n_split > 1) attn_merge(&a);
    return KILN_OK;
}
