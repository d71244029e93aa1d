/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q5_k weights (see mmc1.glsl) */
#version 450
#define WTYPE 13
#include "mmc1.glsl"
