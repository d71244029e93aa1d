/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), f32 weights (see mmc1.glsl) */
#version 450
#define WTYPE 0
#include "mmc1.glsl"
