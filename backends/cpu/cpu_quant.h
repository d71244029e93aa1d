/*
 * cpu_quant.h - the CPU backend's matmul arithmetic: for each weight type,
 * the activation format it is dotted against, the activation quantizer and
 * a dot-product tile, each picked at run time for the best instruction set
 * the processor has (AVX-512 / AVX2+FMA / scalar).
 */
#ifndef KILN_CPU_QUANT_H
#define KILN_CPU_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Converts one activation row x[0..k) to the activation format. */
typedef void (*kiln_cpu_quantize_act_fn)(const float *x, void *dst, int64_t k);

/* out[j * ldo + i] = dot(weight row i, activation row j)
 * for i in [0, nr), j in [0, nc). Weight rows are w_stride bytes apart,
 * activation rows act_stride bytes apart. k = elements per row. */
typedef void (*kiln_cpu_dot_tile_fn)(int64_t k, float *out, size_t ldo,
                                     const void *w, size_t w_stride, int nr,
                                     const void *act, size_t act_stride, int nc);

typedef struct kiln_cpu_dot_traits {
    int32_t weight_type;              /* KILN_TYPE_* */
    int32_t act_type;                 /* KILN_TYPE_* of the activation rows */
    uint32_t k_multiple;              /* k must be a multiple of this */
    uint64_t (*act_row_size)(int64_t k); /* bytes of one activation row */
    kiln_cpu_quantize_act_fn quantize_act; /* NULL when act_type is F32: use x */
    kiln_cpu_dot_tile_fn dot_tile;
    int tile_nr, tile_nc;             /* preferred tile shape */
    const char *isa;                  /* "avx512", "avx2", "scalar" */
} kiln_cpu_dot_traits;

/* The traits for weight type `type`, NULL if the CPU cannot multiply it.
 * The first call detects the CPU; thread-safe. */
const kiln_cpu_dot_traits *kiln_cpu_dot_get(int32_t type);

/* Forces the scalar path (tests compare it with the SIMD path). */
const kiln_cpu_dot_traits *kiln_cpu_dot_get_scalar(int32_t type);

#endif /* KILN_CPU_QUANT_H */
