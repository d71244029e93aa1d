/*
 * types.glsl - the weight formats, one chosen by WTYPE (a ggml type id):
 *
 *   BLK_BYTES, BLK_ELEMS   bytes and elements of one block
 *   deq32(row, c, v)       elements 32c..32c+31 of the row starting at byte
 *                          `row`, as F32 (exactly as lib/quant.c's
 *                          dequantizers compute them)
 *   dot32(row, c, a, K)    the dot product of those 32 elements with the
 *                          activation row at word `a` of A (K elements), in
 *                          the activation format the CPU backend pairs with
 *                          the weight type (see quant_act.comp): F32 for
 *                          F32, values rounded to F16/BF16 for F16/BF16,
 *                          Q8_0 / Q8_1 blocks for the *_0 / *_1 formats,
 *                          Q8_K for the K formats. Integer sums per block
 *                          scaled in float, as backends/cpu/cpu_dot_scalar.c.
 *
 * Every format is handled in chunks of 32 elements so that one work item
 * is the same size for all of them (a K-quant super-block is 8 chunks).
 *
 * Activation rows (words): F32/F16/BF16: K floats. Q8_0/Q8_1: K/4 words of
 * int8 x4, K/32 scales d, K/32 sums s (Q8_1). Q8_K: K/4 words of int8 x4,
 * K/256 scales d, K/16 partial sums (int) of 16 values.
 */
#ifndef KILN_TYPES_GLSL
#define KILN_TYPES_GLSL

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30
/* not a ggml id: Q4_0 in this backend's split layout (vk_layout.c). A row
 * of nb = K/32 blocks holds the blocks' 16-byte nibble arrays (block c's
 * at byte 16c of the row), then their F16 scales (block c's at byte
 * 16nb + 2c); rows start on 16-byte boundaries. The arithmetic is Q4_0's,
 * operation for operation, so both layouts give the same bits. */
#define T_Q4_0S 102

#ifdef KILN_IDOT
/* OpSDotKHR on packed 4x8-bit vectors (SPV_KHR_integer_dot_product;
 * format 0 = PackedVectorFormat4x8Bit): the sum of the four signed byte
 * products of a and b */
#extension GL_EXT_spirv_intrinsics : require
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int kiln_sdot4(int a, int b, spirv_literal int fmt);
#endif

#if WTYPE == T_F32
#define BLK_BYTES 4u
#define BLK_ELEMS 1u
#elif WTYPE == T_F16 || WTYPE == T_BF16
#define BLK_BYTES 2u
#define BLK_ELEMS 1u
#elif WTYPE == T_Q4_0 || WTYPE == T_Q4_0S
#define BLK_BYTES 18u
#define BLK_ELEMS 32u
#elif WTYPE == T_Q4_1
#define BLK_BYTES 20u
#define BLK_ELEMS 32u
#elif WTYPE == T_Q5_0
#define BLK_BYTES 22u
#define BLK_ELEMS 32u
#elif WTYPE == T_Q5_1
#define BLK_BYTES 24u
#define BLK_ELEMS 32u
#elif WTYPE == T_Q8_0
#define BLK_BYTES 34u
#define BLK_ELEMS 32u
#elif WTYPE == T_Q4_K
#define BLK_BYTES 144u
#define BLK_ELEMS 256u
#elif WTYPE == T_Q5_K
#define BLK_BYTES 176u
#define BLK_ELEMS 256u
#elif WTYPE == T_Q6_K
#define BLK_BYTES 210u
#define BLK_ELEMS 256u
#else
#error unknown WTYPE
#endif

float af(uint i) { return uintBitsToFloat(A[i]); }

#if WTYPE == T_Q4_0S
/* The scales' place depends on the row's length: K, from the including
 * shader's push constants (ROW_K names it where it is not p.K). */
#ifndef ROW_K
#define ROW_K p.K
#endif
/* the 16 nibble bytes of block c of the row at byte `row`: one 16-byte
 * load where the shader declares W4 (KILN_W4), else four aligned words */
uvec4 q4s_qs(uint row, uint c) {
#ifdef KILN_W4
    return W4[(row >> 4) + c];
#else
    uint o = (row >> 2) + 4u * c;
    return uvec4(W[o], W[o + 1u], W[o + 2u], W[o + 3u]);
#endif
}
/* the scale of block c (byte 16 K/32 + 2c = K/2 + 2c of the row) */
float q4s_d(uint row, uint c, uint K) { return h2f(w_u16(row + (K >> 1) + 2u * c)); }
#endif

#if WTYPE == T_Q4_K || WTYPE == T_Q5_K
/* 6-bit scale and min of sub-block j of the block at byte b (kiln_q4k_scale_min) */
void q4k_sm(uint b, uint j, out uint sc, out uint mn) {
    uint s = b + 4u;
    if (j < 4u) {
        sc = w_u8(s + j) & 63u;
        mn = w_u8(s + j + 4u) & 63u;
    } else {
        sc = (w_u8(s + j + 4u) & 0xfu) | ((w_u8(s + j - 4u) >> 6) << 4);
        mn = (w_u8(s + j + 4u) >> 4) | ((w_u8(s + j) >> 6) << 4);
    }
}
#endif

#if WTYPE == T_Q6_K
/* the 6-bit value (0..63) of element l (0..31) of chunk j of the block at b */
uint q6_val(uint b, uint j, uint l) {
    uint h = j >> 2, qq = j & 3u;
    uint ql = b + 64u * h, qh = b + 128u + 32u * h;
    uint lo = (qq & 1u) != 0u ? w_u8(ql + l + 32u) : w_u8(ql + l);
    lo = qq >= 2u ? lo >> 4 : lo & 0xfu;
    uint hi = (w_u8(qh + l) >> (2u * qq)) & 3u;
    return lo | (hi << 4);
}
#endif

void deq32(uint row, uint c, inout float v[32]) {
#if WTYPE == T_F32
    for (uint i = 0u; i < 32u; i++) v[i] = uintBitsToFloat(w_u32(row + 4u * (32u * c + i)));
#elif WTYPE == T_F16
    for (uint i = 0u; i < 32u; i++) v[i] = h2f(w_u16(row + 2u * (32u * c + i)));
#elif WTYPE == T_BF16
    for (uint i = 0u; i < 32u; i++) v[i] = bf2f(w_u16(row + 2u * (32u * c + i)));
#elif WTYPE == T_Q4_0 || WTYPE == T_Q4_1 || WTYPE == T_Q5_0 || WTYPE == T_Q5_1 || WTYPE == T_Q8_0
    uint b = row + BLK_BYTES * c;
    float d = h2f(w_u16(b));
#if WTYPE == T_Q8_0
    for (uint i = 0u; i < 32u; i++) v[i] = float(int(w_u8(b + 2u + i) << 24) >> 24) * d;
#else
#if WTYPE == T_Q4_1 || WTYPE == T_Q5_1
    float m = h2f(w_u16(b + 2u));
    uint qs = b + (WTYPE == T_Q4_1 ? 4u : 8u);
#elif WTYPE == T_Q5_0
    uint qs = b + 6u;
#else
    uint qs = b + 2u;
#endif
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
    uint qh = w_u32_2(b + (WTYPE == T_Q5_0 ? 2u : 4u));
#endif
    for (uint j = 0u; j < 16u; j++) {
        uint q = w_u8(qs + j);
        uint lo = q & 0xfu, hi = q >> 4;
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
        lo |= ((qh >> j) & 1u) << 4;
        hi |= ((qh >> (j + 16u)) & 1u) << 4;
#endif
#if WTYPE == T_Q4_0
        v[j] = float(int(lo) - 8) * d;
        v[j + 16u] = float(int(hi) - 8) * d;
#elif WTYPE == T_Q5_0
        v[j] = float(int(lo) - 16) * d;
        v[j + 16u] = float(int(hi) - 16) * d;
#else
        v[j] = float(lo) * d + m;
        v[j + 16u] = float(hi) * d + m;
#endif
    }
#endif
#elif WTYPE == T_Q4_K || WTYPE == T_Q5_K
    uint b = row + BLK_BYTES * (c >> 3), j = c & 7u;
    float d = h2f(w_u16(b)), dmin = h2f(w_u16(b + 2u));
    uint sc, mn;
    q4k_sm(b, j, sc, mn);
    float d1 = d * float(sc), m1 = dmin * float(mn);
#if WTYPE == T_Q4_K
    uint qs = b + 16u + 32u * (j >> 1);
#else
    uint qs = b + 48u + 32u * (j >> 1);
    uint qh = b + 16u;
#endif
    for (uint l = 0u; l < 32u; l++) {
        uint q = w_u8(qs + l);
        q = (j & 1u) != 0u ? q >> 4 : q & 0xfu;
#if WTYPE == T_Q5_K
        q |= ((w_u8(qh + l) >> j) & 1u) << 4;
#endif
        v[l] = d1 * float(q) - m1;
    }
#elif WTYPE == T_Q6_K
    uint b = row + BLK_BYTES * (c >> 3), j = c & 7u;
    float d = h2f(w_u16(b + 208u));
    float s0 = float(sb(w_u8(b + 192u + 2u * j), 0u)), s1 = float(sb(w_u8(b + 193u + 2u * j), 0u));
    for (uint l = 0u; l < 32u; l++) v[l] = d * (l < 16u ? s0 : s1) * float(int(q6_val(b, j, l)) - 32);
#elif WTYPE == T_Q4_0S
    float d = q4s_d(row, c, ROW_K);
    uvec4 q = q4s_qs(row, c);
    for (uint j = 0u; j < 16u; j++) {
        uint b = ub(q[j >> 2], j & 3u);
        v[j] = float(int(b & 0xfu) - 8) * d;
        v[j + 16u] = float(int(b >> 4) - 8) * d;
    }
#endif
}

float dot32(uint row, uint c, uint a, uint K) {
#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
    precise float s = 0.0;
    uint x = a + 32u * c;
    if (32u * c + 32u > K) { /* the tail of a row that is not whole chunks */
        for (uint i = 0u; 32u * c + i < K; i++) {
#if WTYPE == T_F32
            float w = uintBitsToFloat(w_u32(row + 4u * (32u * c + i)));
#elif WTYPE == T_F16
            float w = h2f(w_u16(row + 2u * (32u * c + i)));
#else
            float w = bf2f(w_u16(row + 2u * (32u * c + i)));
#endif
            s += w * af(x + i);
        }
        return s;
    }
#if WTYPE == T_F32
    uint wo = row + 128u * c;
    for (uint i = 0u; i < 32u; i++) s += uintBitsToFloat(w_u32(wo + 4u * i)) * af(x + i);
#else
    uint wo = row + 64u * c;
    for (uint i = 0u; i < 32u; i += 2u) {
        uint w2 = w_u32_2(wo + 2u * i);
#if WTYPE == T_F16
        vec2 f = unpackHalf2x16(w2);
#else
        vec2 f = vec2(uintBitsToFloat(w2 << 16), uintBitsToFloat(w2 & 0xffff0000u));
#endif
        s += f.x * af(x + i);
        s += f.y * af(x + i + 1u);
    }
#endif
    return s;
#elif WTYPE == T_Q4_0 || WTYPE == T_Q4_1 || WTYPE == T_Q5_0 || WTYPE == T_Q5_1 || WTYPE == T_Q8_0
    uint b = row + BLK_BYTES * c;
    uint aq = a + 8u * c;                 /* 8 words of int8 x4 */
    float ad = af(a + K / 4u + c);
    float d = h2f(w_u16(b));
    int sum = 0;
#if WTYPE == T_Q8_0
    for (uint i = 0u; i < 8u; i++) {
        uint w4 = w_u32_2(b + 2u + 4u * i), a4 = A[aq + i];
#ifdef KILN_IDOT
        sum += kiln_sdot4(int(w4), int(a4), 0);
#else
        sum += sb(w4, 0u) * sb(a4, 0u) + sb(w4, 1u) * sb(a4, 1u) + sb(w4, 2u) * sb(a4, 2u) + sb(w4, 3u) * sb(a4, 3u);
#endif
    }
    precise float r = float(sum) * (d * ad);
    return r;
#else
#if WTYPE == T_Q4_1 || WTYPE == T_Q5_1
    uint qs = b + (WTYPE == T_Q4_1 ? 4u : 8u);
#elif WTYPE == T_Q5_0
    uint qs = b + 6u;
#else
    uint qs = b + 2u;
#endif
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
    uint qh = w_u32_2(b + (WTYPE == T_Q5_0 ? 2u : 4u));
#endif
    for (uint i = 0u; i < 4u; i++) {
        uint q4 = w_u32_2(qs + 4u * i);
        uint alo = A[aq + i], ahi = A[aq + 4u + i];
        for (uint k = 0u; k < 4u; k++) {
            uint j = 4u * i + k;
            uint q = ub(q4, k);
            int lo = int(q & 0xfu), hi = int(q >> 4);
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
            lo |= int(((qh >> j) & 1u) << 4);
            hi |= int(((qh >> (j + 16u)) & 1u) << 4);
#endif
#if WTYPE == T_Q4_0
            lo -= 8; hi -= 8;
#elif WTYPE == T_Q5_0
            lo -= 16; hi -= 16;
#endif
            sum += lo * sb(alo, k) + hi * sb(ahi, k);
        }
    }
#if WTYPE == T_Q4_1 || WTYPE == T_Q5_1
    float m = h2f(w_u16(b + 2u));
    float as_ = af(a + K / 4u + K / 32u + c);
    precise float r = float(sum) * (d * ad) + m * as_;
    return r;
#else
    precise float r = float(sum) * (d * ad);
    return r;
#endif
#endif
#elif WTYPE == T_Q4_K || WTYPE == T_Q5_K
    uint blk = c >> 3, j = c & 7u;
    uint b = row + BLK_BYTES * blk;
    uint aq = a + 8u * c;
    float ad = af(a + K / 4u + blk);
    uint bs = a + K / 4u + K / 256u + 2u * c; /* bsums of the two 16s */
    int bsum = int(A[bs]) + int(A[bs + 1u]);
    uint sc, mn;
    q4k_sm(b, j, sc, mn);
#if WTYPE == T_Q4_K
    uint qs = b + 16u + 32u * (j >> 1);
#else
    uint qs = b + 48u + 32u * (j >> 1);
    uint qh = b + 16u;
#endif
    uint sh = (j & 1u) * 4u;
    int sum = 0;
#if defined(KILN_IDOT) && WTYPE == T_Q4_K && defined(KILN_W4) && defined(KILN_AU4)
    /* block and activations on 16-byte boundaries (rows of 144-byte
     * blocks from an aligned binding; the scratch's rows for K % 1024 ==
     * 0): the block's head (d, dmin, scales), its 32 bytes and x's as
     * 16-byte loads, 5 instead of about 25; the same integers and floats */
    if (AU4_ON != 0u && (b & 15u) == 0u && (aq & 3u) == 0u) {
        const uvec4 hd = W4[b >> 4], q0 = W4[(qs >> 4)], q1 = W4[(qs >> 4) + 1u];
        const uvec4 a0 = AU4[aq >> 2], a1 = AU4[(aq >> 2) + 1u];
        const uint y = 8u * (j & 3u);
        uint sc4, mn4;
        if (j < 4u) {
            sc4 = (hd.y >> y) & 63u;
            mn4 = (hd.z >> y) & 63u;
        } else {
            /* scales[j + 4] (bytes 12-15), the top bits of scales[j - 4] and scales[j] (bytes 4-7, 8-11) */
            sc4 = ((hd.w >> y) & 0xfu) | ((((hd.y >> y) >> 6) & 3u) << 4);
            mn4 = (((hd.w >> y) >> 4) & 0xfu) | ((((hd.z >> y) >> 6) & 3u) << 4);
        }
        sum = kiln_sdot4(int((q0.x >> sh) & 0x0f0f0f0fu), int(a0.x), 0) +
              kiln_sdot4(int((q0.y >> sh) & 0x0f0f0f0fu), int(a0.y), 0) +
              kiln_sdot4(int((q0.z >> sh) & 0x0f0f0f0fu), int(a0.z), 0) +
              kiln_sdot4(int((q0.w >> sh) & 0x0f0f0f0fu), int(a0.w), 0) +
              kiln_sdot4(int((q1.x >> sh) & 0x0f0f0f0fu), int(a1.x), 0) +
              kiln_sdot4(int((q1.y >> sh) & 0x0f0f0f0fu), int(a1.y), 0) +
              kiln_sdot4(int((q1.z >> sh) & 0x0f0f0f0fu), int(a1.z), 0) +
              kiln_sdot4(int((q1.w >> sh) & 0x0f0f0f0fu), int(a1.w), 0);
        const vec2 dm = unpackHalf2x16(hd.x);
        precise float r = ad * (dm.x * float(int(sc4) * sum) - dm.y * float(int(mn4) * bsum));
        return r;
    }
#endif
    for (uint i = 0u; i < 8u; i++) {
        uint q4 = W[(qs >> 2) + i];     /* qs is 4-byte aligned: blocks are 144/176 bytes */
        uint a4 = A[aq + i];
#if WTYPE == T_Q5_K
        uint h4 = W[(qh >> 2) + i];
#endif
#if defined(KILN_IDOT) && WTYPE == T_Q4_K
        sum += kiln_sdot4(int((q4 >> sh) & 0x0f0f0f0fu), int(a4), 0);
#else
        for (uint k = 0u; k < 4u; k++) {
            int q = int((ub(q4, k) >> sh) & 0xfu);
#if WTYPE == T_Q5_K
            q |= int(((ub(h4, k) >> j) & 1u) << 4);
#endif
            sum += q * sb(a4, k);
        }
#endif
    }
    float d = h2f(w_u16(b)), dmin = h2f(w_u16(b + 2u));
    precise float r = ad * (d * float(int(sc) * sum) - dmin * float(int(mn) * bsum));
    return r;
#elif WTYPE == T_Q6_K
    uint blk = c >> 3, j = c & 7u;
    uint b = row + BLK_BYTES * blk;
    uint aq = a + 8u * c;
    float ad = af(a + K / 4u + blk);
    uint h = j >> 2, qq = j & 3u;
    /* whole words: 4 values per load (b is even: rows of 210-byte blocks) */
    uint ql = b + 64u * h + ((qq & 1u) != 0u ? 32u : 0u), qh = b + 128u + 32u * h;
    uint lsh = qq >= 2u ? 4u : 0u, hsh = 2u * qq;
    int s0 = 0, s1 = 0;
#if defined(KILN_IDOT) && defined(KILN_AU4)
    /* ql and qh lie at the same offset mod 16 (the block's): nine word
     * loads each cover their 32 bytes whether or not they start on a word
     * (w_u32_2 took two loads per word then), x's 32 bytes as two 16-byte
     * loads where aligned; the same integers */
    if (AU4_ON != 0u && (aq & 3u) == 0u) {
        const uint r = (ql & 2u) * 8u, l0 = ql >> 2, h0 = qh >> 2;
        uint lw[9], hw[9];
        [[unroll]] for (uint i = 0u; i < 9u; i++) {
            lw[i] = W[l0 + i];
            hw[i] = W[h0 + i];
        }
        const uvec4 a0 = AU4[aq >> 2], a1 = AU4[(aq >> 2) + 1u];
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const uint l4 = r == 0u ? lw[i] : (lw[i] >> 16) | (lw[i + 1u] << 16);
            const uint h4 = r == 0u ? hw[i] : (hw[i] >> 16) | (hw[i + 1u] << 16);
            const uint a4 = i < 4u ? a0[i] : a1[i - 4u];
            const uint q6 = ((l4 >> lsh) & 0x0f0f0f0fu) | (((h4 >> hsh) & 0x03030303u) << 4);
            const int p4 = kiln_sdot4(int(q6), int(a4), 0) - 32 * kiln_sdot4(0x01010101, int(a4), 0);
            if (i < 4u) s0 += p4; else s1 += p4;
        }
    } else
#endif
    for (uint i = 0u; i < 8u; i++) {
        uint l4 = w_u32_2(ql + 4u * i), h4 = w_u32_2(qh + 4u * i), a4 = A[aq + i];
        int p4 = 0;
#ifdef KILN_IDOT
        /* the four 6-bit values as bytes, minus 32 each: sum q x - 32 sum x */
        uint q6 = ((l4 >> lsh) & 0x0f0f0f0fu) | (((h4 >> hsh) & 0x03030303u) << 4);
        p4 = kiln_sdot4(int(q6), int(a4), 0) - 32 * kiln_sdot4(0x01010101, int(a4), 0);
#else
        for (uint k = 0u; k < 4u; k++) {
            int q = int(((ub(l4, k) >> lsh) & 0xfu) | (((ub(h4, k) >> hsh) & 3u) << 4)) - 32;
            p4 += q * sb(a4, k);
        }
#endif
        if (i < 4u) s0 += p4; else s1 += p4;
    }
    uint sc2 = w_u16(b + 192u + 2u * j);
    int sc0 = sb(sc2, 0u), sc1 = sb(sc2, 1u);
    float d = h2f(w_u16(b + 208u));
    precise float r = (d * ad) * float(sc0 * s0 + sc1 * s1);
    return r;
#elif WTYPE == T_Q4_0S
    /* Q4_0's integer sum (exact in any order) and its float operations */
#ifdef KILN_ACT_SHARED
    /* mmv.glsl KILN_PRENORM: the activations in shared memory, word j of
     * block c at a + j K/32 + c, so that the lanes (on neighbouring
     * blocks) read neighbouring banks; the scales as in A */
#define Q4S_A(i) KILN_ACT_SHARED[i]
#define Q4S_AW(j) KILN_ACT_SHARED[a + (j) * (K / 32u) + c]
#else
#define Q4S_A(i) A[i]
#define Q4S_AW(j) A[a + 8u * c + (j)]
#endif
    float ad = uintBitsToFloat(Q4S_A(a + K / 4u + c));
    float d = q4s_d(row, c, K);
    uvec4 q = q4s_qs(row, c);
    int sum = 0;
#ifdef KILN_IDOT
    /* sum (q - 8) x = sum q x - 8 sum x, four byte products per instruction */
    int sx = 0;
    for (uint i = 0u; i < 4u; i++) {
        int alo = int(Q4S_AW(i)), ahi = int(Q4S_AW(4u + i));
        sum += kiln_sdot4(int(q[i] & 0x0f0f0f0fu), alo, 0) + kiln_sdot4(int((q[i] >> 4) & 0x0f0f0f0fu), ahi, 0);
        sx += kiln_sdot4(0x01010101, alo, 0) + kiln_sdot4(0x01010101, ahi, 0);
    }
    sum -= 8 * sx;
#else
    for (uint i = 0u; i < 4u; i++) {
        uint lo4 = q[i] & 0x0f0f0f0fu, hi4 = (q[i] >> 4) & 0x0f0f0f0fu;
        uint alo = Q4S_AW(i), ahi = Q4S_AW(4u + i);
        for (uint k = 0u; k < 4u; k++)
            sum += (int(ub(lo4, k)) - 8) * sb(alo, k) + (int(ub(hi4, k)) - 8) * sb(ahi, k);
    }
#endif
    precise float r = float(sum) * (d * ad);
    return r;
#undef Q4S_A
#undef Q4S_AW
#endif
}


/*
 * For the tiled matmul (mmt.glsl): the weights of a chunk as the integers
 * the CPU's integer dot products use, in float (exact: every product sum
 * of a chunk stays below 2^24), with the sub-block scale folded in where
 * the CPU multiplies it into the integer sum (K formats); float formats
 * give their values. wscale() gives the chunk's float factors:
 * x = d (all quantized formats), y = m (Q4_1/Q5_1) or dmin (Q4_K/Q5_K),
 * z = the 6-bit min (Q4_K/Q5_K).
 */
void wvals8(uint row, uint c, uint e0, inout float v[8]) {
#if WTYPE == T_F32
    for (uint i = 0u; i < 8u; i++) v[i] = uintBitsToFloat(w_u32(row + 4u * (32u * c + e0 + i)));
#elif WTYPE == T_F16 || WTYPE == T_BF16
    for (uint i = 0u; i < 8u; i += 2u) {
        uint w2 = w_u32_2(row + 2u * (32u * c + e0 + i));
#if WTYPE == T_F16
        vec2 f = unpackHalf2x16(w2);
#else
        vec2 f = vec2(uintBitsToFloat(w2 << 16), uintBitsToFloat(w2 & 0xffff0000u));
#endif
        v[i] = f.x;
        v[i + 1u] = f.y;
    }
#elif WTYPE == T_Q8_0
    uint b = row + 34u * c + 2u + e0;
    uint lo = w_u32_2(b), hi = w_u32_2(b + 4u);
    for (uint i = 0u; i < 4u; i++) {
        v[i] = float(sb(lo, i));
        v[i + 4u] = float(sb(hi, i));
    }
#elif WTYPE == T_Q4_0 || WTYPE == T_Q4_1 || WTYPE == T_Q5_0 || WTYPE == T_Q5_1
    uint b = row + BLK_BYTES * c;
#if WTYPE == T_Q4_1 || WTYPE == T_Q5_1
    uint qs = b + (WTYPE == T_Q4_1 ? 4u : 8u);
#elif WTYPE == T_Q5_0
    uint qs = b + 6u;
#else
    uint qs = b + 2u;
#endif
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
    uint qh = w_u32_2(b + (WTYPE == T_Q5_0 ? 2u : 4u));
#endif
    uint j0 = e0 & 15u, sh = e0 >= 16u ? 4u : 0u;
    uint q4a = w_u32_2(qs + j0), q4b = w_u32_2(qs + j0 + 4u);
    for (uint i = 0u; i < 8u; i++) {
        uint q = (ub(i < 4u ? q4a : q4b, i & 3u) >> sh) & 0xfu;
#if WTYPE == T_Q5_0 || WTYPE == T_Q5_1
        q |= ((qh >> (e0 + i)) & 1u) << 4;
#endif
#if WTYPE == T_Q4_0
        v[i] = float(int(q) - 8);
#elif WTYPE == T_Q5_0
        v[i] = float(int(q) - 16);
#else
        v[i] = float(q);
#endif
    }
#elif WTYPE == T_Q4_K || WTYPE == T_Q5_K
    uint b = row + BLK_BYTES * (c >> 3), j = c & 7u;
    uint sc, mn;
    q4k_sm(b, j, sc, mn);
#if WTYPE == T_Q4_K
    uint qs = b + 16u + 32u * (j >> 1) + e0;
#else
    uint qs = b + 48u + 32u * (j >> 1) + e0;
    uint h0 = W[(b + 16u + e0) >> 2], h1 = W[((b + 16u + e0) >> 2) + 1u];
#endif
    uint q0 = W[qs >> 2], q1 = W[(qs >> 2) + 1u];
    uint sh = (j & 1u) * 4u;
    for (uint i = 0u; i < 8u; i++) {
        uint q = (ub(i < 4u ? q0 : q1, i & 3u) >> sh) & 0xfu;
#if WTYPE == T_Q5_K
        q |= ((ub(i < 4u ? h0 : h1, i & 3u) >> j) & 1u) << 4;
#endif
        v[i] = float(int(sc) * int(q));
    }
#elif WTYPE == T_Q6_K
    uint b = row + BLK_BYTES * (c >> 3), j = c & 7u;
    int s = sb(w_u8(b + 192u + 2u * j + (e0 >= 16u ? 1u : 0u)), 0u);
    uint h = j >> 2, qq = j & 3u;
    uint ql = b + 64u * h + ((qq & 1u) != 0u ? 32u : 0u) + e0, qh = b + 128u + 32u * h + e0;
    uint lsh = qq >= 2u ? 4u : 0u, hsh = 2u * qq;
    uint l0 = w_u32_2(ql), l1 = w_u32_2(ql + 4u), h0 = w_u32_2(qh), h1 = w_u32_2(qh + 4u);
    for (uint i = 0u; i < 8u; i++) {
        uint lw = i < 4u ? l0 : l1, hw = i < 4u ? h0 : h1;
        int q = int(((ub(lw, i & 3u) >> lsh) & 0xfu) | (((ub(hw, i & 3u) >> hsh) & 3u) << 4)) - 32;
        v[i] = float(s * q);
    }
#elif WTYPE == T_Q4_0S
    /* bytes (e0 % 16) .. + 7 of the block's nibbles: two aligned words */
    uint o = (row >> 2) + 4u * c + ((e0 & 15u) >> 2), sh = e0 >= 16u ? 4u : 0u;
    uint q4a = W[o], q4b = W[o + 1u];
    for (uint i = 0u; i < 8u; i++) v[i] = float(int((ub(i < 4u ? q4a : q4b, i & 3u) >> sh) & 0xfu) - 8);
#endif
}

vec3 wscale(uint row, uint c) {
#if WTYPE == T_F32 || WTYPE == T_F16 || WTYPE == T_BF16
    return vec3(1.0, 0.0, 0.0);
#elif WTYPE == T_Q4_1 || WTYPE == T_Q5_1
    uint b = row + BLK_BYTES * c;
    return vec3(h2f(w_u16(b)), h2f(w_u16(b + 2u)), 0.0);
#elif WTYPE == T_Q4_K || WTYPE == T_Q5_K
    uint b = row + BLK_BYTES * (c >> 3);
    uint sc, mn;
    q4k_sm(b, c & 7u, sc, mn);
    return vec3(h2f(w_u16(b)), h2f(w_u16(b + 2u)), float(mn));
#elif WTYPE == T_Q6_K
    return vec3(h2f(w_u16(row + BLK_BYTES * (c >> 3) + 208u)), 0.0, 0.0);
#elif WTYPE == T_Q4_0S
    return vec3(q4s_d(row, c, ROW_K), 0.0, 0.0);
#else
    return vec3(h2f(w_u16(row + BLK_BYTES * c)), 0.0, 0.0);
#endif
}

#endif
