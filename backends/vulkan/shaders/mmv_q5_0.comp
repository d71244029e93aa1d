/* matrix-vector matmul, q5_0 weights (see mmv.glsl) */
#version 450
#define WTYPE 6
#include "mmv.glsl"
