/*
 * mm.glsl - matmul dst[m][n] = sum_k W[n][k] * x[m][k] for a few
 * activation rows (decode, short drafts: M <= MC per dispatch row group)
 * and one weight type (WTYPE, set by the including mm_TYPE.comp),
 * activations already in the format types.glsl pairs with it
 * (quant_act.comp).
 *
 * Eight invocations share a weight row, striding over its 32-element
 * chunks, so each weight byte is read once per dispatch and neighbouring
 * invocations read neighbouring bytes. The eight chunk results of a round
 * are added to the row's sums in chunk order (subgroup shuffles where the
 * device has them, USE_SUBGROUP; shared memory otherwise), the order the
 * tiled kernel uses: decode and prefill give the same bits. A workgroup of 64 covers 8 weight rows per pass and makes
 * `passes` passes (the host picks more for CPU implementations, where
 * each workgroup costs more than its arithmetic).
 */
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_shuffle : require
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
        uint row = p.w_off + min(n, p.N - 1u) * p.w_stride;
        /* Chunk contributions are added in chunk order, one at a time, as
         * the tiled kernel (mmt.glsl) adds them: a row's result has the
         * same bits whatever the batch size (no fused multiply-adds:
         * precise). Lane k computes chunk c0 + k of each round. */
        precise float acc[MC];
        for (uint j = 0u; j < MC; j++) acc[j] = 0.0;
        for (uint c0 = 0u; c0 < nchunks; c0 += 8u) {
            uint c = c0 + lane;
            float v[MC];
            for (uint j = 0u; j < MC; j++)
                v[j] = n < p.N && c < nchunks && j < mc ? dot32(row, c, p.a_off + (m0 + j) * p.a_stride, p.K) : 0.0;
            uint nk = min(8u, nchunks - c0);
#ifdef USE_SUBGROUP
            uint base = gl_SubgroupInvocationID & ~7u;
            /* mc is the same for the whole workgroup: uniform control flow */
            for (uint k = 0u; k < 8u; k++)
                for (uint j = 0u; j < mc; j++) {
                    float t = subgroupShuffle(v[j], base + k);
                    if (k < nk) acc[j] += t;
                }
#else
            for (uint j = 0u; j < mc; j++) red[j][tid] = v[j];
            barrier();
            for (uint k = 0u; k < nk; k++)
                for (uint j = 0u; j < mc; j++) acc[j] += red[j][tid - lane + k];
            barrier();
#endif
        }
        if (lane == 0u && n < p.N)
            for (uint j = 0u; j < mc; j++) D[p.d_off + (m0 + j) * p.d_stride + n] = acc[j];
    }
}
