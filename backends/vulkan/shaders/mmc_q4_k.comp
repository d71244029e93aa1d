/* matmul for batches on matrix cores, q4_k weights (see mmc.glsl) */
#version 450
#define WTYPE 12
#include "mmc.glsl"
