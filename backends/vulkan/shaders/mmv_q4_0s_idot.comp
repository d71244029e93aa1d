/* mmv_q4_0s.comp (up to 8 activation rows: batched decode, verify batches) with packed 4x8-bit integer dot products (devices with
 * VK_KHR_shader_integer_dot_product; the same integer sums, so the same bits) (see mmv.glsl) */
#version 450
#define WTYPE 102
#define KILN_IDOT
#include "mmv.glsl"
