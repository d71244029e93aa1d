/*
 * rms_norm.comp - dst = (x * 1/sqrt(mean(x^2) + eps)) * w, one workgroup
 * per row; dst may alias x (each row is read completely before it is
 * written).
 *
 * qmode != 0: also the activations quantized for the matmul that reads
 * dst next (quant_chunk.glsl) into AQ, rows a_stride words apart.
 */
#version 450
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer XB { float X[]; };
layout(binding = 1) readonly buffer WB { float Wt[]; };
layout(binding = 2) buffer DB { float D[]; };
layout(binding = 3) buffer QB { uint AQ[]; };

layout(push_constant) uniform P {
    uint x_off, x_stride, w_off, d_off, d_stride, n, rows;
    float eps;
    uint qmode, a_stride;
} p;

#include "common.glsl"
#define KILN_QUANT_ROW_REGS
#include "quant_chunk.glsl"

shared float red[256];

/* Rows of up to 4096 elements are held in registers, every load issued
 * before the first use (the same sums in the same order: the same bits),
 * and quantized with quant_row_regs (as add_rms_norm.comp). */
void main() {
    uint r = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    uint x = p.x_off + r * p.x_stride;
    /* precise: no fused multiply-add (as the CPU rounds, and the same bits
     * as add_rms_norm.comp's) */
    precise float s = 0.0;
    const bool regs = p.n <= 4096u;
    float xv[16], wv[16];
    if (regs) {
        for (uint k = 0u; k < 16u; k++) {
            uint i = tid + 256u * k;
            xv[k] = i < p.n ? X[x + i] : 0.0;
            wv[k] = i < p.n ? Wt[p.w_off + i] : 0.0;
        }
        for (uint k = 0u; k < 16u; k++)
            if (tid + 256u * k < p.n) s += xv[k] * xv[k];
    } else {
        for (uint i = tid; i < p.n; i += 256u) s += X[x + i] * X[x + i];
    }
    red[tid] = s;
    barrier();
    for (uint k = 128u; k > 0u; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        barrier();
    }
    float scale = 1.0 / sqrt(red[0] / float(p.n) + p.eps);
    uint d = p.d_off + r * p.d_stride;
    if (regs) {
        for (uint k = 0u; k < 16u; k++) {
            uint i = tid + 256u * k;
            if (i < p.n) {
                xv[k] = (xv[k] * scale) * wv[k];
                D[d + i] = xv[k];
            }
        }
    } else {
        for (uint i = tid; i < p.n; i += 256u) D[d + i] = (X[x + i] * scale) * Wt[p.w_off + i];
    }
    if (p.qmode == 0u) return;
    if (regs && p.n % (p.qmode == 5u ? 256u : 32u) == 0u) {
        quant_row_regs(xv, tid, r * p.a_stride, p.n, p.qmode);
        return;
    }
    /* element c0 + tid was written by this invocation above */
    for (uint c0 = 0u; c0 < p.n; c0 += 256u)
        quant_chunk(c0 + tid < p.n ? D[d + c0 + tid] : 0.0, tid, c0, r * p.a_stride, p.n, p.qmode);
}
