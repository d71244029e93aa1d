/* matmul, q5_k weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 13
#define USE_SUBGROUP
#include "mm.glsl"
