/*
 * common.glsl - helpers every kiln compute shader shares: byte reads from a
 * buffer of 32-bit words (weights are byte-packed blocks, not always
 * 4-byte aligned), half/bfloat conversions rounded exactly as the CPU
 * backend rounds (lib/quant.c), so that both backends feed the same values
 * into their dot products.
 *
 * A shader that reads bytes declares its byte buffer as `W` (uint words)
 * before including this file with KILN_BYTES defined.
 */
#ifndef KILN_COMMON_GLSL
#define KILN_COMMON_GLSL

#ifdef KILN_BYTES
uint w_u8(uint o) { return (W[o >> 2] >> ((o & 3u) * 8u)) & 0xffu; }
/* o is even: a half never straddles two words */
uint w_u16(uint o) { return (W[o >> 2] >> ((o & 2u) * 8u)) & 0xffffu; }
/* any alignment */
uint w_u32(uint o) {
    uint s = (o & 3u) * 8u;
    uint lo = W[o >> 2];
    if (s == 0u) return lo;
    return (lo >> s) | (W[(o >> 2) + 1u] << (32u - s));
}
/* o is even */
uint w_u32_2(uint o) {
    if ((o & 2u) == 0u) return W[o >> 2];
    return (W[o >> 2] >> 16) | (W[(o >> 2) + 1u] << 16);
}
#endif

float h2f(uint h) { return unpackHalf2x16(h).x; }
float bf2f(uint h) { return uintBitsToFloat(h << 16); }

/* float -> half, round to nearest even; as kiln_fp32_to_fp16 */
uint f2h(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return sign | 0x7e00u | ((ax >> 13) & 0x3ffu);
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00u;
    if (ax < 0x38800000u) {
        uint e = ax >> 23;
        if (e < 102u) return sign;
        uint m = (ax & 0x7fffffu) | 0x800000u;
        uint shift = 126u - e;
        uint q = m >> shift;
        uint rem = m & ((1u << shift) - 1u);
        uint half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (q & 1u) != 0u)) q++;
        return sign | q;
    }
    uint r = ax + 0xfffu + ((ax >> 13) & 1u);
    return sign | ((r >> 13) - (112u << 10));
}

/* float -> bfloat16, round to nearest even; as kiln_fp32_to_bf16 */
uint f2bf(float f) {
    uint x = floatBitsToUint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (x >> 16) | 0x40u;
    return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

/* quant_act.comp's Q8_0/Q8_1 block, for the operations that quantize their
 * own output (attn_io.glsl, quant_chunk.glsl): the 32 values X(0..31),
 * whose largest magnitude is amax, as eight words of bytes at AQ[qw ..],
 * the scale at AQ[dw] and, when q81 (Q8_1), the scaled sum at AQ[sw]. A
 * macro: X reads the including shader's storage (a shared row) and AQ is
 * its word buffer. */
#define KILN_Q8_BLOCK_STORE(X, amax, qw, dw, q81, sw)                                     \
    {                                                                                    \
        const float q8_id = (amax) != 0.0 ? 127.0 / (amax) : 0.0;                          \
        int q8_sum = 0;                                                                  \
        for (uint q8_w = 0u; q8_w < 8u; q8_w++) {                                        \
            uint q8_word = 0u;                                                           \
            for (uint q8_k = 0u; q8_k < 4u; q8_k++) {                                    \
                int q8_q = clamp(int(roundEven(X(4u * q8_w + q8_k) * q8_id)), -127, 127);  \
                q8_sum += q8_q;                                                          \
                q8_word |= (uint(q8_q) & 0xffu) << (8u * q8_k);                          \
            }                                                                            \
            AQ[(qw) + q8_w] = q8_word;                                                   \
        }                                                                                \
        const float q8_d = (amax) / 127.0;                                               \
        AQ[dw] = floatBitsToUint(h2f(f2h(q8_d)));                                        \
        if (q81) AQ[sw] = floatBitsToUint(h2f(f2h(q8_d * float(q8_sum))));               \
    }

/* signed byte j (0..3) of a word */
int sb(uint w, uint j) { return bitfieldExtract(int(w), int(j * 8u), 8); }
/* unsigned byte j of a word */
uint ub(uint w, uint j) { return bitfieldExtract(w, int(j * 8u), 8); }

#endif
