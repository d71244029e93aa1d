/* tiled matmul for batches, q8_0 weights (see mmt.glsl) */
#version 450
#define WTYPE 8
#include "mmt.glsl"
