/* matmul, q4_k weights (see mm.glsl) */
#version 450
#define WTYPE 12
#include "mm.glsl"
