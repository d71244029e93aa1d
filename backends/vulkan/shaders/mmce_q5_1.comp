/* mmc.glsl emulated without matrix cores (tests), q5_1 weights */
#version 450
#define WTYPE 7
#define MMC_EMULATE
#include "mmc.glsl"
