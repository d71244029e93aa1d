/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), q5_k weights */
#version 450
#define WTYPE 13
#define MMC_WS
#include "mmc.glsl"
