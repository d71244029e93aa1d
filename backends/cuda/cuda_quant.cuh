/*
 * cuda_quant.cuh - decoding weight blocks on the device, 32 elements (one
 * "group") at a time: group g of a row is elements [32g, 32g + 32). For the
 * 32-element formats a group is a block; a 256-element K-quant block holds
 * 8 groups. Layouts are ggml's (see lib/quant_blocks.h for the host side);
 * the arithmetic follows lib/quant.c's dequantizers so that the CPU and
 * CUDA backends agree.
 *
 * Alignment: every block size is even and tensors start 32-byte aligned,
 * so 16-bit loads are always aligned; wider fields are read 16 bits at a
 * time (the split Q4_0 layout keeps quants 16-byte aligned: one load).
 */
#ifndef KILN_CUDA_QUANT_CUH
#define KILN_CUDA_QUANT_CUH

#include "cuda_internal.cuh"

static __device__ __forceinline__ float kcu_h(const uint8_t *p) {
    return __half2float(__ushort_as_half(*(const uint16_t *)p));
}

static __device__ __forceinline__ uint32_t kcu_u32(const uint8_t *p) {
    const uint16_t *q = (const uint16_t *)p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}

/* 16 bytes at a 2-byte aligned address, as four words. */
static __device__ __forceinline__ void kcu_load16(const uint8_t *p, uint32_t w[4]) {
    const uint16_t *q = (const uint16_t *)p;
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (uint32_t)q[2 * i] | ((uint32_t)q[2 * i + 1] << 16);
}

static __device__ __forceinline__ void kcu_q4k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Group g of a row starting at `row` (ng groups per row), into y[32]. */
template <int T> static __device__ __forceinline__ void kcu_dq32(const uint8_t *row, int64_t g, int64_t ng, float *y);

template <> __device__ __forceinline__ void kcu_dq32<KCU_F32>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const float *p = (const float *)row + 32 * g;
#pragma unroll
    for (int i = 0; i < 32; i++) y[i] = p[i];
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_F16>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const __half2 *p = (const __half2 *)row + 16 * g;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float2 f = __half22float2(p[i]);
        y[2 * i] = f.x;
        y[2 * i + 1] = f.y;
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_BF16>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint16_t *p = (const uint16_t *)row + 32 * g;
#pragma unroll
    for (int i = 0; i < 32; i++) y[i] = __uint_as_float((uint32_t)p[i] << 16);
}

/* A Q4_0 block's 32 values from its 16 quant bytes (w, element j in the
 * low nibble of byte j, 16 + j in the high one) and its scale: one place
 * for both layouts, so they dequantize to the same bits. */
static __device__ __forceinline__ void kcu_q4_0_values(const uint32_t w[4], float d, float *y) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int q = (w[j / 4] >> (8 * (j % 4))) & 0xFF;
        y[j] = (float)((q & 0xF) - 8) * d;
        y[j + 16] = (float)((q >> 4) - 8) * d;
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q4_0>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 18 * g;
    uint32_t w[4];
    kcu_load16(b + 2, w);
    kcu_q4_0_values(w, kcu_h(b), y);
}

/* Q4_0 in this backend's split layout (KCU_LAYOUT_SPLIT): the 16
 * quant bytes of block g at 16 g, its scale at 16 ng + 2 g. */
template <> __device__ __forceinline__ void kcu_dq32<KCU_Q4_0S>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint4 q = *(const uint4 *)(row + 16 * g);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    kcu_q4_0_values(w, kcu_h(row + 16 * ng + 2 * g), y);
}

/* Q8_0 in the split layout: block g's 32 quants at 32 g, its scale at
 * 32 ng + 2 g. */
template <> __device__ __forceinline__ void kcu_dq32<KCU_Q8_0S>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const float d = kcu_h(row + 32 * ng + 2 * g);
    const uint4 a = *(const uint4 *)(row + 32 * g), b = *(const uint4 *)(row + 32 * g + 16);
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)((w[j / 4] >> (8 * (j % 4))) & 0xFF) * d;
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q4_1>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 20 * g;
    const float d = kcu_h(b), m = kcu_h(b + 2);
    uint32_t w[4];
    kcu_load16(b + 4, w);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int q = (w[j / 4] >> (8 * (j % 4))) & 0xFF;
        y[j] = (float)(q & 0xF) * d + m;
        y[j + 16] = (float)(q >> 4) * d + m;
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q5_0>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 22 * g;
    const float d = kcu_h(b);
    const uint32_t qh = kcu_u32(b + 2);
    uint32_t w[4];
    kcu_load16(b + 6, w);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int q = (w[j / 4] >> (8 * (j % 4))) & 0xFF;
        const int lo = (q & 0xF) | (int)(((qh >> j) & 1) << 4);
        const int hi = (q >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = (float)(lo - 16) * d;
        y[j + 16] = (float)(hi - 16) * d;
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q5_1>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 24 * g;
    const float d = kcu_h(b), m = kcu_h(b + 2);
    const uint32_t qh = kcu_u32(b + 4);
    uint32_t w[4];
    kcu_load16(b + 8, w);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int q = (w[j / 4] >> (8 * (j % 4))) & 0xFF;
        const int lo = (q & 0xF) | (int)(((qh >> j) & 1) << 4);
        const int hi = (q >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = (float)lo * d + m;
        y[j + 16] = (float)hi * d + m;
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q8_0>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 34 * g;
    const float d = kcu_h(b);
    uint32_t w[8];
    kcu_load16(b + 2, w);
    kcu_load16(b + 18, w + 4);
#pragma unroll
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)((w[j / 4] >> (8 * (j % 4))) & 0xFF) * d;
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q4_K>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 144 * (g / 8);
    const int j = (int)(g % 8), c = j / 2;
    const float d = kcu_h(b), dmin = kcu_h(b + 2);
    int sc, mn;
    kcu_q4k_scale_min(b + 4, j, &sc, &mn);
    const float d1 = d * (float)sc, m1 = dmin * (float)mn;
    uint32_t w[8];
    kcu_load16(b + 16 + 32 * c, w);
    kcu_load16(b + 32 + 32 * c, w + 4);
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int l = 0; l < 32; l++) y[l] = d1 * (float)((w[l / 4] >> (8 * (l % 4) + shift)) & 0xF) - m1;
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q5_K>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 176 * (g / 8);
    const int j = (int)(g % 8), c = j / 2;
    const float d = kcu_h(b), dmin = kcu_h(b + 2);
    int sc, mn;
    kcu_q4k_scale_min(b + 4, j, &sc, &mn);
    const float d1 = d * (float)sc, m1 = dmin * (float)mn;
    uint32_t w[8], h[8];
    kcu_load16(b + 48 + 32 * c, w);
    kcu_load16(b + 64 + 32 * c, w + 4);
    kcu_load16(b + 16, h);
    kcu_load16(b + 32, h + 4);
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int l = 0; l < 32; l++) {
        const int q = (w[l / 4] >> (8 * (l % 4) + shift)) & 0xF;
        const int hb = (h[l / 4] >> (8 * (l % 4) + j)) & 1;
        y[l] = d1 * (float)(q | (hb << 4)) - m1;
    }
}

/* Group j (0..7) of a Q6_K block's 208 bytes of ql, qh and scales at b,
 * with its d. */
static __device__ __forceinline__ void kcu_q6k_group(const uint8_t *b, float d, int j, float *y) {
    const int hf = j / 4, qd = j % 4;
    const uint8_t *ql = b + 64 * hf + (qd & 1) * 32;
    const uint8_t *qh = b + 128 + 32 * hf;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * hf);
    uint32_t wl[8], wh[8];
    kcu_load16(ql, wl);
    kcu_load16(ql + 16, wl + 4);
    kcu_load16(qh, wh);
    kcu_load16(qh + 16, wh + 4);
    const int lshift = (qd >> 1) * 4, hshift = 2 * qd;
    const float s0 = d * (float)sc[2 * qd], s1 = d * (float)sc[2 * qd + 1];
    /* sc index: is + 2*qd with is = l / 16 */
#pragma unroll
    for (int l = 0; l < 32; l++) {
        const int lo = (wl[l / 4] >> (8 * (l % 4) + lshift)) & 0xF;
        const int hi = (wh[l / 4] >> (8 * (l % 4) + hshift)) & 3;
        y[l] = (l < 16 ? s0 : s1) * (float)((lo | (hi << 4)) - 32);
    }
}

template <> __device__ __forceinline__ void kcu_dq32<KCU_Q6_K>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    const uint8_t *b = row + 210 * (g / 8);
    kcu_q6k_group(b, kcu_h(b + 208), (int)(g % 8), y);
}

/* Q6_K in the split layout: block k's 208 bytes at 208 k, its d at
 * 208 nb + 2 k (nb = ng / 8 blocks per row). */
template <> __device__ __forceinline__ void kcu_dq32<KCU_Q6_KS>(const uint8_t *row, int64_t g, int64_t ng, float *y) {
    kcu_q6k_group(row + 208 * (g / 8), kcu_h(row + 208 * (ng / 8) + 2 * (g / 8)), (int)(g % 8), y);
}

#endif
