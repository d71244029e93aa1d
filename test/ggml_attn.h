/*
 * ggml_attn.h - llama.cpp's CPU attention arithmetic, installed in place of
 * the CPU backend's attention operation on one kiln context, so that tests
 * can compare kiln with llama.cpp's reference outputs (../shared/reference)
 * with the one known difference between the two taken out.
 *
 * Why it exists. llama.cpp (ggml-cpu, flash attention on, the reference was
 * made with ubatches of 512) computes attention in one of two ways,
 * chosen by the number of query tokens in the ubatch:
 *   - 64 or more ("tiled"): F32 throughout (Q in F32, K/V converted from
 *     the F16 cache to F32, scores and P.V as F32 products). This is the
 *     computation kiln's CPU backend does for every ubatch.
 *   - fewer than 64 (prompts shorter than 64 tokens, the last 28 tokens of
 *     the 1052-token prompt, every single-token decode of a greedy
 *     continuation): one query row at a time, Q rounded to F16, F16 x F16
 *     dot products, an online softmax walking the cells one by one, and
 *     the output accumulated in an F16 vector (every update is an F32
 *     multiply-add rounded back to F16). A decode over 512 cells or more
 *     cuts the cells into one range per thread and folds the ranges' F16
 *     partial results in F32.
 * The F16 accumulator loses about 11 bits per update; those rows of the
 * reference differ from an exact (float64) computation by up to 0.2 logits
 * (test/ref_f64.c measures it), while kiln's F32 path stays within 0.03.
 * Emulating the short-ubatch path here brings every F16/BF16 model within
 * ../shared/README.md's bounds; see docs/ARCHITECTURE.md.
 *
 * The emulation follows ggml's code paths for head_dim a multiple of 64 on
 * an AVX-512 build (the machine the references were made on): each F16
 * dot product is four 16-lane F32 FMA chains summed pairwise, then the
 * 16 lanes summed as GCC's _mm512_reduce_add_ps does; expf from libm.
 * Other head sizes, and ubatches of 64 tokens or more, use the CPU
 * backend's own attention.
 *
 * Test-only: it reads the CPU backend's private ubatch tables
 * (cpu_internal.h), keeps its state in statics (one emulated backend per
 * process, single-threaded tests) and must only be installed on contexts
 * of the "cpu" backend.
 */
#ifndef KILN_TEST_GGML_ATTN_H
#define KILN_TEST_GGML_ATTN_H

#include <math.h>
#include <string.h>

#include "context.h"
#include "cpu_internal.h"
#include "quant.h"

/* ggml's flash-attention tile height: ubatches with at least this many
 * query tokens take the F32 (tiled) path */
#define GGML_ATTN_TILE_Q 64
/* threads llama.cpp decoded with (splits a long single-token decode) */
#define GGML_ATTN_THREADS 2
/* llama.cpp pads the KV view it attends over to a multiple of this */
#define GGML_ATTN_KV_PAD 256
#define GGML_ATTN_MAX_D 256

static const kiln_backend_iface *ggml_attn_orig;
static kiln_backend_iface ggml_attn_iface;

/* x rounded to the nearest F16 value (ties to even), as F32: the same
 * result as kiln_fp16_to_fp32(kiln_fp32_to_fp16(x)), inline because the
 * emulation rounds every accumulator update. */
static inline float ggml_attn_f16r(float x) {
    const float a = fabsf(x);
    if (a < 6.103515625e-05f) /* F16 subnormal range: multiples of 2^-24 */
        return nearbyintf(x * 16777216.0f) * 5.9604644775390625e-08f;
    if (!(a < 65504.0f)) return kiln_fp16_to_fp32(kiln_fp32_to_fp16(x)); /* overflow, inf, nan */
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0xFFFu + ((u >> 13) & 1u); /* keep 10 mantissa bits, ties to even */
    u &= ~0x1FFFu;
    memcpy(&x, &u, 4);
    return x;
}

/* F16 -> F32 by table (the K and V values of every attended cell) */
static float ggml_attn_h2f[65536];
static int ggml_attn_h2f_ready;

static inline float ggml_attn_h(uint16_t h) { return ggml_attn_h2f[h]; }

/* ggml_vec_dot_f16 on AVX-512, d % 64 == 0: lanes j*16+l of each 64-value
 * step go to accumulator j (one FMA chain each); then (a0+a2)+(a1+a3) and
 * the 16-lane reduction 8+8, 4+4, (0+2)+(1+3). */
static inline float ggml_attn_dot(const float *q, const uint16_t *k, uint32_t d) {
    float acc[4][16];
    memset(acc, 0, sizeof acc);
    for (uint32_t i = 0; i < d; i += 64)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++)
                acc[j][l] = fmaf(q[i + 16 * j + l], ggml_attn_h(k[i + 16 * j + l]), acc[j][l]);
    float x[16], t[8], u[4];
    for (int l = 0; l < 16; l++) x[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    for (int l = 0; l < 8; l++) t[l] = x[l + 8] + x[l];
    for (int l = 0; l < 4; l++) u[l] = t[l + 4] + t[l];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/* One query row against cells p0..p1-1 of its table: unnormalised F16
 * accumulator (returned in F32), running max and sum. */
static void ggml_attn_range(const kiln_cpu_ubatch *ub, const uint8_t *kc, const uint8_t *vc, size_t row_bytes,
                            const int32_t *table, uint32_t g, const float *qh, uint32_t d, float scale,
                            int32_t p0, int32_t p1, float *M_out, float *S_out, float *o) {
    const uint32_t bs = ub->block_size;
    float M = -INFINITY, S = 0.0f;
    for (uint32_t i = 0; i < d; i++) o[i] = 0.0f;
    for (int32_t p = p0; p < p1; p++) {
        const size_t cell = (size_t)table[p / bs] * bs + (size_t)(p % bs);
        const uint16_t *kr = (const uint16_t *)(kc + cell * row_bytes) + (size_t)g * d;
        const uint16_t *vr = (const uint16_t *)(vc + cell * row_bytes) + (size_t)g * d;
        const float s = ggml_attn_dot(qh, kr, d) * scale;
        float ms = 1.0f, vs = 1.0f;
        if (s > M) { /* new maximum: rescale the F16 accumulator */
            const float m_old = M;
            M = s;
            ms = expf(m_old - M);
            for (uint32_t i = 0; i < d; i++) o[i] = ggml_attn_f16r(o[i] * ms);
        } else {
            vs = expf(s - M);
        }
        for (uint32_t i = 0; i < d; i++) o[i] = ggml_attn_f16r(fmaf(ggml_attn_h(vr[i]), vs, o[i]));
        S = S * ms + vs;
    }
    *M_out = M;
    *S_out = S;
}

static kiln_status ggml_attn_op(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                                const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, kiln_bk_tensor *dst) {
    const kiln_cpu_ubatch *ub = &dev->ub;
    const uint32_t d = attn->head_dim;
    if (!ub->set || !ub->has_attn || ub->n_tokens >= GGML_ATTN_TILE_Q || d % 64 || d > GGML_ATTN_MAX_D)
        return ggml_attn_orig->attention(dev, q, k_cache, v_cache, attn, dst);
    const uint32_t group = attn->n_head / attn->n_head_kv;
    const size_t row_bytes = (size_t)attn->n_head_kv * d * sizeof(uint16_t);
    float qh[GGML_ATTN_MAX_D], part[GGML_ATTN_THREADS][GGML_ATTN_MAX_D];
    float pm[GGML_ATTN_THREADS], ps[GGML_ATTN_THREADS];
    for (uint32_t t = 0; t < ub->n_tokens; t++) {
        const int32_t nkv = ub->attn_n_kv[t];
        const int32_t *table = nkv > 0 ? ub->block_tables + ub->attn_table[t] : NULL;
        /* the split decode path: one token, >= 512 cells in the padded view */
        const int32_t padded = (nkv + GGML_ATTN_KV_PAD - 1) / GGML_ATTN_KV_PAD * GGML_ATTN_KV_PAD;
        const int ns = ub->n_tokens == 1 && padded >= 512 ? GGML_ATTN_THREADS : 1;
        const int32_t chunk = (padded + ns - 1) / ns;
        for (uint32_t h = 0; h < attn->n_head; h++) {
            const float *qr = (const float *)kiln_cpu_row(q, t) + (size_t)h * d;
            float *out = (float *)kiln_cpu_row(dst, t) + (size_t)h * d;
            for (uint32_t i = 0; i < d; i++) qh[i] = ggml_attn_f16r(qr[i]);
            for (int c = 0; c < ns; c++) {
                const int32_t p0 = ns == 1 ? 0 : c * chunk;
                const int32_t p1 = ns == 1 || p0 + chunk > nkv ? nkv : p0 + chunk;
                ggml_attn_range(ub, k_cache->data, v_cache->data, row_bytes, table, h / group, qh, d,
                                attn->scale, p0, p1 > p0 ? p1 : p0, &pm[c], &ps[c], part[c]);
            }
            /* fold the ranges (a single range folds into itself) */
            float M = -INFINITY, S = 0.0f;
            for (uint32_t i = 0; i < d; i++) out[i] = 0.0f;
            for (int c = 0; c < ns; c++) {
                if (ps[c] == 0.0f) continue;
                const float mn = fmaxf(M, pm[c]), a_old = expf(M - mn), a_new = expf(pm[c] - mn);
                for (uint32_t i = 0; i < d; i++) out[i] = out[i] * a_old + part[c][i] * a_new;
                S = S * a_old + ps[c] * a_new;
                M = mn;
            }
            const float inv = S == 0.0f ? 0.0f : 1.0f / S;
            for (uint32_t i = 0; i < d; i++) out[i] *= inv;
        }
    }
    return KILN_OK;
}

/* Replaces the attention operation of context c (a "cpu" context) with the
 * emulation above; the rest of the backend is unchanged. */
static inline void ggml_attn_install(kiln_context *c) {
    if (!ggml_attn_h2f_ready) {
        for (uint32_t h = 0; h < 65536; h++) ggml_attn_h2f[h] = kiln_fp16_to_fp32((uint16_t)h);
        ggml_attn_h2f_ready = 1;
    }
    ggml_attn_orig = c->bk;
    ggml_attn_iface = *c->bk;
    ggml_attn_iface.attention = ggml_attn_op;
    c->bk = &ggml_attn_iface;
}

#endif
