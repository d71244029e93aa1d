/* matrix-vector matmul of one activation row (decode, KILN_VK_MMV_UNROLL), q4_0 weights in the split layout (vk_layout.c) (see mmv.glsl) */
#version 450
#define WTYPE 102
#define MT 1u
#include "mmv.glsl"
