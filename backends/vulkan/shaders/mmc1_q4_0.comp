/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q4_0 weights (see mmc1.glsl) */
#version 450
#define WTYPE 2
#include "mmc1.glsl"
