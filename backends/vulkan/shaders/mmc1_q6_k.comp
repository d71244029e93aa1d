/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q6_k weights (see mmc1.glsl) */
#version 450
#define WTYPE 14
#include "mmc1.glsl"
