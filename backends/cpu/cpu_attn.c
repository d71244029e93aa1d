/*
 * cpu_attn.c - causal attention over the paged F16 KV cache.
 *
 * For each token t and head h: scores s_p = (q . k_p) * scale for the
 * positions p < attn_n_kv[t] of its sequence, softmax, out = sum_p P_p v_p,
 * where K/V row p of KV head h / (n_head / n_head_kv) lives in cell
 * block_tables[attn_table[t] + p / block_size] * block_size + p % block_size.
 * All arithmetic is F32 (K/V values are converted from F16 exactly).
 *
 * One canonical computation per query row. Positions are cut into segments
 * of KILN_CPU_ATTN_SEG positions and each segment into chunks (a power of
 * two set by head_dim); every segment runs an online softmax over its
 * chunks (running max m, running sum l, unnormalised output O rescaled
 * when m grows), and the segments' (m, l, O) are folded left to right. On
 * a given instruction set, a row's result is therefore the same bits
 * whatever else is in the ubatch, however the work is tiled or split, and
 * however many threads run: a prompt decoded in one ubatch or token by
 * token, alone or beside other sequences, attends identically (greedy
 * output with and without speculative drafts depends on it).
 *
 * Work is split into items (tile, kv head[, segment]). A tile is up to T
 * tokens of one block table (set_ubatch grouped them); an item computes
 * the whole query group of its KV head for those tokens, so every K/V chunk
 * converted from F16 serves T * group query rows. When there are few
 * (tile, kv head) pairs for the threads (a long decode), each segment is an
 * item of its own; the partial (m, l, O) are then folded by a final pass,
 * in the same order and with the same arithmetic.
 *
 * Kernels: scalar and AVX2 take one query row at a time (dot products);
 * AVX-512 computes 8+ rows as a tile (scores transposed, K values
 * broadcast against 16 rows) and fewer rows (decode) against a transposed
 * K chunk; both of those accumulate each score over the head dimension in
 * the same order, so the switch between them changes no bits.
 *
 * Rows with attn_n_kv == 0 attend to nothing and produce zeros. dst may be
 * q itself (each item reads only the query rows it writes).
 */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_simd.h"
#include "quant.h"

/* Positions per segment (a multiple of every chunk size). */
#define KILN_CPU_ATTN_SEG 256
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
    uint32_t chunk;         /* positions per chunk: 16, 32 or 64 */
    const attn_tile *tiles;
    uint32_t n_tiles;
    uint32_t n_seg;         /* segments of the longest row */
    bool split;             /* one segment per item, folded by attn_merge */
    int64_t n_items;
    uint8_t *ws;            /* per-thread workspaces */
    size_t ws_stride;
    float *partial;         /* split: [n_items][rows_max][2 + D] */
    uint32_t rows_max;
} attn_args;

/* A thread's workspace, carved from attn_args.ws. Row arrays are padded
 * to rp = rows_max rounded up to 16 (one AVX-512 vector of rows). */
typedef struct {
    float *kc, *vc;   /* [chunk][D] converted K and V rows */
    float *kt;        /* [D][chunk] K transposed (AVX-512, few rows) */
    float *s;         /* [chunk] scores, then probabilities (row kernels) */
    float *m, *l;     /* [rp] the segment's running max and sum */
    float *alpha;     /* [rp] rescale factors (AVX-512) */
    int32_t *nkv;     /* [rp] positions each row attends to */
    float *o;         /* [rows][D] the segment's unnormalised output */
    float *qt;        /* [D][rp] scaled Q^T (tile) or [rows][D] scaled Q (few rows) */
    float *st;        /* [chunk][rp] (tile) or [rows][chunk]: scores, then P */
    float *mr, *lr;   /* [rp] folded over segments */
    float *orun;      /* [rp][D] folded over segments (at item start: scratch for Q) */
} attn_ws;

#define KILN_ATTN_WS_REGIONS 14

static uint32_t pad16(uint32_t n) { return (n + 15) & ~15u; }

static size_t ws_floats(uint32_t chunk, uint32_t rows, uint32_t d, size_t *off) {
    /* offsets in floats, each region 64-byte aligned (16 floats) */
    const uint32_t rp = pad16(rows);
    size_t n = 0;
#define KILN_REGION(i, len) (off[i] = n, n += ((size_t)(len) + 15) & ~(size_t)15)
    KILN_REGION(0, (size_t)chunk * d);
    KILN_REGION(1, (size_t)chunk * d);
    KILN_REGION(2, (size_t)d * chunk);
    KILN_REGION(3, chunk);
    KILN_REGION(4, rp);
    KILN_REGION(5, rp);
    KILN_REGION(6, rp);
    KILN_REGION(7, rp);
    KILN_REGION(8, (size_t)rows * d);
    KILN_REGION(9, (size_t)d * rp);
    KILN_REGION(10, (size_t)chunk * rp);
    KILN_REGION(11, rp);
    KILN_REGION(12, rp);
    KILN_REGION(13, (size_t)rp * d);
#undef KILN_REGION
    return n;
}

static attn_ws ws_get(const attn_args *a, int slot) {
    size_t off[KILN_ATTN_WS_REGIONS];
    ws_floats(a->chunk, a->rows_max, a->head_dim, off);
    float *b = (float *)(a->ws + (size_t)slot * a->ws_stride);
    attn_ws w = {b + off[0], b + off[1], b + off[2], b + off[3], b + off[4],  b + off[5],
                 b + off[6], (int32_t *)(b + off[7]), b + off[8], b + off[9], b + off[10],
                 b + off[11], b + off[12], b + off[13]};
    return w;
}

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

/* ---- AVX-512 (d % 16 == 0) ----
 *
 * Tiles of 8+ rows: scores are computed transposed, S^T[c][r] = sum_i
 * K[c][i] * Q^T[i][r], broadcasting K values against 16 rows (no
 * horizontal sums); the softmax runs down the columns, one lane per row.
 * Fewer rows: S[r][c] = sum_i Q[r][i] * K^T[i][c], broadcasting Q values
 * against 16 positions; the softmax runs along the rows. Either way each
 * score is one FMA chain over i = 0..d-1 from 0, the running sums add the
 * probabilities in position order, and the rescale factors come from the
 * same vector code: the two kernels agree bit for bit. */

#ifdef KILN_CPU_X86
/* S^T for four positions c..c+3 and 32 rows r0..r0+31 */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk4x32(const float *qt, uint32_t rp, uint32_t r0, const float *k, uint32_t d, float *st) {
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
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

/* S^T for eight positions c..c+7 and 16 rows r0..r0+15 */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk8x16(const float *qt, uint32_t rp, uint32_t r0, const float *k, uint32_t d, float *st) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const float *q = qt + r0;
    for (uint32_t i = 0; i < d; i++, q += rp) {
        const __m512 q0 = _mm512_load_ps(q);
        a0 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[i]), a0);
        a1 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[d + i]), a1);
        a2 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[2 * d + i]), a2);
        a3 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[3 * d + i]), a3);
        a4 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[4 * d + i]), a4);
        a5 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[5 * d + i]), a5);
        a6 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[6 * d + i]), a6);
        a7 = _mm512_fmadd_ps(q0, _mm512_set1_ps(k[7 * d + i]), a7);
    }
    float *o = st + r0;
    _mm512_store_ps(o, a0);
    _mm512_store_ps(o + rp, a1);
    _mm512_store_ps(o + 2 * (size_t)rp, a2);
    _mm512_store_ps(o + 3 * (size_t)rp, a3);
    _mm512_store_ps(o + 4 * (size_t)rp, a4);
    _mm512_store_ps(o + 5 * (size_t)rp, a5);
    _mm512_store_ps(o + 6 * (size_t)rp, a6);
    _mm512_store_ps(o + 7 * (size_t)rp, a7);
}

/* out[j][i] = in[i][j] for a 16x16 block (leading dimensions in floats,
 * multiples of 16). Spelled out so that the compiler keeps every vector
 * in a register. */
static inline KILN_AVX512 __attribute__((always_inline)) void
transpose16(const float *in, size_t ld_in, float *out, size_t ld_out) {
#define KILN_LD(i) const __m512 r##i = _mm512_load_ps(in + (size_t)(i) * ld_in)
    KILN_LD(0); KILN_LD(1); KILN_LD(2); KILN_LD(3); KILN_LD(4); KILN_LD(5); KILN_LD(6); KILN_LD(7);
    KILN_LD(8); KILN_LD(9); KILN_LD(10); KILN_LD(11); KILN_LD(12); KILN_LD(13); KILN_LD(14); KILN_LD(15);
#undef KILN_LD
    /* pairs of rows interleaved */
#define KILN_UNPACK(a, b) const __m512 t##a = _mm512_unpacklo_ps(r##a, r##b), t##b = _mm512_unpackhi_ps(r##a, r##b)
    KILN_UNPACK(0, 1); KILN_UNPACK(2, 3); KILN_UNPACK(4, 5); KILN_UNPACK(6, 7);
    KILN_UNPACK(8, 9); KILN_UNPACK(10, 11); KILN_UNPACK(12, 13); KILN_UNPACK(14, 15);
#undef KILN_UNPACK
    /* groups of four rows: each 128-bit lane holds one column's four values */
#define KILN_SHUF(a, b, c, d)                                                                    \
    const __m512 u##a = _mm512_shuffle_ps(t##a, t##c, 0x44), u##b = _mm512_shuffle_ps(t##a, t##c, 0xee), \
                 u##c = _mm512_shuffle_ps(t##b, t##d, 0x44), u##d = _mm512_shuffle_ps(t##b, t##d, 0xee)
    KILN_SHUF(0, 1, 2, 3); KILN_SHUF(4, 5, 6, 7); KILN_SHUF(8, 9, 10, 11); KILN_SHUF(12, 13, 14, 15);
#undef KILN_SHUF
    /* groups of eight rows, then sixteen: 128-bit lanes move into place */
#define KILN_LANE(a, b, x, y) \
    const __m512 v##a = _mm512_shuffle_f32x4(u##x, u##y, 0x88), v##b = _mm512_shuffle_f32x4(u##x, u##y, 0xdd)
    KILN_LANE(0, 4, 0, 4); KILN_LANE(1, 5, 1, 5); KILN_LANE(2, 6, 2, 6); KILN_LANE(3, 7, 3, 7);
    KILN_LANE(8, 12, 8, 12); KILN_LANE(9, 13, 9, 13); KILN_LANE(10, 14, 10, 14); KILN_LANE(11, 15, 11, 15);
#undef KILN_LANE
#define KILN_ST(j, k)                                                                           \
    _mm512_store_ps(out + (size_t)(j) * ld_out, _mm512_shuffle_f32x4(v##j, v##k, 0x88)),        \
        _mm512_store_ps(out + (size_t)(k) * ld_out, _mm512_shuffle_f32x4(v##j, v##k, 0xdd))
    KILN_ST(0, 8); KILN_ST(1, 9); KILN_ST(2, 10); KILN_ST(3, 11);
    KILN_ST(4, 12); KILN_ST(5, 13); KILN_ST(6, 14); KILN_ST(7, 15);
#undef KILN_ST
}

/* S for up to four rows (q0..q3, scaled, row-major) and 32 positions
 * c..c+31 from K^T (eight independent FMA chains keep both FMA pipes
 * busy); rows past nr are computed from q0 and dropped. */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk_t4x32(const float *q0, const float *q1, const float *q2, const float *q3, uint32_t nr, const float *kt,
         uint32_t chunk, uint32_t d, float *s, uint32_t ld_s) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (uint32_t i = 0; i < d; i++, kt += chunk) {
        const __m512 k0 = _mm512_load_ps(kt), k1 = _mm512_load_ps(kt + 16);
        __m512 q = _mm512_set1_ps(q0[i]);
        a0 = _mm512_fmadd_ps(q, k0, a0), b0 = _mm512_fmadd_ps(q, k1, b0);
        q = _mm512_set1_ps(q1[i]);
        a1 = _mm512_fmadd_ps(q, k0, a1), b1 = _mm512_fmadd_ps(q, k1, b1);
        q = _mm512_set1_ps(q2[i]);
        a2 = _mm512_fmadd_ps(q, k0, a2), b2 = _mm512_fmadd_ps(q, k1, b2);
        q = _mm512_set1_ps(q3[i]);
        a3 = _mm512_fmadd_ps(q, k0, a3), b3 = _mm512_fmadd_ps(q, k1, b3);
    }
    _mm512_store_ps(s, a0), _mm512_store_ps(s + 16, b0);
    if (nr > 1) _mm512_store_ps(s + ld_s, a1), _mm512_store_ps(s + ld_s + 16, b1);
    if (nr > 2) _mm512_store_ps(s + 2 * (size_t)ld_s, a2), _mm512_store_ps(s + 2 * (size_t)ld_s + 16, b2);
    if (nr > 3) _mm512_store_ps(s + 3 * (size_t)ld_s, a3), _mm512_store_ps(s + 3 * (size_t)ld_s + 16, b3);
}

/* the same for 16 positions */
static inline KILN_AVX512 __attribute__((always_inline)) void
qk_t4(const float *q0, const float *q1, const float *q2, const float *q3, uint32_t nr, const float *kt,
      uint32_t chunk, uint32_t d, float *s, uint32_t ld_s) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (uint32_t i = 0; i < d; i++, kt += chunk) {
        const __m512 kv = _mm512_load_ps(kt);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[i]), kv, a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[i]), kv, a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[i]), kv, a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[i]), kv, a3);
    }
    _mm512_store_ps(s, a0);
    if (nr > 1) _mm512_store_ps(s + ld_s, a1);
    if (nr > 2) _mm512_store_ps(s + 2 * (size_t)ld_s, a2);
    if (nr > 3) _mm512_store_ps(s + 3 * (size_t)ld_s, a3);
}

static inline uint32_t attended(int32_t nkv, uint32_t p0, uint32_t n) {
    return nkv <= (int32_t)p0 ? 0 : (uint32_t)nkv - p0 < n ? (uint32_t)nkv - p0 : n;
}

/* O_r = O_r * alpha_r + sum_c P[r][c] V[c] over the positions row r
 * attends to, two rows at a time so that each V row loaded serves both.
 * P[r][c] is at p[r * p_row + c * p_pos]. */
static inline KILN_AVX512 __attribute__((always_inline)) void
pv_avx512(attn_ws *w, uint32_t rows, uint32_t p0, uint32_t n, uint32_t d, const float *p, size_t p_row,
          size_t p_pos) {
    for (uint32_t r = 0; r < rows; r += 2) {
        const bool pair = r + 1 < rows;
        const uint32_t n0 = attended(w->nkv[r], p0, n), n1 = pair ? attended(w->nkv[r + 1], p0, n) : 0;
        if (n0 == 0 && n1 == 0) continue; /* alpha is 1 for both: nothing changes */
        const uint32_t both = n0 < n1 ? n0 : n1;
        float *o0 = w->o + (size_t)r * d, *o1 = pair ? o0 + d : o0;
        const __m512 al0 = _mm512_set1_ps(w->alpha[r]), al1 = _mm512_set1_ps(pair ? w->alpha[r + 1] : 1.0f);
        const float *p0s = p + (size_t)r * p_row, *p1s = pair ? p0s + p_row : p0s;
        uint32_t i = 0;
        for (; i + 64 <= d; i += 64) {
            const float *v = w->vc + i;
            __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i), al0);
            __m512 x1 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 16), al0);
            __m512 x2 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 32), al0);
            __m512 x3 = _mm512_mul_ps(_mm512_loadu_ps(o0 + i + 48), al0);
            __m512 y0 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i), al1);
            __m512 y1 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 16), al1);
            __m512 y2 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 32), al1);
            __m512 y3 = _mm512_mul_ps(_mm512_loadu_ps(o1 + i + 48), al1);
            uint32_t c = 0;
            for (; c < both; c++) {
                const float *vv = v + (size_t)c * d;
                const __m512 v0 = _mm512_load_ps(vv), v1 = _mm512_load_ps(vv + 16);
                const __m512 v2 = _mm512_load_ps(vv + 32), v3 = _mm512_load_ps(vv + 48);
                const __m512 pa = _mm512_set1_ps(p0s[c * p_pos]), pb = _mm512_set1_ps(p1s[c * p_pos]);
                x0 = _mm512_fmadd_ps(pa, v0, x0), x1 = _mm512_fmadd_ps(pa, v1, x1);
                x2 = _mm512_fmadd_ps(pa, v2, x2), x3 = _mm512_fmadd_ps(pa, v3, x3);
                y0 = _mm512_fmadd_ps(pb, v0, y0), y1 = _mm512_fmadd_ps(pb, v1, y1);
                y2 = _mm512_fmadd_ps(pb, v2, y2), y3 = _mm512_fmadd_ps(pb, v3, y3);
            }
            for (uint32_t c0 = c; c0 < n0; c0++) {
                const float *vv = v + (size_t)c0 * d;
                const __m512 pa = _mm512_set1_ps(p0s[c0 * p_pos]);
                x0 = _mm512_fmadd_ps(pa, _mm512_load_ps(vv), x0), x1 = _mm512_fmadd_ps(pa, _mm512_load_ps(vv + 16), x1);
                x2 = _mm512_fmadd_ps(pa, _mm512_load_ps(vv + 32), x2), x3 = _mm512_fmadd_ps(pa, _mm512_load_ps(vv + 48), x3);
            }
            for (uint32_t c1 = c; c1 < n1; c1++) {
                const float *vv = v + (size_t)c1 * d;
                const __m512 pb = _mm512_set1_ps(p1s[c1 * p_pos]);
                y0 = _mm512_fmadd_ps(pb, _mm512_load_ps(vv), y0), y1 = _mm512_fmadd_ps(pb, _mm512_load_ps(vv + 16), y1);
                y2 = _mm512_fmadd_ps(pb, _mm512_load_ps(vv + 32), y2), y3 = _mm512_fmadd_ps(pb, _mm512_load_ps(vv + 48), y3);
            }
            if (pair) {
                _mm512_storeu_ps(o1 + i, y0), _mm512_storeu_ps(o1 + i + 16, y1);
                _mm512_storeu_ps(o1 + i + 32, y2), _mm512_storeu_ps(o1 + i + 48, y3);
            }
            _mm512_storeu_ps(o0 + i, x0), _mm512_storeu_ps(o0 + i + 16, x1);
            _mm512_storeu_ps(o0 + i + 32, x2), _mm512_storeu_ps(o0 + i + 48, x3);
        }
        for (; i < d; i += 16) {
            const float *v = w->vc + i;
            __m512 x = _mm512_mul_ps(_mm512_loadu_ps(o0 + i), al0);
            __m512 y = _mm512_mul_ps(_mm512_loadu_ps(o1 + i), al1);
            uint32_t c = 0;
            for (; c < both; c++) {
                const __m512 vv = _mm512_load_ps(v + (size_t)c * d);
                x = _mm512_fmadd_ps(_mm512_set1_ps(p0s[c * p_pos]), vv, x);
                y = _mm512_fmadd_ps(_mm512_set1_ps(p1s[c * p_pos]), vv, y);
            }
            for (uint32_t c0 = c; c0 < n0; c0++)
                x = _mm512_fmadd_ps(_mm512_set1_ps(p0s[c0 * p_pos]), _mm512_load_ps(v + (size_t)c0 * d), x);
            for (uint32_t c1 = c; c1 < n1; c1++)
                y = _mm512_fmadd_ps(_mm512_set1_ps(p1s[c1 * p_pos]), _mm512_load_ps(v + (size_t)c1 * d), y);
            if (pair) _mm512_storeu_ps(o1 + i, y);
            _mm512_storeu_ps(o0 + i, x);
        }
    }
}

/* m, alpha and l of 16 rows from their chunk maxima and probability sums */
static inline KILN_AVX512 __attribute__((always_inline)) __m512 update_max(attn_ws *w, uint32_t r0, __m512 vmax) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512 m_old = _mm512_load_ps(w->m + r0);
    const __m512 m_new = _mm512_max_ps(m_old, vmax);
    const __mmask16 finite = _mm512_cmp_ps_mask(m_new, ninf, _CMP_NEQ_OQ);
    _mm512_store_ps(w->alpha + r0,
                    _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), finite, kiln_avx512_exp(_mm512_sub_ps(m_old, m_new))));
    _mm512_store_ps(w->m + r0, m_new);
    return m_new;
}

/* probabilities of one vector of scores: exactly 0 where masked (-inf) */
static inline KILN_AVX512 __attribute__((always_inline)) __m512 probs(__m512 sc, __m512 m) {
    const __mmask16 live = _mm512_cmp_ps_mask(sc, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    return _mm512_maskz_mov_ps(live, kiln_avx512_exp(_mm512_sub_ps(sc, m)));
}

/* Fewer than 8 rows. w->qt holds the scaled rows, row-major; w->st gets
 * S, then P, as [rows][chunk]. */
static KILN_AVX512 void rows_chunk_avx512(attn_ws *w, uint32_t chunk, uint32_t rows, uint32_t p0, uint32_t n,
                                          uint32_t d) {
    const uint32_t n16 = pad16(n); /* K rows past n are zeros */
    for (uint32_t c = 0; c < n16; c += 16)
        for (uint32_t i = 0; i < d; i += 16) transpose16(w->kc + (size_t)c * d + i, d, w->kt + (size_t)i * chunk + c, chunk);
    for (uint32_t r0 = 0; r0 < rows; r0 += 4) {
        const uint32_t nr = rows - r0 < 4 ? rows - r0 : 4;
        const float *q0 = w->qt + (size_t)r0 * d;
        const float *q1 = nr > 1 ? q0 + d : q0, *q2 = nr > 2 ? q0 + 2 * (size_t)d : q0;
        const float *q3 = nr > 3 ? q0 + 3 * (size_t)d : q0;
        uint32_t c = 0;
        for (; c + 32 <= n16; c += 32)
            qk_t4x32(q0, q1, q2, q3, nr, w->kt + c, chunk, d, w->st + (size_t)r0 * chunk + c, chunk);
        if (c < n16) qk_t4(q0, q1, q2, q3, nr, w->kt + c, chunk, d, w->st + (size_t)r0 * chunk + c, chunk);
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    float mx[16] __attribute__((aligned(64)));
    for (int r = 0; r < 16; r++) mx[r] = -INFINITY;
    for (uint32_t r = 0; r < rows; r++) {
        float *sr = w->st + (size_t)r * chunk;
        const uint32_t nv = attended(w->nkv[r], p0, n);
        __m512 vmax = ninf;
        for (uint32_t c = 0; c < nv; c += 16) {
            __m512 sc = _mm512_load_ps(sr + c);
            if (c + 16 > nv) sc = _mm512_mask_mov_ps(ninf, (__mmask16)((1u << (nv - c)) - 1), sc);
            _mm512_store_ps(sr + c, sc);
            vmax = _mm512_max_ps(vmax, sc);
        }
        mx[r] = _mm512_reduce_max_ps(vmax);
    }
    update_max(w, 0, _mm512_load_ps(mx));
    /* P, row by row (exactly 0 past each row's positions and for the
     * padding rows), then transposed to [chunk][16] in w->kc, whose K rows
     * are no longer needed: the sums then run down the columns in position
     * order, as in the tile kernel */
    for (uint32_t r = 0; r < 16; r++) {
        float *sr = w->st + (size_t)r * chunk;
        const uint32_t nv = r < rows ? attended(w->nkv[r], p0, n) : 0;
        const __m512 m = _mm512_set1_ps(r < rows ? w->m[r] : 0.0f);
        uint32_t c = 0;
        for (; c < nv; c += 16) _mm512_store_ps(sr + c, probs(_mm512_load_ps(sr + c), m));
        for (; c < n16; c += 16) _mm512_store_ps(sr + c, _mm512_setzero_ps());
    }
    float *pt = w->kc;
    for (uint32_t c = 0; c < n16; c += 16) transpose16(w->st + c, chunk, pt + (size_t)c * 16, 16);
    __m512 sum = _mm512_setzero_ps();
    for (uint32_t c = 0; c < n; c++) sum = _mm512_add_ps(sum, _mm512_load_ps(pt + (size_t)c * 16));
    _mm512_store_ps(w->l, _mm512_fmadd_ps(_mm512_load_ps(w->l), _mm512_load_ps(w->alpha), sum));
    pv_avx512(w, rows, p0, n, d, pt, 1, 16);
}

/* 8 rows or more. w->qt holds Q^T [d][rp]; w->st gets S^T, then P^T. */
static KILN_AVX512 void tile_chunk_avx512(attn_ws *w, uint32_t rp, uint32_t rows, uint32_t p0, uint32_t n,
                                          uint32_t d) {
    uint32_t r0 = 0; /* K rows past n are zeros (to 16) */
    for (; r0 + 32 <= rp; r0 += 32)
        for (uint32_t c = 0; c < n; c += 4) qk4x32(w->qt, rp, r0, w->kc + (size_t)c * d, d, w->st + (size_t)c * rp);
    if (r0 < rp)
        for (uint32_t c = 0; c < n; c += 8) qk8x16(w->qt, rp, r0, w->kc + (size_t)c * d, d, w->st + (size_t)c * rp);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (uint32_t r0 = 0; r0 < rp; r0 += 16) {
        const __m512i nk = _mm512_load_si512((const void *)(w->nkv + r0));
        __m512 vmax = ninf;
        for (uint32_t c = 0; c < n; c++) {
            float *sp = w->st + (size_t)c * rp + r0;
            const __mmask16 live = _mm512_cmpgt_epi32_mask(nk, _mm512_set1_epi32((int)(p0 + c)));
            const __m512 sc = _mm512_mask_mov_ps(ninf, live, _mm512_load_ps(sp));
            _mm512_store_ps(sp, sc);
            vmax = _mm512_max_ps(vmax, sc);
        }
        const __m512 m = update_max(w, r0, vmax);
        __m512 sum = _mm512_setzero_ps();
        for (uint32_t c = 0; c < n; c++) {
            float *sp = w->st + (size_t)c * rp + r0;
            const __m512 p = probs(_mm512_load_ps(sp), m);
            _mm512_store_ps(sp, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_store_ps(w->l + r0, _mm512_fmadd_ps(_mm512_load_ps(w->l + r0), _mm512_load_ps(w->alpha + r0), sum));
    }
    pv_avx512(w, rows, p0, n, d, w->st, 1, rp);
}
/* The item's query rows, scaled: row-major in w->qt for fewer than 8 rows,
 * else transposed to Q^T [d][rp] (padding rows zero) through w->orun,
 * which the first segment fold overwrites anyway. */
static KILN_AVX512 void prepare_q_avx512(const attn_args *a, attn_ws *w, const int32_t *order, uint32_t g,
                                         uint32_t rows) {
    const uint32_t d = a->head_dim, group = a->group, rp = pad16(rows);
    const __m512 scale = _mm512_set1_ps(a->scale);
    float *rm = rows < 8 ? w->qt : w->orun;
    for (uint32_t r = 0; r < rp; r++) {
        float *dst = rm + (size_t)r * d;
        if (r >= rows) {
            if (rows < 8) break;
            memset(dst, 0, (size_t)d * sizeof(float));
            continue;
        }
        const float *q = (const float *)kiln_cpu_row(a->q, order[r / group]) + (size_t)(g * group + r % group) * d;
        for (uint32_t i = 0; i < d; i += 16) _mm512_store_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(q + i), scale));
    }
    if (rows < 8) return;
    for (uint32_t r0 = 0; r0 < rp; r0 += 16)
        for (uint32_t i = 0; i < d; i += 16) transpose16(rm + (size_t)r0 * d + i, d, w->qt + (size_t)i * rp + r0, rp);
}
#endif

/* ---- segments, items, the merge ---- */

/* Folds a segment's (m, l, o) into a running (M, L, O). The same function
 * serves items that walk all segments and the merge of split items, so
 * both give the same bits. */
static void fold_row(float *M, float *L, float *O, float m, float l, const float *o, uint32_t d) {
    if (!(l > 0.0f)) return; /* the segment saw no position of this row */
    if (!(*L > 0.0f)) {
        *M = m;
        *L = l;
        memcpy(O, o, (size_t)d * sizeof(float));
        return;
    }
    const float mn = m > *M ? m : *M;
    const float a1 = expf(*M - mn), a2 = expf(m - mn);
    *L = *L * a1 + l * a2;
    for (uint32_t i = 0; i < d; i++) O[i] = O[i] * a1 + o[i] * a2;
    *M = mn;
}

/* out = O / L (zeros when nothing was attended) */
static void finish_row(float *out, const float *O, float L, uint32_t d) {
    if (!(L > 0.0f)) { /* O was never written */
        memset(out, 0, (size_t)d * sizeof(float));
        return;
    }
    const float inv = 1.0f / L;
    for (uint32_t i = 0; i < d; i++) out[i] = O[i] * inv;
}

static void attn_item(attn_args *a, int64_t item, attn_ws *w) {
    const kiln_cpu_ubatch *ub = &a->dev->ub;
    const uint32_t d = a->head_dim, group = a->group;
    const int64_t pair = a->split ? item / a->n_seg : item;
    const uint32_t g = (uint32_t)(pair % a->n_head_kv);
    /* the latest tiles attend to the most positions: hand them out first */
    const attn_tile *tile = &a->tiles[a->n_tiles - 1 - (uint32_t)(pair / a->n_head_kv)];
    const uint32_t rows = tile->count * group, rp = pad16(rows);
    const int32_t *order = ub->order + tile->first;
    int32_t max_kv = 0;
    for (uint32_t j = 0; j < tile->count; j++)
        if (ub->attn_n_kv[order[j]] > max_kv) max_kv = ub->attn_n_kv[order[j]];
    /* set_ubatch checked the table of every token that attends to something;
     * a tile that attends to nothing may carry any table offset */
    const int32_t *table = max_kv > 0 ? ub->block_tables + ub->attn_table[order[0]] : NULL;
    for (uint32_t r = 0; r < rp; r++) w->nkv[r] = r < rows ? ub->attn_n_kv[order[r / group]] : 0;

#ifdef KILN_CPU_X86
    const bool avx2 = a->dev->isa >= KILN_CPU_ISA_AVX2 && d % 8 == 0;
    const bool avx512 = a->dev->isa >= KILN_CPU_ISA_AVX512 && d % 16 == 0;
    if (avx512) prepare_q_avx512(a, w, order, g, rows);
#endif
    const uint32_t s_first = a->split ? (uint32_t)(item % a->n_seg) : 0;
    const uint32_t s_end = a->split ? s_first + 1 : a->n_seg;
    for (uint32_t r = 0; r < rp; r++) w->mr[r] = -INFINITY, w->lr[r] = 0.0f;
    for (uint32_t s = s_first; s < s_end; s++) {
        const uint32_t p_begin = s * KILN_CPU_ATTN_SEG;
        uint32_t p_end = p_begin + KILN_CPU_ATTN_SEG;
        if (p_end > (uint32_t)max_kv) p_end = (uint32_t)max_kv;
        for (uint32_t r = 0; r < rp; r++) w->m[r] = -INFINITY, w->l[r] = 0.0f;
        memset(w->o, 0, (size_t)rows * d * sizeof(float));
        for (uint32_t p0 = p_begin; p0 < p_end; p0 += a->chunk) {
            const uint32_t n = p_end - p0 < a->chunk ? p_end - p0 : a->chunk;
            convert_rows(a, a->k, table, g, p0, n, w->kc);
            convert_rows(a, a->v, table, g, p0, n, w->vc);
#ifdef KILN_CPU_X86
            if (avx512) {
                if (rows < 8) rows_chunk_avx512(w, a->chunk, rows, p0, n, d);
                else tile_chunk_avx512(w, rp, rows, p0, n, d);
                continue;
            }
#endif
            for (uint32_t r = 0; r < rows; r++) {
                const uint32_t nv = w->nkv[r] <= (int32_t)p0 ? 0 : (uint32_t)w->nkv[r] - p0 < n ? (uint32_t)w->nkv[r] - p0 : n;
                if (nv == 0) continue;
                const float *q = (const float *)kiln_cpu_row(a->q, order[r / group]) + (size_t)(g * group + r % group) * d;
                float *o = w->o + (size_t)r * d;
#ifdef KILN_CPU_X86
                if (avx2) {
                    row_chunk_avx2(q, w->kc, w->vc, nv, d, a->scale, w->s, &w->m[r], &w->l[r], o);
                    continue;
                }
#endif
                row_chunk_scalar(q, w->kc, w->vc, nv, d, a->scale, w->s, &w->m[r], &w->l[r], o);
            }
        }
        if (a->split) { /* the merge folds it */
            for (uint32_t r = 0; r < rows; r++) {
                float *pt = a->partial + ((size_t)item * a->rows_max + r) * (2 + d);
                pt[0] = w->m[r];
                pt[1] = p_begin < p_end ? w->l[r] : 0.0f;
                memcpy(pt + 2, w->o + (size_t)r * d, (size_t)d * sizeof(float));
            }
            return;
        }
        for (uint32_t r = 0; r < rows; r++)
            fold_row(&w->mr[r], &w->lr[r], w->orun + (size_t)r * d, w->m[r], w->l[r], w->o + (size_t)r * d, d);
    }
    for (uint32_t r = 0; r < rows; r++) {
        float *out = (float *)kiln_cpu_row(a->dst, order[r / group]) + (size_t)(g * group + r % group) * d;
        finish_row(out, w->orun + (size_t)r * d, w->lr[r], d);
    }
}

static void attn_task(void *ctx, int slot, int64_t first, int64_t last) {
    attn_args *a = ctx;
    attn_ws w = ws_get(a, slot);
    for (int64_t item = first; item < last; item++) attn_item(a, item, &w);
}

/* Folds the split items' segments, in order, into dst. */
static void attn_merge(attn_args *a, float *acc) {
    const kiln_cpu_ubatch *ub = &a->dev->ub;
    const uint32_t d = a->head_dim, group = a->group;
    const int64_t n_pairs = a->n_items / a->n_seg;
    for (int64_t pair = 0; pair < n_pairs; pair++) {
        const uint32_t g = (uint32_t)(pair % a->n_head_kv);
        const attn_tile *tile = &a->tiles[a->n_tiles - 1 - (uint32_t)(pair / a->n_head_kv)];
        const int32_t *order = ub->order + tile->first;
        for (uint32_t r = 0; r < tile->count * group; r++) {
            float M = -INFINITY, L = 0.0f;
            for (uint32_t s = 0; s < a->n_seg; s++) {
                const float *pt = a->partial + ((size_t)(pair * a->n_seg + s) * a->rows_max + r) * (2 + d);
                fold_row(&M, &L, acc, pt[0], pt[1], pt + 2, d);
            }
            float *out = (float *)kiln_cpu_row(a->dst, order[r / group]) + (size_t)(g * group + r % group) * d;
            finish_row(out, acc, L, d);
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
    /* chunk: about 8 KiB of converted K (and as much V); a power of two
     * from 16 to 64, so that segments are whole chunks */
    a.chunk = 64;
    while (a.chunk > 16 && (size_t)a.chunk * p.head_dim > 2048) a.chunk /= 2;

    /* tokens per tile: about KILN_CPU_ATTN_ROWS query rows, fewer when that
     * would leave too few items to share */
    const int nth = dev->n_threads;
    uint32_t per = KILN_CPU_ATTN_ROWS / a.group;
    if (per < 1) per = 1;
    while (per > 1 && (int64_t)make_tiles(ub, per, NULL) * p.n_head_kv < KILN_CPU_ATTN_MIN_ITEMS) per /= 2;
    a.n_tiles = make_tiles(ub, per, NULL);
    a.rows_max = per * a.group;

    /* few (tile, kv head) pairs for the threads and a long context (a
     * decode): one item per segment, folded afterwards */
    const int64_t n_pairs = (int64_t)a.n_tiles * p.n_head_kv;
    a.n_seg = ((uint32_t)ub->max_n_kv + KILN_CPU_ATTN_SEG - 1) / KILN_CPU_ATTN_SEG;
    if (a.n_seg == 0) a.n_seg = 1;
    a.split = nth > 1 && n_pairs < 2 * (int64_t)nth && a.n_seg > 1;
    a.n_items = a.split ? n_pairs * a.n_seg : n_pairs;

    /* scratch: tiles | workspaces | partials | a merge row */
    size_t off[KILN_ATTN_WS_REGIONS];
    size_t tiles_bytes = kiln_cpu_align_up((size_t)a.n_tiles * sizeof(attn_tile));
    a.ws_stride = kiln_cpu_align_up(ws_floats(a.chunk, a.rows_max, p.head_dim, off) * sizeof(float));
    size_t partial_bytes = 0;
    if (a.split)
        partial_bytes = kiln_cpu_align_up((size_t)a.n_items * a.rows_max * (2 + p.head_dim) * sizeof(float)) +
                        (size_t)p.head_dim * sizeof(float);
    size_t total = tiles_bytes + a.ws_stride * (size_t)nth + partial_bytes;
    if ((st = kiln_cpu_scratch_reserve(dev, total))) return st;
    attn_tile *tiles = (attn_tile *)dev->scratch;
    make_tiles(ub, per, tiles);
    a.tiles = tiles;
    a.ws = dev->scratch + tiles_bytes;
    a.partial = a.split ? (float *)(a.ws + a.ws_stride * (size_t)nth) : NULL;

    int use = a.n_items < nth ? (int)a.n_items : nth;
    kiln_cpu_threads_for(dev->threads, use, a.n_items, 1, attn_task, &a);
    if (a.split)
        attn_merge(&a, a.partial + kiln_cpu_align_up((size_t)a.n_items * a.rows_max * (2 + p.head_dim) *
                                                      sizeof(float)) / sizeof(float));
    return KILN_OK;
}
