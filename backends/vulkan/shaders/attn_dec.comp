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

#define MAXD 256u

layout(binding = 0) readonly buffer QB { float Q[]; };
layout(binding = 1) readonly buffer KC { uint KCache[]; };
layout(binding = 2) readonly buffer VC { uint VCache[]; };
layout(binding = 3) writeonly buffer DB { float D[]; };
layout(binding = 4) readonly buffer UB { int U[]; };
layout(binding = 5) buffer AQB { uint AQ[]; };

layout(push_constant) uniform P {
    uint q_off, q_stride, d_off, d_stride;
    uint n_head, n_head_kv, head_dim, kv_dim;
    float scale;
    uint block_size, tab_off, nkv_off, bt_off;
    uint qmode, a_stride, row_k;  /* row_k: elements of a dst row (n_head * head_dim) */
} p;

#include "common.glsl"

shared float qs[MAXD];
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
    if (p.qmode == 0u) return;
    barrier();
    uint a = t * p.a_stride, e0 = h * D_; /* the head's first element in the row */
    if (p.qmode <= 2u) {
        for (uint d = tid; d < D_; d += WG)
            AQ[a + e0 + d] = floatBitsToUint(p.qmode == 1u ? h2f(f2h(qs[d])) : bf2f(f2bf(qs[d])));
        return;
    }
    /* one invocation per 32-block: its maximum, then quant_act's roundings */
    uint b0 = 32u * tid;
    if (b0 >= D_) return;
    float amax = 0.0;
    for (uint k = 0u; k < 32u; k++) amax = max(amax, abs(qs[b0 + k]));
    float id = amax != 0.0 ? 127.0 / amax : 0.0;
    int sum = 0;
    for (uint w = 0u; w < 8u; w++) {
        uint word = 0u;
        for (uint k = 0u; k < 4u; k++) {
            int q = clamp(int(roundEven(qs[b0 + 4u * w + k] * id)), -127, 127);
            sum += q;
            word |= (uint(q) & 0xffu) << (8u * k);
        }
        AQ[a + (e0 + b0) / 4u + w] = word;
    }
    uint blk = (e0 + b0) / 32u;
    float dd = amax / 127.0;
    AQ[a + p.row_k / 4u + blk] = floatBitsToUint(h2f(f2h(dd)));
    if (p.qmode == 4u) AQ[a + p.row_k / 4u + p.row_k / 32u + blk] = floatBitsToUint(h2f(f2h(dd * float(sum))));
}
