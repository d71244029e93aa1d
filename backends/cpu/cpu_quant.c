/*
 * cpu_quant.c - picks the CPU dot kernels (cpu_quant.h) for the processor
 * at run time: detects AVX2/FMA/F16C and AVX-512 (with VNNI, BF16) through
 * CPUID and XGETBV (so the OS must also save the wide registers), and hands
 * out the best ISA's kernel table. The build needs no -m flags: the SIMD
 * files compile their functions with target attributes, and this file only
 * calls them after checking the processor.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_dot.h"
#include "quant.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define KILN_CPU_X86 1
#endif

/* ---- feature detection ---------------------------------------------------- */

#if defined(KILN_CPU_X86)
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect_features(void) {
    unsigned a, b, c, d;
    uint32_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return 0;
    uint64_t xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return 0; /* XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1;
    int f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    int vnni = (c >> 11) & 1;
    unsigned max_sub = a;
    if (avx2 && fma && f16c) f |= KILN_CPU_HAS_AVX2;
    int zmm_state = (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    if ((f & KILN_CPU_HAS_AVX2) && zmm_state && f512 && dq && bw && vl && vnni) {
        f |= KILN_CPU_HAS_AVX512;
        if (max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if ((a >> 5) & 1) f |= KILN_CPU_HAS_AVX512BF16;
        }
    }
    return f;
}
#else
static uint32_t detect_features(void) { return 0; }
#endif

/* 0: not detected yet; detected values carry bit 31 so they are never 0. */
static _Atomic uint32_t cpu_features_cache = 0;
static _Atomic int best_isa_cache = -1;

uint32_t kiln_cpu_features(void) {
    uint32_t f = atomic_load_explicit(&cpu_features_cache, memory_order_acquire);
    if (!f) {
        /* racing threads compute the same value: no lock needed */
        f = detect_features() | 0x80000000u;
        atomic_store_explicit(&cpu_features_cache, f, memory_order_release);
    }
    return f & 0x7fffffffu;
}

int kiln_cpu_dot_best_isa(void) {
    int isa = atomic_load_explicit(&best_isa_cache, memory_order_acquire);
    if (isa >= 0) return isa;
    uint32_t f = kiln_cpu_features();
    isa = (f & KILN_CPU_HAS_AVX512) ? KILN_CPU_DOT_AVX512 : (f & KILN_CPU_HAS_AVX2) ? KILN_CPU_DOT_AVX2 : KILN_CPU_DOT_SCALAR;
    /* an explicit cap, for benchmarks and for working around a bad SIMD path */
    const char *env = getenv("KILN_CPU_ISA");
    if (env) {
        int cap = isa;
        if (strcmp(env, "scalar") == 0) cap = KILN_CPU_DOT_SCALAR;
        else if (strcmp(env, "avx2") == 0) cap = KILN_CPU_DOT_AVX2;
        else if (strcmp(env, "avx512") == 0) cap = KILN_CPU_DOT_AVX512;
        if (cap < isa) isa = cap;
    }
    atomic_store_explicit(&best_isa_cache, isa, memory_order_release);
    return isa;
}

/* ---- dispatch ----------------------------------------------------------------- */

const kiln_cpu_dot_traits *kiln_cpu_dot_get_isa(int32_t type, int isa) {
    uint32_t f = kiln_cpu_features();
    switch (isa) {
    case KILN_CPU_DOT_SCALAR: return kiln_cpu_dot_scalar_table(type);
    case KILN_CPU_DOT_AVX2: return (f & KILN_CPU_HAS_AVX2) ? kiln_cpu_dot_avx2_table(type) : NULL;
    case KILN_CPU_DOT_AVX512: return (f & KILN_CPU_HAS_AVX512) ? kiln_cpu_dot_avx512_table(type) : NULL;
    default: return NULL;
    }
}

const kiln_cpu_dot_traits *kiln_cpu_dot_get(int32_t type) {
    /* a SIMD table may lack a type: fall back one ISA at a time */
    for (int isa = kiln_cpu_dot_best_isa(); isa >= 0; isa--) {
        const kiln_cpu_dot_traits *t = kiln_cpu_dot_get_isa(type, isa);
        if (t) return t;
    }
    return NULL;
}

const kiln_cpu_dot_traits *kiln_cpu_dot_get_scalar(int32_t type) { return kiln_cpu_dot_scalar_table(type); }

/* ---- activation row sizes ------------------------------------------------------ */

uint64_t kiln_cpu_act_size_f32(int64_t k) { return k > 0 ? (uint64_t)k * 4 : 0; }
uint64_t kiln_cpu_act_size_16(int64_t k) { return k > 0 ? (uint64_t)k * 2 : 0; }
uint64_t kiln_cpu_act_size_q8_0(int64_t k) { return kiln_type_row_size(KILN_TYPE_Q8_0, k); }
uint64_t kiln_cpu_act_size_q8_1(int64_t k) { return kiln_type_row_size(KILN_TYPE_Q8_1, k); }
uint64_t kiln_cpu_act_size_q8_K(int64_t k) { return kiln_type_row_size(KILN_TYPE_Q8_K, k); }

/* ---- the tile walker (see cpu_dot.h) ---------------------------------------------- */

void kiln_cpu_dot_drive(int64_t k, float *out, size_t ldo, const void *w, size_t w_stride, int nr, const void *act,
                        size_t act_stride, int nc, int MR, int MC, const kiln_cpu_micro_fn *micro) {
    for (int i = 0; i < nr; i += MR) {
        const uint8_t *wp[KILN_DOT_MAXR];
        int rn = nr - i < MR ? nr - i : MR;
        for (int r = 0; r < MR; r++) wp[r] = (const uint8_t *)w + (size_t)(i + (r < rn ? r : rn - 1)) * w_stride;
        for (int j = 0; j < nc; j += MC) {
            int cn = nc - j < MC ? nc - j : MC;
            const uint8_t *ap[KILN_DOT_MAXC];
            for (int c = 0; c < cn; c++) ap[c] = (const uint8_t *)act + (size_t)(j + c) * act_stride;
            float res[KILN_DOT_MAXR * KILN_DOT_MAXC];
            micro[cn - 1](k, wp, ap, res);
            for (int c = 0; c < cn; c++)
                for (int r = 0; r < rn; r++) out[(size_t)(j + c) * ldo + i + r] = res[r * KILN_DOT_MAXC + c];
        }
    }
}
