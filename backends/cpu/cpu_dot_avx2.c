/*
 * cpu_dot_avx2.c - AVX2 + FMA + F16C dot kernels (not written yet: the
 * dispatcher falls back to the scalar kernels on processors without
 * AVX-512).
 */
#include "cpu_dot.h"

const kiln_cpu_dot_traits *kiln_cpu_dot_avx2_table(int32_t type) {
    (void)type;
    return NULL;
}
