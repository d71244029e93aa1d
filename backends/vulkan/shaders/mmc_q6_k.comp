/* matmul for batches on matrix cores, q6_k weights (see mmc.glsl) */
#version 450
#define WTYPE 14
#include "mmc.glsl"
