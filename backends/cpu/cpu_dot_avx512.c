/*
 * cpu_dot_avx512.c - AVX-512 dot kernels (F, BW, VL, DQ, VNNI; BF16 where the
 * processor has it). Compiled with target attributes, called only after
 * cpu_quant.c checked the processor, so the build needs no -m flags.
 *
 * Every kernel is a register tile: MR weight rows x MC activation rows of
 * 512-bit accumulators, so each loaded (and unpacked) weight vector is used
 * MC times and each activation vector MR times. The integer kernels use
 * VPDPBUSD (u8 x s8, 4 products summed into int32) and VPDPWSSD:
 *   - unsigned 4/5-bit weights (Q4_0, Q5_0, Q4_1, Q5_1) go in as u8 0..15 /
 *     0..31; the zero point of Q4_0/Q5_0 (8 / 16) is taken out with the
 *     activation's block sums, computed once per activation vector;
 *   - signed Q8_0 weights meet activations biased to u8 (a + 128), and
 *     128 * sum(w) is taken out once per weight vector;
 *   - K-quants multiply u8 weights by s8 activations into s16 pairs
 *     (VPMADDUBSW) and those by the sub-block scales into int32 (VPDPWSSD),
 *     so a whole 256-element super-block is summed in integers before one
 *     float scaling; the mins (Q4_K/Q5_K) and the -32 of Q6_K come from the
 *     activation's 16-element partial sums.
 * Partial 32-blocks (an odd block count) run the same step with the upper
 * half of every vector zeroed.
 *
 * The quantized types advertise tile_nc = 64: a call with 4 or more
 * activation rows unpacks its weight rows once into a stack panel (see
 * "packed weight panels" below) and sweeps the activations over it, which
 * is what makes prefill fast; a call with 1..3 rows (decode) streams the
 * weights directly.
 */
#include "cpu_dot.h"
#include "quant.h"
#include "quant_blocks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

#define MAXR KILN_DOT_MAXR
#define MAXC KILN_DOT_MAXC

/* ---- helpers -------------------------------------------------------------------- */

/* [sum(v0), sum(v1), sum(v2), sum(v3)]: a transposing reduction, 13
 * operations for four vectors instead of about 8 each. */
T512 INL __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
    __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
    /* per 128-bit lane: v0, v1 partial sums in x01, v2, v3 in x23 */
    __m512 y = _mm512_add_ps(_mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x01, x23, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(y), _mm512_extractf32x8_ps(y, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* res[r * MAXC + c] = sum of acc[r][c]'s lanes, four at a time. */
T512 INL void reduce_store(__m512 acc[MAXR][MAXC], float *res, const int R, const int C) {
    __m512 v[MAXR * MAXC + 3];
    int n = 0;
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) v[n++] = acc[r][c];
    while (n % 4) v[n++] = _mm512_setzero_ps();
    float tmp[MAXR * MAXC + 3];
    UNROLL for (int q = 0; q < n; q += 4) _mm_storeu_ps(tmp + q, reduce4(v[q], v[q + 1], v[q + 2], v[q + 3]));
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) res[r * MAXC + c] = tmp[r * C + c];
}

/* Two consecutive 32-byte quant arrays (blocks of `bsize` bytes, quants at
 * byte `qoff`) as one vector; the upper half is zero when !two. */
T512 INL __m512i load_q8x2(const uint8_t *blk, size_t bsize, size_t qoff, int two) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)(blk + qoff));
    if (!two) return _mm512_zextsi256_si512(lo);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(blk + bsize + qoff));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Two fp16 values (at p and p + bsize) as [x0 x 8, x1 x 8]; x1 = 0 when !two.
 * With lane0_only, only lanes 0 and 8 hold them (the rest zero). */
T512 INL __m512 halves_x2(const uint8_t *p, size_t bsize, int two, int lane0_only) {
    uint32_t v = kiln_cpu_rd16(p);
    if (two) v |= (uint32_t)kiln_cpu_rd16(p + bsize) << 16;
    __m512 f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)v)));
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return lane0_only ? _mm512_maskz_permutexvar_ps(0x0101, idx, f) : _mm512_permutexvar_ps(idx, f);
}

/* The 32 nibbles of two 16-byte arrays as bytes ordered like the values:
 * [lo(q0), hi(q0), lo(q1), hi(q1)]. */
T512 INL __m512i nibbles_x2(const uint8_t *q0, const uint8_t *q1, int two) {
    __m128i x0 = _mm_loadu_si128((const __m128i *)q0);
    __m256i x = two ? _mm256_inserti128_si256(_mm256_castsi128_si256(x0), _mm_loadu_si128((const __m128i *)q1), 1)
                    : _mm256_zextsi128_si256(x0);
    __m512i z = _mm512_castsi256_si512(x);
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
    z = _mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* ---- F32 x F32 -------------------------------------------------------------------------- */

T512 INL void f32_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = _mm512_loadu_ps((const float *)w[r] + i);
        UNROLL for (int c = 0; c < C; c++) {
            __m512 av = _mm512_loadu_ps((const float *)a[c] + i);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        __m512 wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = _mm512_maskz_loadu_ps(m, (const float *)w[r] + i);
        UNROLL for (int c = 0; c < C; c++) {
            __m512 av = _mm512_maskz_loadu_ps(m, (const float *)a[c] + i);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    reduce_store(acc, res, R, C);
}
KILN_TILES(f32, 5, 4, T512)

/* ---- F16 x F16 ---------------------------------------------------------------------------- */

T512 INL __m512 ld_f16(const uint8_t *p, int64_t i) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i))); }
T512 INL __m512 ld_f16_mask(const uint8_t *p, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p + 2 * i));
}

/* F16 x F16 (activations rounded to F16, as llama.cpp does), products and
 * sums in F32. */
T512 INL void f16_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = ld_f16(w[r], i);
        UNROLL for (int c = 0; c < C; c++) {
            __m512 av = ld_f16(a[c], i);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        __m512 wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = ld_f16_mask(w[r], i, m);
        UNROLL for (int c = 0; c < C; c++) {
            __m512 av = ld_f16_mask(a[c], i, m);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    reduce_store(acc, res, R, C);
}
KILN_TILES8(f16, 5, 5, T512)

/* F16 activations: bit-identical to kiln_cpu_act_f16_scalar (both round to
 * nearest even, keep subnormals, inf and NaN). */
T512 static void act_f16(const float *x, void *dst, int64_t k) {
    uint8_t *h = dst;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16)
        _mm256_storeu_si256((__m256i *)(h + 2 * i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < k; i++) {
        uint16_t v = kiln_fp32_to_fp16(x[i]);
        memcpy(h + 2 * i, &v, 2);
    }
}

/* BF16 activations: round to nearest even in integer arithmetic, NaN kept
 * quiet - bit-identical to kiln_fp32_to_bf16. (VCVTNEPS2BF16 would flush
 * subnormals.) */
T512 static void act_bf16(const float *x, void *dst, int64_t k) {
    uint8_t *h = dst;
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i inf = _mm512_set1_epi32(0x7f800000), quiet = _mm512_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512i u = _mm512_loadu_si512(x + i);
        __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one))), 16);
        __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, absmask), inf);
        __m512i r = _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), quiet);
        _mm256_storeu_si256((__m256i *)(h + 2 * i), _mm512_cvtepi32_epi16(r));
    }
    for (; i < k; i++) {
        uint16_t v = kiln_fp32_to_bf16(x[i]);
        memcpy(h + 2 * i, &v, 2);
    }
}

/* ---- BF16 x BF16 (AVX512_BF16: VDPBF16PS, two products per lane) -------------------------- */

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 10)
#define KILN_HAVE_BF16_INTRIN 1
T512BF INL void bf16_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        __m512bh wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_loadu_si512(w[r] + 2 * i);
        UNROLL for (int c = 0; c < C; c++) {
            __m512bh av = (__m512bh)_mm512_loadu_si512(a[c] + 2 * i);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[r], av);
        }
    }
    if (i < k) {
        __mmask32 m = (__mmask32)((1ull << (k - i)) - 1);
        __m512bh wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, w[r] + 2 * i);
        UNROLL for (int c = 0; c < C; c++) {
            __m512bh av = (__m512bh)_mm512_maskz_loadu_epi16(m, a[c] + 2 * i);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[r], av);
        }
    }
    reduce_store(acc, res, R, C);
}
KILN_TILES(bf16, 4, 4, T512BF)
#endif

/* ---- Q8_0 x Q8_0 ----------------------------------------------------------------------------- */

/* Blocks b, b + 1 of every row: acc[r][c] += sum over the two blocks of
 * dw * da * isum, with activations biased to u8 and 128 * sum(w) removed. */
T512 INL void q8_0_step(__m512 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b, int two,
                        const int R, const int C) {
    const size_t bs = sizeof(kiln_block_q8_0);
    const __m512i bias = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m512i wq[MAXR], wneg[MAXR];
    __m512 wd[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * bs;
        wq[r] = load_q8x2(p, bs, 2, two);
        wneg[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, wq[r]));
        wd[r] = halves_x2(p, bs, two, 0);
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * bs;
        /* (an absent upper block meets zero weights: its bias adds 0) */
        __m512i au = _mm512_xor_si512(load_q8x2(p, bs, 2, two), bias);
        __m512 ad = halves_x2(p, bs, two, 0);
        UNROLL for (int r = 0; r < R; r++) {
            __m512i s = _mm512_dpbusd_epi32(wneg[r], au, wq[r]);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wd[r], ad), acc[r][c]);
        }
    }
}

T512 INL void q8_0_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nb = k / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q8_0_step(acc, w, a, b, 1, R, C);
    if (b < nb) q8_0_step(acc, w, a, b, 0, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q8_0, 4, 4, T512)

/* ---- Q4_0 / Q5_0 x Q8_0 ------------------------------------------------------------------------ */

/* hi5: 0 for Q4_0, 1 for Q5_0 (adds bit 4 from qh, zero point 16). */
T512 INL void q45_0_step(__m512 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b, int two,
                         const int hi5, const int R, const int C) {
    const size_t wbs = hi5 ? sizeof(kiln_block_q5_0) : sizeof(kiln_block_q4_0), abs_ = sizeof(kiln_block_q8_0);
    const size_t qoff = hi5 ? 6 : 2;
    const __m512i zero = _mm512_setzero_si512(), zp = _mm512_set1_epi8(hi5 ? 16 : 8);
    __m512i wq[MAXR];
    __m512 wd[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * wbs;
        wq[r] = nibbles_x2(p + qoff, p + wbs + qoff, two);
        if (hi5) {
            uint64_t m;
            uint32_t h0, h1 = 0;
            memcpy(&h0, p + 2, 4);
            if (two) memcpy(&h1, p + wbs + 2, 4);
            m = (uint64_t)h0 | ((uint64_t)h1 << 32);
            wq[r] = _mm512_mask_add_epi8(wq[r], (__mmask64)m, wq[r], _mm512_set1_epi8(16));
        }
        wd[r] = halves_x2(p, wbs, two, 0);
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        __m512i aq = load_q8x2(p, abs_, 2, two);
        /* -zp * sum(a), per int32 lane, takes the zero point out */
        __m512i aneg = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, zp, aq));
        __m512 ad = halves_x2(p, abs_, two, 0);
        UNROLL for (int r = 0; r < R; r++) {
            __m512i s = _mm512_dpbusd_epi32(aneg, wq[r], aq);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wd[r], ad), acc[r][c]);
        }
    }
}

T512 INL void q4_0_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nb = k / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q45_0_step(acc, w, a, b, 1, 0, R, C);
    if (b < nb) q45_0_step(acc, w, a, b, 0, 0, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q4_0, 4, 4, T512)

T512 INL void q5_0_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nb = k / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q45_0_step(acc, w, a, b, 1, 1, R, C);
    if (b < nb) q45_0_step(acc, w, a, b, 0, 1, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q5_0, 4, 4, T512)

/* ---- Q4_1 / Q5_1 x Q8_1 ---------------------------------------------------------------------------- */

T512 INL void q45_1_step(__m512 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b, int two,
                         const int hi5, const int R, const int C) {
    const size_t wbs = hi5 ? sizeof(kiln_block_q5_1) : sizeof(kiln_block_q4_1), abs_ = sizeof(kiln_block_q8_1);
    const size_t qoff = hi5 ? 8 : 4;
    const __m512i zero = _mm512_setzero_si512();
    __m512i wq[MAXR];
    __m512 wd[MAXR], wm[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * wbs;
        wq[r] = nibbles_x2(p + qoff, p + wbs + qoff, two);
        if (hi5) {
            uint32_t h0, h1 = 0;
            memcpy(&h0, p + 4, 4);
            if (two) memcpy(&h1, p + wbs + 4, 4);
            uint64_t m = (uint64_t)h0 | ((uint64_t)h1 << 32);
            wq[r] = _mm512_mask_add_epi8(wq[r], (__mmask64)m, wq[r], _mm512_set1_epi8(16));
        }
        wd[r] = halves_x2(p, wbs, two, 0);
        wm[r] = halves_x2(p + 2, wbs, two, 0);
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        __m512i aq = load_q8x2(p, abs_, 4, two);
        __m512 ad = halves_x2(p, abs_, two, 0);
        __m512 as = halves_x2(p + 2, abs_, two, 1); /* d * sum(a), in lanes 0 and 8 only */
        UNROLL for (int r = 0; r < R; r++) {
            __m512i s = _mm512_dpbusd_epi32(zero, wq[r], aq);
            __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wd[r], ad), acc[r][c]);
            acc[r][c] = _mm512_fmadd_ps(wm[r], as, t);
        }
    }
}

T512 INL void q4_1_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nb = k / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q45_1_step(acc, w, a, b, 1, 0, R, C);
    if (b < nb) q45_1_step(acc, w, a, b, 0, 0, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q4_1, 4, 4, T512)

T512 INL void q5_1_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t nb = k / 32, b = 0;
    for (; b + 2 <= nb; b += 2) q45_1_step(acc, w, a, b, 1, 1, R, C);
    if (b < nb) q45_1_step(acc, w, a, b, 0, 1, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q5_1, 4, 4, T512)

/* Q8_0 / Q8_1 activations: as the scalar quantizer, 16 lanes at a time. */
T512 INL void act_q8_block(const float *x, int8_t *q, float *d_out, int *sum_out) {
    __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    __m512 amax = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    float m = _mm512_reduce_max_ps(amax);
    float id = m != 0.f ? 127.f / m : 0.f;
    __m512 s = _mm512_set1_ps(id);
    __m512i i0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m512i i1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512i lim = _mm512_set1_epi32(127);
    i0 = _mm512_max_epi32(_mm512_min_epi32(i0, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
    i1 = _mm512_max_epi32(_mm512_min_epi32(i1, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(i0));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(i1));
    *d_out = m / 127.f;
    if (sum_out) *sum_out = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
}

T512 static void act_q8_0(const float *x, void *dst, int64_t k) {
    kiln_block_q8_0 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) {
        float d;
        act_q8_block(x + 32 * b, y[b].qs, &d, NULL);
        y[b].d = kiln_fp32_to_fp16(d);
    }
}

T512 static void act_q8_1(const float *x, void *dst, int64_t k) {
    kiln_block_q8_1 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) {
        float d;
        int sum;
        act_q8_block(x + 32 * b, y[b].qs, &d, &sum);
        y[b].d = kiln_fp32_to_fp16(d);
        y[b].s = kiln_fp32_to_fp16(d * (float)sum);
    }
}

/* Q8_K activations: ggml's reference Q8_K (as kiln_cpu_act_q8_K_scalar),
 * vectorized: the scale comes from the first element of largest
 * magnitude, q = round-half-even(-127 / max * x) capped at 127, and each
 * vector of 16 values is one of the 16-element partial sums. */
T512 static void act_q8_K(const float *x, void *dst, int64_t k) {
    kiln_block_q8_K *y = dst;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < k / 256; b++, x += 256) {
        __m512 amax = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) amax = _mm512_max_ps(amax, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + 16 * j)));
        float m = _mm512_reduce_max_ps(amax);
        if (!(m > 0.f)) { /* all zero (or NaN): an all-zero block, like the reference */
            memset(&y[b], 0, sizeof y[b]);
            if (m != m) kiln_cpu_act_q8_K_scalar(x, &y[b], 256);
            continue;
        }
        float max = 0.f;
        __m512 vm = _mm512_set1_ps(m);
        for (int j = 0; j < 16; j++) {
            __mmask16 eq = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + 16 * j)), vm, _CMP_EQ_OQ);
            if (eq) {
                max = x[16 * j + __builtin_ctz(eq)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m512 vs = _mm512_set1_ps(iscale);
        const __m512i hi = _mm512_set1_epi32(127), lo = _mm512_set1_epi32(-128);
        for (int j = 0; j < 16; j++) {
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m512i q = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(v), hi), lo);
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * j), _mm512_cvtepi32_epi8(q));
            y[b].bsums[j] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[b].d = 1.f / iscale;
    }
}

/* ---- K-quants x Q8_K ---------------------------------------------------------------------------------- */

/* Scale vector of 64-element chunk c for VPDPWSSD: 16-bit lanes, the first
 * 16 (elements 0..31) sub-block 2c's scale, the next 16 sub-block 2c + 1's. */
T512 INL __m512i k4_chunk_scales(__m512i sc16, int c) {
    const __m512i idx = _mm512_set_epi64(0x0001000100010001ll * (2 * c + 1), 0x0001000100010001ll * (2 * c + 1),
                                         0x0001000100010001ll * (2 * c + 1), 0x0001000100010001ll * (2 * c + 1),
                                         0x0001000100010001ll * (2 * c), 0x0001000100010001ll * (2 * c),
                                         0x0001000100010001ll * (2 * c), 0x0001000100010001ll * (2 * c));
    return _mm512_permutexvar_epi16(idx, sc16);
}

/* hi5 = 0: Q4_K, 1: Q5_K. One super-block of every row pair. */
T512 INL void q45_K_sb(__m512 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b,
                       const int hi5, const int R, const int C) {
    const size_t wbs = hi5 ? sizeof(kiln_block_q5_K) : sizeof(kiln_block_q4_K), abs_ = sizeof(kiln_block_q8_K);
    const size_t qs_off = hi5 ? 48 : 16;
    const __m512i m4 = _mm512_set1_epi8(0x0F), sh = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    __m512i isum[MAXR][MAXC];
    __m256i mn16[MAXR];
    __m512i sc16[MAXR], qh[MAXR];
    float wd[MAXR], wdm[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * wbs;
        wd[r] = _cvtsh_ss(kiln_cpu_rd16(p));
        wdm[r] = _cvtsh_ss(kiln_cpu_rd16(p + 2));
        uint64_t sc, mn;
        kiln_cpu_k4_unpack(p + 4, &sc, &mn);
        sc16[r] = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
        __m128i m8 = _mm_cvtsi64_si128((long long)mn);
        mn16[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)); /* each min twice: one per 16-sum */
        if (hi5) qh[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16)));
        UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
    }
    UNROLL for (int ch = 0; ch < 4; ch++) {
        __m512i wq[MAXR], scv[MAXR];
        UNROLL for (int r = 0; r < R; r++) {
            const uint8_t *p = w[r] + (size_t)b * wbs;
            __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + qs_off + 32 * ch)));
            wq[r] = _mm512_and_si512(_mm512_srlv_epi64(x, sh), m4);
            if (hi5) {
                const __m512i bit = _mm512_set_epi64(
                    (long long)(0x0101010101010101ull << (2 * ch + 1)), (long long)(0x0101010101010101ull << (2 * ch + 1)),
                    (long long)(0x0101010101010101ull << (2 * ch + 1)), (long long)(0x0101010101010101ull << (2 * ch + 1)),
                    (long long)(0x0101010101010101ull << (2 * ch)), (long long)(0x0101010101010101ull << (2 * ch)),
                    (long long)(0x0101010101010101ull << (2 * ch)), (long long)(0x0101010101010101ull << (2 * ch)));
                __mmask64 hb = _mm512_test_epi8_mask(qh[r], bit);
                wq[r] = _mm512_mask_add_epi8(wq[r], hb, wq[r], _mm512_set1_epi8(16));
            }
            scv[r] = k4_chunk_scales(sc16[r], ch);
        }
        UNROLL for (int c = 0; c < C; c++) {
            __m512i aq = _mm512_loadu_si512(a[c] + (size_t)b * abs_ + 4 + 64 * ch);
            UNROLL for (int r = 0; r < R; r++)
                isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wq[r], aq), scv[r]);
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        float da;
        memcpy(&da, p, 4);
        __m256i bsums = _mm256_loadu_si256((const __m256i *)(p + 4 + 256));
        UNROLL for (int r = 0; r < R; r++) {
            __m256i im = _mm256_madd_epi16(mn16[r], bsums);
            __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][c]), _mm512_set1_ps(wd[r] * da), acc[r][c]);
            acc[r][c] = _mm512_fnmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(im)), _mm512_set1_ps(wdm[r] * da), t);
        }
    }
}

T512 INL void q4_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q45_K_sb(acc, w, a, b, 0, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q4_K, 2, 4, T512)

T512 INL void q5_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q45_K_sb(acc, w, a, b, 1, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q5_K, 2, 4, T512)

/* Q6_K: u8 q in 0..63 (value q - 32), 16 signed 8-bit scales. */
T512 INL void q6_K_sb(__m512 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b, const int R,
                      const int C) {
    const size_t wbs = sizeof(kiln_block_q6_K), abs_ = sizeof(kiln_block_q8_K);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const __m512i sh_even = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4), sh_odd = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    __m512i isum[MAXR][MAXC];
    __m512i sc16[MAXR];
    float wd[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const kiln_block_q6_K *x = (const kiln_block_q6_K *)(w[r] + (size_t)b * wbs);
        wd[r] = _cvtsh_ss(kiln_cpu_rd16((const uint8_t *)&x->d));
        sc16[r] = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales)));
        UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
    }
    UNROLL for (int ch = 0; ch < 4; ch++) {
        const int h = ch / 2, odd = ch & 1;
        __m512i wq[MAXR], scv[MAXR];
        UNROLL for (int r = 0; r < R; r++) {
            const kiln_block_q6_K *x = (const kiln_block_q6_K *)(w[r] + (size_t)b * wbs);
            __m512i l = _mm512_loadu_si512(x->ql + 64 * h);
            __m512i hh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32 * h)));
            __m512i lo = odd ? _mm512_and_si512(_mm512_srli_epi16(l, 4), m4) : _mm512_and_si512(l, m4);
            __m512i hi = odd ? _mm512_and_si512(_mm512_srlv_epi64(hh, sh_odd), m30)
                             : _mm512_and_si512(_mm512_sllv_epi64(hh, sh_even), m30);
            wq[r] = _mm512_or_si512(lo, hi);
            /* 16-bit lanes 8j..8j+7 cover sub-block 4 ch + j */
            const __m512i idx = _mm512_set_epi64(0x0001000100010001ll * (4 * ch + 3), 0x0001000100010001ll * (4 * ch + 3),
                                                 0x0001000100010001ll * (4 * ch + 2), 0x0001000100010001ll * (4 * ch + 2),
                                                 0x0001000100010001ll * (4 * ch + 1), 0x0001000100010001ll * (4 * ch + 1),
                                                 0x0001000100010001ll * (4 * ch), 0x0001000100010001ll * (4 * ch));
            scv[r] = _mm512_permutexvar_epi16(idx, sc16[r]);
        }
        UNROLL for (int c = 0; c < C; c++) {
            __m512i aq = _mm512_loadu_si512(a[c] + (size_t)b * abs_ + 4 + 64 * ch);
            UNROLL for (int r = 0; r < R; r++)
                isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wq[r], aq), scv[r]);
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        float da;
        memcpy(&da, p, 4);
        __m256i bsums = _mm256_loadu_si256((const __m256i *)(p + 4 + 256));
        UNROLL for (int r = 0; r < R; r++) {
            /* the -32 of every value: 32 * sum_j scale_j * bsum_j */
            __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(_mm512_castsi512_si256(sc16[r]), bsums), 5);
            __m512i s = _mm512_sub_epi32(isum[r][c], _mm512_zextsi256_si512(corr));
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(wd[r] * da), acc[r][c]);
        }
    }
}

T512 INL void q6_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q6_K_sb(acc, w, a, b, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q6_K, 2, 4, T512)

/* ---- packed weight panels ------------------------------------------------------------
 *
 * When a call covers many activation rows, the weight rows are unpacked
 * once into a panel on the stack (values ready for VPDPBUSD / VPMADDUBSW,
 * scales as float or int16 vectors) and the activation rows then sweep
 * over it in register tiles of many weight rows x few activation rows: the
 * unpacking is paid once per call instead of once per register tile, and
 * each prepared activation vector meets 8 (or 4) weight rows. K is cut into
 * passes so that the panel stays in L1; later passes add to `out`. */

#define PANEL_BYTES (24 * 1024) /* stack use: a fraction of even small thread stacks */

typedef void (*pack_fn)(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k, uint8_t *panel);
typedef void (*pmicro_fn)(const uint8_t *panel, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res);

typedef struct {
    int PR, MC;          /* weight rows per panel; activation rows per register tile */
    int64_t step_elems;  /* elements per panel step (64, or 256 for K-quants) */
    size_t entry;        /* panel bytes per (step, weight row) */
    pack_fn pack;
    const pmicro_fn *micro; /* micro[c - 1]: c activation rows */
} panel_desc;

static void panel_drive(int64_t k, float *out, size_t ldo, const void *w, size_t ws, int nr, const void *act,
                        size_t as, int nc, const panel_desc *pd) {
    uint8_t panel[PANEL_BYTES] __attribute__((aligned(64)));
    const int64_t nsteps = (k + pd->step_elems - 1) / pd->step_elems;
    const int64_t max_steps = PANEL_BYTES / ((int64_t)pd->PR * (int64_t)pd->entry);
    for (int i = 0; i < nr; i += pd->PR) {
        int rn = nr - i < pd->PR ? nr - i : pd->PR;
        for (int64_t s0 = 0; s0 < nsteps; s0 += max_steps) {
            int64_t ns = nsteps - s0 < max_steps ? nsteps - s0 : max_steps;
            pd->pack((const uint8_t *)w + (size_t)i * ws, ws, rn, s0, ns, k, panel);
            for (int j = 0; j < nc; j += pd->MC) {
                int cn = nc - j < pd->MC ? nc - j : pd->MC;
                const uint8_t *ap[MAXC];
                for (int c = 0; c < cn; c++) ap[c] = (const uint8_t *)act + (size_t)(j + c) * as;
                float res[MAXR * MAXC];
                pd->micro[cn - 1](panel, s0, ns, k, ap, res);
                for (int c = 0; c < cn; c++) {
                    float *o = out + (size_t)(j + c) * ldo + i;
                    for (int r = 0; r < rn; r++) o[r] = s0 ? o[r] + res[r * MAXC + c] : res[r * MAXC + c];
                }
            }
        }
    }
}

/* -- F16: the panel holds the weights converted to F32, 16 elements of 8
 * rows per step (zeros past k): the inner loop converts only the
 * activations (VCVTPH2PS is what limits the direct kernel). */
#define F16_PR 8 /* weight rows per panel */
#define F16_MC 3 /* activation rows per register tile */
T512 static void f16_pack(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k, uint8_t *panel) {
    for (int64_t s = 0; s < ns; s++) {
        int64_t i = 16 * (s0 + s);
        __mmask16 m = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);
        for (int r = 0; r < F16_PR; r++) {
            const uint8_t *p = w + (size_t)(r < rows ? r : rows - 1) * ws;
            _mm512_store_ps(panel + ((size_t)s * F16_PR + (size_t)r) * 64, ld_f16_mask(p, i, m));
        }
    }
}

T512 INL void f16_pmicro(const uint8_t *panel, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res,
                         const int C) {
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < F16_PR; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t s = 0;
    for (; s < ns; s++) {
        int64_t i = 16 * (s0 + s);
        __m512 av[MAXC];
        if (k - i >= 16) {
            UNROLL for (int c = 0; c < C; c++) av[c] = ld_f16(a[c], i);
        } else {
            __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
            UNROLL for (int c = 0; c < C; c++) av[c] = ld_f16_mask(a[c], i, m);
        }
        const float *e = (const float *)(panel + (size_t)s * F16_PR * 64);
        UNROLL for (int r = 0; r < F16_PR; r++) {
            __m512 wv = _mm512_load_ps(e + 16 * r);
            __asm__("" : "+v"(wv)); /* one load per weight vector, not one per FMA */
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(wv, av[c], acc[r][c]);
        }
    }
    reduce_store(acc, res, F16_PR, C);
}
T512 static void f16_pm1(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res) {
    f16_pmicro(pn, s0, ns, k, a, res, 1);
}
T512 static void f16_pm2(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res) {
    f16_pmicro(pn, s0, ns, k, a, res, 2);
}
T512 static void f16_pm3(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res) {
    f16_pmicro(pn, s0, ns, k, a, res, 3);
}
static const pmicro_fn f16_pmicro_tab[3] = {f16_pm1, f16_pm2, f16_pm3};
static const panel_desc f16_panel = {F16_PR, F16_MC, 16, 64, f16_pack, f16_pmicro_tab};
static void f16_ptile(int64_t k, float *out, size_t ldo, const void *w, size_t ws, int nr, const void *act, size_t as,
                      int nc) {
    if (nc < 6) f16_tile(k, out, ldo, w, ws, nr, act, as, nc);
    else panel_drive(k, out, ldo, w, ws, nr, act, as, nc, &f16_panel);
}

/* -- 32-element blocks: kind 0 Q8_0, 1 Q4_0, 2 Q5_0 (Q8_0 activations), 3 Q4_1, 4 Q5_1 (Q8_1).
 * Entry: [0, 64) the 64 quants of blocks 2s, 2s + 1 as u8 (Q8_0: w + 128,
 * whose bias the activation's block sums take out, like the zero points of
 * Q4_0/Q5_0); [64, 128) the float scales [d0 x 8, d1 x 8]; Q4_1/Q5_1:
 * [128, 192) the mins. */
#define BLK_PR 8
static const unsigned blk_wbs[5] = {sizeof(kiln_block_q8_0), sizeof(kiln_block_q4_0), sizeof(kiln_block_q5_0),
                                    sizeof(kiln_block_q4_1), sizeof(kiln_block_q5_1)};

T512 INL void blk_pack(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k, uint8_t *panel,
                       const int kind) {
    const size_t bs = blk_wbs[kind], entry = kind <= 2 ? 128 : 192;
    const int64_t nblk = k / 32;
    for (int64_t s = 0; s < ns; s++) {
        int64_t b = 2 * (s0 + s);
        int two = b + 1 < nblk;
        for (int r = 0; r < BLK_PR; r++) {
            const uint8_t *p = w + (size_t)(r < rows ? r : rows - 1) * ws + (size_t)b * bs;
            uint8_t *e = panel + ((size_t)s * BLK_PR + (size_t)r) * entry;
            __m512i q;
            if (kind == 0) {
                q = _mm512_xor_si512(load_q8x2(p, bs, 2, two), _mm512_set1_epi8((char)0x80)); /* w + 128 as u8 */
                if (!two) q = _mm512_maskz_mov_epi8(0xffffffffull, q); /* an absent block stays zero */
            } else {
                const size_t qoff = kind == 1 ? 2 : kind == 2 ? 6 : kind == 3 ? 4 : 8;
                q = nibbles_x2(p + qoff, p + bs + qoff, two);
                if (kind == 2 || kind == 4) {
                    const size_t hoff = kind == 2 ? 2 : 4;
                    uint32_t h0, h1 = 0;
                    memcpy(&h0, p + hoff, 4);
                    if (two) memcpy(&h1, p + bs + hoff, 4);
                    q = _mm512_mask_add_epi8(q, (__mmask64)((uint64_t)h0 | ((uint64_t)h1 << 32)), q, _mm512_set1_epi8(16));
                }
                if (kind >= 3) _mm512_store_ps(e + 128, halves_x2(p + 2, bs, two, 0));
            }
            _mm512_store_si512(e, q);
            _mm512_store_ps(e + 64, halves_x2(p, bs, two, 0));
        }
    }
}

T512 INL void blk_pmicro(const uint8_t *panel, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res,
                         const int kind, const int C) {
    const size_t entry = kind <= 2 ? 128 : 192;
    const size_t abs_ = kind >= 3 ? sizeof(kiln_block_q8_1) : sizeof(kiln_block_q8_0), aq_off = kind >= 3 ? 4 : 2;
    const int64_t nblk = k / 32;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < BLK_PR; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ns; s++) {
        int64_t b = 2 * (s0 + s);
        int two = b + 1 < nblk;
        __m512i aq[MAXC], ax[MAXC];
        __m512 ad[MAXC], as[MAXC];
        UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *p = a[c] + (size_t)b * abs_;
            aq[c] = load_q8x2(p, abs_, aq_off, two);
            ad[c] = halves_x2(p, abs_, two, 0);
            if (kind <= 2) { /* -zp * sum(a) per int32 lane (zp: 128, 8, 16) */
                const __m512i zp = _mm512_set1_epi8((char)(kind == 0 ? 0x80 : kind == 1 ? 8 : 16));
                ax[c] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, zp, aq[c]));
            }
            if (kind >= 3) as[c] = halves_x2(p + 2, abs_, two, 1);
        }
        const uint8_t *e = panel + (size_t)s * BLK_PR * entry;
        UNROLL for (int r = 0; r < BLK_PR; r++, e += entry) {
            __m512i wq = _mm512_load_si512(e);
            __m512 wd = _mm512_load_ps(e + 64);
            UNROLL for (int c = 0; c < C; c++) {
                __m512i sum;
                if (kind <= 2) sum = _mm512_dpbusd_epi32(ax[c], wq, aq[c]);
                else sum = _mm512_dpbusd_epi32(zero, wq, aq[c]);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(wd, ad[c]), acc[r][c]);
                if (kind >= 3) acc[r][c] = _mm512_fmadd_ps(_mm512_load_ps(e + 128), as[c], acc[r][c]);
            }
        }
    }
    reduce_store(acc, res, BLK_PR, C);
}

#define KILN_BLK_PANEL(name, kind)                                                                             \
    T512 static void name##_pack(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k,      \
                                 uint8_t *panel) {                                                              \
        blk_pack(w, ws, rows, s0, ns, k, panel, kind);                                                          \
    }                                                                                                           \
    T512 static void name##_pm1(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a,  \
                                float *res) {                                                                   \
        blk_pmicro(pn, s0, ns, k, a, res, kind, 1);                                                             \
    }                                                                                                           \
    T512 static void name##_pm2(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a,  \
                                float *res) {                                                                   \
        blk_pmicro(pn, s0, ns, k, a, res, kind, 2);                                                             \
    }                                                                                                           \
    static const pmicro_fn name##_pmicro[2] = {name##_pm1, name##_pm2};                                         \
    static const panel_desc name##_panel = {BLK_PR, 2, 64, kind <= 2 ? 128 : 192, name##_pack,    \
                                            name##_pmicro};                                                     \
    static void name##_ptile(int64_t k, float *out, size_t ldo, const void *w, size_t ws, int nr,               \
                             const void *act, size_t as, int nc) {                                              \
        if (nc < 4) name##_tile(k, out, ldo, w, ws, nr, act, as, nc);                                           \
        else panel_drive(k, out, ldo, w, ws, nr, act, as, nc, &name##_panel);                                   \
    }
KILN_BLK_PANEL(q8_0, 0)
KILN_BLK_PANEL(q4_0, 1)
KILN_BLK_PANEL(q5_0, 2)
KILN_BLK_PANEL(q4_1, 3)
KILN_BLK_PANEL(q5_1, 4)

/* -- K-quants: kind 0 Q4_K, 1 Q5_K, 2 Q6_K. Entry per (super-block, row):
 * [0, 256) the 256 u8 values in chunk order; [256, 512) the four chunks'
 * 16-bit scale vectors for VPDPWSSD; [512, 544) Q4_K/Q5_K: each min twice
 * (16 x s16), Q6_K: the 16 scales (s16); [544, 548) d; [548, 552) dmin. */
#define K_PR 4
#define K_ENTRY 576

T512 INL void k_pack(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k, uint8_t *panel,
                     const int kind) {
    (void)k;
    const size_t wbs = kind == 0 ? sizeof(kiln_block_q4_K) : kind == 1 ? sizeof(kiln_block_q5_K) : sizeof(kiln_block_q6_K);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t s = 0; s < ns; s++) {
        for (int r = 0; r < K_PR; r++) {
            const uint8_t *p = w + (size_t)(r < rows ? r : rows - 1) * ws + (size_t)(s0 + s) * wbs;
            uint8_t *e = panel + ((size_t)s * K_PR + (size_t)r) * K_ENTRY;
            if (kind <= 1) {
                float d = _cvtsh_ss(kiln_cpu_rd16(p)), dmin = _cvtsh_ss(kiln_cpu_rd16(p + 2));
                uint64_t sc, mn;
                kiln_cpu_k4_unpack(p + 4, &sc, &mn);
                __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
                __m128i m8 = _mm_cvtsi64_si128((long long)mn);
                _mm256_store_si256((__m256i *)(e + 512), _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)));
                memcpy(e + 544, &d, 4);
                memcpy(e + 548, &dmin, 4);
                __m512i qh = kind ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16))) : _mm512_setzero_si512();
                const size_t qs_off = kind ? 48 : 16;
                for (int ch = 0; ch < 4; ch++) {
                    __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + qs_off + 32 * ch)));
                    __m512i q = _mm512_and_si512(_mm512_srlv_epi64(x, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0)), m4);
                    if (kind) {
                        const long long b0 = (long long)(0x0101010101010101ull << (2 * ch));
                        const long long b1 = (long long)(0x0101010101010101ull << (2 * ch + 1));
                        __mmask64 hb = _mm512_test_epi8_mask(qh, _mm512_set_epi64(b1, b1, b1, b1, b0, b0, b0, b0));
                        q = _mm512_mask_add_epi8(q, hb, q, _mm512_set1_epi8(16));
                    }
                    _mm512_store_si512(e + 64 * ch, q);
                    _mm512_store_si512(e + 256 + 64 * ch, k4_chunk_scales(sc16, ch));
                }
            } else {
                const kiln_block_q6_K *x = (const kiln_block_q6_K *)p;
                float d = _cvtsh_ss(kiln_cpu_rd16((const uint8_t *)&x->d));
                __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
                _mm256_store_si256((__m256i *)(e + 512), sc16);
                memcpy(e + 544, &d, 4);
                for (int ch = 0; ch < 4; ch++) {
                    const int h = ch / 2, odd = ch & 1;
                    __m512i l = _mm512_loadu_si512(x->ql + 64 * h);
                    __m512i hh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32 * h)));
                    __m512i lo = odd ? _mm512_and_si512(_mm512_srli_epi16(l, 4), m4) : _mm512_and_si512(l, m4);
                    __m512i hi = odd ? _mm512_srlv_epi64(hh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0))
                                     : _mm512_sllv_epi64(hh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4));
                    _mm512_store_si512(e + 64 * ch, _mm512_or_si512(lo, _mm512_and_si512(hi, _mm512_set1_epi8(0x30))));
                    const long long j0 = 0x0001000100010001ll * (4 * ch), j1 = 0x0001000100010001ll * (4 * ch + 1);
                    const long long j2 = 0x0001000100010001ll * (4 * ch + 2), j3 = 0x0001000100010001ll * (4 * ch + 3);
                    __m512i idx = _mm512_set_epi64(j3, j3, j2, j2, j1, j1, j0, j0);
                    _mm512_store_si512(e + 256 + 64 * ch, _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(sc16)));
                }
            }
        }
    }
}

T512 INL void k_pmicro(const uint8_t *panel, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a, float *res,
                       const int kind, const int C) {
    (void)k;
    const size_t abs_ = sizeof(kiln_block_q8_K);
    __m512 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < K_PR; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ns; s++) {
        const uint8_t *eb = panel + (size_t)s * K_PR * K_ENTRY;
        const size_t aoff = (size_t)(s0 + s) * abs_;
        __m512i isum[MAXR][MAXC];
        UNROLL for (int r = 0; r < K_PR; r++) UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
        UNROLL for (int ch = 0; ch < 4; ch++) {
            __m512i aq[MAXC];
            UNROLL for (int c = 0; c < C; c++) aq[c] = _mm512_loadu_si512(a[c] + aoff + 4 + 64 * ch);
            UNROLL for (int r = 0; r < K_PR; r++) {
                const uint8_t *e = eb + (size_t)r * K_ENTRY;
                __m512i wq = _mm512_load_si512(e + 64 * ch), sv = _mm512_load_si512(e + 256 + 64 * ch);
                UNROLL for (int c = 0; c < C; c++)
                    isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wq, aq[c]), sv);
            }
        }
        UNROLL for (int c = 0; c < C; c++) {
            float da;
            memcpy(&da, a[c] + aoff, 4);
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)(a[c] + aoff + 4 + 256));
            const __m512 vda = _mm512_set1_ps(da);
            UNROLL for (int r = 0; r < K_PR; r++) {
                const uint8_t *e = eb + (size_t)r * K_ENTRY;
                __m256i t16 = _mm256_load_si256((const __m256i *)(e + 512));
                __m512 dd = _mm512_mul_ps(_mm512_set1_ps(*(const float *)(e + 544)), vda);
                if (kind <= 1) {
                    __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][c]), dd, acc[r][c]);
                    __m512 dm = _mm512_mul_ps(_mm512_set1_ps(*(const float *)(e + 548)), vda);
                    __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(t16, bsums));
                    acc[r][c] = _mm512_fnmadd_ps(_mm512_zextps256_ps512(m), dm, t);
                } else { /* the -32 of every Q6_K value: 32 * sum_j scale_j * bsum_j */
                    __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(t16, bsums), 5);
                    __m512i sum = _mm512_sub_epi32(isum[r][c], _mm512_zextsi256_si512(corr));
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), dd, acc[r][c]);
                }
            }
        }
    }
    reduce_store(acc, res, K_PR, C);
}

#define KILN_K_PANEL(name, kind)                                                                               \
    T512 static void name##_pack(const uint8_t *w, size_t ws, int rows, int64_t s0, int64_t ns, int64_t k,      \
                                 uint8_t *panel) {                                                              \
        k_pack(w, ws, rows, s0, ns, k, panel, kind);                                                            \
    }                                                                                                           \
    T512 static void name##_pm1(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a,  \
                                float *res) {                                                                   \
        k_pmicro(pn, s0, ns, k, a, res, kind, 1);                                                               \
    }                                                                                                           \
    T512 static void name##_pm2(const uint8_t *pn, int64_t s0, int64_t ns, int64_t k, const uint8_t *const *a,  \
                                float *res) {                                                                   \
        k_pmicro(pn, s0, ns, k, a, res, kind, 2);                                                               \
    }                                                                                                           \
    static const pmicro_fn name##_pmicro[2] = {name##_pm1, name##_pm2};                                         \
    static const panel_desc name##_panel = {K_PR, 2, 256, K_ENTRY, name##_pack, name##_pmicro};               \
    static void name##_ptile(int64_t k, float *out, size_t ldo, const void *w, size_t ws, int nr,               \
                             const void *act, size_t as, int nc) {                                              \
        if (nc < 4) name##_tile(k, out, ldo, w, ws, nr, act, as, nc);                                           \
        else panel_drive(k, out, ldo, w, ws, nr, act, as, nc, &name##_panel);                                   \
    }
KILN_K_PANEL(q4_K, 0)
KILN_K_PANEL(q5_K, 1)
KILN_K_PANEL(q6_K, 2)

/* ---- the table ------------------------------------------------------------------------------------ */

static const kiln_cpu_dot_traits avx512_traits[] = {
    {KILN_TYPE_F32, KILN_TYPE_F32, 1, kiln_cpu_act_size_f32, NULL, f32_tile, 5, 4, "avx512"},
    {KILN_TYPE_F16, KILN_TYPE_F16, 1, kiln_cpu_act_size_16, act_f16, f16_ptile, F16_PR, 64, "avx512"},
#if defined(KILN_HAVE_BF16_INTRIN)
    {KILN_TYPE_BF16, KILN_TYPE_BF16, 1, kiln_cpu_act_size_16, act_bf16, bf16_tile, 4, 4, "avx512bf16"},
#endif
    {KILN_TYPE_Q8_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q8_0_ptile, 8, 64, "avx512"},
    {KILN_TYPE_Q4_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q4_0_ptile, 8, 64, "avx512"},
    {KILN_TYPE_Q5_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q5_0_ptile, 8, 64, "avx512"},
    {KILN_TYPE_Q4_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, act_q8_1, q4_1_ptile, 8, 64, "avx512"},
    {KILN_TYPE_Q5_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, act_q8_1, q5_1_ptile, 8, 64, "avx512"},
    {KILN_TYPE_Q4_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q4_K_ptile, 4, 64, "avx512"},
    {KILN_TYPE_Q5_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q5_K_ptile, 4, 64, "avx512"},
    {KILN_TYPE_Q6_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q6_K_ptile, 4, 64, "avx512"},
};

const kiln_cpu_dot_traits *kiln_cpu_dot_avx512_table(int32_t type) {
    uint32_t f = kiln_cpu_features();
    if (type == KILN_TYPE_BF16 && !(f & KILN_CPU_HAS_AVX512BF16)) return kiln_cpu_dot_avx2_table(type);
    for (size_t i = 0; i < sizeof avx512_traits / sizeof avx512_traits[0]; i++)
        if (avx512_traits[i].weight_type == type) return &avx512_traits[i];
    return kiln_cpu_dot_avx2_table(type);
}

#else /* not x86-64 */

const kiln_cpu_dot_traits *kiln_cpu_dot_avx512_table(int32_t type) {
    (void)type;
    return NULL;
}

#endif
