/* the previous matrix-core batch kernel (KILN_VK_MMC_OLD=1), q4_0 weights in the split layout (vk_layout.c) (see mmc1.glsl) */
#version 450
#define WTYPE 102
#include "mmc1.glsl"
