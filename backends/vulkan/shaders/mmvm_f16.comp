/* matrix-vector matmul of up to three products of one activation, f16 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 1
#define MULTI
#include "mmv.glsl"
