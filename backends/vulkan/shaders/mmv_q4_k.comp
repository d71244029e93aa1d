/* matrix-vector matmul, q4_k weights (see mmv.glsl) */
#version 450
#define WTYPE 12
#include "mmv.glsl"
