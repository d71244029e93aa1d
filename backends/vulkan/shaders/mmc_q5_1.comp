/* matmul for batches on matrix cores, q5_1 weights (see mmc.glsl) */
#version 450
#define WTYPE 7
#include "mmc.glsl"
