/* mmc.glsl emulated without matrix cores (tests), q8_0 weights */
#version 450
#define WTYPE 8
#define MMC_EMULATE
#include "mmc.glsl"
