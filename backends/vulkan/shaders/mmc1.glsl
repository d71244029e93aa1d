/*
 * mmc1.glsl - the previous (phase 2) matmul for batches on matrix cores through
 * GL_NV_cooperative_matrix (16 x 16 x 16, F16 inputs, F32 accumulation),
 * the way CUDA's prefill uses cuBLAS: weights dequantized to F16, the F32
 * activation rows converted to F16. (glslc of this toolchain, shaderc
 * 2023.2, has no GL_KHR_cooperative_matrix; the NV extension is what
 * NVIDIA's driver offers beside KHR.) Used only where the device reports
 * the extension and the 16x16x16 F16/F32 subgroup shape and its subgroups
 * are 32 wide (vk_ops.c); mmt.glsl is the portable path.
 *
 * A workgroup of 256 (eight subgroups of 32) computes BM = 64 activation
 * rows x BN = 128 weight rows; subgroup s owns a 32 x 32 eighth (2 x 2
 * accumulators, rows 32 (s / 4), columns 32 (s % 4)). The wide side is
 * the weights' because the F32 activations are the larger traffic: each
 * activation tile is read N / BN times (512 x 4096 x 4096, Q4_0: ~270 MB of
 * activation reads per call at BN = 128 against ~75 MB of weights). Per 32-element chunk of K both tiles are staged in
 * shared memory as F16: As[m][k] (row-major: the A operand) and Bs[n][k]
 * (the weights as they are, which is the B operand, K x N, column-major).
 * Elements past K (float formats: rows need not be whole chunks), weight
 * rows past N and activation rows past M are zeros; each 16 x 16 result
 * goes through a per-subgroup patch of shared memory so that only rows < M
 * and columns < N are written.
 */
#extension GL_EXT_control_flow_attributes : require
#ifndef MMC_EMULATE
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#endif

#define BN 128u
#define BM 64u
#define SK 40u  /* F16 elements per staged row: 32 + 8 (rows stay 16-byte aligned) */
#define WG 256u /* invocations: eight subgroups of 32 */
layout(local_size_x = 256) in;

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 1) readonly buffer XB { float X[]; };
layout(binding = 2) writeonly buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes */
    uint x_off, x_stride;   /* words: F32 activations */
    uint d_off, d_stride;   /* words */
    uint K, N, M;
    uint n_base;
} p;

/* types.glsl's dot products read A (not used here): the same binding as X */
layout(binding = 1) readonly buffer AB { uint A[]; };
#define KILN_BYTES
#include "common.glsl"
#include "types.glsl"

#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
#define FLOAT_W 1
#else
#define FLOAT_W 0
#endif

/* MMC_EMULATE (mmce_TYPE.comp, KILN_VK_COOPMAT_EMULATE=1): the same
 * staging, bounds and output with the 16x16 products done by plain
 * arithmetic on F16-rounded floats, so that lavapipe tests everything but
 * the cooperative matrix calls themselves. */
#ifdef MMC_EMULATE
#define HALF float
float to_half(float v) { return unpackHalf2x16(packHalf2x16(vec2(v, 0.0))).x; }
#define TO_HALF(v) to_half(v)
#else
#define HALF float16_t
#define TO_HALF(x) float16_t(x)
#define CM16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define CM32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#endif
shared HALF As[BM * SK];
shared HALF Bs[BN * SK];
#ifndef MMC_EMULATE
shared float Cs[8u * 256u]; /* a 16 x 16 patch per subgroup; 23 KiB in all (the host checks the device's limit) */
#endif

/* weight element e of the row at byte `row` (float formats), 0 past K */
float wfloat(uint row, uint e) {
    if (e >= p.K) return 0.0;
#if WTYPE == T_F32
    return uintBitsToFloat(w_u32(row + 4u * e));
#elif WTYPE == T_F16
    return h2f(w_u16(row + 2u * e));
#elif WTYPE == T_BF16
    return bf2f(w_u16(row + 2u * e));
#else
    return 0.0;
#endif
}

/* Staging, per invocation: WT weight parts of 8 elements and XT activation
 * elements of a 32-wide chunk of K. Each invocation issues all its global
 * loads of a chunk at once, into registers, and does so for the next chunk
 * before the matrix products of the current one, so that the loads' latency
 * overlaps arithmetic instead of being paid once per element (the first
 * form's loop of dependent load/store pairs was ~50x below the hardware). */
#define WT (BN * 4u / WG)
#define XT (BM * 32u / WG)

void load_w(uint c, uint n0, uint tid, inout float wv[WT * 8u]) {
    [[unroll]] for (uint j = 0u; j < WT; j++) {
        uint t = tid + WG * j;
        uint r = t >> 2, e0 = 8u * (t & 3u);
        uint n = n0 + r;
        uint row = p.w_off + min(n, p.N - 1u) * p.w_stride;
        float v[8];
#if FLOAT_W
        [[unroll]] for (uint i = 0u; i < 8u; i++) v[i] = wfloat(row, 32u * c + e0 + i);
#else
        wvals8(row, c, e0, v);
        vec3 f = wscale(row, c);
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
#if WTYPE == T_Q4_K || WTYPE == T_Q5_K
            v[i] = f.x * v[i] - f.y * f.z;
#elif WTYPE == T_Q4_1 || WTYPE == T_Q5_1
            v[i] = v[i] * f.x + f.y;
#else
            v[i] = f.x * v[i];
#endif
        }
#endif
        [[unroll]] for (uint i = 0u; i < 8u; i++) wv[8u * j + i] = n < p.N ? v[i] : 0.0;
    }
}

void load_x(uint c, uint m0, uint tid, inout float xv[XT]) {
    [[unroll]] for (uint j = 0u; j < XT; j++) {
        uint t = tid + WG * j;
        uint r = t >> 5, e = t & 31u;
        uint m = m0 + r, k = 32u * c + e;
        xv[j] = m < p.M && k < p.K ? X[p.x_off + m * p.x_stride + k] : 0.0;
    }
}

void store_tiles(uint tid, float wv[WT * 8u], float xv[XT]) {
    [[unroll]] for (uint j = 0u; j < WT; j++) {
        uint t = tid + WG * j;
        uint r = t >> 2, e0 = 8u * (t & 3u);
        [[unroll]] for (uint i = 0u; i < 8u; i++) Bs[r * SK + e0 + i] = TO_HALF(wv[8u * j + i]);
    }
    [[unroll]] for (uint j = 0u; j < XT; j++) {
        uint t = tid + WG * j;
        As[(t >> 5) * SK + (t & 31u)] = TO_HALF(xv[j]);
    }
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint n0 = p.n_base + gl_WorkGroupID.x * BN;
    const uint m0 = gl_WorkGroupID.y * BM;
    const uint nchunks = (p.K + 31u) / 32u;
#ifdef MMC_EMULATE
    float acc[32]; /* outputs tid + 256 i of the 64 x 128 tile */
    [[dont_unroll]] for (uint i = 0u; i < 32u; i++) acc[i] = 0.0;
#else
    const uint sg = gl_SubgroupID;                /* 0..7 */
    const uint sm = (sg >> 2) * 32u, sn = (sg & 3u) * 32u;
    CM32 acc[2][2];
    [[unroll]] for (uint i = 0u; i < 2u; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++) acc[i][j] = CM32(0.0);
#endif
    float wv[WT * 8u], xv[XT];
    load_x(0u, m0, tid, xv);
    load_w(0u, n0, tid, wv);
    for (uint c = 0u; c < nchunks; c++) {
        store_tiles(tid, wv, xv);
        barrier();
        /* the next chunk's loads are in flight during this chunk's products */
        if (c + 1u < nchunks) {
            load_x(c + 1u, m0, tid, xv);
            load_w(c + 1u, n0, tid, wv);
        }
#ifdef MMC_EMULATE
        /* loops kept (lavapipe's LLVM takes minutes over the unrolled form) */
        [[dont_unroll]] for (uint i = 0u; i < 32u; i++) {
            uint t = tid + WG * i, r = t / BN, col = t % BN;
            float s = 0.0;
            [[dont_unroll]] for (uint e = 0u; e < 32u; e++) s += As[r * SK + e] * Bs[col * SK + e];
            acc[i] += s;
        }
#else
        [[unroll]] for (uint kk = 0u; kk < 32u; kk += 16u) {
            CM16 a[2], b[2];
            [[unroll]] for (uint i = 0u; i < 2u; i++) coopMatLoadNV(a[i], As, (sm + 16u * i) * SK + kk, SK, false);
            [[unroll]] for (uint j = 0u; j < 2u; j++) coopMatLoadNV(b[j], Bs, (sn + 16u * j) * SK + kk, SK, true);
            [[unroll]] for (uint i = 0u; i < 2u; i++)
                [[unroll]] for (uint j = 0u; j < 2u; j++) acc[i][j] = coopMatMulAddNV(a[i], b[j], acc[i][j]);
        }
#endif
        barrier();
    }
#ifdef MMC_EMULATE
    [[dont_unroll]] for (uint i = 0u; i < 32u; i++) {
        uint t = tid + WG * i, r = t / BN, col = t % BN;
        uint m = m0 + r, n = n0 + col;
        if (m < p.M && n < p.N) D[p.d_off + m * p.d_stride + n] = acc[i];
    }
#else
    /* each accumulator through the subgroup's own patch: no workgroup barrier */
    const uint lane = gl_SubgroupInvocationID;
    [[unroll]] for (uint i = 0u; i < 2u; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++) {
            coopMatStoreNV(acc[i][j], Cs, 256u * sg, 16u, false);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            [[unroll]] for (uint q = 0u; q < 8u; q++) {
                uint t = lane + 32u * q, r = t >> 4, col = t & 15u;
                uint m = m0 + sm + 16u * i + r, n = n0 + sn + 16u * j + col;
                if (m < p.M && n < p.N) D[p.d_off + m * p.d_stride + n] = Cs[256u * sg + t];
            }
            subgroupMemoryBarrierShared();
            subgroupBarrier();
        }
#endif
}
