/* matmul for batches on matrix cores, q5_k weights (see mmc.glsl) */
#version 450
#define WTYPE 13
#include "mmc.glsl"
