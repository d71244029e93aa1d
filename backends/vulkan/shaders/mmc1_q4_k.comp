/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q4_k weights (see mmc1.glsl) */
#version 450
#define WTYPE 12
#include "mmc1.glsl"
