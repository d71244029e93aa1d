/*
 * cpu_dot_avx2.c - AVX2 + FMA + F16C dot kernels, for x86-64 processors
 * without (usable) AVX-512. Compiled with target attributes and called only
 * after cpu_quant.c checked the processor, so the build needs no -m flags.
 *
 * Same register-tile structure as the AVX-512 kernels (cpu_dot.h), with the
 * 16 ymm registers' worth of tile. Integer products use VPMADDUBSW (u8 x s8
 * into s16 pairs, which cannot overflow for these ranges) and VPMADDWD:
 *   - 4/5-bit weights go in as u8 0..15 / 0..31; Q4_0/Q5_0's zero point is
 *     taken out with the activation block's sum, once per activation;
 *   - Q8_0 x Q8_0 uses |w| and sign(a, w) (both signed);
 *   - K-quants multiply the s16 pair sums by the sub-block scale in
 *     VPMADDWD and sum a super-block in int32 before scaling in float.
 * Activation quantizers write the scalar ones' bytes exactly.
 */
#include <math.h>

#include "cpu_dot.h"
#include "quant.h"
#include "quant_blocks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")
#define MAXR KILN_DOT_MAXR
#define MAXC KILN_DOT_MAXC

/* ---- helpers ---------------------------------------------------------------------- */

/* [sum(v0), sum(v1), sum(v2), sum(v3)] */
T256 INL __m128 reduce4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* res[r * MAXC + c] = sum of acc[r][c]'s lanes, four at a time. */
T256 INL void reduce_store(__m256 acc[MAXR][MAXC], float *res, const int R, const int C) {
    __m256 v[MAXR * MAXC + 3];
    int n = 0;
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) v[n++] = acc[r][c];
    while (n % 4) v[n++] = _mm256_setzero_ps();
    float tmp[MAXR * MAXC + 3];
    UNROLL for (int q = 0; q < n; q += 4) _mm_storeu_ps(tmp + q, reduce4(v[q], v[q + 1], v[q + 2], v[q + 3]));
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) res[r * MAXC + c] = tmp[r * C + c];
}

T256 INL float h2f(const uint8_t *p) { return _cvtsh_ss(kiln_cpu_rd16(p)); }

/* int32 sums of adjacent pairs of s16 lanes. */
T256 INL __m256i sum_pairs(__m256i x) { return _mm256_madd_epi16(x, _mm256_set1_epi16(1)); }

/* The 32 nibbles of 16 bytes in value order: [lo(q), hi(q)]. */
T256 INL __m256i nibbles(const uint8_t *q) {
    __m128i x = _mm_loadu_si128((const __m128i *)q);
    __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(y, _mm256_set1_epi8(0x0F));
}

/* 0x10 in byte i where bit i of the 32-bit qh is set. */
T256 INL __m256i bit4_bytes(const uint8_t *qh_p) {
    uint32_t qh;
    memcpy(&qh, qh_p, 4);
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3,
                                         3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), sel);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* ---- F32, F16 (F32 activations), BF16 ------------------------------------------------- */

/* kind 0: F32, 1: F16, 2: BF16 (weights and activations alike). */
T256 INL __m256 ld_w(const uint8_t *p, int64_t i, const int kind) {
    if (kind == 0) return _mm256_loadu_ps((const float *)p + i);
    if (kind == 1) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
}
INL float elem(const uint8_t *p, int64_t i, int kind) {
    if (kind == 0) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h = kiln_cpu_rd16(p + 2 * i);
    return kind == 1 ? kiln_fp16_to_fp32(h) : kiln_bf16_to_fp32(h);
}

T256 INL void float_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R,
                         const int C, const int kind) {
    __m256 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 wv[MAXR];
        UNROLL for (int r = 0; r < R; r++) wv[r] = ld_w(w[r], i, kind);
        UNROLL for (int c = 0; c < C; c++) {
            __m256 av = ld_w(a[c], i, kind);
            UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], av, acc[r][c]);
        }
    }
    reduce_store(acc, res, R, C);
    for (; i < k; i++) /* tail */
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++)
            res[r * MAXC + c] += elem(w[r], i, kind) * elem(a[c], i, kind);
}

T256 INL void f32_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    float_body(k, w, a, res, R, C, 0);
}
T256 INL void f16_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    float_body(k, w, a, res, R, C, 1);
}
T256 INL void bf16_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    float_body(k, w, a, res, R, C, 2);
}
KILN_TILES(f32, 3, 4, T256)
KILN_TILES(f16, 3, 4, T256)
KILN_TILES(bf16, 3, 4, T256)

/* F16 activations: bit-identical to kiln_cpu_act_f16_scalar. */
T256 static void act_f16(const float *x, void *dst, int64_t k) {
    uint8_t *h = dst;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        _mm_storeu_si128((__m128i *)(h + 2 * i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < k; i++) {
        uint16_t v = kiln_fp32_to_fp16(x[i]);
        memcpy(h + 2 * i, &v, 2);
    }
}

/* BF16 activations: round to nearest even in integer arithmetic, NaN kept
 * quiet - bit-identical to kiln_fp32_to_bf16 (and so to the scalar
 * quantizer). */
T256 static void act_bf16(const float *x, void *dst, int64_t k) {
    uint8_t *h = dst;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000), quiet = _mm256_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256i r[2];
        for (int h2 = 0; h2 < 2; h2++) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(x + i + 8 * h2));
            __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one))), 16);
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absmask), inf);
            __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
            r[h2] = _mm256_blendv_epi8(rounded, qnan, nan);
        }
        /* 16-bit results (all < 0x10000) packed in order */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *)(h + 2 * i), p);
    }
    for (; i < k; i++) {
        uint16_t v = kiln_fp32_to_bf16(x[i]);
        memcpy(h + 2 * i, &v, 2);
    }
}

/* Q8_0 / Q8_1 activations: the scalar quantizer's arithmetic (absmax,
 * 127 / absmax, round half to even), 8 lanes at a time. */
T256 INL float act_q8_block(const float *x, int8_t *q, int *sum_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    const __m256 s = _mm256_set1_ps(m != 0.f ? 127.f / m : 0.f);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    __m256i iv[4], sum = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(v[j], s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        iv[j] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(r), hi), lo);
        sum = _mm256_add_epi32(sum, iv[j]);
    }
    __m256i p16 = _mm256_packs_epi32(iv[0], iv[1]), p16b = _mm256_packs_epi32(iv[2], iv[3]);
    __m256i p8 = _mm256_packs_epi16(p16, p16b); /* lanes interleaved by the 128-bit packs */
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p8);
    if (sum_out) {
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
        *sum_out = _mm_cvtsi128_si32(t);
    }
    return m / 127.f;
}

T256 static void act_q8_0(const float *x, void *dst, int64_t k) {
    kiln_block_q8_0 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) y[b].d = kiln_fp32_to_fp16(act_q8_block(x + 32 * b, y[b].qs, NULL));
}

T256 static void act_q8_1(const float *x, void *dst, int64_t k) {
    kiln_block_q8_1 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) {
        int sum;
        float d = act_q8_block(x + 32 * b, y[b].qs, &sum);
        y[b].d = kiln_fp32_to_fp16(d);
        y[b].s = kiln_fp32_to_fp16(d * (float)sum);
    }
}

/* Q8_K activations: ggml's reference Q8_K, vectorized (as the AVX-512 one). */
T256 static void act_q8_K(const float *x, void *dst, int64_t k) {
    kiln_block_q8_K *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < k / 256; b++, x += 256) {
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < 32; j++) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * j)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float m = _mm_cvtss_f32(m4);
        if (!(m > 0.f)) { /* all zero (or NaN): as the reference */
            kiln_cpu_act_q8_K_scalar(x, &y[b], 256);
            continue;
        }
        float max = 0.f;
        for (int j = 0; j < 256; j++)
            if (fabsf(x[j]) == m) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-128);
        for (int j = 0; j < 16; j++) {
            __m256i q[2];
            for (int h2 = 0; h2 < 2; h2++) {
                __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16 * j + 8 * h2), vs),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                q[h2] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(v), hi), lo);
            }
            __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), _MM_SHUFFLE(3, 1, 2, 0));
            __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * j), p8);
            __m256i s = _mm256_add_epi32(q[0], q[1]);
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
            y[b].bsums[j] = (int16_t)_mm_cvtsi128_si32(t);
        }
        y[b].d = 1.f / iscale;
    }
}

/* ---- 32-element blocks ------------------------------------------------------------------ */

/* kind: 0 Q8_0, 1 Q4_0, 2 Q5_0 (against Q8_0 activations); 3 Q4_1, 4 Q5_1
 * (against Q8_1). One block b of every row pair. */
T256 INL void blk_step(__m256 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b,
                       const int kind, const int R, const int C) {
    static const unsigned wbs_tab[5] = {sizeof(kiln_block_q8_0), sizeof(kiln_block_q4_0), sizeof(kiln_block_q5_0),
                                        sizeof(kiln_block_q4_1), sizeof(kiln_block_q5_1)};
    const size_t wbs = wbs_tab[kind];
    const size_t abs_ = kind >= 3 ? sizeof(kiln_block_q8_1) : sizeof(kiln_block_q8_0), aq_off = kind >= 3 ? 4 : 2;
    __m256i wq[MAXR], wx[MAXR];
    float wd[MAXR], wm[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * wbs;
        wd[r] = h2f(p);
        wm[r] = 0.f;
        switch (kind) {
        case 0:
            wq[r] = _mm256_loadu_si256((const __m256i *)(p + 2));
            wx[r] = _mm256_sign_epi8(wq[r], wq[r]); /* |w| as u8 */
            break;
        case 1: wq[r] = nibbles(p + 2); break;
        case 2: wq[r] = _mm256_or_si256(nibbles(p + 6), bit4_bytes(p + 2)); break;
        case 3:
            wq[r] = nibbles(p + 4);
            wm[r] = h2f(p + 2);
            break;
        default:
            wq[r] = _mm256_or_si256(nibbles(p + 8), bit4_bytes(p + 4));
            wm[r] = h2f(p + 2);
            break;
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        __m256i aq = _mm256_loadu_si256((const __m256i *)(p + aq_off));
        float da = h2f(p);
        __m256i corr = _mm256_setzero_si256();
        if (kind == 1 || kind == 2) /* zp * sum(a) per int32 lane */
            corr = sum_pairs(_mm256_maddubs_epi16(_mm256_set1_epi8(kind == 1 ? 8 : 16), aq));
        UNROLL for (int r = 0; r < R; r++) {
            __m256i s;
            if (kind == 0) s = sum_pairs(_mm256_maddubs_epi16(wx[r], _mm256_sign_epi8(aq, wq[r])));
            else s = _mm256_sub_epi32(sum_pairs(_mm256_maddubs_epi16(wq[r], aq)), corr);
            acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(wd[r] * da), acc[r][c]);
            if (kind >= 3) /* m * d * sum(a), once: in lane 0 */
                acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_setr_ps(wm[r] * h2f(p + 2), 0, 0, 0, 0, 0, 0, 0));
        }
    }
}

#define KILN_BLK_BODY(name, kind)                                                                             \
    T256 INL void name##_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, \
                              const int C) {                                                                  \
        __m256 acc[MAXR][MAXC];                                                                               \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps(); \
        for (int64_t b = 0; b < k / 32; b++) blk_step(acc, w, a, b, kind, R, C);                              \
        reduce_store(acc, res, R, C);                                                                         \
    }
KILN_BLK_BODY(q8_0, 0)
KILN_BLK_BODY(q4_0, 1)
KILN_BLK_BODY(q5_0, 2)
KILN_BLK_BODY(q4_1, 3)
KILN_BLK_BODY(q5_1, 4)
KILN_TILES(q8_0, 2, 3, T256)
KILN_TILES(q4_0, 2, 3, T256)
KILN_TILES(q5_0, 2, 3, T256)
KILN_TILES(q4_1, 2, 3, T256)
KILN_TILES(q5_1, 2, 3, T256)

/* ---- K-quants x Q8_K ------------------------------------------------------------------------ */

/* Q4_K (hi5 = 0) and Q5_K (hi5 = 1): one super-block of every row pair. */
T256 INL void q45_K_sb(__m256 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b,
                       const int hi5, const int R, const int C) {
    const size_t wbs = hi5 ? sizeof(kiln_block_q5_K) : sizeof(kiln_block_q4_K), abs_ = sizeof(kiln_block_q8_K);
    const size_t qs_off = hi5 ? 48 : 16;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i isum[MAXR][MAXC], mn16[MAXR], qh[MAXR];
    uint8_t sc[MAXR][8];
    float wd[MAXR], wdm[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *p = w[r] + (size_t)b * wbs;
        wd[r] = h2f(p);
        wdm[r] = h2f(p + 2);
        uint64_t s8, m8;
        kiln_cpu_k4_unpack(p + 4, &s8, &m8);
        memcpy(sc[r], &s8, 8);
        __m128i mv = _mm_cvtsi64_si128((long long)m8);
        mn16[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mv, mv)); /* each min twice: one per 16-sum */
        if (hi5) qh[r] = _mm256_loadu_si256((const __m256i *)(p + 16));
        UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
    }
    UNROLL for (int ch = 0; ch < 4; ch++) {
        __m256i lo[MAXR], hi[MAXR], s_lo[MAXR], s_hi[MAXR];
        UNROLL for (int r = 0; r < R; r++) {
            const uint8_t *p = w[r] + (size_t)b * wbs;
            __m256i x = _mm256_loadu_si256((const __m256i *)(p + qs_off + 32 * ch));
            lo[r] = _mm256_and_si256(x, m4);
            hi[r] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            if (hi5) {
                const __m256i one = _mm256_set1_epi8(1);
                lo[r] = _mm256_or_si256(lo[r], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[r], 2 * ch), one), 4));
                hi[r] = _mm256_or_si256(hi[r], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh[r], 2 * ch + 1), one), 4));
            }
            s_lo[r] = _mm256_set1_epi16(sc[r][2 * ch]);
            s_hi[r] = _mm256_set1_epi16(sc[r][2 * ch + 1]);
        }
        UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *q = a[c] + (size_t)b * abs_ + 4 + 64 * ch;
            __m256i a0 = _mm256_loadu_si256((const __m256i *)q), a1 = _mm256_loadu_si256((const __m256i *)(q + 32));
            UNROLL for (int r = 0; r < R; r++) {
                __m256i t0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], a0), s_lo[r]);
                __m256i t1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], a1), s_hi[r]);
                isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_add_epi32(t0, t1));
            }
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        float da;
        memcpy(&da, p, 4);
        __m256i bsums = _mm256_loadu_si256((const __m256i *)(p + 4 + 256));
        UNROLL for (int r = 0; r < R; r++) {
            __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_set1_ps(wd[r] * da), acc[r][c]);
            __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mn16[r], bsums));
            acc[r][c] = _mm256_fnmadd_ps(m, _mm256_set1_ps(wdm[r] * da), t);
        }
    }
}

T256 INL void q4_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m256 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q45_K_sb(acc, w, a, b, 0, R, C);
    reduce_store(acc, res, R, C);
}
T256 INL void q5_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m256 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q45_K_sb(acc, w, a, b, 1, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q4_K, 2, 2, T256)
KILN_TILES(q5_K, 2, 2, T256)

/* Q6_K: u8 q in 0..63 (value q - 32), 16 signed 8-bit scales. */
T256 INL void q6_K_sb(__m256 acc[MAXR][MAXC], const uint8_t *const *w, const uint8_t *const *a, int64_t b, const int R,
                      const int C) {
    const size_t wbs = sizeof(kiln_block_q6_K), abs_ = sizeof(kiln_block_q8_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256i isum[MAXR][MAXC], sc16[MAXR];
    float wd[MAXR];
    UNROLL for (int r = 0; r < R; r++) {
        const kiln_block_q6_K *x = (const kiln_block_q6_K *)(w[r] + (size_t)b * wbs);
        wd[r] = h2f((const uint8_t *)&x->d);
        sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
        UNROLL for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
    }
    UNROLL for (int g = 0; g < 8; g++) { /* 32 values: half g / 4, quarter g % 4 */
        const int h = g / 4, qtr = g % 4;
        __m256i q[MAXR], s[MAXR];
        UNROLL for (int r = 0; r < R; r++) {
            const kiln_block_q6_K *x = (const kiln_block_q6_K *)(w[r] + (size_t)b * wbs);
            __m256i l = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32 * (qtr & 1)));
            __m256i hh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
            __m256i lo = qtr < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
            /* bits 2 qtr .. 2 qtr + 1 of qh to bits 4..5 */
            __m256i hb = qtr == 0 ? _mm256_slli_epi16(hh, 4) : qtr == 1 ? _mm256_slli_epi16(hh, 2)
                       : qtr == 2 ? hh : _mm256_srli_epi16(hh, 2);
            q[r] = _mm256_or_si256(lo, _mm256_and_si256(hb, m30));
            const int j = 8 * h + 2 * qtr; /* sub-blocks j, j + 1 */
            s[r] = _mm256_setr_m128i(_mm_set1_epi16(x->scales[j]), _mm_set1_epi16(x->scales[j + 1]));
        }
        UNROLL for (int c = 0; c < C; c++) {
            __m256i av = _mm256_loadu_si256((const __m256i *)(a[c] + (size_t)b * abs_ + 4 + 32 * g));
            UNROLL for (int r = 0; r < R; r++)
                isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], av), s[r]));
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *p = a[c] + (size_t)b * abs_;
        float da;
        memcpy(&da, p, 4);
        __m256i bsums = _mm256_loadu_si256((const __m256i *)(p + 4 + 256));
        UNROLL for (int r = 0; r < R; r++) {
            /* the -32 of every value: 32 * sum_j scale_j * bsum_j */
            __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16[r], bsums), 5);
            __m256i sum = _mm256_sub_epi32(isum[r][c], corr);
            acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(wd[r] * da), acc[r][c]);
        }
    }
}

T256 INL void q6_K_body(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res, const int R, const int C) {
    __m256 acc[MAXR][MAXC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / 256; b++) q6_K_sb(acc, w, a, b, R, C);
    reduce_store(acc, res, R, C);
}
KILN_TILES(q6_K, 2, 2, T256)

/* ---- the table ---------------------------------------------------------------------------- */

static const kiln_cpu_dot_traits avx2_traits[] = {
    {KILN_TYPE_F32, KILN_TYPE_F32, 1, kiln_cpu_act_size_f32, NULL, f32_tile, 3, 4, "avx2"},
    {KILN_TYPE_F16, KILN_TYPE_F16, 1, kiln_cpu_act_size_16, act_f16, f16_tile, 3, 4, "avx2"},
    {KILN_TYPE_BF16, KILN_TYPE_BF16, 1, kiln_cpu_act_size_16, act_bf16, bf16_tile, 3, 4, "avx2"},
    {KILN_TYPE_Q8_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q8_0_tile, 2, 3, "avx2"},
    {KILN_TYPE_Q4_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q4_0_tile, 2, 3, "avx2"},
    {KILN_TYPE_Q5_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, act_q8_0, q5_0_tile, 2, 3, "avx2"},
    {KILN_TYPE_Q4_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, act_q8_1, q4_1_tile, 2, 3, "avx2"},
    {KILN_TYPE_Q5_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, act_q8_1, q5_1_tile, 2, 3, "avx2"},
    {KILN_TYPE_Q4_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q4_K_tile, 2, 2, "avx2"},
    {KILN_TYPE_Q5_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q5_K_tile, 2, 2, "avx2"},
    {KILN_TYPE_Q6_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, act_q8_K, q6_K_tile, 2, 2, "avx2"},
};

const kiln_cpu_dot_traits *kiln_cpu_dot_avx2_table(int32_t type) {
    for (size_t i = 0; i < sizeof avx2_traits / sizeof avx2_traits[0]; i++)
        if (avx2_traits[i].weight_type == type) return &avx2_traits[i];
    return NULL;
}

#else /* not x86-64 */

const kiln_cpu_dot_traits *kiln_cpu_dot_avx2_table(int32_t type) {
    (void)type;
    return NULL;
}

#endif
