/*
 * rope_kv.comp - rope of q, rope of k and the KV store of k and v in one
 * dispatch (decode steps), with rope.comp's and kv_store.comp's arithmetic.
 * q, k and v are rows of one activation buffer (X, offsets in words);
 * the host checked that both ropes use the same table (T, as rope.comp).
 *
 * Workgroups (x, row): x < q_groups rotate 64 pairs of q each, as
 * rope.comp; workgroup q_groups + h takes KV head h: its k values go
 * through shared memory (a NEOX pair is two halves of different cache
 * words), are rotated, written back to k and, with v's, stored as F16 into
 * cell kv_cell[row] (kv_store.comp's rounding).
 */
#version 450
layout(local_size_x = 64) in;

layout(binding = 0) buffer XB { float X[]; };
layout(binding = 1) readonly buffer TB { float T[]; };
layout(binding = 2) buffer KC { uint KCache[]; };
layout(binding = 3) buffer VC { uint VCache[]; };
layout(binding = 4) readonly buffer UB { int U[]; };

layout(push_constant) uniform P {
    uint q_off, q_stride, k_off, k_stride, v_off, v_stride;  /* words */
    uint n_head, head_dim, n_rot, mode, t_off, q_groups;
    uint kv_dim, cell_off;
} p;

#include "common.glsl"

#define MAXD 256u
shared float s_k[MAXD];

void main() {
    uint r = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint half_ = p.n_rot / 2u;
    if (gl_WorkGroupID.x < p.q_groups) {
        uint g = gl_GlobalInvocationID.x;
        if (g >= p.n_head * half_) return;
        uint h = g / half_, i = g % half_;
        uint base = p.q_off + r * p.q_stride + h * p.head_dim;
        uint ia = p.mode == 2u ? base + i : base + 2u * i;
        uint ib = p.mode == 2u ? base + i + half_ : base + 2u * i + 1u;
        float c = T[p.t_off + r * p.n_rot + i], s = T[p.t_off + r * p.n_rot + half_ + i];
        float x0 = X[ia], x1 = X[ib];
        precise float y0 = x0 * c - x1 * s;
        precise float y1 = x0 * s + x1 * c;
        X[ia] = y0;
        X[ib] = y1;
        return;
    }
    uint h = gl_WorkGroupID.x - p.q_groups;
    uint kb = p.k_off + r * p.k_stride + h * p.head_dim;
    for (uint j = tid; j < p.head_dim; j += 64u) s_k[j] = X[kb + j];
    barrier();
    for (uint i = tid; i < half_; i += 64u) {
        uint ja = p.mode == 2u ? i : 2u * i;
        uint jb = p.mode == 2u ? i + half_ : 2u * i + 1u;
        float c = T[p.t_off + r * p.n_rot + i], s = T[p.t_off + r * p.n_rot + half_ + i];
        float x0 = s_k[ja], x1 = s_k[jb];
        precise float y0 = x0 * c - x1 * s;
        precise float y1 = x0 * s + x1 * c;
        s_k[ja] = y0;
        s_k[jb] = y1;
        X[kb + ja] = y0;
        X[kb + jb] = y1;
    }
    barrier();
    uint cell = uint(U[p.cell_off + r]);
    uint o = (cell * p.kv_dim + h * p.head_dim) / 2u;
    uint vb = p.v_off + r * p.v_stride + h * p.head_dim;
    for (uint i = tid; 2u * i < p.head_dim; i += 64u) {
        KCache[o + i] = f2h(s_k[2u * i]) | (f2h(s_k[2u * i + 1u]) << 16);
        VCache[o + i] = f2h(X[vb + 2u * i]) | (f2h(X[vb + 2u * i + 1u]) << 16);
    }
}
