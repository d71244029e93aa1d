/* matmul, q4_0 weights in the split layout (vk_layout.c) (see mm.glsl) */
#version 450
#define WTYPE 102
#include "mm.glsl"
