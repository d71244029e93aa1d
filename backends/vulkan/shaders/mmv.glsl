/*
 * mmv.glsl - matrix-vector matmul for decode and short verify batches
 * (at most MT activation rows per workgroup row, see vk_ops.c), one weight
 * type (WTYPE, set by the including mmv_TYPE.comp), activations in the
 * format types.glsl pairs with it (quant_act.comp). Needs subgroup
 * arithmetic; mm.glsl is the portable path.
 *
 * A subgroup owns ROWS weight rows at a time; its lanes stride over the
 * rows' 32-element chunks (lane l: chunks l, l + S, l + 2S...), so the
 * lanes of one load read neighbouring blocks and every weight byte is read
 * once per dispatch. Each lane keeps one partial sum per row and token;
 * subgroupAdd reduces them at the end. Subgroups walk the row groups with
 * a grid stride, so the dispatch is correct for any subgroup size and any
 * workgroup count (the host sizes it to fill the device).
 *
 * Per token the arithmetic does not depend on how many tokens the
 * dispatch has: a sequence decoded alone or inside a verify batch gets the
 * same bits (speculative decoding compares them). It differs from the tiled
 * kernel (mmt.glsl) only in the order of float additions.
 *
 * F16 weights with 16-byte aligned rows (push constant `vec`): each lane
 * reads 8 halves per 16-byte load, lanes on consecutive loads.
 *
 * MULTI (mmvm_TYPE.comp, matmul_multi): up to three products of one
 * activation (q/k/v, gate/up) in one dispatch. Their weights lie in the
 * one binding W and their results in the one binding D, each at its own
 * offsets; the row groups of the products are numbered one after the
 * other and a subgroup's group picks its product, so every product's rows
 * get exactly the arithmetic of a dispatch of their own.
 *
 * `unroll` (KILN_VK_MMV_UNROLL=1), one activation row (a decode step):
 * each lane issues the loads of 4 of its chunks (16-byte groups for F16)
 * before it adds any of them, for more loads in flight; the sums are added
 * in the same order, so the bits do not change. (One row only: unrolled
 * over the rows too the kernel takes minutes to compile on lavapipe.)
 *
 * KILN_SWIGLU (mmvm1s_TYPE.comp, matmul_swiglu; MULTI, one activation
 * row): a subgroup takes row n of gate (product 0) and of up (product 1)
 * as its two rows and writes silu(gate) * up (binary.comp's formula) to
 * product 0's result; a workgroup (512 wide by default: two row pairs per
 * subgroup) owns 32 consecutive rows, so that it
 * also quantizes them as one block for the down product (qmode 1-4, with
 * quant_act's formulas; AQ, binding 3). The products' rows get the
 * arithmetic of mmvm1_ (a row's sum does not depend on which rows share
 * its subgroup), so the bits equal matmul_multi then swiglu.
 *
 * KILN_NORM (mmv1n_TYPE.comp, matmul_add_rms_norm; one activation row of
 * at most 4096 results): after its rows, each workgroup counts itself
 * done on a counter (binding 7); the last one adds the residual R to the
 * product and normalizes the row into D (and S, and the quantized
 * activations of the next product, AQ) with add_rms_norm.comp's
 * arithmetic, so the bits equal the two dispatches'. It resets the counter
 * for the next dispatch. One dispatch, one barrier fewer per norm: on the
 * H100 a dependent dispatch's drain and ramp cost more than the norm's
 * own work (bench/NOTES.md, session 10).
 *
 * KILN_PRENORM (mmvm1p_TYPE.comp rms_norm_matmul_multi, mmvm1sp_TYPE.comp
 * rms_norm_matmul_swiglu; MULTI, one activation row of K <= 4096, split
 * Q4_0 weights): the norm before the products is done by every
 * workgroup for itself, from the residual row X (binding 4) and the norm
 * weights NW (binding 5), into shared memory, quantized as the products
 * read it (Q8_0); the products then read their activations from there.
 * No workgroup waits for another, so the norm costs each product a short
 * prologue instead of a serial tail (KILN_NORM) or a dependent dispatch.
 * add_rms_norm.comp's arithmetic (its 256 partial sums and tree) and
 * quant_act's, so the bits equal rms_norm then the products.
 *
 * KILN_RESADD (mmv1r_TYPE.comp, matmul_add; one activation row): each
 * result is written with the residual R (binding 3) added, as binary.comp
 * adds: the residual row of the next KILN_PRENORM product.
 *
 * KQ order (split Q4_0 weights in layout KILN_VK_LAYOUT_Q4_0_SPLIT_KQ, bit
 * 1 of `unroll`; the kernels of one product, not MULTI): a row's chunks
 * fall in four classes, chunk c in class (c / S) % 4 (S-wide stretches
 * dealt round), and the row's sum is ((t0 + t1) + t2) + t3, t_m the
 * subgroupAdd of the lanes' sums over class m (each lane over its chunks
 * of the class in order). Four subgroups of a workgroup take a row group's
 * four classes side by side (fewer subgroups: one after the other), so a
 * long row (the down product, K 14336) is walked by four times the
 * subgroups: the step's products run in one wave, and a lane's chain of
 * dependent rounds of loads is what bounds it. Every kernel of such a
 * weight sums in this order, whatever its rows per dispatch, so decode
 * and verify rows keep equal bits.
 */
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require

#ifndef MT
#define MT 8u /* activation rows per workgroup row (mmv1_, mmvm1_: 1, fewer registers) */
#endif
/* weight rows per subgroup pass: specialization constant 1, the handle's
 * KILN_VK_MMV_ROWS (vk_ops.c; constant 0 is the subgroup size) */
layout(constant_id = 1) const uint ROWS = 2u;
#if defined(KILN_NORM)
layout(local_size_x = 256) in; /* add_rms_norm.comp's width for the last workgroup's norm */
#elif defined(KILN_PRENORM)
/* specialization constant 14 (the handle's KILN_VK_PRENORM_WG)
 * invocations, a multiple of 32 up to 1024 */
layout(local_size_x_id = 14) in;
#elif defined(KILN_SWIGLU)
/* 32 rows per workgroup: specialization constant 12 (the handle's
 * KILN_VK_SWIGLU_WG) invocations, a multiple of 32 up to 1024 */
layout(local_size_x_id = 12) in;
#else
layout(local_size_x = 128) in;
#endif

layout(binding = 0) readonly buffer WB { uint W[]; };
layout(binding = 0) readonly buffer WB4 { uvec4 W4[]; };
layout(binding = 1) readonly buffer AB { uint A[]; };
layout(binding = 1) readonly buffer AB4 { vec4 A4[]; };
#ifdef KILN_NORM
/* written by every workgroup, read back by the last: coherent */
layout(binding = 2) coherent buffer DB { float D[]; };
layout(binding = 3) readonly buffer RB { float R[]; };  /* the residual (add_rms_norm's a) */
layout(binding = 4) buffer SB { float S[]; };           /* R + the product (may alias R) */
layout(binding = 5) readonly buffer NWB { float NW[]; };/* the norm's weights */
layout(binding = 6) buffer QB { uint AQ[]; };           /* quantized for the next product (qmode) */
layout(binding = 7) coherent buffer CB { uint CNT[]; }; /* workgroups done, 0 between dispatches */
#else
layout(binding = 2) writeonly buffer DB { float D[]; };
#endif
#ifdef KILN_SWIGLU
layout(binding = 3) buffer QB { uint AQ[]; }; /* the result quantized for the down product (qmode) */
#define NR 2u /* gate's and up's row */
#else
#define NR ROWS
#endif
#ifdef KILN_RESADD
layout(binding = 3) readonly buffer RB { float R[]; }; /* the residual (may alias D: read, then written, by one lane) */
#endif
#ifdef KILN_PRENORM
layout(binding = 4) readonly buffer XB { float X[]; };   /* the residual row, not normalized */
layout(binding = 5) readonly buffer NWB { float NW[]; }; /* the norm's weights */
shared float pn_red[256];
shared float pn_max[1024];
/* the normalized row quantized (Q8_0): K/4 words of bytes, word j of
 * block c at j K/32 + c (not quant_act's 8 c + j: lanes on neighbouring
 * blocks read neighbouring banks, not one bank in four), then the K/32
 * block scales; the products read it at a = 0 */
shared uint pn_aq[1024u + 128u];
#define KILN_ACT_SHARED pn_aq
#endif

#ifdef MULTI
layout(push_constant) uniform P {
    uint a_off, a_stride;   /* words */
    uint K, M;
    uint vec;               /* bit i: product i as `vec` below */
    uint m_base;
    uint n_prod;            /* 1..3 */
    uint g_end[3];          /* row groups of products 0..i */
    uint w_off[3], w_stride[3]; /* bytes */
    uint d_off[3], d_stride[3]; /* words */
    uint N[3];
    uint unroll;
#ifdef KILN_SWIGLU
    uint qmode, q_off;      /* the quantized result's format and first word in AQ */
#endif
#ifdef KILN_PRENORM
    uint x_off, nw_off;     /* words */
    float eps;
#endif
} p;
#else
layout(push_constant) uniform P {
    uint w_off, w_stride;   /* bytes */
    uint a_off, a_stride;   /* words */
    uint d_off, d_stride;   /* words */
    uint K, N, M;
    uint unroll;            /* bit 0: see above; bit 1: KQ order (n_base of the other kernels) */
    uint vec;               /* F16: rows and activations 16-byte aligned, K % 8 == 0 */
    uint m_base;            /* first activation row of this dispatch */
#ifdef KILN_NORM
    uint r_off, s_off, nw_off; /* words */
    uint qmode;             /* add_rms_norm.comp's */
    float eps;
    uint dbg;               /* KILN_VK_NORM_DBG (profiling only): 1 no norm, 2 no quantization */
#endif
#ifdef KILN_RESADD
    uint r_off;             /* words */
#endif
} p;
#endif

#define KILN_BYTES
#define KILN_W4 /* types.glsl: split Q4_0 blocks as one 16-byte load */
layout(binding = 1) readonly buffer ABU4 { uvec4 AU4[]; };
/* types.glsl: Q4_K blocks and the int8 activations of Q4_K and Q6_K as
 * 16-byte loads where aligned (not split Q4_0's: H100 Q4_0 tg128 307-311
 * -> 259-261 t/s with them); specialization constant 13 = 0
 * (KILN_VK_NO_AU4, comparisons) keeps the word loads: the same bits */
layout(constant_id = 13) const uint AU4_ON = 1u;
#define KILN_AU4
#include "common.glsl"
#include "types.glsl"

#ifdef KILN_SWIGLU
shared float sw_out[32];
/* The workgroup's block of 32 results (sw_out) quantized as quant_act
 * would (block maximum, then KILN_Q8_BLOCK_STORE; element-wise for F16 and
 * BF16); mode 3/4 needs N % 32 == 0 (the host's act_produce checks). */
void swiglu_quant(uint blk) {
    const uint t = gl_LocalInvocationIndex, F = p.N[0], e0 = 32u * blk, a = p.q_off;
    if (p.qmode == 1u || p.qmode == 2u) {
        if (t < 32u && e0 + t < F)
            AQ[a + e0 + t] = floatBitsToUint(p.qmode == 1u ? h2f(f2h(sw_out[t])) : bf2f(f2bf(sw_out[t])));
        return;
    }
    if (t != 0u) return;
    float amax = 0.0;
    for (uint k = 0u; k < 32u; k++) {
        float x = abs(sw_out[k]);
        if (x > amax) amax = x;
    }
#define SW_X(k) sw_out[(k)]
    KILN_Q8_BLOCK_STORE(SW_X, amax, a + e0 / 4u, a + F / 4u + blk, p.qmode == 4u, a + F / 4u + F / 32u + blk)
#undef SW_X
}
#endif

#ifdef KILN_NORM
#define KILN_QUANT_BLOCKS_ONLY
#define KILN_QUANT_ROW_REGS
#include "quant_chunk.glsl"
shared float n_red[256];
shared bool n_last;

/* add_rms_norm.comp's registers path for the row of N <= 4096 results at
 * D[d_off], with its invocations (this variant's workgroup is 256 wide):
 * the same elements per invocation, every load issued first, the same
 * tree and quantization, so the same bits. */
void norm_row(uint tid) {
    const uint n = p.N, d = p.d_off;
    precise float acc = 0.0; /* as add_rms_norm.comp */
    float sv[16], wv[16];
    {
        float av[16], bv[16];
        for (uint k = 0u; k < 16u; k++) {
            uint i = tid + 256u * k;
            av[k] = i < n ? R[p.r_off + i] : 0.0;
            bv[k] = i < n ? D[d + i] : 0.0;
            wv[k] = i < n ? NW[p.nw_off + i] : 0.0;
        }
        for (uint k = 0u; k < 16u; k++) {
            uint i = tid + 256u * k;
            if (i < n) {
                float v = av[k] + bv[k];
                sv[k] = v;
                S[p.s_off + i] = v;
                acc += v * v;
            }
        }
    }
    n_red[tid] = acc;
    barrier();
    for (uint k = 128u; k > 0u; k >>= 1) {
        if (tid < k) n_red[tid] += n_red[tid + k];
        barrier();
    }
    float scale = 1.0 / sqrt(n_red[0] / float(n) + p.eps);
    for (uint k = 0u; k < 16u; k++) {
        uint i = tid + 256u * k;
        if (i < n) {
            sv[k] = (sv[k] * scale) * wv[k];
            D[d + i] = sv[k];
        }
    }
    if (p.qmode == 0u || (p.dbg & 2u) != 0u) return;
    quant_row_regs(sv, tid, 0u, n, p.qmode); /* the host picks modes whose blocks divide N */
}
#endif

#ifdef KILN_PRENORM
/* rms_norm of X's row of K (<= 4096, a multiple of 32) elements times NW,
 * quantized into pn_aq. The sum of squares as add_rms_norm.comp sums it
 * (256 partial sums, element i in sum i % 256 in order of i, then its
 * tree), with whatever width this workgroup has; the blocks as quant_act
 * quantizes them (Q8_0: the block's largest magnitude, 127 / it, round to
 * even), four invocations per block. Called from uniform control flow. */
void prenorm() {
    const uint tid = gl_LocalInvocationIndex, WG = gl_WorkGroupSize.x, n = p.K;
    for (uint vt = tid; vt < 256u; vt += WG) {
        float xv[16];
        [[unroll]] for (uint k = 0u; k < 16u; k++) {
            uint i = vt + 256u * k;
            xv[k] = i < n ? X[p.x_off + i] : 0.0;
        }
        precise float acc = 0.0; /* as add_rms_norm.comp */
        [[unroll]] for (uint k = 0u; k < 16u; k++)
            if (vt + 256u * k < n) acc += xv[k] * xv[k];
        pn_red[vt] = acc;
    }
    barrier();
    for (uint k = 128u; k > 0u; k >>= 1) {
        for (uint vt = tid; vt < k; vt += WG) pn_red[vt] += pn_red[vt + k];
        barrier();
    }
    const float scale = 1.0 / sqrt(pn_red[0] / float(n) + p.eps);
    const uint nb = n / 32u;
    for (uint t0 = 0u; t0 < 4u * nb; t0 += WG) {
        const uint t = t0 + tid, blk = t >> 2, part = t & 3u;
        const bool live = t < 4u * nb;
        float y[8];
        float m = 0.0;
        [[unroll]] for (uint k = 0u; k < 8u; k++) {
            uint i = 32u * blk + 8u * part + k;
            /* X from memory again (the L2): 16 KiB of shared memory for
             * the row, or its elements kept in registers, made both
             * products slower on the H100 (bench/NOTES.md) */
            y[k] = live ? (X[p.x_off + i] * scale) * NW[p.nw_off + i] : 0.0;
            m = max(m, abs(y[k]));
        }
        pn_max[tid] = m;
        barrier();
        const uint l = tid & ~3u;
        const float amax = max(max(pn_max[l], pn_max[l + 1u]), max(pn_max[l + 2u], pn_max[l + 3u]));
        if (live) {
            const float id = amax != 0.0 ? 127.0 / amax : 0.0; /* KILN_Q8_BLOCK_STORE's */
            [[unroll]] for (uint w = 0u; w < 2u; w++) {
                uint word = 0u;
                [[unroll]] for (uint k = 0u; k < 4u; k++) {
                    int q = clamp(int(roundEven(y[4u * w + k] * id)), -127, 127);
                    word |= (uint(q) & 0xffu) << (8u * k);
                }
                pn_aq[(2u * part + w) * nb + blk] = word; /* word j of block blk at j K/32 + blk (types.glsl) */
            }
            if (part == 0u) pn_aq[n / 4u + blk] = floatBitsToUint(h2f(f2h(amax / 127.0)));
        }
        barrier();
    }
}
#endif

#if !defined(MULTI) && WTYPE == T_Q4_0S
#define KILN_KQ
#define KQ 4u
/* the classes' sums of the workgroup's row groups: [group][class][row][token];
 * at most 32 subgroups a workgroup (subgroups of 4 or more invocations) */
shared float kq_part[(gl_WorkGroupSize.x / 4u) * ROWS * MT];

/* The rows of this dispatch in KQ order (see the top), results written as
 * the other path writes them. Called from uniform control flow. */
void kq_rows(uint m0, uint mc, uint nchunks) {
    const uint S = gl_SubgroupSize, lane = gl_SubgroupInvocationID, NS = gl_NumSubgroups;
    const uint cs = min(NS, KQ);      /* classes side by side */
    const uint gpw = NS / cs;         /* row groups per workgroup pass (NS a power of two) */
    const uint q = gl_SubgroupID / cs, m1 = gl_SubgroupID % cs;
    const uint groups = (p.N + ROWS - 1u) / ROWS, per = ROWS * MT;
    for (uint g0 = gl_WorkGroupID.x * gpw; g0 < groups; g0 += gl_NumWorkGroups.x * gpw) {
        const uint g = g0 + q;
        if (g < groups) { /* the same for the whole subgroup */
            uint rowb[ROWS];
            [[unroll]] for (uint r = 0u; r < ROWS; r++) rowb[r] = p.w_off + min(g * ROWS + r, p.N - 1u) * p.w_stride;
            for (uint m = m1; m < KQ; m += cs) {
                float acc[ROWS][MT];
                [[unroll]] for (uint r = 0u; r < ROWS; r++)
                    [[unroll]] for (uint j = 0u; j < MT; j++) acc[r][j] = 0.0;
                uint c = m * S + lane;
                if ((p.unroll & 1u) != 0u && mc == 1u)
                    for (; c + 12u * S < nchunks; c += 16u * S) {
                        const uint a = p.a_off + m0 * p.a_stride;
                        float t[4][ROWS];
                        [[unroll]] for (uint u = 0u; u < 4u; u++)
                            [[unroll]] for (uint r = 0u; r < ROWS; r++) t[u][r] = dot32(rowb[r], c + 4u * u * S, a, p.K);
                        [[unroll]] for (uint u = 0u; u < 4u; u++)
                            [[unroll]] for (uint r = 0u; r < ROWS; r++) acc[r][0] += t[u][r];
                    }
                for (; c < nchunks; c += 4u * S)
                    [[unroll]] for (uint j = 0u; j < MT; j++) {
                        if (j >= mc) break;
                        uint a = p.a_off + (m0 + j) * p.a_stride;
                        [[unroll]] for (uint r = 0u; r < ROWS; r++) acc[r][j] += dot32(rowb[r], c, a, p.K);
                    }
                [[unroll]] for (uint r = 0u; r < ROWS; r++)
                    [[unroll]] for (uint j = 0u; j < MT; j++) {
                        if (j >= mc) break;
                        float s = subgroupAdd(acc[r][j]);
                        if (lane == 0u) kq_part[(q * KQ + m) * per + r * MT + j] = s;
                    }
            }
        }
        barrier();
        const uint t = gl_LocalInvocationIndex;
        if (t < gpw * per) {
            const uint qq = t / per, rj = t % per, r = rj / MT, j = rj % MT;
            const uint n = (g0 + qq) * ROWS + r, b = qq * KQ * per + rj;
            if (g0 + qq < groups && j < mc && n < p.N) {
                precise float s = kq_part[b];
                s += kq_part[b + per];
                s += kq_part[b + 2u * per];
                s += kq_part[b + 3u * per];
#ifdef KILN_RESADD
                D[p.d_off + n] = R[p.r_off + n] + s; /* one row (MT 1) */
#else
                D[p.d_off + (m0 + j) * p.d_stride + n] = s;
#endif
            }
        }
        barrier(); /* kq_part is free for the next pass */
    }
}
#endif

void main() {
    const uint S = gl_SubgroupSize, lane = gl_SubgroupInvocationID;
#ifdef KILN_PRENORM
    prenorm();
#endif
    const uint nchunks = (p.K + 31u) / 32u;
    const uint m0 = p.m_base + gl_WorkGroupID.y * MT;
    const uint mc = min(MT, p.M - m0);
#ifdef MULTI
    const uint groups = p.g_end[p.n_prod - 1u];
#else
    const uint groups = (p.N + ROWS - 1u) / ROWS;
    const uint w_off = p.w_off, w_stride = p.w_stride, d_off = p.d_off, d_stride = p.d_stride, N = p.N;
#endif
    const uint stride = gl_NumWorkGroups.x * gl_NumSubgroups;
#ifdef KILN_SWIGLU
    /* blocks of 32 rows per workgroup, uniform for its barriers */
    const uint nblk = (p.N[0] + 31u) / 32u;
    for (uint blk = gl_WorkGroupID.x; blk < nblk; blk += gl_NumWorkGroups.x) {
    for (uint g = 32u * blk + gl_SubgroupID; g < min(32u * blk + 32u, p.N[0]); g += gl_NumSubgroups) {
#else
#ifdef KILN_KQ
    if ((p.unroll & 2u) != 0u) kq_rows(m0, mc, nchunks); else
#endif
    /* g is the same for the whole subgroup: subgroupAdd sees every lane */
    for (uint gg = gl_WorkGroupID.x * gl_NumSubgroups + gl_SubgroupID; gg < groups; gg += stride) {
#endif
#if defined(KILN_SWIGLU)
#elif defined(MULTI)
        const uint pi = gg < p.g_end[0] ? 0u : gg < p.g_end[1] ? 1u : 2u;
        const uint g = gg - (pi == 0u ? 0u : p.g_end[pi - 1u]);
        const uint w_off = p.w_off[pi], w_stride = p.w_stride[pi], d_off = p.d_off[pi], d_stride = p.d_stride[pi];
        const uint N = p.N[pi];
#else
        const uint g = gg;
#endif
        float acc[NR][MT];
        [[unroll]] for (uint r = 0u; r < NR; r++)
            [[unroll]] for (uint j = 0u; j < MT; j++) acc[r][j] = 0.0;
        uint rowb[NR];
#ifdef KILN_SWIGLU
        rowb[0] = p.w_off[0] + g * p.w_stride[0];
        rowb[1] = p.w_off[1] + g * p.w_stride[1];
#else
        [[unroll]] for (uint r = 0u; r < ROWS; r++) rowb[r] = w_off + min(g * ROWS + r, N - 1u) * w_stride;
#endif
#if WTYPE == T_F16
#if defined(KILN_SWIGLU)
        if ((p.vec & 3u) == 3u) {
#elif defined(MULTI)
        if (((p.vec >> pi) & 1u) != 0u) {
#else
        if (p.vec != 0u) {
#endif
            const uint nv = p.K / 8u;
            uint v = lane;
            if ((p.unroll & 1u) != 0u && mc == 1u)
                for (; v + 3u * S < nv; v += 4u * S) {
                    uvec4 q[4][NR];
                    vec4 x[4][2];
                    const uint a = (p.a_off + m0 * p.a_stride) / 4u + 2u * v;
                    [[unroll]] for (uint u = 0u; u < 4u; u++) {
                        [[unroll]] for (uint r = 0u; r < NR; r++) q[u][r] = W4[rowb[r] / 16u + v + u * S];
                        x[u][0] = A4[a + 2u * u * S];
                        x[u][1] = A4[a + 2u * u * S + 1u];
                    }
                    [[unroll]] for (uint u = 0u; u < 4u; u++)
                        [[unroll]] for (uint r = 0u; r < NR; r++)
                            acc[r][0] += dot(vec4(unpackHalf2x16(q[u][r].x), unpackHalf2x16(q[u][r].y)), x[u][0]) +
                                         dot(vec4(unpackHalf2x16(q[u][r].z), unpackHalf2x16(q[u][r].w)), x[u][1]);
                }
            for (; v < nv; v += S) {
                vec2 w[NR][4];
                [[unroll]] for (uint r = 0u; r < NR; r++) {
                    uvec4 q = W4[rowb[r] / 16u + v];
                    w[r][0] = unpackHalf2x16(q.x);
                    w[r][1] = unpackHalf2x16(q.y);
                    w[r][2] = unpackHalf2x16(q.z);
                    w[r][3] = unpackHalf2x16(q.w);
                }
                /* constant token indices (j < mc is uniform): the sums stay in registers */
                [[unroll]] for (uint j = 0u; j < MT; j++) {
                    if (j >= mc) break;
                    uint a = (p.a_off + (m0 + j) * p.a_stride) / 4u + 2u * v;
                    vec4 x0 = A4[a], x1 = A4[a + 1u];
                    [[unroll]] for (uint r = 0u; r < NR; r++)
                        acc[r][j] += dot(vec4(w[r][0], w[r][1]), x0) + dot(vec4(w[r][2], w[r][3]), x1);
                }
            }
        } else
#endif
        {
        uint c = lane;
        if ((p.unroll & 1u) != 0u && mc == 1u)
            for (; c + 3u * S < nchunks; c += 4u * S) {
                const uint a = p.a_off + m0 * p.a_stride;
                float t[4][NR];
                [[unroll]] for (uint u = 0u; u < 4u; u++)
                    [[unroll]] for (uint r = 0u; r < NR; r++) t[u][r] = dot32(rowb[r], c + u * S, a, p.K);
                [[unroll]] for (uint u = 0u; u < 4u; u++)
                    [[unroll]] for (uint r = 0u; r < NR; r++) acc[r][0] += t[u][r];
            }
        for (; c < nchunks; c += S)
            [[unroll]] for (uint j = 0u; j < MT; j++) {
                if (j >= mc) break;
                uint a = p.a_off + (m0 + j) * p.a_stride;
                [[unroll]] for (uint r = 0u; r < NR; r++) acc[r][j] += dot32(rowb[r], c, a, p.K);
            }
        }
#ifdef KILN_SWIGLU
        const float sg = subgroupAdd(acc[0][0]), su = subgroupAdd(acc[1][0]);
        if (lane == 0u) {
            const float v = sg / (1.0 + exp(-sg)) * su; /* binary.comp's swiglu */
            D[p.d_off[0] + g] = v;
            sw_out[g - 32u * blk] = v;
        }
    }
    barrier();
    if (p.qmode != 0u) swiglu_quant(blk);
    barrier(); /* sw_out is free for the next block */
    }
#else
        [[unroll]] for (uint r = 0u; r < ROWS; r++) {
            uint n = g * ROWS + r;
            [[unroll]] for (uint j = 0u; j < MT; j++) {
                if (j >= mc) break;
                float s = subgroupAdd(acc[r][j]);
#ifdef KILN_RESADD
                if (lane == 0u && n < N) D[d_off + n] = R[p.r_off + n] + s; /* one row (MT 1) */
#else
                if (lane == 0u && n < N) D[d_off + (m0 + j) * d_stride + n] = s;
#endif
            }
        }
    }
#endif
#ifdef KILN_NORM
    /* every row of this workgroup is in D: visible before it counts */
    memoryBarrierBuffer();
    barrier();
    if (gl_LocalInvocationIndex == 0u)
        n_last = atomicAdd(CNT[0], 1u) == gl_NumWorkGroups.x * gl_NumWorkGroups.y - 1u;
    barrier();
    if (!n_last || (p.dbg & 1u) != 0u) return;
    memoryBarrierBuffer();
    if (gl_LocalInvocationIndex == 0u) CNT[0] = 0u; /* every other workgroup has counted */
    norm_row(gl_LocalInvocationIndex);
#endif
}
