/* matrix-vector matmul of up to three products of one activation, q5_k weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 13
#define MULTI
#include "mmv.glsl"
