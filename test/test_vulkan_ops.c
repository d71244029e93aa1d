/*
 * test_vulkan_ops.c - every operation of the Vulkan backend against the CPU
 * backend on random data: matmul for every weight type with 1, 3, 9, 16, 17,
 * 70 and 150 activation rows and 133 weight rows (the matrix-vector,
 * row-group and tiled or matrix-core kernels, several tiles each way with
 * partial ones; a token's decode bits the same in
 * any batch up to 16), float rows with tails,
 * get_rows for every type, rms_norm, add (with a broadcast row), swiglu,
 * rope (NORM and NEOX, with frequency factors), kv_store + attention over a
 * paged cache with GQA; the fused entries (add_rms_norm, matmul_multi,
 * rope_kv_store) and the activations quantized by the operations that
 * produce them bit for bit against the separate operations. Weights go
 * through the plugin's weight_prepare after their upload, as a model load
 * does (Q4_0 rows of whole 256-element groups: the split layout, unless
 * KILN_VK_LAYOUT=0), and the split layout gives the GGUF layout's bits in
 * every kernel. The two backends do the same arithmetic (the same
 * activation quantization and integer block sums), so results may differ
 * only by the order of float additions. Skipped when libkiln-vulkan.so or
 * a Vulkan device is missing (KILN_BACKEND_PATH names the plugin folder).
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

static const kiln_backend_iface *cpu, *vk;
static kiln_bk_device *dcpu, *dvk;
static int vk_coopmat; /* the device said it multiplies batches on matrix cores */

/* Whether a matmul of m activation rows may go to the matrix cores: past
 * 16 rows, or past 4 when the matrix-vector kernel is switched off. */
static int on_matrix_cores(int64_t m) {
    const int mmv_off = getenv("KILN_VK_NO_MMV") || getenv("KILN_VK_NO_SUBGROUP");
    return vk_coopmat && m > (mmv_off ? 4 : 16);
}

static void vk_log(int32_t level, const char *msg, void *user) {
    (void)level;
    (void)user;
    if (strstr(msg, "cooperative matrices")) vk_coopmat = 1;
    if (getenv("KILN_VK_OPS_VERBOSE")) printf("  [vulkan] %s\n", msg);
}

static uint32_t rng = 12345;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

typedef struct {
    kiln_bk_buffer *c, *v;
} pair;

static pair alloc_pair(uint64_t size, uint32_t usage) {
    pair p = {NULL, NULL};
    KT_CHECK_OK(cpu->buffer_alloc(dcpu, size, usage, &p.c));
    KT_CHECK_OK(vk->buffer_alloc(dvk, size, usage, &p.v));
    return p;
}

static void upload(pair p, const void *data, uint64_t size) {
    KT_CHECK_OK(cpu->buffer_upload(dcpu, p.c, 0, data, size));
    KT_CHECK_OK(vk->buffer_upload(dvk, p.v, 0, data, size));
}

static void free_pair(pair p) {
    cpu->buffer_free(p.c);
    vk->buffer_free(p.v);
}

/* Whether the plugin sums a split weight of K x N in KQ order (layout 2,
 * vk_layout.c): long, few rows (K >= 8192, 2048 <= N <= K / 2) by
 * default, every split weight with KILN_VK_KQ=2, none with =0 or without
 * subgroup arithmetic. */
static int kq_expected(int64_t K, int64_t N) {
    const char *kq = getenv("KILN_VK_KQ");
    if ((kq && atoi(kq) == 0) || getenv("KILN_VK_NO_SUBGROUP")) return 0;
    return (kq && atoi(kq) == 2) || (K >= 8192 && N >= 2048 && N <= K / 2);
}

/* The plugin's weight_prepare on a weight just uploaded (as a model load
 * calls it: once per tensor); returns the layout to put in the tensor.
 * Q4_0 rows of whole 256-element groups on 16-byte boundaries must be
 * split (layout 1, or 2 where kq_expected) unless KILN_VK_LAYOUT=0;
 * everything else keeps the GGUF layout. */
static int32_t vk_prepare(kiln_bk_buffer *b, int32_t type, int64_t K, int64_t N, uint64_t offset) {
    if (vk->struct_size < offsetof(kiln_backend_iface, weight_prepare) + sizeof vk->weight_prepare ||
        !vk->weight_prepare)
        return 0;
    kiln_bk_tensor t = kt_bk_tensor(b, type, K, N, offset);
    int32_t layout = -1;
    KT_CHECK_OK(vk->weight_prepare(dvk, &t, &layout));
    const char *env = getenv("KILN_VK_LAYOUT");
    const int layouts = !(env && strcmp(env, "0") == 0);
    int want = layouts && type == KILN_TYPE_Q4_0 && K % 256 == 0 && offset % 16 == 0;
    if (want && kq_expected(K, N)) want = 2;
    KT_CHECKF(layout == want, "weight_prepare %s K=%lld offset %llu: layout %d, expected %d", kiln_type_name(type),
              (long long)K, (unsigned long long)offset, (int)layout, want);
    return layout;
}

/* max |a - b| / max(1, max |a|) over n floats; NaN counts. */
static double rel_diff(const float *a, const float *b, size_t n) {
    double md = 0, mx = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= md)) md = d; /* NaN counts */
        if (fabs(a[i]) > mx) mx = fabs(a[i]);
    }
    return md / mx;
}

/* Downloads n floats of both and returns their rel_diff. */
static double compare(pair p, uint64_t offset, size_t n, const char *what) {
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    KT_CHECK_OK(cpu->buffer_download(dcpu, p.c, offset, a, n * sizeof(float)));
    KT_CHECK_OK(vk->buffer_download(dvk, p.v, offset, b, n * sizeof(float)));
    double rel = rel_diff(a, b, n);
    free(a);
    free(b);
    if (getenv("KILN_VK_OPS_VERBOSE")) printf("  %-28s rel diff %.3g\n", what, rel);
    return rel;
}

static void test_matmul_and_get_rows(void) {
    static const int32_t types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q4_0,
                                    KILN_TYPE_Q4_1, KILN_TYPE_Q5_0, KILN_TYPE_Q5_1, KILN_TYPE_Q8_0,
                                    KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};
    const int64_t K = 512, N = 133;
    /* N and 150 rows: more than one tile each way with tails (128 x 128
     * matrix-core tiles, 64 x 64 portable ones) */
    /* 1..16 rows take the matrix-vector kernel where the device has
     * subgroup arithmetic (two workgroup rows from 9), more the tiled one */
    const int64_t Ms[] = {1, 3, 9, 16, 17, 70, 150};
    enum { MMAX = 150 };
    float *wf = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * K * MMAX);
    for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
    for (int64_t i = 0; i < K * MMAX; i++) x[i] = frand() * 2.0f;
    float alone[160];
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int32_t type = types[ti];
        KT_CHECK(vk->supports_type(0, type));
        const uint64_t row = kiln_type_row_size(type, K);
        uint8_t *wq = malloc(row * N);
        for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
        pair w = alloc_pair(row * N + 64, KILN_BK_BUF_WEIGHTS), xa = alloc_pair(sizeof(float) * K * MMAX, KILN_BK_BUF_WEIGHTS);
        pair out = alloc_pair(sizeof(float) * K * MMAX, KILN_BK_BUF_WEIGHTS);
        upload(w, wq, row * N);
        upload(xa, x, sizeof(float) * K * MMAX);
        const int32_t lay = vk_prepare(w.v, type, K, N, 0);
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            const int64_t M = Ms[mi];
            kiln_bk_tensor tw = kt_bk_tensor(w.c, type, K, N, 0), tx = kt_bk_tensor(xa.c, KILN_TYPE_F32, K, M, 0);
            kiln_bk_tensor td = kt_bk_tensor(out.c, KILN_TYPE_F32, N, M, 0);
            KT_CHECK_OK(cpu->matmul(dcpu, &tw, &tx, &td));
            tw.buf = w.v, tx.buf = xa.v, td.buf = out.v;
            tw.layout = lay;
            KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &td));
            char what[64];
            snprintf(what, sizeof what, "matmul %s M=%lld", kiln_type_name(type), (long long)M);
            double rel = compare(out, 0, (size_t)(N * M), what);
            /* matrix cores multiply F16 roundings of both operands (as
             * CUDA's cuBLAS prefill) where the CPU dots quantized weights
             * with Q8 activations (steps of 1/127 of a block's largest
             * value): 3e-3 to 4e-3 here (lavapipe, KILN_VK_COOPMAT_EMULATE);
             * otherwise the CPU's arithmetic in another order (~2e-7) */
            const double tol = on_matrix_cores(M) ? 1e-2 : 2e-4;
            KT_CHECKF(rel < tol, "%s: relative difference %.3g", what, rel);
            /* decode invariance: token 0 has the same bits in any batch of
             * up to 16 (a verified draft token = the token decoded alone) */
            float row0[160];
            KT_CHECK_OK(vk->buffer_download(dvk, out.v, 0, row0, sizeof(float) * N));
            if (M == 1) memcpy(alone, row0, sizeof(float) * N);
            else if (M <= 16 && !on_matrix_cores(M))
                KT_CHECKF(memcmp(alone, row0, sizeof(float) * N) == 0, "%s: token 0 differs from M=1", what);
        }
        /* get_rows: rows 5, 0, 36, 5 of the quantized table */
        const int32_t ids[] = {5, 0, 36, 5};
        kiln_bk_tensor tt = kt_bk_tensor(w.c, type, K, N, 0), td = kt_bk_tensor(out.c, KILN_TYPE_F32, K, 4, 0);
        KT_CHECK_OK(cpu->get_rows(dcpu, &tt, ids, &td));
        tt.buf = w.v, td.buf = out.v;
        tt.layout = lay;
        KT_CHECK_OK(vk->get_rows(dvk, &tt, ids, &td));
        char what[64];
        snprintf(what, sizeof what, "get_rows %s", kiln_type_name(type));
        double rel = compare(out, 0, (size_t)(4 * K), what);
        KT_CHECKF(rel == 0, "%s: relative difference %.3g", what, rel);
        free_pair(w);
        free_pair(xa);
        free_pair(out);
        free(wq);
    }
    free(wf);
    free(x);
}

/* Float weights with rows that are not whole 32-element chunks (K = 90:
 * the tail path, no 16-byte loads, an odd number of chunks for the batch
 * kernel's two-chunk loop) and not 16-byte aligned, through the
 * matrix-vector kernel (1, 3, 5 rows) and the batch kernel (20 rows). */
static void test_matmul_float_tails(void) {
    static const int32_t types[] = {KILN_TYPE_F32, KILN_TYPE_F16, KILN_TYPE_BF16};
    const int64_t K = 90, N = 7, M = 20;
    static const int64_t ms[] = {1, 3, 5, 20};
    float wf[100 * 7], x[100 * 20];
    for (int i = 0; i < K * N; i++) wf[i] = frand();
    for (int i = 0; i < K * M; i++) x[i] = frand();
    for (size_t ti = 0; ti < 3; ti++) {
        const int32_t type = types[ti];
        const uint64_t row = kiln_type_row_size(type, K);
        uint8_t wq[400 * 7];
        for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
        pair w = alloc_pair(row * N + 4 + 64, KILN_BK_BUF_WEIGHTS), xa = alloc_pair(sizeof x, KILN_BK_BUF_WEIGHTS);
        pair out = alloc_pair(sizeof(float) * N * M, KILN_BK_BUF_WEIGHTS);
        /* the weights 4 bytes into their buffer: rows not 16-byte aligned */
        uint8_t *wb = calloc(1, row * N + 4);
        memcpy(wb + 4, wq, row * N);
        upload(w, wb, row * N + 4);
        upload(xa, x, sizeof x);
        const int32_t lay = vk_prepare(w.v, type, K, N, 4);
        for (size_t mi = 0; mi < 4; mi++) {
            const int64_t m = ms[mi];
            kiln_bk_tensor tw = kt_bk_tensor(w.c, type, K, N, 4), tx = kt_bk_tensor(xa.c, KILN_TYPE_F32, K, m, 0);
            kiln_bk_tensor td = kt_bk_tensor(out.c, KILN_TYPE_F32, N, m, 0);
            KT_CHECK_OK(cpu->matmul(dcpu, &tw, &tx, &td));
            tw.buf = w.v, tx.buf = xa.v, td.buf = out.v;
            tw.layout = lay;
            KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &td));
            char what[64];
            snprintf(what, sizeof what, "matmul %s K=%lld M=%lld", kiln_type_name(type), (long long)K, (long long)m);
            double rel = compare(out, 0, (size_t)(N * m), what);
            const double tol = on_matrix_cores(m) ? 1e-2 : 2e-4;
            KT_CHECKF(rel < tol, "%s: relative difference %.3g", what, rel);
        }
        free(wb);
        free_pair(w);
        free_pair(xa);
        free_pair(out);
    }
}

static void set_ubatch(const kiln_bk_ubatch *u) {
    KT_CHECK_OK(cpu->set_ubatch(dcpu, u));
    KT_CHECK_OK(vk->set_ubatch(dvk, u));
}

static void test_row_ops_and_attention(void) {
    enum { T = 5, H = 4, HKV = 2, D = 64, E = H * D, KVD = HKV * D, BS = 4, CELLS = 32 };
    float *x = malloc(sizeof(float) * T * E * 4);
    for (int i = 0; i < T * E * 4; i++) x[i] = frand();
    /* layout (floats): a [T][E], b [T][E], w [E], out [T][E] */
    const uint64_t A = 0, B = T * E, Wt = 2 * T * E, O = 3 * T * E;
    pair buf = alloc_pair(sizeof(float) * (O + T * E), KILN_BK_BUF_TRANSIENT);
    upload(buf, x, sizeof(float) * O);
    kiln_bk_tensor a = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, T, A * 4), b = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, T, B * 4);
    kiln_bk_tensor w = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, 1, Wt * 4), o = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, T, O * 4);
    kiln_bk_tensor b1 = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, 1, B * 4);
#define BOTH(call_cpu, call_vk)                                                         \
    do {                                                                                \
        KT_CHECK_OK(call_cpu);                                                          \
        a.buf = b.buf = w.buf = o.buf = b1.buf = buf.v;                                 \
        KT_CHECK_OK(call_vk);                                                           \
        a.buf = b.buf = w.buf = o.buf = b1.buf = buf.c;                                 \
    } while (0)
    BOTH(cpu->rms_norm(dcpu, &a, &w, 1e-5f, &o), vk->rms_norm(dvk, &a, &w, 1e-5f, &o));
    KT_CHECKF(compare(buf, O * 4, T * E, "rms_norm") < 1e-5, "rms_norm");
    BOTH(cpu->add(dcpu, &a, &b1, &o), vk->add(dvk, &a, &b1, &o));
    KT_CHECKF(compare(buf, O * 4, T * E, "add broadcast") == 0, "add");
    BOTH(cpu->swiglu(dcpu, &a, &b, &o), vk->swiglu(dvk, &a, &b, &o));
    KT_CHECKF(compare(buf, O * 4, T * E, "swiglu") < 1e-5, "swiglu");

    /* ubatch: tokens of two sequences over a paged cache */
    int32_t pos[T] = {0, 1, 2, 0, 5}, cell[T] = {8, 9, 10, 20, 17};
    int32_t tab[T] = {0, 0, 0, 2, 4}, nkv[T] = {1, 2, 3, 1, 6};
    int32_t blocks[6] = {2, 7, 5, 7, 3, 4}; /* seq 0: block 2; seq 1: 5; seq 2: blocks 3, 4 */
    kiln_bk_ubatch u = {sizeof u, T, pos, cell, tab, nkv, blocks, 6, BS, CELLS};
    set_ubatch(&u);
    float ff[D / 2];
    for (int i = 0; i < D / 2; i++) ff[i] = 1.0f + 0.05f * (float)i;
    for (int mode = 0; mode <= 2; mode += 2) {
        upload(buf, x, sizeof(float) * O);
        kiln_bk_rope r = {sizeof r, mode, H, D, D, 10000.0f, 0.5f, mode ? ff : NULL};
        BOTH(cpu->rope(dcpu, &a, &r), vk->rope(dvk, &a, &r));
        KT_CHECKF(compare(buf, A * 4, T * E, mode ? "rope neox" : "rope norm") < 1e-5, "rope mode %d", mode);
    }
    /* kv_store of k = a's first KVD columns... as rows of KVD */
    pair kc = alloc_pair((uint64_t)CELLS * KVD * 2, KILN_BK_BUF_KV), vc = alloc_pair((uint64_t)CELLS * KVD * 2, KILN_BK_BUF_KV);
    uint16_t *zero = calloc(CELLS * KVD, 2);
    upload(kc, zero, (uint64_t)CELLS * KVD * 2);
    upload(vc, zero, (uint64_t)CELLS * KVD * 2);
    kiln_bk_tensor k = kt_bk_tensor(buf.c, KILN_TYPE_F32, KVD, T, A * 4), v = kt_bk_tensor(buf.c, KILN_TYPE_F32, KVD, T, B * 4);
    KT_CHECK_OK(cpu->kv_store(dcpu, &k, &v, kc.c, vc.c, KVD));
    k.buf = v.buf = buf.v;
    KT_CHECK_OK(vk->kv_store(dvk, &k, &v, kc.v, vc.v, KVD));
    uint16_t *h1 = malloc((size_t)CELLS * KVD * 2), *h2 = malloc((size_t)CELLS * KVD * 2);
    KT_CHECK_OK(cpu->buffer_download(dcpu, kc.c, 0, h1, (uint64_t)CELLS * KVD * 2));
    KT_CHECK_OK(vk->buffer_download(dvk, kc.v, 0, h2, (uint64_t)CELLS * KVD * 2));
    KT_CHECK(memcmp(h1, h2, (size_t)CELLS * KVD * 2) == 0);
    kiln_bk_attn at = {sizeof at, H, HKV, D, 0.125f};
    kiln_bk_tensor q = kt_bk_tensor(buf.c, KILN_TYPE_F32, E, T, Wt * 4);
    /* all 32 cells hold something: fill the caches from random rows first */
    for (int i = 0; i < CELLS * KVD; i++) zero[i] = kiln_fp32_to_fp16(frand());
    upload(kc, zero, (uint64_t)CELLS * KVD * 2);
    upload(vc, zero, (uint64_t)CELLS * KVD * 2);
    KT_CHECK_OK(cpu->attention(dcpu, &q, kc.c, vc.c, &at, &o));
    q.buf = o.buf = buf.v;
    KT_CHECK_OK(vk->attention(dvk, &q, kc.v, vc.v, &at, &o));
    o.buf = buf.c;
    KT_CHECKF(compare(buf, O * 4, T * E, "attention") < 1e-5, "attention");
    free(h1);
    free(h2);
    free(zero);
    free_pair(kc);
    free_pair(vc);
    free_pair(buf);
    free(x);
#undef BOTH
}

/* ------------------------------------------------------------------------ */
/* the fused entries give the separate operations' bits                     */
/* ------------------------------------------------------------------------ */

static kiln_bk_buffer *vk_buf(uint64_t size, const void *data) { return kt_bk_buf(vk, dvk, size, data); }

/* Whether [off, off + size) of two Vulkan buffers holds the same bytes. */
static int vk_same(kiln_bk_buffer *a, kiln_bk_buffer *b, uint64_t off, uint64_t size) {
    return kt_bk_same(vk, dvk, a, b, off, size);
}

/* rel_diff of n floats at byte off of two Vulkan buffers. */
static double vk_rel(kiln_bk_buffer *a, kiln_bk_buffer *b, uint64_t off, size_t n) {
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    KT_CHECK_OK(vk->buffer_download(dvk, a, off, x, n * sizeof(float)));
    KT_CHECK_OK(vk->buffer_download(dvk, b, off, y, n * sizeof(float)));
    const double rel = rel_diff(x, y, n);
    free(x);
    free(y);
    return rel;
}

/* add_rms_norm as the core calls it (sum aliases a, dst another row block)
 * and with every operand apart, 1 and 5 rows, against add then rms_norm. */
static void test_fused_add_rms_norm(void) {
    enum { E = 320, T = 5 };
    const uint64_t X = 0, Hh = T * E, Wt = 2 * T * E, S = 3 * T * E, D = 4 * T * E, TOTAL = 5 * T * E;
    float *data = malloc(sizeof(float) * TOTAL);
    for (uint64_t i = 0; i < TOTAL; i++) data[i] = frand() * 3.0f;
    for (int rows = 1; rows <= T; rows += T - 1)
        for (int apart = 0; apart < 2; apart++) {
            kiln_bk_buffer *b1 = vk_buf(sizeof(float) * TOTAL, data), *b2 = vk_buf(sizeof(float) * TOTAL, data);
            kiln_bk_tensor x = kt_bk_tensor(b1, KILN_TYPE_F32, E, rows, X * 4), h = kt_bk_tensor(b1, KILN_TYPE_F32, E, rows, Hh * 4);
            kiln_bk_tensor w = kt_bk_tensor(b1, KILN_TYPE_F32, E, 1, Wt * 4);
            kiln_bk_tensor sum = apart ? kt_bk_tensor(b1, KILN_TYPE_F32, E, rows, S * 4) : x;
            kiln_bk_tensor dst = apart ? kt_bk_tensor(b1, KILN_TYPE_F32, E, rows, D * 4) : h;
            KT_CHECK_OK(vk->add(dvk, &x, &h, &sum));
            KT_CHECK_OK(vk->rms_norm(dvk, &sum, &w, 1e-5f, &dst));
            x.buf = h.buf = w.buf = sum.buf = dst.buf = b2;
            KT_CHECK_OK(vk->add_rms_norm(dvk, &x, &h, &sum, &w, 1e-5f, &dst));
            KT_CHECKF(vk_same(b1, b2, 0, sizeof(float) * TOTAL), "add_rms_norm rows %d apart %d: bits differ", rows,
                      apart);
            vk->buffer_free(b1);
            vk->buffer_free(b2);
        }
    free(data);
}

/* matmul_multi: three and two products of one x for every weight type,
 * decode (1, 3 and 9 rows: one dispatch) and a batch (20: matmul each),
 * weights one after the other in one buffer (the second F16 one not
 * 16-byte aligned), against matmul three times; and products of two
 * types (matmul each). */
static void test_fused_matmul_multi(void) {
    static const int32_t types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q4_0,
                                    KILN_TYPE_Q4_1, KILN_TYPE_Q5_0, KILN_TYPE_Q5_1, KILN_TYPE_Q8_0,
                                    KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};
    const int64_t K = 512, Ns[3] = {133, 64, 37};
    static const int64_t Ms[] = {1, 3, 9, 20};
    enum { MMAX = 20 };
    float *wf = malloc(sizeof(float) * K * 133), *x = malloc(sizeof(float) * K * MMAX);
    for (int64_t i = 0; i < K * 133; i++) wf[i] = frand();
    for (int64_t i = 0; i < K * MMAX; i++) x[i] = frand() * 2.0f;
    const uint64_t DSZ = sizeof(float) * (133 + 64 + 37) * MMAX + 64;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int32_t type = types[ti];
        const int32_t type2 = ti == 0 ? types[1] : types[ti - 1]; /* the mixed case */
        const uint64_t row = kiln_type_row_size(type, K), row2 = kiln_type_row_size(type2, K);
        /* w0 at 0, w1 right after it + 2 bytes, w2 (type2 in the mixed case) after that, 4-aligned */
        const uint64_t o1 = row * Ns[0] + 2 + (type == KILN_TYPE_F16 || type == KILN_TYPE_BF16 ? 0 : 2);
        const uint64_t o2 = (o1 + row * Ns[1] + 3) / 4 * 4;
        const uint64_t wsize = o2 + (row > row2 ? row : row2) * Ns[2] + 64;
        uint8_t *wq = calloc(1, wsize), *wq2 = calloc(1, wsize);
        for (int p = 0; p < 3; p++) {
            const uint64_t o = p == 0 ? 0 : p == 1 ? o1 : o2;
            for (int64_t r = 0; r < Ns[p]; r++) {
                KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + o + r * row, K));
                KT_CHECK_OK(kiln_quantize_row(p == 2 ? type2 : type, wf + r * K,
                                              wq2 + o + r * (p == 2 ? row2 : row), K));
            }
        }
        for (int mixed = 0; mixed < 2; mixed++) {
            kiln_bk_buffer *wb = vk_buf(wsize, mixed ? wq2 : wq), *xb = vk_buf(sizeof(float) * K * MMAX, x);
            int32_t lay[3];
            for (int p = 0; p < 3; p++)
                lay[p] = vk_prepare(wb, mixed && p == 2 ? type2 : type, K, Ns[p], p == 0 ? 0 : p == 1 ? o1 : o2);
            for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                const int64_t M = Ms[mi];
                for (uint32_t n = 2; n <= 3; n++) {
                    kiln_bk_buffer *d1 = vk_buf(DSZ, NULL), *d2 = vk_buf(DSZ, NULL);
                    kiln_bk_tensor tw[3], td[3];
                    uint64_t doff = 0;
                    for (int p = 0; p < 3; p++) {
                        const int32_t t = mixed && p == 2 ? type2 : type;
                        tw[p] = kt_bk_tensor(wb, t, K, Ns[p], p == 0 ? 0 : p == 1 ? o1 : o2);
                        tw[p].layout = lay[p];
                        td[p] = kt_bk_tensor(d1, KILN_TYPE_F32, Ns[p], M, doff);
                        doff += sizeof(float) * (uint64_t)(Ns[p] * M);
                    }
                    kiln_bk_tensor tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, M, 0);
                    uint8_t zero[256] = {0};
                    for (uint64_t o = 0; o < DSZ; o += sizeof zero) {
                        const uint64_t c = DSZ - o < sizeof zero ? DSZ - o : sizeof zero;
                        KT_CHECK_OK(vk->buffer_upload(dvk, d1, o, zero, c));
                        KT_CHECK_OK(vk->buffer_upload(dvk, d2, o, zero, c));
                    }
                    for (uint32_t p = 0; p < n; p++) KT_CHECK_OK(vk->matmul(dvk, &tw[p], &tx, &td[p]));
                    const kiln_bk_tensor *wp[3] = {&tw[0], &tw[1], &tw[2]};
                    kiln_bk_tensor *dp[3] = {&td[0], &td[1], &td[2]};
                    for (int p = 0; p < 3; p++) td[p].buf = d2;
                    KT_CHECK_OK(vk->matmul_multi(dvk, n, wp, &tx, dp));
                    KT_CHECKF(vk_same(d1, d2, 0, DSZ), "matmul_multi %s%s M=%lld n=%u: bits differ",
                              kiln_type_name(type), mixed ? " mixed" : "", (long long)M, n);
                    vk->buffer_free(d1);
                    vk->buffer_free(d2);
                }
            }
            vk->buffer_free(wb);
            vk->buffer_free(xb);
        }
        free(wq);
        free(wq2);
    }
    free(wf);
    free(x);
}

/* rope_kv_store against rope, rope, kv_store: q, k, v rows of one buffer
 * (as the core lays them out), NORM and NEOX, with frequency factors and
 * with a partial rotation, 1 and 5 tokens; and q, k, v in separate
 * buffers (the three operations). */
static void test_fused_rope_kv_store(void) {
    enum { T = 5, H = 4, HKV = 2, D = 64, Q = H * D, KVD = HKV * D, BS = 4, CELLS = 32 };
    const uint64_t OQ = 0, OK_ = T * Q, OV = T * Q + T * KVD, TOTAL = T * Q + 2 * T * KVD;
    float *data = malloc(sizeof(float) * TOTAL);
    for (uint64_t i = 0; i < TOTAL; i++) data[i] = frand() * 2.0f;
    uint16_t *zero = calloc((size_t)CELLS * KVD, 2);
    float ff[D / 2];
    for (int i = 0; i < D / 2; i++) ff[i] = 1.0f + 0.05f * (float)i;
    int32_t pos[T] = {3, 17, 2, 0, 250}, cell[T] = {8, 9, 10, 20, 17};
    for (int tokens = 1; tokens <= T; tokens += T - 1)
        for (int mode = 0; mode <= 2; mode += 2)
            for (int variant = 0; variant < 3; variant++) { /* 0 factors, 1 partial rotation, 2 apart */
                kiln_bk_ubatch u = {sizeof u, (uint32_t)tokens, pos, cell, NULL, NULL, NULL, 0, BS, CELLS};
                KT_CHECK_OK(vk->set_ubatch(dvk, &u));
                kiln_bk_buffer *b1 = vk_buf(sizeof(float) * TOTAL, data), *b2 = vk_buf(sizeof(float) * TOTAL, data);
                kiln_bk_buffer *kc1 = vk_buf((uint64_t)CELLS * KVD * 2, zero), *vc1 = vk_buf((uint64_t)CELLS * KVD * 2, zero);
                kiln_bk_buffer *kc2 = vk_buf((uint64_t)CELLS * KVD * 2, zero), *vc2 = vk_buf((uint64_t)CELLS * KVD * 2, zero);
                kiln_bk_buffer *vsep = variant == 2 ? vk_buf(sizeof(float) * TOTAL, data) : NULL;
                kiln_bk_rope rq = {sizeof rq, mode, H, D, variant == 1 ? D / 2 : D, 10000.0f, 0.5f,
                                   variant == 0 ? ff : NULL};
                kiln_bk_rope rk = rq;
                rk.n_head = HKV;
                kiln_bk_tensor q = kt_bk_tensor(b1, KILN_TYPE_F32, Q, tokens, OQ * 4);
                kiln_bk_tensor k = kt_bk_tensor(b1, KILN_TYPE_F32, KVD, tokens, OK_ * 4);
                kiln_bk_tensor v = kt_bk_tensor(b1, KILN_TYPE_F32, KVD, tokens, OV * 4);
                KT_CHECK_OK(vk->rope(dvk, &q, &rq));
                KT_CHECK_OK(vk->rope(dvk, &k, &rk));
                KT_CHECK_OK(vk->kv_store(dvk, &k, &v, kc1, vc1, KVD));
                q.buf = k.buf = v.buf = b2;
                if (vsep) v.buf = vsep;
                KT_CHECK_OK(vk->rope_kv_store(dvk, &q, &k, &v, &rq, &rk, kc2, vc2, KVD));
                KT_CHECKF(vk_same(b1, b2, 0, sizeof(float) * TOTAL), "rope_kv_store tokens %d mode %d variant %d: q/k bits differ",
                          tokens, mode, variant);
                KT_CHECKF(vk_same(kc1, kc2, 0, (uint64_t)CELLS * KVD * 2) && vk_same(vc1, vc2, 0, (uint64_t)CELLS * KVD * 2),
                          "rope_kv_store tokens %d mode %d variant %d: caches differ", tokens, mode, variant);
                vk->buffer_free(b1);
                vk->buffer_free(b2);
                vk->buffer_free(kc1);
                vk->buffer_free(vc1);
                vk->buffer_free(kc2);
                vk->buffer_free(vc2);
                vk->buffer_free(vsep);
            }
    free(zero);
    free(data);
}

/* The producers of a matmul's activations (rms_norm, add_rms_norm,
 * swiglu, attention: F16, BF16, Q8_0, Q8_1 only) quantize them themselves once a matmul has read those rows
 * quantized (no quant_act dispatch): the products equal those of the same
 * rows uploaded into another buffer (quantized by quant_act), bit for bit,
 * for every activation format (F16, BF16, Q8_0, Q8_1, Q8_K), rows that
 * are not whole 256-element chunks, 1 and 3 tokens. */
static void test_fused_quant_producers(void) {
    static const int32_t types[] = {KILN_TYPE_F16, KILN_TYPE_BF16, KILN_TYPE_Q4_0, KILN_TYPE_Q4_1,
                                    KILN_TYPE_Q8_0, KILN_TYPE_Q4_K, KILN_TYPE_Q6_K};
    enum { N = 40, MM = 3 };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int64_t K = 320; K <= 512; K += 192) {
            const int32_t type = types[ti];
            if (K % 256 && (type == KILN_TYPE_Q4_K || type == KILN_TYPE_Q6_K)) continue;
            const uint64_t row = kiln_type_row_size(type, K);
            float *wf = malloc(sizeof(float) * K * N), *in = malloc(sizeof(float) * K * (2 * MM + 1));
            uint8_t *wq = malloc(row * N);
            for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
            for (int64_t i = 0; i < K * (2 * MM + 1); i++) in[i] = frand() * 2.0f;
            for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
            kiln_bk_buffer *wb = vk_buf(row * N, wq), *ib = vk_buf(sizeof(float) * K * (2 * MM + 1), in);
            const int32_t lay = vk_prepare(wb, type, K, N, 0);
            for (int64_t M = 1; M <= MM; M += MM - 1)
                for (int prod = 0; prod < 4; prod++) { /* rms_norm, add_rms_norm, swiglu, attention */
                    kiln_bk_buffer *hb = vk_buf(sizeof(float) * K * MM * 2, NULL), *href = vk_buf(sizeof(float) * K * MM, NULL);
                    kiln_bk_buffer *db = vk_buf(sizeof(float) * N * MM * 3, NULL);
                    kiln_bk_tensor a = kt_bk_tensor(ib, KILN_TYPE_F32, K, M, 0);
                    kiln_bk_tensor b = kt_bk_tensor(ib, KILN_TYPE_F32, K, M, sizeof(float) * K * MM);
                    kiln_bk_tensor nw = kt_bk_tensor(ib, KILN_TYPE_F32, K, 1, sizeof(float) * K * 2 * MM);
                    kiln_bk_tensor h = kt_bk_tensor(hb, KILN_TYPE_F32, K, M, 0);
                    kiln_bk_tensor sum = kt_bk_tensor(hb, KILN_TYPE_F32, K, M, sizeof(float) * K * MM);
                    kiln_bk_tensor hr = kt_bk_tensor(href, KILN_TYPE_F32, K, M, 0), tw = kt_bk_tensor(wb, type, K, N, 0);
                    tw.layout = lay;
                    kiln_bk_tensor d[3];
                    for (int i = 0; i < 3; i++) d[i] = kt_bk_tensor(db, KILN_TYPE_F32, N, M, sizeof(float) * N * MM * i);
                    /* attention: K / 64 heads of 64 over one KV head, 4 + t positions for token t */
                    enum { CELLS = 16, HD = 64 };
                    int32_t pos[MM], cell[MM], tab[MM] = {0}, nkv[MM], blocks[4] = {0, 1, 2, 3};
                    for (int t = 0; t < MM; t++) pos[t] = 3 + t, cell[t] = 3 + t, nkv[t] = 4 + t;
                    kiln_bk_ubatch u = {sizeof u, (uint32_t)M, pos, cell, tab, nkv, blocks, 4, 4, CELLS};
                    KT_CHECK_OK(vk->set_ubatch(dvk, &u));
                    uint16_t kvh[CELLS * HD];
                    for (int i = 0; i < CELLS * HD; i++) kvh[i] = kiln_fp32_to_fp16(frand());
                    kiln_bk_buffer *kc = vk_buf(sizeof kvh, kvh), *vc = vk_buf(sizeof kvh, kvh);
                    kiln_bk_attn at = {sizeof at, (uint32_t)(K / HD), 1, HD, 0.125f};
                    for (int pass = 0; pass < 2; pass++) { /* the second: the producer quantizes */
                        if (prod == 0) KT_CHECK_OK(vk->rms_norm(dvk, &a, &nw, 1e-5f, &h));
                        else if (prod == 1) KT_CHECK_OK(vk->add_rms_norm(dvk, &a, &b, &sum, &nw, 1e-5f, &h));
                        else if (prod == 2) KT_CHECK_OK(vk->swiglu(dvk, &a, &b, &h));
                        else KT_CHECK_OK(vk->attention(dvk, &a, kc, vc, &at, &h));
                        KT_CHECK_OK(vk->matmul(dvk, &tw, &h, &d[1 + pass]));
                    }
                    /* the reference: the same rows quantized by quant_act */
                    float *hh = malloc(sizeof(float) * K * M);
                    KT_CHECK_OK(vk->buffer_download(dvk, hb, 0, hh, sizeof(float) * K * M));
                    KT_CHECK_OK(vk->buffer_upload(dvk, href, 0, hh, sizeof(float) * K * M));
                    KT_CHECK_OK(vk->matmul(dvk, &tw, &hr, &d[0]));
                    float *dd = malloc(sizeof(float) * N * MM * 3);
                    KT_CHECK_OK(vk->buffer_download(dvk, db, 0, dd, sizeof(float) * N * MM * 3));
                    for (int i = 1; i < 3; i++)
                        KT_CHECKF(memcmp(dd, dd + N * MM * i, sizeof(float) * N * M) == 0,
                                  "%s K=%lld M=%lld producer %d pass %d: products differ", kiln_type_name(type),
                                  (long long)K, (long long)M, prod, i - 1);
                    free(hh);
                    free(dd);
                    vk->buffer_free(kc);
                    vk->buffer_free(vc);
                    vk->buffer_free(hb);
                    vk->buffer_free(href);
                    vk->buffer_free(db);
                }
            vk->buffer_free(wb);
            vk->buffer_free(ib);
            free(wf);
            free(in);
            free(wq);
        }
}

/* matmul_add_rms_norm (o and down of a decode step: one dispatch for split
 * Q4_0 and F16 weights with up to 4096 rows, the two operations otherwise)
 * against matmul then add_rms_norm, bit for bit: the result, the residual
 * sum (in place, as the core calls it) and a product that reads the result
 * (quantized by the fused dispatch on the second pass). */
static void test_fused_matmul_add_rms_norm(void) {
    static const int32_t types[] = {KILN_TYPE_Q4_0, KILN_TYPE_F16, KILN_TYPE_Q4_K, KILN_TYPE_F32};
    static const int64_t Ns[] = {512, 4096, 4352};
    /* the next product's activations: Q8_0, Q8_1, Q8_K, F16 */
    static const int32_t next_types[] = {KILN_TYPE_Q4_0, KILN_TYPE_Q4_1, KILN_TYPE_Q4_K, KILN_TYPE_F16};
    enum { K = 512, N2 = 40 };
    if (vk->struct_size < offsetof(kiln_backend_iface, matmul_add_rms_norm) + sizeof vk->matmul_add_rms_norm ||
        !vk->matmul_add_rms_norm) {
        KT_CHECKF(0, "the Vulkan plugin has no matmul_add_rms_norm");
        return;
    }
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
            for (size_t xi = 0; xi < sizeof next_types / sizeof next_types[0]; xi++) {
            const int32_t type = types[ti], t2 = next_types[xi];
            const int64_t N = Ns[ni];
            if (ni == 2 && type != KILN_TYPE_Q4_0) continue; /* over 4096 rows: the two operations */
            if (xi > 0 && type != KILN_TYPE_Q4_0 && type != KILN_TYPE_F16) continue; /* not fused */
            const uint64_t row = kiln_type_row_size(type, K), row2 = kiln_type_row_size(t2, N);
            float *wf = malloc(sizeof(float) * K * N), *in = malloc(sizeof(float) * (K + 2 * N));
            float *w2f = malloc(sizeof(float) * N * N2);
            uint8_t *wq = malloc(row * N), *w2q = malloc(row2 * N2);
            for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
            for (int64_t i = 0; i < N * N2; i++) w2f[i] = frand();
            for (int64_t i = 0; i < K + 2 * N; i++) in[i] = frand() * 2.0f;
            for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
            for (int64_t r = 0; r < N2; r++)
                KT_CHECK_OK(kiln_quantize_row(t2, w2f + r * N, w2q + r * row2, N));
            kiln_bk_buffer *wb = vk_buf(row * N, wq), *w2b = vk_buf(row2 * N2, w2q);
            kiln_bk_tensor tw = kt_bk_tensor(wb, type, K, N, 0), tw2 = kt_bk_tensor(w2b, t2, N, N2, 0);
            tw.layout = vk_prepare(wb, type, K, N, 0);
            tw2.layout = vk_prepare(w2b, t2, N, N2, 0);
            /* per path: x (K), the residual (N, summed in place), norm weights (N), the result (N), the next product */
            kiln_bk_buffer *b[2], *o[2];
            for (int path = 0; path < 2; path++) {
                b[path] = vk_buf(sizeof(float) * (K + 3 * N), NULL);
                KT_CHECK_OK(vk->buffer_upload(dvk, b[path], 0, in, sizeof(float) * (K + 2 * N)));
                o[path] = vk_buf(sizeof(float) * N2, NULL);
            }
            for (int pass = 0; pass < 2; pass++)
                for (int path = 0; path < 2; path++) {
                    kiln_bk_tensor x = kt_bk_tensor(b[path], KILN_TYPE_F32, K, 1, 0);
                    kiln_bk_tensor a = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, sizeof(float) * K);
                    kiln_bk_tensor nw = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, sizeof(float) * (K + N));
                    kiln_bk_tensor h = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, sizeof(float) * (K + 2 * N));
                    kiln_bk_tensor od = kt_bk_tensor(o[path], KILN_TYPE_F32, N2, 1, 0);
                    if (path == 0) {
                        KT_CHECK_OK(vk->matmul(dvk, &tw, &x, &h));
                        KT_CHECK_OK(vk->add_rms_norm(dvk, &a, &h, &a, &nw, 1e-5f, &h));
                    } else {
                        KT_CHECK_OK(vk->matmul_add_rms_norm(dvk, &tw, &x, &a, &a, &nw, 1e-5f, &h));
                    }
                    KT_CHECK_OK(vk->matmul(dvk, &tw2, &h, &od));
                }
            KT_CHECKF(vk_same(b[0], b[1], 0, sizeof(float) * (K + 3 * N)),
                      "matmul_add_rms_norm %s N=%lld: the result or the sum differs", kiln_type_name(type), (long long)N);
            KT_CHECKF(vk_same(o[0], o[1], 0, sizeof(float) * N2),
                      "matmul_add_rms_norm %s N=%lld, then %s: the next product differs", kiln_type_name(type),
                      (long long)N, kiln_type_name(t2));
            for (int path = 0; path < 2; path++) {
                vk->buffer_free(b[path]);
                vk->buffer_free(o[path]);
            }
            vk->buffer_free(wb);
            vk->buffer_free(w2b);
            free(wf);
            free(w2f);
            free(in);
            free(wq);
            free(w2q);
        }
}

/* matmul_swiglu (gate and up of a decode step: one dispatch for split
 * Q4_0 and F16 weights, the two operations for the others) against
 * matmul_multi then swiglu, bit for bit: the result and a product that
 * reads it (quantized by the fused dispatch on the second pass, in Q8_0,
 * Q8_1 and F16 for Q4_0, Q4_1 and F16 weights; by quant_act in Q8_K for
 * the K-quants). */
static void test_fused_matmul_swiglu(void) {
    static const int32_t types[] = {KILN_TYPE_Q4_0, KILN_TYPE_F16, KILN_TYPE_Q4_K, KILN_TYPE_Q6_K};
    static const int32_t next_types[] = {KILN_TYPE_Q4_0, KILN_TYPE_Q4_1, KILN_TYPE_F16, KILN_TYPE_Q4_K, KILN_TYPE_Q6_K};
    enum { K = 512, F = 1024, N2 = 40 };
    if (vk->struct_size < offsetof(kiln_backend_iface, matmul_swiglu) + sizeof vk->matmul_swiglu ||
        !vk->matmul_swiglu) {
        KT_CHECKF(0, "the Vulkan plugin has no matmul_swiglu");
        return;
    }
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t ni = 0; ni < sizeof next_types / sizeof next_types[0]; ni++) {
            const int32_t type = types[ti], t2 = next_types[ni];
            const uint64_t row = kiln_type_row_size(type, K), row2 = kiln_type_row_size(t2, F);
            float *wf = malloc(sizeof(float) * K * 2 * F), *x = malloc(sizeof(float) * K);
            float *w2f = malloc(sizeof(float) * F * N2);
            uint8_t *wq = malloc(row * 2 * F), *w2q = malloc(row2 * N2);
            for (int64_t i = 0; i < (int64_t)K * 2 * F; i++) wf[i] = frand();
            for (int64_t i = 0; i < (int64_t)F * N2; i++) w2f[i] = frand();
            for (int64_t i = 0; i < K; i++) x[i] = frand() * 2.0f;
            for (int64_t r = 0; r < 2 * F; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
            for (int64_t r = 0; r < N2; r++) KT_CHECK_OK(kiln_quantize_row(t2, w2f + r * F, w2q + r * row2, F));
            /* gate then up in one buffer, as a model's weights */
            kiln_bk_buffer *wb = vk_buf(row * 2 * F, wq), *w2b = vk_buf(row2 * N2, w2q), *xb = vk_buf(sizeof(float) * K, x);
            kiln_bk_tensor tg = kt_bk_tensor(wb, type, K, F, 0), tu = kt_bk_tensor(wb, type, K, F, row * F);
            kiln_bk_tensor tw2 = kt_bk_tensor(w2b, t2, F, N2, 0), tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, 1, 0);
            tg.layout = vk_prepare(wb, type, K, F, 0);
            tu.layout = vk_prepare(wb, type, K, F, row * F);
            tw2.layout = vk_prepare(w2b, t2, F, N2, 0);
            kiln_bk_buffer *g[2], *o[2];
            for (int path = 0; path < 2; path++) {
                g[path] = vk_buf(sizeof(float) * 2 * F, NULL);
                o[path] = vk_buf(sizeof(float) * N2, NULL);
            }
            for (int pass = 0; pass < 2; pass++)
                for (int path = 0; path < 2; path++) {
                    kiln_bk_tensor gt = kt_bk_tensor(g[path], KILN_TYPE_F32, F, 1, 0);
                    kiln_bk_tensor u = kt_bk_tensor(g[path], KILN_TYPE_F32, F, 1, sizeof(float) * F);
                    kiln_bk_tensor od = kt_bk_tensor(o[path], KILN_TYPE_F32, N2, 1, 0);
                    if (path == 0) {
                        const kiln_bk_tensor *w2[2] = {&tg, &tu};
                        kiln_bk_tensor *d2[2] = {&gt, &u};
                        KT_CHECK_OK(vk->matmul_multi(dvk, 2, w2, &tx, d2));
                        KT_CHECK_OK(vk->swiglu(dvk, &gt, &u, &gt));
                    } else {
                        KT_CHECK_OK(vk->matmul_swiglu(dvk, &tg, &tu, &tx, &u, &gt));
                    }
                    KT_CHECK_OK(vk->matmul(dvk, &tw2, &gt, &od));
                }
            KT_CHECKF(vk_same(g[0], g[1], 0, sizeof(float) * F), "matmul_swiglu %s: the result differs",
                      kiln_type_name(type));
            KT_CHECKF(vk_same(o[0], o[1], 0, sizeof(float) * N2), "matmul_swiglu %s, then %s: the next product differs",
                      kiln_type_name(type), kiln_type_name(t2));
            for (int path = 0; path < 2; path++) {
                vk->buffer_free(g[path]);
                vk->buffer_free(o[path]);
            }
            vk->buffer_free(wb);
            vk->buffer_free(w2b);
            vk->buffer_free(xb);
            free(wf);
            free(w2f);
            free(x);
            free(wq);
            free(w2q);
        }
}

/* The norm in the products after it (prenorm_fused, matmul_add,
 * rms_norm_matmul_multi, rms_norm_matmul_swiglu: one dispatch each for a
 * decode row of split Q4_0 weights, the separate operations otherwise) as
 * the core calls them for a layer, against rms_norm, matmul_multi, matmul,
 * add, matmul_swiglu, bit for bit: q/k/v, the swiglu result and the
 * residual row after the layer, twice (the second pass with the
 * activations the first left), for an embedding of 512 and 4096 (the
 * largest the fused form takes) and 4352 (the separate operations). */
static void test_fused_prenorm(void) {
    static const int32_t types[] = {KILN_TYPE_Q4_0, KILN_TYPE_F16, KILN_TYPE_Q4_K};
    static const int64_t Es[] = {512, 4096, 4352};
    enum { F = 1024 };
    if (vk->struct_size < offsetof(kiln_backend_iface, rms_norm_matmul_swiglu) + sizeof vk->rms_norm_matmul_swiglu ||
        !vk->prenorm_fused || !vk->matmul_add || !vk->rms_norm_matmul_multi || !vk->rms_norm_matmul_swiglu) {
        KT_CHECKF(0, "the Vulkan plugin has no prenorm entries");
        return;
    }
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t ei = 0; ei < sizeof Es / sizeof Es[0]; ei++) {
            const int32_t type = types[ti];
            const int64_t E = Es[ei], KV = E / 4;
            if (type != KILN_TYPE_Q4_0 && ei != 0) continue;
            /* q, k, v, o, gate, up (K = E), down (K = F), one after the other */
            const int64_t Ks[7] = {E, E, E, E, E, E, F}, Ns[7] = {E, KV, KV, E, F, F, E};
            uint64_t off[8] = {0};
            for (int i = 0; i < 7; i++) off[i + 1] = off[i] + (kiln_type_row_size(type, Ks[i]) * Ns[i] + 255) / 256 * 256;
            uint8_t *wq = calloc(1, off[7]);
            float *wf = malloc(sizeof(float) * (size_t)(E > F ? E : F) * (size_t)(E > F ? E : F));
            for (int i = 0; i < 7; i++) {
                const uint64_t row = kiln_type_row_size(type, Ks[i]);
                for (int64_t j = 0; j < Ks[i] * Ns[i]; j++) wf[j] = frand();
                for (int64_t r = 0; r < Ns[i]; r++)
                    KT_CHECK_OK(kiln_quantize_row(type, wf + r * Ks[i], wq + off[i] + r * row, Ks[i]));
            }
            kiln_bk_buffer *wb = vk_buf(off[7], wq);
            kiln_bk_tensor tw[7];
            for (int i = 0; i < 7; i++) {
                tw[i] = kt_bk_tensor(wb, type, Ks[i], Ns[i], off[i]);
                tw[i].layout = vk_prepare(wb, type, Ks[i], Ns[i], off[i]);
            }
            const int fused = vk->prenorm_fused(dvk, &tw[0], 1) != 0;
            /* fused for split Q4_0 on a default handle; the knobs that turn it off */
            const int expect = type == KILN_TYPE_Q4_0 && !getenv("KILN_VK_NO_FUSED") && !getenv("KILN_VK_NO_SUBGROUP") &&
                               !getenv("KILN_VK_MMV_UNROLL") && !getenv("KILN_VK_LAYOUT");
            KT_CHECKF(type != KILN_TYPE_Q4_0 ? !fused : (!expect || fused), "prenorm_fused %s: %d", kiln_type_name(type),
                      fused);
            KT_CHECKF(vk->prenorm_fused(dvk, &tw[0], 2) == 0, "prenorm_fused for 2 rows");
            /* floats: x (E), two norm weights (E each), attention out (E), h (E), q k v (E + 2 KV), tmp (E), gt up (2F) */
            const uint64_t o_nw = E, o_nw2 = 2 * E, o_a = 3 * E, o_h = 4 * E, o_q = 5 * E, o_k = o_q + E,
                           o_v = o_k + KV, o_t = o_v + KV, o_g = o_t + E, o_u = o_g + F, total = o_u + F;
            float *in = malloc(sizeof(float) * total);
            for (uint64_t i = 0; i < total; i++) in[i] = frand() * 2.0f;
            kiln_bk_buffer *b[2];
            for (int path = 0; path < 2; path++) b[path] = vk_buf(sizeof(float) * total, in);
            for (int pass = 0; pass < 2; pass++)
                for (int path = 0; path < 2; path++) {
                    kiln_bk_buffer *bb = b[path];
                    kiln_bk_tensor x = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 0);
                    kiln_bk_tensor nw = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_nw);
                    kiln_bk_tensor nw2 = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_nw2);
                    kiln_bk_tensor a = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_a);
                    kiln_bk_tensor h = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_h);
                    kiln_bk_tensor q = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_q);
                    kiln_bk_tensor k = kt_bk_tensor(bb, KILN_TYPE_F32, KV, 1, 4 * o_k);
                    kiln_bk_tensor v = kt_bk_tensor(bb, KILN_TYPE_F32, KV, 1, 4 * o_v);
                    kiln_bk_tensor t = kt_bk_tensor(bb, KILN_TYPE_F32, E, 1, 4 * o_t);
                    kiln_bk_tensor gt = kt_bk_tensor(bb, KILN_TYPE_F32, F, 1, 4 * o_g);
                    kiln_bk_tensor u = kt_bk_tensor(bb, KILN_TYPE_F32, F, 1, 4 * o_u);
                    const kiln_bk_tensor *w3[3] = {&tw[0], &tw[1], &tw[2]};
                    kiln_bk_tensor *d3[3] = {&q, &k, &v};
                    if (path == 0) {
                        KT_CHECK_OK(vk->rms_norm(dvk, &x, &nw, 1e-5f, &h));
                        KT_CHECK_OK(vk->matmul_multi(dvk, 3, w3, &h, d3));
                        KT_CHECK_OK(vk->matmul(dvk, &tw[3], &a, &t));
                        KT_CHECK_OK(vk->add(dvk, &x, &t, &x));
                        KT_CHECK_OK(vk->rms_norm(dvk, &x, &nw2, 1e-5f, &h));
                        KT_CHECK_OK(vk->matmul_swiglu(dvk, &tw[4], &tw[5], &h, &u, &gt));
                        KT_CHECK_OK(vk->matmul(dvk, &tw[6], &gt, &t));
                        KT_CHECK_OK(vk->add(dvk, &x, &t, &x));
                    } else {
                        KT_CHECK_OK(vk->rms_norm_matmul_multi(dvk, &x, &nw, 1e-5f, &h, 3, w3, d3));
                        KT_CHECK_OK(vk->matmul_add(dvk, &tw[3], &a, &x, &t, &x));
                        KT_CHECK_OK(vk->rms_norm_matmul_swiglu(dvk, &x, &nw2, 1e-5f, &h, &tw[4], &tw[5], &u, &gt));
                        KT_CHECK_OK(vk->matmul_add(dvk, &tw[6], &gt, &x, &t, &x));
                    }
                }
            KT_CHECKF(vk_same(b[0], b[1], 4 * o_q, 4 * (E + 2 * KV)), "prenorm %s E=%lld: q/k/v differ",
                      kiln_type_name(type), (long long)E);
            KT_CHECKF(vk_same(b[0], b[1], 4 * o_g, 4 * F), "prenorm %s E=%lld: the swiglu result differs",
                      kiln_type_name(type), (long long)E);
            KT_CHECKF(vk_same(b[0], b[1], 0, 4 * E), "prenorm %s E=%lld: the residual row differs",
                      kiln_type_name(type), (long long)E);
            /* bad input: a status, nothing run */
            {
                kiln_bk_tensor x = kt_bk_tensor(b[1], KILN_TYPE_F32, E, 1, 0);
                kiln_bk_tensor nw = kt_bk_tensor(b[1], KILN_TYPE_F32, E + 32, 1, 4 * o_nw);
                kiln_bk_tensor h = kt_bk_tensor(b[1], KILN_TYPE_F32, E, 1, 4 * o_h);
                kiln_bk_tensor q = kt_bk_tensor(b[1], KILN_TYPE_F32, E, 1, 4 * o_q);
                const kiln_bk_tensor *w1[1] = {&tw[0]};
                kiln_bk_tensor *d1[1] = {&q};
                KT_CHECKF(vk->rms_norm_matmul_multi(dvk, &x, &nw, 1e-5f, &h, 1, w1, d1) == KILN_E_INVALID_ARG,
                          "rms_norm_matmul_multi with a norm of another length");
                KT_CHECKF(vk->rms_norm_matmul_multi(dvk, &x, &nw, 1e-5f, &h, 4, w1, d1) == KILN_E_INVALID_ARG,
                          "rms_norm_matmul_multi with 4 products");
                KT_CHECKF(vk->matmul_add(dvk, &tw[0], &x, &q, &h, &nw) == KILN_E_INVALID_ARG,
                          "matmul_add with a sum of another length");
            }
            for (int path = 0; path < 2; path++) vk->buffer_free(b[path]);
            vk->buffer_free(wb);
            free(in);
            free(wf);
            free(wq);
        }
}

/* The unrolled decode kernels (the default: one row through the one-row
 * kernels, mmv1_/mmvm1_, which issue four chunks' loads at once) give the
 * same bits as a handle opened with KILN_VK_MMV_UNROLL=0, through
 * matmul and matmul_multi, for every type; K = 4352: the unrolled loop
 * and a remainder with 8- to 32-wide subgroups. */
static void test_mmv_unroll_bits(void) {
    static const int32_t types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q4_0,
                                    KILN_TYPE_Q4_1, KILN_TYPE_Q5_0, KILN_TYPE_Q5_1, KILN_TYPE_Q8_0,
                                    KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};
    const int64_t K = 4352, N = 67;
    enum { MM = 9 };
    setenv("KILN_VK_MMV_UNROLL", "0", 1); /* the default is on: the other handle without it */
    kiln_bk_device *d2 = NULL;
    kiln_bk_open_params op = {sizeof op, 0, KILN_LOG_ERROR, vk_log, NULL};
    KT_CHECK_OK(vk->device_open(0, &op, &d2));
    unsetenv("KILN_VK_MMV_UNROLL");
    if (!d2) return;
    float *wf = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * K * MM);
    for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
    for (int64_t i = 0; i < K * MM; i++) x[i] = frand() * 2.0f;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int32_t type = types[ti];
        const uint64_t row = kiln_type_row_size(type, K);
        uint8_t *wq = malloc(row * N);
        for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
        kiln_bk_buffer *wb = vk_buf(row * N, wq), *xb = vk_buf(sizeof(float) * K * MM, x);
        /* two tensors of one buffer, prepared one by one (as a model's) */
        const int32_t lay0 = vk_prepare(wb, type, K, 40, 0), lay1 = vk_prepare(wb, type, K, N - 40, 40 * row);
        float *zero = calloc((size_t)N * MM * 2, sizeof(float));
        kiln_bk_buffer *d1 = vk_buf(sizeof(float) * N * MM * 2, zero), *db2 = vk_buf(sizeof(float) * N * MM * 2, zero);
        free(zero);
        KT_CHECK_OK(vk->synchronize(dvk));
        for (int64_t M = 1; M <= MM; M += 4) {
            /* two products: rows [0, 40) and [40, 67) of the matrix */
            kiln_bk_tensor w0 = kt_bk_tensor(wb, type, K, 40, 0), w1 = kt_bk_tensor(wb, type, K, N - 40, 40 * row);
            w0.layout = lay0;
            w1.layout = lay1;
            kiln_bk_tensor tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, M, 0);
            kiln_bk_tensor o0 = kt_bk_tensor(d1, KILN_TYPE_F32, 40, M, 0), o1 = kt_bk_tensor(d1, KILN_TYPE_F32, N - 40, M, 4 * 40 * MM);
            KT_CHECK_OK(vk->matmul(dvk, &w0, &tx, &o0));
            KT_CHECK_OK(vk->matmul(dvk, &w1, &tx, &o1));
            KT_CHECK_OK(vk->synchronize(dvk));
            o0.buf = o1.buf = db2;
            const kiln_bk_tensor *wp[2] = {&w0, &w1};
            kiln_bk_tensor *dp[2] = {&o0, &o1};
            KT_CHECK_OK(vk->matmul_multi(d2, 2, wp, &tx, dp));
            KT_CHECK_OK(vk->synchronize(d2));
            KT_CHECKF(vk_same(d1, db2, 0, sizeof(float) * N * MM * 2), "unroll %s M=%lld (multi): bits differ",
                      kiln_type_name(type), (long long)M);
            KT_CHECK_OK(vk->matmul(d2, &w0, &tx, &o0));
            KT_CHECK_OK(vk->synchronize(d2));
            KT_CHECKF(vk_same(d1, db2, 0, sizeof(float) * N * MM * 2), "unroll %s M=%lld: bits differ",
                      kiln_type_name(type), (long long)M);
        }
        vk->buffer_free(wb);
        vk->buffer_free(xb);
        vk->buffer_free(d1);
        vk->buffer_free(db2);
        free(wq);
    }
    free(wf);
    free(x);
    vk->device_close(d2);
}

/* Q4_0 in the split layout (weight_prepare) against the same weights in
 * the GGUF layout, bit for bit (the kernels do the same float operations
 * in the same order): the rearranged bytes against the host's
 * rearrangement, matmul with 1 to 150 rows (the decode, tiled or
 * matrix-core kernels, and the row-group kernels of a handle opened with
 * KILN_VK_NO_MMV), matmul_multi, get_rows. Only rows of whole 256-element
 * groups on 16-byte boundaries are split; a layout the tensor cannot have
 * is refused. */
static void test_q4_0_split_layout(void) {
    const int64_t K = 768, N = 133, nb = K / 32;
    static const int64_t Ms[] = {1, 3, 9, 16, 17, 70, 150};
    enum { MMAX = 150 };
    const uint64_t row = kiln_type_row_size(KILN_TYPE_Q4_0, K), wbytes = row * N;
    float *wf = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * K * MMAX);
    for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
    for (int64_t i = 0; i < K * MMAX; i++) x[i] = frand() * 2.0f;
    uint8_t *wq = malloc(wbytes), *ws = malloc(wbytes), *got = malloc(wbytes);
    for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(KILN_TYPE_Q4_0, wf + r * K, wq + r * row, K));
    for (int64_t r = 0; r < N; r++)
        for (int64_t b = 0; b < nb; b++) {
            memcpy(ws + r * row + 16 * b, wq + r * row + 18 * b + 2, 16);
            memcpy(ws + r * row + 16 * nb + 2 * b, wq + r * row + 18 * b, 2);
        }
    kiln_bk_buffer *wg = NULL, *wsb = NULL, *wodd = NULL;
    KT_CHECK_OK(vk->buffer_alloc(dvk, wbytes, KILN_BK_BUF_WEIGHTS, &wg));
    KT_CHECK_OK(vk->buffer_alloc(dvk, wbytes, KILN_BK_BUF_WEIGHTS, &wsb));
    KT_CHECK_OK(vk->buffer_alloc(dvk, wbytes + 16, KILN_BK_BUF_WEIGHTS, &wodd));
    if (!wg || !wsb || !wodd) return;
    KT_CHECK_OK(vk->buffer_upload(dvk, wg, 0, wq, wbytes));
    KT_CHECK_OK(vk->buffer_upload(dvk, wsb, 0, wq, wbytes));
    KT_CHECK_OK(vk->buffer_upload(dvk, wodd, 8, wq, wbytes));
    const int32_t lay = vk_prepare(wsb, KILN_TYPE_Q4_0, K, N, 0);
    (void)vk_prepare(wodd, KILN_TYPE_Q4_0, K, N, 8);    /* rows 8 bytes off 16: GGUF */
    (void)vk_prepare(wodd, KILN_TYPE_Q4_0, 320, 10, 0); /* K % 256 != 0: GGUF */
    KT_CHECK_OK(vk->synchronize(dvk));
    KT_CHECK_OK(vk->buffer_download(dvk, wsb, 0, got, wbytes));
    KT_CHECKF(memcmp(got, lay ? ws : wq, wbytes) == 0, "weight_prepare: the rearranged bytes differ");
    /* layouts the tensor cannot have: refused, never misread */
    {
        kiln_bk_buffer *xb = vk_buf(sizeof(float) * K, x), *db = vk_buf(sizeof(float) * N, NULL);
        kiln_bk_tensor tw = kt_bk_tensor(wsb, KILN_TYPE_Q4_0, K, N, 0), tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, 1, 0);
        kiln_bk_tensor td = kt_bk_tensor(db, KILN_TYPE_F32, N, 1, 0);
        tw.layout = 7;
        KT_CHECK(vk->matmul(dvk, &tw, &tx, &td) == KILN_E_INVALID_ARG);
        kiln_bk_tensor t320 = kt_bk_tensor(wodd, KILN_TYPE_Q4_0, 320, 10, 0), tx320 = kt_bk_tensor(xb, KILN_TYPE_F32, 320, 1, 0);
        kiln_bk_tensor td10 = kt_bk_tensor(db, KILN_TYPE_F32, 10, 1, 0);
        t320.layout = 1;
        KT_CHECK(vk->matmul(dvk, &t320, &tx320, &td10) == KILN_E_INVALID_ARG);
        kiln_bk_tensor tf = kt_bk_tensor(xb, KILN_TYPE_F32, K, 1, 0);
        tf.layout = 1;
        KT_CHECK(vk->matmul(dvk, &tw, &tf, &td) == KILN_E_INVALID_ARG);
        vk->buffer_free(xb);
        vk->buffer_free(db);
    }
    /* a handle whose few-row products take the row-group kernels (mm/mmsg) */
    setenv("KILN_VK_NO_MMV", "1", 1);
    kiln_bk_device *dnm = NULL;
    kiln_bk_open_params op = {sizeof op, 0, KILN_LOG_ERROR, vk_log, NULL};
    KT_CHECK_OK(vk->device_open(0, &op, &dnm));
    unsetenv("KILN_VK_NO_MMV");
    float *zero = calloc((size_t)N * MMAX, sizeof(float));
    kiln_bk_buffer *xb = vk_buf(sizeof(float) * K * MMAX, x);
    kiln_bk_buffer *d1 = vk_buf(sizeof(float) * N * MMAX, zero), *d2 = vk_buf(sizeof(float) * N * MMAX, zero);
    KT_CHECK_OK(vk->synchronize(dvk));
    for (int h = 0; h < 2 && dnm; h++) {
        kiln_bk_device *d = h == 0 ? dvk : dnm;
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            const int64_t M = Ms[mi];
            if (h == 1 && M > 4) break; /* batches: as on the first handle */
            kiln_bk_tensor tg = kt_bk_tensor(wg, KILN_TYPE_Q4_0, K, N, 0), ts = kt_bk_tensor(wsb, KILN_TYPE_Q4_0, K, N, 0);
            ts.layout = lay;
            kiln_bk_tensor tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, M, 0);
            kiln_bk_tensor o1 = kt_bk_tensor(d1, KILN_TYPE_F32, N, M, 0), o2 = kt_bk_tensor(d2, KILN_TYPE_F32, N, M, 0);
            KT_CHECK_OK(vk->matmul(d, &tg, &tx, &o1));
            KT_CHECK_OK(vk->matmul(d, &ts, &tx, &o2));
            KT_CHECK_OK(vk->synchronize(d));
            /* KQ order (KILN_VK_KQ=2): the decode kernels add in another order */
            if (lay == 2 && h == 0 && M <= 16)
                KT_CHECKF(vk_rel(d1, d2, 0, (size_t)(N * M)) < 2e-4, "split q4_0 (KQ) matmul M=%lld: too far", (long long)M);
            else
                KT_CHECKF(vk_same(d1, d2, 0, sizeof(float) * N * M), "split q4_0 matmul M=%lld%s: bits differ",
                          (long long)M, h ? " (KILN_VK_NO_MMV)" : "");
        }
    }
    /* matmul_multi: rows [0, 64) and [64, 133) as two products (one dispatch) */
    for (int64_t M = 1; M <= 3; M += 2) {
        kiln_bk_tensor g0 = kt_bk_tensor(wg, KILN_TYPE_Q4_0, K, 64, 0), g1 = kt_bk_tensor(wg, KILN_TYPE_Q4_0, K, N - 64, 64 * row);
        kiln_bk_tensor s0 = kt_bk_tensor(wsb, KILN_TYPE_Q4_0, K, 64, 0), s1 = kt_bk_tensor(wsb, KILN_TYPE_Q4_0, K, N - 64, 64 * row);
        s0.layout = s1.layout = lay;
        kiln_bk_tensor tx = kt_bk_tensor(xb, KILN_TYPE_F32, K, M, 0);
        kiln_bk_tensor a0 = kt_bk_tensor(d1, KILN_TYPE_F32, 64, M, 0), a1 = kt_bk_tensor(d1, KILN_TYPE_F32, N - 64, M, 4 * 64 * M);
        kiln_bk_tensor b0 = kt_bk_tensor(d2, KILN_TYPE_F32, 64, M, 0), b1 = kt_bk_tensor(d2, KILN_TYPE_F32, N - 64, M, 4 * 64 * M);
        const kiln_bk_tensor *wgp[2] = {&g0, &g1}, *wsp[2] = {&s0, &s1};
        kiln_bk_tensor *ap[2] = {&a0, &a1}, *bp[2] = {&b0, &b1};
        KT_CHECK_OK(vk->matmul_multi(dvk, 2, wgp, &tx, ap));
        KT_CHECK_OK(vk->matmul_multi(dvk, 2, wsp, &tx, bp));
        KT_CHECK_OK(vk->synchronize(dvk));
        if (lay == 2)
            KT_CHECKF(vk_rel(d1, d2, 0, (size_t)(N * M)) < 2e-4, "split q4_0 (KQ) matmul_multi M=%lld: too far", (long long)M);
        else
            KT_CHECKF(vk_same(d1, d2, 0, sizeof(float) * N * M), "split q4_0 matmul_multi M=%lld: bits differ",
                      (long long)M);
    }
    /* get_rows */
    {
        const int32_t ids[] = {5, 0, 36, 5, 132};
        kiln_bk_tensor tg = kt_bk_tensor(wg, KILN_TYPE_Q4_0, K, N, 0), ts = kt_bk_tensor(wsb, KILN_TYPE_Q4_0, K, N, 0);
        ts.layout = lay;
        kiln_bk_tensor o1 = kt_bk_tensor(d1, KILN_TYPE_F32, K, 5, 0), o2 = kt_bk_tensor(d2, KILN_TYPE_F32, K, 5, 0);
        KT_CHECK_OK(vk->get_rows(dvk, &tg, ids, &o1));
        KT_CHECK_OK(vk->get_rows(dvk, &ts, ids, &o2));
        KT_CHECK_OK(vk->synchronize(dvk));
        KT_CHECKF(vk_same(d1, d2, 0, sizeof(float) * K * 5), "split q4_0 get_rows: bits differ");
    }
    if (dnm) vk->device_close(dnm);
    vk->buffer_free(xb);
    vk->buffer_free(d1);
    vk->buffer_free(d2);
    vk->buffer_free(wg);
    vk->buffer_free(wsb);
    vk->buffer_free(wodd);
    free(zero);
    free(wq);
    free(ws);
    free(got);
    free(wf);
    free(x);
}

/* Long, few rows (K 8192 x N 2048, a down product's shape): weight_prepare
 * puts split Q4_0 in KQ order (mmv.glsl; Q6_K, whose kernels have no KQ
 * order, keeps the GGUF layout and serves as the check without it), and
 * every decode kernel keeps the weight's order: a token's row has the same
 * bits decoded alone (matmul, matmul_add, matmul_add_rms_norm) and in
 * batches of 2 to 9 (verify batches), and matmul_add / matmul_add_rms_norm equal their
 * separate operations; all within the CPU's tolerance. */
static void test_kq_type(int32_t type) {
    const int64_t K = 8192, N = 2048;
    enum { MM = 9 };
    const uint64_t row = kiln_type_row_size(type, K);
    float *wf = malloc(sizeof(float) * K * N), *x = malloc(sizeof(float) * K * MM), *in = malloc(sizeof(float) * 2 * N);
    uint8_t *wq = malloc(row * N);
    for (int64_t i = 0; i < K * N; i++) wf[i] = frand();
    for (int64_t i = 0; i < K * MM; i++) x[i] = frand() * 2.0f;
    for (int64_t i = 0; i < 2 * N; i++) in[i] = frand() * 2.0f;
    for (int64_t r = 0; r < N; r++) KT_CHECK_OK(kiln_quantize_row(type, wf + r * K, wq + r * row, K));
    pair w = alloc_pair(row * N, KILN_BK_BUF_WEIGHTS), xa = alloc_pair(sizeof(float) * K * MM, KILN_BK_BUF_WEIGHTS);
    pair out = alloc_pair(sizeof(float) * N * MM, KILN_BK_BUF_WEIGHTS);
    upload(w, wq, row * N);
    upload(xa, x, sizeof(float) * K * MM);
    const int32_t lay = vk_prepare(w.v, type, K, N, 0);
    /* decode: each token alone, into `alone` (floats [MM][N]) */
    float *alone = malloc(sizeof(float) * N * MM), *got = malloc(sizeof(float) * N * MM);
    kiln_bk_tensor tw = kt_bk_tensor(w.v, type, K, N, 0);
    tw.layout = lay;
    for (int64_t j = 0; j < MM; j++) {
        kiln_bk_tensor tx = kt_bk_tensor(xa.v, KILN_TYPE_F32, K, 1, sizeof(float) * K * j);
        kiln_bk_tensor td = kt_bk_tensor(out.v, KILN_TYPE_F32, N, 1, sizeof(float) * N * j);
        KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &td));
    }
    KT_CHECK_OK(vk->buffer_download(dvk, out.v, 0, alone, sizeof(float) * N * MM));
    {
        kiln_bk_tensor cw = kt_bk_tensor(w.c, type, K, N, 0), cx = kt_bk_tensor(xa.c, KILN_TYPE_F32, K, MM, 0);
        kiln_bk_tensor cd = kt_bk_tensor(out.c, KILN_TYPE_F32, N, MM, 0);
        KT_CHECK_OK(cpu->matmul(dcpu, &cw, &cx, &cd));
        const double rel = compare(out, 0, (size_t)(N * MM), kiln_type_name(type));
        KT_CHECKF(rel < 2e-4, "KQ order %s, decode rows: relative difference %.3g", kiln_type_name(type), rel);
    }
    /* verify batches of 2 to 9 tokens: each token's bits as decoded alone */
    for (int64_t M = 2; M <= MM; M += (M < 3 ? 1 : 3)) {
        kiln_bk_tensor tx = kt_bk_tensor(xa.v, KILN_TYPE_F32, K, M, 0), td = kt_bk_tensor(out.v, KILN_TYPE_F32, N, M, 0);
        KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &td));
        KT_CHECK_OK(vk->buffer_download(dvk, out.v, 0, got, sizeof(float) * N * M));
        KT_CHECKF(memcmp(got, alone, sizeof(float) * N * M) == 0, "KQ order %s: a batch of %lld rows differs from decode",
                  kiln_type_name(type), (long long)M);
    }
    /* matmul_add and matmul_add_rms_norm against the separate operations:
     * per path a (N, summed in place), nw (N), h (N) */
    kiln_bk_buffer *b[2];
    for (int path = 0; path < 2; path++) {
        b[path] = vk_buf(sizeof(float) * 3 * N, NULL);
        KT_CHECK_OK(vk->buffer_upload(dvk, b[path], 0, in, sizeof(float) * 2 * N));
    }
    for (int path = 0; path < 2; path++) {
        kiln_bk_tensor tx = kt_bk_tensor(xa.v, KILN_TYPE_F32, K, 1, sizeof(float) * K);
        kiln_bk_tensor a = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, 0);
        kiln_bk_tensor nw = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, sizeof(float) * N);
        kiln_bk_tensor h = kt_bk_tensor(b[path], KILN_TYPE_F32, N, 1, sizeof(float) * 2 * N);
        if (path == 0) {
            KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &h));
            KT_CHECK_OK(vk->add(dvk, &a, &h, &a));
            KT_CHECK_OK(vk->matmul(dvk, &tw, &tx, &h));
            KT_CHECK_OK(vk->add_rms_norm(dvk, &a, &h, &a, &nw, 1e-5f, &h));
        } else {
            KT_CHECK_OK(vk->matmul_add(dvk, &tw, &tx, &a, &h, &a));
            KT_CHECK_OK(vk->matmul_add_rms_norm(dvk, &tw, &tx, &a, &a, &nw, 1e-5f, &h));
        }
    }
    KT_CHECKF(vk_same(b[0], b[1], 0, sizeof(float) * 3 * N), "KQ order %s: matmul_add / matmul_add_rms_norm differ from "
              "the separate operations", kiln_type_name(type));
    for (int path = 0; path < 2; path++) vk->buffer_free(b[path]);
    free_pair(w);
    free_pair(xa);
    free_pair(out);
    free(wf);
    free(x);
    free(in);
    free(wq);
    free(alone);
    free(got);
}

/* test_kq_type for a type in KQ order and one without. */
static void test_kq_order(void) {
    static const int32_t types[] = {KILN_TYPE_Q4_0, KILN_TYPE_Q6_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) test_kq_type(types[ti]);
}

/* Under LeakSanitizer: lavapipe (Mesa's CPU Vulkan driver) keeps a few
 * allocations of its own past exit; they are not kiln's. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libvulkan_lvp.so\nleak:libLLVM\nleak:libvulkan.so\n"; }

int main(void) {
    if (!getenv("KILN_BACKEND_PATH")) setenv("KILN_BACKEND_PATH", getenv("KILN_BUILD") ? getenv("KILN_BUILD") : "build", 0);
    if (kiln_backend_find(NULL, &cpu) != KILN_OK || kiln_backend_find("vulkan", &vk) != KILN_OK ||
        vk->device_count() < 1) {
        printf("skip: no Vulkan backend or device (%s)\n", kiln_last_error());
        return 77;
    }
    kiln_bk_open_params op = {sizeof op, 0, KILN_LOG_INFO, vk_log, NULL};
    if (cpu->device_open(0, NULL, &dcpu) != KILN_OK || vk->device_open(0, &op, &dvk) != KILN_OK) {
        printf("cannot open devices: %s\n", kiln_last_error());
        return 1;
    }
    KT_RUN(test_matmul_and_get_rows);
    KT_RUN(test_matmul_float_tails);
    KT_RUN(test_row_ops_and_attention);
    KT_RUN(test_fused_add_rms_norm);
    KT_RUN(test_fused_matmul_multi);
    KT_RUN(test_fused_rope_kv_store);
    KT_RUN(test_fused_quant_producers);
    KT_RUN(test_fused_matmul_add_rms_norm);
    KT_RUN(test_fused_matmul_swiglu);
    KT_RUN(test_fused_prenorm);
    KT_RUN(test_mmv_unroll_bits);
    KT_RUN(test_q4_0_split_layout);
    KT_RUN(test_kq_order);
    printf("vulkan matmul for batches: %s\n", vk_coopmat ? "cooperative matrices (NV)" : "portable tiled kernel");
    vk->device_close(dvk);
    cpu->device_close(dcpu);
    return kt_finish();
}
