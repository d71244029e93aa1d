/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q5_1 weights (see mmc1.glsl) */
#version 450
#define WTYPE 7
#include "mmc1.glsl"
