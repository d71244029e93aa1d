/* matrix-vector matmul, q5_k weights (see mmv.glsl) */
#version 450
#define WTYPE 13
#include "mmv.glsl"
