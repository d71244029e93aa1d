/* mmc.glsl emulated without matrix cores (tests), q5_k weights */
#version 450
#define WTYPE 13
#define MMC_EMULATE
#include "mmc.glsl"
