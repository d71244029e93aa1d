/* get_rows, q5_k table (see getrows.glsl) */
#version 450
#define WTYPE 13
#include "getrows.glsl"
