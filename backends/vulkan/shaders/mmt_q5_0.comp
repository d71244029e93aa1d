/* tiled matmul for batches, q5_0 weights (see mmt.glsl) */
#version 450
#define WTYPE 6
#include "mmt.glsl"
