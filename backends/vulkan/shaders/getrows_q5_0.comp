/* get_rows, q5_0 table (see getrows.glsl) */
#version 450
#define WTYPE 6
#include "getrows.glsl"
