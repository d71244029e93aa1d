/*
 * kv_store.comp - writes row t of k and v as F16 (rounded as
 * kiln_fp32_to_fp16) into cell kv_cell[t] of the caches; kv_dim is even,
 * one invocation per pair of values.
 */
#version 450
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer KB { float Ks[]; };
layout(binding = 1) readonly buffer VB { float Vs[]; };
layout(binding = 2) buffer KC { uint KCache[]; };
layout(binding = 3) buffer VC { uint VCache[]; };
layout(binding = 4) readonly buffer UB { int U[]; };

layout(push_constant) uniform P {
    uint k_off, k_stride, v_off, v_stride, kv_dim, rows, cell_off;
} p;

#include "common.glsl"

void main() {
    uint r = gl_WorkGroupID.y, i = gl_GlobalInvocationID.x;
    if (2u * i >= p.kv_dim) return;
    uint cell = uint(U[p.cell_off + r]);
    uint o = (cell * p.kv_dim) / 2u + i;
    uint k = p.k_off + r * p.k_stride + 2u * i, v = p.v_off + r * p.v_stride + 2u * i;
    KCache[o] = f2h(Ks[k]) | (f2h(Ks[k + 1u]) << 16);
    VCache[o] = f2h(Vs[v]) | (f2h(Vs[v + 1u]) << 16);
}
