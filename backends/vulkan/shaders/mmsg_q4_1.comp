/* matmul, q4_1 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 3
#define USE_SUBGROUP
#include "mm.glsl"
