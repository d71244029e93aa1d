/*
 * quant_act.comp - converts F32 activation rows into the format a weight
 * type is dotted against (see types.glsl), rounding exactly as the CPU
 * backend's activation quantizers (backends/cpu/cpu_dot_scalar.c,
 * lib/quant.c's Q8_K), so that both backends multiply the same numbers.
 *
 * mode 1/2: F16/BF16 (the rounded values stored as F32), one invocation
 * per element. mode 6: F16 packed two to a word, rows padded with zeros to
 * whole 32-element chunks (a_stride words: the matrix-core batch kernel,
 * mmc.glsl, reads them as 16-byte vectors), one invocation per word. mode 3/4 (Q8_0/Q8_1): a workgroup per 256 elements, eight
 * 32-blocks of eight invocations, four values (one packed word) each;
 * mode 5 (Q8_K): a workgroup per 256-element super-block. The block's
 * maximum and sums are reduced in shared memory; maxima and integer sums
 * do not depend on the order, so the results are the CPU's.
 */
#version 450
layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer XB { float X[]; };
layout(binding = 1) writeonly buffer AB { uint A[]; };

layout(push_constant) uniform P {
    uint x_off, x_stride;   /* words */
    uint a_off, a_stride;   /* words */
    uint K, M, mode;
} p;

#include "common.glsl"

shared float s_abs[64];
shared uint s_idx[64];
shared int s_sum[64];

void main() {
    uint r = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint x = p.x_off + r * p.x_stride;
    uint a = p.a_off + r * p.a_stride;
    if (p.mode == 6u) {
        uint i = gl_GlobalInvocationID.x, e = 2u * i;
        if (i >= p.a_stride) return;
        float v0 = e < p.K ? X[x + e] : 0.0, v1 = e + 1u < p.K ? X[x + e + 1u] : 0.0;
        A[a + i] = f2h(v0) | (f2h(v1) << 16);
        return;
    }
    if (p.mode == 1u || p.mode == 2u) {
        uint i = gl_GlobalInvocationID.x;
        if (i >= p.K) return;
        float v = X[x + i];
        A[a + i] = floatBitsToUint(p.mode == 1u ? h2f(f2h(v)) : bf2f(f2bf(v)));
        return;
    }
    /* this invocation's four values: elements e0..e0+3 */
    uint e0 = 256u * gl_WorkGroupID.x + 4u * tid;
    bool live = e0 < p.K; /* K is a multiple of 32 (Q8_0/1) or 256 (Q8_K) */
    vec4 v = live ? vec4(X[x + e0], X[x + e0 + 1u], X[x + e0 + 2u], X[x + e0 + 3u]) : vec4(0.0);
    /* the largest magnitude, first index on ties (Q8_K keeps its sign) */
    float best = abs(v.x);
    uint bi = 0u;
    for (uint k = 1u; k < 4u; k++)
        if (abs(v[k]) > best) { best = abs(v[k]); bi = k; }
    s_abs[tid] = best;
    s_idx[tid] = 4u * tid + bi;
    barrier();
    uint group = p.mode == 5u ? 64u : 8u; /* invocations per block */
    for (uint s = group / 2u; s > 0u; s >>= 1) {
        if ((tid & (group - 1u)) < s) {
            uint o = tid + s;
            if (s_abs[o] > s_abs[tid] || (s_abs[o] == s_abs[tid] && s_idx[o] < s_idx[tid])) {
                s_abs[tid] = s_abs[o];
                s_idx[tid] = s_idx[o];
            }
        }
        barrier();
    }
    uint lead = tid & ~(group - 1u);
    float amax = s_abs[lead];
    uint word = 0u;
    int sum = 0;
    if (p.mode != 5u) {
        float id = amax != 0.0 ? 127.0 / amax : 0.0;
        for (uint k = 0u; k < 4u; k++) {
            int q = clamp(int(roundEven(v[k] * id)), -127, 127);
            sum += q;
            word |= (uint(q) & 0xffu) << (8u * k);
        }
    } else if (amax != 0.0) {
        float mx = X[x + 256u * gl_WorkGroupID.x + s_idx[lead]];
        float inv = -127.0 / mx;
        for (uint k = 0u; k < 4u; k++) {
            int q = clamp(int(roundEven(min(max(inv * v[k], -128.0), 127.0))), -128, 127);
            sum += q;
            word |= (uint(q) & 0xffu) << (8u * k);
        }
    }
    if (live) A[a + e0 / 4u] = word;
    barrier(); /* s_abs/s_idx reads done */
    s_sum[tid] = sum;
    barrier();
    if (!live) return;
    if (p.mode == 5u) {
        uint blk = gl_WorkGroupID.x;
        if ((tid & 3u) == 0u) /* partial sums of 16 values: four invocations */
            A[a + p.K / 4u + p.K / 256u + 16u * blk + tid / 4u] =
                uint(s_sum[tid] + s_sum[tid + 1u] + s_sum[tid + 2u] + s_sum[tid + 3u]);
        if (tid == 0u) {
            float mx = X[x + 256u * blk + s_idx[0]];
            A[a + p.K / 4u + blk] = amax != 0.0 ? floatBitsToUint(1.0 / (-127.0 / mx)) : 0u;
        }
        return;
    }
    if ((tid & 7u) == 0u) {
        uint blk = e0 / 32u;
        float d = amax / 127.0;
        A[a + p.K / 4u + blk] = floatBitsToUint(h2f(f2h(d)));
        if (p.mode == 4u) {
            int s = 0;
            for (uint k = 0u; k < 8u; k++) s += s_sum[tid + k];
            A[a + p.K / 4u + p.K / 32u + blk] = floatBitsToUint(h2f(f2h(d * float(s))));
        }
    }
}
