/* mmvm1_q4_k_idot.comp with the norm of its activations in each workgroup (rms_norm_matmul_multi, see mmv.glsl KILN_PRENORM) */
#version 450
#define WTYPE 12
#define MULTI
#define MT 1u
#define KILN_IDOT
#define KILN_PRENORM
#include "mmv.glsl"
