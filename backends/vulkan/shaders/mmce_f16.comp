/* mmc.glsl emulated without matrix cores (tests), f16 weights */
#version 450
#define WTYPE 1
#define MMC_EMULATE
#include "mmc.glsl"
