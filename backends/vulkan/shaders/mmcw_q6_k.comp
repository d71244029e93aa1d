/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q6_k weights */
#version 450
#define WTYPE 14
#define MMC_WS
#include "mmc.glsl"
