/* mmv1_q4_0s.comp with add_rms_norm by the last workgroup (matmul_add_rms_norm, see mmv.glsl KILN_NORM) */
#version 450
#define WTYPE 102
#define MT 1u
#define KILN_NORM
#include "mmv.glsl"
