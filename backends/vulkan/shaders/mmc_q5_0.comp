/* matmul for batches on matrix cores, q5_0 weights (see mmc.glsl) */
#version 450
#define WTYPE 6
#include "mmc.glsl"
