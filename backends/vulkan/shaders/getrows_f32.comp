/* get_rows, f32 table (see getrows.glsl) */
#version 450
#define WTYPE 0
#include "getrows.glsl"
