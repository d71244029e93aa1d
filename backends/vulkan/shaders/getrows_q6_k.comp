/* get_rows, q6_k table (see getrows.glsl) */
#version 450
#define WTYPE 14
#include "getrows.glsl"
