/* matmul for batches on matrix cores, f16 weights (see mmc.glsl) */
#version 450
#define WTYPE 1
#include "mmc.glsl"
