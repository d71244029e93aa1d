/* get_rows, q4_k table (see getrows.glsl) */
#version 450
#define WTYPE 12
#include "getrows.glsl"
