/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q4_0s weights */
#version 450
#define WTYPE 102
#define MMC_WS
#include "mmc.glsl"
