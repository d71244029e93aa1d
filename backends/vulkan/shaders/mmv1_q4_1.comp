/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), q4_1 weights (see mmv.glsl) */
#version 450
#define WTYPE 3
#define MT 1u
#include "mmv.glsl"
