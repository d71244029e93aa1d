/*
 * mm.glsl - matmul dst[m][n] = sum_k W[n][k] * x[m][k] for one weight type
 * (WTYPE, set by the including mm_TYPE.comp), activations already in the
 * format types.glsl pairs with it (quant_act.comp).
 *
 * A workgroup computes NR weight rows x MC activation rows. Its threads
 * stride over the row's 32-element chunks, each accumulating NR x MC
 * partial dot products; the partials are then summed across the workgroup
 * (subgroup adds where the device has them, shared memory otherwise). Each
 * weight chunk is read once per workgroup, so a decode step (M = 1) reads
 * every weight byte once.
 */
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_basic : require
#endif

#define WG 64u
#define NR 4u
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
} p;

#define KILN_BYTES
#include "common.glsl"
#include "types.glsl"

#ifdef USE_SUBGROUP
shared float red[NR * MC][WG / 4u]; /* one slot per subgroup (size >= 4) */
#else
shared float red[NR * MC][WG];
#endif

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint n0 = p.n_base + gl_WorkGroupID.x * NR;
    uint m0 = gl_WorkGroupID.y * MC;
    uint nchunks = (p.K + 31u) / 32u;
    float acc[NR * MC];
    for (uint i = 0u; i < NR * MC; i++) acc[i] = 0.0;
    uint nr = min(NR, p.N - n0), mc = min(MC, p.M - m0);
    for (uint c = tid; c < nchunks; c += WG) {
        for (uint r = 0u; r < nr; r++) {
            uint row = p.w_off + (n0 + r) * p.w_stride;
            for (uint j = 0u; j < mc; j++)
                acc[r * MC + j] += dot32(row, c, p.a_off + (m0 + j) * p.a_stride, p.K);
        }
    }
#ifdef USE_SUBGROUP
    uint nsg = gl_NumSubgroups;
    for (uint i = 0u; i < NR * MC; i++) {
        float s = subgroupAdd(acc[i]);
        if (subgroupElect()) red[i][gl_SubgroupID] = s;
    }
    barrier();
    if (tid < NR * MC) {
        uint r = tid / MC, j = tid % MC;
        float s = 0.0;
        for (uint g = 0u; g < nsg; g++) s += red[tid][g];
        if (r < nr && j < mc) D[p.d_off + (m0 + j) * p.d_stride + n0 + r] = s;
    }
#else
    for (uint i = 0u; i < NR * MC; i++) red[i][tid] = acc[i];
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s)
            for (uint i = 0u; i < NR * MC; i++) red[i][tid] += red[i][tid + s];
        barrier();
    }
    if (tid < NR * MC) {
        uint r = tid / MC, j = tid % MC;
        if (r < nr && j < mc) D[p.d_off + (m0 + j) * p.d_stride + n0 + r] = red[tid][0];
    }
#endif
}
