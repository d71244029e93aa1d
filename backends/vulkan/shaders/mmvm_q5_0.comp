/* matrix-vector matmul of up to three products of one activation, q5_0 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 6
#define MULTI
#include "mmv.glsl"
