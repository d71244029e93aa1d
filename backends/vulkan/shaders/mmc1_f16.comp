/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), f16 weights (see mmc1.glsl) */
#version 450
#define WTYPE 1
#include "mmc1.glsl"
