/* tiled matmul for batches, f32 weights (see mmt.glsl) */
#version 450
#define WTYPE 0
#include "mmt.glsl"
