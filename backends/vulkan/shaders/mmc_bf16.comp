/* matmul for batches on matrix cores, bf16 weights (see mmc.glsl) */
#version 450
#define WTYPE 30
#include "mmc.glsl"
