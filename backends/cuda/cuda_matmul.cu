/*
 * cuda_matmul.cu - dst[m][n] = sum_k w[n][k] * x[m][k] on the GPU.
 *
 * Decode (at most KCU_MMV_MAX rows of x): matrix-vector kernels that read
 * each weight byte once. A block of KCU_MMV_WARPS warps owns
 * KCU_MMV_WARPS * KCU_MMV_ROWS weight rows; x is brought into shared
 * memory 1024 columns at a time (padded so that the 32 lanes, each on its
 * own 32-column group, read 32 different banks), every lane decodes one
 * group of each of its rows per chunk and multiplies it with every token.
 * Per token the sum runs over the same groups in the same order whatever
 * the number of tokens, so a sequence decoded alone or in a batch of up to
 * KCU_MMV_MAX gets the same bits.
 *
 * Prefill: cuBLAS. F16 and BF16 weights are used in place with x converted
 * to the same type; other formats are dequantized to F16 in chunks of rows
 * (scratch from the pool, at most ~64 MiB) and multiplied with cuBLAS,
 * accumulating in F32.
 */
#include <string.h>

#include "cuda_quant.cuh"

KCU_PDL_EARLY_DEFINE(kcu_matmul_set_pdl_early)

#define KCU_MMV_MAX 8
#define KCU_MMV_CHUNKED_MAX 16 /* 9..16 rows: the decode kernels, 8 rows at a time */
#define KCU_MMV_WARPS 8
#define KCU_MMV_ROWS 2
#define KCU_MMV_CHUNK 1024                 /* x columns per shared-memory chunk */
#define KCU_MMV_PITCH (KCU_MMV_CHUNK + 32) /* floats per token row in shared memory */

template <int T>
static __global__ void __launch_bounds__(KCU_MMV_WARPS * 32)
    mmv_kernel(const uint8_t *w, uint64_t ws, const float *x, uint64_t xs, float *y, uint64_t ys, int N, int64_t K,
               int nt) {
    kcu_pdl_wait();
    extern __shared__ float xsh[]; /* [nt][KCU_MMV_PITCH]: group g at 33 * g */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * KCU_MMV_WARPS + warp) * KCU_MMV_ROWS;
    float acc[KCU_MMV_ROWS][KCU_MMV_MAX];
#pragma unroll
    for (int r = 0; r < KCU_MMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < KCU_MMV_MAX; t++) acc[r][t] = 0.0f;

    for (int64_t k0 = 0; k0 < K; k0 += KCU_MMV_CHUNK) {
        const int kc = (int)(K - k0 < KCU_MMV_CHUNK ? K - k0 : KCU_MMV_CHUNK);
        __syncthreads();
        for (int t = 0; t < nt; t++)
            for (int i = threadIdx.x; i < kc; i += blockDim.x)
                xsh[t * KCU_MMV_PITCH + i + i / 32] = x[(uint64_t)t * xs + k0 + i];
        __syncthreads();
        const int g = lane; /* this lane's group within the chunk */
        if (32 * g >= kc) continue;
#pragma unroll
        for (int r = 0; r < KCU_MMV_ROWS; r++) {
            const int row = row0 + r;
            if (row >= N) break;
            float v[32];
            kcu_dq32<T>(w + (uint64_t)row * ws, k0 / 32 + g, K / 32, v);
#pragma unroll
            for (int t = 0; t < KCU_MMV_MAX; t++) {
                if (t >= nt) break;
                const float *xp = xsh + t * KCU_MMV_PITCH + 33 * g;
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < 32; i++) s = fmaf(v[i], xp[i], s);
                acc[r][t] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < KCU_MMV_ROWS; r++) {
        const int row = row0 + r;
#pragma unroll
        for (int t = 0; t < KCU_MMV_MAX; t++) {
            if (t >= nt) break;
            float s = acc[r][t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0 && row < N) y[(uint64_t)t * ys + row] = s;
        }
    }
}

/* ---- fast decode kernels for F16 and Q4_0 (the formats benchmarked
 * against llama.cpp): lanes read consecutive 16-byte (F16) or 4-byte (Q4_0)
 * pieces so that a warp's loads are contiguous, U steps of loads are issued
 * before their use, and x comes from global memory through L1 (every warp
 * of the SM reads the same x). A block of KCU_FAST_WARPS warps, one row
 * each. Per token the sum order does not depend on the number of tokens. */
#define KCU_FAST_WARPS 4
#define KCU_FAST_U 4

/* Sums each lane's partial results over the warp and stores them: acc holds
 * R rows of KCU_MMV_MAX tokens (indices are compile-time after unrolling,
 * so the array stays in registers). */
template <int R, int NT = KCU_MMV_MAX>
static __device__ __forceinline__ void kcu_mmv_store(const float *acc, float *y, uint64_t ys, int row0, int N, int nt,
                                                     int lane) {
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= nt) break;
            float v = acc[r * NT + t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0 && row0 + r < N) y[(uint64_t)t * ys + row0 + r] = v;
        }
}

/* Up to three products over the same x in one launch (q/k/v, gate/up):
 * blocks [blk_end[i-1], blk_end[i]) compute product i. One product is a set
 * of one. */
#define KCU_MULTI_MAX 3
struct kcu_mm_set {
    const uint8_t *w[KCU_MULTI_MAX];
    float *y[KCU_MULTI_MAX];
    uint64_t ws[KCU_MULTI_MAX], ys[KCU_MULTI_MAX];
    int N[KCU_MULTI_MAX];
    unsigned blk_end[KCU_MULTI_MAX];
    unsigned pf_blk[KCU_MULTI_MAX]; /* blocks [0, pf_blk[i]) of product i prefetch their rows */
    int rows_per_block;
};

/* This block's product: its weights, output and rows, and the block's
 * index within it (selects, not indexing, so the set stays in the
 * parameter space). */
struct kcu_mm_one {
    const uint8_t *w;
    float *y;
    uint64_t ws, ys;
    int N;
    unsigned blk;
    bool prefetch;           /* blk < the set's pf_blk of this product */
};
static __device__ __forceinline__ kcu_mm_one kcu_mm_pick(const kcu_mm_set &s) {
    const unsigned b = blockIdx.x;
    kcu_mm_one o;
    if (b < s.blk_end[0]) {
        o = {s.w[0], s.y[0], s.ws[0], s.ys[0], s.N[0], b, b < s.pf_blk[0]};
    } else if (b < s.blk_end[1]) {
        o = {s.w[1], s.y[1], s.ws[1], s.ys[1], s.N[1], b - s.blk_end[0], b - s.blk_end[0] < s.pf_blk[1]};
    } else {
        o = {s.w[2], s.y[2], s.ws[2], s.ys[2], s.N[2], b - s.blk_end[1], b - s.blk_end[1] < s.pf_blk[2]};
    }
    return o;
}

/* Before waiting for the kernel ahead (kcu_pdl_wait): asks the L2 for this
 * block's weight rows with one bulk prefetch (Hopper). The weights do not
 * depend on the kernels ahead, and a product is launched while the small
 * kernels before it (norm, rope, attention, swiglu) still run, when they
 * allow it (kcu_pdl_trigger): its weights then stream in while the memory
 * would otherwise idle. The host caps the bytes per product (pf_blk) below
 * what the L2 holds. */
static __device__ __forceinline__ void kcu_mm_prefetch(const kcu_mm_set &s, const kcu_mm_one &m) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!m.prefetch || threadIdx.x != 0) return;
    const int r0 = (int)m.blk * s.rows_per_block, n = min(s.rows_per_block, m.N - r0);
    if (n <= 0) return;
    uint64_t a = (uint64_t)(uintptr_t)(m.w + (uint64_t)r0 * m.ws);
    const uint64_t e = (a + (uint64_t)n * m.ws) & ~(uint64_t)15; /* within the rows: whole 16-byte units */
    a = (a + 15) & ~(uint64_t)15;
    for (; a < e; a += 65536) {
        const uint32_t len = (uint32_t)min(e - a, (uint64_t)65536);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"(len) : "memory");
    }
#endif
}

/* A decode product's start: its block's product and rows, their prefetch,
 * the early launch of the kernel after it (KILN_CUDA_PDL=3), then the wait
 * for the kernel ahead. */
static __device__ __forceinline__ kcu_mm_one kcu_mm_start(const kcu_mm_set &s) {
    const kcu_mm_one m = kcu_mm_pick(s);
    kcu_mm_prefetch(s, m);
    kcu_pdl_trigger_at(2);
    kcu_pdl_wait();
    return m;
}

template <int U, int R, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_f16_kernel(const kcu_mm_set set, const float *x, uint64_t xs, int K, int nt) {
    const kcu_mm_one m = kcu_mm_start(set);
    const uint8_t *w = m.w;
    float *y = m.y;
    const uint64_t ws = m.ws, ys = m.ys;
    const int N = m.N;
    const int lane = threadIdx.x & 31, row0 = (m.blk * KCU_FAST_WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= N) return;
    const int K8 = K / 8;
    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    for (int i0 = lane; i0 < K8; i0 += 32 * U) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int i = i0 + 32 * u;
                wv[u][r] = i < K8 && row0 + r < N ? __ldg((const uint4 *)(w + (uint64_t)(row0 + r) * ws) + i)
                                                  : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + 32 * u;
            if (i >= K8) break;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= nt) break;
                const float4 *xp = (const float4 *)(x + (uint64_t)t * xs) + 2 * i;
                const float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const __half2 *h = (const __half2 *)&wv[u][r];
                    const float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]);
                    const float2 f2 = __half22float2(h[2]), f3 = __half22float2(h[3]);
                    float sum = f0.x * a.x;
                    sum = fmaf(f0.y, a.y, sum);
                    sum = fmaf(f1.x, a.z, sum);
                    sum = fmaf(f1.y, a.w, sum);
                    sum = fmaf(f2.x, b.x, sum);
                    sum = fmaf(f2.y, b.y, sum);
                    sum = fmaf(f3.x, b.z, sum);
                    sum = fmaf(f3.y, b.w, sum);
                    acc[r][t] += sum;
                }
            }
        }
    }
    kcu_mmv_store<R, NT>(&acc[0][0], y, ys, row0, N, nt, lane);
}

/* A nibble n (0..15) as the float n - 8, exactly, without a conversion
 * instruction: 2^23 + n has n in its low mantissa bits. */
static __device__ __forceinline__ float kcu_nib_m8(uint32_t n) {
    return __int_as_float(0x4B000000 | n) - 8388616.0f;
}

/* Q4_0: 4 lanes per 18-byte block, lane quarter s holding qs bytes
 * [4s, 4s + 4): elements 4s..4s+3 (low nibbles) and 16+4s..16+4s+3 (high). */
template <int U, int R>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q4_0_kernel(const uint8_t *w, uint64_t ws, const float *x, uint64_t xs, float *y, uint64_t ys, int N, int K,
                    int nt) {
    kcu_pdl_wait();
    const int lane = threadIdx.x & 31, row0 = (blockIdx.x * KCU_FAST_WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= N) return;
    const int s = lane & 3, bl = lane >> 2;
    const int nb = K / 32;
    float acc[R][KCU_MMV_MAX];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < KCU_MMV_MAX; t++) acc[r][t] = 0.0f;
    for (int b0 = bl; b0 < nb; b0 += 8 * U) {
        uint32_t qv[U][R];
        float dv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int b = b0 + 8 * u;
                if (b < nb && row0 + r < N) {
                    const uint16_t *p = (const uint16_t *)(w + (uint64_t)(row0 + r) * ws + 18 * (uint64_t)b);
                    dv[u][r] = __half2float(__ushort_as_half(__ldg(p)));
                    qv[u][r] = (uint32_t)__ldg(p + 1 + 2 * s) | ((uint32_t)__ldg(p + 2 + 2 * s) << 16);
                } else {
                    dv[u][r] = 0.0f;
                    qv[u][r] = 0x88888888u;
                }
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 8 * u;
            if (b >= nb) break;
#pragma unroll
            for (int t = 0; t < KCU_MMV_MAX; t++) {
                if (t >= nt) break;
                const float *xp = x + (uint64_t)t * xs + 32 * (uint64_t)b + 4 * s;
                const float4 a = __ldg((const float4 *)xp), c = __ldg((const float4 *)(xp + 16));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const uint32_t q = qv[u][r];
                    float sum = kcu_nib_m8(q & 0xF) * a.x;
                    sum = fmaf(kcu_nib_m8((q >> 8) & 0xF), a.y, sum);
                    sum = fmaf(kcu_nib_m8((q >> 16) & 0xF), a.z, sum);
                    sum = fmaf(kcu_nib_m8((q >> 24) & 0xF), a.w, sum);
                    sum = fmaf(kcu_nib_m8((q >> 4) & 0xF), c.x, sum);
                    sum = fmaf(kcu_nib_m8((q >> 12) & 0xF), c.y, sum);
                    sum = fmaf(kcu_nib_m8((q >> 20) & 0xF), c.z, sum);
                    sum = fmaf(kcu_nib_m8((q >> 28) & 0xF), c.w, sum);
                    acc[r][t] = fmaf(dv[u][r], sum, acc[r][t]);
                }
            }
        }
    }
    kcu_mmv_store<R>(&acc[0][0], y, ys, row0, N, nt, lane);
}

/* ---- int8 activations for Q4_0 and Q8_0 decode: x is quantized per
 * 32-element block to int8 with one float scale (amax / 127, rounding to
 * nearest, as ggml's Q8 activation blocks), then every 4 weights cost one
 * dp4a and x traffic drops 4x. Per token the same blocks are summed in the
 * same order whatever the number of tokens. */
static __global__ void quant_x_q8_kernel(const float *x, uint64_t xs, int K, int8_t *xq, float *xd) {
    kcu_pdl_trigger();
    kcu_pdl_wait();
    const int lane = threadIdx.x & 31, b = blockIdx.x * 4 + (threadIdx.x >> 5), t = blockIdx.y;
    if (b >= K / 32) return;
    kcu_q8_store(x[(uint64_t)t * xs + 32 * b + lane], 32 * b + lane, xq + (uint64_t)t * K, xd + (uint64_t)t * (K / 32));
}

template <int U>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q4_0_q8_kernel(const uint8_t *w, uint64_t ws, const int8_t *xq, const float *xd, float *y, uint64_t ys, int N,
                       int K, int nt) {
    kcu_pdl_wait();
    const int lane = threadIdx.x & 31, row = blockIdx.x * KCU_FAST_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int s = lane & 3, bl = lane >> 2, nb = K / 32;
    const uint8_t *wr = w + (uint64_t)row * ws;
    float acc[KCU_MMV_MAX];
#pragma unroll
    for (int t = 0; t < KCU_MMV_MAX; t++) acc[t] = 0.0f;
    for (int b0 = bl; b0 < nb; b0 += 8 * U) {
        uint32_t qv[U];
        float dv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 8 * u;
            if (b < nb) {
                const uint16_t *p = (const uint16_t *)(wr + 18 * (uint64_t)b);
                dv[u] = __half2float(__ushort_as_half(__ldg(p)));
                qv[u] = (uint32_t)__ldg(p + 1 + 2 * s) | ((uint32_t)__ldg(p + 2 + 2 * s) << 16);
            } else {
                dv[u] = 0.0f;
                qv[u] = 0x88888888u;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 8 * u;
            if (b >= nb) break;
            const int lo = (int)__vsub4(qv[u] & 0x0F0F0F0Fu, 0x08080808u);
            const int hi = (int)__vsub4((qv[u] >> 4) & 0x0F0F0F0Fu, 0x08080808u);
#pragma unroll
            for (int t = 0; t < KCU_MMV_MAX; t++) {
                if (t >= nt) break;
                const int8_t *xp = xq + (uint64_t)t * K + 32 * b + 4 * s;
                const int sum = __dp4a(hi, __ldg((const int *)(xp + 16)), __dp4a(lo, __ldg((const int *)xp), 0));
                acc[t] = fmaf(dv[u] * __ldg(xd + (uint64_t)t * nb + b), (float)sum, acc[t]);
            }
        }
    }
    kcu_mmv_store<1>(acc, y, ys, row, N, nt, lane);
}

/* Q8_0: 4 lanes per 34-byte block, lane quarter s holding qs [8s, 8s + 8). */
template <int U>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q8_0_q8_kernel(const uint8_t *w, uint64_t ws, const int8_t *xq, const float *xd, float *y, uint64_t ys, int N,
                       int K, int nt) {
    kcu_pdl_wait();
    const int lane = threadIdx.x & 31, row = blockIdx.x * KCU_FAST_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const int s = lane & 3, bl = lane >> 2, nb = K / 32;
    const uint8_t *wr = w + (uint64_t)row * ws;
    float acc[KCU_MMV_MAX];
#pragma unroll
    for (int t = 0; t < KCU_MMV_MAX; t++) acc[t] = 0.0f;
    for (int b0 = bl; b0 < nb; b0 += 8 * U) {
        uint32_t q0[U], q1[U];
        float dv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 8 * u;
            if (b < nb) {
                const uint16_t *p = (const uint16_t *)(wr + 34 * (uint64_t)b);
                dv[u] = __half2float(__ushort_as_half(__ldg(p)));
                q0[u] = (uint32_t)__ldg(p + 1 + 4 * s) | ((uint32_t)__ldg(p + 2 + 4 * s) << 16);
                q1[u] = (uint32_t)__ldg(p + 3 + 4 * s) | ((uint32_t)__ldg(p + 4 + 4 * s) << 16);
            } else {
                dv[u] = 0.0f;
                q0[u] = q1[u] = 0;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 8 * u;
            if (b >= nb) break;
#pragma unroll
            for (int t = 0; t < KCU_MMV_MAX; t++) {
                if (t >= nt) break;
                const int2 xv = __ldg((const int2 *)(xq + (uint64_t)t * K + 32 * b + 8 * s));
                const int sum = __dp4a((int)q1[u], xv.y, __dp4a((int)q0[u], xv.x, 0));
                acc[t] = fmaf(dv[u] * __ldg(xd + (uint64_t)t * nb + b), (float)sum, acc[t]);
            }
        }
    }
    kcu_mmv_store<1>(acc, y, ys, row, N, nt, lane);
}

/* The staged kernels' load step: the warp copies blocks [c0, c0 + 8 U) of
 * its row (BB bytes each, fewer at the row's end) into its shared-memory
 * area with 16-byte loads and returns how many it copied (a multiple of 8,
 * so the chunk stays 16-byte aligned). */
template <int BB, int U>
static __device__ __forceinline__ int kcu_stage_chunk(const uint4 *wr, int c0, int nb, int lane, uint8_t *my) {
    const int nblk = nb - c0 < 8 * U ? nb - c0 : 8 * U;
    const int n16 = nblk * BB / 16;
    __syncwarp();
    const uint4 *src = wr + (uint64_t)c0 * BB / 16;
#pragma unroll
    for (int i = 0; i < (8 * U * BB / 16 + 31) / 32; i++) {
        const int j = lane + 32 * i;
        if (j < n16) ((uint4 *)my)[j] = __ldg(src + j);
    }
    __syncwarp();
    return nblk;
}

/* The same products with the weights staged through shared memory: the
 * warp reads 8*U blocks of its row with 16-byte loads (a row of K = 4096 in
 * two steps), then each lane reads its quarter-block from shared memory.
 * One 16-byte load replaces three 2-byte loads per lane and block (blocks
 * of 18 and 34 bytes allow nothing wider in place). Needs rows that are a
 * multiple of 8 blocks starting 16-byte aligned. */
template <int T, int U, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q8x_staged_kernel(const kcu_mm_set set, const int8_t *xq, const float *xd, int K, int nt) {
    const kcu_mm_one m = kcu_mm_start(set);
    const uint8_t *w = m.w;
    float *y = m.y;
    const uint64_t ws = m.ws, ys = m.ys;
    const int N = m.N;
    constexpr int BB = T == KCU_Q4_0 ? 18 : 34; /* block bytes */
    __shared__ __align__(16) uint8_t sm[KCU_FAST_WARPS][8 * U * BB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = m.blk * KCU_FAST_WARPS + warp;
    if (row >= N) return;
    const int s = lane & 3, bl = lane >> 2, nb = K / 32;
    const uint4 *wr = (const uint4 *)(w + (uint64_t)row * ws);
    uint8_t *my = sm[warp];
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c0 = 0; c0 < nb; c0 += 8 * U) {
        const int nblk = kcu_stage_chunk<BB, U>(wr, c0, nb, lane, my);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int lb = bl + 8 * u, b = c0 + lb;
            if (lb >= nblk) break;
            const uint16_t *p = (const uint16_t *)(my + lb * BB);
            const float dw = __half2float(__ushort_as_half(p[0]));
            int w0, w1;
            if (T == KCU_Q4_0) {
                const uint32_t q = (uint32_t)p[1 + 2 * s] | ((uint32_t)p[2 + 2 * s] << 16);
                w0 = (int)__vsub4(q & 0x0F0F0F0Fu, 0x08080808u);
                w1 = (int)__vsub4((q >> 4) & 0x0F0F0F0Fu, 0x08080808u);
            } else {
                w0 = (int)((uint32_t)p[1 + 4 * s] | ((uint32_t)p[2 + 4 * s] << 16));
                w1 = (int)((uint32_t)p[3 + 4 * s] | ((uint32_t)p[4 + 4 * s] << 16));
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= nt) break;
                const int8_t *xp = xq + (uint64_t)t * K + 32 * b;
                int x0, x1;
                if (T == KCU_Q4_0) {
                    x0 = __ldg((const int *)(xp + 4 * s));
                    x1 = __ldg((const int *)(xp + 16 + 4 * s));
                } else {
                    const int2 xv = __ldg((const int2 *)(xp + 8 * s));
                    x0 = xv.x;
                    x1 = xv.y;
                }
                const int sum = __dp4a(w1, x1, __dp4a(w0, x0, 0));
                acc[t] = fmaf(dw * __ldg(xd + (uint64_t)t * nb + b), (float)sum, acc[t]);
            }
        }
    }
    kcu_mmv_store<1, NT>(acc, y, ys, row, N, nt, lane);
}

/* One Q4_0 block's integer dot product from its 16 quant bytes (element j
 * in the low nibble of byte j, element 16 + j in the high one) and its 32
 * int8 x: sum (q - 8) x = sum q x - 8 sum x, exact in int32. */
static __device__ __forceinline__ int kcu_q4_0_dot(const int4 q, const int4 xa, const int4 xb) {
    const uint32_t qw[4] = {(uint32_t)q.x, (uint32_t)q.y, (uint32_t)q.z, (uint32_t)q.w};
    const int xl[4] = {xa.x, xa.y, xa.z, xa.w}, xh[4] = {xb.x, xb.y, xb.z, xb.w};
    int s = 0, sx = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s = __dp4a((int)(qw[i] & 0x0F0F0F0Fu), xl[i], s);
        s = __dp4a((int)((qw[i] >> 4) & 0x0F0F0F0Fu), xh[i], s);
        sx = __dp4a(0x01010101, xl[i], sx);
        sx = __dp4a(0x01010101, xh[i], sx);
    }
    return s - 8 * sx;
}

/* Q8_0's block dot product: 32 signed quants against 32 int8 x. */
static __device__ __forceinline__ int kcu_q8_0_dot(const int4 q0, const int4 q1, const int4 xa, const int4 xb) {
    int sum = __dp4a(q0.x, xa.x, 0);
    sum = __dp4a(q0.y, xa.y, sum);
    sum = __dp4a(q0.z, xa.z, sum);
    sum = __dp4a(q0.w, xa.w, sum);
    sum = __dp4a(q1.x, xb.x, sum);
    sum = __dp4a(q1.y, xb.y, sum);
    sum = __dp4a(q1.z, xb.z, sum);
    return __dp4a(q1.w, xb.w, sum);
}

/* Q4_0 or Q8_0 (T) in the split layout (KCU_LAYOUT_SPLIT) with int8 x: a
 * warp per row, lane l takes whole blocks l, l + 32, ..., reading a
 * block's quants with one (Q4_0) or two (Q8_0) 16-byte loads and its scale
 * with one 2-byte load, U blocks in flight (measured for Q4_0: U = 2, one
 * warp per row, beat 1 and 4, two rows per warp and half-warp rows;
 * bench/decode_kernels.cu). Per token each lane adds its blocks in order,
 * then the warp's lanes are summed: the same order whatever the number of
 * tokens. */
template <int T, int U, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_split_q8x_kernel(const kcu_mm_set set, const int8_t *xq, const float *xd, int K, int nt) {
    constexpr int Q16 = T == KCU_Q4_0 ? 1 : 2; /* 16-byte quant loads per block */
    const kcu_mm_one m = kcu_mm_start(set);
    const int lane = threadIdx.x & 31, row = m.blk * KCU_FAST_WARPS + (threadIdx.x >> 5);
    if (row >= m.N) return;
    const int nb = K / 32;
    const uint8_t *wr = m.w + (uint64_t)row * m.ws;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int b0 = lane; b0 < nb; b0 += 32 * U) {
        int4 q[U][Q16];
        float d[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 32 * u;
            if (b < nb) {
#pragma unroll
                for (int k = 0; k < Q16; k++) q[u][k] = __ldg((const int4 *)wr + Q16 * b + k);
                d[u] = __half2float(__ldg((const __half *)(wr + 16 * Q16 * nb) + b));
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 32 * u;
            if (b >= nb) break;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= nt) break;
                const int8_t *xp = xq + (uint64_t)t * K + 32 * b;
                const int4 xa = __ldg((const int4 *)xp), xb = __ldg((const int4 *)(xp + 16));
                const int sum = T == KCU_Q4_0 ? kcu_q4_0_dot(q[u][0], xa, xb)
                                              : kcu_q8_0_dot(q[u][0], q[u][Q16 - 1], xa, xb);
                acc[t] = fmaf(d[u] * __ldg(xd + (uint64_t)t * nb + b), (float)sum, acc[t]);
            }
        }
    }
    kcu_mmv_store<1, NT>(acc, m.y, m.ys, row, m.N, nt, lane);
}

/* Rearranges rows of nb blocks of BB bytes in place into the split layout:
 * each block's BB - 2 bytes other than its F16 scale (at byte DOFF of the
 * block), in order, at (BB - 2) b, then the nb scales. A block per row
 * reads the whole row into shared memory, then writes it back. */
template <int BB, int DOFF>
static __global__ void split_layout_kernel(uint8_t *w, uint64_t ws, int nb) {
    constexpr int QB = BB - 2, QW = QB / 4, D16 = DOFF / 2;
    extern __shared__ __align__(16) uint8_t row_sm[];
    uint8_t *row = w + (uint64_t)blockIdx.x * ws;
    const int n16 = nb * BB / 16;
    for (int i = threadIdx.x; i < n16; i += blockDim.x) ((uint4 *)row_sm)[i] = ((const uint4 *)row)[i];
    __syncthreads();
    for (int b = threadIdx.x; b < nb; b += blockDim.x) {
        const uint16_t *src = (const uint16_t *)(row_sm + BB * b);
        uint32_t *dst = (uint32_t *)(row + QB * b);
#pragma unroll
        for (int i = 0; i < QW; i++) {
            const int h0 = 2 * i < D16 ? 2 * i : 2 * i + 1, h1 = 2 * i + 1 < D16 ? 2 * i + 1 : 2 * i + 2;
            dst[i] = (uint32_t)src[h0] | ((uint32_t)src[h1] << 16);
        }
        ((uint16_t *)(row + QB * nb))[b] = src[D16];
    }
}

kiln_status kcu_weight_prepare(kiln_bk_device *dev, const kiln_bk_tensor *w, int32_t *layout) {
    *layout = KCU_LAYOUT_GGUF;
    kiln_status st;
    if ((st = kcu_use(dev))) return st;
    /* KILN_CUDA_MMV variants benchmark the kernels of the GGUF layout */
    if ((w->type != KCU_Q4_0 && w->type != KCU_Q8_0 && w->type != KCU_Q6_K) || dev->mmv_variant != 0 ||
        dev->no_weight_layout)
        return KILN_OK;
    const int bb = w->type == KCU_Q4_0 ? 18 : w->type == KCU_Q8_0 ? 34 : 210;
    const int64_t K = w->ne[0], N = w->ne[1], nb = K / (w->type == KCU_Q6_K ? 256 : 32);
    uint8_t *p = kcu_tensor_ptr(w);
    /* rows 16-byte aligned: nb a multiple of 8 */
    if (K % 256 || nb % 8 || w->row_stride != (uint64_t)nb * bb || (uintptr_t)p % 16 || N <= 0 ||
        N > 0x7fffffff || nb * bb > 48 * 1024)
        return KILN_OK;
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: weight_prepare inside a graph");
    const size_t smem = (size_t)nb * bb;
    if (w->type == KCU_Q4_0)
        kcu_launch(split_layout_kernel<18, 0>, (unsigned)N, 256, smem, dev->stream, p, w->row_stride, (int)nb);
    else if (w->type == KCU_Q8_0)
        kcu_launch(split_layout_kernel<34, 0>, (unsigned)N, 256, smem, dev->stream, p, w->row_stride, (int)nb);
    else
        kcu_launch(split_layout_kernel<210, 208>, (unsigned)N, 256, smem, dev->stream, p, w->row_stride, (int)nb);
    KCU_LAUNCHED("weight_prepare");
    *layout = KCU_LAYOUT_SPLIT;
    return KILN_OK;
}

/* Byte k (0..11) of the 12 scale bytes held in three words, by selects
 * (an indexed register array would go to local memory). */
static __device__ __forceinline__ int kcu_byte12(uint32_t s0, uint32_t s1, uint32_t s2, int k) {
    const uint32_t w = k < 4 ? s0 : k < 8 ? s1 : s2;
    return (int)((w >> (8 * (k & 3))) & 0xFF);
}

/* Q4_K with int8 x: 8 lanes per 144-byte block; lane (c, h) owns 16 bytes
 * of the quants, i.e. elements 64c + 16h + [0, 16) (low nibbles, sub-block
 * 2c) and 64c + 32 + 16h + [0, 16) (high nibbles, sub-block 2c + 1). Blocks
 * of 144 bytes keep every row 16-byte aligned, so the weights are read with
 * 16-byte loads and no staging: the block's header (d, dmin, scales) and the
 * lane's quants, U blocks per lane in flight. Per sub-block:
 *   sum_i (d sc q_i - dmin m) x_i = xd (d sc dot(q, xq) - dmin m sum(xq)). */
template <int U, int NT>
static __device__ __forceinline__ void q4k_rows(const kcu_mm_one &m, const int8_t *xq, const float *xd, int K, int nt) {
    const int lane = threadIdx.x & 31, row = m.blk * KCU_FAST_WARPS + (threadIdx.x >> 5);
    if (row >= m.N) return;
    const int bi = lane >> 3, c = (lane >> 1) & 3, hh = lane & 1, nb = K / 256, nb32 = K / 32;
    const uint8_t *wr = m.w + (uint64_t)row * m.ws;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int b0 = bi; b0 < nb; b0 += 4 * U) {
        uint4 hd[U], qv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 4 * u;
            if (b < nb) {
                const uint4 *blk = (const uint4 *)(wr + (uint64_t)b * 144);
                hd[u] = __ldg(blk);
                qv[u] = __ldg(blk + 1 + 2 * c + hh);
            } else {
                hd[u] = qv[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 4 * u;
            if (b >= nb) break;
            const float d = __half2float(__ushort_as_half((unsigned short)(hd[u].x & 0xFFFF)));
            const float dmin = __half2float(__ushort_as_half((unsigned short)(hd[u].x >> 16)));
            const uint32_t s0 = hd[u].y, s1 = hd[u].z, s2 = hd[u].w;
            int sc[2], mn[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = 2 * c + e;
                if (j < 4) {
                    sc[e] = kcu_byte12(s0, s1, s2, j) & 63;
                    mn[e] = kcu_byte12(s0, s1, s2, j + 4) & 63;
                } else {
                    sc[e] = (kcu_byte12(s0, s1, s2, j + 4) & 0xF) | ((kcu_byte12(s0, s1, s2, j - 4) >> 6) << 4);
                    mn[e] = (kcu_byte12(s0, s1, s2, j + 4) >> 4) | ((kcu_byte12(s0, s1, s2, j) >> 6) << 4);
                }
            }
            const float dl = d * (float)sc[0], ml = dmin * (float)mn[0];
            const float dh = d * (float)sc[1], mh = dmin * (float)mn[1];
            const uint32_t q[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= nt) break;
                const int8_t *xp = xq + (uint64_t)t * K + 256 * b + 64 * c + 16 * hh;
                const int4 xl = __ldg((const int4 *)xp), xh = __ldg((const int4 *)(xp + 32));
                const int xlv[4] = {xl.x, xl.y, xl.z, xl.w}, xhv[4] = {xh.x, xh.y, xh.z, xh.w};
                int dotl = 0, doth = 0, suml = 0, sumh = 0;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    dotl = __dp4a((int)(q[i] & 0x0F0F0F0Fu), xlv[i], dotl);
                    doth = __dp4a((int)((q[i] >> 4) & 0x0F0F0F0Fu), xhv[i], doth);
                    suml = __dp4a(0x01010101, xlv[i], suml);
                    sumh = __dp4a(0x01010101, xhv[i], sumh);
                }
                const float *xdp = xd + (uint64_t)t * nb32 + 8 * b + 2 * c;
                acc[t] = fmaf(__ldg(xdp), dl * (float)dotl - ml * (float)suml, acc[t]);
                acc[t] = fmaf(__ldg(xdp + 1), dh * (float)doth - mh * (float)sumh, acc[t]);
            }
        }
    }
    kcu_mmv_store<1, NT>(acc, m.y, m.ys, row, m.N, nt, lane);
}

template <int U, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q4k_q8_kernel(const kcu_mm_set set, const int8_t *xq, const float *xd, int K, int nt) {
    q4k_rows<U, NT>(kcu_mm_start(set), xq, xd, K, nt);
}

/* Q6_K with int8 x. Blocks of 210 bytes are only 2-byte aligned, so the
 * warp stages 8 * U blocks of its row through shared memory with 16-byte
 * loads (8 blocks are 1680 bytes: rows with a multiple of 8 blocks keep
 * every chunk aligned), then 4 lanes share a block: lane s takes half
 * hf = s / 2 and positions l in 16 (s & 1) + [0, 16) of its 32, i.e. the
 * elements 128 hf + 32 g + l of the four groups g (quants: low or high
 * nibbles of ql[64 hf + l] or ql[64 hf + 32 + l], two bits of qh[32 hf + l];
 * scale sc[8 hf + (s & 1) + 2 g]). */
static __device__ __forceinline__ uint32_t kcu_sm_u32(const uint8_t *p) { /* 2-byte aligned */
    const uint16_t *q = (const uint16_t *)p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}

/* A lane's part of one Q6_K block (both Q6_K kernels, so both give the
 * same bits): words a (ql), bq (ql + 32) and h (qh) of its 16 positions,
 * ds[g] = d * sc of its four groups; adds each token's sums into acc. */
template <int NT>
static __device__ __forceinline__ void kcu_q6k_lane_block(const uint32_t a4[4], const uint32_t b4[4], const uint32_t h4[4],
                                                          const float ds[4], const int8_t *xq, const float *xd, int K,
                                                          int b, int hf, int l0, int nt, float *acc) {
    int w[4][4]; /* [group][word]: 4 signed quants per word */
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t a = a4[i], bq = b4[i], h = h4[i];
        w[0][i] = (int)__vsub4((a & 0x0F0F0F0Fu) | ((h & 0x03030303u) << 4), 0x20202020u);
        w[1][i] = (int)__vsub4((bq & 0x0F0F0F0Fu) | (((h >> 2) & 0x03030303u) << 4), 0x20202020u);
        w[2][i] = (int)__vsub4(((a >> 4) & 0x0F0F0F0Fu) | (((h >> 4) & 0x03030303u) << 4), 0x20202020u);
        w[3][i] = (int)__vsub4(((bq >> 4) & 0x0F0F0F0Fu) | (((h >> 6) & 0x03030303u) << 4), 0x20202020u);
    }
    const int nb32 = K / 32;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t >= nt) break;
        const int8_t *xp = xq + (uint64_t)t * K + 256 * b + 128 * hf + l0;
        const float *xdp = xd + (uint64_t)t * nb32 + 8 * b + 4 * hf;
#pragma unroll
        for (int g = 0; g < 4; g++) {
            const int4 xv = __ldg((const int4 *)(xp + 32 * g));
            int dot = __dp4a(w[g][0], xv.x, 0);
            dot = __dp4a(w[g][1], xv.y, dot);
            dot = __dp4a(w[g][2], xv.z, dot);
            dot = __dp4a(w[g][3], xv.w, dot);
            acc[t] = fmaf(__ldg(xdp + g) * ds[g], (float)dot, acc[t]);
        }
    }
}

template <int U, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q6k_q8_kernel(const kcu_mm_set set, const int8_t *xq, const float *xd, int K, int nt) {
    const kcu_mm_one m = kcu_mm_start(set);
    constexpr int BB = 210;
    __shared__ __align__(16) uint8_t sm[KCU_FAST_WARPS][8 * U * BB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = m.blk * KCU_FAST_WARPS + warp;
    if (row >= m.N) return;
    const int s = lane & 3, bl = lane >> 2, hf = s >> 1, l0 = 16 * (s & 1), nb = K / 256;
    const uint4 *wr = (const uint4 *)(m.w + (uint64_t)row * m.ws);
    uint8_t *my = sm[warp];
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c0 = 0; c0 < nb; c0 += 8 * U) {
        const int nblk = kcu_stage_chunk<BB, U>(wr, c0, nb, lane, my);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int lb = bl + 8 * u, b = c0 + lb;
            if (lb >= nblk) break;
            const uint8_t *blk = my + lb * BB;
            const float d = __half2float(__ushort_as_half(*(const uint16_t *)(blk + 208)));
            const int8_t *sc = (const int8_t *)(blk + 192 + 8 * hf + (s & 1));
            const uint8_t *ql = blk + 64 * hf + l0, *qh = blk + 128 + 32 * hf + l0;
            uint32_t a4[4], b4[4], h4[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a4[i] = kcu_sm_u32(ql + 4 * i);
                b4[i] = kcu_sm_u32(ql + 32 + 4 * i);
                h4[i] = kcu_sm_u32(qh + 4 * i);
            }
            float ds[4];
#pragma unroll
            for (int g = 0; g < 4; g++) ds[g] = d * (float)sc[2 * g];
            kcu_q6k_lane_block<NT>(a4, b4, h4, ds, xq, xd, K, b, hf, l0, nt, acc);
        }
    }
    kcu_mmv_store<1, NT>(acc, m.y, m.ys, row, m.N, nt, lane);
}

/* Q6_K in the split layout: a block's 208 bytes of quants and scales at
 * 208 b (16-byte aligned), its d after the row's blocks. The same lanes,
 * values and sums as mmv_q6k_q8_kernel (so the same bits), read straight
 * from global memory: three 16-byte loads (ql, ql + 32, qh) and one 8-byte
 * load (the half's scales) per lane and block, U blocks in flight. */
template <int U, int NT>
static __device__ __forceinline__ void q6ks_rows(const kcu_mm_one &m, const int8_t *xq, const float *xd, int K, int nt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = m.blk * KCU_FAST_WARPS + warp;
    if (row >= m.N) return;
    const int s = lane & 3, bl = lane >> 2, hf = s >> 1, l0 = 16 * (s & 1), nb = K / 256;
    const uint8_t *wr = m.w + (uint64_t)row * m.ws;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c0 = 0; c0 < nb; c0 += 8 * U) {
        uint4 qa[U], qb[U], qh[U];
        uint2 scv[U];
        float d[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = c0 + bl + 8 * u;
            if (b < nb) {
                const uint8_t *blk = wr + 208 * b;
                qa[u] = __ldg((const uint4 *)(blk + 64 * hf + l0));
                qb[u] = __ldg((const uint4 *)(blk + 64 * hf + 32 + l0));
                qh[u] = __ldg((const uint4 *)(blk + 128 + 32 * hf + l0));
                scv[u] = __ldg((const uint2 *)(blk + 192 + 8 * hf));
                d[u] = __half2float(__ldg((const __half *)(wr + 208 * nb) + b));
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = c0 + bl + 8 * u;
            if (b >= nb) break;
            const uint32_t av[4] = {qa[u].x, qa[u].y, qa[u].z, qa[u].w};
            const uint32_t bv[4] = {qb[u].x, qb[u].y, qb[u].z, qb[u].w};
            const uint32_t hv[4] = {qh[u].x, qh[u].y, qh[u].z, qh[u].w};
            /* sc[(s & 1) + 2 g] of the half's 8 scale bytes */
            float ds[4];
#pragma unroll
            for (int g = 0; g < 4; g++) {
                const int k = (s & 1) + 2 * g;
                const uint32_t word = k < 4 ? scv[u].x : scv[u].y;
                ds[g] = d[u] * (float)(int8_t)((word >> (8 * (k & 3))) & 0xFF);
            }
            kcu_q6k_lane_block<NT>(av, bv, hv, ds, xq, xd, K, b, hf, l0, nt, acc);
        }
    }
    kcu_mmv_store<1, NT>(acc, m.y, m.ys, row, m.N, nt, lane);
}

template <int U, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q6ks_q8_kernel(const kcu_mm_set set, const int8_t *xq, const float *xd, int K, int nt) {
    q6ks_rows<U, NT>(kcu_mm_start(set), xq, xd, K, nt);
}

/* Q4_K products followed by split Q6_K ones over one x in one launch (the
 * q, k and v of Q4_K_M's layers whose v is Q6_K): the blocks of products
 * [0, first6) run the Q4_K kernel's rows, the others the Q6_K kernel's,
 * the same code as apart, so the same bits. Two launches fewer per such
 * layer: each costs about 4 us of a decode step (bench/NOTES.md, session
 * 17). */
template <int U4, int U6, int NT = KCU_MMV_MAX>
static __global__ void __launch_bounds__(KCU_FAST_WARPS * 32)
    mmv_q4k_q6ks_kernel(const kcu_mm_set set, int first6, const int8_t *xq, const float *xd, int K, int nt) {
    const kcu_mm_one m = kcu_mm_start(set);
    if (blockIdx.x < set.blk_end[first6 - 1]) q4k_rows<U4, NT>(m, xq, xd, K, nt);
    else q6ks_rows<U6, NT>(m, xq, xd, K, nt);
}

/* Rows of w to dense F16. A lane decodes one 32-element group (64 bytes of
 * F16) into shared memory; then the warp stores its 32 consecutive groups
 * (2 KB of dst) with consecutive 16-byte stores, which a lane writing its
 * own 64 bytes did not give (the stores were a third of the prefill of a
 * Q4_0 model). Groups sit 80 bytes apart in shared memory, so the 8 lanes
 * of a 16-byte access phase hit distinct banks. */
#define KCU_DQ_PITCH 5 /* uint4 per group in shared memory (4 + 1 pad) */
template <int T>
static __global__ void __launch_bounds__(256) dequant_f16_kernel(const uint8_t *w, uint64_t ws, int64_t groups_per_row,
                                                                 int64_t n_groups, __half *dst) {
    kcu_pdl_wait();
    __shared__ uint4 sm[8][32 * KCU_DQ_PITCH];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint4 *my = sm[warp];
    for (int64_t g0 = ((int64_t)blockIdx.x * 8 + warp) * 32; g0 < n_groups; g0 += (int64_t)gridDim.x * 8 * 32) {
        const int64_t i = g0 + lane;
        if (i < n_groups) {
            const int64_t r = i / groups_per_row, g = i % groups_per_row;
            float v[32];
            kcu_dq32<T>(w + (uint64_t)r * ws, g, groups_per_row, v);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                __half2 h[4];
#pragma unroll
                for (int k = 0; k < 4; k++) h[k] = __floats2half2_rn(v[8 * j + 2 * k], v[8 * j + 2 * k + 1]);
                my[lane * KCU_DQ_PITCH + j] = *(const uint4 *)h;
            }
        }
        __syncwarp();
        const int64_t left = n_groups - g0, n16 = 4 * (left < 32 ? left : 32);
        uint4 *o = (uint4 *)(dst + 32 * g0);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int idx = lane + 32 * k;
            if (idx < n16) o[idx] = my[(idx >> 2) * KCU_DQ_PITCH + (idx & 3)];
        }
        __syncwarp();
    }
}

static __global__ void to_f16_kernel(const float *x, uint64_t xs, __half *y, int64_t K, int64_t total) {
    kcu_pdl_wait();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[(i / K) * xs + i % K]);
}

static __global__ void to_bf16_kernel(const float *x, uint64_t xs, __nv_bfloat16 *y, int64_t K, int64_t total) {
    kcu_pdl_wait();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[(i / K) * xs + i % K]);
}

static unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

kiln_status kcu_dequant_f16(kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t r0, int64_t n, __half *dst) {
    const int64_t gpr = w->ne[0] / 32, total = gpr * n;
    const uint8_t *wp = kcu_tensor_ptr(w) + (uint64_t)r0 * w->row_stride;
    const unsigned grid = grid_for(total, 256);
#define DQ(T_)                                                                                       \
    case T_:                                                                                         \
        kcu_launch(dequant_f16_kernel<T_>, grid, 256, 0, dev->stream, wp, w->row_stride, gpr, total, dst);   \
        break;
    switch (kcu_wtype(w)) {
        DQ(KCU_F32) DQ(KCU_F16) DQ(KCU_BF16) DQ(KCU_Q4_0) DQ(KCU_Q4_0S) DQ(KCU_Q8_0S) DQ(KCU_Q6_KS) DQ(KCU_Q4_1) DQ(KCU_Q5_0) DQ(KCU_Q5_1) DQ(KCU_Q8_0)
        DQ(KCU_Q4_K) DQ(KCU_Q5_K) DQ(KCU_Q6_K)
    default: return kcu_error(KILN_E_UNSUPPORTED, "cuda matmul: weight type %d", w->type);
    }
#undef DQ
    KCU_LAUNCHED("dequantize");
    return KILN_OK;
}

static kiln_status cublas_status(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return KILN_OK;
    return kcu_error(s == CUBLAS_STATUS_ALLOC_FAILED ? KILN_E_OOM_DEVICE : KILN_E_BACKEND, "cuda matmul: %s failed (%d)",
                     what, (int)s);
}

/* The set for products w[0..n) over one x: rows_per_block rows per block. */
static kcu_mm_set mm_set(const kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                         kiln_bk_tensor *const *dst, int rows_per_block, unsigned *grid) {
    kcu_mm_set set;
    memset(&set, 0, sizeof set);
    set.rows_per_block = rows_per_block;
    unsigned end = 0;
    uint64_t pf_left = dev->prefetch_bytes; /* the launch's first blocks are resident first */
    for (uint32_t i = 0; i < KCU_MULTI_MAX; i++) {
        if (i < n) {
            set.w[i] = kcu_tensor_ptr(w[i]);
            set.y[i] = (float *)kcu_tensor_ptr(dst[i]);
            set.ws[i] = w[i]->row_stride;
            set.ys[i] = dst[i]->row_stride / 4;
            set.N[i] = (int)w[i]->ne[1];
            const unsigned nblk = (unsigned)((set.N[i] + rows_per_block - 1) / rows_per_block);
            const uint64_t blk_bytes = (uint64_t)rows_per_block * w[i]->row_stride;
            const uint64_t pf = blk_bytes ? pf_left / blk_bytes : 0;
            set.pf_blk[i] = pf < nblk ? (unsigned)pf : nblk;
            pf_left -= set.pf_blk[i] * blk_bytes;
            end += nblk;
        }
        set.blk_end[i] = end;
    }
    *grid = end;
    return set;
}

/* Whether the products w[0..n) over x can share one launch of the int8
 * (Q4_0/Q8_0) or F16 decode kernels: one type, 16-byte aligned rows. */
static bool mmv_can_share(const kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                          const kiln_bk_tensor *x) {
    const int32_t type = w[0]->type;
    const int64_t K = w[0]->ne[0];
    if (type == KCU_F16) {
        const uintptr_t xp = (uintptr_t)kcu_tensor_ptr(x);
        if (xp % 16 || x->row_stride % 16 || K % 8 || (dev->mmv_variant >= 1 && dev->mmv_variant <= 3)) return false;
    } else if ((type == KCU_Q4_0 || type == KCU_Q8_0 || type == KCU_Q6_K) && w[0]->layout == KCU_LAYOUT_SPLIT) {
        /* only these kernels read the layout (prepared rows are aligned) */
    } else if (type == KCU_Q4_0 || type == KCU_Q8_0) {
        if (dev->mmv_variant == 4 || dev->mmv_variant == 5 || (K / 32) % 8) return false;
    } else if (type == KCU_Q4_K) {
        if (dev->mmv_variant == 4 || K % 256) return false; /* KILN_CUDA_MMV=4: the generic float-x kernel */
    } else if (type == KCU_Q6_K) {
        if (dev->mmv_variant == 4 || K % 256 || (K / 256) % 8) return false;
    } else {
        return false;
    }
    for (uint32_t i = 0; i < n; i++)
        if (w[i]->type != type || w[i]->layout != w[0]->layout || w[i]->ne[0] != K ||
            (uintptr_t)kcu_tensor_ptr(w[i]) % 16 || w[i]->row_stride % 16)
            return false;
    return true;
}

/* The int8 copy of x (quantized here unless the last product's copy or its
 * producer's is still valid). */
static kiln_status mmv_int8_x(kiln_bk_device *dev, const kiln_bk_tensor *x, int8_t **xq_out, float **xd_out) {
    const int nt = (int)x->ne[1];
    const int64_t K = x->ne[0];
    const int nb = (int)(K / 32);
    const float *xp = (const float *)kcu_tensor_ptr(x);
    dev->int8_seen = true; /* producers of x write int8 copies from now on */
    const bool reuse = dev->xq_buf && dev->xq_src == xp && dev->xq_stride == x->row_stride && dev->xq_K == K &&
                       dev->xq_nt == nt;
    if (!reuse) {
        kcu_xq_release(dev);
        kiln_status st = kcu_pool_alloc(dev, (uint64_t)nt * K + (uint64_t)nt * nb * sizeof(float), &dev->xq_buf);
        if (st) return st;
    }
    int8_t *xq = (int8_t *)dev->xq_buf->ptr;
    float *xd = (float *)(xq + (uint64_t)nt * K); /* K is a multiple of 32: aligned */
    if (!reuse) {
        kcu_launch(quant_x_q8_kernel, dim3((unsigned)((nb + 3) / 4), (unsigned)nt), 128, 0, dev->stream, xp,
                   x->row_stride / 4, (int)K, xq, xd);
        dev->xq_src = xp;
        dev->xq_stride = x->row_stride;
        dev->xq_K = K;
        dev->xq_nt = nt;
    }
    *xq_out = xq;
    *xd_out = xd;
    return KILN_OK;
}

/* After launching int8 products: an output overlapping x makes the cached
 * int8 copy of x stale, and a failed launch drops it too. */
static kiln_status int8_launched(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                                 const kiln_bk_tensor *x, kiln_bk_tensor *const *dst) {
    const cudaError_t e = cudaGetLastError();
    const uint8_t *x0 = (const uint8_t *)kcu_tensor_ptr(x);
    const uint8_t *x1 = x0 + (uint64_t)(x->ne[1] - 1) * x->row_stride + (uint64_t)x->ne[0] * 4;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d0 = (const uint8_t *)kcu_tensor_ptr(dst[i]);
        const uint8_t *d1 = d0 + (uint64_t)(dst[i]->ne[1] - 1) * dst[i]->row_stride + (uint64_t)w[i]->ne[1] * 4;
        if (d0 < x1 && x0 < d1) kcu_xq_release(dev);
    }
    if (e != cudaSuccess) {
        kcu_xq_release(dev);
        return kcu_cuda_error(e, "matrix-vector product (int8)");
    }
    return KILN_OK;
}

/* The one-token split Q6_K kernel's blocks per lane step: two for rows of
 * a multiple of 16 blocks, else (K = 14336: 56 blocks) one, so that no lane
 * step is half empty (the same blocks in the same order per lane either
 * way). */
static bool q6ks_two_per_step(int K) {
    return (K / 256) % 16 == 0;
}

/* Products that mmv_can_share() accepted, in one launch. */
static kiln_status mmv_shared(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                              const kiln_bk_tensor *x, kiln_bk_tensor *const *dst) {
    const int nt = (int)x->ne[1], K = (int)w[0]->ne[0], v = dev->mmv_variant;
    unsigned grid = 0;
    if (w[0]->type == KCU_F16) {
        /* 2 rows per warp, 2 load steps in flight: measured best on H100
         * (one row per warp is 1.03-1.23x faster alone, bench/decode_kernels.cu,
         * but 1% slower in the whole step: bench/NOTES.md) */
        /* KILN_CUDA_MMV=14: one row per warp for one token (same bits) */
        const kcu_mm_set set = mm_set(dev, n, w, dst, KCU_FAST_WARPS * (nt == 1 && v == 14 ? 1 : 2), &grid);
        /* one token (the decode step): a kernel with one accumulator per
         * row (fewer registers, more warps in flight; the same sums) */
        if (nt == 1 && v == 14)
            kcu_launch(mmv_f16_kernel<2, 1, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set,
                       (const float *)kcu_tensor_ptr(x), x->row_stride / 4, K, nt);
        else if (nt == 1 && v != 13)
            kcu_launch(mmv_f16_kernel<2, 2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set,
                       (const float *)kcu_tensor_ptr(x), x->row_stride / 4, K, nt);
        else
            kcu_launch(mmv_f16_kernel<2, 2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set,
                       (const float *)kcu_tensor_ptr(x), x->row_stride / 4, K, nt);
        KCU_LAUNCHED("matrix-vector product (f16)");
        return KILN_OK;
    }
    int8_t *xq;
    float *xd;
    kiln_status st = mmv_int8_x(dev, x, &xq, &xd);
    if (st) return st;
    const kcu_mm_set set = mm_set(dev, n, w, dst, KCU_FAST_WARPS, &grid);
    const bool q4 = w[0]->type == KCU_Q4_0;
    /* one token: kernels with one accumulator (KILN_CUDA_MMV=13: not) */
    const bool one = nt == 1 && v != 13;
    if (w[0]->layout == KCU_LAYOUT_SPLIT && q4) {
        if (one)
            kcu_launch(mmv_split_q8x_kernel<KCU_Q4_0, 2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
        else kcu_launch(mmv_split_q8x_kernel<KCU_Q4_0, 2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    } else if (w[0]->layout == KCU_LAYOUT_SPLIT && w[0]->type == KCU_Q6_K) {
        const bool u2 = q6ks_two_per_step(K);
        if (one && u2) kcu_launch(mmv_q6ks_q8_kernel<2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
        else if (one) kcu_launch(mmv_q6ks_q8_kernel<1, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
        else kcu_launch(mmv_q6ks_q8_kernel<2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    } else if (w[0]->layout == KCU_LAYOUT_SPLIT) {
        if (one)
            kcu_launch(mmv_split_q8x_kernel<KCU_Q8_0, 2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
        else kcu_launch(mmv_split_q8x_kernel<KCU_Q8_0, 2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    } else if (one && w[0]->type == KCU_Q4_K) /* two blocks per lane step: 329-332 t/s vs 313 (four), 302 (one) */
        kcu_launch(mmv_q4k_q8_kernel<2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (one && w[0]->type == KCU_Q6_K)
        kcu_launch(mmv_q6k_q8_kernel<2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (one && q4 && v != 8)
        kcu_launch(mmv_q8x_staged_kernel<KCU_Q4_0, 8, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (one && w[0]->type == KCU_Q8_0)
        kcu_launch(mmv_q8x_staged_kernel<KCU_Q8_0, 4, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (w[0]->type == KCU_Q4_K)
        kcu_launch(mmv_q4k_q8_kernel<4>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (w[0]->type == KCU_Q6_K)
        kcu_launch(mmv_q6k_q8_kernel<2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (v == 8 && q4)
        kcu_launch(mmv_q8x_staged_kernel<KCU_Q4_0, 16>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else if (q4)
        kcu_launch(mmv_q8x_staged_kernel<KCU_Q4_0, 8>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    else
        kcu_launch(mmv_q8x_staged_kernel<KCU_Q8_0, 4>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, xq, xd, K, nt);
    return int8_launched(dev, n, w, x, dst);
}

/* Where the products w[0..n) over x are Q4_K ones followed by split Q6_K
 * ones, each run sharing a launch by itself (mmv_can_share): the index of
 * the first Q6_K product, for mmv_q4k_q6ks_kernel; 0 otherwise. */
static uint32_t mixed_q4k_q6ks(const kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                               const kiln_bk_tensor *x) {
    uint32_t first6 = 0;
    while (first6 < n && w[first6]->type == KCU_Q4_K) first6++;
    if (first6 == 0 || first6 == n || dev->mmv_variant != 0 || dev->no_mixed) return 0;
    for (uint32_t i = first6; i < n; i++)
        if (w[i]->type != KCU_Q6_K || w[i]->layout != KCU_LAYOUT_SPLIT || w[i]->ne[0] != w[0]->ne[0]) return 0;
    return mmv_can_share(dev, first6, w, x) && mmv_can_share(dev, n - first6, w + first6, x) ? first6 : 0;
}

/* Products that mixed_q4k_q6ks() accepted, in one launch (the kernel
 * variants mmv_shared takes for each type apart). */
static kiln_status mmv_mixed(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                             const kiln_bk_tensor *x, kiln_bk_tensor *const *dst, uint32_t first6) {
    const int nt = (int)x->ne[1], K = (int)w[0]->ne[0];
    int8_t *xq;
    float *xd;
    kiln_status st = mmv_int8_x(dev, x, &xq, &xd);
    if (st) return st;
    unsigned grid = 0;
    const kcu_mm_set set = mm_set(dev, n, w, dst, KCU_FAST_WARPS, &grid);
    const bool u2 = q6ks_two_per_step(K);
    if (nt == 1 && u2)
        kcu_launch(mmv_q4k_q6ks_kernel<2, 2, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, (int)first6, xq, xd, K, nt);
    else if (nt == 1)
        kcu_launch(mmv_q4k_q6ks_kernel<2, 1, 1>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, (int)first6, xq, xd, K, nt);
    else
        kcu_launch(mmv_q4k_q6ks_kernel<4, 2>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, set, (int)first6, xq, xd, K, nt);
    return int8_launched(dev, n, w, x, dst);
}

static kiln_status matmul_mmv(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                              kiln_bk_tensor *dst) {
    if (mmv_can_share(dev, 1, &w, x)) return mmv_shared(dev, 1, &w, x, &dst);
    const int N = (int)w->ne[1], nt = (int)x->ne[1];
    const int64_t K = w->ne[0];
    const int rows_per_block = KCU_MMV_WARPS * KCU_MMV_ROWS;
    const unsigned grid = (unsigned)((N + rows_per_block - 1) / rows_per_block);
    const size_t smem = (size_t)nt * KCU_MMV_PITCH * sizeof(float);
    const uint8_t *wp = kcu_tensor_ptr(w);
    const float *xp = (const float *)kcu_tensor_ptr(x);
    float *yp = (float *)kcu_tensor_ptr(dst);
    const uint64_t xs = x->row_stride / 4, ys = dst->row_stride / 4;
    const bool x16 = ((uintptr_t)xp % 16 == 0) && (x->row_stride % 16 == 0);
    /* kernel variants (U load steps in flight, R rows per warp), chosen by
     * measurement (bench/NOTES.md); KILN_CUDA_MMV=1..8 picks one for
     * benchmarking */
    const int v = dev->mmv_variant;
#define FAST(K_, U_, R_)                                                                                        \
    kcu_launch(K_<U_, R_>, (unsigned)((N + KCU_FAST_WARPS * R_ - 1) / (KCU_FAST_WARPS * R_)), KCU_FAST_WARPS * 32, 0,    \
                 dev->stream, wp, w->row_stride, xp, xs, yp, ys, N, (int)K, nt)
    if ((w->type == KCU_Q4_0 || w->type == KCU_Q8_0) && v != 4) { /* unaligned rows, or KILN_CUDA_MMV=5 */
        int8_t *xq;
        float *xd;
        kiln_status st = mmv_int8_x(dev, x, &xq, &xd);
        if (st) return st;
        const unsigned grid = (unsigned)((N + KCU_FAST_WARPS - 1) / KCU_FAST_WARPS);
        if (w->type == KCU_Q4_0)
            kcu_launch(mmv_q4_0_q8_kernel<8>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, wp, w->row_stride, xq, xd, yp,
                       ys, N, (int)K, nt);
        else
            kcu_launch(mmv_q8_0_q8_kernel<4>, grid, KCU_FAST_WARPS * 32, 0, dev->stream, wp, w->row_stride, xq, xd, yp,
                       ys, N, (int)K, nt);
        return int8_launched(dev, 1, &w, x, &dst);
    }
    if (x16 && w->type == KCU_F16 && (uintptr_t)wp % 16 == 0 && w->row_stride % 16 == 0 && K % 8 == 0) {
        /* KILN_CUDA_MMV=1..3: other (U, R) for comparison */
        unsigned g = 0;
        const kcu_mm_set set = mm_set(dev, 1, &w, &dst, KCU_FAST_WARPS * (v == 3 ? 2 : 1), &g);
        if (v == 1) kcu_launch(mmv_f16_kernel<4, 1>, g, KCU_FAST_WARPS * 32, 0, dev->stream, set, xp, xs, (int)K, nt);
        else if (v == 2) kcu_launch(mmv_f16_kernel<8, 1>, g, KCU_FAST_WARPS * 32, 0, dev->stream, set, xp, xs, (int)K, nt);
        else kcu_launch(mmv_f16_kernel<4, 2>, g, KCU_FAST_WARPS * 32, 0, dev->stream, set, xp, xs, (int)K, nt);
        KCU_LAUNCHED("matrix-vector product (f16)");
        return KILN_OK;
    }
    if (x16 && w->type == KCU_Q4_0) {
        if (v == 1) FAST(mmv_q4_0_kernel, 8, 1);
        else if (v == 2) FAST(mmv_q4_0_kernel, 4, 2);
        else if (v == 3) FAST(mmv_q4_0_kernel, 2, 1);
        else FAST(mmv_q4_0_kernel, 4, 1);
#undef FAST
        KCU_LAUNCHED("matrix-vector product (q4_0)");
        return KILN_OK;
    }
#define MMV(T_)                                                                                          \
    case T_:                                                                                             \
        if (smem > 48 * 1024)                                                                            \
            cudaFuncSetAttribute(mmv_kernel<T_>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem); \
        kcu_launch(mmv_kernel<T_>, grid, KCU_MMV_WARPS * 32, smem, dev->stream, wp, w->row_stride, xp, xs, yp, ys, N, K, nt); \
        break;
    switch (kcu_wtype(w)) {
        MMV(KCU_F32) MMV(KCU_F16) MMV(KCU_BF16) MMV(KCU_Q4_0) MMV(KCU_Q4_0S) MMV(KCU_Q8_0S) MMV(KCU_Q6_KS) MMV(KCU_Q4_1) MMV(KCU_Q5_0) MMV(KCU_Q5_1) MMV(KCU_Q8_0)
        MMV(KCU_Q4_K) MMV(KCU_Q5_K) MMV(KCU_Q6_K)
    default: return kcu_error(KILN_E_UNSUPPORTED, "cuda matmul: weight type %d", w->type);
    }
#undef MMV
    KCU_LAUNCHED("matrix-vector product");
    return KILN_OK;
}

/* x (M x K, F32) converted to `type` (F16 or BF16) in a pool buffer. */
static kiln_status convert_x(kiln_bk_device *dev, const kiln_bk_tensor *x, int type, kiln_bk_buffer **out) {
    const int64_t M = x->ne[1], K = x->ne[0];
    kiln_status st = kcu_pool_alloc(dev, (uint64_t)M * K * 2, out);
    if (st) return st;
    const float *xp = (const float *)kcu_tensor_ptr(x);
    if (type == KCU_BF16)
        kcu_launch(to_bf16_kernel, grid_for(M * K, 256), 256, 0, dev->stream, xp, x->row_stride / 4,
                                                                     (__nv_bfloat16 *)(*out)->ptr, K, M * K);
    else
        kcu_launch(to_f16_kernel, grid_for(M * K, 256), 256, 0, dev->stream, xp, x->row_stride / 4, (__half *)(*out)->ptr, K,
                                                                    M * K);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        kcu_pool_free(*out);
        *out = NULL;
        return kcu_cuda_error(e, "convert activations");
    }
    return KILN_OK;
}

/* x's type for a product with w on cuBLAS (F32 weights take x as it is). */
static int cublas_x_type(const kiln_bk_tensor *w) {
    return w->type == KCU_F32 ? KCU_F32 : w->type == KCU_BF16 ? KCU_BF16 : KCU_F16;
}

/* dst = w x on cuBLAS; xh: x already converted to cublas_x_type(w) (dense
 * rows of K), or NULL to convert it here. */
static kiln_status matmul_cublas(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                 kiln_bk_tensor *dst, const void *xh) {
    const int64_t N = w->ne[1], K = w->ne[0], M = x->ne[1];
    const float one = 1.0f, zero = 0.0f;
    float *yp = (float *)kcu_tensor_ptr(dst);
    const int ldc = (int)(dst->row_stride / 4);
    kiln_status st = kcu_cublas(dev);
    if (st) return st;
    if (w->type == KCU_F32) {
        return cublas_status(cublasSgemm(dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one,
                                         (const float *)kcu_tensor_ptr(w), (int)(w->row_stride / 4),
                                         (const float *)kcu_tensor_ptr(x), (int)(x->row_stride / 4), &zero, yp, ldc),
                             "sgemm");
    }
    const int xt = cublas_x_type(w);
    const cudaDataType ct = xt == KCU_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    kiln_bk_buffer *xb = NULL;
    if (!xh) {
        if ((st = convert_x(dev, x, xt, &xb))) return st;
        xh = xb->ptr;
    }
    if (w->type == KCU_F16 || w->type == KCU_BF16) {
        st = cublas_status(cublasGemmEx(dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one,
                                        kcu_tensor_ptr(w), ct, (int)(w->row_stride / 2), xh, ct, (int)K, &zero, yp,
                                        CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                           "gemm");
        kcu_pool_free(xb);
        return st;
    }
    /* quantized: dequantize chunks of rows to F16, then multiply */
    int64_t chunk = ((int64_t)64 << 20) / (K * 2);
    chunk = chunk < 256 ? 256 : chunk / 256 * 256;
    if (chunk > N) chunk = N;
    kiln_bk_buffer *wb = NULL;
    if ((st = kcu_pool_alloc(dev, (uint64_t)chunk * K * 2, &wb))) {
        kcu_pool_free(xb);
        return st;
    }
    for (int64_t r0 = 0; r0 < N && !st; r0 += chunk) {
        const int64_t n = N - r0 < chunk ? N - r0 : chunk;
        if ((st = kcu_dequant_f16(dev, w, r0, n, (__half *)wb->ptr))) break;
        st = cublas_status(cublasGemmEx(dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)M, (int)K, &one, wb->ptr,
                                        CUDA_R_16F, (int)K, xh, CUDA_R_16F, (int)K, &zero, yp + r0, CUDA_R_32F, ldc,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                           "gemm");
    }
    kcu_pool_free(wb);
    kcu_pool_free(xb);
    return st;
}

kiln_status kcu_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x, kiln_bk_tensor *dst) {
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(w, -1, "matmul", "w")) ||
        (st = kcu_tensor_check(x, KCU_F32, "matmul", "x")) || (st = kcu_tensor_check(dst, KCU_F32, "matmul", "dst")))
        return st;
    if (x->ne[0] != w->ne[0] || dst->ne[0] != w->ne[1] || dst->ne[1] != x->ne[1])
        return kcu_error(KILN_E_INVALID_ARG, "cuda matmul: w %lldx%lld, x %lldx%lld, dst %lldx%lld",
                         (long long)w->ne[0], (long long)w->ne[1], (long long)x->ne[0], (long long)x->ne[1],
                         (long long)dst->ne[0], (long long)dst->ne[1]);
    if (w->ne[0] % 32)
        return kcu_error(KILN_E_UNSUPPORTED, "cuda matmul: rows of %lld elements (need a multiple of 32)",
                         (long long)w->ne[0]);
    if (w->ne[1] > 0x7fffffff || x->ne[1] > 0x7fffffff || w->ne[0] > 0x7fffffff)
        return kcu_error(KILN_E_INVALID_ARG, "cuda matmul: too large");
    if (x->ne[1] == 0 || w->ne[1] == 0) return KILN_OK;
    struct { kiln_bk_tensor w, x, d; } args;
    memset(&args, 0, sizeof args);
    args.w = *w, args.x = *x, args.d = *dst;
    if (!kcu_op_matmul(dev, &args, sizeof args)) return KILN_OK;
    if (x->ne[1] <= KCU_MMV_MAX && ((dev->skip & KCU_SKIP_MMV) || ((dev->skip & KCU_SKIP_MMV_SQUARE) && w->ne[0] == w->ne[1]) ||
                                    ((dev->skip & KCU_SKIP_MMV_TALL) && w->ne[0] > w->ne[1]) ||
                                    ((dev->skip & KCU_SKIP_MMV_WIDE) && w->ne[1] > 4 * w->ne[0])))
        return KILN_OK;
    const bool int8_path = x->ne[1] <= KCU_MMV_MAX &&
                           (w->type == KCU_Q4_0 || w->type == KCU_Q8_0 || w->type == KCU_Q4_K ||
                            w->type == KCU_Q6_K) &&
                           dev->mmv_variant != 4;
    if (!int8_path) kcu_xq_release(dev);
    if (x->ne[1] <= KCU_MMV_MAX) return matmul_mmv(dev, w, x, dst);
    if (x->ne[1] <= KCU_MMV_CHUNKED_MAX) {
        /* a speculative verify batch: the decode kernels, KCU_MMV_MAX rows
         * at a time, so that each row gets the bits it gets when decoded
         * (greedy speculative output = plain greedy output); cheaper than
         * dequantizing the weights for cuBLAS at these sizes too */
        for (int64_t t0 = 0; t0 < x->ne[1] && !st; t0 += KCU_MMV_MAX) {
            kiln_bk_tensor xs = *x, ds = *dst;
            xs.offset += (uint64_t)t0 * x->row_stride;
            ds.offset += (uint64_t)t0 * dst->row_stride;
            xs.ne[1] = ds.ne[1] = x->ne[1] - t0 < KCU_MMV_MAX ? x->ne[1] - t0 : KCU_MMV_MAX;
            st = matmul_mmv(dev, w, &xs, &ds);
        }
        return st;
    }
    return matmul_cublas(dev, w, x, dst, NULL);
}

kiln_status kcu_matmul_multi(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                             const kiln_bk_tensor *x, kiln_bk_tensor *const *dst) {
    if (!w || !dst || n == 0 || n > KCU_MULTI_MAX)
        return kcu_error(KILN_E_INVALID_ARG, "cuda matmul_multi: %u products (1..%d)", n, KCU_MULTI_MAX);
    for (uint32_t i = 0; i < n; i++)
        if (!w[i] || !dst[i]) return kcu_error(KILN_E_INVALID_ARG, "cuda matmul_multi: NULL tensor");
    kiln_status st;
    if ((st = kcu_use(dev)) || (st = kcu_tensor_check(x, KCU_F32, "matmul_multi", "x"))) return st;
    if (x->ne[1] > KCU_MMV_MAX && x->ne[1] <= KCU_MMV_CHUNKED_MAX) {
        /* as kcu_matmul: KCU_MMV_MAX rows at a time through the decode kernels */
        for (int64_t t0 = 0; t0 < x->ne[1] && !st; t0 += KCU_MMV_MAX) {
            const int64_t m = x->ne[1] - t0 < KCU_MMV_MAX ? x->ne[1] - t0 : KCU_MMV_MAX;
            kiln_bk_tensor xs = *x, ds[KCU_MULTI_MAX];
            kiln_bk_tensor *dp[KCU_MULTI_MAX];
            xs.offset += (uint64_t)t0 * x->row_stride;
            xs.ne[1] = m;
            for (uint32_t i = 0; i < n; i++) {
                ds[i] = *dst[i];
                ds[i].offset += (uint64_t)t0 * dst[i]->row_stride;
                ds[i].ne[1] = m;
                dp[i] = &ds[i];
            }
            st = kcu_matmul_multi(dev, n, w, &xs, dp);
        }
        return st;
    }
    bool shared = n > 1 && x->ne[1] > 0 && x->ne[1] <= KCU_MMV_MAX && mmv_can_share(dev, n, w, x);
    /* or Q4_K products then split Q6_K ones (Q4_K_M's q, k and v) */
    uint32_t first6 = !shared && n > 1 && x->ne[1] > 0 && x->ne[1] <= KCU_MMV_MAX ? mixed_q4k_q6ks(dev, n, w, x) : 0;
    shared = shared || first6;
    for (uint32_t i = 0; shared && i < n; i++) {
        if ((st = kcu_tensor_check(w[i], -1, "matmul_multi", "w")) ||
            (st = kcu_tensor_check(dst[i], KCU_F32, "matmul_multi", "dst")))
            return st;
        if (dst[i]->ne[0] != w[i]->ne[1] || dst[i]->ne[1] != x->ne[1] || w[i]->ne[1] == 0 ||
            w[i]->ne[1] > 0x7fffffff || w[i]->ne[0] > 0x7fffffff)
            shared = false; /* matmul reports the shape */
    }
    if (!shared) {
        /* batches: x converted once for all the products that take the
         * same type on cuBLAS (q/k/v, gate/up of a prefill) */
        const bool batch = n > 1 && x->ne[1] > KCU_MMV_MAX;
        const int xt = batch ? cublas_x_type(w[0]) : KCU_F32;
        bool same = batch && xt != KCU_F32 && x->ne[0] <= 0x7fffffff && !dev->graph_mode; /* graphs: per product */
        for (uint32_t i = 0; same && i < n; i++) {
            if ((st = kcu_tensor_check(w[i], -1, "matmul_multi", "w")) ||
                (st = kcu_tensor_check(dst[i], KCU_F32, "matmul_multi", "dst")))
                return st;
            same = cublas_x_type(w[i]) == xt && w[i]->ne[0] == x->ne[0] && w[i]->ne[0] % 32 == 0 &&
                   dst[i]->ne[0] == w[i]->ne[1] && dst[i]->ne[1] == x->ne[1] && w[i]->ne[1] > 0 &&
                   w[i]->ne[1] <= 0x7fffffff;
        }
        if (!same) {
            for (uint32_t i = 0; i < n; i++)
                if ((st = kcu_matmul(dev, w[i], x, dst[i]))) return st;
            return KILN_OK;
        }
        kcu_xq_release(dev);
        kiln_bk_buffer *xb = NULL;
        if ((st = convert_x(dev, x, xt, &xb))) return st;
        for (uint32_t i = 0; i < n && !st; i++) st = matmul_cublas(dev, w[i], x, dst[i], xb->ptr);
        kcu_pool_free(xb);
        return st;
    }
    struct { kiln_bk_tensor w[KCU_MULTI_MAX], x, d[KCU_MULTI_MAX]; uint32_t n; } args;
    memset(&args, 0, sizeof args);
    for (uint32_t i = 0; i < n; i++) args.w[i] = *w[i], args.d[i] = *dst[i];
    args.x = *x;
    args.n = n;
    if (!kcu_op_matmul(dev, &args, sizeof args)) return KILN_OK;
    if ((dev->skip & KCU_SKIP_MMV) || ((dev->skip & KCU_SKIP_MMV_MULTI3) && n == 3) ||
        ((dev->skip & KCU_SKIP_MMV_MULTI2) && n == 2))
        return KILN_OK;
    return first6 ? mmv_mixed(dev, n, w, x, dst, first6) : mmv_shared(dev, n, w, x, dst);
}

