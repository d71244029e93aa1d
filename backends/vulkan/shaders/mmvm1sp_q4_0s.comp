/* mmvm1s_q4_0s.comp with the norm of its activations in each workgroup (rms_norm_matmul_swiglu, see mmv.glsl KILN_PRENORM) */
#version 450
#define WTYPE 102
#define MULTI
#define MT 1u
#define KILN_SWIGLU
#define KILN_PRENORM
#include "mmv.glsl"
