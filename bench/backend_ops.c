/*
 * bench/backend_ops.c - times a backend plugin's matmul and attention on
 * synthetic data of 7B shapes, straight through the plugin ABI (speed does
 * not depend on weight values; scales are set so that sums stay finite).
 * Prints effective bandwidth (weight bytes / time) for decode and TFLOP/s
 * for prefill, to compare with the memory-bandwidth and tensor-core floors.
 *
 *   build/bench/backend_ops build/libkiln-cuda.so [reps]
 *
 * BENCH_TYPES=f16,q4_0 and BENCH_NS=,1,512, (commas around each) keep
 * some types and token counts; BENCH_SHAPES=4096x32000,... other K x N;
 * BENCH_SLEEP_MS=N idles N ms after each shape.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln_backend.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct type { const char *name; int id, block_bytes, block_elems, scale_off[2]; };
static const struct type types[] = {
    {"f16", 1, 2, 1, {-1, -1}},     {"q4_0", 2, 18, 32, {0, -1}},   {"q8_0", 8, 34, 32, {0, -1}},
    {"q4_k", 12, 144, 256, {0, 2}}, {"q6_k", 14, 210, 256, {208, -1}},
};

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)rng;
}

/* Random weights with small finite scales (F16: small finite values). */
static void fill(const struct type *t, uint8_t *p, size_t bytes) {
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)rnd();
    if (t->id == 1) {
        uint16_t *h = (uint16_t *)p;
        for (size_t i = 0; i < bytes / 2; i++) h[i] = (uint16_t)((rnd() & 0x83ff) | 0x2000); /* |x| < 2^-7 */
        return;
    }
    for (size_t b = 0; b + t->block_bytes <= bytes; b += t->block_bytes)
        for (int s = 0; s < 2; s++)
            if (t->scale_off[s] >= 0) {
                uint16_t v = 0x1c00 | (rnd() & 0x3ff); /* ~2^-8 */
                memcpy(p + b + t->scale_off[s], &v, 2);
            }
}

int main(int argc, char **argv) {
    const char *lib = argc > 1 ? argv[1] : "build/libkiln-cuda.so";
    const int reps = argc > 2 ? atoi(argv[2]) : 50;
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    kiln_backend_entry_fn entry = (kiln_backend_entry_fn)dlsym(h, "kiln_backend_entry");
    const kiln_backend_iface *bk = entry ? entry(KILN_BACKEND_ABI_VERSION) : NULL;
    if (!bk) return 1;
    kiln_bk_device *dev = NULL;
    kiln_bk_open_params op = {sizeof op, 0, 0, NULL, NULL};
    if (bk->device_open(0, &op, &dev)) return 1;
    /* K, N: Mistral-7B's, or BENCH_SHAPES="KxN,KxN,..." (at most 16) */
    int64_t shapes[16][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {4096, 32000}};
    size_t n_shapes = 4;
    const char *sl = getenv("BENCH_SHAPES");
    if (sl) {
        n_shapes = 0;
        for (const char *c = sl; *c && n_shapes < 16;) {
            long long k, n;
            int used = 0;
            if (sscanf(c, "%lldx%lld%n", &k, &n, &used) != 2 || k <= 0 || n <= 0 || k % 256) break;
            shapes[n_shapes][0] = k;
            shapes[n_shapes][1] = n;
            n_shapes++;
            c += used;
            if (*c == ',') c++;
        }
    }
    const int ns[] = {1, 8, 512};
    printf("| type | K x N | tokens | us/op | weight GB/s | TFLOP/s |\n|---|---|---:|---:|---:|---:|\n");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const struct type *t = &types[ti];
        const char *only = getenv("BENCH_TYPES");
        if (only && !strstr(only, t->name)) continue;
        for (size_t si = 0; si < n_shapes; si++) {
            const int64_t K = shapes[si][0], N = shapes[si][1];
            const size_t row = (size_t)(K / t->block_elems) * t->block_bytes, wbytes = row * N;
            uint8_t *host = malloc(wbytes);
            fill(t, host, wbytes);
            kiln_bk_buffer *wb = NULL, *xb = NULL, *yb = NULL;
            if (bk->buffer_alloc(dev, wbytes, KILN_BK_BUF_WEIGHTS, &wb) ||
                bk->buffer_upload(dev, wb, 0, host, wbytes))
                return 1;
            free(host);
            /* the plugin's own weight layout, as a model load gives it */
            int32_t layout = 0;
            if (bk->struct_size >= offsetof(kiln_backend_iface, weight_prepare) + sizeof bk->weight_prepare &&
                bk->weight_prepare) {
                kiln_bk_tensor w0 = {wb, 0, t->id, 0, {K, N}, row};
                if (bk->weight_prepare(dev, &w0, &layout) || bk->synchronize(dev)) return 1;
            }
            float *xh = malloc(sizeof(float) * 512 * K);
            for (int64_t i = 0; i < 512 * K; i++) xh[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
            bk->buffer_alloc(dev, sizeof(float) * 512 * K, KILN_BK_BUF_KV, &xb);
            bk->buffer_upload(dev, xb, 0, xh, sizeof(float) * 512 * K);
            free(xh);
            bk->buffer_alloc(dev, sizeof(float) * 512 * N, KILN_BK_BUF_KV, &yb);
            float *y1 = malloc(sizeof(float) * N), *y512 = malloc(sizeof(float) * N);
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                const int n = ns[ni];
                const char *nl = getenv("BENCH_NS");
                char nbuf[16];
                snprintf(nbuf, sizeof nbuf, ",%d,", n);
                if (nl && !strstr(nl, nbuf)) continue;
                kiln_bk_tensor w = {wb, 0, t->id, layout, {K, N}, row};
                kiln_bk_tensor x = {xb, 0, 0, 0, {K, n}, (uint64_t)K * 4};
                kiln_bk_tensor y = {yb, 0, 0, 0, {N, n}, (uint64_t)N * 4};
                int r = n >= 512 ? reps / 5 + 1 : reps;
                kiln_status st = bk->matmul(dev, &w, &x, &y); /* warm-up */
                bk->synchronize(dev);
                double t0 = now();
                for (int i = 0; i < r && !st; i++) st = bk->matmul(dev, &w, &x, &y);
                bk->synchronize(dev);
                double us = (now() - t0) / r * 1e6;
                if (st) {
                    printf("| %s | %lldx%lld | %d | error %d |\n", t->name, (long long)K, (long long)N, n, st);
                    continue;
                }
                printf("| %s | %lldx%lld | %d | %.1f | %.0f | %.1f |\n", t->name, (long long)K, (long long)N, n, us,
                       wbytes / us * 1e-3, 2.0 * K * N * n / us * 1e-6);
                /* token 0's row from the decode kernel vs the prefill path */
                bk->buffer_download(dev, yb, 0, n == 1 ? y1 : y512, sizeof(float) * N);
            }
            double num = 0, den = 0;
            for (int64_t i = 0; i < N; i++) {
                num += (double)(y1[i] - y512[i]) * (y1[i] - y512[i]);
                den += (double)y512[i] * y512[i];
            }
            printf("|   | decode vs prefill row 0: rel. L2 diff %.2e | | | | |\n", den > 0 ? sqrt(num / den) : -1.0);
            free(y1);
            free(y512);
            bk->buffer_free(wb);
            bk->buffer_free(xb);
            bk->buffer_free(yb);
            if (getenv("BENCH_SLEEP_MS")) { /* idle between shapes (clock and power transients) */
                const long ms = atol(getenv("BENCH_SLEEP_MS"));
                struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
        }
    }
    bk->device_close(dev);
    return 0;
}
