/*
 * add_rms_norm.comp - the residual add and the next norm in one dispatch:
 * S = A + B, then D = (S * 1/sqrt(mean(S^2) + eps)) * w, one workgroup per
 * row, with binary.comp's add and rms_norm.comp's arithmetic (the same
 * reduction tree), so the bits equal the two separate dispatches'.
 *
 * S may alias A, D may alias S or A: element i of a row is read and written
 * only by invocation i % 256, in program order.
 */
#version 450
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer AB { float Av[]; };
layout(binding = 1) readonly buffer BB { float Bv[]; };
layout(binding = 2) buffer SB { float S[]; };
layout(binding = 3) readonly buffer WB { float Wt[]; };
layout(binding = 4) buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint a_off, a_stride, b_off, b_stride, s_off, s_stride, w_off, d_off, d_stride, n, rows;
    float eps;
} p;

shared float red[256];

void main() {
    uint r = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    uint a = p.a_off + r * p.a_stride, b = p.b_off + r * p.b_stride, s = p.s_off + r * p.s_stride;
    float acc = 0.0;
    for (uint i = tid; i < p.n; i += 256u) {
        float v = Av[a + i] + Bv[b + i];
        S[s + i] = v;
        acc += v * v;
    }
    red[tid] = acc;
    barrier();
    for (uint k = 128u; k > 0u; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        barrier();
    }
    float scale = 1.0 / sqrt(red[0] / float(p.n) + p.eps);
    uint d = p.d_off + r * p.d_stride;
    for (uint i = tid; i < p.n; i += 256u) D[d + i] = (S[s + i] * scale) * Wt[p.w_off + i];
}
