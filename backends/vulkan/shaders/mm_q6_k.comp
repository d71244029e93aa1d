/* matmul, q6_k weights (see mm.glsl) */
#version 450
#define WTYPE 14
#include "mm.glsl"
