/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), bf16 weights (see mmv.glsl) */
#version 450
#define WTYPE 30
#define MT 1u
#include "mmv.glsl"
