/*
 * q8k_block.glsl - one Q8_K super-block (256 values, staged by the caller
 * in shared qk_v[]) quantized into the word buffer AQ exactly as
 * quant_act.comp mode 5 writes it: the largest magnitude (first index on
 * ties), its signed value's scale, roundEven of the clamped products, the
 * sums of 16, and the scale as quant_act spells it (1 / inv rounds
 * differently). For the producers whose super-blocks span workgroups: the
 * last workgroup of a block, found by a counter, calls it (attn_io.glsl's
 * attention output, mmv.glsl KILN_SWIGLU). The including shader declares
 * `AQ` and includes common.glsl first. Called from uniform control flow
 * (barriers) by all `nthreads` invocations (a power of two); the first
 * min(nthreads, 256) reduce.
 */
#ifndef KILN_Q8K_BLOCK_GLSL
#define KILN_Q8K_BLOCK_GLSL

shared float qk_v[256], qk_abs[256];
shared uint qk_idx[256];
shared int qk_q[256];
shared bool qk_last;

/* a: the row's first word in AQ, K its elements, blk the super-block */
void q8k_block_store(uint tid, uint nthreads, uint a, uint K, uint blk) {
    const uint n = min(nthreads, 256u);
    barrier(); /* qk_v is staged */
    float best = -1.0;
    uint bi = 0u;
    if (tid < n)
        for (uint i = tid; i < 256u; i += n) /* increasing i: the first index on ties */
            if (abs(qk_v[i]) > best) { best = abs(qk_v[i]); bi = i; }
    if (tid < n) {
        qk_abs[tid] = best;
        qk_idx[tid] = bi;
    }
    barrier();
    for (uint s = n / 2u; s > 0u; s >>= 1) {
        if (tid < s) {
            uint o = tid + s;
            if (qk_abs[o] > qk_abs[tid] || (qk_abs[o] == qk_abs[tid] && qk_idx[o] < qk_idx[tid])) {
                qk_abs[tid] = qk_abs[o];
                qk_idx[tid] = qk_idx[o];
            }
        }
        barrier();
    }
    const float amax = qk_abs[0], mx = qk_v[qk_idx[0]];
    const float inv = amax != 0.0 ? -127.0 / mx : 0.0;
    for (uint i = tid; i < 256u; i += nthreads)
        qk_q[i] = amax != 0.0 ? clamp(int(roundEven(min(max(inv * qk_v[i], -128.0), 127.0))), -128, 127) : 0;
    barrier();
    for (uint w = tid; w < 64u; w += nthreads)
        AQ[a + 64u * blk + w] = (uint(qk_q[4u * w]) & 0xffu) | ((uint(qk_q[4u * w + 1u]) & 0xffu) << 8) |
                                ((uint(qk_q[4u * w + 2u]) & 0xffu) << 16) | ((uint(qk_q[4u * w + 3u]) & 0xffu) << 24);
    for (uint j = tid; j < 16u; j += nthreads) {
        int sum = 0;
        for (uint k = 0u; k < 16u; k++) sum += qk_q[16u * j + k];
        AQ[a + K / 4u + K / 256u + 16u * blk + j] = uint(sum);
    }
    if (tid == 0u) AQ[a + K / 4u + blk] = amax != 0.0 ? floatBitsToUint(1.0 / (-127.0 / mx)) : 0u;
    barrier(); /* the shared arrays are free for the next block */
}

#endif
