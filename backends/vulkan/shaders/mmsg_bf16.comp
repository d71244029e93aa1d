/* matmul, bf16 weights, subgroup reduction (see mm.glsl) */
#version 450
#define WTYPE 30
#define USE_SUBGROUP
#include "mm.glsl"
