/*
 * bench/decode_kernels.cu - decode (one token) matrix-vector kernels alone,
 * on the 7B shapes, weights out of L2.
 *
 * 1. Does the Q4_0 decode product read faster from a device layout with
 *    the quants of a row apart from its scales?
 *
 * A GGUF Q4_0 block is 18 bytes (an F16 scale, then 16 bytes of nibbles), so
 * a lane cannot read a block's quants with one aligned 16-byte load; kiln's
 * decode kernel stages each row chunk through shared memory first. Here the
 * same row is stored as [nb x 16 bytes of quants][nb x F16 scales] (the same
 * 18 bytes per block), and a lane reads whole blocks' quants straight from
 * global memory, U blocks in flight, like the F16 kernel that reaches
 * 2.7+ TB/s. Measures both on the 7B decode shapes (one token, int8 x),
 * with enough weight copies cycled that L2 holds none of them, and checks
 * both against a float64 host product.
 * 2. F16: kiln's kernel (two rows per warp) against one row per warp and
 *    split-K (S warps of a block share a row, each over a contiguous
 *    1/S of it, parts added in order through shared memory), for the
 *    shapes where it stays under 2.3 TB/s (o, q/k/v, down).
 *
 *   nvcc -O3 -arch=sm_90a bench/decode_kernels.cu -o build/bench/decode_kernels
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define CK(x)                                                                       \
    do {                                                                            \
        cudaError_t e_ = (x);                                                       \
        if (e_ != cudaSuccess) {                                                    \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            return 1;                                                               \
        }                                                                           \
    } while (0)

#define WARPS 4

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* kiln's current one-token kernel (mmv_q8x_staged_kernel<Q4_0, 8, 1>). */
template <int U>
__global__ void __launch_bounds__(WARPS * 32) staged(const uint8_t *w, uint64_t ws, const int8_t *xq,
                                                     const float *xd, float *y, int N, int K) {
    constexpr int BB = 18;
    __shared__ __align__(16) uint8_t sm[WARPS][8 * U * BB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = blockIdx.x * WARPS + warp;
    if (row >= N) return;
    const int s = lane & 3, bl = lane >> 2, nb = K / 32;
    const uint4 *wr = (const uint4 *)(w + (uint64_t)row * ws);
    uint8_t *my = sm[warp];
    float acc = 0.0f;
    for (int c0 = 0; c0 < nb; c0 += 8 * U) {
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
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int lb = bl + 8 * u, b = c0 + lb;
            if (lb >= nblk) break;
            const uint16_t *p = (const uint16_t *)(my + lb * BB);
            const float dw = __half2float(__ushort_as_half(p[0]));
            const uint32_t q = (uint32_t)p[1 + 2 * s] | ((uint32_t)p[2 + 2 * s] << 16);
            const int w0 = (int)__vsub4(q & 0x0F0F0F0Fu, 0x08080808u);
            const int w1 = (int)__vsub4((q >> 4) & 0x0F0F0F0Fu, 0x08080808u);
            const int8_t *xp = xq + 32 * b;
            const int x0 = __ldg((const int *)(xp + 4 * s)), x1 = __ldg((const int *)(xp + 16 + 4 * s));
            const int sum = __dp4a(w1, x1, __dp4a(w0, x0, 0));
            acc = fmaf(dw * __ldg(xd + b), (float)sum, acc);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

/* One block's dot product from its 16 quant bytes and 32 int8 x:
 * sum (q - 8) x = sum q x - 8 sum x (exact in int32). */
static __device__ __forceinline__ int q4_dot(const uint4 q, const int4 xa, const int4 xb) {
    const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
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

/* Split layout: row = [nb][16] quants, then [nb] F16 scales. A warp owns R
 * rows; lane l takes blocks l, l + 32, ... with U blocks in flight. */
template <int R, int U>
__global__ void __launch_bounds__(WARPS * 32) split(const uint8_t *w, uint64_t ws, const int8_t *xq,
                                                    const float *xd, float *y, int N, int K) {
    const int lane = threadIdx.x & 31, row0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= N) return;
    const int nb = K / 32;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int b0 = lane; b0 < nb; b0 += 32 * U) {
        uint4 q[U][R];
        __half d[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int b = b0 + 32 * u;
                const uint8_t *wr = w + (uint64_t)(row0 + r < N ? row0 + r : N - 1) * ws;
                if (b < nb) {
                    q[u][r] = __ldg((const uint4 *)wr + b);
                    d[u][r] = __ldg((const __half *)(wr + 16 * nb) + b);
                }
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 32 * u;
            if (b >= nb) break;
            const int4 xa = __ldg((const int4 *)(xq + 32 * b)), xb = __ldg((const int4 *)(xq + 32 * b + 16));
            const float dx = __ldg(xd + b);
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = fmaf(__half2float(d[u][r]) * dx, (float)q4_dot(q[u][r], xa, xb), acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < N) y[row0 + r] = v;
    }
}

/* Split layout, a half-warp per row: twice the rows in flight per warp for
 * the short rows (K = 4096: 128 blocks, 8 per lane). */
template <int U>
__global__ void __launch_bounds__(WARPS * 32) split_half(const uint8_t *w, uint64_t ws, const int8_t *xq,
                                                         const float *xd, float *y, int N, int K) {
    const int lane = threadIdx.x & 15, row = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * 2 + ((threadIdx.x >> 4) & 1);
    const int nb = K / 32;
    const uint8_t *wr = w + (uint64_t)(row < N ? row : N - 1) * ws;
    float acc = 0.0f;
    for (int b0 = lane; b0 < nb; b0 += 16 * U) {
        uint4 q[U];
        __half d[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 16 * u;
            if (b < nb) {
                q[u] = __ldg((const uint4 *)wr + b);
                d[u] = __ldg((const __half *)(wr + 16 * nb) + b);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int b = b0 + 16 * u;
            if (b >= nb) break;
            const int4 xa = __ldg((const int4 *)(xq + 32 * b)), xb = __ldg((const int4 *)(xq + 32 * b + 16));
            acc = fmaf(__half2float(d[u]) * __ldg(xd + b), (float)q4_dot(q[u], xa, xb), acc);
        }
    }
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0 && row < N) y[row] = acc;
}

/* F16, S warps per row (split-K), R rows per warp, U 16-byte loads per
 * lane and row in flight; <1, 2, 2> is kiln's mmv_f16_kernel<2, 2, 1>. */
template <int S, int R, int U>
__global__ void __launch_bounds__(WARPS * 32) f16s(const uint8_t *w, uint64_t ws, const float *x, float *y, int N,
                                                   int K) {
    __shared__ float part[WARPS][R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, p = warp % S;
    const int row0 = (blockIdx.x * (WARPS / S) + warp / S) * R;
    const int K8 = K / 8, i_lo = (int)((int64_t)K8 * p / S), i_hi = (int)((int64_t)K8 * (p + 1) / S);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    if (row0 < N)
        for (int i0 = i_lo + lane; i0 < i_hi; i0 += 32 * U) {
            uint4 wv[U][R];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const int i = i0 + 32 * u;
                    wv[u][r] = i < i_hi && row0 + r < N ? __ldg((const uint4 *)(w + (uint64_t)(row0 + r) * ws) + i)
                                                        : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int i = i0 + 32 * u;
                if (i >= i_hi) break;
                const float4 a = __ldg((const float4 *)x + 2 * i), b = __ldg((const float4 *)x + 2 * i + 1);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const __half2 *h = (const __half2 *)&wv[u][r];
                    const float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]);
                    const float2 f2 = __half22float2(h[2]), f3 = __half22float2(h[3]);
                    float s = f0.x * a.x;
                    s = fmaf(f0.y, a.y, s);
                    s = fmaf(f1.x, a.z, s);
                    s = fmaf(f1.y, a.w, s);
                    s = fmaf(f2.x, b.x, s);
                    s = fmaf(f2.y, b.y, s);
                    s = fmaf(f3.x, b.z, s);
                    s = fmaf(f3.y, b.w, s);
                    acc[r] += s;
                }
            }
        }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
    if (S == 1) {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (lane == 0 && row0 + r < N) y[row0 + r] = acc[r];
        return;
    }
    if (lane == 0)
#pragma unroll
        for (int r = 0; r < R; r++) part[warp][r] = acc[r];
    __syncthreads();
    if (lane == 0 && p == 0)
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = part[warp][r];
            for (int q = 1; q < S; q++) v += part[warp + q][r];
            if (row0 + r < N) y[row0 + r] = v;
        }
}

typedef void (*fkern)(const uint8_t *, uint64_t, const float *, float *, int, int);

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)rng;
}
static float h2f(uint16_t h) {
    __half_raw r;
    r.x = h;
    return __half2float(__half(r));
}

typedef void (*qkern)(const uint8_t *, uint64_t, const int8_t *, const float *, float *, int, int);

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 200;
    struct shape { int K, N; const char *what; } shapes[] = {
        {4096, 4096, "o"}, {4096, 6144, "q/k/v"}, {4096, 28672, "gate/up"}, {14336, 4096, "down"},
        {4096, 32000, "output"}};
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("| shape | K x N | kernel | us | GB/s | max rel err |\n|---|---|---|---:|---:|---:|\n");
    for (const shape &sh : shapes) {
        const int K = sh.K, N = sh.N, nb = K / 32;
        const uint64_t ws = (uint64_t)nb * 18, bytes = ws * N;
        const int copies = (int)(400e6 / bytes) + 2;
        /* GGUF layout on the host, random nibbles, scales ~1e-2 */
        std::vector<uint8_t> gg(bytes), sp(bytes);
        for (uint64_t i = 0; i < bytes; i++) gg[i] = (uint8_t)rnd();
        for (int n = 0; n < N; n++)
            for (int b = 0; b < nb; b++) {
                __half h = __float2half(0.001f + 0.01f * (rnd() % 1000) / 1000.0f);
                memcpy(&gg[n * ws + b * 18], &h, 2);
            }
        for (int n = 0; n < N; n++)
            for (int b = 0; b < nb; b++) {
                memcpy(&sp[n * ws + 16 * b], &gg[n * ws + b * 18 + 2], 16);
                memcpy(&sp[n * ws + 16 * nb + 2 * b], &gg[n * ws + b * 18], 2);
            }
        std::vector<int8_t> xq(K);
        std::vector<float> xd(nb);
        for (int i = 0; i < K; i++) xq[i] = (int8_t)(rnd() % 255 - 127);
        for (int b = 0; b < nb; b++) xd[b] = 0.01f;
        std::vector<double> ref(N);
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = &gg[n * ws + b * 18];
                uint16_t hd;
                memcpy(&hd, blk, 2);
                double bs = 0;
                for (int j = 0; j < 16; j++) {
                    bs += ((blk[2 + j] & 15) - 8) * (double)xq[32 * b + j];
                    bs += ((blk[2 + j] >> 4) - 8) * (double)xq[32 * b + 16 + j];
                }
                s += bs * h2f(hd) * xd[b];
            }
            ref[n] = s;
        }
        uint8_t *dg, *dsp, *dw16;
        int8_t *dxq;
        float *dxd, *dy, *dx;
        CK(cudaMalloc(&dg, bytes * copies));
        CK(cudaMalloc(&dsp, bytes * copies));
        for (int c = 0; c < copies; c++) {
            CK(cudaMemcpy(dg + c * bytes, gg.data(), bytes, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dsp + c * bytes, sp.data(), bytes, cudaMemcpyHostToDevice));
        }
        const uint64_t b16 = (uint64_t)K * N * 2;
        const int c16 = (int)(400e6 / b16) + 2;
        CK(cudaMalloc(&dw16, b16 * c16));
        {
            std::vector<__half> hw((size_t)K * N);
            for (auto &h : hw) h = __float2half(((int)(rnd() % 2001) - 1000) / 1000.0f);
            for (int c = 0; c < c16; c++) CK(cudaMemcpy(dw16 + c * b16, hw.data(), b16, cudaMemcpyHostToDevice));
        }
        CK(cudaMalloc(&dxq, K));
        CK(cudaMalloc(&dxd, nb * 4));
        CK(cudaMalloc(&dx, K * 4));
        {
            std::vector<float> hx(K);
            for (auto &v : hx) v = ((int)(rnd() % 2001) - 1000) / 1000.0f;
            CK(cudaMemcpy(dx, hx.data(), K * 4, cudaMemcpyHostToDevice));
        }
        CK(cudaMalloc(&dy, N * 4));
        CK(cudaMemcpy(dxq, xq.data(), K, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dxd, xd.data(), nb * 4, cudaMemcpyHostToDevice));
        struct kv { const char *name; qkern k; bool sl; int rows_per_block; } ks[] = {
            {"staged U8 (now)", staged<8>, false, WARPS},   {"staged U4", staged<4>, false, WARPS},
            {"split R1 U1", split<1, 1>, true, WARPS},       {"split R1 U2", split<1, 2>, true, WARPS},
            {"split R1 U4", split<1, 4>, true, WARPS},       {"split R2 U1", split<2, 1>, true, 2 * WARPS},
            {"split R2 U2", split<2, 2>, true, 2 * WARPS},   {"split half-warp U2", split_half<2>, true, 2 * WARPS},
            {"split half-warp U4", split_half<4>, true, 2 * WARPS}};
        for (const kv &k : ks) {
            const unsigned grid = (N + k.rows_per_block - 1) / k.rows_per_block;
            const uint8_t *base = k.sl ? dsp : dg;
            CK(cudaMemset(dy, 0, N * 4));
            k.k<<<grid, WARPS * 32>>>(base, ws, dxq, dxd, dy, N, K);
            CK(cudaGetLastError());
            std::vector<float> y(N);
            CK(cudaMemcpy(y.data(), dy, N * 4, cudaMemcpyDeviceToHost));
            double err = 0, mag = 0;
            for (int n = 0; n < N; n++) {
                err = fmax(err, fabs(y[n] - ref[n]));
                mag = fmax(mag, fabs(ref[n]));
            }
            for (int i = 0; i < copies; i++) k.k<<<grid, WARPS * 32>>>(base + i * bytes, ws, dxq, dxd, dy, N, K);
            CK(cudaEventRecord(e0));
            for (int i = 0; i < reps; i++)
                k.k<<<grid, WARPS * 32>>>(base + (i % copies) * bytes, ws, dxq, dxd, dy, N, K);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = ms * 1e3 / reps;
            printf("| %s | %dx%d | %s | %.2f | %.0f | %.1e |\n", sh.what, K, N, k.name, us, bytes / us / 1e3,
                   err / mag);
        }
        struct fv { const char *name; fkern k; int rows_per_block; } fs[] = {
            {"f16 R2 U2 (now)", f16s<1, 2, 2>, 2 * WARPS}, {"f16 S1 R1 U2", f16s<1, 1, 2>, WARPS},
            {"f16 S1 R1 U4", f16s<1, 1, 4>, WARPS},
            {"f16 S2 R1 U2", f16s<2, 1, 2>, WARPS / 2},    {"f16 S2 R2 U2", f16s<2, 2, 2>, WARPS},
            {"f16 S2 R1 U4", f16s<2, 1, 4>, WARPS / 2},    {"f16 S4 R1 U2", f16s<4, 1, 2>, 1},
            {"f16 S4 R2 U2", f16s<4, 2, 2>, 2}};
        std::vector<float> y0(N), y1(N);
        for (const fv &f : fs) {
            const unsigned grid = (N + f.rows_per_block - 1) / f.rows_per_block;
            f.k<<<grid, WARPS * 32>>>(dw16, K * 2, dx, dy, N, K);
            CK(cudaGetLastError());
            for (int i = 0; i < c16; i++) f.k<<<grid, WARPS * 32>>>(dw16 + i * b16, K * 2, dx, dy, N, K);
            CK(cudaEventRecord(e0));
            for (int i = 0; i < reps; i++) f.k<<<grid, WARPS * 32>>>(dw16 + (i % c16) * b16, K * 2, dx, dy, N, K);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = ms * 1e3 / reps;
            /* the last copy's result against the first kernel's */
            CK(cudaMemcpy((&f == fs ? y0 : y1).data(), dy, N * 4, cudaMemcpyDeviceToHost));
            double err = 0, mag = 0;
            if (&f != fs)
                for (int n = 0; n < N; n++) {
                    err = fmax(err, fabs(y1[n] - y0[n]));
                    mag = fmax(mag, fabs(y0[n]));
                }
            printf("| %s | %dx%d | %s | %.2f | %.0f | %.1e |\n", sh.what, K, N, f.name, us, b16 / us / 1e3,
                   mag > 0 ? err / mag : 0.0);
        }
        cudaFree(dg);
        cudaFree(dsp);
        cudaFree(dw16);
        cudaFree(dxq);
        cudaFree(dxd);
        cudaFree(dx);
        cudaFree(dy);
    }
    return 0;
}
