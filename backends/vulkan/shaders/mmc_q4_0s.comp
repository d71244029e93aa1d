/* matmul for batches on matrix cores, q4_0 weights in the split layout (vk_layout.c) (see mmc.glsl) */
#version 450
#define WTYPE 102
#include "mmc.glsl"
