/* matmul, f16 weights (see mm.glsl) */
#version 450
#define WTYPE 1
#include "mm.glsl"
