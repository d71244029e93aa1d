/* tiled matmul for batches, q6_k weights (see mmt.glsl) */
#version 450
#define WTYPE 14
#include "mmt.glsl"
