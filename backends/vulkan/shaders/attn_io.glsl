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
layout(binding = 3) writeonly buffer DB { float D[]; };
layout(binding = 4) readonly buffer UB { int U[]; };
layout(binding = 5) buffer AQB { uint AQ[]; };
/* a long context's decode attention in splits (attn_dec.glsl with
 * p.split_len != 0): each split's (max, sum, unnormalised output) here,
 * folded by attn_fold.comp or by the row's last split to finish
 * (p.cnt_off != 0; written by other workgroups of the dispatch:
 * coherent) */
layout(binding = 9) coherent buffer PB { float Part[]; };
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
    uint cnt_off;                 /* != 0: the last split folds, counting at this word of binding 10 (attn_dec.glsl) */
    uint split_min;               /* splits of at least this many positions (attn_split_len) */
#ifdef KILN_ATTN_DEC_ROPE
    uint k_off, k_stride, v_off, v_stride, n_rot, mode, t_off, cell_off;
#endif
} p;

#include "common.glsl"

shared float qs[MAXD];

/* After the head's output (head_dim values, qs[d]) was written to D by
 * this workgroup of `nthreads` invocations (tid): the same values in
 * format p.qmode (1/2: F16/BF16 rounding; 3/4: Q8_0/Q8_1 blocks of 32,
 * which lie within a head) into AQ, as quant_act.comp writes them. Called
 * from uniform control flow (it has a barrier). */
void attn_quant_out(uint t, uint h, uint D_, uint tid, uint nthreads) {
    if (p.qmode == 0u) return;
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

/* The split length of a row that attends to nkv positions: about 16
 * splits, of between p.split_min and p.split_len positions (multiples of
 * 32; the host launches enough splits for p.split_min). A short context's
 * subgroups then walk short chains and a long one's splits stay few (H100,
 * bench/NOTES.md session 14). It depends only on nkv, so a verify batch's
 * rows keep the bits of decode steps. */
uint attn_split_len(uint nkv) {
    return clamp(((nkv + 15u) / 16u + 31u) / 32u * 32u, p.split_min, p.split_len);
}

/* attn_fold.comp's work for row t, head h, by this workgroup of `nthreads`
 * invocations (tid): the row's ns splits in Part (ns = 0: a row that
 * attends to nothing, zeros) folded in split order into the head's output
 * in D, then quantized for the next matmul. The arithmetic depends only
 * on the splits, not on the workgroup, so both callers give the same
 * bits. Called from uniform control flow. */
void attn_fold_row(uint t, uint h, uint D_, uint ns, uint tid, uint nthreads) {
    uint po = p.p_off + (t * p.n_head + h) * p.n_splits * (D_ + 2u);
    float M = -1e30;
    for (uint s = 0u; s < ns; s++) M = max(M, Part[po + s * (D_ + 2u)]);
    precise float L = 0.0;
    for (uint s = 0u; s < ns; s++) L += Part[po + s * (D_ + 2u) + 1u] * exp(Part[po + s * (D_ + 2u)] - M);
    uint od = p.d_off + t * p.d_stride + h * D_;
    for (uint d = tid; d < D_; d += nthreads) {
        precise float a = 0.0;
        for (uint s = 0u; s < ns; s++) a += Part[po + s * (D_ + 2u) + 2u + d] * exp(Part[po + s * (D_ + 2u)] - M);
        float v = L > 0.0 ? a / L : 0.0;
        D[od + d] = v;
        qs[d] = v; /* for the quantization below */
    }
    attn_quant_out(t, h, D_, tid, nthreads);
}

#endif
