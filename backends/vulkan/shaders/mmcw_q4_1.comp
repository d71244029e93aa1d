/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q4_1 weights */
#version 450
#define WTYPE 3
#define MMC_WS
#include "mmc.glsl"
