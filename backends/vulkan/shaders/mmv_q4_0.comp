/* matrix-vector matmul, q4_0 weights (see mmv.glsl) */
#version 450
#define WTYPE 2
#include "mmv.glsl"
