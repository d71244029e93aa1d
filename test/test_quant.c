/*
 * test_quant.c - the reference formats (lib/quant.c) and the CPU dot kernels
 * (backends/cpu/cpu_quant.c, cpu_dot_*.c).
 *
 * Covers: half/bfloat16 conversions (edge cases, and against the F16C
 * instruction when the CPU has it); quantize/dequantize error bounds per
 * type; byte-exact Q8_0/Q4_0/Q4_K/Q6_K requantization of llama.cpp's files in
 * ../shared (skipped without it) and closeness of every quantized tensor to
 * the F16 original; every dot kernel and ISA against the dequantize-then-dot
 * reference on odd tile shapes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_dot.h"
#include "cpu_quant.h"
#include "gguf.h"
#include "internal.h"
#include "kt.h"
#include "quant.h"

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float rng_uniform(void) { return (float)(rng_u32() >> 8) * 0x1p-24f; }
static float rng_gauss(void) {
    float u = rng_uniform() + 0x1p-25f, v = rng_uniform();
    return sqrtf(-2.f * logf(u)) * cosf(6.2831853f * v);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_quant: out of memory\n");
        exit(2);
    }
    return p;
}

static double rel_rms(const float *ref, const float *x, int64_t n) {
    double e = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)ref[i];
        e += d * d;
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

/* ---- half / bfloat16 ---- */

static void test_fp16_edges(void) {
    KT_CHECK(kiln_fp32_to_fp16(0.f) == 0x0000);
    KT_CHECK(kiln_fp32_to_fp16(-0.f) == 0x8000);
    KT_CHECK(kiln_fp32_to_fp16(1.f) == 0x3c00);
    KT_CHECK(kiln_fp32_to_fp16(-2.f) == 0xc000);
    KT_CHECK(kiln_fp32_to_fp16(65504.f) == 0x7bff);
    KT_CHECK(kiln_fp32_to_fp16(65519.99f) == 0x7bff);
    KT_CHECK(kiln_fp32_to_fp16(65520.f) == 0x7c00); /* ties to even: inf */
    KT_CHECK(kiln_fp32_to_fp16(1e10f) == 0x7c00);
    KT_CHECK(kiln_fp32_to_fp16(-INFINITY) == 0xfc00);
    uint16_t hn = kiln_fp32_to_fp16(NAN);
    KT_CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0);
    KT_CHECK(kiln_fp32_to_fp16(0x1p-24f) == 0x0001);    /* smallest subnormal */
    KT_CHECK(kiln_fp32_to_fp16(0x1p-25f) == 0x0000);    /* tie -> even (0) */
    KT_CHECK(kiln_fp32_to_fp16(0x1.000002p-25f) == 0x0001);
    KT_CHECK(kiln_fp32_to_fp16(0x1.8p-24f) == 0x0002);  /* 1.5 ulp -> 2 */
    KT_CHECK(kiln_fp32_to_fp16(0x1.4p-23f) == 0x0002);  /* 2.5 ulp -> 2 */
    KT_CHECK(kiln_fp32_to_fp16(0x1p-14f) == 0x0400);    /* smallest normal */
    KT_CHECK(kiln_fp32_to_fp16(0x1.ff8p-15f) == 0x03ff); /* largest subnormal */
    KT_CHECK(kiln_fp32_to_fp16(0x1.ffcp-15f) == 0x0400); /* tie rounds up into normals */
    KT_CHECK(kiln_fp32_to_fp16(1.f + 0x1p-11f) == 0x3c00); /* tie -> even */
    KT_CHECK(kiln_fp32_to_fp16(1.f + 0x1.8p-10f) == 0x3c02);
    KT_CHECK(kiln_fp32_to_fp16(1e-30f) == 0x0000);
    KT_CHECK(kiln_fp32_to_fp16(-1e-30f) == 0x8000);

    KT_CHECK(kiln_fp16_to_fp32(0x0001) == 0x1p-24f);
    KT_CHECK(kiln_fp16_to_fp32(0x03ff) == 0x1.ff8p-15f);
    KT_CHECK(kiln_fp16_to_fp32(0x7bff) == 65504.f);
    KT_CHECK(isinf(kiln_fp16_to_fp32(0x7c00)) && kiln_fp16_to_fp32(0xfc00) < 0);
    KT_CHECK(isnan(kiln_fp16_to_fp32(0x7e00)));
    KT_CHECK(signbit(kiln_fp16_to_fp32(0x8000)) && kiln_fp16_to_fp32(0x8000) == 0.f);

    /* every half survives the round trip (NaNs stay NaNs) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kiln_fp16_to_fp32((uint16_t)h);
        uint16_t back = kiln_fp32_to_fp16(f);
        if (isnan(f)) {
            if (!isnan(kiln_fp16_to_fp32(back))) bad++;
        } else if (back != h) {
            bad++;
        }
    }
    KT_CHECKF(bad == 0, "%d halves did not round-trip", bad);
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
}
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}
#endif

static void test_fp16_vs_f16c(void) {
#if defined(__x86_64__)
    if (!cpu_has_f16c()) KT_SKIP("no F16C");
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = kiln_fp16_to_fp32((uint16_t)h), b = hw_f16_to_f32((uint16_t)h);
        if (memcmp(&a, &b, 4) != 0 && !(isnan(a) && isnan(b))) bad++;
    }
    KT_CHECKF(bad == 0, "%d halves convert differently from F16C", bad);
    /* random floats, biased to the half range and its rounding boundaries */
    bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = rng_u32();
        if (i & 1) u = (u & 0x80ffffffu) | ((uint32_t)(96 + rng_u32() % 48) << 23);
        float f = kiln_fp32_from_bits(u);
        uint16_t a = kiln_fp32_to_fp16(f), b = hw_f32_to_f16(f);
        if (a != b && !(isnan(f) && (a & 0x7c00) == 0x7c00 && (a & 0x3ff))) {
            if (bad++ < 5) printf("  f=%a (0x%08x): kiln 0x%04x, f16c 0x%04x\n", f, u, a, b);
        }
    }
    KT_CHECKF(bad == 0, "%d floats convert differently from F16C", bad);
#else
    KT_SKIP("not x86-64");
#endif
}

/* The scalar F16 kernel's inline conversion against kiln_fp16_to_fp32 for
 * every half: the dot of [h] with [1.0] is h itself. */
static void test_scalar_f16_conversion(void) {
    const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get_scalar(KILN_TYPE_F16);
    KT_CHECK(tr != NULL);
    if (!tr) return;
    uint16_t one = 0x3c00;
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t w = (uint16_t)h;
        float got, want = kiln_fp16_to_fp32(w);
        tr->dot_tile(1, &got, 1, &w, 2, 1, &one, 2, 1);
        if (isnan(want) ? !isnan(got) : got != want) bad++; /* (the sum turns -0 into +0) */
    }
    KT_CHECKF(bad == 0, "%d halves converted differently", bad);
}

static void test_bf16(void) {
    KT_CHECK(kiln_fp32_to_bf16(1.f) == 0x3f80);
    KT_CHECK(kiln_fp32_to_bf16(-1.f) == 0xbf80);
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x3f808000)) == 0x3f80); /* tie -> even */
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x3f818000)) == 0x3f82); /* tie -> even */
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x3f808001)) == 0x3f81);
    KT_CHECK(kiln_fp32_to_bf16(INFINITY) == 0x7f80);
    KT_CHECK(kiln_fp32_to_bf16(3.4e38f) == 0x7f80); /* rounds past the largest bf16 */
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x7f7f0000)) == 0x7f7f);
    uint16_t n = kiln_fp32_to_bf16(kiln_fp32_from_bits(0x7f800001)); /* signalling NaN */
    KT_CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x00008000)) == 0x0000); /* subnormal tie */
    KT_CHECK(kiln_fp32_to_bf16(kiln_fp32_from_bits(0x00018000)) == 0x0002);
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kiln_bf16_to_fp32((uint16_t)h);
        uint16_t back = kiln_fp32_to_bf16(f);
        if (isnan(f) ? !isnan(kiln_bf16_to_fp32(back)) : back != h) bad++;
    }
    KT_CHECK(bad == 0);
}

/* ---- quantize / dequantize ---- */

typedef struct {
    int32_t type;
    double max_rel_rms; /* on Gaussian data */
} quant_case;

static const quant_case quant_cases[] = {
    {KILN_TYPE_F32, 0.0},      {KILN_TYPE_F16, 0.0005},   {KILN_TYPE_BF16, 0.004},
    {KILN_TYPE_Q8_0, 0.006},   {KILN_TYPE_Q8_1, 0.006},   {KILN_TYPE_Q8_K, 0.009},
    {KILN_TYPE_Q6_K, 0.025},   {KILN_TYPE_Q5_0, 0.05},    {KILN_TYPE_Q5_1, 0.045},
    {KILN_TYPE_Q5_K, 0.04},    {KILN_TYPE_Q4_0, 0.1},     {KILN_TYPE_Q4_1, 0.09},
    {KILN_TYPE_Q4_K, 0.08},    {KILN_TYPE_Q3_K, 0.2},     {KILN_TYPE_Q2_K, 0.4},
};

static void test_quant_roundtrip(void) {
    const int64_t n = 4096;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    uint8_t *q = xmalloc(kiln_type_row_size(KILN_TYPE_F32, n));
    for (size_t c = 0; c < KILN_ARRAY_LEN(quant_cases); c++) {
        int32_t t = quant_cases[c].type;
        for (int dist = 0; dist < 3; dist++) {
            for (int64_t i = 0; i < n; i++) {
                float g = rng_gauss();
                /* Gaussian; Gaussian with an offset (tests the mins); heavy tails */
                x[i] = dist == 0 ? g : dist == 1 ? 0.5f + 0.1f * g : g * g * g;
            }
            KT_CHECK_OK(kiln_quantize_row(t, x, q, n));
            KT_CHECK_OK(kiln_dequantize_row(t, q, y, n));
            double e = rel_rms(x, y, n);
            double lim = quant_cases[c].max_rel_rms * (dist == 2 ? 4 : 1) + 1e-12;
            KT_CHECKF(e <= lim, "%s dist %d: relative RMS error %.5f > %.5f", kiln_type_name(t), dist, e, lim);
        }
        /* zeros stay zeros */
        memset(x, 0, n * sizeof(float));
        KT_CHECK_OK(kiln_quantize_row(t, x, q, n));
        KT_CHECK_OK(kiln_dequantize_row(t, q, y, n));
        int nz = 0;
        for (int64_t i = 0; i < n; i++) nz += y[i] != 0.f;
        KT_CHECKF(nz == 0, "%s: zeros dequantize to %d non-zeros", kiln_type_name(t), nz);
        /* non-finite input must not crash (values are unspecified) */
        for (int64_t i = 0; i < n; i++) x[i] = rng_gauss();
        x[3] = NAN;
        x[40] = INFINITY;
        x[300] = -INFINITY;
        KT_CHECK_OK(kiln_quantize_row(t, x, q, n));
        KT_CHECK_OK(kiln_dequantize_row(t, q, y, n));
    }
    /* argument checks */
    KT_CHECK(kiln_quantize_row(KILN_TYPE_Q4_0, x, q, 31) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_dequantize_row(KILN_TYPE_Q4_K, q, y, 128) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_dequantize_row(KILN_TYPE_Q4_0, NULL, y, 32) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_dequantize_row(KILN_TYPE_IQ2_XXS, q, y, 256) == KILN_E_UNSUPPORTED);
    KT_CHECK(kiln_quantize_row(KILN_TYPE_IQ4_NL, x, q, 32) == KILN_E_UNSUPPORTED);
    KT_CHECK(kiln_quantize_row(99, x, q, 32) == KILN_E_UNSUPPORTED);
    KT_CHECK(kiln_quantize_row(KILN_TYPE_Q8_0, x, q, 0) == KILN_OK);
    free(x);
    free(y);
    free(q);
}

/* Hand-made blocks: the bit layouts, independent of the quantizers. */
static void test_layouts(void) {
    float y[256];
    /* Q4_0: d = 1, qs[j] = j | (15 - j) << 4 */
    uint8_t q40[18] = {0x00, 0x3c};
    for (int j = 0; j < 16; j++) q40[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    KT_CHECK_OK(kiln_dequantize_row(KILN_TYPE_Q4_0, q40, y, 32));
    int bad = 0;
    for (int j = 0; j < 16; j++) bad += y[j] != (float)(j - 8) || y[16 + j] != (float)(7 - j);
    KT_CHECK(bad == 0);
    /* Q5_0: qh bit j sets bit 4 of element j */
    uint8_t q50[22] = {0x00, 0x3c, 0x01, 0x00, 0x00, 0x80};
    KT_CHECK_OK(kiln_dequantize_row(KILN_TYPE_Q5_0, q50, y, 32));
    KT_CHECK(y[0] == 0.f && y[1] == -16.f && y[31] == 0.f && y[15] == -16.f);
    /* Q8_K: float d, bsums ignored by dequantization */
    uint8_t q8k[292] = {0};
    float two = 2.f;
    memcpy(q8k, &two, 4);
    q8k[4 + 255] = (uint8_t)-3;
    KT_CHECK_OK(kiln_dequantize_row(KILN_TYPE_Q8_K, q8k, y, 256));
    KT_CHECK(y[255] == -6.f && y[0] == 0.f);
    /* Q6_K: element 200 = (ql, qh, scale) of half 1, l = 8, third quarter */
    uint8_t q6k[210] = {0};
    q6k[208] = 0x00;
    q6k[209] = 0x3c; /* d = 1 */
    for (int j = 0; j < 16; j++) q6k[192 + j] = 1;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) q6k[128 + 32 * h + l] = 0xAA; /* each 2-bit high part = 2 -> 32 */
    q6k[64 + 8] = 0x50; /* ql[64*1 + 8]: low nibble (element 128+8) 0, high nibble (element 128+64+8) 5 */
    KT_CHECK_OK(kiln_dequantize_row(KILN_TYPE_Q6_K, q6k, y, 256));
    KT_CHECK(y[200] == 5.f && y[136] == 0.f && y[0] == 0.f);
}

/* Every quantized tensor of `qfile` against its F16 original: closeness of
 * the dequantized values, and identical bytes when we requantize the F16
 * values (llama.cpp quantized these files with its reference quantizers,
 * which ours reproduce: Q8_0, Q4_0, Q4_K, Q6_K). */
static void check_model_file(const char *qname, double max_err_q8, double max_err_other) {
    const char *fpath = kt_shared("models/tiny-target-f16.gguf");
    const char *qpath = kt_shared(qname);
    if (!fpath || !qpath) KT_SKIP("../shared models not found");
    kiln_gguf *f16 = NULL, *qf = NULL;
    KT_CHECK_OK(kiln_gguf_open(fpath, &f16));
    KT_CHECK_OK(kiln_gguf_open(qpath, &qf));
    if (!f16 || !qf) {
        kiln_gguf_close(f16);
        kiln_gguf_close(qf);
        return;
    }
    int n_exact = 0, n_checked = 0;
    for (int64_t t = 0; t < kiln_gguf_n_tensors(qf); t++) {
        const kiln_gguf_tensor *q = kiln_gguf_tensor_at(qf, t);
        const kiln_gguf_tensor *o = kiln_gguf_find_tensor(f16, q->name);
        if (!o || q->type == KILN_TYPE_F32 || q->type == KILN_TYPE_F16) continue;
        const int64_t ne0 = q->ne[0], nrows = q->ne[1] * q->ne[2] * q->ne[3];
        KT_CHECK(o->ne[0] == ne0 && o->ne[1] * o->ne[2] * o->ne[3] == nrows);
        int64_t n = ne0 * nrows;
        float *ref = xmalloc((size_t)n * 4), *deq = xmalloc((size_t)n * 4);
        uint64_t qrow = kiln_type_row_size(q->type, ne0);
        uint64_t orow = kiln_type_row_size(o->type, ne0);
        const uint8_t *qd = q->data, *od = o->data;
        for (int64_t r = 0; r < nrows; r++) {
            KT_CHECK_OK(kiln_dequantize_row(o->type, od + r * orow, ref + r * ne0, ne0));
            KT_CHECK_OK(kiln_dequantize_row(q->type, qd + r * qrow, deq + r * ne0, ne0));
        }
        double e = rel_rms(ref, deq, n);
        double lim = q->type == KILN_TYPE_Q8_0 ? max_err_q8 : max_err_other;
        KT_CHECKF(e < lim, "%s %s (%s): relative RMS %.4f >= %.4f", qname, q->name, kiln_type_name(q->type), e, lim);
        n_checked++;
        /* requantize with our quantizer */
        uint8_t *mine = xmalloc(qrow * (size_t)nrows);
        for (int64_t r = 0; r < nrows; r++)
            KT_CHECK_OK(kiln_quantize_row(q->type, ref + r * ne0, mine + r * qrow, ne0));
        size_t diff = 0, total = qrow * (size_t)nrows;
        for (size_t b = 0; b < total; b++) diff += mine[b] != qd[b];
        /* the *_0 and K reference quantizers are deterministic: same bytes */
        KT_CHECKF(diff == 0, "%s %s (%s): %zu of %zu bytes differ from llama.cpp's", qname, q->name,
                  kiln_type_name(q->type), diff, total);
        n_exact += diff == 0;
        /* the kernels on real weights: every ISA against the dequantized rows */
        for (int isa = 0; isa < KILN_CPU_DOT_N_ISA; isa++) {
            const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get_isa(q->type, isa);
            if (!tr || ne0 % tr->k_multiple || nrows < 9) continue;
            enum { NW = 9, NA = 5 };
            size_t as = tr->act_row_size(ne0);
            uint8_t *act = xmalloc(as * NA);
            float *x = xmalloc(sizeof(float) * ne0), *af = xmalloc(sizeof(float) * ne0 * NA), out[NA * NW];
            for (int j = 0; j < NA; j++) {
                for (int64_t i = 0; i < ne0; i++) x[i] = rng_gauss();
                tr->quantize_act(x, act + as * j, ne0);
                KT_CHECK_OK(kiln_dequantize_row(tr->act_type, act + as * j, af + ne0 * j, ne0));
            }
            tr->dot_tile(ne0, out, NW, qd, qrow, NW, act, as, NA);
            int bad = 0;
            for (int j = 0; j < NA; j++)
                for (int i = 0; i < NW; i++) {
                    double ref = 0, mag = 0;
                    for (int64_t c = 0; c < ne0; c++) {
                        ref += (double)deq[i * ne0 + c] * af[j * ne0 + c];
                        mag += fabs((double)deq[i * ne0 + c] * af[j * ne0 + c]);
                    }
                    bad += !(fabs(out[j * NW + i] - ref) <= 2e-3 * mag + 1e-5);
                }
            KT_CHECKF(bad == 0, "%s %s: %d of %d %s dots off", qname, q->name, bad, NA * NW, tr->isa);
            free(act);
            free(x);
            free(af);
        }
        free(mine);
        free(ref);
        free(deq);
    }
    KT_CHECK(n_checked > 0);
    printf("  %s: %d quantized tensors checked, %d byte-exact\n", qname, n_checked, n_exact);
    kiln_gguf_close(f16);
    kiln_gguf_close(qf);
}

static void test_model_q8_0(void) { check_model_file("models/tiny-target-q8_0.gguf", 0.01, 0.05); }
static void test_model_q4_0(void) { check_model_file("models/tiny-target-q4_0.gguf", 0.01, 0.15); }
static void test_model_q6_k(void) { check_model_file("models/tiny-target-q6_k.gguf", 0.01, 0.05); }
static void test_model_q4_k_m(void) { check_model_file("models/tiny-target-q4_k_m.gguf", 0.01, 0.15); }


/* ---- dot kernels ---- */

static const int32_t dot_types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q8_0,
                                    KILN_TYPE_Q4_0, KILN_TYPE_Q5_0, KILN_TYPE_Q4_1, KILN_TYPE_Q5_1,
                                    KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};
static const char *isa_names[] = {"scalar", "avx2", "avx512"};

/* Quantized weights and activations of one type, with their dequantized
 * forms (the reference operands). */
typedef struct {
    int64_t k;
    int nw, na;
    uint8_t *w, *a;
    size_t ws, as;
    float *wf, *af;
} dot_case;

static void dot_case_free(dot_case *c) {
    free(c->w);
    free(c->a);
    free(c->wf);
    free(c->af);
}

static int dot_case_make(dot_case *c, const kiln_cpu_dot_traits *tr, int64_t k, int nw, int na) {
    memset(c, 0, sizeof *c);
    c->k = k;
    c->nw = nw;
    c->na = na;
    c->ws = kiln_type_row_size(tr->weight_type, k) + 6; /* odd-ish strides: alignment must not matter */
    c->as = tr->act_row_size(k) + 4;
    c->w = xmalloc(c->ws * nw);
    c->a = xmalloc(c->as * na);
    c->wf = xmalloc(sizeof(float) * k * nw);
    c->af = xmalloc(sizeof(float) * k * na);
    float *x = xmalloc(sizeof(float) * k);
    int ok = 1;
    for (int r = 0; r < nw; r++) {
        for (int64_t i = 0; i < k; i++) x[i] = rng_gauss() * (r % 3 == 0 ? 0.02f : 1.f) + (r % 4 == 1 ? 0.3f : 0.f);
        ok &= kiln_quantize_row(tr->weight_type, x, c->w + c->ws * r, k) == KILN_OK;
        ok &= kiln_dequantize_row(tr->weight_type, c->w + c->ws * r, c->wf + k * r, k) == KILN_OK;
    }
    for (int r = 0; r < na; r++) {
        for (int64_t i = 0; i < k; i++) x[i] = rng_gauss() * (r % 2 ? 3.f : 0.5f) + (r % 3 == 2 ? -1.f : 0.f);
        if (tr->quantize_act) tr->quantize_act(x, c->a + c->as * r, k);
        else memcpy(c->a + c->as * r, x, sizeof(float) * k);
        ok &= kiln_dequantize_row(tr->act_type, c->a + c->as * r, c->af + k * r, k) == KILN_OK;
    }
    free(x);
    return ok;
}

/* Reference dots (double) and the tolerance for each (weight row i,
 * activation row j): float-accumulation noise of the products' scale, and
 * the fp16 rounding of Q8_1's stored block sums. */
static void dot_refs(const dot_case *c, int32_t act_type, double *ref, double *tol) {
    for (int j = 0; j < c->na; j++) {
        for (int i = 0; i < c->nw; i++) {
            double sum = 0, mag = 0;
            const float *w = c->wf + c->k * i, *a = c->af + c->k * j;
            for (int64_t q = 0; q < c->k; q++) {
                double p = (double)w[q] * a[q];
                sum += p;
                mag += fabs(p);
            }
            if (act_type == KILN_TYPE_Q8_1) {
                /* the min term m * sum(a) of each block carries that
                 * rounding, however much the terms cancel */
                for (int64_t b = 0; b < c->k / 32; b++) {
                    double wmax = 0, asum = 0;
                    for (int q = 0; q < 32; q++) {
                        wmax = fmax(wmax, fabs(w[32 * b + q]));
                        asum += a[32 * b + q];
                    }
                    mag += wmax * fabs(asum) * 0.5;
                }
            }
            ref[j * c->nw + i] = sum;
            tol[j * c->nw + i] = 2e-3 * mag + 1e-5;
        }
    }
}

static void check_dot(const kiln_cpu_dot_traits *tr, int64_t k) {
    const int nw = tr->tile_nr * 2 + 3, na = tr->tile_nc * 2 + 1;
    dot_case c;
    if (!dot_case_make(&c, tr, k, nw, na)) {
        KT_CHECKF(0, "%s: cannot build operands", kiln_type_name(tr->weight_type));
        dot_case_free(&c);
        return;
    }
    const size_t ldo = (size_t)nw + 5;
    float *out = xmalloc(sizeof(float) * ldo * na);
    double *ref = xmalloc(sizeof(double) * nw * na), *tol = xmalloc(sizeof(double) * nw * na);
    dot_refs(&c, tr->act_type, ref, tol);
    int bad = 0;
    /* every shape up to one past the preferred tile, and the whole matrix */
    for (int nr = 0; nr <= tr->tile_nr + 1; nr++) {
        for (int nc = 0; nc <= tr->tile_nc + 1; nc++) {
            int last = nr == tr->tile_nr + 1 && nc == tr->tile_nc + 1;
            int tnr = last ? nw - 1 : nr, tnc = last ? na - 1 : nc;
            int i0 = last ? 1 : nr % 3, j0 = last ? 1 : nc % 2; /* offsets into the operands */
            for (size_t q = 0; q < ldo * na; q++) out[q] = -12345.f;
            tr->dot_tile(k, out + j0 * ldo + i0, ldo, c.w + c.ws * i0, c.ws, tnr, c.a + c.as * j0, c.as, tnc);
            for (int j = 0; j < na; j++) {
                for (int i = 0; i < nw; i++) {
                    float got = out[j * ldo + i];
                    int inside = i >= i0 && i < i0 + tnr && j >= j0 && j < j0 + tnc;
                    double want = inside ? ref[j * nw + i] : -12345.0;
                    if (inside ? !(fabs((double)got - want) <= tol[j * nw + i]) : got != -12345.f) {
                        if (bad++ < 4)
                            printf("  %s/%s k=%lld tile %dx%d: out[%d][%d] = %g, want %g\n", kiln_type_name(tr->weight_type),
                                   tr->isa, (long long)k, tnr, tnc, j, i, got, want);
                    }
                }
            }
        }
    }
    KT_CHECKF(bad == 0, "%s/%s k=%lld: %d wrong outputs", kiln_type_name(tr->weight_type), tr->isa, (long long)k, bad);
    free(out);
    free(ref);
    free(tol);
    dot_case_free(&c);
}

static void test_dot_kernels(void) {
    int n_isa = 0;
    for (int isa = 0; isa < KILN_CPU_DOT_N_ISA; isa++) {
        if (!kiln_cpu_dot_get_isa(KILN_TYPE_F32, isa)) {
            printf("  %s: not available on this processor\n", isa_names[isa]);
            continue;
        }
        n_isa++;
        for (size_t t = 0; t < KILN_ARRAY_LEN(dot_types); t++) {
            const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get_isa(dot_types[t], isa);
            KT_CHECKF(tr != NULL, "%s has no %s kernel", isa_names[isa], kiln_type_name(dot_types[t]));
            if (!tr) continue;
            KT_CHECK(tr->weight_type == dot_types[t] && tr->dot_tile && tr->act_row_size);
            KT_CHECK(tr->tile_nr >= 1 && tr->tile_nc >= 1 && tr->k_multiple >= 1);
            KT_CHECK((tr->quantize_act == NULL) == (tr->act_type == KILN_TYPE_F32));
            int64_t m = tr->k_multiple;
            /* one block; an odd block count; a typical row; float tails; a
             * row long enough for packed kernels to cut K into passes */
            int64_t ks[5] = {m, 3 * m, m >= 256 ? 1536 : 512, m == 1 ? 67 : 7 * m, m == 1 ? 1000 : m == 32 ? 71 * 32 : 13 * 256};
            for (int q = 0; q < 5; q++) check_dot(tr, ks[q]);
        }
    }
    KT_CHECK(n_isa >= 1);
    /* the dispatcher hands out the best ISA's kernels */
    const kiln_cpu_dot_traits *best = kiln_cpu_dot_get(KILN_TYPE_Q4_0);
    KT_CHECK(best && best == kiln_cpu_dot_get_isa(KILN_TYPE_Q4_0, kiln_cpu_dot_best_isa()));
    KT_CHECK(kiln_cpu_dot_get(KILN_TYPE_IQ2_XXS) == NULL && kiln_cpu_dot_get(KILN_TYPE_Q8_K) == NULL);
    KT_CHECK(kiln_cpu_dot_get_scalar(KILN_TYPE_Q6_K) && strcmp(kiln_cpu_dot_get_scalar(KILN_TYPE_Q6_K)->isa, "scalar") == 0);
}

/* Every ISA's activation quantizer writes the scalar one's bytes, and its
 * tile agrees with the scalar tile on the same operands. */
static void test_dot_isas_agree(void) {
    const int64_t k = 768;
    float *x = xmalloc(sizeof(float) * k);
    for (int64_t i = 0; i < k; i++) x[i] = rng_gauss() * (i % 97 == 0 ? 50.f : 1.f);
    x[5] = 0x1p-20f; /* F16 subnormal */
    for (int i = 64; i < 96; i++) x[i] = 0.f; /* an all-zero block */
    for (int i = 256; i < 512; i++) x[i] = 0.f; /* an all-zero super-block */
    x[600] = -40.f; /* the largest magnitude twice, signs differing: the first sets the scale */
    x[700] = 40.f;
    x[7] = 0x1.0101p-130f; /* a float subnormal (BF16 keeps it) */
    x[8] = kiln_fp32_from_bits(0x3f808000); /* a BF16 tie */
    x[9] = 65519.f; /* rounds to F16 max */
    for (int isa = 1; isa < KILN_CPU_DOT_N_ISA; isa++) {
        for (size_t t = 0; t < KILN_ARRAY_LEN(dot_types); t++) {
            const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get_isa(dot_types[t], isa);
            const kiln_cpu_dot_traits *sc = kiln_cpu_dot_get_scalar(dot_types[t]);
            if (!tr || !sc || !tr->quantize_act) continue;
            KT_CHECK(tr->act_type == sc->act_type);
            size_t n = tr->act_row_size(k);
            uint8_t *a1 = xmalloc(n), *a2 = xmalloc(n);
            tr->quantize_act(x, a1, k);
            sc->quantize_act(x, a2, k);
            KT_CHECKF(memcmp(a1, a2, n) == 0, "%s: %s activation bytes differ from scalar", kiln_type_name(dot_types[t]), tr->isa);
            /* non-finite activations: unspecified results, but no trap (the
             * sanitizer build checks the conversions) */
            float keep[3] = {x[1], x[300], x[301]};
            x[1] = NAN, x[300] = INFINITY, x[301] = -INFINITY;
            tr->quantize_act(x, a1, k);
            sc->quantize_act(x, a2, k);
            x[1] = keep[0], x[300] = keep[1], x[301] = keep[2];
            free(a1);
            free(a2);
        }
    }
    free(x);
}

int main(void) {
    KT_RUN(test_fp16_edges);
    KT_RUN(test_fp16_vs_f16c);
    KT_RUN(test_bf16);
    KT_RUN(test_scalar_f16_conversion);
    KT_RUN(test_layouts);
    KT_RUN(test_quant_roundtrip);
    KT_RUN(test_dot_kernels);
    KT_RUN(test_dot_isas_agree);
    KT_RUN(test_model_q8_0);
    KT_RUN(test_model_q4_0);
    KT_RUN(test_model_q6_k);
    KT_RUN(test_model_q4_k_m);
    return kt_finish();
}
