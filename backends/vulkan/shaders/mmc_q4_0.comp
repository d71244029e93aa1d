/* matmul for batches on matrix cores, q4_0 weights (see mmc.glsl) */
#version 450
#define WTYPE 2
#include "mmc.glsl"
