/* tiled matmul for batches, q4_1 weights (see mmt.glsl) */
#version 450
#define WTYPE 3
#include "mmt.glsl"
