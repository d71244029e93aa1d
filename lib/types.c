/*
 * types.c - the table of ggml tensor types: names, block sizes, block bytes.
 * Sizes must match ggml exactly, or tensor offsets in GGUF files go wrong.
 */
#include "quant.h"

static const kiln_type_traits type_table[KILN_TYPE_COUNT] = {
    [KILN_TYPE_F32] = {"f32", 1, 4, true},
    [KILN_TYPE_F16] = {"f16", 1, 2, true},
    [KILN_TYPE_Q4_0] = {"q4_0", 32, 18, true},
    [KILN_TYPE_Q4_1] = {"q4_1", 32, 20, true},
    [KILN_TYPE_Q5_0] = {"q5_0", 32, 22, true},
    [KILN_TYPE_Q5_1] = {"q5_1", 32, 24, true},
    [KILN_TYPE_Q8_0] = {"q8_0", 32, 34, true},
    [KILN_TYPE_Q8_1] = {"q8_1", 32, 36, false},
    [KILN_TYPE_Q2_K] = {"q2_K", 256, 84, false},
    [KILN_TYPE_Q3_K] = {"q3_K", 256, 110, false},
    [KILN_TYPE_Q4_K] = {"q4_K", 256, 144, true},
    [KILN_TYPE_Q5_K] = {"q5_K", 256, 176, true},
    [KILN_TYPE_Q6_K] = {"q6_K", 256, 210, true},
    [KILN_TYPE_Q8_K] = {"q8_K", 256, 292, false},
    [KILN_TYPE_IQ2_XXS] = {"iq2_xxs", 256, 66, false},
    [KILN_TYPE_IQ2_XS] = {"iq2_xs", 256, 74, false},
    [KILN_TYPE_IQ3_XXS] = {"iq3_xxs", 256, 98, false},
    [KILN_TYPE_IQ1_S] = {"iq1_s", 256, 50, false},
    [KILN_TYPE_IQ4_NL] = {"iq4_nl", 32, 18, false},
    [KILN_TYPE_IQ3_S] = {"iq3_s", 256, 110, false},
    [KILN_TYPE_IQ2_S] = {"iq2_s", 256, 82, false},
    [KILN_TYPE_IQ4_XS] = {"iq4_xs", 256, 136, false},
    [KILN_TYPE_I8] = {"i8", 1, 1, false},
    [KILN_TYPE_I16] = {"i16", 1, 2, false},
    [KILN_TYPE_I32] = {"i32", 1, 4, false},
    [KILN_TYPE_I64] = {"i64", 1, 8, false},
    [KILN_TYPE_F64] = {"f64", 1, 8, false},
    [KILN_TYPE_IQ1_M] = {"iq1_m", 256, 56, false},
    [KILN_TYPE_BF16] = {"bf16", 1, 2, true},
    [KILN_TYPE_TQ1_0] = {"tq1_0", 256, 54, false},
    [KILN_TYPE_TQ2_0] = {"tq2_0", 256, 66, false},
    [KILN_TYPE_MXFP4] = {"mxfp4", 32, 17, false},
};

const kiln_type_traits *kiln_type_traits_get(int32_t type) {
    if (type < 0 || type >= KILN_TYPE_COUNT) return NULL;
    const kiln_type_traits *t = &type_table[type];
    return t->name ? t : NULL;
}

const char *kiln_type_name(int32_t type) {
    const kiln_type_traits *t = kiln_type_traits_get(type);
    return t ? t->name : "unknown";
}

uint64_t kiln_type_row_size(int32_t type, int64_t n) {
    const kiln_type_traits *t = kiln_type_traits_get(type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    if ((uint64_t)(n / t->block_size) > UINT64_MAX / t->type_size) return 0; /* would wrap */
    return (uint64_t)(n / t->block_size) * t->type_size;
}
