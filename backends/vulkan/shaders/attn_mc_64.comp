/* prefill attention on matrix cores, head_dim 64 (see attn_tile.glsl) */
#version 450
#define HEAD_DIM 64u
#include "attn_tile.glsl"
