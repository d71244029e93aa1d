/*
 * test/device/cuda_pinning.c - device pinning of the CUDA backend, read off
 * nvidia-smi (needs a host with two or more GPUs; run by
 * test/device/run.sh step "pin", after another process has taken most of
 * GPU 0's memory):
 *
 *   1. enumerating devices (kiln_backend_device_count/_info) creates no
 *      CUDA context: nvidia-smi lists no compute process of ours;
 *   2. a model and context on GPU N generate text, and nvidia-smi lists our
 *      process on GPU N only.
 *
 * usage: cuda_pinning MODEL DEVICE
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln.h"

static int failures;
#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            printf("  FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);            \
            failures++;                                                       \
        }                                                                     \
    } while (0)

/* GPU indices (bit i = GPU i) on which nvidia-smi lists this process. */
static unsigned our_gpus(void) {
    char uuids[16][128];
    int n = 0;
    FILE *f = popen("nvidia-smi --query-gpu=index,uuid --format=csv,noheader", "r");
    char line[512];
    while (f && n < 16 && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ',');
        if (!c) continue;
        c++;
        while (*c == ' ') c++;
        c[strcspn(c, "\r\n")] = 0;
        snprintf(uuids[n++], sizeof uuids[0], "%s", c);
    }
    if (f) pclose(f);
    unsigned mask = 0;
    f = popen("nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader", "r");
    while (f && fgets(line, sizeof line, f)) {
        printf("    nvidia-smi: %s", line);
        if (atoi(line) != (int)getpid()) continue;
        for (int i = 0; i < n; i++)
            if (strstr(line, uuids[i])) mask |= 1u << i;
    }
    if (f) pclose(f);
    return mask;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cuda_pinning MODEL DEVICE\n");
        return 2;
    }
    const int dev = atoi(argv[2]);
    const int n = kiln_backend_device_count("cuda");
    printf("cuda devices: %d; pid %d\n", n, (int)getpid());
    for (int i = 0; i < n; i++) {
        kiln_device_info info;
        kiln_device_info_init(&info);
        if (kiln_backend_device_info("cuda", i, &info) == KILN_OK)
            printf("  device %d: %s, %llu MiB total, %llu MiB free\n", i, info.name,
                   (unsigned long long)(info.mem_total >> 20), (unsigned long long)(info.mem_free >> 20));
    }
    CHECK(n > dev);
    unsigned m0 = our_gpus();
    printf("  after enumeration: our process on GPUs mask 0x%x\n", m0);
    CHECK(m0 == 0);

    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = "cuda";
    mp.device = dev;
    kiln_model *m = NULL;
    kiln_context *c = NULL;
    kiln_status st = kiln_model_load(argv[1], &mp, &m);
    CHECK(st == KILN_OK);
    if (st == KILN_OK) {
        kiln_context_params cp;
        kiln_context_params_init(&cp);
        cp.n_ctx = 512;
        st = kiln_context_create(m, &cp, &c);
        CHECK(st == KILN_OK);
    }
    if (c) {
        int32_t toks[64];
        size_t nt = 0;
        CHECK(kiln_tokenize(m, "Once upon a time", 16, KILN_TOKENIZE_ADD_BOS, toks, 64, &nt) == KILN_OK);
        kiln_batch b;
        kiln_batch_init(&b);
        b.n_tokens = (uint32_t)nt;
        b.tokens = toks;
        st = kiln_decode(c, &b);
        CHECK(st == KILN_OK);
        int32_t tok = 0;
        char text[256];
        size_t len = 0;
        for (int i = 0; i < 24 && st == KILN_OK; i++) {
            const float *l = kiln_context_logits(c, -1);
            int32_t best = 0;
            for (int32_t v = 1; v < kiln_model_n_vocab(m); v++)
                if (l[v] > l[best]) best = v;
            tok = best;
            size_t w = 0;
            if (kiln_detokenize(m, &tok, 1, 0, text + len, sizeof text - len, &w) == KILN_OK) len += w;
            b.n_tokens = 1;
            b.tokens = &tok;
            st = kiln_decode(c, &b);
        }
        text[len < sizeof text ? len : sizeof text - 1] = 0;
        printf("  generated on GPU %d: \"%s\"\n", dev, text);
        CHECK(st == KILN_OK);
        unsigned m1 = our_gpus();
        printf("  with a model and context on GPU %d: our process on GPUs mask 0x%x\n", dev, m1);
        CHECK(m1 == (1u << dev));
    } else {
        printf("  %s\n", kiln_last_error());
    }
    kiln_context_free(c);
    kiln_model_free(m);
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
