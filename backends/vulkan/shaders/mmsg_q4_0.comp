/* matmul, q4_0 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 2
#define USE_SUBGROUP
#include "mm.glsl"
