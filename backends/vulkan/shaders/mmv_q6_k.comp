/* matrix-vector matmul, q6_k weights (see mmv.glsl) */
#version 450
#define WTYPE 14
#include "mmv.glsl"
