/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), f32 weights */
#version 450
#define WTYPE 0
#define MMC_WS
#include "mmc.glsl"
