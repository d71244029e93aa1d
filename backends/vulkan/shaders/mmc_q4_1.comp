/* matmul for batches on matrix cores, q4_1 weights (see mmc.glsl) */
#version 450
#define WTYPE 3
#include "mmc.glsl"
