/* mmvm1_q4_k_idot.comp with silu(gate) * up and its quantization in the product (matmul_swiglu, see mmv.glsl KILN_SWIGLU) */
#version 450
#define WTYPE 12
#define MULTI
#define MT 1u
#define KILN_IDOT
#define KILN_SWIGLU
#include "mmv.glsl"
