/*
 * quant_act.comp - converts F32 activation rows into the format a weight
 * type is dotted against (see types.glsl), rounding exactly as the CPU
 * backend's activation quantizers (backends/cpu/cpu_dot_scalar.c,
 * lib/quant.c's Q8_K), so that both backends multiply the same numbers.
 *
 * mode 1/2: F16/BF16 (the rounded values stored as F32), one invocation
 * per element; 3/4: Q8_0/Q8_1, one per 32-block; 5: Q8_K, one per
 * 256-block.
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

void main() {
    uint r = gl_WorkGroupID.y;
    uint i = gl_GlobalInvocationID.x;
    uint x = p.x_off + r * p.x_stride;
    uint a = p.a_off + r * p.a_stride;
    if (p.mode == 1u || p.mode == 2u) {
        if (i >= p.K) return;
        float v = X[x + i];
        A[a + i] = floatBitsToUint(p.mode == 1u ? h2f(f2h(v)) : bf2f(f2bf(v)));
        return;
    }
    if (p.mode == 3u || p.mode == 4u) {
        if (32u * i >= p.K) return;
        uint x0 = x + 32u * i;
        float amax = 0.0;
        for (uint j = 0u; j < 32u; j++) amax = max(amax, abs(X[x0 + j]));
        float id = amax != 0.0 ? 127.0 / amax : 0.0;
        int sum = 0;
        for (uint w = 0u; w < 8u; w++) {
            uint word = 0u;
            for (uint k = 0u; k < 4u; k++) {
                int q = clamp(int(roundEven(X[x0 + 4u * w + k] * id)), -127, 127);
                sum += q;
                word |= (uint(q) & 0xffu) << (8u * k);
            }
            A[a + 8u * i + w] = word;
        }
        float d = amax / 127.0;
        A[a + p.K / 4u + i] = floatBitsToUint(h2f(f2h(d)));
        if (p.mode == 4u) A[a + p.K / 4u + p.K / 32u + i] = floatBitsToUint(h2f(f2h(d * float(sum))));
        return;
    }
    /* Q8_K: the element of largest magnitude (the first one) maps to -127 */
    if (256u * i >= p.K) return;
    uint x0 = x + 256u * i;
    float amax = 0.0, mx = 0.0;
    for (uint j = 0u; j < 256u; j++) {
        float v = X[x0 + j];
        if (abs(v) > amax) { amax = abs(v); mx = v; }
    }
    uint bs = a + p.K / 4u + p.K / 256u + 16u * i;
    if (amax == 0.0) {
        for (uint w = 0u; w < 64u; w++) A[a + 64u * i + w] = 0u;
        A[a + p.K / 4u + i] = 0u;
        for (uint j = 0u; j < 16u; j++) A[bs + j] = 0u;
        return;
    }
    float inv = -127.0 / mx;
    for (uint g = 0u; g < 16u; g++) {
        int sum = 0;
        for (uint w = 0u; w < 4u; w++) {
            uint word = 0u;
            for (uint k = 0u; k < 4u; k++) {
                float v = inv * X[x0 + 16u * g + 4u * w + k];
                int q = clamp(int(roundEven(min(max(v, -128.0), 127.0))), -128, 127);
                sum += q;
                word |= (uint(q) & 0xffu) << (8u * k);
            }
            A[a + 64u * i + 4u * g + w] = word;
        }
        A[bs + g] = uint(sum);
    }
    A[a + p.K / 4u + i] = floatBitsToUint(1.0 / inv);
}
