/*
 * attn_fold.comp - a long context's decode attention, second dispatch:
 * folds the splits attn_dec.glsl left in Part (per row t and head h, the
 * splits of attn_split_len positions below the row's n_kv, each its max M,
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
    uint nkv = uint(U[p.nkv_off + t]);
    uint sl = attn_split_len(nkv);
    attn_fold_row(t, h, p.head_dim, (nkv + sl - 1u) / sl, tid, 128u);
}
