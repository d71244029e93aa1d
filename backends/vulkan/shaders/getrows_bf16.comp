/* get_rows, bf16 table (see getrows.glsl) */
#version 450
#define WTYPE 30
#include "getrows.glsl"
