/* matrix-vector matmul of up to three products of one activation, q4_0 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 2
#define MULTI
#include "mmv.glsl"
