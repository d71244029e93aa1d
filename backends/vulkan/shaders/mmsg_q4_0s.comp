/* matmul, q4_0 weights in the split layout (vk_layout.c), subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 102
#define USE_SUBGROUP
#include "mm.glsl"
