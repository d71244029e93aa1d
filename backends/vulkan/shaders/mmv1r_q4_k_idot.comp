/* mmv1_q4_k_idot.comp with the residual added to each result (matmul_add, see mmv.glsl KILN_RESADD) */
#version 450
#define WTYPE 12
#define MT 1u
#define KILN_IDOT
#define KILN_RESADD
#include "mmv.glsl"
