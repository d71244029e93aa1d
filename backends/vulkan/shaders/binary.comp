/*
 * binary.comp - element-wise ops over rows: mode 0 add (b may be one row
 * broadcast: b_stride 0), mode 1 swiglu dst = silu(a) * b. dst may alias a.
 */
#version 450
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer AB { float Av[]; };
layout(binding = 1) readonly buffer BB { float Bv[]; };
layout(binding = 2) writeonly buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint a_off, a_stride, b_off, b_stride, d_off, d_stride, n, rows, mode;
} p;

void main() {
    uint r = gl_WorkGroupID.y, i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
    float a = Av[p.a_off + r * p.a_stride + i];
    float b = Bv[p.b_off + r * p.b_stride + i];
    D[p.d_off + r * p.d_stride + i] = p.mode == 0u ? a + b : a / (1.0 + exp(-a)) * b;
}
