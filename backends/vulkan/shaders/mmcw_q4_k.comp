/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q4_k weights */
#version 450
#define WTYPE 12
#define MMC_WS
#include "mmc.glsl"
