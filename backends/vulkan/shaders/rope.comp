/*
 * rope.comp - rotates pairs of each head in place with the cos/sin table
 * the host computed for this ubatch (computed on the host exactly as the
 * CPU backend does: [token][n_rot], n_rot/2 cos then n_rot/2 sin).
 * mode 0: adjacent pairs (x[2i], x[2i+1]); mode 2: halves (x[i], x[i+n_rot/2]).
 */
#version 450
layout(local_size_x = 64) in;

layout(binding = 0) buffer XB { float X[]; };
layout(binding = 1) readonly buffer TB { float T[]; };

layout(push_constant) uniform P {
    uint x_off, x_stride, n_head, head_dim, n_rot, mode, t_off, rows;
} p;

void main() {
    uint r = gl_WorkGroupID.y;
    uint half_ = p.n_rot / 2u;
    uint g = gl_GlobalInvocationID.x;
    if (g >= p.n_head * half_) return;
    uint h = g / half_, i = g % half_;
    uint base = p.x_off + r * p.x_stride + h * p.head_dim;
    uint ia = p.mode == 2u ? base + i : base + 2u * i;
    uint ib = p.mode == 2u ? base + i + half_ : base + 2u * i + 1u;
    float c = T[p.t_off + r * p.n_rot + i], s = T[p.t_off + r * p.n_rot + half_ + i];
    float x0 = X[ia], x1 = X[ib];
    /* precise: no fused multiply-add, as the CPU rounds (and rope_kv.comp) */
    precise float y0 = x0 * c - x1 * s;
    precise float y1 = x0 * s + x1 * c;
    X[ia] = y0;
    X[ib] = y1;
}
