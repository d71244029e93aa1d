/* get_rows, q4_0 table in the split layout (vk_layout.c) (see getrows.glsl) */
#version 450
#define WTYPE 102
#include "getrows.glsl"
