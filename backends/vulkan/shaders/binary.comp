/*
 * binary.comp - element-wise ops over rows: mode 0 add (b may be one row
 * broadcast: b_stride 0), mode 1 swiglu dst = silu(a) * b. dst may alias a.
 *
 * qmode != 0: also the results quantized for the matmul that reads dst
 * next (quant_chunk.glsl; a workgroup is one 256-element chunk of a row)
 * into AQ, rows q_stride words apart.
 */
#version 450
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer AB { float Av[]; };
layout(binding = 1) readonly buffer BB { float Bv[]; };
layout(binding = 2) writeonly buffer DB { float D[]; };
layout(binding = 3) buffer QB { uint AQ[]; };

layout(push_constant) uniform P {
    uint a_off, a_stride, b_off, b_stride, d_off, d_stride, n, rows, mode;
    uint qmode, q_stride;
} p;

#include "common.glsl"
#include "quant_chunk.glsl"

void main() {
    uint r = gl_WorkGroupID.y, i = gl_GlobalInvocationID.x;
    float v = 0.0;
    if (i < p.n) {
        float a = Av[p.a_off + r * p.a_stride + i];
        float b = Bv[p.b_off + r * p.b_stride + i];
        v = p.mode == 0u ? a + b : a / (1.0 + exp(-a)) * b;
        D[p.d_off + r * p.d_stride + i] = v;
    }
    if (p.qmode != 0u) quant_chunk(v, gl_LocalInvocationID.x, 256u * gl_WorkGroupID.x, r * p.q_stride, p.n, p.qmode);
}
