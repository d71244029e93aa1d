/*
 * quant_chunk.glsl - the quantization of quant_act.comp done by the
 * operation that produces the activations (rms_norm, add_rms_norm,
 * swiglu), so that decode steps have no quant_act dispatch: a workgroup of
 * 256 invocations quantizes 256 consecutive elements of a row, invocation
 * t holding element c0 + t. Same formulas as quant_act.comp: block maxima
 * (first index on ties), roundings and integer sums do not depend on how
 * the work is split, so the bytes equal quant_act's.
 *
 * The including shader declares the word buffer `AQ`, local_size_x = 256,
 * and includes common.glsl first. Called from uniform control flow (it has
 * barriers); mode: 1 F16, 2 BF16, 3 Q8_0, 4 Q8_1, 5 Q8_K (vk_ops.c act_mode);
 * a: the row's first word; K: the row's elements (a multiple of 32, of 256
 * for Q8_K).
 */
#ifndef KILN_QUANT_CHUNK_GLSL
#define KILN_QUANT_CHUNK_GLSL

shared float qc_abs[256];
shared uint qc_idx[256];
shared float qc_v[256];
shared int qc_q[256];

void quant_chunk(float v, uint t, uint c0, uint a, uint K, uint mode) {
    const bool live = c0 + t < K;
    if (mode == 1u || mode == 2u) {
        if (live) AQ[a + c0 + t] = floatBitsToUint(mode == 1u ? h2f(f2h(v)) : bf2f(f2bf(v)));
        return;
    }
    const uint group = mode == 5u ? 256u : 32u; /* elements per block */
    qc_abs[t] = live ? abs(v) : 0.0;
    qc_idx[t] = t;
    qc_v[t] = v;
    barrier();
    for (uint s = group / 2u; s > 0u; s >>= 1) {
        if ((t & (group - 1u)) < s) {
            uint o = t + s;
            if (qc_abs[o] > qc_abs[t] || (qc_abs[o] == qc_abs[t] && qc_idx[o] < qc_idx[t])) {
                qc_abs[t] = qc_abs[o];
                qc_idx[t] = qc_idx[o];
            }
        }
        barrier();
    }
    const uint lead = t & ~(group - 1u);
    const float amax = qc_abs[lead];
    int q = 0;
    float mx = 0.0;
    if (mode != 5u) {
        float id = amax != 0.0 ? 127.0 / amax : 0.0;
        q = clamp(int(roundEven(v * id)), -127, 127);
    } else if (amax != 0.0) {
        mx = qc_v[qc_idx[lead]];
        float inv = -127.0 / mx;
        q = clamp(int(roundEven(min(max(inv * v, -128.0), 127.0))), -128, 127);
    }
    qc_q[t] = live ? q : 0;
    barrier();
    if (t < 64u && c0 + 4u * t < K)
        AQ[a + (c0 + 4u * t) / 4u] = (uint(qc_q[4u * t]) & 0xffu) | ((uint(qc_q[4u * t + 1u]) & 0xffu) << 8) |
                                     ((uint(qc_q[4u * t + 2u]) & 0xffu) << 16) | ((uint(qc_q[4u * t + 3u]) & 0xffu) << 24);
    if (mode == 5u) {
        const uint blk = c0 / 256u;
        if ((t & 15u) == 0u) { /* sums of 16 values */
            int s = 0;
            for (uint k = 0u; k < 16u; k++) s += qc_q[t + k];
            AQ[a + K / 4u + K / 256u + 16u * blk + t / 16u] = uint(s);
        }
        if (t == 0u) AQ[a + K / 4u + blk] = amax != 0.0 ? floatBitsToUint(1.0 / (-127.0 / mx)) : 0u;
    } else if ((t & 31u) == 0u && live) {
        const uint blk = (c0 + t) / 32u;
        float d = amax / 127.0;
        AQ[a + K / 4u + blk] = floatBitsToUint(h2f(f2h(d)));
        if (mode == 4u) {
            int s = 0;
            for (uint k = 0u; k < 32u; k++) s += qc_q[t + k];
            AQ[a + K / 4u + K / 32u + blk] = floatBitsToUint(h2f(f2h(d * float(s))));
        }
    }
    barrier(); /* the shared arrays are free for the next chunk */
}

#endif
