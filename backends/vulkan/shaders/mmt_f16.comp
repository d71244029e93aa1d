/* tiled matmul for batches, f16 weights (see mmt.glsl) */
#version 450
#define WTYPE 1
#include "mmt.glsl"
