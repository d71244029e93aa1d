/* matmul, q5_1 weights (see mm.glsl) */
#version 450
#define WTYPE 7
#include "mm.glsl"
