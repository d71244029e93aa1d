/* matrix-vector matmul of up to three products of one activation, bf16 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 30
#define MULTI
#include "mmv.glsl"
