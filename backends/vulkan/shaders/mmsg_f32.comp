/* matmul, f32 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 0
#define USE_SUBGROUP
#include "mm.glsl"
