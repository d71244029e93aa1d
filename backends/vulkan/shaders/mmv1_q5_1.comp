/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), q5_1 weights (see mmv.glsl) */
#version 450
#define WTYPE 7
#define MT 1u
#include "mmv.glsl"
