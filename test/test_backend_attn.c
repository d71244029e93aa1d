/*
 * test_backend_attn.c - a GPU backend's attention against the CPU backend's
 * on ubatches the model never makes in the reference suite: head sizes 64
 * and 128 (the 7B shapes), GQA groups of 4, two sequences of a ubatch over
 * a paged cache with earlier context, prefill-sized ubatches (the CUDA
 * backend's tensor-core kernel: 64-token tiles, tails, a tile cut where the
 * sequence changes) and a decode-sized one. KILN_ATTN_BACKEND names the
 * plugin (default cuda); skipped when it or a device is missing (so always
 * on a CPU-only machine). Bounds: the prefill kernels round q and the
 * probabilities to F16 (as llama.cpp's tensor-core kernel does), about
 * 1e-3 relative; the decode kernels compute in F32.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kiln_backend.h"
#include "kt.h"
#include "kt_bk.h"
#include "quant.h"

static const kiln_backend_iface *cpu, *gpu;
static kiln_bk_device *dcpu, *dgpu;

static uint32_t rng = 4242;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* One attention call of n tokens, split between two sequences: sequence 0
 * gets the first n0 tokens at positions ctx0.., sequence 1 the rest at
 * ctx1..; returns max |cpu - gpu| / max(1, max |cpu|). */
static double run_case(int D, int n, int n0, int ctx0, int ctx1) {
    const int H = 8, HKV = 2, E = H * D, KVD = HKV * D, BS = 16;
    const int nb0 = (ctx0 + n0 + BS - 1) / BS, nb1 = (ctx1 + (n - n0) + BS - 1) / BS;
    const int CELLS = (2 * nb0 + 2 * nb1 + 4) * BS;
    /* blocks: sequence 0 on the odd blocks from 1, sequence 1 on the even ones (interleaved) */
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)(nb0 + nb1));
    for (int i = 0; i < nb0; i++) blocks[i] = 1 + 2 * i;
    for (int i = 0; i < nb1; i++) blocks[nb0 + i] = 2 * i + 2;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *cell = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *tab = malloc(sizeof(int32_t) * (size_t)n), *nkv = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        const int s = i >= n0, p = s ? ctx1 + (i - n0) : ctx0 + i;
        pos[i] = p;
        tab[i] = s ? nb0 : 0;
        nkv[i] = p + 1;
        cell[i] = blocks[tab[i] + p / BS] * BS + p % BS;
    }
    kiln_bk_ubatch u = {sizeof u, (uint32_t)n, pos, cell, tab, nkv, blocks, (uint32_t)(nb0 + nb1), BS, (uint32_t)CELLS};
    KT_CHECK_OK(cpu->set_ubatch(dcpu, &u));
    KT_CHECK_OK(gpu->set_ubatch(dgpu, &u));
    /* caches: every cell random (positions past a token's n_kv must not count) */
    const size_t cache_n = (size_t)CELLS * KVD;
    uint16_t *kv = malloc(cache_n * 2);
    kiln_bk_buffer *kc[2], *vc[2], *io[2];
    for (int b = 0; b < 2; b++) {
        const kiln_backend_iface *be = b ? gpu : cpu;
        kiln_bk_device *d = b ? dgpu : dcpu;
        KT_CHECK_OK(be->buffer_alloc(d, cache_n * 2, KILN_BK_BUF_KV, &kc[b]));
        KT_CHECK_OK(be->buffer_alloc(d, cache_n * 2, KILN_BK_BUF_KV, &vc[b]));
        KT_CHECK_OK(be->buffer_alloc(d, sizeof(float) * (size_t)n * E * 2, KILN_BK_BUF_TRANSIENT, &io[b]));
    }
    uint32_t seed = rng;
    for (int which = 0; which < 2; which++) {
        rng = seed + (uint32_t)which;
        for (size_t i = 0; i < cache_n; i++) kv[i] = kiln_fp32_to_fp16(frand());
        for (int b = 0; b < 2; b++) {
            const kiln_backend_iface *be = b ? gpu : cpu;
            KT_CHECK_OK(be->buffer_upload(b ? dgpu : dcpu, which ? vc[b] : kc[b], 0, kv, cache_n * 2));
        }
    }
    float *q = malloc(sizeof(float) * (size_t)n * E), *oc = malloc(sizeof(float) * (size_t)n * E),
          *og = malloc(sizeof(float) * (size_t)n * E);
    for (int i = 0; i < n * E; i++) q[i] = 2.0f * frand(); /* scores of a few units: peaked softmax rows */
    kiln_bk_attn at = {sizeof at, (uint32_t)H, (uint32_t)HKV, (uint32_t)D, 1.0f / sqrtf((float)D)};
    for (int b = 0; b < 2; b++) {
        const kiln_backend_iface *be = b ? gpu : cpu;
        kiln_bk_device *d = b ? dgpu : dcpu;
        KT_CHECK_OK(be->buffer_upload(d, io[b], 0, q, sizeof(float) * (size_t)n * E));
        kiln_bk_tensor tq, to;
        memset(&tq, 0, sizeof tq);
        tq.buf = io[b];
        tq.type = KILN_TYPE_F32;
        tq.ne[0] = E;
        tq.ne[1] = n;
        tq.row_stride = (uint64_t)E * 4;
        to = tq;
        to.offset = sizeof(float) * (size_t)n * E;
        KT_CHECK_OK(be->attention(d, &tq, kc[b], vc[b], &at, &to));
        KT_CHECK_OK(be->buffer_download(d, io[b], to.offset, b ? og : oc, sizeof(float) * (size_t)n * E));
    }
    double md = 0, mx = 1;
    for (int i = 0; i < n * E; i++) {
        const double df = fabs((double)oc[i] - (double)og[i]);
        if (!(df <= md)) md = df;
        if (fabs(oc[i]) > mx) mx = fabs(oc[i]);
    }
    for (int b = 0; b < 2; b++) {
        const kiln_backend_iface *be = b ? gpu : cpu;
        be->buffer_free(kc[b]);
        be->buffer_free(vc[b]);
        be->buffer_free(io[b]);
    }
    free(q), free(oc), free(og), free(kv), free(blocks), free(pos), free(cell), free(tab), free(nkv);
    printf("  D %3d, %3d tokens (%d + %d, context %d / %d): rel diff %.3g\n", D, n, n0, n - n0, ctx0, ctx1,
           md / mx);
    return md / mx;
}

static void test_prefill(void) {
    static const int Ds[] = {64, 128};
    for (int i = 0; i < 2; i++) {
        const int D = Ds[i];
        KT_CHECK(run_case(D, 512, 512, 0, 0) < 5e-3);  /* one sequence from position 0: 8 full tiles */
        KT_CHECK(run_case(D, 100, 37, 5, 200) < 5e-3); /* two sequences, context, partial tiles */
        KT_CHECK(run_case(D, 9, 9, 63, 0) < 5e-3);     /* the smallest prefill ubatch (CUDA: F32 kernel) */
        KT_CHECK(run_case(D, 33, 33, 63, 0) < 5e-3);   /* the smallest on tensor cores (CUDA) */
        KT_CHECK(run_case(D, 70, 70, 1000, 0) < 5e-3); /* deep context, a tile of 6 */
    }
}

static void test_decode(void) {
    KT_CHECK(run_case(128, 8, 4, 300, 17) < 1e-4);
    KT_CHECK(run_case(64, 1, 1, 40, 0) < 1e-4);
}

/* rope_kv_attention against rope_kv_store then attention on the same
 * backend: the same attention output (and its quantized form read by the
 * next Q8_0 product), the same caches, bit for bit. One token (the
 * backends' single launch: its own row taken from where it is being
 * stored, the cell holding garbage before) and three tokens of one
 * sequence (a verify batch: the two operations); a short context, one of
 * three 32-position splits (several blocks fold through the last one to
 * finish) and a first token in cell 0; NORM and NEOX, frequency factors, a
 * partial rotation, head sizes 64 and 128, GQA. Each case runs twice (the
 * second time the product reads the producer's quantized rows). */
static void test_rope_kv_attention(void) {
    if (gpu->struct_size < offsetof(kiln_backend_iface, rope_kv_attention) + sizeof gpu->rope_kv_attention ||
        !gpu->rope_kv_attention) {
        printf("  no rope_kv_attention in this backend\n");
        return;
    }
    enum { H = 8, HKV = 2, T = 3, NW = 24 };
    static const struct { int bs, cells, last; int32_t blocks[5]; } ctx[3] = {
        {4, 32, 13, {5, 2, 7, 1, 0}}, {16, 128, 69, {3, 0, 6, 1, 5}}, {4, 32, 0, {0, 1, 2, 3, 4}}};
    for (int c = 0; c < 3; c++)
        for (int D = 64; D <= 128; D += 64)
            for (int tokens = 1; tokens <= T; tokens += T - 1)
                for (int variant = 0; variant < 3; variant++) { /* 0 NORM, 1 NEOX + factors, 2 NORM partial */
                    if (ctx[c].last + 1 < tokens) continue;
                    const int Q = H * D, KVD = HKV * D, CELLS = ctx[c].cells, BS = ctx[c].bs;
                    const uint64_t OK_ = (uint64_t)T * Q, OV = OK_ + (uint64_t)T * KVD, TOTAL = OV + (uint64_t)T * KVD;
                    float *data = malloc(sizeof(float) * TOTAL), ff[64];
                    for (uint64_t i = 0; i < TOTAL; i++) data[i] = frand() * 2.0f;
                    for (int i = 0; i < D / 2; i++) ff[i] = 1.0f + 0.05f * (float)i;
                    uint16_t *kvh = malloc((size_t)CELLS * KVD * 2);
                    for (int i = 0; i < CELLS * KVD; i++) kvh[i] = kiln_fp32_to_fp16(frand());
                    int32_t pos[T], cell[T], tab[T] = {0, 0, 0}, nkv[T];
                    for (int t = 0; t < tokens; t++) {
                        pos[t] = ctx[c].last - tokens + 1 + t;
                        cell[t] = ctx[c].blocks[pos[t] / BS] * BS + pos[t] % BS;
                        nkv[t] = pos[t] + 1;
                    }
                    kiln_bk_ubatch u = {sizeof u, (uint32_t)tokens, pos, cell, tab, nkv, ctx[c].blocks, 5,
                                        (uint32_t)BS, (uint32_t)CELLS};
                    KT_CHECK_OK(gpu->set_ubatch(dgpu, &u));
                    kiln_bk_rope rq = {sizeof rq, variant == 1 ? KILN_ROPE_NEOX : KILN_ROPE_NORM, H, (uint32_t)D,
                                       (uint32_t)(variant == 2 ? D / 2 : D), 10000.0f, 0.5f, variant == 1 ? ff : NULL};
                    kiln_bk_rope rk = rq;
                    rk.n_head = HKV;
                    kiln_bk_attn at = {sizeof at, H, HKV, (uint32_t)D, 1.0f / sqrtf((float)D)};
                    float *wf = malloc(sizeof(float) * Q * NW);
                    const uint64_t row = kiln_type_row_size(KILN_TYPE_Q8_0, Q);
                    uint8_t *wq = malloc(row * NW);
                    for (int i = 0; i < Q * NW; i++) wf[i] = frand();
                    for (int r = 0; r < NW; r++)
                        KT_CHECK_OK(kiln_quantize_row(KILN_TYPE_Q8_0, wf + (uint64_t)r * Q, wq + r * row, Q));
                    kiln_bk_buffer *wb = kt_bk_buf(gpu, dgpu, row * NW, wq);
                    kiln_bk_tensor tw = kt_bk_tensor(wb, KILN_TYPE_Q8_0, Q, NW, 0);
                    if (gpu->struct_size >= offsetof(kiln_backend_iface, weight_prepare) + sizeof gpu->weight_prepare &&
                        gpu->weight_prepare)
                        KT_CHECK_OK(gpu->weight_prepare(dgpu, &tw, &tw.layout));
                    kiln_bk_buffer *x[2], *kc[2], *vc[2], *ob[2], *pb[2];
                    for (int way = 0; way < 2; way++) { /* 0: the two operations, 1: rope_kv_attention */
                        x[way] = kt_bk_buf(gpu, dgpu, sizeof(float) * TOTAL, data);
                        kc[way] = kt_bk_buf(gpu, dgpu, (uint64_t)CELLS * KVD * 2, kvh);
                        vc[way] = kt_bk_buf(gpu, dgpu, (uint64_t)CELLS * KVD * 2, kvh);
                        ob[way] = kt_bk_buf(gpu, dgpu, sizeof(float) * T * Q, NULL);
                        pb[way] = kt_bk_buf(gpu, dgpu, sizeof(float) * T * NW * 2, NULL);
                        for (int pass = 0; pass < 2; pass++) {
                            KT_CHECK_OK(gpu->buffer_upload(dgpu, x[way], 0, data, sizeof(float) * TOTAL));
                            kiln_bk_tensor q = kt_bk_tensor(x[way], KILN_TYPE_F32, Q, tokens, 0);
                            kiln_bk_tensor k = kt_bk_tensor(x[way], KILN_TYPE_F32, KVD, tokens, OK_ * 4);
                            kiln_bk_tensor v = kt_bk_tensor(x[way], KILN_TYPE_F32, KVD, tokens, OV * 4);
                            kiln_bk_tensor o = kt_bk_tensor(ob[way], KILN_TYPE_F32, Q, tokens, 0);
                            kiln_bk_tensor pr = kt_bk_tensor(pb[way], KILN_TYPE_F32, NW, tokens, sizeof(float) * T * NW * pass);
                            if (way == 0) {
                                KT_CHECK_OK(gpu->rope_kv_store(dgpu, &q, &k, &v, &rq, &rk, kc[0], vc[0], KVD));
                                KT_CHECK_OK(gpu->attention(dgpu, &q, kc[0], vc[0], &at, &o));
                            } else {
                                KT_CHECK_OK(gpu->rope_kv_attention(dgpu, &q, &k, &v, &rq, &rk, kc[1], vc[1], KVD, &at, &o));
                            }
                            KT_CHECK_OK(gpu->matmul(dgpu, &tw, &o, &pr));
                        }
                    }
                    KT_CHECKF(kt_bk_same(gpu, dgpu, ob[0], ob[1], 0, sizeof(float) * tokens * Q),
                              "rope_kv_attention context %d D %d tokens %d variant %d: outputs differ", c, D, tokens,
                              variant);
                    KT_CHECKF(kt_bk_same(gpu, dgpu, kc[0], kc[1], 0, (uint64_t)CELLS * KVD * 2) &&
                                  kt_bk_same(gpu, dgpu, vc[0], vc[1], 0, (uint64_t)CELLS * KVD * 2),
                              "rope_kv_attention context %d D %d tokens %d variant %d: caches differ", c, D, tokens,
                              variant);
                    KT_CHECKF(kt_bk_same(gpu, dgpu, pb[0], pb[1], 0, sizeof(float) * tokens * NW) &&
                                  kt_bk_same(gpu, dgpu, pb[0], pb[1], sizeof(float) * T * NW, sizeof(float) * tokens * NW),
                              "rope_kv_attention context %d D %d tokens %d variant %d: the next products differ", c, D,
                              tokens, variant);
                    for (int way = 0; way < 2; way++) {
                        gpu->buffer_free(x[way]);
                        gpu->buffer_free(kc[way]);
                        gpu->buffer_free(vc[way]);
                        gpu->buffer_free(ob[way]);
                        gpu->buffer_free(pb[way]);
                    }
                    gpu->buffer_free(wb);
                    free(wf);
                    free(wq);
                    free(kvh);
                    free(data);
                }
}

int main(void) {
    if (!getenv("KILN_BACKEND_PATH")) setenv("KILN_BACKEND_PATH", getenv("KILN_BUILD") ? getenv("KILN_BUILD") : "build", 0);
    const char *name = getenv("KILN_ATTN_BACKEND") ? getenv("KILN_ATTN_BACKEND") : "cuda";
    if (kiln_backend_find(NULL, &cpu) != KILN_OK || kiln_backend_find(name, &gpu) != KILN_OK ||
        gpu->device_count() < 1) {
        printf("skip: no %s backend or device (%s)\n", name, kiln_last_error());
        return 77;
    }
    if (cpu->device_open(0, NULL, &dcpu) != KILN_OK || gpu->device_open(0, NULL, &dgpu) != KILN_OK) {
        printf("cannot open devices: %s\n", kiln_last_error());
        return 1;
    }
    KT_RUN(test_prefill);
    KT_RUN(test_decode);
    KT_RUN(test_rope_kv_attention);
    gpu->device_close(dgpu);
    cpu->device_close(dcpu);
    return kt_finish();
}
