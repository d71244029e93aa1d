/* mmc.glsl emulated without matrix cores (tests), q4_0 weights */
#version 450
#define WTYPE 2
#define MMC_EMULATE
#include "mmc.glsl"
