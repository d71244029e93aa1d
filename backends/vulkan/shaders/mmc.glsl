/*
 * mmc.glsl - matmul for batches on matrix cores through
 * GL_NV_cooperative_matrix (16 x 16 x 16, F16 inputs, F32 accumulation),
 * the way CUDA's prefill uses cuBLAS: weights dequantized to F16, the
 * activations converted to F16. (glslc of this toolchain, shaderc 2023.2,
 * has no GL_KHR_cooperative_matrix; the NV extension is what NVIDIA's
 * driver offers beside KHR.) Used only where the device reports the
 * extension and the 16x16x16 F16/F32 subgroup shape, its subgroups are 32
 * wide and a workgroup may have the shared memory its settings need
 * (vk_device.c);
 * mmt.glsl is the portable path, mmc1.glsl the previous form of this one
 * (KILN_VK_MMC_OLD=1).
 *
 * The activations come as F16 rows already (quant_act.comp mode 6, once
 * per product and shared by q/k/v or gate/up): padded with zeros to whole
 * 32-element chunks, so they are read as 16-byte vectors with no bounds
 * on K. A workgroup of 256 (eight subgroups of 32) computes BM = 128
 * activation rows x BN = 128 weight rows; subgroup s owns 64 x 32 of it
 * (4 x 2 accumulators kept over the whole K loop): per 16-wide step of K
 * six fragment loads feed eight products. The K loop goes by stages of KC
 * 32-element chunks (2 by default): each invocation loads its parts of
 * the next stage (16 bytes each, consecutive invocations reading
 * consecutive 16 bytes of a row) into registers while the matrix cores
 * work on the current one, then stores them into the tile (STAGES 1: one
 * tile, two barriers per stage; STAGES 2: two halves, one barrier).
 * Workgroup x walks the activation tiles (MFIRST), so the workgroups over
 * the same weight rows run side by side. Tiles are As[m][k] (A,
 * row-major) and Bs[n][k] (the weights as they are, which is B, K x N,
 * column-major), rows padded by one vector (fragment loads of eight rows
 * hit distinct banks). Rows past M and weight rows past N are clamped to
 * the last one (their results are never stored), chunks past K are zeros,
 * float weight elements past K are zeros (the activations are too); each
 * 16 x 16 result goes through a per-subgroup patch of shared memory (in
 * the A tile, after the K loop) so that only rows < M and columns < N are
 * written. 36 KiB of shared memory as set by default.
 *
 * What bounds it (H100, KILN_VK_MMC_SKIP ablations, bench/NOTES.md): the
 * loads into the tiles, not the matrix cores; with no global loads,
 * stores or barriers the products and fragment loads alone run at ~300
 * TFLOP/s, cuBLAS's whole product at ~540.
 */
#extension GL_EXT_control_flow_attributes : require
#ifndef MMC_EMULATE
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#endif

/* The tile is set when the pipeline is built (specialization constants 3
 * and 4, the workgroup size 5; vk_pipeline.c): BM activation rows x BN
 * weight rows, subgroups of 64 x 32 (BM a multiple of 64, BN of 32), so
 * BM / 64 x BN / 32 subgroups of 32 invocations. 128 x 128 (eight
 * subgroups) unless KILN_VK_MMC_TILE says otherwise. */
layout(constant_id = 3) const uint BM = 128u;
layout(constant_id = 4) const uint BN = 128u;
layout(local_size_x_id = 5) in;
#define WG gl_WorkGroupSize.x
const uint NSUB_N = BN / 32u; /* subgroups along N */
layout(constant_id = 9) const uint KC = 1u; /* 32-element chunks per stage (below) */
/* KILN_VK_MMC_SKIP (specialization constant 6; timing only, the results
 * are wrong): 1 leaves out the K loop's global loads, 2 the fragment loads
 * after the first chunk, 4 the products, 8 the shared stores and barriers;
 * 16 (results right) decodes Q4_0 in F32 as the other formats do */
layout(constant_id = 6) const uint SKIP = 0u;

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 0) readonly buffer WB4 { uvec4 W4[]; };
layout(binding = 1) readonly buffer XB { uvec4 X4[]; }; /* F16 activation rows, 8 per vector */
layout(binding = 2) writeonly buffer DB { float D[]; };

layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes */
    uint x_off, x_stride;   /* 16-byte vectors: F16 rows of whole chunks */
    uint d_off, d_stride;   /* words */
    uint K, N, M;
    uint n_base;
    uint flags;             /* bit 0: F16 weights on 16-byte boundaries (vector loads) */
} p;

/* types.glsl's dot products read A (not used here): the same binding as X */
layout(binding = 1) readonly buffer AB { uint A[]; };
#define KILN_BYTES
#define KILN_W4 /* types.glsl: split Q4_0 blocks as one 16-byte load */
#include "common.glsl"
#include "types.glsl"

#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
#define FLOAT_W 1
#else
#define FLOAT_W 0
#endif

/* MMC_EMULATE (mmce_TYPE.comp, KILN_VK_COOPMAT_EMULATE=1): the same
 * loads, staging, bounds and output with the 16x16 products done by plain
 * arithmetic on the F16 values, so that lavapipe tests everything but the
 * cooperative matrix calls themselves; its staged rows are unpadded
 * (lavapipe allows 32 KiB of shared memory). The tiles hold F16 bits as
 * uvec4 (eight halves): GL_NV_cooperative_matrix loads F16 matrices from
 * uvec4 arrays (element and stride in vectors), and a part is stored with
 * one 16-byte write. */
#ifdef MMC_EMULATE
#define SK8 (4u * KC) /* vectors per staged row: 32 KC elements */
uint pack2(float a, float b) { return packHalf2x16(vec2(a, b)); }
#else
/* vectors per staged row: 4 KC of elements and one of padding
 * (specialization constant 7: the host sets 4 KC + 1; KILN_VK_MMC_ROWVEC
 * overrides it for comparisons) */
layout(constant_id = 7) const uint SK8 = 5u;
#define CM16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define CM32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
uint pack2(float a, float b) { return packFloat2x16(f16vec2(float16_t(a), float16_t(b))); }
#endif
/* STAGES (specialization constant 8, KILN_VK_MMC_STAGES): 2, two halves
 * of each tile, the chunk being multiplied and the next one; 1, one tile
 * and a second barrier per chunk, half the shared memory */
layout(constant_id = 8) const uint STAGES = 2u;
#ifndef MMC_WS
shared uvec4 As[STAGES * BM * SK8 < 64u * (BM / 64u) * NSUB_N ? 64u * (BM / 64u) * NSUB_N : STAGES * BM * SK8];
shared uvec4 Bs[STAGES * BN * SK8];
#endif
/* (the host checks the device's limit for the settings); the results
 * leave through As after the K loop. The defaults above are the shader's;
 * the host's (vk_device.c) are KC 2, STAGES 1, MFIRST 1. */

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

uvec4 pack8(float v[8]) {
    return uvec4(pack2(v[0], v[1]), pack2(v[2], v[3]), pack2(v[4], v[5]), pack2(v[6], v[7]));
}

/* KC (specialization constant 9, KILN_VK_MMC_KC): 32-element chunks of K
 * per stage of the loop (1 or 2; a staged row holds 4 KC vectors and the
 * padding). Per invocation and stage: parts t = tid + WG j of each tile
 * (PA of the activations', PB of the weights'); part t is row t / (4 KC),
 * vector v = t % (4 KC): chunk v / 4 of the stage, elements 8 (v % 4) ..
 * + 7 of it. */
const uint PA = 4u * KC * BM / WG;
const uint PB = 4u * KC * BN / WG;
/* MFIRST (specialization constant 10, KILN_VK_MMC_MFIRST): workgroup x
 * walks the activation tiles, y the weight tiles, so that the workgroups
 * over the same weight rows run side by side (their weights come from the
 * L2 once) */
layout(constant_id = 10) const uint MFIRST = 0u;

/* A weight part is fetched (global loads only, into registers) before the
 * current chunk's products and decoded to F16 after them, so that the
 * loads' latency is hidden behind the matrix cores instead of stalling the
 * decode in front of them. Q4_0, Q4_K and Q6_K (the usual prefill weights)
 * fetch the aligned words that hold the part's bytes; the other formats
 * decode at fetch time (types.glsl's wvals8/wscale), F16 weights on 16-byte
 * boundaries are one 16-byte load. Q4_0 in the split layout (T_Q4_0S)
 * fetches its scale's word and two aligned words of nibbles. */
struct WRaw { uvec4 a, b; };

/* bytes o & 3 .. + 3 of the two words lo, hi (o's word and the next) */
uint funnel(uint lo, uint hi, uint o) {
    uint sh = 8u * (o & 3u);
    return sh == 0u ? lo : (lo >> sh) | (hi << (32u - sh));
}

uint wrow(uint n) { return p.w_off + min(n, p.N - 1u) * p.w_stride; }

/* elements 32c + e0 .. + 7 of weight row n as eight F16, decoded now */
uvec4 load_w8(uint c, uint n, uint e0) {
    uint row = wrow(n);
    uint k0 = 32u * c + e0;
    float v[8];
#if FLOAT_W
#if WTYPE == T_F16
    if ((p.flags & 1u) != 0u) return W4[(row + 2u * k0) >> 4]; /* the host saw K % 32 == 0 */
#endif
    [[unroll]] for (uint i = 0u; i < 8u; i++) v[i] = wfloat(row, k0 + i);
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
    return pack8(v);
}

WRaw fetch_w(uint c, uint n, uint e0) {
    WRaw r;
    uint row = wrow(n);
#if WTYPE == T_Q4_0
    /* d at b, the part's 8 bytes of nibbles at b + 2 + (e0 % 16) */
    uint b = row + 18u * c, q = (b + 2u + (e0 & 15u)) >> 2;
    r.a = uvec4(W[b >> 2], W[q], W[q + 1u], W[q + 2u]);
    r.b = uvec4(0u);
#elif WTYPE == T_Q4_0S
    /* the word holding d, the part's 8 bytes of nibbles (two aligned
     * words: the split rows start on 16-byte boundaries) */
    uint s = row + (p.K >> 1) + 2u * c, q = (row >> 2) + 4u * c + ((e0 & 15u) >> 2);
    r.a = uvec4(W[s >> 2], W[q], W[q + 1u], 0u);
    r.b = uvec4(0u);
#elif WTYPE == T_Q4_K
    /* d/dmin, the 12 scale bytes, the part's 8 bytes of nibbles (blocks
     * are 144 bytes on 4-byte boundaries, as types.glsl reads them) */
    uint b = (row + 144u * (c >> 3)) >> 2, q = b + 4u + 8u * ((c & 7u) >> 1) + (e0 >> 2);
    r.a = uvec4(W[b], W[b + 1u], W[b + 2u], W[b + 3u]);
    r.b = uvec4(W[q], W[q + 1u], 0u, 0u);
#elif WTYPE == T_Q6_K
    /* low and high bits of the part (3 words each: 2-byte aligned), the
     * sub-block's scale byte, d */
    uint b = row + 210u * (c >> 3), j = c & 7u;
    uint ql = (b + 64u * (j >> 2) + ((j & 1u) != 0u ? 32u : 0u) + e0) >> 2;
    uint qh = (b + 128u + 32u * (j >> 2) + e0) >> 2;
    r.a = uvec4(W[ql], W[ql + 1u], W[ql + 2u], W[qh]);
    r.b = uvec4(W[qh + 1u], W[qh + 2u], W[(b + 192u + 2u * j + (e0 >= 16u ? 1u : 0u)) >> 2], W[(b + 208u) >> 2]);
#else
    r.a = load_w8(c, n, e0);
    r.b = uvec4(0u);
#endif
    return r;
}

#if (WTYPE == T_Q4_0 || WTYPE == T_Q4_0S) && !defined(MMC_EMULATE)
/* Four nibbles of a word (already shifted to bits 0-3 of each byte) times
 * d as two F16 pairs, in packed F16 arithmetic: 0x6400 | n is the half
 * 1024 + n, minus 1032 gives n - 8 exactly, and one F16 multiply by d
 * rounds the exact product once, as the F32 product rounded to F16 does:
 * the same bits in ~3 instructions per pair instead of ~12. */
uvec2 q4_pairs(uint q, f16vec2 d2) {
    const uint lo = (q & 0xfu) | ((q & 0xf00u) << 8) | 0x64006400u;
    const uint hi = ((q >> 16) & 0xfu) | ((q >> 8) & 0xf0000u) | 0x64006400u;
    const f16vec2 off = f16vec2(float16_t(1032.0));
    return uvec2(packFloat2x16((unpackFloat2x16(lo) - off) * d2), packFloat2x16((unpackFloat2x16(hi) - off) * d2));
}
#endif

/* the fetched part as eight F16 (the arithmetic of types.glsl's wvals8 and
 * wscale, so the values are those of the other formats' path) */
uvec4 decode_w(uint c, uint n, uint e0, WRaw r) {
#if (WTYPE == T_Q4_0 || WTYPE == T_Q4_0S) && !defined(MMC_EMULATE)
    if ((SKIP & 16u) == 0u) { /* KILN_VK_MMC_SKIP bit 16: the float path below, for comparison */
        uint row = wrow(n), sh = e0 >= 16u ? 4u : 0u, lo, hi, dw;
#if WTYPE == T_Q4_0
        uint b = row + 18u * c, o = b + 2u + (e0 & 15u);
        lo = funnel(r.a.y, r.a.z, o);
        hi = funnel(r.a.z, r.a.w, o);
        dw = r.a.x >> (8u * (b & 2u));
#else
        uint s = row + (p.K >> 1) + 2u * c;
        lo = r.a.y;
        hi = r.a.z;
        dw = r.a.x >> (8u * (s & 2u));
#endif
        const f16vec2 d2 = f16vec2(unpackFloat2x16(dw).x);
        return uvec4(q4_pairs((lo >> sh) & 0x0f0f0f0fu, d2), q4_pairs((hi >> sh) & 0x0f0f0f0fu, d2));
    }
#endif
#if WTYPE == T_Q4_0 || WTYPE == T_Q4_0S || WTYPE == T_Q4_K || WTYPE == T_Q6_K
    uint row = wrow(n);
    float v[8];
#if WTYPE == T_Q4_0
    uint b = row + 18u * c, o = b + 2u + (e0 & 15u);
    uint lo = funnel(r.a.y, r.a.z, o), hi = funnel(r.a.z, r.a.w, o);
    float d = h2f((r.a.x >> (8u * (b & 2u))) & 0xffffu);
    uint sh = e0 >= 16u ? 4u : 0u;
    [[unroll]] for (uint i = 0u; i < 8u; i++)
        v[i] = d * float(int((ub(i < 4u ? lo : hi, i & 3u) >> sh) & 0xfu) - 8);
#elif WTYPE == T_Q4_0S
    /* Q4_0's operations on the split layout's words */
    uint s = row + (p.K >> 1) + 2u * c;
    float d = h2f((r.a.x >> (8u * (s & 2u))) & 0xffffu);
    uint sh = e0 >= 16u ? 4u : 0u;
    [[unroll]] for (uint i = 0u; i < 8u; i++)
        v[i] = d * float(int((ub(i < 4u ? r.a.y : r.a.z, i & 3u) >> sh) & 0xfu) - 8);
#elif WTYPE == T_Q4_K
    uint j = c & 7u;
    /* kiln_q4k_scale_min over the scale words r.a.y (bytes 0-3), r.a.z (4-7), r.a.w (8-11) */
    uint sc, mn;
    if (j < 4u) {
        sc = ub(r.a.y, j) & 63u;
        mn = ub(r.a.z, j) & 63u;
    } else {
        sc = (ub(r.a.w, j - 4u) & 0xfu) | ((ub(r.a.y, j - 4u) >> 6) << 4);
        mn = (ub(r.a.w, j - 4u) >> 4) | ((ub(r.a.z, j - 4u) >> 6) << 4);
    }
    vec2 dm = unpackHalf2x16(r.a.x); /* d, dmin */
    float m = dm.y * float(mn);
    uint sh = (j & 1u) * 4u;
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint q = (ub(i < 4u ? r.b.x : r.b.y, i & 3u) >> sh) & 0xfu;
        v[i] = dm.x * float(int(sc) * int(q)) - m;
    }
#else /* Q6_K */
    uint b = row + 210u * (c >> 3), j = c & 7u;
    uint ql = b + 64u * (j >> 2) + ((j & 1u) != 0u ? 32u : 0u) + e0, qh = b + 128u + 32u * (j >> 2) + e0;
    uint so = b + 192u + 2u * j + (e0 >= 16u ? 1u : 0u);
    int s = bitfieldExtract(int(r.b.z), int(8u * (so & 3u)), 8);
    float d = h2f((r.b.w >> (8u * ((b + 208u) & 2u))) & 0xffffu);
    uint l0 = funnel(r.a.x, r.a.y, ql), l1 = funnel(r.a.y, r.a.z, ql);
    uint h0 = funnel(r.a.w, r.b.x, qh), h1 = funnel(r.b.x, r.b.y, qh);
    uint lsh = (j & 3u) >= 2u ? 4u : 0u, hsh = 2u * (j & 3u);
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint lw = i < 4u ? l0 : l1, hw = i < 4u ? h0 : h1;
        int q = int(((ub(lw, i & 3u) >> lsh) & 0xfu) | (((ub(hw, i & 3u) >> hsh) & 3u) << 4)) - 32;
        v[i] = d * float(s * q);
    }
#endif
    return pack8(v);
#else
    return r.a;
#endif
}

#ifndef MMC_EMULATE
/* Accumulator accv (output rows row0 .. + 15, columns col0 .. + 15)
 * through the subgroup's own 16 x 16 F32 patch of As at pbase (64
 * vectors; the caller's loop has ended all reads of the tiles), stored
 * where it lies within M x N: no workgroup barrier. */
#define MMC_STORE_ACC(accv, pbase, row0, col0)                                                           \
    {                                                                                                    \
        coopMatStoreNV(accv, As, pbase, 4u, false);                                                      \
        subgroupMemoryBarrierShared();                                                                   \
        subgroupBarrier();                                                                               \
        [[unroll]] for (uint q = 0u; q < 8u; q++) {                                                      \
            uint t = gl_SubgroupInvocationID + 32u * q, m = (row0) + (t >> 4), n = (col0) + (t & 15u);   \
            if (m < p.M && n < p.N) D[p.d_off + m * p.d_stride + n] = uintBitsToFloat(As[(pbase) + (t >> 2)][t & 3u]); \
        }                                                                                                \
        subgroupMemoryBarrierShared();                                                                   \
        subgroupBarrier();                                                                               \
    }
#endif

#ifdef MMC_WS
#include "mmcw_main.glsl"
#else
void load_parts(uint st, uint nchunks, uint m0, uint n0, uint tid, inout uvec4 xr[PA], inout WRaw wr[PB]) {
    [[unroll]] for (uint j = 0u; j < PA; j++) {
        uint t = tid + WG * j, r = t / (4u * KC), v = t % (4u * KC), c = KC * st + v / 4u;
        xr[j] = c < nchunks ? X4[p.x_off + min(m0 + r, p.M - 1u) * p.x_stride + 4u * c + (v & 3u)] : uvec4(0u);
    }
    [[unroll]] for (uint j = 0u; j < PB; j++) {
        uint t = tid + WG * j, v = t % (4u * KC), c = KC * st + v / 4u;
        if (c < nchunks) wr[j] = fetch_w(c, n0 + t / (4u * KC), 8u * (v & 3u));
    }
}

/* stage st's parts into tile half h (chunks past K: zeros) */
void store_parts(uint h, uint st, uint nchunks, uint n0, uint tid, uvec4 xr[PA], WRaw wr[PB]) {
    [[unroll]] for (uint j = 0u; j < PA; j++) {
        uint t = tid + WG * j;
        As[h * BM * SK8 + (t / (4u * KC)) * SK8 + t % (4u * KC)] = xr[j];
    }
    [[unroll]] for (uint j = 0u; j < PB; j++) {
        uint t = tid + WG * j, v = t % (4u * KC), c = KC * st + v / 4u;
        Bs[h * BN * SK8 + (t / (4u * KC)) * SK8 + v] =
            c < nchunks ? decode_w(c, n0 + t / (4u * KC), 8u * (v & 3u), wr[j]) : uvec4(0u);
    }
}

/* One chunk's products from the tile halves at cur_a (As) and cur_b (Bs)
 * into acc. */
#ifdef MMC_EMULATE
/* loops kept (lavapipe's LLVM takes minutes over the unrolled form) */
#define MMC_PRODUCTS(cur_a, cur_b)                                                   \
    [[dont_unroll]] for (uint i = 0u; i < 64u; i++) {                                \
        uint t = tid + WG * i, r = t / BN, col = t % BN;                             \
        float s = 0.0;                                                               \
        [[dont_unroll]] for (uint e = 0u; e < 4u * KC; e++) {                        \
            uvec4 a = As[(cur_a) + r * SK8 + e], b = Bs[(cur_b) + col * SK8 + e];    \
            [[unroll]] for (uint h = 0u; h < 4u; h++) {                              \
                vec2 av = unpackHalf2x16(a[h]), bv = unpackHalf2x16(b[h]);           \
                s += av.x * bv.x + av.y * bv.y;                                      \
            }                                                                        \
        }                                                                            \
        acc[i] += s;                                                                 \
    }
#else
/* per 16 elements (2 vectors) the two B fragments held, one A fragment at
 * a time (registers: the accumulators take 64 per invocation already) */
#define MMC_PRODUCTS(cur_a, cur_b)                                                                   \
    if ((SKIP & 2u) != 0u) {                                                                         \
        [[unroll]] for (uint kk = 0u; kk < 4u * KC; kk += 2u)                                        \
            [[unroll]] for (uint i = 0u; i < 4u; i++)                                                \
                [[unroll]] for (uint j = 0u; j < 2u; j++) acc[i][j] = coopMatMulAddNV(fa[i], fb[j], acc[i][j]); \
    } else                                                                                           \
    [[unroll]] for (uint kk = 0u; kk < 4u * KC; kk += 2u) {                                          \
        CM16 b[2];                                                                                   \
        [[unroll]] for (uint j = 0u; j < 2u; j++)                                                    \
            coopMatLoadNV(b[j], Bs, (cur_b) + (sn + 16u * j) * SK8 + kk, SK8, true);                  \
        [[unroll]] for (uint i = 0u; i < 4u; i++) {                                                  \
            CM16 a;                                                                                  \
            coopMatLoadNV(a, As, (cur_a) + (sm + 16u * i) * SK8 + kk, SK8, false);                    \
            [[unroll]] for (uint j = 0u; j < 2u; j++) acc[i][j] = coopMatMulAddNV(a, b[j], acc[i][j]); \
        }                                                                                            \
    }
#endif

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint n0 = p.n_base + (MFIRST != 0u ? gl_WorkGroupID.y : gl_WorkGroupID.x) * BN;
    const uint m0 = (MFIRST != 0u ? gl_WorkGroupID.x : gl_WorkGroupID.y) * BM;
    const uint nchunks = (p.K + 31u) / 32u, nst = (nchunks + KC - 1u) / KC;
#ifdef MMC_EMULATE
    float acc[64]; /* outputs tid + WG i of the BM x BN tile */
    [[dont_unroll]] for (uint i = 0u; i < 64u; i++) acc[i] = 0.0;
#else
    const uint sg = gl_SubgroupID;                /* 0..7 */
    const uint sm = (sg / NSUB_N) * 64u, sn = (sg % NSUB_N) * 32u;
    CM32 acc[4][2];
    [[unroll]] for (uint i = 0u; i < 4u; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++) acc[i][j] = CM32(0.0);
#endif
    uvec4 xr[PA];
    WRaw wr[PB];
    load_parts(0u, nchunks, m0, n0, tid, xr, wr);
    store_parts(0u, 0u, nchunks, n0, tid, xr, wr);
    barrier();
#ifndef MMC_EMULATE
    CM16 fa[4], fb[2]; /* SKIP & 2: the first chunk's fragments, reused */
    if ((SKIP & 2u) != 0u) {
        [[unroll]] for (uint i = 0u; i < 4u; i++) coopMatLoadNV(fa[i], As, (sm + 16u * i) * SK8, SK8, false);
        [[unroll]] for (uint j = 0u; j < 2u; j++) coopMatLoadNV(fb[j], Bs, (sn + 16u * j) * SK8, SK8, true);
    }
#endif
    for (uint c = 0u; c < nst; c++) {
        const uint h = c & 1u;
        /* the next chunk's loads are in flight during this chunk's products;
         * no branch around them (the last iteration loads and stores its own
         * chunk again into the unused half), so the compiler sees one block.
         * (Fetching two chunks ahead, with two sets of registers, measured
         * 6% slower on the H100.) */
        const uint next = min(c + 1u, nst - 1u);
        if ((SKIP & 1u) == 0u) load_parts(next, nchunks, m0, n0, tid, xr, wr);
        if (STAGES == 1u) {
            /* one tile: the products, then the next chunk over it */
            if ((SKIP & 4u) == 0u) MMC_PRODUCTS(0u, 0u);
            if ((SKIP & 8u) == 0u) {
                barrier();
                store_parts(0u, next, nchunks, n0, tid, xr, wr);
                barrier();
            }
        } else {
            if ((SKIP & 4u) == 0u) MMC_PRODUCTS(h * BM * SK8, h * BN * SK8);
            /* the other half was last read before the previous barrier */
            if ((SKIP & 8u) == 0u) {
                store_parts(h ^ 1u, next, nchunks, n0, tid, xr, wr);
                barrier();
            }
        }
    }
#ifdef MMC_EMULATE
    [[dont_unroll]] for (uint i = 0u; i < 64u; i++) {
        uint t = tid + WG * i, r = t / BN, col = t % BN;
        uint m = m0 + r, n = n0 + col;
        if (m < p.M && n < p.N) D[p.d_off + m * p.d_stride + n] = acc[i];
    }
#else
    [[unroll]] for (uint i = 0u; i < 4u; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++) MMC_STORE_ACC(acc[i][j], 64u * sg, m0 + sm + 16u * i, n0 + sn + 16u * j);
#endif
}
#endif /* MMC_WS */
