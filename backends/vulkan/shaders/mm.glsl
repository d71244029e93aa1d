/*
 * mm.glsl - matmul dst[m][n] = sum_k W[n][k] * x[m][k] for a few
 * activation rows (decode, short drafts: M <= MC per dispatch row group)
 * and one weight type (WTYPE, set by the including mm_TYPE.comp),
 * activations already in the format types.glsl pairs with it
 * (quant_act.comp).
 *
 * Eight invocations share a weight row, striding over its 32-element
 * chunks, so each weight byte is read once per dispatch and neighbouring
 * invocations read neighbouring bytes; each keeps MC partial sums (one per
 * activation row). The eight partials are summed with a clustered subgroup
 * add where the device has it (USE_SUBGROUP), through shared memory
 * otherwise. A workgroup of 64 covers 8 weight rows per pass and makes
 * `passes` passes (the host picks more for CPU implementations, where
 * each workgroup costs more than its arithmetic).
 */
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_clustered : require
#extension GL_KHR_shader_subgroup_basic : require
#endif

#define MC 4u
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 1) readonly buffer AB { uint A[]; };
layout(binding = 2) writeonly buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes */
    uint a_off, a_stride;   /* words */
    uint d_off, d_stride;   /* words */
    uint K, N, M;
    uint n_base;            /* first weight row of this dispatch */
    uint passes;            /* 8-row passes per workgroup */
    uint m_base;            /* first activation row of this dispatch */
} p;

#define KILN_BYTES
#include "common.glsl"
#include "types.glsl"

#ifndef USE_SUBGROUP
shared float red[MC][64];
#endif

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint lane = tid & 7u, slot = tid >> 3;
    uint nchunks = (p.K + 31u) / 32u;
    uint m0 = p.m_base + gl_WorkGroupID.y * MC;
    uint mc = min(MC, p.M - m0);
    for (uint pass = 0u; pass < p.passes; pass++) {
        uint n = p.n_base + (gl_WorkGroupID.x * p.passes + pass) * 8u + slot;
        float acc[MC];
        for (uint j = 0u; j < MC; j++) acc[j] = 0.0;
        if (n < p.N) {
            uint row = p.w_off + n * p.w_stride;
            for (uint c = lane; c < nchunks; c += 8u) {
                acc[0] += dot32(row, c, p.a_off + m0 * p.a_stride, p.K);
                for (uint j = 1u; j < mc; j++) acc[j] += dot32(row, c, p.a_off + (m0 + j) * p.a_stride, p.K);
            }
        }
#ifdef USE_SUBGROUP
        for (uint j = 0u; j < MC; j++) acc[j] = subgroupClusteredAdd(acc[j], 8u);
        if (lane == 0u && n < p.N)
            for (uint j = 0u; j < mc; j++) D[p.d_off + (m0 + j) * p.d_stride + n] = acc[j];
#else
        for (uint j = 0u; j < MC; j++) red[j][tid] = acc[j];
        barrier();
        if (lane == 0u && n < p.N)
            for (uint j = 0u; j < mc; j++) {
                float s = 0.0;
                for (uint k = 0u; k < 8u; k++) s += red[j][tid + k];
                D[p.d_off + (m0 + j) * p.d_stride + n] = s;
            }
        barrier();
#endif
    }
}
