/* prefill attention without matrix cores (portable; KILN_VK_COOPMAT_EMULATE), head_dim 128 (see attn_tile.glsl) */
#version 450
#define HEAD_DIM 128u
#define ATTN_EMULATE
#include "attn_tile.glsl"
