/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), q4_k weights (see mmv.glsl) */
#version 450
#define WTYPE 12
#define MT 1u
#include "mmv.glsl"
