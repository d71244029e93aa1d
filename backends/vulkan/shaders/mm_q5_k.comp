/* matmul, q5_k weights (see mm.glsl) */
#version 450
#define WTYPE 13
#include "mm.glsl"
