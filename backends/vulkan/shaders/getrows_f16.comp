/* get_rows, f16 table (see getrows.glsl) */
#version 450
#define WTYPE 1
#include "getrows.glsl"
