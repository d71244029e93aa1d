/*
 * test_cuda_ops.c - CUDA backend decode paths that the tiny reference
 * models never reach (their rows are too short), against the backend's own
 * separate operations, bit for bit:
 * - matmul_multi of Q4_K products followed by split-layout Q6_K ones (the
 *   q, k and v of a Q4_K_M layer whose v is Q6_K: one launch,
 *   mmv_q4k_q6ks_kernel) against one matmul per product, for one token (a
 *   decode step) and three (a verify batch), 7B-like rows (K 4096).
 * Skipped without the CUDA plugin or a device (so always on a CPU-only
 * machine).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kiln_backend.h"
#include "kt.h"
#include "kt_bk.h"
#include "quant.h"

static const kiln_backend_iface *gpu;
static kiln_bk_device *dev;

static uint32_t rng = 2024;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* N rows of K quantized as `type`, uploaded and prepared (the backend's
 * layout, as the model loader leaves them) */
static kiln_bk_buffer *weights(int32_t type, int64_t K, int64_t N, kiln_bk_tensor *t) {
    const uint64_t row = kiln_type_row_size(type, K);
    float *wf = malloc(sizeof(float) * (size_t)K);
    uint8_t *wq = malloc(row * (size_t)N);
    for (int64_t r = 0; r < N; r++) {
        for (int64_t i = 0; i < K; i++) wf[i] = frand();
        KT_CHECK_OK(kiln_quantize_row(type, wf, wq + r * row, K));
    }
    kiln_bk_buffer *b = kt_bk_buf(gpu, dev, row * (uint64_t)N, wq);
    *t = kt_bk_tensor(b, type, K, N, 0);
    int32_t layout = 0;
    KT_CHECK_OK(gpu->weight_prepare(dev, t, &layout));
    t->layout = layout;
    free(wf);
    free(wq);
    return b;
}

static void test_mixed_q4k_q6k_multi(void) {
    enum { K = 4096 };
    static const int32_t types[3] = {KILN_TYPE_Q4_K, KILN_TYPE_Q4_K, KILN_TYPE_Q6_K};
    static const int64_t Ns[3] = {512, 128, 128};
    kiln_bk_tensor tw[3];
    kiln_bk_buffer *wb[3];
    for (int i = 0; i < 3; i++) wb[i] = weights(types[i], K, Ns[i], &tw[i]);
    KT_CHECKF(tw[2].layout != 0, "the Q6_K weight was not put in the split layout (the case this test is for)");
    for (int M = 1; M <= 3; M += 2) {
        float *xf = malloc(sizeof(float) * K * (size_t)M);
        for (int64_t i = 0; i < (int64_t)K * M; i++) xf[i] = frand() * 2.0f;
        kiln_bk_buffer *xb = kt_bk_buf(gpu, dev, sizeof(float) * K * (uint64_t)M, xf);
        kiln_bk_tensor x = kt_bk_tensor(xb, KILN_TYPE_F32, K, M, 0);
        kiln_bk_buffer *ob[2][3];
        kiln_bk_tensor od[2][3];
        for (int way = 0; way < 2; way++)
            for (int i = 0; i < 3; i++) {
                ob[way][i] = kt_bk_buf(gpu, dev, sizeof(float) * (uint64_t)(Ns[i] * M), NULL);
                od[way][i] = kt_bk_tensor(ob[way][i], KILN_TYPE_F32, Ns[i], M, 0);
            }
        for (int i = 0; i < 3; i++) KT_CHECK_OK(gpu->matmul(dev, &tw[i], &x, &od[0][i]));
        const kiln_bk_tensor *w3[3] = {&tw[0], &tw[1], &tw[2]};
        kiln_bk_tensor *d3[3] = {&od[1][0], &od[1][1], &od[1][2]};
        KT_CHECK_OK(gpu->matmul_multi(dev, 3, w3, &x, d3));
        KT_CHECK_OK(gpu->synchronize(dev));
        for (int i = 0; i < 3; i++)
            KT_CHECKF(kt_bk_same(gpu, dev, ob[0][i], ob[1][i], 0, sizeof(float) * (uint64_t)(Ns[i] * M)),
                      "matmul_multi Q4_K, Q4_K, Q6_K with %d tokens: product %d differs from its matmul", M, i);
        for (int way = 0; way < 2; way++)
            for (int i = 0; i < 3; i++) gpu->buffer_free(ob[way][i]);
        gpu->buffer_free(xb);
        free(xf);
    }
    for (int i = 0; i < 3; i++) gpu->buffer_free(wb[i]);
}

int main(void) {
    if (!getenv("KILN_BACKEND_PATH")) setenv("KILN_BACKEND_PATH", getenv("KILN_BUILD") ? getenv("KILN_BUILD") : "build", 0);
    if (kiln_backend_find("cuda", &gpu) != KILN_OK || gpu->device_count() < 1) {
        printf("skip: no cuda backend or device (%s)\n", kiln_last_error());
        return 77;
    }
    if (gpu->device_open(0, NULL, &dev) != KILN_OK) {
        printf("cannot open the device: %s\n", kiln_last_error());
        return 1;
    }
    KT_RUN(test_mixed_q4k_q6k_multi);
    gpu->device_close(dev);
    return kt_finish();
}
