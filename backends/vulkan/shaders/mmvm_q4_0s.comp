/* matrix-vector matmul of up to three products of one activation, q4_0 weights in the split layout (vk_layout.c) (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 102
#define MULTI
#include "mmv.glsl"
