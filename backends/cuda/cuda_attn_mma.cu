/*
 * cuda_attn_mma.cu - prefill attention on tensor cores (mma.sync, F16
 * inputs, F32 accumulation), a "flash attention 2" kernel over the paged
 * F16 KV cache.
 *
 * A block of 4 warps takes a tile of up to 64 consecutive tokens of one
 * sequence (one block table) and one head; warp w owns tokens 16w..16w+15.
 * The block walks the tile's positions 64 at a time: the 64 K and V rows
 * (found through the block table) are copied into shared memory, each warp
 * computes S = Q K^T for its 16 tokens (m16n8k16 products, Q held in
 * registers as F16), masks positions at or past each token's n_kv, updates
 * its running max and sum (online softmax, F32), and adds P V with P
 * rounded to F16 (the S accumulators are laid out as the A operand of the
 * next product, so P never leaves registers).
 *
 * Arithmetic differs from the CUDA-core kernels (cuda_attn.cu) by the F16
 * rounding of q and of the probabilities, the same rounding llama.cpp's
 * tensor-core flash attention makes; a row's result does not depend on the
 * other tokens of the tile or of the ubatch (every position is visited in
 * the same order, masked per token). KILN_CUDA_ATTN=tile selects the
 * CUDA-core kernel instead (comparison).
 */
#include <math.h>

#include "cuda_internal.cuh"

#define KCU_MMA_Q 64   /* tokens per block (16 per warp) */
#define KCU_MMA_KV 64  /* positions per step */
#define KCU_MMA_PAD 8  /* halfs of padding per shared row: conflict-free ldmatrix */

static __device__ __forceinline__ uint32_t kcu_pack_half2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *(const uint32_t *)&h;
}

static __device__ __forceinline__ void kcu_mma_16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void kcu_ldsm_x4(uint32_t *r, const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void kcu_ldsm_x4_t(uint32_t *r, const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* 16 bytes global -> shared, asynchronous; src_bytes 0 writes zeros. */
static __device__ __forceinline__ void kcu_cp_async16(void *dst, const void *src, int src_bytes) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(src), "r"(src_bytes));
}
static __device__ __forceinline__ void kcu_cp_async_wait_all(void) {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}

template <int D>
static __global__ void __launch_bounds__(128)
    attn_mma_kernel(const float *q, uint64_t qs, const __half *kc, const __half *vc, int kv_dim,
                    const int32_t *attn_table, const int32_t *attn_n_kv, const int32_t *block_tables, int block_size,
                    int group, float scale, float *dst, uint64_t ds, const int32_t *tiles, int tile0) {
    constexpr int LD = D + KCU_MMA_PAD;       /* halfs per shared row */
    constexpr int KS = D / 16;                /* k-steps of Q K^T */
    constexpr int ND = D / 8;                 /* n-tiles of P V */
    __shared__ __align__(16) __half sk[KCU_MMA_KV * LD], sv[KCU_MMA_KV * LD];
    kcu_pdl_wait();
    const int tile = tile0 + blockIdx.x, h = blockIdx.y;
    const int start = tiles[2 * tile], cnt = tiles[2 * tile + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int kvh = h / group;
    const int r0 = 16 * warp + g, r1 = r0 + 8; /* this thread's two rows of the tile */
    const int nk0 = r0 < cnt ? attn_n_kv[start + r0] : 0, nk1 = r1 < cnt ? attn_n_kv[start + r1] : 0;
    /* the block's and this warp's last position */
    int maxkv = 0;
    for (int j = 0; j < cnt; j++) maxkv = max(maxkv, attn_n_kv[start + j]);
    int wmax = max(nk0, nk1);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));

    /* Q fragments (A operand, row-major 16 x 16 per k-step), F16 */
    uint32_t qa[KS][4];
    {
        const float *q0 = q + (uint64_t)(start + (r0 < cnt ? r0 : 0)) * qs + (uint64_t)h * D;
        const float *q1 = q + (uint64_t)(start + (r1 < cnt ? r1 : 0)) * qs + (uint64_t)h * D;
#pragma unroll
        for (int k = 0; k < KS; k++) {
            const int c = 16 * k + 2 * t4;
            const float2 a = r0 < cnt ? *(const float2 *)(q0 + c) : make_float2(0.f, 0.f);
            const float2 b = r1 < cnt ? *(const float2 *)(q1 + c) : make_float2(0.f, 0.f);
            const float2 a8 = r0 < cnt ? *(const float2 *)(q0 + c + 8) : make_float2(0.f, 0.f);
            const float2 b8 = r1 < cnt ? *(const float2 *)(q1 + c + 8) : make_float2(0.f, 0.f);
            qa[k][0] = kcu_pack_half2(a.x, a.y);
            qa[k][1] = kcu_pack_half2(b.x, b.y);
            qa[k][2] = kcu_pack_half2(a8.x, a8.y);
            qa[k][3] = kcu_pack_half2(b8.x, b8.y);
        }
    }
    float o[ND][4];
#pragma unroll
    for (int j = 0; j < ND; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* l: this thread's part of the row sum */
    const float sl2 = scale * 1.4426950408889634f;              /* exp(x) = exp2(x log2 e) */
    const int32_t *table = block_tables + attn_table[start];
    constexpr int SEGS = D / 8; /* 16-byte pieces per row */

    for (int p0 = 0; p0 < maxkv; p0 += KCU_MMA_KV) {
        __syncthreads(); /* the previous step's readers are done */
        for (int i = threadIdx.x; i < KCU_MMA_KV * SEGS; i += 128) {
            const int r = i / SEGS, s = i % SEGS, p = p0 + r;
            const bool ok = p < maxkv;
            const uint64_t cell = ok ? (uint64_t)table[p / block_size] * block_size + p % block_size : 0;
            const uint64_t off = cell * kv_dim + (uint64_t)kvh * D + 8 * s;
            kcu_cp_async16(sk + r * LD + 8 * s, kc + off, ok ? 16 : 0);
            kcu_cp_async16(sv + r * LD + 8 * s, vc + off, ok ? 16 : 0);
        }
        kcu_cp_async_wait_all();
        __syncthreads();
        if (p0 >= wmax) continue; /* nothing left for this warp's tokens (warp-uniform) */

        /* S = Q K^T: 16 tokens x 64 positions, 8 n-tiles of 8 positions */
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < KS; k++) {
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                /* matrices: (pos 8j.., d 16k..), (pos 8j.., d 16k+8..), (pos 8j+8.., d 16k..), (.., 16k+8..) */
                const int row = 8 * j + (lane & 7) + 8 * (lane >> 4), col = 16 * k + 8 * ((lane >> 3) & 1);
                uint32_t b[4];
                kcu_ldsm_x4(b, sk + row * LD + col);
                kcu_mma_16816(s[j], qa[k], b[0], b[1]);
                kcu_mma_16816(s[j + 1], qa[k], b[2], b[3]);
            }
        }
        /* mask, online softmax (rows r0: s[j][0..1], r1: s[j][2..3]) */
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int p = p0 + 8 * j + 2 * t4;
            s[j][0] = p < nk0 ? s[j][0] * sl2 : -INFINITY;
            s[j][1] = p + 1 < nk0 ? s[j][1] * sl2 : -INFINITY;
            s[j][2] = p < nk1 ? s[j][2] * sl2 : -INFINITY;
            s[j][3] = p + 1 < nk1 ? s[j][3] * sl2 : -INFINITY;
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* a row with no valid position yet keeps m = -inf: use 0 as the reference */
        const float ref0 = mx0 == -INFINITY ? 0.0f : mx0, ref1 = mx1 == -INFINITY ? 0.0f : mx1;
        const float c0 = exp2f(m0 - ref0), c1 = exp2f(m1 - ref1); /* exp2(-inf) = 0 */
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int j = 0; j < ND; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }
        uint32_t pa[4][4]; /* P as the A operand: k-step kk covers positions 16kk..16kk+15 */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float e0 = exp2f(s[j][0] - ref0), e1 = exp2f(s[j][1] - ref0);
            const float e2 = exp2f(s[j][2] - ref1), e3 = exp2f(s[j][3] - ref1);
            l0 += e0 + e1;
            l1 += e2 + e3;
            pa[j >> 1][(j & 1) * 2 + 0] = kcu_pack_half2(e0, e1);
            pa[j >> 1][(j & 1) * 2 + 1] = kcu_pack_half2(e2, e3);
        }
        /* O += P V: B operand = V rows (positions) x d, loaded transposed */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int j = 0; j < ND; j += 2) {
                const int row = 16 * kk + (lane & 15), col = 8 * j + 8 * (lane >> 4);
                uint32_t b[4];
                kcu_ldsm_x4_t(b, sv + row * LD + col);
                kcu_mma_16816(o[j], pa[kk], b[0], b[1]);
                kcu_mma_16816(o[j + 1], pa[kk], b[2], b[3]);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    float *d0 = dst + (uint64_t)(start + r0) * ds + (uint64_t)h * D + 2 * t4;
    float *d1 = dst + (uint64_t)(start + r1) * ds + (uint64_t)h * D + 2 * t4;
#pragma unroll
    for (int j = 0; j < ND; j++) {
        if (r0 < cnt) *(float2 *)(d0 + 8 * j) = make_float2(o[j][0] * i0, o[j][1] * i0);
        if (r1 < cnt) *(float2 *)(d1 + 8 * j) = make_float2(o[j][2] * i1, o[j][3] * i1);
    }
}

bool kcu_attn_mma_supported(uint32_t head_dim) {
    return head_dim == 64 || head_dim == 128;
}

cudaError_t kcu_attn_mma(kiln_bk_device *dev, const float *q, uint64_t qs, const __half *kc, const __half *vc,
                         int kv_dim, uint32_t n_head, uint32_t head_dim, int group, float scale, float *dst,
                         uint64_t ds) {
    const struct kcu_ubatch *ub = &dev->ub;
    cudaError_t e = cudaSuccess;
    /* grid.x is at most 2^31-1 tiles; n_tokens already fits */
    dim3 grid(ub->n_tiles64, n_head);
    if (head_dim == 64)
        e = kcu_launch(attn_mma_kernel<64>, grid, 128, 0, dev->stream, q, qs, kc, vc, kv_dim, ub->attn_table,
                       ub->attn_n_kv, ub->block_tables, (int)ub->block_size, group, scale, dst, ds,
                       (const int32_t *)ub->tiles64, 0);
    else
        e = kcu_launch(attn_mma_kernel<128>, grid, 128, 0, dev->stream, q, qs, kc, vc, kv_dim, ub->attn_table,
                       ub->attn_n_kv, ub->block_tables, (int)ub->block_size, group, scale, dst, ds,
                       (const int32_t *)ub->tiles64, 0);
    return e;
}
