/* matrix-vector matmul of up to three products of one activation, f32 weights (see mmv.glsl, MULTI) */
#version 450
#define WTYPE 0
#define MULTI
#include "mmv.glsl"
