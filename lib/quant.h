/*
 * quant.h - tensor element types (ggml's type ids and block layouts, which
 * GGUF files use) and the reference conversions between them and F32.
 *
 * The block layouts are byte-compatible with ggml's: a row of n elements of
 * a block type is n / block_size blocks of type_size bytes each.
 */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kiln.h"

/* ggml type ids as stored in GGUF tensor infos (pinned by the format). */
enum {
    KILN_TYPE_F32 = 0,
    KILN_TYPE_F16 = 1,
    KILN_TYPE_Q4_0 = 2,
    KILN_TYPE_Q4_1 = 3,
    KILN_TYPE_Q5_0 = 6,
    KILN_TYPE_Q5_1 = 7,
    KILN_TYPE_Q8_0 = 8,
    KILN_TYPE_Q8_1 = 9,
    KILN_TYPE_Q2_K = 10,
    KILN_TYPE_Q3_K = 11,
    KILN_TYPE_Q4_K = 12,
    KILN_TYPE_Q5_K = 13,
    KILN_TYPE_Q6_K = 14,
    KILN_TYPE_Q8_K = 15,
    KILN_TYPE_IQ2_XXS = 16,
    KILN_TYPE_IQ2_XS = 17,
    KILN_TYPE_IQ3_XXS = 18,
    KILN_TYPE_IQ1_S = 19,
    KILN_TYPE_IQ4_NL = 20,
    KILN_TYPE_IQ3_S = 21,
    KILN_TYPE_IQ2_S = 22,
    KILN_TYPE_IQ4_XS = 23,
    KILN_TYPE_I8 = 24,
    KILN_TYPE_I16 = 25,
    KILN_TYPE_I32 = 26,
    KILN_TYPE_I64 = 27,
    KILN_TYPE_F64 = 28,
    KILN_TYPE_IQ1_M = 29,
    KILN_TYPE_BF16 = 30,
    KILN_TYPE_TQ1_0 = 34,
    KILN_TYPE_TQ2_0 = 35,
    KILN_TYPE_MXFP4 = 39,
    KILN_TYPE_COUNT = 40 /* one past the largest id known */
};

typedef struct kiln_type_traits {
    const char *name;        /* "f16", "q4_K", ... as ggml names them */
    uint32_t block_size;     /* elements per block (1 for plain types) */
    uint32_t type_size;      /* bytes per block */
    bool computable;         /* kiln can load weights of this type */
} kiln_type_traits;

/* Traits of a type id, or NULL for an id that is unknown or retired. */
const kiln_type_traits *kiln_type_traits_get(int32_t type);
/* "q4_K" or "unknown" */
const char *kiln_type_name(int32_t type);
/* Bytes of a row of n elements; 0 if the type is unknown or n is not a
 * multiple of its block size, or if the byte count would overflow. */
uint64_t kiln_type_row_size(int32_t type, int64_t n);

/* ---- half and bfloat16 ---- */

static inline float kiln_fp32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t kiln_fp32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* IEEE half -> float, exact for every value (subnormals, inf, nan). */
float kiln_fp16_to_fp32(uint16_t h);
/* float -> IEEE half, round to nearest even. */
uint16_t kiln_fp32_to_fp16(float f);
static inline float kiln_bf16_to_fp32(uint16_t h) { return kiln_fp32_from_bits((uint32_t)h << 16); }
/* float -> bfloat16, round to nearest even; NaN stays NaN. */
uint16_t kiln_fp32_to_bf16(float f);

/* ---- rows ---- */

/* dst[0..n) = src row of `type` as F32. KILN_E_UNSUPPORTED for a type with
 * no dequantizer, KILN_E_INVALID_ARG if n is not a multiple of the block
 * size. Supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1?,
 * Q2_K..Q8_K where implemented (see quant.c). */
kiln_status kiln_dequantize_row(int32_t type, const void *src, float *dst, int64_t n);
/* Reference quantizer: src[0..n) F32 into a row of `type`. Supports F32,
 * F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K. */
kiln_status kiln_quantize_row(int32_t type, const float *src, void *dst, int64_t n);

#endif /* KILN_QUANT_H */
