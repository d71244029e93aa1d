/* matmul, q5_1 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 7
#define USE_SUBGROUP
#include "mm.glsl"
