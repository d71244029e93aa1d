/* matmul, q8_0 weights (see mm.glsl) */
#version 450
#define WTYPE 8
#include "mm.glsl"
