/* matmul, q5_0 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 6
#define USE_SUBGROUP
#include "mm.glsl"
