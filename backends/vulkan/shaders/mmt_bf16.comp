/* tiled matmul for batches, bf16 weights (see mmt.glsl) */
#version 450
#define WTYPE 30
#include "mmt.glsl"
