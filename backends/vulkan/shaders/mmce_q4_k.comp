/* mmc.glsl emulated without matrix cores (tests), q4_k weights */
#version 450
#define WTYPE 12
#define MMC_EMULATE
#include "mmc.glsl"
