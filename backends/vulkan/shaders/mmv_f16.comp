/* matrix-vector matmul, f16 weights (see mmv.glsl) */
#version 450
#define WTYPE 1
#include "mmv.glsl"
