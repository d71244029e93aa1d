/* matmul for batches on matrix cores, f32 weights (see mmc.glsl) */
#version 450
#define WTYPE 0
#include "mmc.glsl"
