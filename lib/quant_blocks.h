/*
 * quant_blocks.h - the byte layouts of ggml's quantized blocks, shared by the
 * reference conversions (lib/quant.c) and the CPU dot kernels
 * (backends/cpu/cpu_dot_*.c).
 *
 * Every layout is pinned by the GGUF files in the wild: sizes are checked at
 * compile time against lib/types.c's table. Half-precision fields are raw
 * IEEE-754 binary16 bits (uint16_t). All fields are little-endian.
 *
 * Rows of these blocks in a GGUF file are only 2-byte aligned (e.g. 18-byte
 * Q4_0 blocks), so code reading weights must not assume more than the
 * alignment of the struct (2 bytes; 4 for Q8_K, which only ever lives in
 * buffers the CPU backend allocates).
 */
#ifndef KILN_QUANT_BLOCKS_H
#define KILN_QUANT_BLOCKS_H

#include <stdint.h>

#define KILN_QK 32   /* elements per block of the *_0 / *_1 formats */
#define KILN_QK_K 256 /* elements per super-block of the K formats */

/* x = d * (q - 8), q in 0..15; element j in the low nibble of qs[j],
 * element j + 16 in the high nibble. */
typedef struct { uint16_t d; uint8_t qs[KILN_QK / 2]; } kiln_block_q4_0;
/* x = d * q + m, q in 0..15, nibbles as Q4_0. */
typedef struct { uint16_t d, m; uint8_t qs[KILN_QK / 2]; } kiln_block_q4_1;
/* x = d * (q - 16), q in 0..31: low 4 bits as Q4_0, bit 4 of element j is
 * bit j of the little-endian 32-bit qh. */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[KILN_QK / 2]; } kiln_block_q5_0;
/* x = d * q + m, q in 0..31, bits as Q5_0. */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[KILN_QK / 2]; } kiln_block_q5_1;
/* x = d * q. */
typedef struct { uint16_t d; int8_t qs[KILN_QK]; } kiln_block_q8_0;
/* x = d * q; s = d * sum(q) (used by the Q4_1/Q5_1 dot products). */
typedef struct { uint16_t d, s; int8_t qs[KILN_QK]; } kiln_block_q8_1;

/* 16 sub-blocks of 16: x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4),
 * q in 0..3. In each 128-element half, byte l of its 32 qs bytes holds
 * elements l, l + 32, l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7. */
typedef struct { uint8_t scales[KILN_QK_K / 16]; uint8_t qs[KILN_QK_K / 4]; uint16_t d, dmin; } kiln_block_q2_K;
/* 16 sub-blocks of 16: x = d * (scale6[j] - 32) * (q - 4), q in 0..7: low 2
 * bits packed as Q2_K, the high bit of element i in bit (i / 32) of
 * hmask[i % 32]. The 16 6-bit scales: low nibbles in scales[0..7] (j < 8:
 * low nibble of byte j; j >= 8: high nibble of byte j - 8), high 2 bits in
 * scales[8 + j % 4] at bit 2 * (j / 4). */
typedef struct { uint8_t hmask[KILN_QK_K / 8]; uint8_t qs[KILN_QK_K / 4]; uint8_t scales[12]; uint16_t d; } kiln_block_q3_K;
/* 8 sub-blocks of 32: x = d * sc[j] * q - dmin * mn[j], q in 0..15, 6-bit
 * sc/mn packed in scales[12] (see kiln_q4k_scale_min). In each 64-element
 * chunk c, qs[32c + l] holds element 64c + l (low nibble) and 64c + 32 + l
 * (high nibble). */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[KILN_QK_K / 2]; } kiln_block_q4_K;
/* As Q4_K with 5-bit q: the 5th bit of element 64c + l is bit 2c of qh[l],
 * of element 64c + 32 + l bit 2c + 1. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[KILN_QK_K / 8]; uint8_t qs[KILN_QK_K / 2]; } kiln_block_q5_K;
/* 16 sub-blocks of 16: x = d * scales[j] * (q - 32), q in 0..63. In each
 * 128-element half h (ql += 64h, qh += 32h), for l in 0..31: element l is
 * ql[l] & 15 | (qh[l] & 3) << 4, element l + 32 is ql[l + 32] & 15 |
 * (qh[l] >> 2 & 3) << 4, element l + 64 is ql[l] >> 4 | (qh[l] >> 4 & 3) << 4,
 * element l + 96 is ql[l + 32] >> 4 | (qh[l] >> 6) << 4. */
typedef struct { uint8_t ql[KILN_QK_K / 2]; uint8_t qh[KILN_QK_K / 4]; int8_t scales[KILN_QK_K / 16]; uint16_t d; } kiln_block_q6_K;
/* x = d * q (float d); bsums[j] = sum of qs[16j .. 16j + 15]. */
typedef struct { float d; int8_t qs[KILN_QK_K]; int16_t bsums[KILN_QK_K / 16]; } kiln_block_q8_K;

_Static_assert(sizeof(kiln_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(kiln_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(kiln_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(kiln_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(kiln_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(kiln_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(kiln_block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(kiln_block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(kiln_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(kiln_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(kiln_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(kiln_block_q8_K) == 292, "q8_K layout");

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block:
 * j < 4: low 6 bits of s[j] and s[j + 4]; j >= 4: low/high nibble of
 * s[j + 4] plus the top 2 bits of s[j - 4] / s[j] as bits 4-5. */
static inline void kiln_q4k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

#endif /* KILN_QUANT_BLOCKS_H */
