/* mmc.glsl emulated without matrix cores (tests), q4_1 weights */
#version 450
#define WTYPE 3
#define MMC_EMULATE
#include "mmc.glsl"
