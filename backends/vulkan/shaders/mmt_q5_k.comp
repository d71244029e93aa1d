/* tiled matmul for batches, q5_k weights (see mmt.glsl) */
#version 450
#define WTYPE 13
#include "mmt.glsl"
