/* get_rows, q4_1 table (see getrows.glsl) */
#version 450
#define WTYPE 3
#include "getrows.glsl"
