/* matmul, f16 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 1
#define USE_SUBGROUP
#include "mm.glsl"
