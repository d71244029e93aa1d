/*
 * cuda_internal.cuh - shared state of the CUDA backend (libkiln-cuda.so).
 *
 * Components: cuda_backend.cu (iface, devices, buffers, the transient pool,
 * host staging, the ubatch, graphs), cuda_ops.cu (element-wise and row
 * operations), cuda_matmul.cu (matrix-vector kernels and cuBLAS),
 * cuda_attn.cu (paged attention), cuda_quant.cuh (weight block decoding).
 *
 * Execution model: each device handle owns one CUDA stream; every
 * operation is enqueued on it and returns at once. Buffers are plain
 * cudaMalloc memory; transient ones come from the handle's pool and go
 * back to its cache when freed, which is safe without waiting because
 * every later user of that memory is ordered after the free on the same
 * stream. Host inputs of operations (token ids, ubatch tables) are copied
 * into a pinned staging area and from there to a device area with async
 * copies, so a call returns without waiting for the GPU.
 *
 * Threads: like every backend handle, a device handle is used by one thread
 * at a time; the calls set the handle's device current on the calling
 * thread (cudaSetDevice) so different handles may live on different
 * threads and GPUs.
 */
#ifndef KILN_CUDA_INTERNAL_CUH
#define KILN_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kiln_backend.h"
#include "kiln.h"

/* ggml type ids this backend knows (lib/quant.h is C and internal). */
enum {
    KCU_F32 = 0, KCU_F16 = 1, KCU_Q4_0 = 2, KCU_Q4_1 = 3, KCU_Q5_0 = 6, KCU_Q5_1 = 7,
    KCU_Q8_0 = 8, KCU_Q4_K = 12, KCU_Q5_K = 13, KCU_Q6_K = 14, KCU_BF16 = 30,
    /* not ggml ids: Q4_0, Q8_0 and Q6_K weights in the split layout below */
    KCU_Q4_0S = 1002, KCU_Q8_0S = 1008, KCU_Q6_KS = 1014
};

/* Weight layouts of this backend (kiln_bk_tensor.layout, set by
 * weight_prepare). KCU_LAYOUT_SPLIT (Q4_0, Q8_0, Q6_K): each row of nb
 * blocks is stored as the nb blocks without their F16 scale d (Q4_0's and
 * Q8_0's 16 or 32 quant bytes, Q6_K's 208 bytes of ql, qh and scales, in
 * block order), then the nb d (the same bytes as the GGUF blocks): a lane
 * reads a block with aligned 16-byte loads instead of staging the row
 * through shared memory (Q4_0 decode products 1.3-1.7x faster alone,
 * bench/NOTES.md). Rows must start 16-byte aligned (nb a multiple of 8). */
enum { KCU_LAYOUT_GGUF = 0, KCU_LAYOUT_SPLIT = 1 };

/* The type the kernels decode: the ggml type, or its split-layout id. */
static inline int32_t kcu_wtype(const kiln_bk_tensor *t) {
    if (t->layout != KCU_LAYOUT_SPLIT) return t->type;
    return t->type == KCU_Q4_0   ? (int32_t)KCU_Q4_0S
           : t->type == KCU_Q8_0 ? (int32_t)KCU_Q8_0S
           : t->type == KCU_Q6_K ? (int32_t)KCU_Q6_KS
                                 : t->type;
}

/* Host memory through the core's allocator (zeroed) and back. */
void *kcu_calloc(size_t n);
void kcu_free(void *p);

/* Reports an error through the core (kiln_last_error) and returns st. */
kiln_status kcu_error(kiln_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Maps a CUDA error to a status (out of memory: KILN_E_OOM_DEVICE) and
 * reports it with `what`. Clears the sticky-free last error. */
kiln_status kcu_cuda_error(cudaError_t e, const char *what);
#define KCU_CHECK(call, what)                                   \
    do {                                                        \
        cudaError_t kcu_e_ = (call);                            \
        if (kcu_e_ != cudaSuccess) return kcu_cuda_error(kcu_e_, what); \
    } while (0)
/* After a kernel launch: a launch error becomes a status. */
#define KCU_LAUNCHED(what) KCU_CHECK(cudaGetLastError(), what)

struct kcu_pool {
    kiln_bk_buffer *in_use;  /* handed out */
    kiln_bk_buffer *cached;  /* free for reuse, most recently freed first */
    uint64_t bytes_in_use, bytes_cached, bytes_peak, cap;
    uint64_t n_allocs, n_frees, n_device_allocs;
};

struct kiln_bk_buffer {
    void *ptr;               /* device memory */
    uint64_t size;           /* bytes asked for */
    uint64_t capacity;       /* bytes allocated */
    uint32_t usage;          /* KILN_BK_BUF_* */
    int32_t device;          /* CUDA device index */
    kiln_bk_device *owner;   /* transient: the handle whose pool it belongs to */
    kiln_bk_buffer *prev, *next;
};

/* Device copies of the current ubatch's tables. */
struct kcu_ubatch {
    bool set;
    uint32_t n_tokens, n_block_entries, block_size, n_cells;
    bool has_kv, has_attn;
    int32_t max_n_kv;        /* host copy: largest attn_n_kv */
    int32_t *pos, *kv_cell, *attn_table, *attn_n_kv, *block_tables; /* device */
    /* prefill attention tiles: runs of up to 8 consecutive tokens with the
     * same block table, (first token, count) pairs; host and device */
    uint32_t n_tiles;
    int32_t *tiles_host, *tiles;
    uint32_t tiles_cap;
    /* the same with up to 64 tokens (tensor-core kernel, cuda_attn_mma.cu);
     * host copy after the 8-token list in tiles_host */
    uint32_t n_tiles64;
    int32_t *tiles64;
};

/* (head) counters of the single-token decode attention kernel, after the
 * ubatch tables in their allocation: zeroed once, left zero by the kernel */
#define KCU_ATTN_COUNTERS 1024

#define KCU_MAX_GRAPHS 8

struct kcu_graph {
    uint64_t key;
    uint64_t hash;           /* of every recorded operation's arguments */
    cudaGraphExec_t exec;
    uint64_t device_bytes;   /* device memory its instantiation took (measured) */
};

/* Wall-clock milliseconds (KILN_CUDA_PROFILE timings). */
static inline double kcu_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

struct kiln_bk_device {
    int32_t index;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;         /* cuBLAS workspace (fixed, so graphs never allocate) */
    size_t cublas_ws_size;
    uint64_t cublas_bytes;   /* device memory cublasCreate took (measured) */
    int sm_count;
    int mmv_variant;         /* KILN_CUDA_MMV: decode kernel variant (benchmarks) */
    bool no_weight_layout;   /* KILN_CUDA_LAYOUT=0: weights keep the GGUF layout */
    bool attn_tile_only;     /* KILN_CUDA_ATTN=tile: prefill attention on CUDA cores only */
    bool attn_steps;         /* KILN_CUDA_ATTN=steps: rope_kv_attention as rope_kv_store + attention (comparison) */
    bool no_mixed;           /* KILN_CUDA_MIXED=0: Q4_K_M's q/k/v as separate launches (comparison) */
    bool attn_idle_wait;     /* KILN_CUDA_ATTN_IDLE=wait: blocks past a token's splits wait on the kernel ahead */
    uint32_t skip;           /* KILN_CUDA_SKIP: kernels not launched, to time the rest (benchmarks; wrong results) */
    bool spin_sync;          /* KILN_CUDA_SYNC=spin: wait for a step's logits by polling the stream */
    uint64_t prefetch_bytes; /* KILN_CUDA_PREFETCH (MiB): weight bytes a decode product asks the L2 for before it waits */
    kiln_log_fn log_fn;
    void *log_user;
    int32_t log_level;

    struct kcu_pool pool;

    /* host inputs: pinned area -> device area, bump-allocated per ubatch */
    uint8_t *stage_host;
    uint8_t *stage_dev;
    size_t stage_cap, stage_used;

    struct kcu_ubatch ub;
    int32_t *ub_dev;         /* the tables' device array */
    size_t ub_dev_cap;       /* its bytes for tables; KCU_ATTN_COUNTERS counters follow */
    int32_t *attn_count;     /* rope_kv_attention's per-head counters of finished splits (zero between kernels) */


    /* int8 copy of the x of the last matmul, reused by the next matmul on
     * the same x (q/k/v, gate/up); dropped by any other operation */
    kiln_bk_buffer *xq_buf;
    const void *xq_src;
    uint64_t xq_stride;
    int64_t xq_K, xq_nt;
    bool int8_seen;          /* a decode product here took int8 x */

    /* graphs */
    int graph_mode;          /* 0 eager, 1 capturing, 2 replaying */
    uint64_t graph_key, graph_hash;
    struct kcu_graph graphs[KCU_MAX_GRAPHS];
    int n_graphs;
    bool graph_failed;       /* an operation failed while capturing */
    /* KILN_CUDA_PROFILE=1: GPU time of graph launches and wall time between
     * them, printed at close (how much of a decode step is host work) */
    bool profile;
    cudaEvent_t ev0, ev1, ev2; /* ev2: after a profiled download's copy */
    double prof_copy_gpu_ms, prof_after_sync_ms; uint64_t prof_dl_n;
    double prof_t_launch, prof_latency_ms; /* host time at a replay's launch; host minus GPU time to its logits */
    bool ev_pending;
    double prof_gpu_ms, prof_wall_ms, prof_last_end;
    double prof_issue_t0, prof_issue_ms; /* host time from graph_begin to a replay's launch */
    double prof_ub_ms, prof_begin_ms, prof_launch_ms, prof_dl_ms; /* host time in those calls */
    double prof_dl_end, prof_core_ms; /* the caller's time between a download and the next set_ubatch */
    uint64_t prof_n, prof_nodes;
    uint64_t n_captures, n_capture_fail, n_replays, n_mismatch;
    int last_capture_error;
};

/* ---- launches ----
 * Every kernel is launched with programmatic dependent launch (Hopper):
 * the next kernel of the stream may be scheduled while this one finishes,
 * hiding most of the gap between the many small kernels of a decode step.
 * Correctness rests on every kernel calling kcu_pdl_wait() before it reads
 * or writes global memory (it returns once the previous grid has finished
 * and its writes are visible). */
static __device__ __forceinline__ void kcu_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* KILN_CUDA_PDL=0 turns programmatic dependent launch off (comparison);
 * read at the first device_open. */
extern int kcu_pdl_mode;

/* Early launch of the next kernel. The small kernels of a decode step
 * (norms, rope, attention, swiglu, embedding rows) call kcu_pdl_trigger()
 * as they start, so the product after them is scheduled at once and its
 * blocks prefetch their weights into the L2 (kcu_mm_prefetch) while the
 * small kernels run; the product still waits (kcu_pdl_wait) for their
 * results. Safe for any kernel that calls kcu_pdl_wait() before touching
 * memory a kernel ahead writes or reads: a grid completes only after its
 * own wait returned, so waiting on the previous grid waits on all before
 * it. The setting lives in each kernel file's constant memory
 * (KCU_PDL_EARLY_DEFINE); KILN_CUDA_PDL=1 keeps the launch at a grid's
 * end (comparison), 2 (the default) triggers early in the small kernels,
 * 3 also in the products. */
/* KILN_CUDA_SKIP bits (timing experiments only: results are garbage) */
enum { KCU_SKIP_NORM = 1, KCU_SKIP_ROPE = 2, KCU_SKIP_ATTN = 4, KCU_SKIP_SWIGLU = 8, KCU_SKIP_MMV = 16,
       /* one class of decode product: square (o), matmul_multi of 3 (q/k/v) and 2 (gate/up), more rows
        * than columns (down), over 4x more columns than rows (the output) */
       KCU_SKIP_MMV_SQUARE = 32, KCU_SKIP_MMV_MULTI3 = 64, KCU_SKIP_MMV_MULTI2 = 128, KCU_SKIP_MMV_TALL = 256,
       KCU_SKIP_MMV_WIDE = 512 };

/* KILN_CUDA_PREFETCH's default: at most this many MiB of a decode product's
 * weights are prefetched (the H100's L2 holds 50 MB) */
#define KCU_PREFETCH_MIB_DEFAULT 24
#define KCU_PDL_EARLY_DEFINE(setter)                                          \
    static __constant__ int kcu_pdl_early_c;                                  \
    cudaError_t setter(int early) { return cudaMemcpyToSymbol(kcu_pdl_early_c, &early, sizeof early); }
/* level 1: the small kernels; 2: also the products (KILN_CUDA_PDL=3) */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define kcu_pdl_trigger_at(level)                                                          \
    do {                                                                                   \
        if (kcu_pdl_early_c >= (level)) asm volatile("griddepcontrol.launch_dependents;" :::); \
    } while (0)
#else
#define kcu_pdl_trigger_at(level) ((void)kcu_pdl_early_c)
#endif
#define kcu_pdl_trigger() kcu_pdl_trigger_at(1)
cudaError_t kcu_ops_set_pdl_early(int early);
cudaError_t kcu_matmul_set_pdl_early(int early);
cudaError_t kcu_attn_set_pdl_early(int early);

template <typename... KArgs, typename... Args>
static inline cudaError_t kcu_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t stream, Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = kcu_pdl_mode != 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
}

/* Quantizes one value of a 32-element block held by the 32 lanes of a warp
 * (lane i holds element i of the block; the whole warp must call it) to
 * int8 with the block's scale amax / 127: the activation format of the
 * Q4_0/Q8_0 decode kernels, written by the operations that produce x so
 * that the products need no quantization pass of their own. */
static __device__ __forceinline__ void kcu_q8_store(float v, int64_t i, int8_t *xq, float *xd) {
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    xq[i] = (int8_t)__float2int_rn(v * id);
    if ((i & 31) == 0) xd[i / 32] = d;
}

/* ---- cuda_backend.cu ---- */
void kcu_log(const kiln_bk_device *dev, int32_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Creates the handle's cuBLAS handle and workspace if not yet done. */
kiln_status kcu_cublas(kiln_bk_device *dev);
/* Makes the handle's device current on this thread. */
kiln_status kcu_use(kiln_bk_device *dev);
/* A transient buffer from the pool / back to it (stream-ordered). */
kiln_status kcu_pool_alloc(kiln_bk_device *dev, uint64_t size, kiln_bk_buffer **out);
void kcu_pool_free(kiln_bk_buffer *b); /* NULL-safe */
/* Copies host bytes to the device through the staging area; *out is the
 * device address, valid for operations enqueued after this call. */
kiln_status kcu_stage(kiln_bk_device *dev, const void *src, size_t bytes, const void **out);
/* In graph mode, folds an operation's arguments into the running hash and
 * says whether to launch (0: replaying, skip the launch). */
bool kcu_op(kiln_bk_device *dev, const void *args, size_t n);
/* For an operation about to write x (rows of K floats at dst, row_stride
 * apart): when this handle's decode products take int8 x and the rows are
 * few enough, allocates the int8 copy, records it as the cached x and
 * returns where the kernel writes it; else *xq = NULL. Call after kcu_op. */
kiln_status kcu_xq_produce(kiln_bk_device *dev, const void *dst, uint64_t row_stride, int64_t K, int64_t rows,
                           int8_t **xq, float **xd);
/* Drops the cached int8 x (stream-ordered). */
void kcu_xq_release(kiln_bk_device *dev);
/* kcu_op for matmul: keeps the cached int8 x. */
bool kcu_op_matmul(kiln_bk_device *dev, const void *args, size_t n);
/* Device pointer of a tensor's first byte (NULL if no buffer). */
static inline uint8_t *kcu_tensor_ptr(const kiln_bk_tensor *t) {
    return t && t->buf ? (uint8_t *)t->buf->ptr + t->offset : NULL;
}
kiln_status kcu_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op, const char *name);

/* ---- operations ---- */
kiln_status kcu_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table, const int32_t *ids,
                         kiln_bk_tensor *dst);
kiln_status kcu_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *w,
                         float eps, kiln_bk_tensor *dst);
kiln_status kcu_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                             kiln_bk_tensor *sum, const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst);
kiln_status kcu_add(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                    kiln_bk_tensor *dst);
kiln_status kcu_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope);
kiln_status kcu_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate, const kiln_bk_tensor *up,
                       kiln_bk_tensor *dst);
kiln_status kcu_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                         kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim);
kiln_status kcu_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                       kiln_bk_tensor *dst);
kiln_status kcu_matmul_multi(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                             const kiln_bk_tensor *x, kiln_bk_tensor *const *dst);
/* iface weight_prepare: Q4_0, Q8_0 and Q6_K weights whose rows allow it
 * go to the split layout (KCU_LAYOUT_SPLIT); the rest stays as uploaded. */
kiln_status kcu_weight_prepare(kiln_bk_device *dev, const kiln_bk_tensor *w, int32_t *layout);
kiln_status kcu_rope_kv_store(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                              const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                              kiln_bk_buffer *v_cache, uint32_t kv_dim);
kiln_status kcu_attention(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                          const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, kiln_bk_tensor *dst);
/* iface rope_kv_attention: one kernel for a single token (cuda_attn.cu),
 * else kcu_rope_kv_store then kcu_attention. */
kiln_status kcu_rope_kv_attention(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                  const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                                  kiln_bk_buffer *v_cache, uint32_t kv_dim, const kiln_bk_attn *attn,
                                  kiln_bk_tensor *dst);

/* rope_kv_store's arguments checked and resolved (cuda_ops.cu). fused:
 * the case one kernel covers (the same rotation of q and k, k's heads
 * exactly kv_dim wide); otherwise the caller ropes and stores in steps,
 * whose own checks apply. ff: the frequency factors staged on the device. */
#define KCU_ROPE_HALF_MAX 128 /* head_dim <= 256 */
struct kcu_rope_plan {
    bool fused, neox;
    int n_head, n_head_kv, head_dim, half;
    float theta_scale, freq_scale;
    const void *ff;
    kiln_bk_rope a, b; /* q's and k's parameters, freq_factors NULL (hashed by value) */
};
kiln_status kcu_rope_kv_plan(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_tensor *k,
                             const kiln_bk_tensor *v, const kiln_bk_rope *rq, const kiln_bk_rope *rk,
                             const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache, uint32_t kv_dim,
                             struct kcu_rope_plan *plan);
/* ---- cuda_attn_mma.cu ---- */
/* Whether the tensor-core prefill kernel handles heads of this size. */
bool kcu_attn_mma_supported(uint32_t head_dim);
/* Prefill attention of the current ubatch (its 64-token tiles) on tensor
 * cores; arguments as kcu_attention resolved them. */
cudaError_t kcu_attn_mma(kiln_bk_device *dev, const float *q, uint64_t qs, const __half *kc, const __half *vc,
                         int kv_dim, uint32_t n_head, uint32_t head_dim, int group, float scale, float *dst,
                         uint64_t ds);
/* Dequantizes rows [r0, r0 + n) of w to F16 into dst (n x K, dense). */
kiln_status kcu_dequant_f16(kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t r0, int64_t n, __half *dst);

#endif
