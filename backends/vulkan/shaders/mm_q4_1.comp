/* matmul, q4_1 weights (see mm.glsl) */
#version 450
#define WTYPE 3
#include "mm.glsl"
