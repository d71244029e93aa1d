/*
 * add_rms_norm.comp - the residual add and the next norm in one dispatch:
 * S = A + B, then D = (S * 1/sqrt(mean(S^2) + eps)) * w, one workgroup per
 * row, with binary.comp's add and rms_norm.comp's arithmetic (the same
 * reduction tree), so the bits equal the two separate dispatches'.
 *
 * S may alias A, D may alias S or A: element i of a row is read and written
 * only by invocation i % 256, in program order.
 *
 * qmode != 0: also the activations quantized for the matmul that reads
 * dst next (quant_chunk.glsl) into AQ, rows a_stride words apart.
 */
#version 450
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer AB { float Av[]; };
layout(binding = 1) readonly buffer BB { float Bv[]; };
layout(binding = 2) buffer SB { float S[]; };
layout(binding = 3) readonly buffer WB { float Wt[]; };
layout(binding = 4) buffer DB { float D[]; };
layout(binding = 5) buffer QB { uint AQ[]; };

layout(push_constant) uniform P {
    uint a_off, a_stride, b_off, b_stride, s_off, s_stride, w_off, d_off, d_stride, n, rows;
    float eps;
    uint qmode, q_stride;
} p;

#include "common.glsl"
#define KILN_QUANT_ROW_REGS
#include "quant_chunk.glsl"

shared float red[256];

/* Rows of up to 256 * RN elements (a decode step's 4096) keep the
 * invocation's elements in registers, every load issued before the first
 * use: one round of memory latency instead of one per element in turn
 * (15.7 us per dispatch on the H100 before, bench/NOTES.md). The same
 * elements in the same order per invocation, so the same bits. */
#define RN 16u

void main() {
    uint r = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    uint a = p.a_off + r * p.a_stride, b = p.b_off + r * p.b_stride, s = p.s_off + r * p.s_stride;
    uint d = p.d_off + r * p.d_stride;
    precise float acc = 0.0; /* as rms_norm.comp */
    const bool regs = p.n <= 256u * RN;
    float sv[RN], wv[RN];
    if (regs) {
        float av[RN], bv[RN];
        for (uint k = 0u; k < RN; k++) {
            uint i = tid + 256u * k;
            av[k] = i < p.n ? Av[a + i] : 0.0;
            bv[k] = i < p.n ? Bv[b + i] : 0.0;
            wv[k] = i < p.n ? Wt[p.w_off + i] : 0.0;
        }
        for (uint k = 0u; k < RN; k++) {
            uint i = tid + 256u * k;
            if (i < p.n) {
                float v = av[k] + bv[k];
                sv[k] = v;
                S[s + i] = v;
                acc += v * v;
            }
        }
    } else {
        for (uint i = tid; i < p.n; i += 256u) {
            float v = Av[a + i] + Bv[b + i];
            S[s + i] = v;
            acc += v * v;
        }
    }
    red[tid] = acc;
    barrier();
    for (uint k = 128u; k > 0u; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        barrier();
    }
    float scale = 1.0 / sqrt(red[0] / float(p.n) + p.eps);
    if (regs) {
        for (uint k = 0u; k < RN; k++) {
            uint i = tid + 256u * k;
            if (i < p.n) {
                sv[k] = (sv[k] * scale) * wv[k];
                D[d + i] = sv[k];
            }
        }
    } else {
        for (uint i = tid; i < p.n; i += 256u) D[d + i] = (S[s + i] * scale) * Wt[p.w_off + i];
    }
    if (p.qmode == 0u) return;
    if (regs && p.n % (p.qmode == 5u ? 256u : 32u) == 0u) {
        quant_row_regs(sv, tid, r * p.q_stride, p.n, p.qmode);
        return;
    }
    /* element c0 + tid was written by this invocation above */
    for (uint c0 = 0u; c0 < p.n; c0 += 256u)
        quant_chunk(c0 + tid < p.n ? D[d + c0 + tid] : 0.0, tid, c0, r * p.q_stride, p.n, p.qmode);
}
