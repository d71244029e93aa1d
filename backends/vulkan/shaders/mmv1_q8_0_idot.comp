/* mmv1_q8_0.comp with packed 4x8-bit integer dot products (devices with
 * VK_KHR_shader_integer_dot_product; the same integer sums, so the same bits) (see mmv.glsl) */
#version 450
#define WTYPE 8
#define MT 1u
#define KILN_IDOT
#include "mmv.glsl"
