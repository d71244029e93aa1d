/* matmul, q4_k weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 12
#define USE_SUBGROUP
#include "mm.glsl"
