/* matrix-vector matmul of up to three products of one activation, q6_k weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 14
#define MULTI
#include "mmv.glsl"
