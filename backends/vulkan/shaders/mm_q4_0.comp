/* matmul, q4_0 weights (see mm.glsl) */
#version 450
#define WTYPE 2
#include "mm.glsl"
