/*
 * attn_dec.comp - attention.comp's operation (same bindings, push
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
 */
#version 450
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

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint D_ = p.head_dim, D2 = p.head_dim / 2u;
    uint hk = h / (p.n_head / p.n_head_kv);
    uint qo = p.q_off + t * p.q_stride + h * D_;
    for (uint i = tid; i < D_; i += WG) qs[i] = Q[qo + i];
    uint nkv = uint(U[p.nkv_off + t]);
    uint tab = uint(U[p.tab_off + t]);
    barrier();
    uint sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
    vec2 qv[PL], o[PL];
    for (uint i = 0u; i < PL; i++) {
        uint j = lane + SG * i;
        qv[i] = j < D2 ? vec2(qs[2u * j], qs[2u * j + 1u]) : vec2(0.0);
        o[i] = vec2(0.0);
    }
    float m = -1e30, l = 0.0;
    uint hoff = hk * D_;
    for (uint p0 = sg; p0 < nkv; p0 += UP * NSG) {
        /* positions p0 + NSG * u: their cells, then all their K and V */
        uint cb[UP];
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            uint pu = min(p0 + NSG * u, nkv - 1u);
            uint cell = uint(U[p.bt_off + tab + pu / p.block_size]) * p.block_size + pu % p.block_size;
            cb[u] = (cell * p.kv_dim + hoff) >> 1;
        }
        vec2 kv[UP][PL], vv[UP][PL];
        [[unroll]] for (uint u = 0u; u < UP; u++)
            [[unroll]] for (uint i = 0u; i < PL; i++) {
                uint j = lane + SG * i;
                bool in_ = j < D2;
                kv[u][i] = in_ ? unpackHalf2x16(KCache[cb[u] + j]) : vec2(0.0);
                vv[u][i] = in_ ? unpackHalf2x16(VCache[cb[u] + j]) : vec2(0.0);
            }
        float sc[UP];
        [[unroll]] for (uint u = 0u; u < UP; u++) {
            float su = 0.0;
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
    float L = 0.0;
    for (uint s = 0u; s < NSG; s++) L += sg_l[s] * exp(sg_m[s] - M);
    barrier(); /* qs is rewritten below */
    uint od = p.d_off + t * p.d_stride + h * D_;
    for (uint d = tid; d < D_; d += WG) {
        float a = 0.0;
        for (uint s = 0u; s < NSG; s++) a += sg_o[s * MAXD + d] * exp(sg_m[s] - M);
        float v = L > 0.0 ? a / L : 0.0;
        D[od + d] = v;
        qs[d] = v; /* for the quantization below */
    }
    attn_quant_out(t, h, D_, tid, WG);
}
