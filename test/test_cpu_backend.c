/*
 * test_cpu_backend.c - the CPU backend (backends/cpu/) through its iface.
 *
 * Covers: device enumeration; buffers (alignment, upload/download/copy,
 * wrapped memory, bounds errors); the transient pool's statistics, reuse,
 * cap and purge, exactly; every operation against a naive double-precision
 * reference on random data with odd sizes (rms_norm, add with broadcast,
 * rope in both modes with n_rot < head_dim and frequency factors, swiglu,
 * kv_store, get_rows, attention with GQA and several sequences with their
 * own block tables in one ubatch, long contexts); the matmul driver with a
 * private exact kernel on odd tiles and every weight type's kernels
 * against dequantize + naive; SIMD vs scalar; 1 thread vs 2 threads giving
 * identical bytes; two handles used from two threads at once; allocation
 * failure injection (open, buffers, ubatch, scratch) returning
 * KILN_E_OOM_HOST and leaking nothing (checked by the ASan build).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_backend.h"
#include "cpu_internal.h"
#include "internal.h"
#include "kt.h"
#include "quant.h"

static const kiln_backend_iface *bk;

/* ---- helpers ---- */

static _Thread_local uint64_t rng_state = 0x243f6a8885a308d3ull; /* per thread: test_two_handles */
static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float rnd(void) { return (float)(rng_u32() >> 8) * 0x1p-23f - 1.0f; } /* [-1, 1) */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_cpu_backend: out of memory\n");
        exit(2);
    }
    return p;
}

static float *rnd_array(size_t n, float scale) {
    float *a = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = rnd() * scale;
    return a;
}

static kiln_bk_device *open_dev(int n_threads) {
    kiln_bk_open_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.n_threads = n_threads;
    kiln_bk_device *dev = NULL;
    kiln_status st = bk->device_open(0, &p, &dev);
    if (st != KILN_OK) {
        fprintf(stderr, "device_open: %s\n", kiln_last_error());
        exit(2);
    }
    return dev;
}

/* An F32 (or other type) tensor in its own buffer; rows `pad` elements
 * apart beyond ne0 to exercise row strides. */
typedef struct {
    kiln_bk_buffer *buf;
    kiln_bk_tensor t;
} tens;

static tens mk_raw(kiln_bk_device *dev, int32_t type, int64_t ne0, int64_t ne1, uint64_t stride) {
    tens r;
    memset(&r, 0, sizeof r);
    uint64_t size = stride * (uint64_t)(ne1 > 0 ? ne1 : 1);
    if (bk->buffer_alloc(dev, size, KILN_BK_BUF_WEIGHTS, &r.buf) != KILN_OK) {
        fprintf(stderr, "buffer_alloc: %s\n", kiln_last_error());
        exit(2);
    }
    r.t.buf = r.buf;
    r.t.type = type;
    r.t.ne[0] = ne0;
    r.t.ne[1] = ne1;
    r.t.row_stride = stride;
    return r;
}

static tens mk_f32(kiln_bk_device *dev, const float *data, int64_t ne0, int64_t ne1, int pad) {
    uint64_t stride = (uint64_t)(ne0 + pad) * sizeof(float);
    tens r = mk_raw(dev, KILN_TYPE_F32, ne0, ne1, stride);
    if (data)
        for (int64_t i = 0; i < ne1; i++)
            bk->buffer_upload(dev, r.buf, (uint64_t)i * stride, data + i * ne0, (uint64_t)ne0 * 4);
    return r;
}

static void rd_f32(kiln_bk_device *dev, const tens *t, float *out) {
    for (int64_t i = 0; i < t->t.ne[1]; i++)
        bk->buffer_download(dev, t->buf, t->t.offset + (uint64_t)i * t->t.row_stride, out + i * t->t.ne[0],
                            (uint64_t)t->t.ne[0] * 4);
}

static void free_t(tens *t) { bk->buffer_free(t->buf); }

static double max_abs_diff(const float *a, const double *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Runs the enclosed block once per instruction set the processor has
 * (AVX-512, AVX2, scalar), each on a fresh 2-thread handle `dev`. */
#define ISA_LOOP_BEGIN                                                        \
    for (int isa_ = KILN_CPU_ISA_AVX512; isa_ >= KILN_CPU_ISA_SCALAR; isa_--) { \
        int failed_before_ = kt_case_failed;                                  \
        kiln_bk_device *dev = open_dev(2);                                    \
        kiln_cpu_device_set_isa(dev, isa_);                                   \
        if (dev->isa != isa_) {                                               \
            bk->device_close(dev);                                            \
            continue;                                                         \
        }
#define ISA_LOOP_END                                                          \
        bk->device_close(dev);                                                \
        if (kt_case_failed && !failed_before_) printf("  ^ with isa %d\n", isa_); \
    }

/* ---- devices ---- */

static void test_device_info(void) {
    KT_CHECK(bk->struct_size == sizeof(kiln_backend_iface));
    KT_CHECK(bk->abi_version == KILN_BACKEND_ABI_VERSION);
    KT_CHECK(strcmp(bk->name, "cpu") == 0);
    KT_CHECK(bk->device_count() == 1);
    kiln_bk_device_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    KT_CHECK_OK(bk->device_info(0, &info));
    KT_CHECK(strcmp(info.name, "cpu") == 0);
    KT_CHECK(info.flags & KILN_BK_DEVICE_HOST_MEMORY);
    KT_CHECK(info.mem_total > 0 && info.mem_free > 0 && info.mem_free <= info.mem_total);
    KT_CHECK(bk->device_info(1, &info) == KILN_E_NOT_FOUND);
    KT_CHECK(bk->device_info(-1, &info) == KILN_E_NOT_FOUND);
    KT_CHECK(bk->supports_type(0, KILN_TYPE_F32) == 1);
    KT_CHECK(bk->supports_type(0, KILN_TYPE_F16) == 1);
    KT_CHECK(bk->supports_type(0, KILN_TYPE_I32) == 0);
    KT_CHECK(bk->supports_type(0, 99) == 0);
    KT_CHECK(bk->supports_type(1, KILN_TYPE_F32) == 0);
    kiln_bk_device *dev = NULL;
    KT_CHECK(bk->device_open(3, NULL, &dev) == KILN_E_NOT_FOUND && dev == NULL);
    KT_CHECK_OK(bk->device_open(0, NULL, &dev)); /* NULL params: defaults */
    KT_CHECK(dev && dev->n_threads >= 1);
    KT_CHECK_OK(bk->synchronize(dev));
    bk->device_close(dev);
    bk->device_close(NULL);
}

/* ---- buffers ---- */

static void test_buffers(void) {
    kiln_bk_device *dev = open_dev(2);
    kiln_bk_buffer *a = NULL, *b = NULL;
    KT_CHECK_OK(bk->buffer_alloc(dev, 1000, KILN_BK_BUF_KV, &a));
    KT_CHECK_OK(bk->buffer_alloc(dev, 1000, KILN_BK_BUF_STAGING, &b));
    KT_CHECK(((uintptr_t)bk->buffer_host_ptr(a) & 63) == 0);
    KT_CHECK(((uintptr_t)bk->buffer_host_ptr(b) & 63) == 0);
    uint8_t src[1000], dst[1000];
    for (int i = 0; i < 1000; i++) src[i] = (uint8_t)(i * 7 + 3);
    KT_CHECK_OK(bk->buffer_upload(dev, a, 0, src, 1000));
    KT_CHECK_OK(bk->buffer_copy(dev, b, 100, a, 0, 900));
    KT_CHECK_OK(bk->buffer_download(dev, b, 100, dst, 900));
    KT_CHECK(memcmp(dst, src, 900) == 0);
    KT_CHECK_OK(bk->buffer_download(dev, a, 999, dst, 1));
    KT_CHECK(dst[0] == src[999]);
    KT_CHECK_OK(bk->buffer_upload(dev, a, 1000, src, 0)); /* empty at the end: fine */
    /* out of range, including offsets that would overflow */
    KT_CHECK(bk->buffer_upload(dev, a, 1, src, 1000) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_upload(dev, a, 1001, src, 0) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_download(dev, a, UINT64_MAX, dst, 2) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_download(dev, a, 2, dst, UINT64_MAX) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_copy(dev, b, 500, a, 0, 501) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_copy(dev, b, 0, a, 500, 501) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->buffer_copy(dev, b, 0, NULL, 0, 1) == KILN_E_INVALID_ARG);
    kiln_bk_buffer *bad = b;
    KT_CHECK(bk->buffer_alloc(dev, 10, 77, &bad) == KILN_E_INVALID_ARG && bad == NULL);
    /* overlapping copy within one buffer behaves like memmove */
    KT_CHECK_OK(bk->buffer_copy(dev, a, 1, a, 0, 999));
    KT_CHECK_OK(bk->buffer_download(dev, a, 1, dst, 999));
    KT_CHECK(memcmp(dst, src, 999) == 0);
    bk->buffer_free(a);
    bk->buffer_free(b);
    bk->buffer_free(NULL);

    /* wrapped caller memory: zero-copy, never freed by buffer_free */
    float *mem = xmalloc(4096);
    for (int i = 0; i < 1024; i++) mem[i] = (float)i;
    kiln_bk_buffer *w = NULL;
    KT_CHECK_OK(bk->buffer_wrap_host(dev, mem, 4096, &w));
    KT_CHECK(bk->buffer_host_ptr(w) == mem);
    float f;
    KT_CHECK_OK(bk->buffer_download(dev, w, 4 * 77, &f, 4));
    KT_CHECK(f == 77.0f);
    KT_CHECK(bk->buffer_download(dev, w, 4093, &f, 4) == KILN_E_INVALID_ARG);
    bk->buffer_free(w);
    KT_CHECK(mem[5] == 5.0f); /* still ours (ASan: no double free) */
    free(mem);
    KT_CHECK(bk->buffer_wrap_host(dev, NULL, 16, &w) == KILN_E_INVALID_ARG);
    bk->device_close(dev);
}

/* ---- pool ---- */

static kiln_bk_pool_stats stats_of(kiln_bk_device *dev) {
    kiln_bk_pool_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    bk->pool_stats(dev, &s);
    return s;
}

#define CHECK_POOL(dev, in_use, cached, peak, allocs, frees, dev_allocs)                                    \
    do {                                                                                                     \
        kiln_bk_pool_stats s_ = stats_of(dev);                                                               \
        KT_CHECKF(s_.bytes_in_use == (in_use) && s_.bytes_cached == (cached) && s_.bytes_peak == (peak) &&   \
                      s_.n_allocs == (allocs) && s_.n_frees == (frees) && s_.n_device_allocs == (dev_allocs), \
                  "pool: in_use %llu cached %llu peak %llu allocs %llu frees %llu dev %llu",                 \
                  (unsigned long long)s_.bytes_in_use, (unsigned long long)s_.bytes_cached,                  \
                  (unsigned long long)s_.bytes_peak, (unsigned long long)s_.n_allocs,                        \
                  (unsigned long long)s_.n_frees, (unsigned long long)s_.n_device_allocs);                   \
    } while (0)

static void test_pool(void) {
    kiln_bk_device *dev = open_dev(1);
    kiln_bk_pool_stats s = stats_of(dev);
    KT_CHECK(s.cap > 0);
    bk->pool_set_cap(dev, 0); /* unlimited */
    KT_CHECK(stats_of(dev).cap == 0);
    CHECK_POOL(dev, 0, 0, 0, 0, 0, 0);

    /* sizes round up to 256 bytes: 1000 -> 1024 */
    kiln_bk_buffer *a, *b, *c, *d;
    KT_CHECK_OK(bk->buffer_alloc(dev, 1000, KILN_BK_BUF_TRANSIENT, &a));
    KT_CHECK(((uintptr_t)bk->buffer_host_ptr(a) & 63) == 0);
    memset(bk->buffer_host_ptr(a), 1, 1000);
    CHECK_POOL(dev, 1024, 0, 1024, 1, 0, 1);
    /* transient buffers honour their requested size in bounds checks */
    uint8_t byte = 0;
    KT_CHECK(bk->buffer_upload(dev, a, 1000, &byte, 1) == KILN_E_INVALID_ARG);
    bk->buffer_free(a);
    CHECK_POOL(dev, 0, 1024, 1024, 1, 1, 1);
    /* reuse: 900 -> 1024, served from the cache */
    KT_CHECK_OK(bk->buffer_alloc(dev, 900, KILN_BK_BUF_TRANSIENT, &a));
    CHECK_POOL(dev, 1024, 0, 1024, 2, 1, 1);
    KT_CHECK_OK(bk->buffer_alloc(dev, 3000, KILN_BK_BUF_TRANSIENT, &b)); /* 3072 */
    CHECK_POOL(dev, 4096, 0, 4096, 3, 1, 2);
    KT_CHECK_OK(bk->buffer_alloc(dev, 2048, KILN_BK_BUF_TRANSIENT, &c)); /* 2048 */
    CHECK_POOL(dev, 6144, 0, 6144, 4, 1, 3);
    bk->buffer_free(b); /* cached, oldest: 3072 */
    bk->buffer_free(c); /* 2048 */
    bk->buffer_free(a); /* 1024, newest */
    CHECK_POOL(dev, 0, 6144, 6144, 4, 4, 3);
    /* best fit: 1500 -> 1536 takes the 2048 block, not the 3072 one */
    KT_CHECK_OK(bk->buffer_alloc(dev, 1500, KILN_BK_BUF_TRANSIENT, &a));
    KT_CHECK(a == c);
    CHECK_POOL(dev, 2048, 4096, 6144, 5, 4, 3);
    /* a small request does not take a block more than 4x its size */
    KT_CHECK_OK(bk->buffer_alloc(dev, 200, KILN_BK_BUF_TRANSIENT, &d)); /* 256: new */
    CHECK_POOL(dev, 2304, 4096, 6400, 6, 4, 4);
    bk->buffer_free(d);
    CHECK_POOL(dev, 0 + 2048, 4352, 6400, 6, 5, 4);
    /* cap: evicts the least recently freed first (3072, then 1024) */
    bk->pool_set_cap(dev, 1500);
    CHECK_POOL(dev, 2048, 1280, 6400, 6, 5, 4);
    KT_CHECK(stats_of(dev).cap == 1500);
    /* a freed block larger than the cap is released at once */
    bk->buffer_free(a);
    CHECK_POOL(dev, 0, 1280, 6400, 6, 6, 4);
    KT_CHECK_OK(bk->buffer_alloc(dev, 1024, KILN_BK_BUF_TRANSIENT, &a)); /* cached */
    KT_CHECK_OK(bk->buffer_alloc(dev, 1024, KILN_BK_BUF_TRANSIENT, &b)); /* new */
    CHECK_POOL(dev, 2048, 256, 6400, 8, 6, 5);
    bk->buffer_free(a);
    bk->buffer_free(b); /* 256 + 1024 + 1024 > 1500: the 256 and a's 1024 go */
    CHECK_POOL(dev, 0, 1024, 6400, 8, 8, 5);
    KT_CHECK_OK(bk->pool_purge(dev));
    CHECK_POOL(dev, 0, 0, 6400, 8, 8, 5);
    /* a small struct_size gets only what fits */
    kiln_bk_pool_stats small;
    memset(&small, 0xab, sizeof small);
    small.struct_size = offsetof(kiln_bk_pool_stats, bytes_cached);
    KT_CHECK_OK(bk->pool_stats(dev, &small));
    KT_CHECK(small.bytes_in_use == 0 && small.bytes_cached == 0xababababababababull);
    /* non-transient buffers do not touch the pool */
    KT_CHECK_OK(bk->buffer_alloc(dev, 5000, KILN_BK_BUF_WEIGHTS, &a));
    bk->buffer_free(a);
    CHECK_POOL(dev, 0, 0, 6400, 8, 8, 5);
    /* a transient buffer outliving its handle is still freed cleanly */
    KT_CHECK_OK(bk->buffer_alloc(dev, 64, KILN_BK_BUF_TRANSIENT, &a));
    bk->device_close(dev);
    bk->buffer_free(a);
}

/* ---- ubatch helpers ---- */

typedef struct {
    int32_t pos[128], kv_cell[128], attn_table[128], attn_n_kv[128];
    int32_t blocks[512];
    kiln_bk_ubatch ub;
} ubatch_buf;

/* First position of sequence 0 in make_ubatch (a prefill continuing a
 * cached prefix). */
static int ubatch_start0 = 10;

/* Three sequences with their own shuffled block tables, tokens
 * interleaved: seq 0 prefill at positions start0..start0+n0-1, seq 1 one decode
 * token at pos1, seq 2 from 0. Returns n_tokens. */
static uint32_t make_ubatch(ubatch_buf *u, uint32_t block_size, uint32_t n_blocks_total, int n0, int pos1,
                            int n2) {
    memset(u, 0, sizeof *u);
    /* a random permutation of blocks, split among the three tables */
    int32_t perm[512];
    if (n_blocks_total > 512 || n0 + 1 + n2 > 128) abort();
    for (uint32_t i = 0; i < n_blocks_total; i++) perm[i] = (int32_t)i;
    for (uint32_t i = n_blocks_total - 1; i > 0; i--) {
        uint32_t j = rng_u32() % (i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int per_seq = (int)n_blocks_total / 3;
    int32_t tab_off[3] = {0, per_seq, 2 * per_seq};
    memcpy(u->blocks, perm, n_blocks_total * sizeof(int32_t));
    int start[3] = {ubatch_start0, pos1, 0}, count[3] = {n0, 1, n2}, done[3] = {0, 0, 0};
    uint32_t n = 0;
    while (done[0] < count[0] || done[1] < count[1] || done[2] < count[2]) {
        for (int s = 2; s >= 0; s--) { /* out of table order on purpose */
            if (done[s] >= count[s]) continue;
            int p = start[s] + done[s]++;
            u->pos[n] = p;
            u->attn_table[n] = tab_off[s];
            u->attn_n_kv[n] = p + 1;
            u->kv_cell[n] = u->blocks[tab_off[s] + p / (int)block_size] * (int)block_size + p % (int)block_size;
            n++;
        }
    }
    u->ub.struct_size = sizeof u->ub;
    u->ub.n_tokens = n;
    u->ub.pos = u->pos;
    u->ub.kv_cell = u->kv_cell;
    u->ub.attn_table = u->attn_table;
    u->ub.attn_n_kv = u->attn_n_kv;
    u->ub.block_tables = u->blocks;
    u->ub.n_block_entries = n_blocks_total;
    u->ub.block_size = block_size;
    u->ub.n_cells = n_blocks_total * block_size;
    return n;
}

/* ---- rms_norm, add, swiglu ---- */

static void test_rms_norm(void) {
    ISA_LOOP_BEGIN
    const int64_t shapes[][2] = {{37, 5}, {512, 1}, {512, 70}, {1000, 3}};
    for (size_t si = 0; si < 4; si++) {
        int64_t n = shapes[si][0], m = shapes[si][1];
        float *x = rnd_array((size_t)(n * m), 3.0f), *w = rnd_array((size_t)n, 1.0f);
        float *out = xmalloc((size_t)(n * m) * 4);
        double *ref = xmalloc((size_t)(n * m) * 8);
        float eps = 1e-5f;
        for (int64_t r = 0; r < m; r++) {
            double ss = 0;
            for (int64_t i = 0; i < n; i++) ss += (double)x[r * n + i] * x[r * n + i];
            double sc = 1.0 / sqrt(ss / (double)n + eps);
            for (int64_t i = 0; i < n; i++) ref[r * n + i] = x[r * n + i] * sc * w[i];
        }
        tens tx = mk_f32(dev, x, n, m, 3), tw = mk_f32(dev, w, n, 1, 0), td = mk_f32(dev, NULL, n, m, 0);
        KT_CHECK_OK(bk->rms_norm(dev, &tx.t, &tw.t, eps, &td.t));
        rd_f32(dev, &td, out);
        KT_CHECKF(max_abs_diff(out, ref, (size_t)(n * m)) < 2e-5, "rms_norm %lldx%lld: %g", (long long)n,
                  (long long)m, max_abs_diff(out, ref, (size_t)(n * m)));
        /* in place */
        KT_CHECK_OK(bk->rms_norm(dev, &tx.t, &tw.t, eps, &tx.t));
        rd_f32(dev, &tx, out);
        KT_CHECK(max_abs_diff(out, ref, (size_t)(n * m)) < 2e-5);
        /* shape errors */
        tw.t.ne[0] = n - 1;
        KT_CHECK(bk->rms_norm(dev, &tx.t, &tw.t, eps, &td.t) == KILN_E_INVALID_ARG);
        free_t(&tx), free_t(&tw), free_t(&td);
        free(x), free(w), free(out), free(ref);
    }
    ISA_LOOP_END
}

static void test_add(void) {
    ISA_LOOP_BEGIN
    const int64_t n = 129, m = 300;
    float *a = rnd_array((size_t)(n * m), 2.0f), *b = rnd_array((size_t)(n * m), 2.0f);
    float *out = xmalloc((size_t)(n * m) * 4);
    double *ref = xmalloc((size_t)(n * m) * 8);
    tens ta = mk_f32(dev, a, n, m, 1), tb = mk_f32(dev, b, n, m, 0), td = mk_f32(dev, NULL, n, m, 2);
    for (int64_t i = 0; i < n * m; i++) ref[i] = (double)a[i] + b[i];
    KT_CHECK_OK(bk->add(dev, &ta.t, &tb.t, &td.t));
    rd_f32(dev, &td, out);
    KT_CHECK(max_abs_diff(out, ref, (size_t)(n * m)) == 0.0 || max_abs_diff(out, ref, (size_t)(n * m)) < 1e-6);
    /* broadcast: b is one row (a bias), in place on a */
    kiln_bk_tensor b1 = tb.t;
    b1.ne[1] = 1;
    for (int64_t r = 0; r < m; r++)
        for (int64_t i = 0; i < n; i++) ref[r * n + i] = (double)a[r * n + i] + b[i];
    KT_CHECK_OK(bk->add(dev, &ta.t, &b1, &ta.t));
    rd_f32(dev, &ta, out);
    KT_CHECK(max_abs_diff(out, ref, (size_t)(n * m)) < 1e-6);
    b1.ne[1] = 2;
    KT_CHECK(bk->add(dev, &ta.t, &b1, &ta.t) == KILN_E_INVALID_ARG);
    free_t(&ta), free_t(&tb), free_t(&td);
    free(a), free(b), free(out), free(ref);
    ISA_LOOP_END
}

static void test_swiglu(void) {
    ISA_LOOP_BEGIN
    const int64_t shapes[][2] = {{13, 3}, {1536, 1}, {1536, 40}};
    for (size_t si = 0; si < 3; si++) {
        int64_t n = shapes[si][0], m = shapes[si][1];
        float *g = rnd_array((size_t)(n * m), 12.0f), *u = rnd_array((size_t)(n * m), 3.0f);
        g[0] = 90.0f, g[1] = -90.0f, g[2] = 0.0f;
        float *out = xmalloc((size_t)(n * m) * 4);
        double *ref = xmalloc((size_t)(n * m) * 8);
        for (int64_t i = 0; i < n * m; i++) ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        tens tg = mk_f32(dev, g, n, m, 0), tu = mk_f32(dev, u, n, m, 5), td = mk_f32(dev, NULL, n, m, 0);
        KT_CHECK_OK(bk->swiglu(dev, &tg.t, &tu.t, &td.t));
        rd_f32(dev, &td, out);
        double worst = 0;
        for (int64_t i = 0; i < n * m; i++) {
            double e = fabs(out[i] - ref[i]) / (fabs(ref[i]) + 1e-6);
            if (!(e <= worst)) worst = e;
        }
        KT_CHECKF(worst < 2e-6, "swiglu rel err %g", worst);
        KT_CHECK_OK(bk->swiglu(dev, &tg.t, &tu.t, &tg.t)); /* in place on gate */
        float *out2 = xmalloc((size_t)(n * m) * 4);
        rd_f32(dev, &tg, out2);
        KT_CHECK(memcmp(out, out2, (size_t)(n * m) * 4) == 0);
        free(out2);
        free_t(&tg), free_t(&tu), free_t(&td);
        free(g), free(u), free(out), free(ref);
    }
    ISA_LOOP_END
}

/* ---- rope ---- */

/* Ropes random rows with the ubatch u (already set on dev) and checks them
 * against the double reference. ff: NULL or n_rot/2 frequency factors. */
static void rope_check(kiln_bk_device *dev, const ubatch_buf *u_, int mode, uint32_t n_head, uint32_t head_dim,
                       uint32_t n_rot, float base, float freq_scale, const float *ff) {
    const ubatch_buf *u = u_;
    const uint32_t n = u->ub.n_tokens;
    const bool factors = ff != NULL;
    int64_t width = (int64_t)n_head * head_dim + 5; /* a few trailing values that rope must not touch */
    float *x = rnd_array((size_t)(width * n), 1.0f), *out = xmalloc((size_t)(width * n) * 4);
    double *ref = xmalloc((size_t)(width * n) * 8);
    for (uint32_t t = 0; t < n; t++) {
        for (int64_t i = 0; i < width; i++) ref[t * width + i] = x[t * width + i];
        for (uint32_t h = 0; h < n_head; h++) {
            for (uint32_t i = 0; i < n_rot / 2; i++) {
                double theta = u->pos[t] * (double)freq_scale * pow(base, -2.0 * i / n_rot) / (factors ? ff[i] : 1.0);
                size_t i0 = mode == KILN_ROPE_NEOX ? i : 2 * i, i1 = mode == KILN_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                size_t o = (size_t)t * width + (size_t)h * head_dim;
                double x0 = x[o + i0], x1 = x[o + i1];
                ref[o + i0] = x0 * cos(theta) - x1 * sin(theta);
                ref[o + i1] = x0 * sin(theta) + x1 * cos(theta);
            }
        }
    }
    tens tx = mk_f32(dev, x, width, n, 0);
    kiln_bk_rope r = {sizeof r, mode, n_head, head_dim, n_rot, base, freq_scale, ff};
    KT_CHECK_OK(bk->rope(dev, &tx.t, &r));
    rd_f32(dev, &tx, out);
    /* float angles (as ggml builds them) at position 1500 are good to a few
     * 1e-4 rad; small positions to ~1e-6 */
    double worst = 0;
    bool untouched = true;
    for (uint32_t t = 0; t < n; t++) {
        double tol = 2e-6 + 3e-7 * u->pos[t];
        for (int64_t i = 0; i < width; i++) {
            double e = fabs(out[t * width + i] - ref[t * width + i]) / tol;
            if (!(e <= worst)) worst = e;
        }
        for (uint32_t h = 0; h < n_head; h++)
            for (uint32_t i = n_rot; i < head_dim; i++)
                untouched &= out[t * width + h * head_dim + i] == x[t * width + h * head_dim + i];
        for (int64_t i = (int64_t)n_head * head_dim; i < width; i++) untouched &= out[t * width + i] == x[t * width + i];
    }
    KT_CHECKF(worst <= 1.0, "rope mode %d rot %u/%u: error %g x tolerance", mode, n_rot, head_dim, worst);
    KT_CHECK(untouched);
    free_t(&tx);
    free(x), free(out), free(ref);
}

static void rope_case(kiln_bk_device *dev, int mode, uint32_t n_head, uint32_t head_dim, uint32_t n_rot,
                      bool factors, float freq_scale) {
    ubatch_buf u;
    make_ubatch(&u, 16, 192, 7, 1500, 4);
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    float ff[64];
    for (int i = 0; i < 64; i++) ff[i] = 1.0f + (float)(i % 5) * 0.75f;
    rope_check(dev, &u, mode, n_head, head_dim, n_rot, 10000.0f, freq_scale, factors ? ff : NULL);
}

/* The cos/sin table is reused across calls: it must follow every change of
 * ubatch, parameters and factor values. */
static void rope_cache_case(kiln_bk_device *dev) {
    ubatch_buf u;
    make_ubatch(&u, 16, 192, 7, 900, 4);
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    float ff[32];
    for (int i = 0; i < 32; i++) ff[i] = 1.0f + (float)(i % 3);
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 64, 10000.0f, 1.0f, NULL);
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 64, 10000.0f, 1.0f, NULL);  /* reused */
    rope_check(dev, &u, KILN_ROPE_NEOX, 2, 64, 64, 10000.0f, 1.0f, NULL);  /* reused, other mode */
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 64, 500000.0f, 1.0f, NULL); /* base */
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 64, 500000.0f, 0.5f, NULL); /* scale */
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 32, 500000.0f, 0.5f, NULL); /* n_rot */
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 32, 500000.0f, 0.5f, ff);   /* factors */
    ff[3] = 7.0f;
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 32, 500000.0f, 0.5f, ff);   /* factor values */
    for (uint32_t i = 0; i < u.ub.n_tokens; i++) u.pos[i] += 5;
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));                              /* same shape, new positions */
    rope_check(dev, &u, KILN_ROPE_NORM, 4, 64, 32, 500000.0f, 0.5f, ff);
}

static void test_rope(void) {
    ISA_LOOP_BEGIN
    rope_case(dev, KILN_ROPE_NORM, 8, 64, 64, false, 1.0f);
    rope_case(dev, KILN_ROPE_NEOX, 4, 64, 64, false, 1.0f);
    rope_case(dev, KILN_ROPE_NORM, 3, 40, 24, true, 0.5f);
    rope_case(dev, KILN_ROPE_NEOX, 5, 48, 32, true, 0.25f);
    rope_cache_case(dev);
    /* errors */
    ubatch_buf u;
    uint32_t n = make_ubatch(&u, 16, 12, 2, 3, 1);
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    tens tx = mk_f32(dev, NULL, 64, n, 0);
    kiln_bk_rope r = {sizeof r, KILN_ROPE_NORM, 1, 64, 65, 10000.f, 1.f, NULL};
    KT_CHECK(bk->rope(dev, &tx.t, &r) == KILN_E_INVALID_ARG); /* odd n_rot, > head_dim */
    r.n_rot = 64, r.mode = 1;
    KT_CHECK(bk->rope(dev, &tx.t, &r) == KILN_E_INVALID_ARG); /* unknown mode */
    r.mode = KILN_ROPE_NORM, r.n_head = 2;
    KT_CHECK(bk->rope(dev, &tx.t, &r) == KILN_E_INVALID_ARG); /* heads do not fit the row */
    tx.t.ne[1] = n - 1, r.n_head = 1;
    KT_CHECK(bk->rope(dev, &tx.t, &r) == KILN_E_INVALID_ARG); /* rows != tokens */
    free_t(&tx);
    ISA_LOOP_END
}

/* ---- get_rows, kv_store ---- */

static void test_get_rows(void) {
    ISA_LOOP_BEGIN
    const int32_t types[] = {KILN_TYPE_F32, KILN_TYPE_F16, KILN_TYPE_BF16, KILN_TYPE_Q8_0, KILN_TYPE_Q4_K};
    const int64_t n = 256, rows = 50;
    int32_t ids[300];
    for (int i = 0; i < 300; i++) ids[i] = (int32_t)(rng_u32() % rows);
    float *src = rnd_array((size_t)(n * rows), 2.0f), *out = xmalloc(300 * (size_t)n * 4);
    float *want = xmalloc((size_t)n * 4);
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(types); ti++) {
        int32_t type = types[ti];
        uint64_t rb = kiln_type_row_size(type, n);
        tens tab = mk_raw(dev, type, n, rows, rb);
        uint8_t *row = xmalloc(rb);
        for (int64_t r = 0; r < rows; r++) {
            KT_CHECK_OK(kiln_quantize_row(type, src + r * n, row, n));
            bk->buffer_upload(dev, tab.buf, (uint64_t)r * rb, row, rb);
        }
        for (int64_t m = 1; m <= 300; m += 299) {
            tens td = mk_f32(dev, NULL, n, m, 1);
            KT_CHECK_OK(bk->get_rows(dev, &tab.t, ids, &td.t));
            rd_f32(dev, &td, out);
            bool same = true;
            for (int64_t r = 0; r < m; r++) {
                kiln_dequantize_row(type, (uint8_t *)bk->buffer_host_ptr(tab.buf) + (uint64_t)ids[r] * rb, want, n);
                same &= memcmp(want, out + r * n, (size_t)n * 4) == 0;
            }
            KT_CHECKF(same, "get_rows %s: rows differ from kiln_dequantize_row", kiln_type_name(type));
            free_t(&td);
        }
        int32_t bad = (int32_t)rows;
        tens td = mk_f32(dev, NULL, n, 1, 0);
        KT_CHECK(bk->get_rows(dev, &tab.t, &bad, &td.t) == KILN_E_INVALID_ARG);
        free_t(&td);
        free(row);
        free_t(&tab);
    }
    free(src), free(out), free(want);
    ISA_LOOP_END
}

static void test_kv_store(void) {
    ISA_LOOP_BEGIN
    ubatch_buf u;
    const uint32_t kv_dim = 72;
    uint32_t n = make_ubatch(&u, 16, 60, 20, 300, 9);
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    float *k = rnd_array((size_t)kv_dim * n, 4.0f), *v = rnd_array((size_t)kv_dim * n, 4.0f);
    k[0] = 1e-6f, k[1] = 70000.0f, k[2] = -3e-8f, v[0] = 65504.0f, v[1] = 65520.0f; /* subnormal, overflow */
    tens tk = mk_f32(dev, k, kv_dim, n, 3), tv = mk_f32(dev, v, kv_dim, n, 0);
    uint64_t cache_bytes = (uint64_t)u.ub.n_cells * kv_dim * 2;
    kiln_bk_buffer *kc, *vc;
    KT_CHECK_OK(bk->buffer_alloc(dev, cache_bytes, KILN_BK_BUF_KV, &kc));
    KT_CHECK_OK(bk->buffer_alloc(dev, cache_bytes, KILN_BK_BUF_KV, &vc));
    memset(bk->buffer_host_ptr(kc), 0xff, cache_bytes);
    memset(bk->buffer_host_ptr(vc), 0xff, cache_bytes);
    KT_CHECK_OK(bk->kv_store(dev, &tk.t, &tv.t, kc, vc, kv_dim));
    const uint16_t *K = bk->buffer_host_ptr(kc), *V = bk->buffer_host_ptr(vc);
    bool same = true;
    size_t written = 0;
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t i = 0; i < kv_dim; i++) {
            same &= K[(size_t)u.kv_cell[t] * kv_dim + i] == kiln_fp32_to_fp16(k[t * kv_dim + i]);
            same &= V[(size_t)u.kv_cell[t] * kv_dim + i] == kiln_fp32_to_fp16(v[t * kv_dim + i]);
        }
    }
    for (size_t i = 0; i < (size_t)u.ub.n_cells * kv_dim; i++) written += K[i] != 0xffff;
    KT_CHECK(same);
    KT_CHECK(written <= (size_t)n * kv_dim); /* nothing outside the token cells */
    /* a cache too small for n_cells */
    kiln_bk_buffer *small;
    KT_CHECK_OK(bk->buffer_alloc(dev, cache_bytes - 2, KILN_BK_BUF_KV, &small));
    KT_CHECK(bk->kv_store(dev, &tk.t, &tv.t, kc, small, kv_dim) == KILN_E_INVALID_ARG);
    KT_CHECK(bk->kv_store(dev, &tk.t, &tv.t, kc, vc, kv_dim + 1) == KILN_E_INVALID_ARG);
    bk->buffer_free(small);
    bk->buffer_free(kc), bk->buffer_free(vc);
    free_t(&tk), free_t(&tv);
    free(k), free(v);
    ISA_LOOP_END
}

/* ---- attention ---- */

typedef struct {
    uint32_t n_head, n_head_kv, head_dim, block_size, n_blocks;
    int n0, pos1, n2;
    int start0; /* first position of sequence 0 (0: 10) */
} attn_case;

/* Runs one attention case on dev; returns the output (caller frees) and
 * checks it against the double reference when `check`. */
static float *attention_case(kiln_bk_device *dev, const attn_case *c, uint64_t seed, bool check) {
    rng_state = seed;
    ubatch_buf u;
    ubatch_start0 = c->start0 ? c->start0 : 10;
    uint32_t n = make_ubatch(&u, c->block_size, c->n_blocks, c->n0, c->pos1, c->n2);
    ubatch_start0 = 10;
    /* one token that attends to nothing */
    if (n > 1) u.attn_n_kv[n - 1] = 0;
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    const uint32_t D = c->head_dim, kv_dim = c->n_head_kv * D, width = c->n_head * D;
    const size_t cells = u.ub.n_cells;
    uint16_t *K = xmalloc(cells * kv_dim * 2), *V = xmalloc(cells * kv_dim * 2);
    for (size_t i = 0; i < cells * kv_dim; i++) {
        K[i] = kiln_fp32_to_fp16(rnd() * 2.0f);
        V[i] = kiln_fp32_to_fp16(rnd());
    }
    kiln_bk_buffer *kc, *vc;
    KT_CHECK_OK(bk->buffer_alloc(dev, cells * kv_dim * 2, KILN_BK_BUF_KV, &kc));
    KT_CHECK_OK(bk->buffer_alloc(dev, cells * kv_dim * 2, KILN_BK_BUF_KV, &vc));
    bk->buffer_upload(dev, kc, 0, K, cells * kv_dim * 2);
    bk->buffer_upload(dev, vc, 0, V, cells * kv_dim * 2);
    float *q = rnd_array((size_t)width * n, 1.5f);
    tens tq = mk_f32(dev, q, width, n, 4), td = mk_f32(dev, NULL, width, n, 0);
    kiln_bk_attn at = {sizeof at, c->n_head, c->n_head_kv, D, 1.0f / sqrtf((float)D)};
    KT_CHECK_OK(bk->attention(dev, &tq.t, kc, vc, &at, &td.t));
    float *out = xmalloc((size_t)width * n * 4);
    rd_f32(dev, &td, out);
    if (check) {
        double *ref = xmalloc((size_t)width * n * 8), *sc = xmalloc(8192 * 8);
        const uint32_t group = c->n_head / c->n_head_kv;
        for (uint32_t t = 0; t < n; t++) {
            for (uint32_t h = 0; h < c->n_head; h++) {
                uint32_t g = h / group;
                int n_kv = u.attn_n_kv[t];
                double mx = -INFINITY, sum = 0;
                for (int p = 0; p < n_kv; p++) {
                    size_t cell = (size_t)u.blocks[u.attn_table[t] + p / (int)c->block_size] * c->block_size +
                                  (size_t)p % c->block_size;
                    double s = 0;
                    for (uint32_t d = 0; d < D; d++)
                        s += (double)q[(size_t)t * width + h * D + d] * kiln_fp16_to_fp32(K[cell * kv_dim + g * D + d]);
                    sc[p] = s / sqrt((double)D);
                    if (sc[p] > mx) mx = sc[p];
                }
                for (int p = 0; p < n_kv; p++) sum += (sc[p] = exp(sc[p] - mx));
                for (uint32_t d = 0; d < D; d++) {
                    double o = 0;
                    for (int p = 0; p < n_kv; p++) {
                        size_t cell = (size_t)u.blocks[u.attn_table[t] + p / (int)c->block_size] * c->block_size +
                                      (size_t)p % c->block_size;
                        o += sc[p] * kiln_fp16_to_fp32(V[cell * kv_dim + g * D + d]);
                    }
                    ref[(size_t)t * width + h * D + d] = n_kv ? o / sum : 0.0;
                }
            }
        }
        double e = max_abs_diff(out, ref, (size_t)width * n);
        KT_CHECKF(e < 2e-5, "attention heads %u/%u dim %u bs %u: max error %g", c->n_head, c->n_head_kv, D,
                  c->block_size, e);
        /* dst aliasing q gives the same result */
        KT_CHECK_OK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t));
        float *out2 = xmalloc((size_t)width * n * 4);
        rd_f32(dev, &tq, out2);
        KT_CHECK(memcmp(out, out2, (size_t)width * n * 4) == 0);
        free(out2);
        free(ref), free(sc);
    }
    bk->buffer_free(kc), bk->buffer_free(vc);
    free_t(&tq), free_t(&td);
    free(K), free(V), free(q);
    return out;
}

static const attn_case attn_cases[] = {
    {8, 2, 64, 16, 120, 9, 700, 5, 0},   /* the tiny model's shape, GQA 4 */
    {4, 4, 24, 7, 300, 3, 650, 17, 0},   /* no GQA, odd block size */
    {6, 3, 20, 16, 90, 20, 400, 2, 0},   /* head_dim not a multiple of 8: scalar path */
    {2, 1, 128, 32, 96, 1, 2000, 1, 0},  /* one KV head: few items, split positions */
    {16, 2, 32, 16, 60, 40, 5, 33, 0},   /* GQA 8, many prefill tokens */
    {2, 1, 64, 16, 400, 0, 3000, 0, 0},  /* one long decode: positions split over items */
    {8, 2, 64, 16, 400, 0, 1000, 0, 0},  /* decode, GQA */
    {6, 6, 32, 16, 60, 3, 100, 2, 0},    /* tiles of 1-3 tokens with their own lengths, few rows */
    {8, 2, 64, 32, 200, 28, 5, 3, 1024}, /* a prefill ubatch deep in a long context */
};

static void test_attention(void) {
    ISA_LOOP_BEGIN
    for (size_t i = 0; i < KILN_ARRAY_LEN(attn_cases); i++)
        free(attention_case(dev, &attn_cases[i], 1000 + 10 * i + (uint64_t)isa_, true));
    ISA_LOOP_END
}

/* A token's attention output must not depend on the rest of its ubatch:
 * each token of a mixed prefill/decode ubatch, run alone (and on handles
 * of 1 and 3 threads, which split long contexts differently), gives the
 * same bits. Speculative decoding relies on it: verifying drafted tokens
 * in one ubatch must reproduce token-by-token decoding exactly. */
static void attention_invariance_case(int isa, const attn_case *c, uint64_t seed) {
    kiln_bk_device *devs[3] = {open_dev(2), open_dev(1), open_dev(3)};
    for (int i = 0; i < 3; i++) kiln_cpu_device_set_isa(devs[i], isa);
    rng_state = seed;
    ubatch_buf u;
    ubatch_start0 = c->start0 ? c->start0 : 10;
    uint32_t n = make_ubatch(&u, c->block_size, c->n_blocks, c->n0, c->pos1, c->n2);
    ubatch_start0 = 10;
    const uint32_t D = c->head_dim, kv_dim = c->n_head_kv * D, width = c->n_head * D;
    const size_t cells = u.ub.n_cells;
    kiln_bk_buffer *kc, *vc;
    KT_CHECK_OK(bk->buffer_alloc(devs[0], cells * kv_dim * 2, KILN_BK_BUF_KV, &kc));
    KT_CHECK_OK(bk->buffer_alloc(devs[0], cells * kv_dim * 2, KILN_BK_BUF_KV, &vc));
    uint16_t *K = bk->buffer_host_ptr(kc), *V = bk->buffer_host_ptr(vc);
    for (size_t i = 0; i < cells * kv_dim; i++) {
        K[i] = kiln_fp32_to_fp16(rnd() * 2.0f);
        V[i] = kiln_fp32_to_fp16(rnd());
    }
    float *q = rnd_array((size_t)width * n, 1.5f), *all = xmalloc((size_t)width * n * 4), *one = xmalloc((size_t)width * 4);
    kiln_bk_attn at = {sizeof at, c->n_head, c->n_head_kv, D, 1.0f / sqrtf((float)D)};
    tens tq = mk_f32(devs[0], q, width, n, 0), td = mk_f32(devs[0], NULL, width, n, 0);
    KT_CHECK_OK(bk->set_ubatch(devs[0], &u.ub));
    KT_CHECK_OK(bk->attention(devs[0], &tq.t, kc, vc, &at, &td.t));
    rd_f32(devs[0], &td, all);
    bool same = true;
    for (uint32_t t = 0; t < n; t++) {
        kiln_bk_ubatch u1 = u.ub;
        u1.n_tokens = 1;
        u1.pos = &u.pos[t], u1.kv_cell = &u.kv_cell[t], u1.attn_table = &u.attn_table[t], u1.attn_n_kv = &u.attn_n_kv[t];
        tens q1 = mk_f32(devs[0], q + (size_t)t * width, width, 1, 0), d1 = mk_f32(devs[0], NULL, width, 1, 0);
        for (int i = 0; i < 3; i++) {
            KT_CHECK_OK(bk->set_ubatch(devs[i], &u1));
            KT_CHECK_OK(bk->attention(devs[i], &q1.t, kc, vc, &at, &d1.t));
            rd_f32(devs[i], &d1, one);
            same &= memcmp(one, all + (size_t)t * width, (size_t)width * 4) == 0;
        }
        free_t(&q1), free_t(&d1);
    }
    KT_CHECKF(same, "attention isa %d heads %u/%u dim %u: a token alone differs from the batch", isa, c->n_head,
              c->n_head_kv, D);
    free_t(&tq), free_t(&td);
    bk->buffer_free(kc), bk->buffer_free(vc);
    free(q), free(all), free(one);
    for (int i = 0; i < 3; i++) bk->device_close(devs[i]);
}

static void test_attention_invariance(void) {
    kiln_bk_device *probe = open_dev(1);
    int best = probe->isa;
    bk->device_close(probe);
    for (int isa = best; isa >= KILN_CPU_ISA_SCALAR; isa--)
        for (size_t i = 0; i < KILN_ARRAY_LEN(attn_cases); i++) attention_invariance_case(isa, &attn_cases[i], 500 + i);
}

static void test_attention_errors(void) {
    kiln_bk_device *dev = open_dev(1);
    kiln_bk_buffer *kc, *vc;
    KT_CHECK_OK(bk->buffer_alloc(dev, 64 * 32 * 2, KILN_BK_BUF_KV, &kc));
    KT_CHECK_OK(bk->buffer_alloc(dev, 64 * 32 * 2, KILN_BK_BUF_KV, &vc));
    tens tq = mk_f32(dev, NULL, 64, 2, 0);
    kiln_bk_attn at = {sizeof at, 2, 1, 32, 0.2f};
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG); /* no ubatch yet */
    int32_t pos[2] = {0, 1}, cell[2] = {0, 1}, tab[2] = {0, 0}, nkv[2] = {1, 2}, blocks[4] = {0, 1, 2, 3};
    kiln_bk_ubatch ub = {sizeof ub, 2, pos, cell, tab, nkv, blocks, 4, 16, 64};
    KT_CHECK_OK(bk->set_ubatch(dev, &ub));
    KT_CHECK_OK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t));
    at.n_head_kv = 3;
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG);
    at.n_head_kv = 2; /* the cache is too small for 2 KV heads */
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG);
    /* bad ubatches are refused and leave the previous one */
    cell[1] = 64;
    KT_CHECK(bk->set_ubatch(dev, &ub) == KILN_E_INVALID_ARG);
    cell[1] = 1, blocks[0] = 4;
    KT_CHECK(bk->set_ubatch(dev, &ub) == KILN_E_INVALID_ARG);
    blocks[0] = -1;
    KT_CHECK(bk->set_ubatch(dev, &ub) == KILN_E_INVALID_ARG);
    blocks[0] = 0, nkv[1] = 17 + 64; /* needs 6 entries, 4 given */
    KT_CHECK(bk->set_ubatch(dev, &ub) == KILN_E_INVALID_ARG);
    nkv[1] = -1;
    KT_CHECK(bk->set_ubatch(dev, &ub) == KILN_E_INVALID_ARG);
    at.n_head_kv = 1;
    KT_CHECK_OK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t));
    /* a token that attends to nothing may carry any table offset; its
     * output is zeros */
    nkv[1] = 2, tab[0] = -7, nkv[0] = 0;
    KT_CHECK_OK(bk->set_ubatch(dev, &ub));
    memset(bk->buffer_host_ptr(tq.buf), 0x7f, 64 * 2 * 4);
    memset(bk->buffer_host_ptr(kc), 0, 64 * 32 * 2);
    memset(bk->buffer_host_ptr(vc), 0, 64 * 32 * 2);
    KT_CHECK_OK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t));
    float row0[64];
    KT_CHECK_OK(bk->buffer_download(dev, tq.buf, 0, row0, sizeof row0));
    bool zeros = true;
    for (int i = 0; i < 64; i++) zeros &= row0[i] == 0.0f;
    KT_CHECK(zeros);
    tab[0] = 0, nkv[0] = 1;
    KT_CHECK_OK(bk->set_ubatch(dev, &ub));
    /* tensors outside their buffer */
    tq.t.ne[1] = 3;
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG);
    tq.t.ne[1] = 2, tq.t.offset = 4;
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG);
    tq.t.offset = 0, tq.t.type = KILN_TYPE_F16;
    KT_CHECK(bk->attention(dev, &tq.t, kc, vc, &at, &tq.t) == KILN_E_INVALID_ARG);
    free_t(&tq);
    bk->buffer_free(kc), bk->buffer_free(vc);
    bk->device_close(dev);
}

/* ---- matmul ---- */

/* An exact private kernel (F32 weights and activations, double sums) with
 * an odd tile shape, to test the driver's tiling on its own. */
static void exact_tile(int64_t k, float *out, size_t ldo, const void *w, size_t w_stride, int nr, const void *act,
                       size_t act_stride, int nc) {
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nc; j++) {
            const float *a = (const float *)((const uint8_t *)w + (size_t)i * w_stride);
            const float *b = (const float *)((const uint8_t *)act + (size_t)j * act_stride);
            double s = 0;
            for (int64_t q = 0; q < k; q++) s += (double)a[q] * b[q];
            out[(size_t)j * ldo + i] = (float)s;
        }
}
static uint64_t f32_row_size(int64_t k) { return (uint64_t)k * 4; }
static void copy_act(const float *x, void *dst, int64_t k) { memcpy(dst, x, (size_t)k * 4); }

static void test_matmul_driver(void) {
    kiln_bk_device *dev1 = open_dev(1), *dev2 = open_dev(2);
    kiln_cpu_dot_traits tr = {KILN_TYPE_F32, KILN_TYPE_F32, 1, f32_row_size, NULL, exact_tile, 3, 2, "test"};
    const int64_t shapes[][3] = {{7, 1, 1}, {33, 5, 3}, {64, 67, 1}, {100, 131, 70}, {16, 300, 129}};
    for (size_t si = 0; si < KILN_ARRAY_LEN(shapes); si++) {
        for (int quant = 0; quant < 2; quant++) {
            tr.quantize_act = quant ? copy_act : NULL; /* also exercise the activation scratch */
            int64_t k = shapes[si][0], n = shapes[si][1], m = shapes[si][2];
            float *w = rnd_array((size_t)(k * n), 1.0f), *x = rnd_array((size_t)(k * m), 1.0f);
            float *o1 = xmalloc((size_t)(n * m) * 4), *o2 = xmalloc((size_t)(n * m) * 4);
            double *ref = xmalloc((size_t)(n * m) * 8);
            for (int64_t j = 0; j < m; j++)
                for (int64_t i = 0; i < n; i++) {
                    double s = 0;
                    for (int64_t q = 0; q < k; q++) s += (double)w[i * k + q] * x[j * k + q];
                    ref[j * n + i] = (float)s;
                }
            tens tw = mk_f32(dev1, w, k, n, 1), tx = mk_f32(dev1, x, k, m, 2);
            tens td = mk_f32(dev1, NULL, n, m, 3);
            memset(bk->buffer_host_ptr(td.buf), 0xff, td.t.row_stride * (uint64_t)m); /* NaN */
            KT_CHECK_OK(kiln_cpu_matmul_traits(dev1, &tr, &tw.t, &tx.t, &td.t));
            rd_f32(dev1, &td, o1);
            KT_CHECKF(max_abs_diff(o1, ref, (size_t)(n * m)) == 0.0, "driver %lldx%lldx%lld", (long long)k,
                      (long long)n, (long long)m);
            memset(bk->buffer_host_ptr(td.buf), 0xff, td.t.row_stride * (uint64_t)m);
            KT_CHECK_OK(kiln_cpu_matmul_traits(dev2, &tr, &tw.t, &tx.t, &td.t));
            rd_f32(dev2, &td, o2);
            KT_CHECK(memcmp(o1, o2, (size_t)(n * m) * 4) == 0);
            free_t(&tw), free_t(&tx), free_t(&td);
            free(w), free(x), free(o1), free(o2), free(ref);
        }
    }
    /* shape and type errors */
    tens tw = mk_f32(dev1, NULL, 32, 4, 0), tx = mk_f32(dev1, NULL, 32, 2, 0), td = mk_f32(dev1, NULL, 4, 2, 0);
    tx.t.ne[0] = 31;
    KT_CHECK(bk->matmul(dev1, &tw.t, &tx.t, &td.t) == KILN_E_INVALID_ARG);
    tx.t.ne[0] = 32, td.t.ne[0] = 5;
    KT_CHECK(bk->matmul(dev1, &tw.t, &tx.t, &td.t) == KILN_E_INVALID_ARG);
    td.t.ne[0] = 4, tw.t.type = KILN_TYPE_I32;
    KT_CHECK(bk->matmul(dev1, &tw.t, &tx.t, &td.t) != KILN_OK);
    free_t(&tw), free_t(&tx), free_t(&td);
    bk->device_close(dev1);
    bk->device_close(dev2);
}

static const int32_t mm_types[] = {KILN_TYPE_F32,  KILN_TYPE_F16,  KILN_TYPE_BF16, KILN_TYPE_Q4_0,
                                   KILN_TYPE_Q4_1, KILN_TYPE_Q5_0, KILN_TYPE_Q5_1, KILN_TYPE_Q8_0,
                                   KILN_TYPE_Q4_K, KILN_TYPE_Q5_K, KILN_TYPE_Q6_K};

/* Tolerance relative to sum |w_k x_k|: activations are rounded to the
 * kernel's activation format (F32: exact; F16/BF16: 2^-11 / 2^-8; 8-bit
 * blocks: 1/254 of the block maximum). */
static double act_tol(int32_t act_type) {
    switch (act_type) {
    case KILN_TYPE_F32: return 1e-5;
    case KILN_TYPE_F16: return 2e-3;
    case KILN_TYPE_BF16: return 1e-2;
    default: return 2e-2;
    }
}

static void test_matmul_types(void) {
    kiln_bk_device *dev1 = open_dev(1), *dev2 = open_dev(2), *devs = open_dev(2);
    kiln_cpu_device_set_isa(devs, KILN_CPU_ISA_SCALAR);
    const int64_t shapes[][3] = {{256, 1, 1}, {512, 67, 1}, {256, 33, 5}, {512, 130, 70}};
    int tested = 0;
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(mm_types); ti++) {
        int32_t type = mm_types[ti];
        const kiln_cpu_dot_traits *tr = kiln_cpu_dot_get(type);
        if (!tr) continue;
        KT_CHECK(bk->supports_type(0, type) == 1);
        tested++;
        for (size_t si = 0; si < KILN_ARRAY_LEN(shapes); si++) {
            int64_t k = shapes[si][0], n = shapes[si][1], m = shapes[si][2];
            uint64_t rb = kiln_type_row_size(type, k);
            float *wf = rnd_array((size_t)(k * n), 1.0f), *x = rnd_array((size_t)(k * m), 1.0f);
            float *wd = xmalloc((size_t)(k * n) * 4);
            tens tw = mk_raw(dev1, type, k, n, rb);
            uint8_t *wq = bk->buffer_host_ptr(tw.buf);
            for (int64_t i = 0; i < n; i++) {
                KT_CHECK_OK(kiln_quantize_row(type, wf + i * k, wq + (uint64_t)i * rb, k));
                KT_CHECK_OK(kiln_dequantize_row(type, wq + (uint64_t)i * rb, wd + i * k, k));
            }
            tens tx = mk_f32(dev1, x, k, m, 0), td = mk_f32(dev1, NULL, n, m, 0);
            float *o1 = xmalloc((size_t)(n * m) * 4), *o2 = xmalloc((size_t)(n * m) * 4);
            float *os = xmalloc((size_t)(n * m) * 4);
            KT_CHECK_OK(bk->matmul(dev1, &tw.t, &tx.t, &td.t));
            rd_f32(dev1, &td, o1);
            KT_CHECK_OK(bk->matmul(dev2, &tw.t, &tx.t, &td.t));
            rd_f32(dev2, &td, o2);
            KT_CHECK_OK(bk->matmul(devs, &tw.t, &tx.t, &td.t));
            rd_f32(devs, &td, os);
            KT_CHECKF(memcmp(o1, o2, (size_t)(n * m) * 4) == 0, "matmul %s: 1 vs 2 threads differ",
                      kiln_type_name(type));
            /* each activation row alone gives the same bits as in the batch
             * (decoding token by token must match a batched verify) */
            bool alone_same = true;
            for (int64_t j = 0; j < m && m > 1; j += 7) {
                kiln_bk_tensor x1 = tx.t, d1 = td.t;
                x1.offset = (uint64_t)j * tx.t.row_stride, x1.ne[1] = 1;
                d1.offset = (uint64_t)j * td.t.row_stride, d1.ne[1] = 1;
                KT_CHECK_OK(bk->matmul(dev2, &tw.t, &x1, &d1));
                alone_same &= memcmp((uint8_t *)bk->buffer_host_ptr(td.buf) + d1.offset, o1 + j * n, (size_t)n * 4) == 0;
            }
            KT_CHECKF(alone_same, "matmul %s %lldx%lldx%lld: a row alone differs from the batch", kiln_type_name(type),
                      (long long)k, (long long)n, (long long)m);
            double worst = 0, worst_s = 0, tol = act_tol(tr->act_type);
            for (int64_t j = 0; j < m; j++)
                for (int64_t i = 0; i < n; i++) {
                    double s = 0, mag = 1e-6;
                    for (int64_t q = 0; q < k; q++) {
                        s += (double)wd[i * k + q] * x[j * k + q];
                        mag += fabs((double)wd[i * k + q] * x[j * k + q]);
                    }
                    double e = fabs(o1[j * n + i] - s) / (mag * tol);
                    double es = fabs(os[j * n + i] - s) / (mag * tol);
                    if (!(e <= worst)) worst = e;
                    if (!(es <= worst_s)) worst_s = es;
                }
            KT_CHECKF(worst <= 1.0 && worst_s <= 1.0, "matmul %s %lldx%lldx%lld: error %g / scalar %g x tolerance",
                      kiln_type_name(type), (long long)k, (long long)n, (long long)m, worst, worst_s);
            free_t(&tw), free_t(&tx), free_t(&td);
            free(wf), free(x), free(wd), free(o1), free(o2), free(os);
        }
    }
    KT_CHECK(tested >= 2);
    bk->device_close(dev1);
    bk->device_close(dev2);
    bk->device_close(devs);
}

/* ---- 1 vs 2 threads, and two handles on two threads ---- */

/* A small decoder-layer-like pipeline; returns its output (caller frees). */
static float *pipeline(kiln_bk_device *dev, uint64_t seed) {
    rng_state = seed;
    const int64_t dim = 256, n_tok = 40;
    float *x = rnd_array((size_t)(dim * n_tok), 1.0f), *w = rnd_array((size_t)(dim * dim), 0.1f);
    float *nw = rnd_array((size_t)dim, 1.0f);
    tens tx = mk_f32(dev, x, dim, n_tok, 0), tw = mk_f32(dev, w, dim, dim, 0), tn = mk_f32(dev, nw, dim, 1, 0);
    tens ty = mk_f32(dev, NULL, dim, n_tok, 0), tz = mk_f32(dev, NULL, dim, n_tok, 0);
    float *out = xmalloc((size_t)(dim * n_tok) * 4);
    KT_CHECK_OK(bk->rms_norm(dev, &tx.t, &tn.t, 1e-5f, &ty.t));
    KT_CHECK_OK(bk->matmul(dev, &tw.t, &ty.t, &tz.t));
    KT_CHECK_OK(bk->swiglu(dev, &tz.t, &tx.t, &ty.t));
    KT_CHECK_OK(bk->add(dev, &ty.t, &tx.t, &tz.t));
    rd_f32(dev, &tz, out);
    free_t(&tx), free_t(&tw), free_t(&tn), free_t(&ty), free_t(&tz);
    free(x), free(w), free(nw);
    return out;
}

static void test_threads_identical(void) {
    kiln_bk_device *d1 = open_dev(1), *d2 = open_dev(2), *d3 = open_dev(3);
    float *a = pipeline(d1, 7), *b = pipeline(d2, 7), *c = pipeline(d3, 7);
    KT_CHECK(memcmp(a, b, 256 * 40 * 4) == 0 && memcmp(a, c, 256 * 40 * 4) == 0);
    free(a), free(b), free(c);
    for (size_t i = 0; i < KILN_ARRAY_LEN(attn_cases); i++) {
        size_t n = (size_t)(attn_cases[i].n0 + 1 + attn_cases[i].n2) * attn_cases[i].n_head * attn_cases[i].head_dim;
        a = attention_case(d1, &attn_cases[i], 77 + i, false);
        b = attention_case(d2, &attn_cases[i], 77 + i, false);
        c = attention_case(d3, &attn_cases[i], 77 + i, false);
        KT_CHECKF(memcmp(a, b, n * 4) == 0 && memcmp(a, c, n * 4) == 0, "attention case %zu differs by threads", i);
        free(a), free(b), free(c);
    }
    bk->device_close(d1), bk->device_close(d2), bk->device_close(d3);
}

typedef struct {
    const float *want_pipe, *want_attn;
    int ok;
} worker_arg;

static void *handle_worker(void *p) {
    worker_arg *a = p;
    kiln_bk_device *dev = open_dev(2);
    const attn_case *c = &attn_cases[0];
    size_t n_attn = (size_t)(c->n0 + 1 + c->n2) * c->n_head * c->head_dim;
    a->ok = 1;
    for (int it = 0; it < 20; it++) {
        float *out = pipeline(dev, 7);
        if (memcmp(out, a->want_pipe, 256 * 40 * 4) != 0) a->ok = 0;
        free(out);
        out = attention_case(dev, c, 99, false);
        if (memcmp(out, a->want_attn, n_attn * 4) != 0) a->ok = 0;
        free(out);
    }
    bk->device_close(dev);
    return NULL;
}

static void test_two_handles(void) {
    kiln_bk_device *d = open_dev(2);
    float *want_pipe = pipeline(d, 7), *want_attn = attention_case(d, &attn_cases[0], 99, false);
    bk->device_close(d);
    pthread_t th[2];
    worker_arg args[2] = {{want_pipe, want_attn, 0}, {want_pipe, want_attn, 0}};
    for (int i = 0; i < 2; i++) KT_CHECK(pthread_create(&th[i], NULL, handle_worker, &args[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    KT_CHECK(args[0].ok && args[1].ok);
    free(want_pipe), free(want_attn);
}

/* ---- fault injection ---- */

static void test_fault_injection(void) {
    /* device_open fails cleanly at each of its allocations */
    int n_fail = 0;
    for (uint64_t n = 1; n < 100; n++) {
        kiln_bk_device *dev = NULL;
        kiln_bk_open_params p = {sizeof p, 3, 0, NULL, NULL};
        kiln_test_fail_alloc_after(n);
        kiln_status st = bk->device_open(0, &p, &dev);
        kiln_test_fail_alloc_after(0);
        if (st == KILN_OK) {
            bk->device_close(dev);
            break;
        }
        KT_CHECK(st == KILN_E_OOM_HOST && dev == NULL);
        n_fail++;
    }
    KT_CHECK(n_fail >= 2);

    /* buffers and the pool */
    kiln_bk_device *dev = open_dev(2);
    kiln_bk_buffer *b = NULL;
    kiln_test_fail_alloc_after(1);
    KT_CHECK(bk->buffer_alloc(dev, 100, KILN_BK_BUF_WEIGHTS, &b) == KILN_E_OOM_HOST && !b);
    kiln_test_fail_alloc_after(1);
    KT_CHECK(bk->buffer_alloc(dev, 100, KILN_BK_BUF_TRANSIENT, &b) == KILN_E_OOM_HOST && !b);
    kiln_test_fail_alloc_after(1);
    KT_CHECK(bk->buffer_wrap_host(dev, &n_fail, 4, &b) == KILN_E_OOM_HOST && !b);
    kiln_test_fail_alloc_after(0);
    CHECK_POOL(dev, 0, 0, 0, 0, 0, 0);
    KT_CHECK(bk->buffer_alloc(dev, UINT64_MAX - 10, KILN_BK_BUF_KV, &b) == KILN_E_OOM_HOST);
    KT_CHECK(bk->buffer_alloc(dev, UINT64_MAX - 10, KILN_BK_BUF_TRANSIENT, &b) == KILN_E_OOM_HOST);
    bk->device_close(dev);

    /* set_ubatch's storage: every failure point, each on a fresh handle */
    ubatch_buf u;
    make_ubatch(&u, 16, 120, 9, 700, 5);
    int ub_fail = 0;
    for (uint64_t n = 1; n < 50; n++) {
        kiln_bk_device *d = open_dev(2);
        kiln_test_fail_alloc_after(n);
        kiln_status st = bk->set_ubatch(d, &u.ub);
        kiln_test_fail_alloc_after(0);
        KT_CHECK(st == KILN_OK || st == KILN_E_OOM_HOST);
        if (st != KILN_OK) {
            ub_fail++;
            KT_CHECK_OK(bk->set_ubatch(d, &u.ub)); /* the handle is still usable */
        }
        bk->device_close(d);
        if (st == KILN_OK) break;
    }
    KT_CHECK(ub_fail >= 6);

    /* scratch of attention and matmul */
    dev = open_dev(2);
    KT_CHECK_OK(bk->set_ubatch(dev, &u.ub));
    size_t bytes = (size_t)u.ub.n_cells * 128 * 2;
    kiln_bk_buffer *kc;
    KT_CHECK_OK(bk->buffer_alloc(dev, bytes, KILN_BK_BUF_KV, &kc));
    memset(bk->buffer_host_ptr(kc), 0, bytes);
    tens tq = mk_f32(dev, NULL, 512, u.ub.n_tokens, 0);
    memset(bk->buffer_host_ptr(tq.buf), 0, tq.t.row_stride * u.ub.n_tokens);
    kiln_bk_attn at = {sizeof at, 8, 2, 64, 0.125f};
    kiln_test_fail_alloc_after(1);
    KT_CHECK(bk->attention(dev, &tq.t, kc, kc, &at, &tq.t) == KILN_E_OOM_HOST);
    kiln_test_fail_alloc_after(0);
    KT_CHECK_OK(bk->attention(dev, &tq.t, kc, kc, &at, &tq.t));
    bk->buffer_free(kc);
    free_t(&tq);
    bk->device_close(dev);

    dev = open_dev(2);
    kiln_cpu_dot_traits tr = {KILN_TYPE_F32, KILN_TYPE_F32, 1, f32_row_size, copy_act, exact_tile, 3, 2, "test"};
    tens tw = mk_f32(dev, NULL, 64, 8, 0), tx = mk_f32(dev, NULL, 64, 4, 0), td = mk_f32(dev, NULL, 8, 4, 0);
    memset(bk->buffer_host_ptr(tw.buf), 0, 64 * 8 * 4);
    memset(bk->buffer_host_ptr(tx.buf), 0, 64 * 4 * 4);
    kiln_test_fail_alloc_after(1);
    KT_CHECK(kiln_cpu_matmul_traits(dev, &tr, &tw.t, &tx.t, &td.t) == KILN_E_OOM_HOST);
    kiln_test_fail_alloc_after(0);
    KT_CHECK_OK(kiln_cpu_matmul_traits(dev, &tr, &tw.t, &tx.t, &td.t));
    free_t(&tw), free_t(&tx), free_t(&td);
    bk->device_close(dev);
}

/* ---- thread pool ---- */

typedef struct {
    _Atomic int64_t sum;
    _Atomic int calls;
    _Atomic int slot_mask;
    int max_slot;
} pool_ctx;

static void count_task(void *p, int slot, int64_t b, int64_t e) {
    pool_ctx *c = p;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&c->sum, i + 1);
    atomic_fetch_add(&c->calls, 1);
    atomic_fetch_or(&c->slot_mask, 1 << slot);
    if (slot >= c->max_slot) c->max_slot = -1000; /* flags a slot out of range */
}

static void slow_task(void *p, int slot, int64_t b, int64_t e) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 20000L * (e - b));
    count_task(p, slot, b, e);
}

static void test_thread_pool(void) {
    kiln_cpu_threads *tp;
    KT_CHECK_OK(kiln_cpu_threads_create(3, &tp));
    KT_CHECK(kiln_cpu_threads_count(tp) == 3);
    pool_ctx c;
    atomic_init(&c.sum, 0);
    atomic_init(&c.calls, 0);
    atomic_init(&c.slot_mask, 0);
    c.max_slot = 3;
    const int iters = 20000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters; i++) kiln_cpu_threads_for(tp, 0, 3, 1, count_task, &c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* every item exactly once, whoever ran it */
    KT_CHECK(atomic_load(&c.calls) == 3 * iters && atomic_load(&c.sum) == 6LL * iters);
    KT_CHECK(c.max_slot == 3 && (atomic_load(&c.slot_mask) & 1));
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / iters;
    printf("  thread pool: %.2f us per 3-thread loop (slots used: %#x)\n", us, (unsigned)atomic_load(&c.slot_mask));
    /* items long enough that the workers join in */
    atomic_store(&c.slot_mask, 0);
    atomic_store(&c.sum, 0);
    for (int i = 0; i < 200; i++) kiln_cpu_threads_for(tp, 0, 12, 1, slow_task, &c);
    KT_CHECK(atomic_load(&c.sum) == 200LL * 12 * 13 / 2 && c.max_slot == 3);
    printf("  slots used by slow loops: %#x\n", (unsigned)atomic_load(&c.slot_mask));
    KT_CHECK(atomic_load(&c.slot_mask) & 6); /* some worker took part */
    /* a long loop in uneven chunks */
    atomic_store(&c.sum, 0);
    kiln_cpu_threads_for(tp, 0, 100001, 7, count_task, &c);
    KT_CHECK(atomic_load(&c.sum) == 100001LL * 100002 / 2);
    /* fewer threads than the pool has: slots stay below n_use */
    c.max_slot = 2;
    atomic_store(&c.sum, 0);
    for (int i = 0; i < 1000; i++) kiln_cpu_threads_for(tp, 2, 50, 1, count_task, &c);
    KT_CHECK(atomic_load(&c.sum) == 1000LL * 50 * 51 / 2 && c.max_slot == 2);
    atomic_store(&c.calls, 0);
    kiln_cpu_threads_for(tp, 1, 10, 1, count_task, &c); /* one thread: one call */
    KT_CHECK(atomic_load(&c.calls) == 1);
    kiln_cpu_threads_for(tp, 0, 0, 1, count_task, &c); /* nothing to do */
    KT_CHECK(atomic_load(&c.calls) == 1);
    /* idle long enough for the workers to sleep, then wake them */
    struct timespec nap = {0, 5 * 1000 * 1000};
    nanosleep(&nap, NULL);
    atomic_store(&c.sum, 0);
    kiln_cpu_threads_for(tp, 0, 64, 1, count_task, &c);
    KT_CHECK(atomic_load(&c.sum) == 64 * 65 / 2);
    kiln_cpu_threads_free(tp);
    kiln_cpu_threads_free(NULL);
}

int main(void) {
    bk = kiln_cpu_backend_iface();
    KT_RUN(test_device_info);
    KT_RUN(test_thread_pool);
    KT_RUN(test_buffers);
    KT_RUN(test_pool);
    KT_RUN(test_rms_norm);
    KT_RUN(test_add);
    KT_RUN(test_swiglu);
    KT_RUN(test_rope);
    KT_RUN(test_get_rows);
    KT_RUN(test_kv_store);
    KT_RUN(test_attention);
    KT_RUN(test_attention_invariance);
    KT_RUN(test_attention_errors);
    KT_RUN(test_matmul_driver);
    KT_RUN(test_matmul_types);
    KT_RUN(test_threads_identical);
    KT_RUN(test_two_handles);
    KT_RUN(test_fault_injection);
    return kt_finish();
}
