/* mmc.glsl emulated without matrix cores (tests), q6_k weights */
#version 450
#define WTYPE 14
#define MMC_EMULATE
#include "mmc.glsl"
