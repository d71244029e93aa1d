/* matmul, q8_0 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 8
#define USE_SUBGROUP
#include "mm.glsl"
