/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), f16 weights */
#version 450
#define WTYPE 1
#define MMC_WS
#include "mmc.glsl"
