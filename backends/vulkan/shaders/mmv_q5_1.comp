/* matrix-vector matmul, q5_1 weights (see mmv.glsl) */
#version 450
#define WTYPE 7
#include "mmv.glsl"
