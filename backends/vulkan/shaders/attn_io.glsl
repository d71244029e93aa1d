/*
 * attn_io.glsl - what attention.comp and attn_dec.comp share: their
 * bindings and push constants (vk_ops.c fills them the same way for
 * both), the head's output staged in `qs`, and the quantization of that
 * output for the next matmul (attn_quant_out).
 */
#ifndef KILN_ATTN_IO_GLSL
#define KILN_ATTN_IO_GLSL

#define MAXD 256u

/* KILN_ATTN_DEC_ROPE (attn_dec_rope.comp): binding 0 holds q, k and v
 * (rows of one buffer), binding 6 is rope_kv.comp's table of cosines and
 * sines, 7 and 8 the caches written, and the push constants go on with
 * rope_kv's. */
layout(binding = 0) readonly buffer QB { float Q[]; };
layout(binding = 1) readonly buffer KC { uint KCache[]; };
layout(binding = 2) readonly buffer VC { uint VCache[]; };
/* coherent: with Q8_K output (qmode 5) the last head of a 256-element
 * super-block reads the other heads' outputs back (attn_quant_out) */
layout(binding = 3) coherent buffer DB { float D[]; };
layout(binding = 4) readonly buffer UB { int U[]; };
layout(binding = 5) buffer AQB { uint AQ[]; };
/* a long context's decode attention in splits (attn_dec.glsl with
 * p.split_len != 0): each split's (max, sum, unnormalised output) here,
 * folded by attn_fold.comp */
layout(binding = 9) buffer PB { float Part[]; };
/* qmode 5: a counter per (row, super-block) of 256 output elements, zero
 * between dispatches (the last head to count resets it) */
layout(binding = 10) coherent buffer CB { uint CNT[]; };
#ifdef KILN_ATTN_DEC_ROPE
layout(binding = 6) readonly buffer TB { float T[]; };
/* the caches again, for the one row stored (no invocation reads it): the
 * reads above stay on read-only bindings */
layout(binding = 7) writeonly buffer KCW { uint KCacheW[]; };
layout(binding = 8) writeonly buffer VCW { uint VCacheW[]; };
#endif

layout(push_constant) uniform P {
    uint q_off, q_stride, d_off, d_stride;
    uint n_head, n_head_kv, head_dim, kv_dim;
    float scale;
    uint block_size, tab_off, nkv_off, bt_off;
    uint qmode, a_stride, row_k;  /* row_k: elements of a dst row (n_head * head_dim) */
    uint split_len, n_splits, p_off; /* splits of split_len positions (0: none), Part's first word */
#ifdef KILN_ATTN_DEC_ROPE
    uint k_off, k_stride, v_off, v_stride, n_rot, mode, t_off, cell_off;
#endif
} p;

#include "common.glsl"

shared float qs[MAXD];
shared float qk_v[256], qk_abs[256];
shared uint qk_idx[256];
shared int qk_q[256];
shared bool qk_last;

/* Q8_K (qmode 5) of super-block `blk` of row t's output, as quant_act.comp
 * mode 5 writes it (the same maxima, first index on ties, roundings and
 * sums, so the same bytes), by `nthreads` invocations (a power of two, at
 * most 256): from D, which every head of the block has written. */
void attn_q8k_block(uint t, uint blk, uint tid, uint nthreads) {
    uint a = t * p.a_stride, K = p.row_k, x = p.d_off + t * p.d_stride + 256u * blk;
    for (uint i = tid; i < 256u; i += nthreads) qk_v[i] = D[x + i];
    barrier();
    float best = -1.0;
    uint bi = 0u;
    for (uint i = tid; i < 256u; i += nthreads) /* increasing i: the first index on ties */
        if (abs(qk_v[i]) > best) { best = abs(qk_v[i]); bi = i; }
    qk_abs[tid] = best;
    qk_idx[tid] = bi;
    barrier();
    for (uint s = nthreads / 2u; s > 0u; s >>= 1) {
        if (tid < s) {
            uint o = tid + s;
            if (qk_abs[o] > qk_abs[tid] || (qk_abs[o] == qk_abs[tid] && qk_idx[o] < qk_idx[tid])) {
                qk_abs[tid] = qk_abs[o];
                qk_idx[tid] = qk_idx[o];
            }
        }
        barrier();
    }
    float amax = qk_abs[0], mx = qk_v[qk_idx[0]];
    float inv = amax != 0.0 ? -127.0 / mx : 0.0;
    for (uint i = tid; i < 256u; i += nthreads)
        qk_q[i] = amax != 0.0 ? clamp(int(roundEven(min(max(inv * qk_v[i], -128.0), 127.0))), -128, 127) : 0;
    barrier();
    for (uint w = tid; w < 64u; w += nthreads)
        AQ[a + 64u * blk + w] = (uint(qk_q[4u * w]) & 0xffu) | ((uint(qk_q[4u * w + 1u]) & 0xffu) << 8) |
                                ((uint(qk_q[4u * w + 2u]) & 0xffu) << 16) | ((uint(qk_q[4u * w + 3u]) & 0xffu) << 24);
    for (uint j = tid; j < 16u; j += nthreads) {
        int sum = 0;
        for (uint k = 0u; k < 16u; k++) sum += qk_q[16u * j + k];
        AQ[a + K / 4u + K / 256u + 16u * blk + j] = uint(sum);
    }
    /* written as quant_act.comp writes it (1 / inv can round differently) */
    if (tid == 0u) AQ[a + K / 4u + blk] = amax != 0.0 ? floatBitsToUint(1.0 / (-127.0 / mx)) : 0u;
    barrier(); /* the shared arrays are reused for the next block */
}

/* After the head's output (head_dim values, qs[d]) was written to D by
 * this workgroup of `nthreads` invocations (tid): the same values in
 * format p.qmode (1/2: F16/BF16 rounding; 3/4: Q8_0/Q8_1 blocks of 32,
 * which lie within a head) into AQ, as quant_act.comp writes them. Called
 * from uniform control flow (it has a barrier). */
void attn_quant_out(uint t, uint h, uint D_, uint tid, uint nthreads) {
    if (p.qmode == 0u) return;
    if (p.qmode == 5u) {
        /* Q8_K super-blocks span 256 / head_dim heads (vk_attn.c: head_dim
         * divides 256 or 256 divides it): each head's workgroup counts
         * itself into each block it covers once its outputs are in D; the
         * last one quantizes the block. */
        memoryBarrierBuffer();
        barrier();
        uint b0 = h * D_ / 256u, b1 = ((h + 1u) * D_ + 255u) / 256u;
        uint hpb = D_ >= 256u ? 1u : 256u / D_;
        for (uint blk = b0; blk < b1; blk++) {
            uint c = t * (p.row_k / 256u) + blk;
            if (tid == 0u) qk_last = atomicAdd(CNT[c], 1u) == hpb - 1u;
            barrier();
            if (qk_last) {
                memoryBarrierBuffer();
                if (tid == 0u) CNT[c] = 0u; /* every other head has counted */
                attn_q8k_block(t, blk, tid, nthreads);
            }
            barrier();
        }
        return;
    }
    barrier();
    uint a = t * p.a_stride, e0 = h * D_; /* the head's first element in the row */
    if (p.qmode <= 2u) {
        for (uint d = tid; d < D_; d += nthreads)
            AQ[a + e0 + d] = floatBitsToUint(p.qmode == 1u ? h2f(f2h(qs[d])) : bf2f(f2bf(qs[d])));
        return;
    }
    /* one invocation per 32-block: its maximum, then quant_act's roundings */
    uint b0 = 32u * tid;
    if (b0 >= D_) return;
    float amax = 0.0;
    for (uint k = 0u; k < 32u; k++) amax = max(amax, abs(qs[b0 + k]));
    uint blk = (e0 + b0) / 32u;
#define ATTN_Q8_X(k) qs[b0 + (k)]
    KILN_Q8_BLOCK_STORE(ATTN_Q8_X, amax, a + (e0 + b0) / 4u, a + p.row_k / 4u + blk, p.qmode == 4u,
                        a + p.row_k / 4u + p.row_k / 32u + blk)
#undef ATTN_Q8_X
}

#endif
