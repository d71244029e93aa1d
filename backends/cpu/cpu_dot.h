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
 * traits' k_multiple.
 */
#ifndef KILN_CPU_DOT_H
#define KILN_CPU_DOT_H

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

/* Little-endian 16-bit load from a possibly unaligned address. */
static inline uint16_t kiln_cpu_rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

#endif /* KILN_CPU_DOT_H */
