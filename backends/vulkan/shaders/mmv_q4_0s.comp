/* matrix-vector matmul, q4_0 weights in the split layout (vk_layout.c) (see mmv.glsl) */
#version 450
#define WTYPE 102
#include "mmv.glsl"
