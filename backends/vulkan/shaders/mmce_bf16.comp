/* mmc.glsl emulated without matrix cores (tests), bf16 weights */
#version 450
#define WTYPE 30
#define MMC_EMULATE
#include "mmc.glsl"
