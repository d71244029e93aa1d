/* tiled matmul for batches, q4_k weights (see mmt.glsl) */
#version 450
#define WTYPE 12
#include "mmt.glsl"
