/* matrix-vector matmul of up to three products of one activation, q4_1 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 3
#define MULTI
#include "mmv.glsl"
