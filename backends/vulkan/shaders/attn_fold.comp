/*
 * attn_fold.comp - a long context's decode attention, second dispatch:
 * folds the splits attn_dec.glsl left in Part (per row t and head h, the
 * splits of p.split_len positions below the row's n_kv, each its max M,
 * sum L and unnormalised output) in split order into the head's output,
 * with zeros for a row that attends to nothing, then quantizes it for the
 * next matmul as attn_dec does (attn_quant_out). A workgroup per (head,
 * row), attn_dec's bindings and push constants.
 */
#version 450
layout(local_size_x = 128) in;

#include "attn_io.glsl"

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint D_ = p.head_dim;
    uint nkv = uint(U[p.nkv_off + t]);
    uint ns = (nkv + p.split_len - 1u) / p.split_len;
    uint po = p.p_off + (t * p.n_head + h) * p.n_splits * (D_ + 2u);
    float M = -1e30;
    for (uint s = 0u; s < ns; s++) M = max(M, Part[po + s * (D_ + 2u)]);
    precise float L = 0.0;
    for (uint s = 0u; s < ns; s++) L += Part[po + s * (D_ + 2u) + 1u] * exp(Part[po + s * (D_ + 2u)] - M);
    uint od = p.d_off + t * p.d_stride + h * D_;
    for (uint d = tid; d < D_; d += 128u) {
        precise float a = 0.0;
        for (uint s = 0u; s < ns; s++) a += Part[po + s * (D_ + 2u) + 2u + d] * exp(Part[po + s * (D_ + 2u)] - M);
        float v = L > 0.0 ? a / L : 0.0;
        D[od + d] = v;
        qs[d] = v; /* for the quantization below */
    }
    attn_quant_out(t, h, D_, tid, 128u);
}
