/* matrix-vector matmul, q8_0 weights (see mmv.glsl) */
#version 450
#define WTYPE 8
#include "mmv.glsl"
