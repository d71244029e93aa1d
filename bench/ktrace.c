/*
 * bench/ktrace.c - a kernel timeline of any CUDA program, through CUPTI's
 * activity API: preloaded, it records every kernel's start and end on the
 * GPU (graph nodes included, with programmatic dependent launch left as it
 * is) and writes one line per kernel to $KTRACE_OUT (default
 * /tmp/ktrace.txt): "start_ns end_ns graph_node_id mangled_name".
 * bench/ktrace.py turns that into per-kernel costs within a decode step.
 *
 * Why: Nsight Systems is not on the device machine, ncu serializes kernels
 * (so it cannot show how a step's kernels overlap), and KILN_CUDA_SKIP
 * removes kernels together with what they hand on (session 17 found that
 * leaving the norms or the swiglu out put a quant_x launch in their place).
 * CUPTI ships with the CUDA toolkit, so the device builds this itself:
 *
 *   gcc -O2 -shared -fPIC -DKT=CUpti_ActivityKernel10 -I$CUDA/include \
 *       bench/ktrace.c -L$CUDA/lib64 -lcupti -o /tmp/libktrace.so
 *   KTRACE_OUT=/tmp/kt.txt LD_PRELOAD=/tmp/libktrace.so build/bin/kiln-bench ...
 *
 * (test/device/ktrace.sh does both; KT names the toolkit's newest kernel
 * record type.) Tracing costs about 10% of decode speed; the order and
 * gaps of kernels are what it is for. A profiling aid, not part of kiln.
 */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef KT
#define KT CUpti_ActivityKernel10
#endif

static FILE *out;
#define KTRACE_BUF (1u << 20) /* small buffers: full ones are written while the program runs */

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = (uint8_t *)aligned_alloc(8, KTRACE_BUF);
    *size = *buffer ? KTRACE_BUF : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *r = NULL;
    while (out && cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        const KT *k = (const KT *)r;
        fprintf(out, "%llu %llu %llu %s\n", (unsigned long long)k->start, (unsigned long long)k->end,
                (unsigned long long)k->graphNodeId, k->name);
    }
    if (out) fflush(out);
    free(buffer);
}

__attribute__((constructor)) static void ktrace_init(void) {
    const char *path = getenv("KTRACE_OUT");
    out = fopen(path ? path : "/tmp/ktrace.txt", "w");
    if (!out) return;
    cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
}

__attribute__((destructor)) static void ktrace_fini(void) {
    cuptiActivityFlushAll(1);
    if (out) fclose(out);
    out = NULL;
}
