/* matrix-vector matmul of up to three products of one activation, q4_k weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 12
#define MULTI
#include "mmv.glsl"
