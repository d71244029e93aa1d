/*
 * cpu_dot.h - internals shared by the CPU dot kernels: the per-ISA kernel
 * tables (cpu_dot_scalar.c, cpu_dot_avx2.c, cpu_dot_avx512.c), processor
 * feature detection and the dispatcher (cpu_quant.c).
 *
 * Activation formats (what kiln_cpu_dot_traits.act_type names), chosen to
 * match llama.cpp's CPU backend so that kiln's logits stay closest to the
 * reference ones:
 *   F32 weights  - F32 rows (quantize_act is NULL: use x as is)
 *   F16 weights  - F16 rows (round to nearest even)
 *   BF16 weights - BF16 rows (round to nearest even)
 *   Q4_0, Q5_0, Q8_0 - Q8_0 blocks; Q4_1, Q5_1 - Q8_1 blocks. Both with
 *                  d = absmax / 127 and q = round-half-even(x * 127 / absmax),
 *                  as llama.cpp's x86 quantizer (not its reference one).
 *   Q4_K, Q5_K, Q6_K - Q8_K blocks (ggml's reference Q8_K quantizer).
 * Every ISA's activation quantizer writes the same bytes as the scalar
 * one, so results never depend on which one ran.
 *
 * Tile kernels accept any nr >= 0, nc >= 0 (they loop over their register
 * tile internally) and any row alignment; k must be a multiple of the
 * traits' k_multiple. tile_nr x tile_nc is the shape a caller should pass
 * when it can: the AVX-512 quantized kernels take up to 64 activation rows
 * per call and unpack the weights once for all of them.
 */
#ifndef KILN_CPU_DOT_H
#define KILN_CPU_DOT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu_quant.h"

enum {
    KILN_CPU_DOT_SCALAR = 0,
    KILN_CPU_DOT_AVX2 = 1,   /* AVX2 + FMA + F16C */
    KILN_CPU_DOT_AVX512 = 2, /* AVX-512 F/BW/VL/DQ/VNNI (+ BF16 where present) */
    KILN_CPU_DOT_N_ISA
};

/* Processor features (bits), detected once; thread-safe. */
#define KILN_CPU_HAS_AVX2 (1u << 0)   /* with FMA and F16C, OS-enabled */
#define KILN_CPU_HAS_AVX512 (1u << 1) /* F, BW, VL, DQ, VNNI, OS-enabled */
#define KILN_CPU_HAS_AVX512BF16 (1u << 2)
uint32_t kiln_cpu_features(void);

/* The best ISA the processor has, lowered by the environment variable
 * KILN_CPU_ISA=scalar|avx2|avx512 (never raised). */
int kiln_cpu_dot_best_isa(void);

/* Kernels for `type` on ISA `isa`, or NULL if the processor lacks that ISA
 * or there is no kernel for the type (some types reuse a lower ISA's
 * kernels: the returned traits' isa names what actually runs). */
const kiln_cpu_dot_traits *kiln_cpu_dot_get_isa(int32_t type, int isa);

/* Per-file tables (no CPU check: callers check kiln_cpu_features). */
const kiln_cpu_dot_traits *kiln_cpu_dot_scalar_table(int32_t type);
const kiln_cpu_dot_traits *kiln_cpu_dot_avx2_table(int32_t type);
const kiln_cpu_dot_traits *kiln_cpu_dot_avx512_table(int32_t type);

/* Activation row sizes (bytes for k elements). */
uint64_t kiln_cpu_act_size_f32(int64_t k);
uint64_t kiln_cpu_act_size_16(int64_t k); /* F16, BF16 */
uint64_t kiln_cpu_act_size_q8_0(int64_t k);
uint64_t kiln_cpu_act_size_q8_1(int64_t k);
uint64_t kiln_cpu_act_size_q8_K(int64_t k);

/* Scalar activation quantizers (the definition of the formats above). */
void kiln_cpu_act_f16_scalar(const float *x, void *dst, int64_t k);
void kiln_cpu_act_bf16_scalar(const float *x, void *dst, int64_t k);
void kiln_cpu_act_q8_0_scalar(const float *x, void *dst, int64_t k);
void kiln_cpu_act_q8_1_scalar(const float *x, void *dst, int64_t k);
void kiln_cpu_act_q8_K_scalar(const float *x, void *dst, int64_t k);

/* ---- register tiles -------------------------------------------------------

 * The SIMD files write each kernel as name_body(k, w, a, res, R, C): an R x C
 * register tile (R weight rows, C activation rows, both compile-time
 * constants after inlining) storing res[r * KILN_DOT_MAXC + c]. The macros
 * below instantiate it for C = 1..4 (or 1..8) and the tile entry point that
 * kiln_cpu_dot_drive walks over any nr x nc. */
#define KILN_DOT_MAXR 8
#define KILN_DOT_MAXC 8

typedef void (*kiln_cpu_micro_fn)(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res);

/* Walks an nr x nc tile in MR x MC register tiles. Weight rows past nr
 * repeat the last row (their results are dropped), so one kernel shape
 * serves every nr; micro[c - 1] handles c activation rows. */
void kiln_cpu_dot_drive(int64_t k, float *out, size_t ldo, const void *w, size_t w_stride, int nr, const void *act,
                        size_t act_stride, int nc, int MR, int MC, const kiln_cpu_micro_fn *micro);

#define KILN_MICRO(name, R, C, n, ATTR)                                                                      \
    ATTR static void name##_m##n(int64_t k, const uint8_t *const *w, const uint8_t *const *a, float *res) { \
        name##_body(k, w, a, res, R, (C) >= (n) ? (n) : 1);                                                  \
    }
#define KILN_TILE_ENTRY(name, R, C)                                                                       \
    static void name##_tile(int64_t k, float *out, size_t ldo, const void *w, size_t ws, int nr,          \
                            const void *act, size_t as, int nc) {                                         \
        kiln_cpu_dot_drive(k, out, ldo, w, ws, nr, act, as, nc, R, C, name##_micro);                     \
    }
#define KILN_TILES(name, R, C, ATTR)                                                                 \
    KILN_MICRO(name, R, C, 1, ATTR) KILN_MICRO(name, R, C, 2, ATTR) KILN_MICRO(name, R, C, 3, ATTR) \
    KILN_MICRO(name, R, C, 4, ATTR)                                                                 \
    static const kiln_cpu_micro_fn name##_micro[4] = {name##_m1, name##_m2, name##_m3, name##_m4};  \
    KILN_TILE_ENTRY(name, R, C)
#define KILN_TILES8(name, R, C, ATTR)                                                                    \
    KILN_MICRO(name, R, C, 1, ATTR) KILN_MICRO(name, R, C, 2, ATTR) KILN_MICRO(name, R, C, 3, ATTR)     \
    KILN_MICRO(name, R, C, 4, ATTR) KILN_MICRO(name, R, C, 5, ATTR) KILN_MICRO(name, R, C, 6, ATTR)     \
    KILN_MICRO(name, R, C, 7, ATTR) KILN_MICRO(name, R, C, 8, ATTR)                                     \
    static const kiln_cpu_micro_fn name##_micro[8] = {name##_m1, name##_m2, name##_m3, name##_m4,       \
                                                      name##_m5, name##_m6, name##_m7, name##_m8};      \
    KILN_TILE_ENTRY(name, R, C)

/* The 8 6-bit scales and mins of a Q4_K/Q5_K block as bytes (packed in
 * two 64-bit words, sub-block j in byte j). */
static inline void kiln_cpu_k4_unpack(const uint8_t *s12, uint64_t *sc, uint64_t *mn) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s12, 4);
    memcpy(&u1, s12 + 4, 4);
    memcpy(&u2, s12 + 8, 4);
    uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    *sc = (uint64_t)sc_lo | ((uint64_t)sc_hi << 32);
    *mn = (uint64_t)mn_lo | ((uint64_t)mn_hi << 32);
}

/* Little-endian 16-bit load from a possibly unaligned address. */
static inline uint16_t kiln_cpu_rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

#endif /* KILN_CPU_DOT_H */
