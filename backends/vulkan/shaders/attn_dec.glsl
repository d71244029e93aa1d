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
 * attn_dec_rope.comp (rope_kv_attention, a single token): the workgroup
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
#define NSG (WG / SG)  /* subgroups per workgroup: 8 */
#define UP 4u            /* positions per subgroup step */
#define PL (MAXD / 2u / SG) /* dimension pairs per lane, at most */
shared float sg_m[NSG], sg_l[NSG];
shared float sg_o[NSG * MAXD];
#ifdef KILN_ATTN_DEC_ROPE
shared float s_k[MAXD];
shared uint s_kp[MAXD / 2u], s_vp[MAXD / 2u];
#endif

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint D_ = p.head_dim, D2 = p.head_dim / 2u;
    uint hk = h / (p.n_head / p.n_head_kv);
    uint qo = p.q_off + t * p.q_stride + h * D_;
    for (uint i = tid; i < D_; i += WG) qs[i] = Q[qo + i];
    uint nkv = uint(U[p.nkv_off + t]);
    uint tab = uint(U[p.tab_off + t]);
#ifdef KILN_ATTN_DEC_ROPE
    const uint own_cell = uint(U[p.cell_off + t]);
    uint kb = p.k_off + t * p.k_stride + hk * D_;
    for (uint i = tid; i < D_; i += WG) s_k[i] = Q[kb + i];
    barrier();
    /* rope_kv.comp's rotation of q (in place in X there) and of k */
    uint half_ = p.n_rot / 2u;
    for (uint i = tid; i < half_; i += WG) {
        uint ja = p.mode == 2u ? i : 2u * i;
        uint jb = p.mode == 2u ? i + half_ : 2u * i + 1u;
        float c = T[p.t_off + t * p.n_rot + i], s = T[p.t_off + t * p.n_rot + half_ + i];
        float x0 = qs[ja], x1 = qs[jb];
        precise float y0 = x0 * c - x1 * s;
        precise float y1 = x0 * s + x1 * c;
        qs[ja] = y0;
        qs[jb] = y1;
        x0 = s_k[ja];
        x1 = s_k[jb];
        precise float z0 = x0 * c - x1 * s;
        precise float z1 = x0 * s + x1 * c;
        s_k[ja] = z0;
        s_k[jb] = z1;
    }
    barrier();
    /* the row as F16 pairs (kv_store.comp's rounding), stored once per KV head */
    uint vb = p.v_off + t * p.v_stride + hk * D_, ow = (own_cell * p.kv_dim + hk * D_) >> 1;
    for (uint i = tid; 2u * i < D_; i += WG) {
        uint kw = f2h(s_k[2u * i]) | (f2h(s_k[2u * i + 1u]) << 16);
        uint vw = f2h(Q[vb + 2u * i]) | (f2h(Q[vb + 2u * i + 1u]) << 16);
        s_kp[i] = kw;
        s_vp[i] = vw;
        if (h % (p.n_head / p.n_head_kv) == 0u) {
            KCache[ow + i] = kw;
            VCache[ow + i] = vw;
        }
    }
#endif
    barrier();
    uint sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
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
    uint hoff = hk * D_;
    for (uint p0 = sg; p0 < nkv; p0 += UP * NSG) {
        /* positions p0 + NSG * u: their cells, then all their K and V */
        uint cb[UP];
        bool own[UP];
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            uint pu = min(p0 + NSG * u, nkv - 1u);
            uint cell = uint(U[p.bt_off + tab + pu / p.block_size]) * p.block_size + pu % p.block_size;
            cb[u] = (cell * p.kv_dim + hoff) >> 1;
#ifdef KILN_ATTN_DEC_ROPE
            own[u] = cell == own_cell;
#else
            own[u] = false;
#endif
        }
        vec2 kv[UP][PL], vv[UP][PL];
        [[unroll]] for (uint u = 0u; u < UP; u++)
            [[unroll]] for (uint i = 0u; i < PL; i++) {
                uint j = lane + SG * i;
                bool in_ = j < D2;
#ifdef KILN_ATTN_DEC_ROPE
                if (own[u]) { /* the row being stored: the same F16 values */
                    kv[u][i] = in_ ? unpackHalf2x16(s_kp[j]) : vec2(0.0);
                    vv[u][i] = in_ ? unpackHalf2x16(s_vp[j]) : vec2(0.0);
                    continue;
                }
#endif
                kv[u][i] = in_ ? unpackHalf2x16(KCache[cb[u] + j]) : vec2(0.0);
                vv[u][i] = in_ ? unpackHalf2x16(VCache[cb[u] + j]) : vec2(0.0);
            }
        float sc[UP];
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            precise float su = 0.0;
            [[unroll]] for (uint i = 0u; i < PL; i++) su += qv[i].x * kv[u][i].x + qv[i].y * kv[u][i].y;
            sc[u] = subgroupAdd(su) * p.scale;
        }
        /* in position order, the online softmax of this subgroup */
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            if (p0 + NSG * u >= nkv) break;
            float mn = max(m, sc[u]);
            float corr = exp(m - mn), e = exp(sc[u] - mn);
            l = l * corr + e;
            [[unroll]] for (uint i = 0u; i < PL; i++) o[i] = o[i] * corr + e * vv[u][i];
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
