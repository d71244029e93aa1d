/* get_rows, q4_0 table (see getrows.glsl) */
#version 450
#define WTYPE 2
#include "getrows.glsl"
