/* mmvm1_q6_k.comp with packed 4x8-bit integer dot products (devices with
 * VK_KHR_shader_integer_dot_product; the same integer sums, so the same bits) (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 14
#define MULTI
#define MT 1u
#define KILN_IDOT
#include "mmv.glsl"
