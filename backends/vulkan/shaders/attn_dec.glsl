/*
 * attn_dec.glsl - attention.comp's operation (same bindings, push
 * constants, causal rows, zeros for a row that attends to nothing,
 * quantized output for the next matmul) laid out for decode steps on GPUs
 * with subgroup arithmetic: a workgroup of eight subgroups per (row,
 * head); each subgroup takes positions sg, sg + n_sg, ... four at a time
 * with their loads issued together, its lanes splitting the head's
 * dimensions in pairs (a position's score is one subgroupAdd, no
 * barriers), with an online softmax of its own; the subgroups' states are
 * merged through shared memory at the end. attention.comp walks positions
 * 64 at a time with a dozen barriers per chunk and a serial loop over
 * them for V: 29 us per layer of a short decode step on the H100, most
 * of it latency (bench/NOTES.md). SG (specialization constant 0, the
 * device's subgroup size, 8..32) sizes the per-lane arrays.
 *
 * Included by attn_dec.comp and, with KILN_ATTN_DEC_ROPE defined, by
 * attn_dec_rope.comp and attn_dec_rope1.comp (rope_kv_attention, a single
 * token; the second with KILN_ATTN_DEC_EARLY): the workgroup
 * first does rope_kv.comp's work for its head (rope of q; rope of its KV
 * head's k, stored with v as F16 into the token's cell by the group's first
 * head), with the same arithmetic, and takes the token's own K/V row from
 * shared memory instead of the cache it is being stored to; the values are
 * those the cache would hold, so the bits equal rope_kv + attn_dec.
 */
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
/* specialization constants: 0 the subgroup size, 2 the workgroup size
 * (eight subgroups) */
layout(local_size_x_id = 2) in;
layout(constant_id = 0) const uint SG = 32u;
layout(constant_id = 2) const uint WG = 256u;

#include "attn_io.glsl"
/* splits counted in, per (row, head), from word p.cnt_off: the last split
 * of a row to finish folds it (attn_fold_row) and sets its count back to
 * 0 for the next dispatch */
layout(binding = 10) coherent buffer CB { uint CNT[]; };
shared bool fold_last;
#define NSG (WG / SG)  /* subgroups per workgroup: 8 */
/* positions per subgroup step, their loads issued together: specialization
 * constant 11 (KILN_VK_ATTN_UP); the softmax still takes them one at a
 * time in position order, so any value gives the same bits */
layout(constant_id = 11) const uint UP = 4u;
/* KILN_ATTN_DEC_EARLY (attn_dec_rope1.comp, a context without splits):
 * the subgroup's first positions' K and V loaded before the q (and rope)
 * prologue, not in the loop like every later step's. 16 more registers
 * on the H100 (80): where a long context's splits fill the device, fewer
 * workgroups per SM cost more than the overlap gains (bench/NOTES.md) */
#ifdef KILN_ATTN_DEC_EARLY
#define EARLY 1u
#else
#define EARLY 0u
#endif
#define PL (MAXD / 2u / SG) /* dimension pairs per lane, at most */
shared float sg_m[NSG], sg_l[NSG];
shared float sg_o[NSG * MAXD];
#ifdef KILN_ATTN_DEC_ROPE
shared float s_k[MAXD];
shared uint s_kp[MAXD / 2u], s_vp[MAXD / 2u];
#endif

/* The word of the cache row of position pu of the token's sequence (table
 * at tab) where this KV head's values start. With ROPE the token's own
 * cell, whose row this dispatch stores, is read from shared memory
 * instead (*own); its load goes to another cell, which nothing writes in
 * this dispatch, so that a step's loads stay one batch. */
uint kv_base(uint pu, uint tab, uint own_cell, uint hoff, out bool own) {
    uint cell = uint(U[p.bt_off + tab + pu / p.block_size]) * p.block_size + pu % p.block_size;
#ifdef KILN_ATTN_DEC_ROPE
    own = cell == own_cell;
    if (own) cell = own_cell == 0u ? 1u : 0u;
#else
    own = false;
#endif
    return (cell * p.kv_dim + hoff) >> 1;
}

/* positions P0 + NSG * u (u < UP, the last one repeated past pe): their
 * K and V as packed F16 pairs (half the registers of unpacked ones) */
#define KV_LOAD(P0)                                                                        \
    [[unroll]] for (uint u = 0u; u < UP; u++) {                                            \
        const uint cbu = kv_base(min((P0) + NSG * u, pe - 1u), tab, own_cell, hoff, own[u]); \
        [[unroll]] for (uint i = 0u; i < PL; i++) {                                        \
            const uint j = lane + SG * i;                                                  \
            kw[u][i] = j < D2 ? KCache[cbu + j] : 0u;                                      \
            vw[u][i] = j < D2 ? VCache[cbu + j] : 0u;                                      \
        }                                                                                  \
    }

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint D_ = p.head_dim, D2 = p.head_dim / 2u;
    uint hk = h / (p.n_head / p.n_head_kv);
    uint qo = p.q_off + t * p.q_stride + h * D_;
    uint nkv = uint(U[p.nkv_off + t]);
    uint tab = uint(U[p.tab_off + t]);
    /* positions [pb, pe): the split's (a long context's decode, launched
     * over the whole cache: splits past nkv leave, split 0 stays, which
     * stores the row with ROPE), or all of them */
    uint split = gl_WorkGroupID.z, pb = 0u, pe = nkv;
    const uint sl = p.split_len != 0u ? attn_split_len(nkv) : 0u;
    if (sl != 0u) {
        pb = split * sl;
        pe = min(nkv, pb + sl);
        if (pb >= nkv && split != 0u) return; /* the whole workgroup */
    }
    uint sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
    uint hoff = hk * D_;
#ifdef KILN_ATTN_DEC_ROPE
    const uint own_cell = uint(U[p.cell_off + t]);
#else
    const uint own_cell = 0u;
#endif
    /* the subgroup's first positions' K and V, loaded before the q (and
     * rope) prologue below so that their latency overlaps its barriers
     * (EARLY; the same values in the same order: the same bits) */
    uint kw[UP][PL], vw[UP][PL];
    bool own[UP];
    uint p0 = pb + sg;
    if (EARLY != 0u && p0 < pe) KV_LOAD(p0)
#ifdef KILN_ATTN_DEC_ROPE
    /* rope_kv.comp's work for this head, every global load of it issued
     * before the first use (one round of latency): invocation e rotates
     * pair e of q and of k (e < n_rot / 2), copies element e past the
     * rotated part, and rounds v's pair e to F16 */
    uint half_ = p.n_rot / 2u;
    uint kb = p.k_off + t * p.k_stride + hk * D_, vb = p.v_off + t * p.v_stride + hk * D_;
    for (uint e = tid; e < D_; e += WG) {
        bool rot = e < half_, tail = e >= p.n_rot, vp = 2u * e < D_;
        uint ja = p.mode == 2u ? e : 2u * e;
        uint jb = p.mode == 2u ? e + half_ : 2u * e + 1u;
        float q0 = 0.0, q1 = 0.0, k0 = 0.0, k1 = 0.0, c = 0.0, sn = 0.0, qt = 0.0, kt = 0.0, v0 = 0.0, v1 = 0.0;
        if (rot) {
            q0 = Q[qo + ja];
            q1 = Q[qo + jb];
            k0 = Q[kb + ja];
            k1 = Q[kb + jb];
            c = T[p.t_off + t * p.n_rot + e];
            sn = T[p.t_off + t * p.n_rot + half_ + e];
        }
        if (tail) {
            qt = Q[qo + e];
            kt = Q[kb + e];
        }
        if (vp) {
            v0 = Q[vb + 2u * e];
            v1 = Q[vb + 2u * e + 1u];
        }
        if (rot) {
            precise float y0 = q0 * c - q1 * sn;
            precise float y1 = q0 * sn + q1 * c;
            qs[ja] = y0;
            qs[jb] = y1;
            precise float z0 = k0 * c - k1 * sn;
            precise float z1 = k0 * sn + k1 * c;
            s_k[ja] = z0;
            s_k[jb] = z1;
        }
        if (tail) {
            qs[e] = qt;
            s_k[e] = kt;
        }
        if (vp) s_vp[e] = f2h(v0) | (f2h(v1) << 16); /* kv_store.comp's rounding */
    }
    barrier();
    /* k as F16 pairs; the group's first head stores the row */
    uint ow = (own_cell * p.kv_dim + hk * D_) >> 1;
    bool store = h % (p.n_head / p.n_head_kv) == 0u && split == 0u;
    for (uint i = tid; 2u * i < D_; i += WG) {
        uint kw = f2h(s_k[2u * i]) | (f2h(s_k[2u * i + 1u]) << 16);
        s_kp[i] = kw;
        if (store) {
            KCacheW[ow + i] = kw;
            VCacheW[ow + i] = s_vp[i];
        }
    }
#else
    for (uint i = tid; i < D_; i += WG) qs[i] = Q[qo + i];
#endif
    barrier();
    /* precise: no contraction into FMAs that the compiler would choose per
     * variant (attn_dec_rope.comp's bits must equal this one's) */
    vec2 qv[PL];
    precise vec2 o[PL];
    for (uint i = 0u; i < PL; i++) {
        uint j = lane + SG * i;
        qv[i] = j < D2 ? vec2(qs[2u * j], qs[2u * j + 1u]) : vec2(0.0);
        o[i] = vec2(0.0);
    }
    float m = -1e30;
    precise float l = 0.0;
    /* positions p0 + NSG * u, their K and V in kw, vw (KV_LOAD) */
    for (; p0 < pe; p0 += UP * NSG) {
        if (EARLY == 0u || p0 != pb + sg) KV_LOAD(p0)
#ifdef KILN_ATTN_DEC_ROPE
        [[unroll]] for (uint u = 0u; u < UP; u++)
            [[unroll]] for (uint i = 0u; i < PL; i++) {
                uint j = lane + SG * i;
                kw[u][i] = own[u] && j < D2 ? s_kp[j] : kw[u][i]; /* the same F16 values the cell gets */
                vw[u][i] = own[u] && j < D2 ? s_vp[j] : vw[u][i];
            }
#endif
        float sc[UP];
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            precise float su = 0.0;
            [[unroll]] for (uint i = 0u; i < PL; i++) {
                vec2 k2 = unpackHalf2x16(kw[u][i]);
                su += qv[i].x * k2.x + qv[i].y * k2.y;
            }
            sc[u] = subgroupAdd(su) * p.scale;
        }
        /* in position order, the online softmax of this subgroup */
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            if (p0 + NSG * u >= pe) break;
            float mn = max(m, sc[u]);
            float corr = exp(m - mn), e = exp(sc[u] - mn);
            l = l * corr + e;
            [[unroll]] for (uint i = 0u; i < PL; i++) o[i] = o[i] * corr + e * unpackHalf2x16(vw[u][i]);
            m = mn;
        }
    }
    /* merge the subgroups' states (a subgroup that saw no position has
     * m = -1e30, l = 0 and adds nothing) */
    if (lane == 0u) {
        sg_m[sg] = m;
        sg_l[sg] = l;
    }
    for (uint i = 0u; i < PL; i++) {
        uint j = lane + SG * i;
        if (j < D2) {
            sg_o[sg * MAXD + 2u * j] = o[i].x;
            sg_o[sg * MAXD + 2u * j + 1u] = o[i].y;
        }
    }
    barrier();
    float M = -1e30;
    for (uint s = 0u; s < NSG; s++) M = max(M, sg_m[s]);
    precise float L = 0.0;
    for (uint s = 0u; s < NSG; s++) L += sg_l[s] * exp(sg_m[s] - M);
    if (sl != 0u) { /* the split's state, then the fold */
        const uint ns = (nkv + sl - 1u) / sl;
        if (pb < nkv) { /* not split 0 of a row that attends to nothing */
            uint po = p.p_off + ((t * p.n_head + h) * p.n_splits + split) * (D_ + 2u);
            for (uint d = tid; d < D_; d += WG) {
                precise float a = 0.0;
                for (uint s = 0u; s < NSG; s++) a += sg_o[s * MAXD + d] * exp(sg_m[s] - M);
                Part[po + 2u + d] = a;
            }
            if (tid == 0u) {
                Part[po] = M;
                Part[po + 1u] = L;
            }
        }
        if (p.cnt_off == 0u) return; /* attn_fold.comp folds */
        if (ns > 0u) {
            /* this split's state visible before it counts; the last of
             * the row's ns splits (every other one has counted) folds */
            memoryBarrierBuffer();
            barrier();
            if (tid == 0u) fold_last = atomicAdd(CNT[p.cnt_off + t * p.n_head + h], 1u) == ns - 1u;
            barrier();
            if (!fold_last) return;
            memoryBarrierBuffer();
            if (tid == 0u) CNT[p.cnt_off + t * p.n_head + h] = 0u;
        }
        barrier(); /* qs is rewritten by the fold */
        attn_fold_row(t, h, D_, ns, tid, WG);
        return;
    }
    barrier(); /* qs is rewritten below */
    uint od = p.d_off + t * p.d_stride + h * D_;
    for (uint d = tid; d < D_; d += WG) {
        precise float a = 0.0;
        for (uint s = 0u; s < NSG; s++) a += sg_o[s * MAXD + d] * exp(sg_m[s] - M);
        float v = L > 0.0 ? a / L : 0.0;
        D[od + d] = v;
        qs[d] = v; /* for the quantization below */
    }
    attn_quant_out(t, h, D_, tid, WG);
}
