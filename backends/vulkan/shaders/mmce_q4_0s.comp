/* mmc.glsl emulated without matrix cores (tests), q4_0 weights in the split layout (vk_layout.c) */
#version 450
#define WTYPE 102
#define MMC_EMULATE
#include "mmc.glsl"
