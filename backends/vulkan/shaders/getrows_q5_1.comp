/* get_rows, q5_1 table (see getrows.glsl) */
#version 450
#define WTYPE 7
#include "getrows.glsl"
