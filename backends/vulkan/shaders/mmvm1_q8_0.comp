/* matrix-vector matmul of up to three products of one activation row (decode, KILN_VK_MMV_UNROLL), q8_0 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 8
#define MULTI
#define MT 1u
#include "mmv.glsl"
