/* mmc.glsl emulated without matrix cores (tests), f32 weights */
#version 450
#define WTYPE 0
#define MMC_EMULATE
#include "mmc.glsl"
