/* matmul for batches on matrix cores, q8_0 weights (see mmc.glsl) */
#version 450
#define WTYPE 8
#include "mmc.glsl"
