/* matmul, bf16 weights (see mm.glsl) */
#version 450
#define WTYPE 30
#include "mm.glsl"
