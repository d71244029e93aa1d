/* matmul, q6_k weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 14
#define USE_SUBGROUP
#include "mm.glsl"
