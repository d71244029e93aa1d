/* matrix-vector matmul of up to three products of one activation, q8_0 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 8
#define MULTI
#include "mmv.glsl"
