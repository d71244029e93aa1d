/* attention for decode steps on subgroup devices (see attn_dec.glsl) */
#version 450
#include "attn_dec.glsl"
