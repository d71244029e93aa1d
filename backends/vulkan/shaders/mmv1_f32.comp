/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), f32 weights (see mmv.glsl) */
#version 450
#define WTYPE 0
#define MT 1u
#include "mmv.glsl"
