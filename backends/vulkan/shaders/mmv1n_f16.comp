/* mmv1_f16.comp with add_rms_norm by the last workgroup (matmul_add_rms_norm, see mmv.glsl KILN_NORM) */
#version 450
#define WTYPE 1
#define MT 1u
#define KILN_NORM
#include "mmv.glsl"
