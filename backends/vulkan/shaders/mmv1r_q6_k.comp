/* mmv1_q6_k.comp with the residual added to each result (matmul_add, see mmv.glsl KILN_RESADD) */
#version 450
#define WTYPE 14
#define MT 1u
#define KILN_RESADD
#include "mmv.glsl"
