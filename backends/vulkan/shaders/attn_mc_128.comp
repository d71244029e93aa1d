/* prefill attention on matrix cores, head_dim 128 (see attn_tile.glsl) */
#version 450
#define HEAD_DIM 128u
#include "attn_tile.glsl"
