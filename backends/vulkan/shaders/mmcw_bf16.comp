/* matmul for batches on matrix cores, warp-specialized (see mmcw_main.glsl), bf16 weights */
#version 450
#define WTYPE 30
#define MMC_WS
#include "mmc.glsl"
