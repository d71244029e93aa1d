/* tiled matmul for batches, q4_0 weights (see mmt.glsl) */
#version 450
#define WTYPE 2
#include "mmt.glsl"
