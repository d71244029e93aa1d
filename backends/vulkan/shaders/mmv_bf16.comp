/* matrix-vector matmul, bf16 weights (see mmv.glsl) */
#version 450
#define WTYPE 30
#include "mmv.glsl"
