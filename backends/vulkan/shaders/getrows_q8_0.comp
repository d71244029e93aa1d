/* get_rows, q8_0 table (see getrows.glsl) */
#version 450
#define WTYPE 8
#include "getrows.glsl"
