#!/bin/bash
# scripts/cuda-memory-check.sh [MODEL] - on a machine with an NVIDIA GPU and
# the CUDA backend built (build/libkiln-cuda.so): checks that kiln's memory
# report accounts for the device memory kiln uses, against cudaMemGetInfo.
#
# A small program (written to build/cuda-memory-check.c) initializes the
# CUDA runtime's primary context on device 0 (cudaFree(0)), takes the free
# memory as the baseline, loads MODEL on the cuda backend, creates a
# context, decodes a 128-token prompt and 32 single tokens, and compares
#   used = baseline free - free now            (cudaMemGetInfo)
#   kiln = the report's cuda:0 total            (KILN_MEMORY_BY_DEVICE:
#          weights + KV + every pool's in-use and cached bytes)
# It prints both, the report, and the difference, then frees everything
# and checks that the report's cuda:0 total is 0 and the free memory is
# back within the tolerance. The report includes the CUDA backend's own
# memory (cuBLAS handle and workspace, staging and ubatch tables, recorded
# graphs: the device_state rows), so what is left is code the CUDA runtime
# loads lazily on first use (kiln's and cuBLAS's kernel images, kept until
# the process exits) and allocator granularity: exit 1 if the difference is
# above KILN_CUDA_TOL_MIB (default 12) MiB plus 2% of kiln's total.
# libcudart is loaded with dlopen, so only the C compiler is needed here.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-${KILN_SHARED:-../shared}/models/tiny-target-q4_0.gguf}
[ -f build/libkiln.so.0 ] || make -j"$(nproc)"
[ -f build/libkiln-cuda.so ] || { echo "build/libkiln-cuda.so missing (is nvcc installed? make)"; exit 77; }
cat > build/cuda-memory-check.c <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include "kiln.h"
typedef int (*mem_fn)(size_t *, size_t *);
typedef int (*free_fn)(void *);
typedef int (*set_fn)(int);
static mem_fn mem_info;
static size_t free_now(void) { size_t f = 0, t = 0; mem_info(&f, &t); return f; }
static uint64_t kiln_cuda_total(void) {
    kiln_memory_entry e[64];
    size_t n = 0;
    if (kiln_memory_report_get(KILN_MEMORY_BY_DEVICE, e, 64, sizeof e[0], &n)) return 0;
    uint64_t b = 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].space == KILN_MEM_DEVICE && e[i].device == 0 && !strcmp(e[i].backend, "cuda")) b += e[i].bytes;
    return b;
}
int main(int argc, char **argv) {
    const char *libs[] = {"libcudart.so", "libcudart.so.13", "libcudart.so.12", NULL};
    void *h = NULL;
    for (int i = 0; libs[i] && !h; i++) h = dlopen(libs[i], RTLD_NOW);
    if (!h) { fprintf(stderr, "no libcudart\n"); return 77; }
    mem_info = (mem_fn)dlsym(h, "cudaMemGetInfo");
    free_fn cfree = (free_fn)dlsym(h, "cudaFree");
    set_fn cset = (set_fn)dlsym(h, "cudaSetDevice");
    if (!mem_info || !cfree || !cset) return 77;
    cset(0);
    cfree(NULL); /* the primary context exists before the baseline */
    size_t base = free_now();
    kiln_model_params mp; kiln_model_params_init(&mp); mp.backend = "cuda";
    kiln_model *m = NULL; kiln_context *c = NULL;
    if (kiln_model_load(argv[1], &mp, &m)) { fprintf(stderr, "load: %s\n", kiln_last_error()); return 1; }
    kiln_context_params cp; kiln_context_params_init(&cp); cp.n_ctx = 1024;
    if (kiln_context_create(m, &cp, &c)) { fprintf(stderr, "context: %s\n", kiln_last_error()); return 1; }
    int32_t t[128];
    for (int i = 0; i < 128; i++) t[i] = 1 + (i * 7919) % 1000;
    kiln_batch b; kiln_batch_init(&b); b.n_tokens = 128; b.tokens = t;
    if (kiln_decode(c, &b)) { fprintf(stderr, "decode: %s\n", kiln_last_error()); return 1; }
    for (int i = 0; i < 32; i++) { b.n_tokens = 1; b.tokens = t + i; if (kiln_decode(c, &b)) return 1; }
    size_t used = base - free_now();
    uint64_t k = kiln_cuda_total();
    kiln_memory_report(stderr, 0);
    double diff = (double)used - (double)k, tol = 1048576.0 * (getenv("KILN_CUDA_TOL_MIB") ? atof(getenv("KILN_CUDA_TOL_MIB")) : 12.0) + 0.02 * (double)k;
    printf("cudaMemGetInfo used %.2f MiB, kiln report cuda:0 %.2f MiB, difference %.2f MiB (tolerance %.2f MiB)\n",
           used / 1048576.0, k / 1048576.0, diff / 1048576.0, tol / 1048576.0);
    kiln_context_free(c);
    kiln_model_free(m);
    size_t after = base - free_now();
    printf("after free: cudaMemGetInfo used %.2f MiB, kiln report cuda:0 %.2f MiB, leaks %llu\n", after / 1048576.0,
           kiln_cuda_total() / 1048576.0, (unsigned long long)kiln_memory_leak_count());
    int ok = diff >= -tol && diff <= tol && kiln_cuda_total() == 0 && (double)after <= tol && !kiln_memory_leak_count();
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
C
sed -i 's/#include <stdlib.h>/#include <stdlib.h>\n#include <string.h>/' build/cuda-memory-check.c
cc -std=c11 -O2 -Iinclude -o build/cuda-memory-check build/cuda-memory-check.c -Lbuild -lkiln -ldl \
   -Wl,-rpath,"$PWD/build"
KILN_LEAK_GUARD=1 KILN_BACKEND_PATH="$PWD/build" build/cuda-memory-check "$MODEL"
