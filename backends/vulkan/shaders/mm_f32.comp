/* matmul, f32 weights (see mm.glsl) */
#version 450
#define WTYPE 0
#include "mm.glsl"
