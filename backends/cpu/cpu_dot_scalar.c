/*
 * cpu_dot_scalar.c - portable C dot kernels and activation quantizers: the
 * reference the SIMD kernels are tested against, and the fallback on
 * processors without AVX2 (or not x86 at all).
 *
 * Each weight-row x activation-row dot product follows llama.cpp's generic
 * formulation for the format pair (integer sums per block, scaled in
 * float), so results match its CPU backend up to float rounding order.
 */
#include <math.h>

#include "cpu_dot.h"
#include "quant.h"
#include "quant_blocks.h"

/* ---- activation quantizers ------------------------------------------------ */

/* Round to nearest, ties to even, for |v| < 2^22 (all callers here have
 * |v| <= 127.01); NaN gives garbage that the callers clamp. */
static inline int round_even(float v) {
    float t = v + 12582912.f;
    uint32_t u = kiln_fp32_to_bits(t);
    return (int)(u & 0x007fffff) - 0x00400000;
}
static inline int clamp127(int v) { return v < -127 ? -127 : v > 127 ? 127 : v; }

void kiln_cpu_act_f16_scalar(const float *x, void *dst, int64_t k) {
    uint8_t *h = dst;
    for (int64_t i = 0; i < k; i++) {
        uint16_t v = kiln_fp32_to_fp16(x[i]);
        memcpy(h + 2 * i, &v, 2);
    }
}

void kiln_cpu_act_bf16_scalar(const float *x, void *dst, int64_t k) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < k; i++) h[i] = kiln_fp32_to_bf16(x[i]);
}

/* One block of 32: the int8 values, returns d (unrounded) and their sum. */
static float q8_block(const float *x, int8_t *q, int *sum) {
    float amax = 0.f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float id = amax != 0.f ? 127.f / amax : 0.f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        q[j] = (int8_t)clamp127(round_even(x[j] * id));
        s += q[j];
    }
    *sum = s;
    return amax / 127.f;
}

void kiln_cpu_act_q8_0_scalar(const float *x, void *dst, int64_t k) {
    kiln_block_q8_0 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) {
        int sum;
        float d = q8_block(x + 32 * b, y[b].qs, &sum);
        y[b].d = kiln_fp32_to_fp16(d);
    }
}

void kiln_cpu_act_q8_1_scalar(const float *x, void *dst, int64_t k) {
    kiln_block_q8_1 *y = dst;
    for (int64_t b = 0; b < k / 32; b++) {
        int sum;
        float d = q8_block(x + 32 * b, y[b].qs, &sum);
        y[b].d = kiln_fp32_to_fp16(d);
        y[b].s = kiln_fp32_to_fp16(d * (float)sum);
    }
}

void kiln_cpu_act_q8_K_scalar(const float *x, void *dst, int64_t k) {
    /* ggml's reference Q8_K is what llama.cpp uses on x86 too; k is a
     * multiple of 256 (the caller checked k_multiple), so this cannot fail */
    (void)kiln_quantize_row(KILN_TYPE_Q8_K, x, dst, k);
}

/* ---- dot products of one weight row with one activation row ------------------ */

typedef float (*dot_fn)(int64_t k, const uint8_t *w, const uint8_t *a);

/* IEEE half -> float, exact (as kiln_fp16_to_fp32) but inline and
 * branch-free (selects, so loops of it vectorize): move exponent and
 * mantissa into place and rebias; inf/NaN get the top exponent;
 * subnormals are renormalized by a float subtraction. */
static inline float h2f_bits(uint16_t h) {
    uint32_t o = ((uint32_t)(h & 0x7fff) << 13) + ((127u - 15u) << 23);
    uint32_t exp = (uint32_t)h & 0x7c00u;
    uint32_t big = o + ((128u - 16u) << 23);
    float sub = kiln_fp32_from_bits(o + (1u << 23)) - kiln_fp32_from_bits(113u << 23);
    uint32_t r = exp == 0x7c00u ? big : exp == 0 ? kiln_fp32_to_bits(sub) : o;
    return kiln_fp32_from_bits(r | ((uint32_t)(h & 0x8000) << 16));
}
static inline float h2f(const uint8_t *p) { return h2f_bits(kiln_cpu_rd16(p)); }

/* The float types keep 8 partial sums (summed at the end): a single
 * running sum would make every add wait for the previous one, and 8
 * independent lanes let the compiler use whatever vector unit the target
 * has. */
#define KILN_FLOAT_DOT(name, load_w, load_a, wsz, asz)                    \
    static float dot_##name(int64_t k, const uint8_t *w, const uint8_t *a) { \
        float acc[8] = {0};                                                \
        int64_t i = 0;                                                     \
        for (; i + 8 <= k; i += 8)                                         \
            for (int j = 0; j < 8; j++)                                    \
                acc[j] += load_w(w + (wsz) * (i + j)) * load_a(a + (asz) * (i + j)); \
        for (; i < k; i++) acc[0] += load_w(w + (wsz) * i) * load_a(a + (asz) * i); \
        return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
    }

static inline float ld_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}
static inline float ld_bf16(const uint8_t *p) { return kiln_bf16_to_fp32(kiln_cpu_rd16(p)); }
KILN_FLOAT_DOT(f32, ld_f32, ld_f32, 4, 4)
KILN_FLOAT_DOT(f16, h2f, h2f, 2, 2)
KILN_FLOAT_DOT(bf16, ld_bf16, ld_bf16, 2, 2)

static float dot_q8_0(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 32; b++, w += sizeof(kiln_block_q8_0), a += sizeof(kiln_block_q8_0)) {
        const int8_t *x = (const int8_t *)(w + 2), *y = (const int8_t *)(a + 2);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += x[j] * y[j];
        s += (float)sum * (h2f(w) * h2f(a));
    }
    return s;
}

static float dot_q4_0(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 32; b++, w += sizeof(kiln_block_q4_0), a += sizeof(kiln_block_q8_0)) {
        const uint8_t *q = w + 2;
        const int8_t *y = (const int8_t *)(a + 2);
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += ((q[j] & 0xF) - 8) * y[j] + ((q[j] >> 4) - 8) * y[j + 16];
        s += (float)sum * (h2f(w) * h2f(a));
    }
    return s;
}

/* The 32 5-bit values of a Q5_0/Q5_1 block (nibbles at q, bit 4 in qh). */
static inline void q5_values(const uint8_t *q, const uint8_t *qh_p, uint8_t v[32]) {
    uint32_t qh;
    memcpy(&qh, qh_p, 4);
    for (int j = 0; j < 16; j++) {
        v[j] = (uint8_t)((q[j] & 0xF) | (((qh >> j) << 4) & 0x10));
        v[j + 16] = (uint8_t)((q[j] >> 4) | (((qh >> (j + 16)) << 4) & 0x10));
    }
}

static float dot_q5_0(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 32; b++, w += sizeof(kiln_block_q5_0), a += sizeof(kiln_block_q8_0)) {
        uint8_t v[32];
        q5_values(w + 6, w + 2, v);
        const int8_t *y = (const int8_t *)(a + 2);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += (v[j] - 16) * y[j];
        s += (float)sum * (h2f(w) * h2f(a));
    }
    return s;
}

static float dot_q4_1(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 32; b++, w += sizeof(kiln_block_q4_1), a += sizeof(kiln_block_q8_1)) {
        const uint8_t *q = w + 4;
        const int8_t *y = (const int8_t *)(a + 4);
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += (q[j] & 0xF) * y[j] + (q[j] >> 4) * y[j + 16];
        s += (float)sum * (h2f(w) * h2f(a)) + h2f(w + 2) * h2f(a + 2);
    }
    return s;
}

static float dot_q5_1(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 32; b++, w += sizeof(kiln_block_q5_1), a += sizeof(kiln_block_q8_1)) {
        uint8_t v[32];
        q5_values(w + 8, w + 4, v);
        const int8_t *y = (const int8_t *)(a + 4);
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += v[j] * y[j];
        s += (float)sum * (h2f(w) * h2f(a)) + h2f(w + 2) * h2f(a + 2);
    }
    return s;
}

/* K-quants against Q8_K: integer sums per sub-block times the integer
 * sub-block scale, summed over the super-block, then scaled once; the mins
 * come from the activation's 16-element partial sums. */
static float dot_q4_K(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 256; b++, w += sizeof(kiln_block_q4_K), a += sizeof(kiln_block_q8_K)) {
        const kiln_block_q4_K *x = (const kiln_block_q4_K *)w;
        const kiln_block_q8_K *y = (const kiln_block_q8_K *)a;
        int sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++) {
            uint8_t sc0, m0, sc1, m1;
            kiln_q4k_scale_min(x->scales, 2 * c, &sc0, &m0);
            kiln_q4k_scale_min(x->scales, 2 * c + 1, &sc1, &m1);
            const uint8_t *q = x->qs + 32 * c;
            const int8_t *v = y->qs + 64 * c;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 0xF) * v[l];
                s1 += (q[l] >> 4) * v[32 + l];
            }
            sumi += sc0 * s0 + sc1 * s1;
            summ += m0 * (y->bsums[4 * c] + y->bsums[4 * c + 1]) + m1 * (y->bsums[4 * c + 2] + y->bsums[4 * c + 3]);
        }
        s += y->d * (h2f_bits(x->d) * (float)sumi - h2f_bits(x->dmin) * (float)summ);
    }
    return s;
}

static float dot_q5_K(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 256; b++, w += sizeof(kiln_block_q5_K), a += sizeof(kiln_block_q8_K)) {
        const kiln_block_q5_K *x = (const kiln_block_q5_K *)w;
        const kiln_block_q8_K *y = (const kiln_block_q8_K *)a;
        int sumi = 0, summ = 0;
        for (int c = 0; c < 4; c++) {
            uint8_t sc0, m0, sc1, m1;
            kiln_q4k_scale_min(x->scales, 2 * c, &sc0, &m0);
            kiln_q4k_scale_min(x->scales, 2 * c + 1, &sc1, &m1);
            const uint8_t *q = x->qs + 32 * c;
            const int8_t *v = y->qs + 64 * c;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                int lo = (q[l] & 0xF) | (((x->qh[l] >> (2 * c)) & 1) << 4);
                int hi = (q[l] >> 4) | (((x->qh[l] >> (2 * c + 1)) & 1) << 4);
                s0 += lo * v[l];
                s1 += hi * v[32 + l];
            }
            sumi += sc0 * s0 + sc1 * s1;
            summ += m0 * (y->bsums[4 * c] + y->bsums[4 * c + 1]) + m1 * (y->bsums[4 * c + 2] + y->bsums[4 * c + 3]);
        }
        s += y->d * (h2f_bits(x->d) * (float)sumi - h2f_bits(x->dmin) * (float)summ);
    }
    return s;
}

static float dot_q6_K(int64_t k, const uint8_t *w, const uint8_t *a) {
    float s = 0.f;
    for (int64_t b = 0; b < k / 256; b++, w += sizeof(kiln_block_q6_K), a += sizeof(kiln_block_q8_K)) {
        const kiln_block_q6_K *x = (const kiln_block_q6_K *)w;
        const kiln_block_q8_K *y = (const kiln_block_q8_K *)a;
        int8_t v[256]; /* the values q - 32, in element order */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
            int8_t *o = v + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int l = 0; l < 16; l++) sub += v[16 * j + l] * y->qs[16 * j + l];
            sumi += x->scales[j] * sub;
        }
        s += h2f_bits(x->d) * y->d * (float)sumi;
    }
    return s;
}

/* ---- tiles ------------------------------------------------------------------------ */

static void tile_generic(dot_fn dot, int64_t k, float *out, size_t ldo, const void *w, size_t w_stride, int nr,
                         const void *act, size_t act_stride, int nc) {
    for (int j = 0; j < nc; j++) {
        const uint8_t *a = (const uint8_t *)act + (size_t)j * act_stride;
        for (int i = 0; i < nr; i++) out[(size_t)j * ldo + i] = dot(k, (const uint8_t *)w + (size_t)i * w_stride, a);
    }
}

#define KILN_SCALAR_TILE(name)                                                                         \
    static void tile_##name(int64_t k, float *out, size_t ldo, const void *w, size_t w_stride, int nr, \
                            const void *act, size_t act_stride, int nc) {                              \
        tile_generic(dot_##name, k, out, ldo, w, w_stride, nr, act, act_stride, nc);                  \
    }
KILN_SCALAR_TILE(f32)
KILN_SCALAR_TILE(f16)
KILN_SCALAR_TILE(bf16)
KILN_SCALAR_TILE(q8_0)
KILN_SCALAR_TILE(q4_0)
KILN_SCALAR_TILE(q5_0)
KILN_SCALAR_TILE(q4_1)
KILN_SCALAR_TILE(q5_1)
KILN_SCALAR_TILE(q4_K)
KILN_SCALAR_TILE(q5_K)
KILN_SCALAR_TILE(q6_K)

static const kiln_cpu_dot_traits scalar_traits[] = {
    {KILN_TYPE_F32, KILN_TYPE_F32, 1, kiln_cpu_act_size_f32, NULL, tile_f32, 4, 4, "scalar"},
    {KILN_TYPE_F16, KILN_TYPE_F16, 1, kiln_cpu_act_size_16, kiln_cpu_act_f16_scalar, tile_f16, 4, 4, "scalar"},
    {KILN_TYPE_BF16, KILN_TYPE_BF16, 1, kiln_cpu_act_size_16, kiln_cpu_act_bf16_scalar, tile_bf16, 4, 4, "scalar"},
    {KILN_TYPE_Q8_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, kiln_cpu_act_q8_0_scalar, tile_q8_0, 4, 4, "scalar"},
    {KILN_TYPE_Q4_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, kiln_cpu_act_q8_0_scalar, tile_q4_0, 4, 4, "scalar"},
    {KILN_TYPE_Q5_0, KILN_TYPE_Q8_0, 32, kiln_cpu_act_size_q8_0, kiln_cpu_act_q8_0_scalar, tile_q5_0, 4, 4, "scalar"},
    {KILN_TYPE_Q4_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, kiln_cpu_act_q8_1_scalar, tile_q4_1, 4, 4, "scalar"},
    {KILN_TYPE_Q5_1, KILN_TYPE_Q8_1, 32, kiln_cpu_act_size_q8_1, kiln_cpu_act_q8_1_scalar, tile_q5_1, 4, 4, "scalar"},
    {KILN_TYPE_Q4_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, kiln_cpu_act_q8_K_scalar, tile_q4_K, 4, 4, "scalar"},
    {KILN_TYPE_Q5_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, kiln_cpu_act_q8_K_scalar, tile_q5_K, 4, 4, "scalar"},
    {KILN_TYPE_Q6_K, KILN_TYPE_Q8_K, 256, kiln_cpu_act_size_q8_K, kiln_cpu_act_q8_K_scalar, tile_q6_K, 4, 4, "scalar"},
};

const kiln_cpu_dot_traits *kiln_cpu_dot_scalar_table(int32_t type) {
    for (size_t i = 0; i < sizeof scalar_traits / sizeof scalar_traits[0]; i++)
        if (scalar_traits[i].weight_type == type) return &scalar_traits[i];
    return NULL;
}
