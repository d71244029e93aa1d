/*
 * cuda_attn.cu - causal attention over the paged F16 KV cache.
 *
 * For token t and head h: s_p = (q . k_p) * scale over the positions
 * p < attn_n_kv[t] of its sequence, softmax, out = sum_p P_p v_p, with K/V
 * row p of KV head h / (n_head / n_head_kv) in cell
 * block_tables[attn_table[t] + p / block_size] * block_size + p % block_size.
 *
 * Split-KV ("flash decoding"): positions are cut into splits of
 * KCU_ATTN_SPLIT_DECODE or _PREFILL positions; a block of 4 warps computes one (token, head, split):
 * each warp runs an online softmax (running max m, sum l, unnormalised
 * output) over every 4th position, the 4 warps are merged in order and the
 * split's (m, l, O) written to scratch; a second kernel folds the splits of
 * each (token, head) in order. The split length is fixed, so a row's result
 * does not depend on the grid (number of splits launched), on the other
 * tokens of the ubatch, or on the decode being replayed from a graph: a
 * sequence attends identically alone or in a batch.
 *
 * Decode steps (at most 8 tokens) launch splits for the whole cache
 * (n_cells), so the launch does not change as the sequence grows and the
 * step can be replayed from a CUDA graph; splits past a token's n_kv exit
 * at once, without waiting on the kernel ahead. A single token's rope, KV
 * store, splits and fold are one kernel (rope_kv_attention, attn_dec_kernel
 * in KCU_DEC_ROPE mode), with the bits of the separate kernels. Ubatches of up to KCU_ATTN_MMA_MIN tokens (speculative verify
 * batches) use the same kernel and split length over the longest sequence,
 * so their rows are bit for bit the rows decode steps compute. Larger
 * ubatches go to the tensor-core kernel (cuda_attn_mma.cu), or where it
 * does not apply (head sizes, KILN_CUDA_ATTN=tile) to tiles of 8 tokens
 * with 128-position splits (attn_tile_kernel).
 */
#include <math.h>
#include <string.h>

#include <cuda/atomic>

#include "cuda_internal.cuh"

KCU_PDL_EARLY_DEFINE(kcu_attn_set_pdl_early)

/* positions per split: decode steps (at most 8 tokens) use short splits
 * (many blocks in flight, each a short chain of loads), prefill longer ones
 * (less scratch and folding). A row's result depends on the split length,
 * so it is fixed per path: decode rows agree whatever the batch size. */
#define KCU_ATTN_SPLIT_DECODE 32
#define KCU_ATTN_SPLIT_PREFILL 128
#define KCU_ATTN_PART_MAX (64u << 20) /* scratch bytes of partial results per launch */
#define KCU_ATTN_WARPS 4
#define KCU_ATTN_MMA_MIN 32 /* larger ubatches: tensor-core prefill kernel (cuda_attn_mma.cu) */

/* Prefill: a block computes (tile of up to TT tokens of one sequence, head,
 * split); every K/V row loaded serves all the tile's tokens, each with its
 * own causal limit n_kv, online softmax state and output. */
template <int DPL, int TT>
static __global__ void __launch_bounds__(KCU_ATTN_WARPS * 32)
    attn_tile_kernel(const float *q, uint64_t qs, const __half *kc, const __half *vc, int kv_dim,
                     const int32_t *attn_table, const int32_t *attn_n_kv, const int32_t *block_tables, int block_size,
                     int group, float scale, float *part, int n_splits, int tile0, int tok0, int split_len,
                     const int32_t *tiles) {
    kcu_pdl_wait();
    constexpr int D = DPL * 32;
    const int tile = tile0 + blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int start = tiles[2 * tile], cnt = tiles[2 * tile + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int nk[TT];
    int maxkv = 0;
#pragma unroll
    for (int j = 0; j < TT; j++) {
        nk[j] = j < cnt ? attn_n_kv[start + j] : 0;
        maxkv = max(maxkv, nk[j]);
    }
    const int p0 = split * split_len;
    if (p0 >= maxkv) return;
    const int p1 = min(maxkv, p0 + split_len);
    const int kvh = h / group;
    float qv[TT][DPL], acc[TT][DPL], m[TT], l[TT];
#pragma unroll
    for (int j = 0; j < TT; j++) {
        m[j] = -INFINITY;
        l[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            qv[j][i] = j < cnt ? q[(uint64_t)(start + j) * qs + (uint64_t)h * D + lane + 32 * i] : 0.0f;
            acc[j][i] = 0.0f;
        }
    }
    const int32_t *table = block_tables + attn_table[start];
    for (int p = p0 + warp; p < p1; p += KCU_ATTN_WARPS) {
        const uint64_t cell = (uint64_t)table[p / block_size] * block_size + p % block_size;
        const __half *kr = kc + cell * kv_dim + (uint64_t)kvh * D, *vr = vc + cell * kv_dim + (uint64_t)kvh * D;
        float kf[DPL], vf[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            kf[i] = __half2float(kr[lane + 32 * i]);
            vf[i] = __half2float(vr[lane + 32 * i]);
        }
#pragma unroll
        for (int j = 0; j < TT; j++) {
            if (p >= nk[j]) continue; /* warp-uniform */
            float sc = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) sc = fmaf(qv[j][i], kf[i], sc);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, o);
            sc *= scale;
            const float mn = fmaxf(m[j], sc);
            const float corr = expf(m[j] - mn), e = expf(sc - mn);
            l[j] = l[j] * corr + e;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[j][i] = acc[j][i] * corr + e * vf[i];
            m[j] = mn;
        }
    }
    __shared__ float sm[KCU_ATTN_WARPS][TT], sl[KCU_ATTN_WARPS][TT], so[KCU_ATTN_WARPS][D];
#pragma unroll
    for (int j = 0; j < TT; j++) {
        if (j >= cnt) break;
        __syncthreads();
        if (lane == 0) {
            sm[warp][j] = m[j];
            sl[warp][j] = l[j];
        }
#pragma unroll
        for (int i = 0; i < DPL; i++) so[warp][lane + 32 * i] = acc[j][i];
        __syncthreads();
        if (p0 >= nk[j]) continue; /* the fold reads only the splits below n_kv */
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < KCU_ATTN_WARPS; w++) M = fmaxf(M, sm[w][j]);
        float *out = part + (((uint64_t)(start + j - tok0) * gridDim.y + h) * n_splits + split) * (D + 2);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < KCU_ATTN_WARPS; w++)
                if (sm[w][j] != -INFINITY) o += so[w][d] * expf(sm[w][j] - M);
            out[2 + d] = o;
        }
        if (threadIdx.x == 0) {
            float L = 0.0f;
#pragma unroll
            for (int w = 0; w < KCU_ATTN_WARPS; w++)
                if (sm[w][j] != -INFINITY) L += sl[w][j] * expf(sm[w][j] - M);
            out[0] = M;
            out[1] = L;
        }
    }
}

/* Folds the ns splits' partial results p (each (M, L, O[D]), ns of them
 * D + 2 floats apart) of one (token, head) into its output row o, in split
 * order; xq/xd (or NULL): the row's int8 form for the next product. The
 * whole block calls it (it has barriers); the loads go to the L2 (other
 * blocks of the same grid may have written p). The splits' weights
 * exp(M_s - M) are computed once per split into shared memory, a chunk at
 * a time, and each thread's sums over the splits issue their loads in
 * batches: with a long context (128 splits at 4096 positions) the fold was
 * a chain of dependent L2 round trips per split (bench/NOTES.md). */
#define KCU_FOLD_CHUNK 256
#define KCU_FOLD_DPT 4 /* head_dim / blockDim at most: 256 / 64 */
static __device__ __forceinline__ void attn_fold_row(const float *p, int ns, int D, float *o, int h, int64_t K,
                                                     int8_t *xq, float *xd) {
    __shared__ float sw[KCU_FOLD_CHUNK], sls[KCU_FOLD_CHUNK], sred[32];
    __shared__ float s_m, s_l;
    const int nt = blockDim.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    float M = -INFINITY; /* the largest of the splits' maxima: exact in any order */
    for (int s = threadIdx.x; s < ns; s += nt) M = fmaxf(M, __ldcg(p + (uint64_t)s * (D + 2)));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    if (lane == 0) sred[wid] = M;
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = -INFINITY;
        for (int w = 0; w < nt / 32; w++) mm = fmaxf(mm, sred[w]);
        s_m = mm;
    }
    __syncthreads();
    M = s_m;
    float a[KCU_FOLD_DPT], L = 0.0f;
#pragma unroll
    for (int k = 0; k < KCU_FOLD_DPT; k++) a[k] = 0.0f;
    for (int c0 = 0; c0 < ns; c0 += KCU_FOLD_CHUNK) {
        const int cn = min(KCU_FOLD_CHUNK, ns - c0);
        for (int i = threadIdx.x; i < cn; i += nt) {
            const float *ps = p + (uint64_t)(c0 + i) * (D + 2);
            sw[i] = expf(__ldcg(ps) - M);
            sls[i] = __ldcg(ps + 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) /* in split order */
            for (int i = 0; i < cn; i++) L = fmaf(sls[i], sw[i], L);
#pragma unroll
        for (int k = 0; k < KCU_FOLD_DPT; k++) {
            const int d = threadIdx.x + k * nt;
            if (d >= D) break;
            const float *pd = p + (uint64_t)c0 * (D + 2) + 2 + d;
#pragma unroll 16
            for (int i = 0; i < cn; i++) a[k] = fmaf(__ldcg(pd + (uint64_t)i * (D + 2)), sw[i], a[k]);
        }
        __syncthreads(); /* sw is rewritten by the next chunk */
    }
    if (threadIdx.x == 0) s_l = L;
    __syncthreads();
    L = s_l;
#pragma unroll
    for (int k = 0; k < KCU_FOLD_DPT; k++) {
        const int d = threadIdx.x + k * nt;
        if (d >= D) break; /* D % 32 == 0: whole warps */
        const float v = ns > 0 && L > 0.0f ? a[k] / L : 0.0f;
        o[d] = v;
        if (xq) /* a warp holds one block of the row */
            kcu_q8_store(v, (int64_t)h * D + d, xq, xd);
    }
}

static __global__ void attn_fold_kernel(const float *part, const int32_t *attn_n_kv, int n_splits, int D, float *dst,
                                        uint64_t ds, int t0, int8_t *xq, float *xd, int split_len) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int t = t0 + blockIdx.x, h = blockIdx.y;
    const int n_kv = attn_n_kv[t];
    const int ns = (n_kv + split_len - 1) / split_len;
    const int64_t K = (int64_t)gridDim.y * D;
    attn_fold_row(part + ((uint64_t)blockIdx.x * gridDim.y + h) * n_splits * (D + 2), ns, D,
                  dst + (uint64_t)t * ds + (uint64_t)h * D, h, K, xq ? xq + (int64_t)t * K : NULL,
                  xq ? xd + (int64_t)t * (K / 32) : NULL);
}

/* Element e of a head's row (vh) after rope, with rope_kv_store_kernel's
 * arithmetic: pair j's rotation (cs[j], sn[j]) applied to (x0, x1). */
static __device__ __forceinline__ float attn_rope_elem(const float *vh, int e, int half, int neox, const float *cs,
                                                       const float *sn) {
    if (e >= 2 * half) return vh[e];
    const int j = neox ? (e < half ? e : e - half) : e >> 1;
    const bool first = neox ? e < half : !(e & 1);
    const float x0 = vh[neox ? j : 2 * j], x1 = vh[neox ? j + half : 2 * j + 1];
    return first ? __fsub_rn(__fmul_rn(x0, cs[j]), __fmul_rn(x1, sn[j]))
                 : __fadd_rn(__fmul_rn(x0, sn[j]), __fmul_rn(x1, cs[j]));
}

/* Decode attention, a block of 4 warps per (token, head, split): each warp
 * runs an online softmax (running max m, sum l, unnormalised output) over
 * every 4th position of the split, two positions' loads issued together;
 * the warps are merged in order and the split's (m, l, O) written to the
 * scratch part. Modes:
 * - KCU_DEC_SPLIT: that is all; attn_fold_kernel folds the splits.
 * - KCU_DEC_ROPE (rope_kv_attention, one token): each block first ropes its
 *   q head and its KV head's k itself (rope_kv_store_kernel's arithmetic);
 *   split 0 of each KV group's first head stores the token's k and v rows
 *   as F16, and the position whose cell is the token's own takes those F16
 *   values from shared memory (its load redirected to another cell: no
 *   block reads what another writes). The last block of a head to finish
 *   (a counter per head in dev->attn_count, reset by that block) folds the
 *   head's splits as attn_fold_kernel does: one launch instead of three.
 *   (The fold by the last block alone, without the rope, measured slower
 *   at 4096 positions on the H100: bench/NOTES.md, session 9.)
 * Both modes give the bits of rope_kv_store_kernel, split and fold. Blocks past a token's last split (the
 * launch covers the whole cache, so that a graph can replay it) read n_kv
 * from the ubatch tables, which no kernel writes, and leave before waiting
 * on the kernel ahead (A.idle_exit; KILN_CUDA_ATTN_IDLE=wait keeps them). */
enum { KCU_DEC_SPLIT = 0, KCU_DEC_ROPE = 1 };
struct kcu_attn_dec_args {
    const float *q; /* rows of qs floats; ROPE: before rope */
    uint64_t qs, ds;
    const float *k, *v; /* ROPE: the token's k and v rows before rope / conversion */
    __half *kc, *vc;
    int kv_dim, block_size, group, n_splits, split_len, t0, half, neox, idle_exit;
    float scale, theta_scale, freq_scale;
    const float *ff;
    const int32_t *pos, *kv_cell, *attn_table, *attn_n_kv, *block_tables;
    float *part, *dst;
    int32_t *count;
    int8_t *xq;
    float *xd;
};

template <int DPL, int MODE> /* DPL: head_dim / 32 */
static __global__ void __launch_bounds__(KCU_ATTN_WARPS * 32) attn_dec_kernel(const kcu_attn_dec_args A) {
    constexpr int D = DPL * 32;
    const int t = A.t0 + blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_kv = A.attn_n_kv[t];
    const int ns = (n_kv + A.split_len - 1) / A.split_len;
    const int p0 = split * A.split_len;
    /* the fold reads only the splits below n_kv; with ROPE split 0 always
     * takes part (it stores the row; with n_kv 0 it folds nothing into zeros) */
    const int n_part = MODE == KCU_DEC_ROPE && ns < 1 ? 1 : ns;
    /* split 0 always waits: the grid then ends after the kernel ahead */
    if (A.idle_exit && split >= (ns < 1 ? 1 : ns)) return;
    kcu_pdl_trigger();
    kcu_pdl_wait();
    if (split >= n_part) return;
    const int p1 = min(n_kv, p0 + A.split_len);
    const int kvh = h / A.group;
    float qv[DPL], acc[DPL];
    uint64_t own = ~(uint64_t)0, alt = 0;
    __shared__ float rcs[MODE == KCU_DEC_ROPE ? KCU_ROPE_HALF_MAX : 1], rsn[MODE == KCU_DEC_ROPE ? KCU_ROPE_HALF_MAX : 1];
    __shared__ float sk[MODE == KCU_DEC_ROPE ? D : 1], sv[MODE == KCU_DEC_ROPE ? D : 1];
    if constexpr (MODE == KCU_DEC_ROPE) {
        const float pf = (float)A.pos[t];
        for (int i = threadIdx.x; i < A.half; i += blockDim.x) {
            float theta = pf;
            for (int m = 0; m < i; m++) theta = __fmul_rn(theta, A.theta_scale);
            const float th = __fmul_rn(A.freq_scale, __fdiv_rn(theta, A.ff ? A.ff[i] : 1.0f));
            rcs[i] = cosf(th);
            rsn[i] = sinf(th);
        }
        __syncthreads();
        own = (uint64_t)A.kv_cell[t];
        alt = own == 0 ? 1 : 0;
        const bool store = split == 0 && h % A.group == 0;
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            const __half kh = __float2half_rn(attn_rope_elem(A.k + (uint64_t)kvh * D, d, A.half, A.neox, rcs, rsn));
            const __half vh = __float2half_rn(A.v[(uint64_t)kvh * D + d]);
            sk[d] = __half2float(kh);
            sv[d] = __half2float(vh);
            if (store) {
                A.kc[own * A.kv_dim + (uint64_t)kvh * D + d] = kh;
                A.vc[own * A.kv_dim + (uint64_t)kvh * D + d] = vh;
            }
        }
#pragma unroll
        for (int i = 0; i < DPL; i++)
            qv[i] = attn_rope_elem(A.q + (uint64_t)t * A.qs + (uint64_t)h * D, lane + 32 * i, A.half, A.neox, rcs, rsn);
        __syncthreads();
    } else {
#pragma unroll
        for (int i = 0; i < DPL; i++) qv[i] = A.q[(uint64_t)t * A.qs + (uint64_t)h * D + lane + 32 * i];
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    const int32_t *table = A.block_tables + A.attn_table[t];
    const int bs = A.block_size;
    float m = -INFINITY, l = 0.0f;
    for (int p = p0 + warp; p < p1; p += 2 * KCU_ATTN_WARPS) {
        const int pb = p + KCU_ATTN_WARPS;
        const bool two = pb < p1;
        uint64_t ca = (uint64_t)table[p / bs] * bs + p % bs;
        uint64_t cb = two ? (uint64_t)table[pb / bs] * bs + pb % bs : ca;
        const bool oa = MODE == KCU_DEC_ROPE && ca == own, ob = MODE == KCU_DEC_ROPE && cb == own;
        ca = oa ? alt : ca;
        cb = ob ? alt : cb;
        const __half *ka = A.kc + ca * A.kv_dim + (uint64_t)kvh * D, *kb = A.kc + cb * A.kv_dim + (uint64_t)kvh * D;
        const __half *va = A.vc + ca * A.kv_dim + (uint64_t)kvh * D, *vb = A.vc + cb * A.kv_dim + (uint64_t)kvh * D;
        float kfa[DPL], kfb[DPL], vfa[DPL], vfb[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            kfa[i] = __half2float(ka[lane + 32 * i]);
            kfb[i] = __half2float(kb[lane + 32 * i]);
            vfa[i] = __half2float(va[lane + 32 * i]);
            vfb[i] = __half2float(vb[lane + 32 * i]);
        }
        if constexpr (MODE == KCU_DEC_ROPE) {
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                kfa[i] = oa ? sk[lane + 32 * i] : kfa[i];
                vfa[i] = oa ? sv[lane + 32 * i] : vfa[i];
                kfb[i] = ob ? sk[lane + 32 * i] : kfb[i];
                vfb[i] = ob ? sv[lane + 32 * i] : vfb[i];
            }
        }
        float sa = 0.0f, sb = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            sa = fmaf(qv[i], kfa[i], sa);
            sb = fmaf(qv[i], kfb[i], sb);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            sa += __shfl_xor_sync(0xffffffffu, sa, o);
            sb += __shfl_xor_sync(0xffffffffu, sb, o);
        }
        sa *= A.scale;
        sb *= A.scale;
        /* position p, then position pb: the same order as one at a time */
        float mn = fmaxf(m, sa);
        float corr = expf(m - mn), e = expf(sa - mn);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] = acc[i] * corr + e * vfa[i];
        m = mn;
        if (two) {
            mn = fmaxf(m, sb);
            corr = expf(m - mn);
            e = expf(sb - mn);
            l = l * corr + e;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] = acc[i] * corr + e * vfb[i];
            m = mn;
        }
    }
    __shared__ float sm[KCU_ATTN_WARPS], sl[KCU_ATTN_WARPS], so[KCU_ATTN_WARPS][D];
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) so[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float *ph = A.part + ((uint64_t)blockIdx.x * gridDim.y + h) * A.n_splits * (D + 2);
    if (p0 < n_kv) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < KCU_ATTN_WARPS; w++) M = fmaxf(M, sm[w]);
        float *out = ph + (uint64_t)split * (D + 2);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < KCU_ATTN_WARPS; w++)
                if (sm[w] != -INFINITY) o += so[w][d] * expf(sm[w] - M);
            out[2 + d] = o;
        }
        if (threadIdx.x == 0) {
            float L = 0.0f;
#pragma unroll
            for (int w = 0; w < KCU_ATTN_WARPS; w++)
                if (sm[w] != -INFINITY) L += sl[w] * expf(sm[w] - M);
            out[0] = M;
            out[1] = L;
        }
    }
    if constexpr (MODE == KCU_DEC_ROPE) {
        /* the last of the head's blocks to get here folds: its writes above
         * and every other block's are visible to it after the fences */
        __shared__ int last;
        cuda::atomic_ref<int32_t, cuda::thread_scope_device> cnt(A.count[(uint64_t)blockIdx.x * gridDim.y + h]);
        /* the barrier orders the block's writes before thread 0's release,
         * the acquire of the last block's thread 0 before its block's reads
         * (the pattern of a serial split-K reduction) */
        __syncthreads();
        if (threadIdx.x == 0) last = cnt.fetch_add(1, cuda::memory_order_acq_rel) == n_part - 1;
        __syncthreads();
        if (!last) return;
        if (threadIdx.x == 0) cnt.store(0, cuda::memory_order_relaxed); /* zero for the next kernel using it */
        const int64_t K = (int64_t)gridDim.y * D;
        attn_fold_row(ph, ns, D, A.dst + (uint64_t)t * A.ds + (uint64_t)h * D, h, K, A.xq ? A.xq + t * K : NULL,
                      A.xq ? A.xd + t * (K / 32) : NULL);
    }
}

/* attn_dec_kernel's arguments common to every mode (t0 0, no rope). */
static void attn_dec_fill(kiln_bk_device *dev, kcu_attn_dec_args *A, const float *q, uint64_t qs,
                          const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache, int kv_dim, int group,
                          float scale, float *part, int n_splits, kiln_bk_tensor *dst, int8_t *xq, float *xd) {
    const struct kcu_ubatch *ub = &dev->ub;
    memset(A, 0, sizeof *A);
    A->q = q, A->qs = qs, A->ds = dst->row_stride / 4;
    A->kc = (__half *)k_cache->ptr, A->vc = (__half *)v_cache->ptr;
    A->kv_dim = kv_dim, A->block_size = (int)ub->block_size, A->group = group;
    A->n_splits = n_splits, A->split_len = KCU_ATTN_SPLIT_DECODE, A->idle_exit = !dev->attn_idle_wait;
    A->scale = scale;
    A->pos = ub->pos, A->kv_cell = ub->kv_cell, A->attn_table = ub->attn_table, A->attn_n_kv = ub->attn_n_kv;
    A->block_tables = ub->block_tables, A->part = part, A->dst = (float *)kcu_tensor_ptr(dst);
    A->count = dev->attn_count, A->xq = xq, A->xd = xd;
}

static cudaError_t attn_dec_launch(kiln_bk_device *dev, int mode, const kcu_attn_dec_args *A, dim3 grid, int D) {
#define ATD(DPL_)                                                                                                \
    case DPL_:                                                                                                   \
        return mode == KCU_DEC_ROPE ? kcu_launch(attn_dec_kernel<DPL_, KCU_DEC_ROPE>, grid, KCU_ATTN_WARPS * 32, 0, \
                                                 dev->stream, *A)                                                \
                                    : kcu_launch(attn_dec_kernel<DPL_, KCU_DEC_SPLIT>, grid, KCU_ATTN_WARPS * 32, 0, \
                                                 dev->stream, *A);
    switch (D / 32) {
        ATD(1) ATD(2) ATD(3) ATD(4) ATD(5) ATD(6) ATD(7) ATD(8)
    }
#undef ATD
    return cudaErrorInvalidValue;
}

/* attention's checks; *a: attn with defaults for fields an older caller's
 * struct lacks. */
static kiln_status attn_args(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                             const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, const kiln_bk_tensor *dst,
                             kiln_bk_attn *a) {
    kiln_status st;
    if ((st = kcu_tensor_check(q, KCU_F32, "attention", "q")) ||
        (st = kcu_tensor_check(dst, KCU_F32, "attention", "dst")))
        return st;
    if (!attn || !k_cache || !v_cache) return kcu_error(KILN_E_INVALID_ARG, "cuda attention: NULL cache or parameters");
    memset(a, 0, sizeof *a);
    memcpy(a, attn, attn->struct_size < sizeof *a ? attn->struct_size : sizeof *a);
    const struct kcu_ubatch *ub = &dev->ub;
    if (!ub->set || !ub->has_attn) return kcu_error(KILN_E_INVALID_ARG, "cuda attention: no ubatch with attention tables");
    if (a->n_head == 0 || a->n_head_kv == 0 || a->n_head % a->n_head_kv || a->head_dim == 0 || a->head_dim % 32 ||
        a->head_dim > 256)
        return kcu_error(KILN_E_UNSUPPORTED, "cuda attention: %u heads, %u kv heads of %u", a->n_head, a->n_head_kv,
                         a->head_dim);
    const uint64_t qw = (uint64_t)a->n_head * a->head_dim, kv_dim = (uint64_t)a->n_head_kv * a->head_dim;
    if ((uint64_t)q->ne[0] < qw || dst->ne[0] < (int64_t)qw || q->ne[1] != (int64_t)ub->n_tokens ||
        dst->ne[1] != q->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda attention: q %lldx%lld, dst %lldx%lld for %u heads of %u, %u tokens",
                         (long long)q->ne[0], (long long)q->ne[1], (long long)dst->ne[0], (long long)dst->ne[1],
                         a->n_head, a->head_dim, ub->n_tokens);
    const uint64_t need = (uint64_t)ub->n_cells * kv_dim * 2;
    if (k_cache->size < need || v_cache->size < need)
        return kcu_error(KILN_E_INVALID_ARG, "cuda attention: caches smaller than %u cells", ub->n_cells);
    if (a->n_head > 65535 || ub->n_tokens > 0x7fffffff)
        return kcu_error(KILN_E_UNSUPPORTED, "cuda attention: too many heads or tokens");
    return KILN_OK;
}

kiln_status kcu_attention(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                          const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, kiln_bk_tensor *dst) {
    kiln_status st;
    kiln_bk_attn a;
    if ((st = kcu_use(dev)) || (st = attn_args(dev, q, k_cache, v_cache, attn, dst, &a))) return st;
    const struct kcu_ubatch *ub = &dev->ub;
    const uint64_t qw = (uint64_t)a.n_head * a.head_dim, kv_dim = (uint64_t)a.n_head_kv * a.head_dim;
    if (ub->n_tokens == 0) return KILN_OK;
    /* decode: launch for the whole cache (graph-stable); prefill: the longest row */
    const bool decode = ub->n_tokens <= 8;
    /* up to KCU_ATTN_MMA_MIN tokens (a speculative verify batch) with the
     * decode kernel's split length: each row gets its decode bits */
    const bool small = ub->n_tokens <= KCU_ATTN_MMA_MIN;
    const uint32_t span = decode ? ub->n_cells : (uint32_t)ub->max_n_kv;
    const int split_len = small ? KCU_ATTN_SPLIT_DECODE : KCU_ATTN_SPLIT_PREFILL;
    const int n_splits = (int)((span + split_len - 1) / split_len) > 0 ? (int)((span + split_len - 1) / split_len) : 1;
    if (n_splits > 65535) return kcu_error(KILN_E_UNSUPPORTED, "cuda attention: %u positions", span);
    struct { kiln_bk_tensor q, d; const void *k, *v; kiln_bk_attn a; int ns; } args;
    memset(&args, 0, sizeof args);
    args.q = *q, args.d = *dst, args.k = k_cache->ptr, args.v = v_cache->ptr, args.a = a, args.ns = n_splits;
    kiln_bk_buffer *part = NULL;
    const uint64_t per_token = (uint64_t)a.n_head * n_splits * (a.head_dim + 2) * sizeof(float);
    uint32_t chunk = (uint32_t)(KCU_ATTN_PART_MAX / per_token);
    if (chunk < 1) chunk = 1;
    if (!small && chunk < 8) chunk = 8; /* a prefill tile has up to 8 tokens */
    if (chunk > ub->n_tokens) chunk = ub->n_tokens;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (dev->skip & KCU_SKIP_ATTN) return KILN_OK;
    int8_t *xq;
    float *xd;
    if ((st = kcu_xq_produce(dev, kcu_tensor_ptr(dst), dst->row_stride, (int64_t)qw, ub->n_tokens, &xq, &xd)))
        return st;
    const int group = (int)(a.n_head / a.n_head_kv);
    const float *qp = (const float *)kcu_tensor_ptr(q);
    const uint64_t qs = q->row_stride / 4;
    /* prefill ubatches on tensor cores */
    if (!small && !xq && ub->n_tiles64 > 0 && !dev->attn_tile_only &&
        kcu_attn_mma_supported(a.head_dim)) {
        cudaError_t me = kcu_attn_mma(dev, qp, qs, (const __half *)k_cache->ptr, (const __half *)v_cache->ptr,
                                      (int)kv_dim, a.n_head, a.head_dim, group, a.scale,
                                      (float *)kcu_tensor_ptr(dst), dst->row_stride / 4);
        return me == cudaSuccess ? KILN_OK : kcu_cuda_error(me, "attention");
    }
    if ((st = kcu_pool_alloc(dev, per_token * chunk, &part))) return st;
    float *pp = (float *)part->ptr;
    cudaError_t e = cudaSuccess;
    if (!small && ub->n_tiles > 0) {
        /* prefill: tiles of one sequence's consecutive tokens, in chunks of
         * whole tiles whose partial results fit the scratch */
        const int32_t *th = ub->tiles_host;
        for (uint32_t f = 0; f < ub->n_tiles && e == cudaSuccess;) {
            const uint32_t tok0 = (uint32_t)th[2 * f];
            uint32_t l = f, ntok = 0;
            while (l < ub->n_tiles && ntok + (uint32_t)th[2 * l + 1] <= chunk) ntok += (uint32_t)th[2 * l++ + 1];
            if (l == f) ntok = (uint32_t)th[2 * l++ + 1]; /* chunk >= 8 >= a tile, but be safe */
            dim3 grid(l - f, a.n_head, n_splits);
#define ATT_T(DPL_)                                                                                           \
    case DPL_:                                                                                                \
        e = kcu_launch(attn_tile_kernel<DPL_, 8>, grid, KCU_ATTN_WARPS * 32, 0, dev->stream, qp, qs,           \
                       (const __half *)k_cache->ptr, (const __half *)v_cache->ptr, (int)kv_dim, ub->attn_table, \
                       ub->attn_n_kv, ub->block_tables, (int)ub->block_size, group, a.scale, pp, n_splits,   \
                       (int)f, (int)tok0, split_len, (const int32_t *)ub->tiles);                            \
        break;
            switch (a.head_dim / 32) {
                ATT_T(1) ATT_T(2) ATT_T(3) ATT_T(4) ATT_T(5) ATT_T(6) ATT_T(7) ATT_T(8)
            }
#undef ATT_T
            if (e == cudaSuccess) {
                dim3 g2(ntok, a.n_head);
                e = kcu_launch(attn_fold_kernel, g2, a.head_dim < 128 ? 64 : 128, 0, dev->stream, pp, ub->attn_n_kv,
                               n_splits, (int)a.head_dim, (float *)kcu_tensor_ptr(dst), dst->row_stride / 4, (int)tok0,
                               xq, xd, split_len);
            }
            f = l;
        }
        kcu_pool_free(part);
        if (e != cudaSuccess) return kcu_cuda_error(e, "attention");
        return KILN_OK;
    }
    /* tokens in chunks so that the partial results stay bounded; each
     * (token, head) is computed the same way whatever the chunk */
    kcu_attn_dec_args A;
    attn_dec_fill(dev, &A, qp, qs, k_cache, v_cache, (int)kv_dim, group, a.scale, pp, n_splits, dst, xq, xd);
    for (uint32_t t0 = 0; t0 < ub->n_tokens && e == cudaSuccess; t0 += chunk) {
        const uint32_t nt = ub->n_tokens - t0 < chunk ? ub->n_tokens - t0 : chunk;
        A.t0 = (int)t0;
        e = attn_dec_launch(dev, KCU_DEC_SPLIT, &A, dim3(nt, a.n_head, n_splits), (int)a.head_dim);
        if (e == cudaSuccess) {
            dim3 g2(nt, a.n_head);
            e = kcu_launch(attn_fold_kernel, g2, a.head_dim < 128 ? 64 : 128, 0, dev->stream, pp, ub->attn_n_kv,
                           n_splits, (int)a.head_dim, (float *)kcu_tensor_ptr(dst), dst->row_stride / 4, (int)t0, xq,
                           xd, split_len);
        }
    }
    kcu_pool_free(part); /* stream-ordered: safe to hand out again */
    if (e != cudaSuccess) return kcu_cuda_error(e, "attention");
    return KILN_OK;
}

kiln_status kcu_rope_kv_attention(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                  const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                                  kiln_bk_buffer *v_cache, uint32_t kv_dim, const kiln_bk_attn *attn,
                                  kiln_bk_tensor *dst) {
    kiln_status st;
    struct kcu_rope_plan rp;
    kiln_bk_attn a;
    if ((st = kcu_use(dev)) || (st = kcu_rope_kv_plan(dev, q, k, v, rq, rk, k_cache, v_cache, kv_dim, &rp))) return st;
    const struct kcu_ubatch *ub = &dev->ub;
    /* one kernel for a single token (a decode step); a verify batch's
     * tokens attend to rows other blocks would be storing: two steps */
    bool one = rp.fused && ub->n_tokens == 1 && ub->n_cells >= 2 && dev->attn_count && !dev->attn_steps;
    if (one && (st = attn_args(dev, q, k_cache, v_cache, attn, dst, &a))) return st;
    one = one && a.n_head == (uint32_t)rp.n_head && a.n_head_kv == (uint32_t)rp.n_head_kv &&
          a.head_dim == (uint32_t)rp.head_dim && a.n_head <= KCU_ATTN_COUNTERS;
    if (!one) {
        if ((st = kcu_rope_kv_store(dev, q, k, v, rq, rk, k_cache, v_cache, kv_dim))) return st;
        return kcu_attention(dev, q, k_cache, v_cache, attn, dst);
    }
    const int D = (int)a.head_dim;
    const int n_splits = (int)((ub->n_cells + KCU_ATTN_SPLIT_DECODE - 1) / KCU_ATTN_SPLIT_DECODE);
    if (n_splits > 65535) return kcu_error(KILN_E_UNSUPPORTED, "cuda attention: %u positions", ub->n_cells);
    struct { kiln_bk_tensor q, k, v, d; kiln_bk_rope a, b; kiln_bk_attn at; const void *ff, *kc, *vc; uint32_t kvd; } args;
    memset(&args, 0, sizeof args);
    args.q = *q, args.k = *k, args.v = *v, args.d = *dst, args.a = rp.a, args.b = rp.b, args.at = a;
    args.ff = rp.ff, args.kc = k_cache->ptr, args.vc = v_cache->ptr, args.kvd = kv_dim;
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (dev->skip & KCU_SKIP_ATTN) return KILN_OK;
    int8_t *xq;
    float *xd;
    if ((st = kcu_xq_produce(dev, kcu_tensor_ptr(dst), dst->row_stride, (int64_t)a.n_head * D, 1, &xq, &xd)))
        return st;
    kiln_bk_buffer *part = NULL;
    if ((st = kcu_pool_alloc(dev, (uint64_t)a.n_head * n_splits * (D + 2) * sizeof(float), &part))) return st;
    kcu_attn_dec_args A;
    attn_dec_fill(dev, &A, (const float *)kcu_tensor_ptr(q), q->row_stride / 4, k_cache, v_cache, (int)kv_dim,
                  (int)(a.n_head / a.n_head_kv), a.scale, (float *)part->ptr, n_splits, dst, xq, xd);
    A.k = (const float *)kcu_tensor_ptr(k), A.v = (const float *)kcu_tensor_ptr(v);
    A.half = rp.half, A.neox = rp.neox, A.theta_scale = rp.theta_scale, A.freq_scale = rp.freq_scale;
    A.ff = (const float *)rp.ff;
    const cudaError_t e = attn_dec_launch(dev, KCU_DEC_ROPE, &A, dim3(1, a.n_head, n_splits), D);
    kcu_pool_free(part);
    if (e != cudaSuccess) return kcu_cuda_error(e, "rope_kv_attention");
    return KILN_OK;
}
