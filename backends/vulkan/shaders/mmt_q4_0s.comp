/* tiled matmul for batches, q4_0 weights in the split layout (vk_layout.c) (see mmt.glsl) */
#version 450
#define WTYPE 102
#include "mmt.glsl"
