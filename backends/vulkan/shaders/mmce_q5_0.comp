/* mmc.glsl emulated without matrix cores (tests), q5_0 weights */
#version 450
#define WTYPE 6
#define MMC_EMULATE
#include "mmc.glsl"
