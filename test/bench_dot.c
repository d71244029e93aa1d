/*
 * bench_dot.c - single-threaded micro-benchmark of the CPU dot kernels: a
 * 512 (tokens) x 512 (K) x 1536 (weight rows) matmul per weight type, the
 * way the CPU backend drives the tiles (blocks of 128 weight rows x 64
 * activation rows, weight tile outer), plus one-token (decode) products.
 * Not part of `make check`. Build and run from the repository root:
 *
 *   make build/libkiln.a
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Ilib -Ibackends/cpu test/bench_dot.c \
 *      build/libkiln.a -lm -lpthread -o build/bench_dot && build/bench_dot [isa]
 *
 * isa: scalar | avx2 | avx512 (default: the best the processor has).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_dot.h"
#include "quant.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: the machine may be shared */
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void matmul(const kiln_cpu_dot_traits *tr, int64_t k, int64_t n, int64_t m, const uint8_t *w, size_t ws,
                   const uint8_t *a, size_t as, float *out) {
    const int64_t BN = 128, BM = 64;
    for (int64_t m0 = 0; m0 < m; m0 += BM) {
        int64_t m1 = m0 + BM < m ? m0 + BM : m;
        for (int64_t n0 = 0; n0 < n; n0 += BN) {
            int64_t n1 = n0 + BN < n ? n0 + BN : n;
            for (int64_t i = n0; i < n1; i += tr->tile_nr) {
                int nr = (int)(n1 - i < tr->tile_nr ? n1 - i : tr->tile_nr);
                for (int64_t j = m0; j < m1; j += tr->tile_nc) {
                    int nc = (int)(m1 - j < tr->tile_nc ? m1 - j : tr->tile_nc);
                    tr->dot_tile(k, out + j * n + i, (size_t)n, w + i * ws, ws, nr, a + j * as, as, nc);
                }
            }
        }
    }
}

int main(int argc, char **argv) {
    int isa = kiln_cpu_dot_best_isa();
    if (argc > 1) {
        for (int i = 0; i < KILN_CPU_DOT_N_ISA; i++) {
            static const char *names[] = {"scalar", "avx2", "avx512"};
            if (strcmp(argv[1], names[i]) == 0) isa = i;
        }
    }
    const int32_t types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q8_0,
                             KILN_TYPE_Q4_0, KILN_TYPE_Q5_0, KILN_TYPE_Q4_1, KILN_TYPE_Q5_1,
                             KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};
    const int64_t K = 512, N = 1536, M = 512;
    float *x = malloc(sizeof(float) * K * (N > M ? N : M));
    float *out = malloc(sizeof(float) * N * M);
    srand(1);
    for (int64_t i = 0; i < K * (N > M ? N : M); i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    printf("%-6s %-10s %5s %10s %10s %12s %12s %10s\n", "type", "isa", "tile", "GFLOP/s", "ms", "act quant ms", "gemv GB/s", "L1 tile");
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get_isa(types[t], isa);
        if (!tr) continue;
        size_t ws = kiln_type_row_size(types[t], K), as = tr->act_row_size(K);
        as = (as + 63) / 64 * 64;
        uint8_t *w = malloc(ws * N), *a = malloc(as * M);
        for (int64_t r = 0; r < N; r++) kiln_quantize_row(types[t], x + r * K, w + r * ws, K);
        double t0 = 0, tq = 0;
        for (int pass = 0; pass < 2; pass++) { /* the first pass pays the page faults */
            t0 = now();
            for (int64_t r = 0; r < M; r++) {
                if (tr->quantize_act) tr->quantize_act(x + r * K, a + r * as, K);
                else memcpy(a + r * as, x + r * K, sizeof(float) * K);
            }
            tq = now() - t0;
        }
        matmul(tr, K, N, M, w, ws, a, as, out); /* warm up */
        double best = 1e9;
        for (int rep = 0; rep < 10; rep++) {
            t0 = now();
            matmul(tr, K, N, M, w, ws, a, as, out);
            double dt = now() - t0;
            if (dt < best) best = dt;
        }
        /* decode: one activation row against a weight matrix larger than L2
         * (64 copies of the 1536 x 512 matrix walked in turn) */
        const int copies = 16;
        uint8_t *big = malloc(ws * N * copies);
        for (int c = 0; c < copies; c++) memcpy(big + ws * N * c, w, ws * N);
        double bestv = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            t0 = now();
            for (int c = 0; c < copies; c++) matmul(tr, K, N, 1, big + ws * N * c, ws, a, as, out);
            double dt = now() - t0;
            if (dt < bestv) bestv = dt;
        }
        /* the same register tile over and over: operands in L1 */
        double bestl1 = 1e9;
        const int reps = 4000;
        for (int rep = 0; rep < 3; rep++) {
            t0 = now();
            for (int q = 0; q < reps; q++) tr->dot_tile(K, out, (size_t)N, w, ws, tr->tile_nr, a, as, tr->tile_nc);
            double dt = now() - t0;
            if (dt < bestl1) bestl1 = dt;
        }
        double l1 = 2.0 * K * tr->tile_nr * tr->tile_nc * reps / bestl1 * 1e-9;
        printf("%-6s %-10s %2dx%-2d %10.1f %10.2f %12.3f %12.1f %10.1f\n", kiln_type_name(types[t]), tr->isa, tr->tile_nr,
               tr->tile_nc, 2.0 * K * N * M / best * 1e-9, best * 1e3, tq * 1e3, (double)ws * N * copies / bestv * 1e-9, l1);
        free(big);
        free(w);
        free(a);
    }
    free(x);
    free(out);
    return 0;
}
