/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q5_0 weights */
#version 450
#define WTYPE 6
#define MMC_WS
#include "mmc.glsl"
