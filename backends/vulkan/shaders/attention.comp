/*
 * attention.comp - causal attention of one query row and head per
 * workgroup over the paged F16 cache: position p of the token's sequence
 * is cell block_tables[attn_table[t] + p / block_size] * block_size +
 * p % block_size; head h reads KV head h / (n_head / n_head_kv).
 *
 * Positions are taken 64 at a time (one per invocation computes its score),
 * with an online softmax (running max m, sum l, unnormalised output o
 * rescaled when m grows); each invocation owns head dimensions tid,
 * tid + 64, ... of the output. A row's result depends only on its own
 * positions, never on what else is in the ubatch. Rows that attend to
 * nothing give zeros. dst may alias q (a workgroup reads only the query
 * slice it writes, before writing it).
 *
 * qmode 1..4 (vk_ops.c act_produce): also the head's output quantized for
 * the matmul that reads dst next, as quant_act.comp does (F16/BF16
 * rounding, or Q8_0/Q8_1 blocks of 32, which lie within a head: head_dim
 * is a multiple of 32 then), rows q_stride words apart in AQ.
 */
#version 450
layout(local_size_x = 64) in;

#include "attn_io.glsl"
shared float ps[64];
shared uint cells[64];
shared float red[64];

float vval(uint e) {
    uint w = VCache[e >> 1];
    return unpackHalf2x16((e & 1u) != 0u ? w >> 16 : w).x;
}

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint D_ = p.head_dim;
    uint hk = h / (p.n_head / p.n_head_kv);
    uint qo = p.q_off + t * p.q_stride + h * D_;
    for (uint i = tid; i < D_; i += 64u) qs[i] = Q[qo + i];
    uint nkv = uint(U[p.nkv_off + t]);
    uint tab = uint(U[p.tab_off + t]);
    float m = -1e30, l = 0.0;
    float o[MAXD / 64u];
    for (uint i = 0u; i < MAXD / 64u; i++) o[i] = 0.0;
    barrier();
    for (uint p0 = 0u; p0 < nkv; p0 += 64u) {
        uint pp = p0 + tid;
        float s = -1e30;
        if (pp < nkv) {
            uint cell = uint(U[p.bt_off + tab + pp / p.block_size]) * p.block_size + pp % p.block_size;
            cells[tid] = cell;
            uint kb = (cell * p.kv_dim + hk * D_) >> 1;
            float acc = 0.0;
            for (uint j = 0u; j < D_ / 2u; j++) {
                vec2 kv = unpackHalf2x16(KCache[kb + j]);
                acc += qs[2u * j] * kv.x + qs[2u * j + 1u] * kv.y;
            }
            s = acc * p.scale;
        }
        red[tid] = s;
        barrier();
        for (uint k = 32u; k > 0u; k >>= 1) {
            if (tid < k) red[tid] = max(red[tid], red[tid + k]);
            barrier();
        }
        float mnew = max(m, red[0]);
        barrier();
        float corr = exp(m - mnew);
        float pe = pp < nkv ? exp(s - mnew) : 0.0;
        ps[tid] = pe;
        red[tid] = pe;
        barrier();
        for (uint k = 32u; k > 0u; k >>= 1) {
            if (tid < k) red[tid] += red[tid + k];
            barrier();
        }
        l = l * corr + red[0];
        uint n = min(64u, nkv - p0);
        for (uint i = 0u; i < MAXD / 64u; i++) {
            uint d = tid + 64u * i;
            if (d >= D_) break;
            float acc = o[i] * corr;
            for (uint j = 0u; j < n; j++) acc += ps[j] * vval(cells[j] * p.kv_dim + hk * D_ + d);
            o[i] = acc;
        }
        m = mnew;
        barrier();
    }
    uint od = p.d_off + t * p.d_stride + h * D_;
    for (uint i = 0u; i < MAXD / 64u; i++) {
        uint d = tid + 64u * i;
        if (d < D_) {
            float v = l > 0.0 ? o[i] / l : 0.0;
            D[od + d] = v;
            qs[d] = v; /* for the quantization below; qs is no longer read */
        }
    }
    attn_quant_out(t, h, D_, tid, 64u);
}
