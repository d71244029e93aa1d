/* matmul, q5_0 weights (see mm.glsl) */
#version 450
#define WTYPE 6
#include "mm.glsl"
