/* tiled matmul for batches, q5_1 weights (see mmt.glsl) */
#version 450
#define WTYPE 7
#include "mmt.glsl"
