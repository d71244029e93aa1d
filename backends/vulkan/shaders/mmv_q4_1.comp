/* matrix-vector matmul, q4_1 weights (see mmv.glsl) */
#version 450
#define WTYPE 3
#include "mmv.glsl"
