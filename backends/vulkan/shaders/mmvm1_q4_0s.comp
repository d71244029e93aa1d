/* matrix-vector matmul of up to three products of one activation row (decode, KILN_VK_MMV_UNROLL), q4_0 weights in the split layout (vk_layout.c) (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 102
#define MULTI
#define MT 1u
#include "mmv.glsl"
