/*
 * mmt.glsl - tiled matmul for batches (M > 4): a workgroup of 256
 * computes 64 weight rows x 64 activation rows. For each 32-element chunk
 * of K it stages both tiles in shared memory as numbers the CPU backend
 * would multiply: weights as their quantized integers (sub-block scale
 * folded in, see wvals8) and activations as their Q8 integers, both held
 * in float, which is exact for a chunk's sum of products; then each
 * invocation forms 4 x 4 integer sums and scales them into its float
 * accumulators with the chunk's factors, as the CPU's dot products do per
 * block. Float weight types multiply float values directly.
 */
#define BN 64u
#define BM 64u
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 1) readonly buffer AB { uint A[]; };
layout(binding = 2) writeonly buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes */
    uint a_off, a_stride;   /* words */
    uint d_off, d_stride;   /* words */
    uint K, N, M;
    uint n_base;
} p;

#define KILN_BYTES
#include "common.glsl"
#include "types.glsl"

#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
#define FLOAT_W 1
#else
#define FLOAT_W 0
#endif

shared float Ws[32][BN + 1u];
shared float As[32][BM + 1u];
shared vec3 Wf[BN];
shared vec2 Af[BM];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint n0 = p.n_base + gl_WorkGroupID.x * BN;
    uint m0 = gl_WorkGroupID.y * BM;
    uint tx = tid % 16u, ty = tid / 16u;
    uint nchunks = (p.K + 31u) / 32u;
    /* precise: no fused multiply-adds, so that each chunk's contribution
     * and its addition round exactly as in mm.glsl (same bits for any batch) */
    precise float acc[16];
    for (uint i = 0u; i < 16u; i++) acc[i] = 0.0;
    /* this invocation loads 8 elements of weight row lr and of activation row lr */
    uint lr = tid / 4u, le = 8u * (tid % 4u);
    uint wn = n0 + lr, am = m0 + lr;
    uint wrow = p.w_off + min(wn, p.N - 1u) * p.w_stride;
    uint arow = p.a_off + min(am, p.M - 1u) * p.a_stride;
    for (uint c = 0u; c < nchunks; c++) {
        float v[8];
        wvals8(wrow, c, le, v);
        for (uint i = 0u; i < 8u; i++) Ws[le + i][lr] = wn < p.N && 32u * c + le + i < p.K ? v[i] : 0.0;
        if (le == 0u) Wf[lr] = wscale(wrow, c);
#if FLOAT_W
        for (uint i = 0u; i < 8u; i++) {
            uint e = 32u * c + le + i;
            As[le + i][lr] = am < p.M && e < p.K ? af(arow + e) : 0.0;
        }
#else
        uint q0 = A[arow + 8u * c + le / 4u], q1 = A[arow + 8u * c + le / 4u + 1u];
        for (uint i = 0u; i < 4u; i++) {
            As[le + i][lr] = am < p.M ? float(sb(q0, i)) : 0.0;
            As[le + 4u + i][lr] = am < p.M ? float(sb(q1, i)) : 0.0;
        }
        if (le == 0u) {
#if WTYPE == T_Q4_K || WTYPE == T_Q5_K || WTYPE == T_Q6_K
            float ad = af(arow + p.K / 4u + (c >> 3));
            uint bs = arow + p.K / 4u + p.K / 256u + 2u * c;
            Af[lr] = vec2(ad, float(int(A[bs]) + int(A[bs + 1u])));
#elif WTYPE == T_Q4_1 || WTYPE == T_Q5_1
            Af[lr] = vec2(af(arow + p.K / 4u + c), af(arow + p.K / 4u + p.K / 32u + c));
#else
            Af[lr] = vec2(af(arow + p.K / 4u + c), 0.0);
#endif
        }
#endif
        barrier();
        precise float s[16];
        for (uint i = 0u; i < 16u; i++) s[i] = 0.0;
        for (uint e = 0u; e < 32u; e++) {
            float w0 = Ws[e][tx], w1 = Ws[e][tx + 16u], w2 = Ws[e][tx + 32u], w3 = Ws[e][tx + 48u];
            for (uint b = 0u; b < 4u; b++) {
                float x = As[e][ty + 16u * b];
                s[4u * b + 0u] += w0 * x;
                s[4u * b + 1u] += w1 * x;
                s[4u * b + 2u] += w2 * x;
                s[4u * b + 3u] += w3 * x;
            }
        }
        for (uint b = 0u; b < 4u; b++) {
#if !FLOAT_W
            vec2 af_ = Af[ty + 16u * b];
#endif
            for (uint a = 0u; a < 4u; a++) {
                float is = s[4u * b + a];
#if FLOAT_W
                acc[4u * b + a] += is;
#else
                vec3 wf = Wf[tx + 16u * a];
#if WTYPE == T_Q4_K || WTYPE == T_Q5_K
                acc[4u * b + a] += af_.x * (wf.x * is - wf.y * (wf.z * af_.y));
#elif WTYPE == T_Q4_1 || WTYPE == T_Q5_1
                acc[4u * b + a] += is * (wf.x * af_.x) + wf.y * af_.y;
#else
                acc[4u * b + a] += is * (af_.x * wf.x);
#endif
#endif
            }
        }
        barrier();
    }
    for (uint b = 0u; b < 4u; b++) {
        uint m = m0 + ty + 16u * b;
        if (m >= p.M) continue;
        for (uint a = 0u; a < 4u; a++) {
            uint n = n0 + tx + 16u * a;
            if (n < p.N) D[p.d_off + m * p.d_stride + n] = acc[4u * b + a];
        }
    }
}
