/*
 * quant.c - reference conversions between F32 and the GGUF element types:
 * IEEE half and bfloat16, and ggml's quantized block formats (layouts in
 * quant_blocks.h).
 *
 * These routines are the definition of the formats inside kiln: the CPU
 * kernels are tested against them and the quantize tool uses them to write
 * files. The *_0 / *_1 / Q8_K quantizers follow ggml's reference rounding
 * exactly, so they reproduce llama.cpp's files byte for byte; the K-quant
 * quantizers run the same weighted least-squares scale search as
 * llama.cpp's reference ones (no importance matrix) and reproduce its Q4_K
 * and Q6_K files byte for byte too (test/test_quant.c checks both).
 *
 * Nothing here allocates. Non-finite inputs give unspecified (but defined,
 * never trapping) output values.
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "internal.h"
#include "quant.h"
#include "quant_blocks.h"

/* ---- small helpers ------------------------------------------------------ */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline float h2f(const uint8_t *p) { return kiln_fp16_to_fp32(rd16(p)); }

/* Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves
 * the integer in the low mantissa bits. This is the rounding ggml's K-quant
 * reference uses (and so must we, to produce the same bytes). Outside that
 * range (non-finite input) the result is garbage but defined. */
static inline int round_even(float v) {
    float t = v + 12582912.f;
    uint32_t u = kiln_fp32_to_bits(t);
    return (int)(u & 0x007fffff) - 0x00400000;
}

/* Truncation of v to an int in [lo, hi]; NaN maps to lo. Replaces C casts
 * that would be undefined behaviour for out-of-range values. */
static inline int trunc_clamp(float v, int lo, int hi) {
    if (!(v >= (float)lo)) return lo;
    if (v >= (float)hi) return hi;
    return (int)v;
}
/* roundf(v) (ties away from zero) clamped to [-127, 127]. */
static inline int round_away_i8(float v) {
    if (!(v >= -127.f)) return v != v ? 0 : -127;
    if (v >= 127.f) return 127;
    return (int)roundf(v);
}
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---- half and bfloat16 ---------------------------------------------------- */

float kiln_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f;
    uint32_t m = h & 0x3ff;
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in float */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31) return kiln_fp32_from_bits(sign | 0x7f800000u | (m << 13));
    return kiln_fp32_from_bits(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t kiln_fp32_to_fp16(float f) {
    uint32_t x = kiln_fp32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        if (ax == 0x7f800000u) return sign | 0x7c00;
        /* NaN: keep it a (quiet) NaN and the top payload bits */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00; /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {
        /* below 2^-14: a half subnormal, q = round(|f| * 2^24) */
        uint32_t e = ax >> 23;
        if (e < 102) return sign; /* < 2^-25: rounds to zero */
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal */
    }
    /* normal: rebias the exponent, round the 13 dropped bits to even (a
     * carry into the exponent is the correct result) */
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1);
    return (uint16_t)(sign | ((r >> 13) - (112u << 10)));
}

uint16_t kiln_fp32_to_bf16(float f) {
    uint32_t x = kiln_fp32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---- dequantization ------------------------------------------------------- */

static void dequant_q4_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q4_0), y += KILN_QK) {
        float d = h2f(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q4_1), y += KILN_QK) {
        float d = h2f(b), m = h2f(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0xF) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

static void dequant_q5_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q5_0), y += KILN_QK) {
        float d = h2f(b);
        uint32_t qh = rd32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (float)(lo - 16) * d;
            y[j + 16] = (float)(hi - 16) * d;
        }
    }
}

static void dequant_q5_1(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q5_1), y += KILN_QK) {
        float d = h2f(b), m = h2f(b + 2);
        uint32_t qh = rd32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (float)lo * d + m;
            y[j + 16] = (float)hi * d + m;
        }
    }
}

static void dequant_q8_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q8_0), y += KILN_QK) {
        float d = h2f(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < KILN_QK; j++) y[j] = (float)qs[j] * d;
    }
}

static void dequant_q8_1(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q8_1), y += KILN_QK) {
        float d = h2f(b);
        const int8_t *qs = (const int8_t *)(b + 4);
        for (int j = 0; j < KILN_QK; j++) y[j] = (float)qs[j] * d;
    }
}

static void dequant_q2_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q2_K)) {
        const kiln_block_q2_K *blk = (const kiln_block_q2_K *)b;
        float d = kiln_fp16_to_fp32(blk->d), dmin = kiln_fp16_to_fp32(blk->dmin);
        for (int half = 0; half < 2; half++) {
            const uint8_t *q = blk->qs + 32 * half;
            for (int s = 0; s < 8; s++) { /* sub-block 8 * half + s */
                uint8_t sc = blk->scales[8 * half + s];
                float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
                int shift = 2 * (s / 2), off = 16 * (s % 2);
                for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[off + l] >> shift) & 3) - ml;
            }
        }
    }
}

/* The 16 signed 6-bit scales of a Q3_K block. */
static void q3k_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

static void dequant_q3_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q3_K)) {
        const kiln_block_q3_K *blk = (const kiln_block_q3_K *)b;
        float d = kiln_fp16_to_fp32(blk->d);
        int8_t sc[16];
        q3k_scales(blk->scales, sc);
        for (int e = 0; e < KILN_QK_K; e++) {
            int half = e / 128, r = e % 128;
            int shift = 2 * (r / 32), l = r % 32;
            int q = (blk->qs[32 * half + l] >> shift) & 3;
            if (!(blk->hmask[l] & (1 << (e / 32)))) q -= 4;
            y[e] = d * (float)sc[e / 16] * (float)q;
        }
        y += KILN_QK_K;
    }
}

static void dequant_q4_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q4_K)) {
        const kiln_block_q4_K *blk = (const kiln_block_q4_K *)b;
        float d = kiln_fp16_to_fp32(blk->d), dmin = kiln_fp16_to_fp32(blk->dmin);
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = blk->qs + 32 * c;
            uint8_t sc, mn;
            kiln_q4k_scale_min(blk->scales, 2 * c, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            kiln_q4k_scale_min(blk->scales, 2 * c + 1, &sc, &mn);
            float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) y[32 + l] = d2 * (float)(q[l] >> 4) - m2;
            y += 64;
        }
    }
}

static void dequant_q5_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q5_K)) {
        const kiln_block_q5_K *blk = (const kiln_block_q5_K *)b;
        float d = kiln_fp16_to_fp32(blk->d), dmin = kiln_fp16_to_fp32(blk->dmin);
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = blk->qs + 32 * c;
            uint8_t sc, mn;
            kiln_q4k_scale_min(blk->scales, 2 * c, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            kiln_q4k_scale_min(blk->scales, 2 * c + 1, &sc, &mn);
            float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++) {
                int h1 = (blk->qh[l] >> (2 * c)) & 1, h2 = (blk->qh[l] >> (2 * c + 1)) & 1;
                y[l] = d1 * (float)((q[l] & 0xF) | (h1 << 4)) - m1;
                y[32 + l] = d2 * (float)((q[l] >> 4) | (h2 << 4)) - m2;
            }
            y += 64;
        }
    }
}

static void dequant_q6_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q6_K)) {
        const kiln_block_q6_K *blk = (const kiln_block_q6_K *)b;
        float d = kiln_fp16_to_fp32(blk->d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk->ql + 64 * h, *qh = blk->qh + 32 * h;
            const int8_t *sc = blk->scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
        }
    }
}

static void dequant_q8_K(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += sizeof(kiln_block_q8_K), y += KILN_QK_K) {
        float d;
        memcpy(&d, b, 4);
        const int8_t *qs = (const int8_t *)(b + 4);
        for (int j = 0; j < KILN_QK_K; j++) y[j] = d * (float)qs[j];
    }
}

/* ---- quantization: the 32-element formats ------------------------------- */

/* The element of largest magnitude (first one on ties), signed. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

/* Q4_0/Q5_0: the extreme element maps to -8 (-16), i.e. d = max / -8, and
 * each value to trunc(x / d + 8.5), which is round-half-up. */
static void quant_q4_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q4_0)) {
        float d = signed_absmax(x, KILN_QK) / -8.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        for (int j = 0; j < 16; j++) {
            float v0 = x[j] * id, v1 = x[j + 16] * id;
            int q0 = trunc_clamp(v0 + 8.5f, 0, 15), q1 = trunc_clamp(v1 + 8.5f, 0, 15);
            b[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q5_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q5_0)) {
        float d = signed_absmax(x, KILN_QK) / -16.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            float v0 = x[j] * id, v1 = x[j + 16] * id;
            int q0 = trunc_clamp(v0 + 16.5f, 0, 31), q1 = trunc_clamp(v1 + 16.5f, 0, 31);
            b[6 + j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        wr32(b + 2, qh);
    }
}

/* Q4_1/Q5_1: min and step from the block's range, round half up. */
static void quant_q4_1(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q4_1)) {
        float mn, mx;
        minmax(x, KILN_QK, &mn, &mx);
        float d = (mx - mn) / 15.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        wr16(b + 2, kiln_fp32_to_fp16(mn));
        for (int j = 0; j < 16; j++) {
            float v0 = (x[j] - mn) * id, v1 = (x[j + 16] - mn) * id;
            int q0 = trunc_clamp(v0 + 0.5f, 0, 15), q1 = trunc_clamp(v1 + 0.5f, 0, 15);
            b[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q5_1(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q5_1)) {
        float mn, mx;
        minmax(x, KILN_QK, &mn, &mx);
        float d = (mx - mn) / 31.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        wr16(b + 2, kiln_fp32_to_fp16(mn));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            float v0 = (x[j] - mn) * id, v1 = (x[j + 16] - mn) * id;
            int q0 = trunc_clamp(v0 + 0.5f, 0, 31), q1 = trunc_clamp(v1 + 0.5f, 0, 31);
            b[8 + j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        wr32(b + 4, qh);
    }
}

/* Q8_0/Q8_1: d = absmax / 127, q = roundf(x / d). */
static void quant_q8_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q8_0)) {
        float amax = 0.f;
        for (int j = 0; j < KILN_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        for (int j = 0; j < KILN_QK; j++) b[2 + j] = (uint8_t)(int8_t)round_away_i8(x[j] * id);
    }
}

static void quant_q8_1(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK, b += sizeof(kiln_block_q8_1)) {
        float amax = 0.f;
        for (int j = 0; j < KILN_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f;
        float id = d != 0.f ? 1.f / d : 0.f;
        wr16(b, kiln_fp32_to_fp16(d));
        int sum = 0;
        for (int j = 0; j < KILN_QK; j++) {
            int q = round_away_i8(x[j] * id);
            b[4 + j] = (uint8_t)(int8_t)q;
            sum += q;
        }
        wr16(b + 2, kiln_fp32_to_fp16((float)sum * d));
    }
}

/* ---- quantization: K formats ---------------------------------------------- */

/*
 * Affine fit of one sub-block: find scale s >= 0 and offset m <= 0 so that
 * x[i] ~ s * L[i] + m with integer L[i] in [0, nmax], minimising the
 * weighted error sum w[i] * err(x[i] - s L[i] - m) (squared, or absolute
 * when `abs_err`).
 *
 * Start from the plain range fit (m = min(x, 0), s = range / nmax), then try
 * nstep + 1 slightly different grid densities (nmax + rmin + rdelta * t
 * steps from the best offset so far up to max(x)): for each, round to that
 * grid and solve the 2x2 weighted least-squares problem for (s, m) given
 * those levels, keeping the
 * best. Returns s and stores -m in *neg_min.
 */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L,
                        float *neg_min, float rmin, float rdelta, int nstep, bool abs_err) {
    float lo = x[0], hi = x[0];
    float sw = w[0], swx = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sw += w[i];
        swx += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0.f;
    }
    float inv = (float)nmax / (hi - lo);
    float scale = 1.f / inv, offset = lo;
    float best = 0.f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(round_even(inv * (x[i] - lo)), 0, nmax);
        float e = scale * (float)L[i] + lo - x[i];
        best += w[i] * (abs_err ? fabsf(e) : e * e);
    }
    uint8_t trial[32];
    for (int t = 0; t <= nstep; t++) {
        /* each grid starts at the best offset found so far */
        float tinv = (rmin + rdelta * (float)t + (float)nmax) / (hi - offset);
        float swl = 0.f, swl2 = 0.f, swxl = 0.f;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(tinv * (x[i] - offset)), 0, nmax);
            trial[i] = (uint8_t)l;
            swl += w[i] * (float)l;
            swl2 += w[i] * (float)l * (float)l;
            swxl += w[i] * (float)l * x[i];
        }
        float det = sw * swl2 - swl * swl;
        if (!(det > 0.f)) continue;
        float s = (sw * swxl - swx * swl) / det;
        float m = (swl2 * swx - swl * swxl) / det;
        if (m > 0.f) { /* offsets are never positive: refit the scale alone */
            m = 0.f;
            s = swxl / swl2;
        }
        float err = 0.f;
        for (int i = 0; i < n; i++) {
            float e = s * (float)trial[i] + m - x[i];
            err += w[i] * (abs_err ? fabsf(e) : e * e);
        }
        if (err < best) {
            memcpy(L, trial, (size_t)n);
            best = err;
            scale = s;
            offset = m;
        }
    }
    *neg_min = -offset;
    return scale;
}

/*
 * Symmetric fit for Q6_K sub-blocks: x[i] ~ s * (L[i] - nmax) with L[i] in
 * [0, 2 nmax), weights x^2. The extreme element sets the first grid; 18
 * nearby grid densities are tried and the best least-squares scale kept.
 */
static float fit_symmetric(int n, int nmax, const float *x, uint8_t *L) {
    float max = signed_absmax(x, n);
    if (fabsf(max) < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float inv = -(float)nmax / max;
    float sxl = 0.f, sl2 = 0.f;
    for (int i = 0; i < n; i++) {
        int l = clampi(round_even(inv * x[i]), -nmax, nmax - 1);
        L[i] = (uint8_t)(l + nmax);
        float w = x[i] * x[i];
        sxl += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    float scale = sl2 != 0.f ? sxl / sl2 : 0.f;
    float best = scale * sxl;
    for (int t = -9; t <= 9; t++) {
        if (t == 0) continue;
        float tinv = -((float)nmax + 0.1f * (float)t) / max;
        float txl = 0.f, tl2 = 0.f;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_even(tinv * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            txl += w * x[i] * (float)l;
            tl2 += w * (float)l * (float)l;
        }
        /* the fit's error falls as txl^2 / tl2 grows */
        if (tl2 > 0.f && txl * txl > best * tl2) {
            for (int i = 0; i < n; i++)
                L[i] = (uint8_t)(clampi(round_even(tinv * x[i]), -nmax, nmax - 1) + nmax);
            scale = txl / tl2;
            best = scale * txl;
        }
    }
    return scale;
}

/* Q3_K sub-blocks: symmetric fit with weights x^2, then up to 5 rounds of
 * moving single levels while that improves the least-squares fit. L gets
 * values in [0, 2 nmax). */
static float fit_symmetric_refine(int n, int nmax, const float *x, int8_t *L) {
    float max = signed_absmax(x, n);
    if (fabsf(max) < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float inv = -(float)nmax / max;
    float sxl = 0.f, sl2 = 0.f;
    for (int i = 0; i < n; i++) {
        int l = clampi(round_even(inv * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sxl += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    for (int round = 0; round < 5; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float txl = sxl - w * x[i] * (float)L[i];
            if (!(txl > 0.f)) continue;
            float tl2 = sl2 - w * (float)L[i] * (float)L[i];
            int nl = clampi(round_even(x[i] * tl2 / txl), -nmax, nmax - 1);
            if (nl == L[i]) continue;
            txl += w * x[i] * (float)nl;
            tl2 += w * (float)nl * (float)nl;
            if (tl2 > 0.f && txl * txl * sl2 > sxl * sxl * tl2) {
                L[i] = (int8_t)nl;
                sxl = txl;
                sl2 = tl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return sl2 > 0.f ? sxl / sl2 : 0.f;
}

static void quant_q2_K(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[KILN_QK_K];
    float w[16], scales[16], mins[16];
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q2_K)) {
        kiln_block_q2_K blk;
        memset(&blk, 0, sizeof blk);
        float max_scale = 0.f, max_min = 0.f;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0.f) {
            float inv = 15.f / max_scale;
            for (int j = 0; j < 16; j++) blk.scales[j] = (uint8_t)clampi(round_even(inv * scales[j]), 0, 15);
            blk.d = kiln_fp32_to_fp16(max_scale / 15.f);
        }
        if (max_min > 0.f) {
            float inv = 15.f / max_min;
            for (int j = 0; j < 16; j++)
                blk.scales[j] |= (uint8_t)(clampi(round_even(inv * mins[j]), 0, 15) << 4);
            blk.dmin = kiln_fp32_to_fp16(max_min / 15.f);
        }
        /* requantize against the scales actually stored */
        for (int j = 0; j < 16; j++) {
            float d = kiln_fp16_to_fp32(blk.d) * (float)(blk.scales[j] & 0xF);
            if (d == 0.f) continue;
            float dm = kiln_fp16_to_fp32(blk.dmin) * (float)(blk.scales[j] >> 4);
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)clampi(round_even((x[16 * j + l] + dm) / d), 0, 3);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *q = L + 128 * h + l;
                blk.qs[32 * h + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
            }
        memcpy(b, &blk, sizeof blk);
    }
}

static void quant_q3_K(const float *x, uint8_t *b, int64_t nb) {
    int8_t L[KILN_QK_K];
    float scales[16];
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q3_K)) {
        kiln_block_q3_K blk;
        memset(&blk, 0, sizeof blk);
        float max_scale = 0.f, amax = 0.f;
        for (int j = 0; j < 16; j++) {
            scales[j] = fit_symmetric_refine(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_scale != 0.f) {
            float inv = -32.f / max_scale;
            for (int j = 0; j < 16; j++) {
                int l = clampi(round_even(inv * scales[j]), -32, 31) + 32;
                if (j < 8) blk.scales[j] = (uint8_t)(l & 0xF);
                else blk.scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                blk.scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            blk.d = kiln_fp32_to_fp16(1.f / inv);
        }
        int8_t sc[16];
        q3k_scales(blk.scales, sc);
        for (int j = 0; j < 16; j++) {
            float d = kiln_fp16_to_fp32(blk.d) * (float)sc[j];
            if (d == 0.f) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(clampi(round_even(x[16 * j + l] / d), -4, 3) + 4);
        }
        for (int e = 0; e < KILN_QK_K; e++) {
            if (L[e] > 3) {
                blk.hmask[e % 32] |= (uint8_t)(1 << (e / 32));
                L[e] -= 4;
            }
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const int8_t *q = L + 128 * h + l;
                blk.qs[32 * h + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
            }
        memcpy(b, &blk, sizeof blk);
    }
}

/* Packs the 8 6-bit scales and mins of a Q4_K/Q5_K block (the inverse of
 * kiln_q4k_scale_min). */
static void q4k_pack_scales(uint8_t s[12], const uint8_t *ls, const uint8_t *lm) {
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/* Shared by Q4_K (nmax 15) and Q5_K (nmax 31): fits the 8 sub-blocks,
 * quantizes their scales and mins to 6 bits against the block maxima, and
 * requantizes the values against the stored scales. Outputs levels in L,
 * the packed scales and d/dmin. */
static void quant_k_affine(const float *x, int nmax, float rmin, float rdelta, int nstep,
                           uint8_t L[KILN_QK_K], uint8_t scales12[12], uint16_t *d_out,
                           uint16_t *dmin_out) {
    float w[32], scales[8], mins[8];
    float max_scale = 0.f, max_min = 0.f;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sx2 = 0.f;
        for (int l = 0; l < 32; l++) sx2 += xs[l] * xs[l];
        float rms = sqrtf(sx2 / 32.f);
        /* favour the large values, but never ignore the small ones */
        for (int l = 0; l < 32; l++) w[l] = rms + fabsf(xs[l]);
        scales[j] = fit_affine(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0.f ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0.f ? 63.f / max_min : 0.f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)clampi(round_even(inv_scale * scales[j]), 0, 63);
        lm[j] = (uint8_t)clampi(round_even(inv_min * mins[j]), 0, 63);
    }
    q4k_pack_scales(scales12, ls, lm);
    *d_out = kiln_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = kiln_fp32_to_fp16(max_min / 63.f);
    float d = kiln_fp16_to_fp32(*d_out), dmin = kiln_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        float ds = d * (float)ls[j];
        if (ds == 0.f) continue;
        float dm = dmin * (float)lm[j];
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)clampi(round_even((x[32 * j + l] + dm) / ds), 0, nmax);
    }
}

static void quant_q4_K(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[KILN_QK_K];
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q4_K)) {
        kiln_block_q4_K blk;
        quant_k_affine(x, 15, -1.f, 0.1f, 20, L, blk.scales, &blk.d, &blk.dmin);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                blk.qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
        memcpy(b, &blk, sizeof blk);
    }
}

static void quant_q5_K(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[KILN_QK_K];
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q5_K)) {
        kiln_block_q5_K blk;
        quant_k_affine(x, 31, -0.5f, 0.1f, 15, L, blk.scales, &blk.d, &blk.dmin);
        memset(blk.qh, 0, sizeof blk.qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
                blk.qh[l] |= (uint8_t)(((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1)));
                blk.qs[32 * c + l] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
            }
        memcpy(b, &blk, sizeof blk);
    }
}

static void quant_q6_K(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[KILN_QK_K];
    float scales[16];
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q6_K)) {
        kiln_block_q6_K blk;
        memset(&blk, 0, sizeof blk);
        float max_scale = 0.f, amax = 0.f;
        for (int j = 0; j < 16; j++) {
            scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        if (amax < 1e-15f) { /* all (near) zero: an all-zero block */
            memcpy(b, &blk, sizeof blk);
            continue;
        }
        float inv = -128.f / max_scale;
        blk.d = kiln_fp32_to_fp16(1.f / inv);
        for (int j = 0; j < 16; j++) blk.scales[j] = (int8_t)clampi(round_even(inv * scales[j]), -128, 127);
        float d = kiln_fp16_to_fp32(blk.d);
        for (int j = 0; j < 16; j++) {
            float ds = d * (float)blk.scales[j];
            if (ds == 0.f) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)(clampi(round_even(x[16 * j + l] / ds), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = L + 128 * h;
            uint8_t *ql = blk.ql + 64 * h, *qh = blk.qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                  ((q[l + 96] >> 4) << 6));
            }
        }
        memcpy(b, &blk, sizeof blk);
    }
}

/* Q8_K: the extreme element maps to -127, so every q is in [-127, 127]. */
static void quant_q8_K(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += KILN_QK_K, b += sizeof(kiln_block_q8_K)) {
        kiln_block_q8_K blk;
        memset(&blk, 0, sizeof blk);
        float max = signed_absmax(x, KILN_QK_K);
        if (max != 0.f) {
            float inv = -127.f / max;
            for (int j = 0; j < KILN_QK_K; j++) {
                float v = inv * x[j];
                blk.qs[j] = (int8_t)(v != v ? 0 : clampi(round_even(fminf(fmaxf(v, -128.f), 127.f)), -128, 127));
            }
            for (int j = 0; j < 16; j++) {
                int s = 0;
                for (int l = 0; l < 16; l++) s += blk.qs[16 * j + l];
                blk.bsums[j] = (int16_t)s;
            }
            blk.d = 1.f / inv;
        }
        memcpy(b, &blk, sizeof blk);
    }
}

/* ---- entry points ---------------------------------------------------------- */

static kiln_status check_row(const char *what, int32_t type, const void *a, const void *b, int64_t n,
                             int64_t *nblocks) {
    const kiln_type_traits *t = kiln_type_traits_get(type);
    if (!t) return kiln_error(KILN_E_UNSUPPORTED, "%s: unknown tensor type %d", what, (int)type);
    if (n < 0 || n % t->block_size != 0)
        return kiln_error(KILN_E_INVALID_ARG, "%s: %lld elements is not a multiple of %s's block size %u",
                          what, (long long)n, t->name, t->block_size);
    if (n > 0 && (!a || !b)) return kiln_error(KILN_E_INVALID_ARG, "%s: NULL buffer", what);
    *nblocks = n / t->block_size;
    return KILN_OK;
}

kiln_status kiln_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    int64_t nb;
    kiln_status st = check_row("kiln_dequantize_row", type, src, dst, n, &nb);
    if (st != KILN_OK) return st;
    const uint8_t *s = src;
    switch (type) {
    case KILN_TYPE_F32: if (n) memmove(dst, src, (size_t)n * 4); break;
    case KILN_TYPE_F16: for (int64_t i = 0; i < n; i++) dst[i] = h2f(s + 2 * i); break;
    case KILN_TYPE_BF16: for (int64_t i = 0; i < n; i++) dst[i] = kiln_bf16_to_fp32(rd16(s + 2 * i)); break;
    case KILN_TYPE_Q4_0: dequant_q4_0(s, dst, nb); break;
    case KILN_TYPE_Q4_1: dequant_q4_1(s, dst, nb); break;
    case KILN_TYPE_Q5_0: dequant_q5_0(s, dst, nb); break;
    case KILN_TYPE_Q5_1: dequant_q5_1(s, dst, nb); break;
    case KILN_TYPE_Q8_0: dequant_q8_0(s, dst, nb); break;
    case KILN_TYPE_Q8_1: dequant_q8_1(s, dst, nb); break;
    case KILN_TYPE_Q2_K: dequant_q2_K(s, dst, nb); break;
    case KILN_TYPE_Q3_K: dequant_q3_K(s, dst, nb); break;
    case KILN_TYPE_Q4_K: dequant_q4_K(s, dst, nb); break;
    case KILN_TYPE_Q5_K: dequant_q5_K(s, dst, nb); break;
    case KILN_TYPE_Q6_K: dequant_q6_K(s, dst, nb); break;
    case KILN_TYPE_Q8_K: dequant_q8_K(s, dst, nb); break;
    default:
        return kiln_error(KILN_E_UNSUPPORTED, "kiln_dequantize_row: no dequantizer for type %s",
                          kiln_type_name(type));
    }
    return KILN_OK;
}

kiln_status kiln_quantize_row(int32_t type, const float *src, void *dst, int64_t n) {
    int64_t nb;
    kiln_status st = check_row("kiln_quantize_row", type, src, dst, n, &nb);
    if (st != KILN_OK) return st;
    uint8_t *d = dst;
    switch (type) {
    case KILN_TYPE_F32: if (n) memmove(dst, src, (size_t)n * 4); break;
    case KILN_TYPE_F16: for (int64_t i = 0; i < n; i++) wr16(d + 2 * i, kiln_fp32_to_fp16(src[i])); break;
    case KILN_TYPE_BF16: for (int64_t i = 0; i < n; i++) wr16(d + 2 * i, kiln_fp32_to_bf16(src[i])); break;
    case KILN_TYPE_Q4_0: quant_q4_0(src, d, nb); break;
    case KILN_TYPE_Q4_1: quant_q4_1(src, d, nb); break;
    case KILN_TYPE_Q5_0: quant_q5_0(src, d, nb); break;
    case KILN_TYPE_Q5_1: quant_q5_1(src, d, nb); break;
    case KILN_TYPE_Q8_0: quant_q8_0(src, d, nb); break;
    case KILN_TYPE_Q8_1: quant_q8_1(src, d, nb); break;
    case KILN_TYPE_Q2_K: quant_q2_K(src, d, nb); break;
    case KILN_TYPE_Q3_K: quant_q3_K(src, d, nb); break;
    case KILN_TYPE_Q4_K: quant_q4_K(src, d, nb); break;
    case KILN_TYPE_Q5_K: quant_q5_K(src, d, nb); break;
    case KILN_TYPE_Q6_K: quant_q6_K(src, d, nb); break;
    case KILN_TYPE_Q8_K: quant_q8_K(src, d, nb); break;
    default:
        return kiln_error(KILN_E_UNSUPPORTED, "kiln_quantize_row: no quantizer for type %s",
                          kiln_type_name(type));
    }
    return KILN_OK;
}
