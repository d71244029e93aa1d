/* matrix-vector matmul, f32 weights (see mmv.glsl) */
#version 450
#define WTYPE 0
#include "mmv.glsl"
