/*
 * q4_0_split.comp - Q4_0 weight rows rearranged in place into the split
 * layout (types.glsl T_Q4_0S, vk_layout.c): a row of nb 18-byte blocks
 * (F16 d, 16 bytes of nibbles) becomes the nb 16-byte nibble arrays, then
 * the nb scales; the same 18 nb bytes. A workgroup per row: it copies the
 * row into shared memory, and after a barrier (every read of the row done)
 * writes it back split. Workgroups touch only their own rows, so the
 * dispatch needs nothing else. The host picks rows of whole 256-element
 * groups (nb % 8 == 0: the row is whole words, its scales whole words)
 * starting on 16-byte boundaries, of at most MAXW words.
 */
#version 450
#define MAXW 4096u /* words: 16 KiB, the shared memory every device offers */
layout(local_size_x = 256) in;

layout(binding = 0) buffer WB { uint W[]; };

layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes (multiples of 16) */
    uint nb;                /* blocks per row */
    uint row_base;          /* first row of this dispatch */
} p;

shared uint S[MAXW];

/* the half at byte o (even) of the staged row */
uint s_u16(uint o) { return (S[o >> 2] >> ((o & 2u) * 8u)) & 0xffffu; }
/* the word at byte o (even) of the staged row */
uint s_u32_2(uint o) {
    if ((o & 2u) == 0u) return S[o >> 2];
    return (S[o >> 2] >> 16) | (S[(o >> 2) + 1u] << 16);
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint base = (p.w_off + (p.row_base + gl_WorkGroupID.x) * p.w_stride) >> 2;
    const uint nw = (18u * p.nb) >> 2;
    for (uint i = tid; i < nw; i += 256u) S[i] = W[base + i];
    barrier();
    /* word i of the nibble arrays: word i & 3 of block i >> 2's 16 bytes
     * (GGUF: at byte 18 b + 2 of the row) */
    for (uint i = tid; i < 4u * p.nb; i += 256u) W[base + i] = s_u32_2(18u * (i >> 2) + 2u + 4u * (i & 3u));
    /* word k of the scales: those of blocks 2k (low half) and 2k + 1 */
    for (uint k = tid; k < p.nb / 2u; k += 256u)
        W[base + 4u * p.nb + k] = s_u16(36u * k) | (s_u16(36u * k + 18u) << 16);
}
