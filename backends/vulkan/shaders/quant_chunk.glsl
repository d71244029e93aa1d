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

#ifndef KILN_QUANT_BLOCKS_ONLY
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

#if defined(KILN_QUANT_ROW_REGS) || defined(KILN_QUANT_BLOCKS_ONLY)
/* (A workgroup of 256 that holds a whole row of up to 4096 elements in
 * registers: add_rms_norm.comp, rms_norm.comp; it declares KILN_QUANT_ROW_REGS.) */
/* The activations quantized for the next matmul from the row held in
 * registers (element tid + 256 k in v[k]), as quant_chunk.glsl would,
 * with two barriers for the whole row instead of a reduction tree of
 * barriers per 256 elements: one invocation per 32-element block takes its
 * maximum (first index on ties) serially from shared memory; for Q8_K the
 * eight blocks' maxima of a super-block are then combined in block order,
 * which picks the same element as the tree. Same formulas, same bytes. */
/* element i at i + i / 32: the block owners' serial reads, 32 elements
 * apart otherwise, would all hit one shared-memory bank */
shared float qrow[256u * 16u + 128u];
#define QROW_AT(i) qrow[(i) + ((i) >> 5)]
shared float qb_max[128];
shared uint qb_idx[128];

/* The blocks of a row staged in qrow (element i at i + i / 32) quantized, invocation tid owning block tid: a workgroup of at least
 * K / 32 invocations. Called from uniform control flow after the barrier
 * that ends the staging. */
void quant_row_blocks(uint tid, uint a, uint K, uint mode) { /* K <= 4096 */
    uint nb = K / 32u, b = tid, e0 = 32u * tid; /* the block's first element */
    float amax = 0.0;
    uint ai = 0u;
    if (b < nb)
        for (uint k = 0u; k < 32u; k++) {
            float x = abs(QROW_AT(e0 + k));
            if (x > amax) {
                amax = x;
                ai = k;
            }
        }
    if (mode != 5u) {
        if (b >= nb) return;
#define QROW_Q8_X(k) QROW_AT(e0 + (k))
        KILN_Q8_BLOCK_STORE(QROW_Q8_X, amax, a + e0 / 4u, a + K / 4u + b, mode == 4u, a + K / 4u + K / 32u + b)
#undef QROW_Q8_X
        return;
    }
    if (b < nb) {
        qb_max[b] = amax;
        qb_idx[b] = e0 + ai;
    }
    barrier();
    if (b >= nb) return;
    uint sb = b / 8u, j0 = 8u * sb;
    float best = qb_max[j0];
    uint bi = qb_idx[j0];
    for (uint j = j0 + 1u; j < j0 + 8u; j++)
        if (qb_max[j] > best) {
            best = qb_max[j];
            bi = qb_idx[j];
        }
    float mx = best != 0.0 ? QROW_AT(bi) : 0.0;
    float inv = best != 0.0 ? -127.0 / mx : 0.0;
    int s16[2] = int[2](0, 0);
    for (uint w = 0u; w < 8u; w++) {
        uint word = 0u;
        for (uint k = 0u; k < 4u; k++) {
            int q = best != 0.0 ? clamp(int(roundEven(min(max(inv * QROW_AT(e0 + 4u * w + k), -128.0), 127.0))), -128, 127) : 0;
            s16[w / 4u] += q;
            word |= (uint(q) & 0xffu) << (8u * k);
        }
        AQ[a + e0 / 4u + w] = word;
    }
    uint in_sb = (e0 - 256u * sb) / 16u; /* the block's first 16-group in its super-block */
    AQ[a + K / 4u + K / 256u + 16u * sb + in_sb] = uint(s16[0]);
    AQ[a + K / 4u + K / 256u + 16u * sb + in_sb + 1u] = uint(s16[1]);
    if (b == j0) AQ[a + K / 4u + sb] = best != 0.0 ? floatBitsToUint(1.0 / (-127.0 / mx)) : 0u;
}

#ifdef KILN_QUANT_ROW_REGS
void quant_row_regs(float v[16], uint tid, uint a, uint K, uint mode) { /* K <= 4096 */
    if (mode == 1u || mode == 2u) {
        for (uint k = 0u; k < 16u; k++) {
            uint i = tid + 256u * k;
            if (i < K) AQ[a + i] = floatBitsToUint(mode == 1u ? h2f(f2h(v[k])) : bf2f(f2bf(v[k])));
        }
        return;
    }
    for (uint k = 0u; k < 16u; k++) {
        uint i = tid + 256u * k;
        if (i < K) qrow[i + (i >> 5)] = v[k];
    }
    barrier();
    quant_row_blocks(tid, a, K, mode);
}
#endif

#endif

#endif
