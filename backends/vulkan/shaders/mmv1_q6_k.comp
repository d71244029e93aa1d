/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), q6_k weights (see mmv.glsl) */
#version 450
#define WTYPE 14
#define MT 1u
#include "mmv.glsl"
