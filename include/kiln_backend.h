/*
 * kiln_backend.h - the backend plugin ABI of kiln.
 *
 * A backend (CPU, CUDA, Vulkan, ...) is a table of function pointers, the
 * "iface", plus opaque device and buffer handles of its own. The CPU
 * backend is built into libkiln; others are shared objects
 * (libkiln-cuda.so, libkiln-vulkan.so) that export one symbol:
 *
 *     const kiln_backend_iface *kiln_backend_entry(uint32_t abi_version);
 *
 * which returns NULL if it cannot serve that ABI version. The core loads
 * them with dlopen only when a caller asks for that backend, so libkiln
 * itself never links CUDA or Vulkan.
 *
 * Versioning: KILN_BACKEND_ABI_VERSION is bumped only for incompatible
 * changes. Compatible additions append entries to the iface and set
 * struct_size accordingly; the core treats entries beyond struct_size, and
 * NULL entries, as absent and falls back to a default where one exists
 * (marked OPTIONAL below).
 *
 * Execution model: operations are enqueued on the device handle's stream
 * and may run asynchronously; synchronize() waits for all of them. Host
 * arrays passed to an operation (ids, ubatch tables) may be reused by the
 * caller as soon as the call returns: the backend copies what it needs.
 * buffer_download() waits for prior operations on the same device handle.
 *
 * Devices and threads: device_count()/device_info() must not create any
 * context or allocate anything on any device. device_open() creates
 * per-handle state (a CPU thread pool, a CUDA stream, a Vulkan queue) on
 * that one device. Several handles may be open on the same device index
 * (the model holds one for its weights, each context one for compute);
 * a buffer allocated through one handle may be used by operations on any
 * handle of the same backend and device index. One handle is used by one
 * thread at a time; distinct handles may be used concurrently.
 *
 * Tensors: a kiln_bk_tensor is a 2-D view of a buffer: ne[1] rows of ne[0]
 * elements of `type`, rows `row_stride` bytes apart, starting at `offset`.
 * Activations are F32. Weight matrices are W[N][K] (ne[0] = K, ne[1] = N)
 * in any weight type the backend reports as supported.
 *
 * Every entry returning kiln_status returns KILN_OK or an error; on error
 * the device handle stays usable and nothing the call allocated is kept.
 * Device out-of-memory is KILN_E_OOM_DEVICE, never an abort.
 */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "kiln.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_BACKEND_ABI_VERSION 1

typedef struct kiln_bk_device kiln_bk_device; /* backend-defined */
typedef struct kiln_bk_buffer kiln_bk_buffer; /* backend-defined */
struct kiln_bk_host;

typedef struct kiln_bk_device_info {
    uint32_t struct_size;
    char name[128];
    uint64_t mem_total;      /* bytes; 0 if unknown */
    uint64_t mem_free;       /* bytes; 0 if unknown */
    uint32_t flags;          /* KILN_BK_DEVICE_* */
} kiln_bk_device_info;

#define KILN_BK_DEVICE_HOST_MEMORY (1u << 0) /* buffers are plain host memory */

typedef struct kiln_bk_open_params {
    uint32_t struct_size;
    int32_t n_threads;       /* CPU threads for this handle (<= 0: all cores) */
    int32_t log_level;
    kiln_log_fn log_fn;      /* never NULL when passed by the core */
    void *log_user;
} kiln_bk_open_params;

/* What a buffer is for: weights and KV live as long as their owner; a
 * TRANSIENT buffer comes from the handle's pool and its memory returns to
 * the pool's cache when freed. */
#define KILN_BK_BUF_WEIGHTS   0u
#define KILN_BK_BUF_KV        1u
#define KILN_BK_BUF_TRANSIENT 2u
#define KILN_BK_BUF_STAGING   3u

typedef struct kiln_bk_pool_stats {
    uint32_t struct_size;
    uint64_t bytes_in_use;   /* handed out and not yet freed */
    uint64_t bytes_cached;   /* freed, kept for reuse */
    uint64_t bytes_peak;     /* max of in_use + cached since open/reset */
    uint64_t cap;            /* max bytes_cached (0: unlimited) */
    uint64_t n_allocs;       /* pool allocations served */
    uint64_t n_frees;        /* pool buffers returned */
    uint64_t n_device_allocs;/* allocations that reached the device */
    /* Appended (a plugin that does not know them leaves them 0): memory the
     * handle holds for itself outside buffers and the pool, so the memory
     * report adds up to what the device says. bytes_internal: device memory
     * (library handles and workspaces, staging and table areas, recorded
     * graphs); bytes_internal_host: page-locked host memory (staging).
     * Exact where the backend allocates it itself, measured (free memory
     * before and after) where a library allocates on its behalf. */
    uint64_t bytes_internal;
    uint64_t bytes_internal_host;
} kiln_bk_pool_stats;

typedef struct kiln_bk_tensor {
    kiln_bk_buffer *buf;
    uint64_t offset;         /* bytes from the start of buf */
    int32_t type;            /* a ggml type id (KILN_TYPE_* in lib/quant.h) */
    int32_t layout;          /* 0: the GGUF block layout; a weight that
                                weight_prepare rearranged: the value it
                                returned (meaningful to that backend only) */
    int64_t ne[2];           /* ne[0] elements per row, ne[1] rows */
    uint64_t row_stride;     /* bytes between rows */
} kiln_bk_tensor;

/* Per-ubatch metadata used by rope, kv_store and attention. The KV cache of
 * a layer is one buffer of n_cells rows of kv_dim F16 values; cell index =
 * block * block_size + (pos % block_size). */
typedef struct kiln_bk_ubatch {
    uint32_t struct_size;
    uint32_t n_tokens;
    const int32_t *pos;          /* [n_tokens] position of each token */
    const int32_t *kv_cell;      /* [n_tokens] cell this token's K/V goes to */
    const int32_t *attn_table;   /* [n_tokens] offset of the token's block
                                    table in block_tables */
    const int32_t *attn_n_kv;    /* [n_tokens] positions it attends to
                                    (0..attn_n_kv-1 of its sequence) */
    const int32_t *block_tables; /* [n_block_entries] block ids */
    uint32_t n_block_entries;
    uint32_t block_size;
    uint32_t n_cells;            /* cells in each layer's K and V buffer */
} kiln_bk_ubatch;

#define KILN_ROPE_NORM 0  /* rotate adjacent pairs (x[2i], x[2i+1]): llama */
#define KILN_ROPE_NEOX 2  /* rotate halves (x[i], x[i + n_rot/2]): qwen2/3 */

typedef struct kiln_bk_rope {
    uint32_t struct_size;
    int32_t mode;            /* KILN_ROPE_NORM or KILN_ROPE_NEOX */
    uint32_t n_head;         /* heads in each row of x */
    uint32_t head_dim;
    uint32_t n_rot;          /* dims rotated per head (<= head_dim, even) */
    float freq_base;
    float freq_scale;        /* 1 / linear scaling factor */
    const float *freq_factors; /* NULL or [n_rot/2] divisors (llama3 rope_freqs), host */
} kiln_bk_rope;

typedef struct kiln_bk_attn {
    uint32_t struct_size;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;
    float scale;             /* usually 1/sqrt(head_dim) */
} kiln_bk_attn;

typedef struct kiln_backend_iface {
    uint32_t struct_size;
    uint32_t abi_version;    /* KILN_BACKEND_ABI_VERSION */
    const char *name;        /* "cpu", "cuda", "vulkan" */

    /* ---- devices (no side effects on any device) ---- */
    int32_t (*device_count)(void);
    kiln_status (*device_info)(int32_t index, kiln_bk_device_info *info);
    /* 1 if the device can run matmul with weights of this type. */
    int32_t (*supports_type)(int32_t index, int32_t type);

    kiln_status (*device_open)(int32_t index, const kiln_bk_open_params *params,
                               kiln_bk_device **out);
    /* Waits for queued work, frees the pool and the handle. Buffers must
     * have been freed first. NULL-safe. */
    void (*device_close)(kiln_bk_device *dev);

    /* ---- buffers ---- */
    kiln_status (*buffer_alloc)(kiln_bk_device *dev, uint64_t size, uint32_t usage,
                                kiln_bk_buffer **out);
    /* OPTIONAL: a buffer over caller memory that stays valid and unchanged
     * for the buffer's life (mmapped weights). Absent: alloc + upload. */
    kiln_status (*buffer_wrap_host)(kiln_bk_device *dev, void *ptr, uint64_t size,
                                    kiln_bk_buffer **out);
    /* NULL-safe. Waits for queued work that uses the buffer. */
    void (*buffer_free)(kiln_bk_buffer *buf);
    kiln_status (*buffer_upload)(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t offset,
                                 const void *src, uint64_t size);
    kiln_status (*buffer_download)(kiln_bk_device *dev, const kiln_bk_buffer *src,
                                   uint64_t offset, void *dst, uint64_t size);
    kiln_status (*buffer_copy)(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t dst_offset,
                               const kiln_bk_buffer *src, uint64_t src_offset, uint64_t size);
    /* OPTIONAL: host address of the buffer's memory, NULL if not mappable. */
    void *(*buffer_host_ptr)(kiln_bk_buffer *buf);

    kiln_status (*synchronize)(kiln_bk_device *dev);

    /* ---- the transient pool ---- */
    kiln_status (*pool_stats)(kiln_bk_device *dev, kiln_bk_pool_stats *stats);
    void (*pool_set_cap)(kiln_bk_device *dev, uint64_t cap_bytes);
    /* Synchronizes, then releases every cached (not in-use) block. */
    kiln_status (*pool_purge)(kiln_bk_device *dev);

    /* ---- operations (F32 activations unless stated) ---- */
    kiln_status (*set_ubatch)(kiln_bk_device *dev, const kiln_bk_ubatch *ub);
    /* dst row r = row ids[r] of table (any supported type, converted to
     * F32); dst->ne[1] ids, ids in host memory and already range-checked. */
    kiln_status (*get_rows)(kiln_bk_device *dev, const kiln_bk_tensor *table,
                            const int32_t *ids, kiln_bk_tensor *dst);
    /* dst = x / rms(x) * w per row; w is F32 [ne0]. dst may alias x. */
    kiln_status (*rms_norm)(kiln_bk_device *dev, const kiln_bk_tensor *x,
                            const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst);
    /* dst[m][n] = sum_k w[n][k] * x[m][k]. */
    kiln_status (*matmul)(kiln_bk_device *dev, const kiln_bk_tensor *w,
                          const kiln_bk_tensor *x, kiln_bk_tensor *dst);
    /* dst = a + b; b has a->ne[1] rows or 1 row (broadcast: a bias). dst
     * may alias a. */
    kiln_status (*add)(kiln_bk_device *dev, const kiln_bk_tensor *a,
                       const kiln_bk_tensor *b, kiln_bk_tensor *dst);
    /* In place on x (one token per row, n_head heads per row), positions
     * from the current ubatch. */
    kiln_status (*rope)(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope);
    /* dst = silu(gate) * up. dst may alias gate. */
    kiln_status (*swiglu)(kiln_bk_device *dev, const kiln_bk_tensor *gate,
                          const kiln_bk_tensor *up, kiln_bk_tensor *dst);
    /* Writes row i of k and v (F32, kv_dim wide) as F16 into cell
     * ub.kv_cell[i] of k_cache and v_cache. */
    kiln_status (*kv_store)(kiln_bk_device *dev, const kiln_bk_tensor *k,
                            const kiln_bk_tensor *v, kiln_bk_buffer *k_cache,
                            kiln_bk_buffer *v_cache, uint32_t kv_dim);
    /* Causal attention of each token (row of q, n_head*head_dim) over
     * positions 0..attn_n_kv-1 of its sequence through its block table;
     * head h reads KV head h / (n_head / n_head_kv). dst like q. */
    kiln_status (*attention)(kiln_bk_device *dev, const kiln_bk_tensor *q,
                             const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache,
                             const kiln_bk_attn *attn, kiln_bk_tensor *dst);

    /* ---- appended in ABI v1 (OPTIONAL; check with struct_size) ---- */

    /* Called once by the core right after loading a plugin, before any
     * other entry: the services the core offers plugins (a plugin cannot
     * link libkiln's hidden functions). `host` stays valid for the life of
     * the process. */
    void (*set_host)(const struct kiln_bk_host *host);

    /* Graph capture of a repeated sequence of operations (a decode step).
     * graph_begin(key): if a graph recorded under `key` exists, the
     * operations that follow until graph_end are not executed but only
     * checked (arguments must be the same buffers and shapes) and their
     * host inputs (ids, ubatch tables) staged; otherwise they execute while
     * being recorded. graph_end launches the recorded or replayed graph;
     * when the replayed operations did not match the recording it sets
     * *redo = 1, forgets that graph and the caller must issue the same
     * operations again without graph_begin. Nothing may synchronize,
     * download or allocate outside the pool between the two. A purge or
     * pool trim forgets every graph (they reference pool memory). */
    kiln_status (*graph_begin)(kiln_bk_device *dev, uint64_t key);
    kiln_status (*graph_end)(kiln_bk_device *dev, int32_t *redo);

    /* OPTIONAL fused residual + norm: sum = a + b (sum may alias a), then
     * dst = rms_norm(sum) * w, per row, with rms_norm's arithmetic. Absent:
     * the core calls add, then rms_norm. */
    kiln_status (*add_rms_norm)(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                                kiln_bk_tensor *sum, const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst);

    /* OPTIONAL: n (1..3) products sharing one x, dst[i] = matmul(w[i], x),
     * each with matmul's arithmetic and checks, in as few launches as the
     * backend can (q/k/v and gate/up of a decode step). The dst must not
     * overlap x. Absent: the core calls matmul n times. */
    kiln_status (*matmul_multi)(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                                const kiln_bk_tensor *x, kiln_bk_tensor *const *dst);

    /* OPTIONAL: rope(q, rq), rope(k, rk), then kv_store(k, v, k_cache,
     * v_cache, kv_dim), with those operations' arithmetic and checks, in
     * one launch where the backend can. Absent: the core calls the three. */
    kiln_status (*rope_kv_store)(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                 const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                                 kiln_bk_buffer *v_cache, uint32_t kv_dim);

    /* OPTIONAL: called by the core once per weight tensor right after its
     * GGUF bytes were uploaded into a KILN_BK_BUF_WEIGHTS buffer (w->layout
     * is 0). The backend may rearrange the tensor's bytes in place into a
     * layout its kernels read faster, keeping its size, and returns in
     * *layout what every later operation on that tensor will see in
     * w->layout (0: left as it was). Tensors sharing bytes are prepared
     * once. On failure the bytes may be half rearranged: the core frees the
     * buffer. Absent: weights keep the GGUF layout. */
    kiln_status (*weight_prepare)(kiln_bk_device *dev, const kiln_bk_tensor *w, int32_t *layout);

    /* OPTIONAL: rope_kv_store(q, k, v, rq, rk, k_cache, v_cache, kv_dim),
     * then attention(q, k_cache, v_cache, attn, dst), with those
     * operations' arithmetic and checks (so the same bits), in one launch
     * where the backend can (a decode step's single token: the token's own
     * K/V row is taken from registers while it is being stored). Afterwards
     * q and k hold either their roped values or their inputs (the core
     * reads neither again). Absent: the core calls the two. */
    kiln_status (*rope_kv_attention)(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k,
                                     const kiln_bk_tensor *v, const kiln_bk_rope *rq, const kiln_bk_rope *rk,
                                     kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim,
                                     const kiln_bk_attn *attn, kiln_bk_tensor *dst);

    /* OPTIONAL: matmul(w, x, dst), then add_rms_norm(a, dst, sum, nw, eps,
     * dst), with those operations' arithmetic and checks (so the same
     * bits), in one launch where the backend can (a decode step's o and
     * down products and the norm after each); where dst overlaps x, a or
     * sum the result is the two calls'. Absent: the core calls the two. */
    kiln_status (*matmul_add_rms_norm)(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                       const kiln_bk_tensor *a, kiln_bk_tensor *sum, const kiln_bk_tensor *nw,
                                       float eps, kiln_bk_tensor *dst);

    /* OPTIONAL: matmul_multi(2, {w_gate, w_up}, x, {dst, up}), then
     * swiglu(dst, up, dst), with those operations' arithmetic and checks
     * (so the same bits), in one launch where the backend can (a decode
     * step's gate and up products); `up` is scratch for the up product
     * where the backend computes it apart (its contents afterwards are
     * unspecified). Absent: the core calls the two. */
    kiln_status (*matmul_swiglu)(kiln_bk_device *dev, const kiln_bk_tensor *w_gate, const kiln_bk_tensor *w_up,
                                 const kiln_bk_tensor *x, kiln_bk_tensor *up, kiln_bk_tensor *dst);

    /* OPTIONAL, the four together: a layer's residual stream with each norm
     * done by the products after it, instead of after the product before
     * it (a decode step: the norm costs each product a prologue rather than
     * a dependent launch of its own). prenorm_fused(w, n_rows) returns
     * nonzero where the three below take their one-launch form for weight w
     * and n_rows activation rows; the core uses them for a layer only where
     * every product of the layer does. Each has the separate operations'
     * arithmetic and checks (so the same bits) and falls back to them:
     * - matmul_add: sum = a + matmul(w, x) (sum may be a itself); tmp, of
     *   sum's shape, is scratch for the product where it is computed apart.
     * - rms_norm_matmul_multi: h = rms_norm(x) * nw, then matmul_multi(n,
     *   w, h, dst); h is scratch (its contents afterwards are unspecified).
     * - rms_norm_matmul_swiglu: h = rms_norm(x) * nw, then matmul_swiglu(
     *   w_gate, w_up, h, up, dst); h as above. */
    int32_t (*prenorm_fused)(kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t n_rows);
    kiln_status (*matmul_add)(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                              const kiln_bk_tensor *a, kiln_bk_tensor *tmp, kiln_bk_tensor *sum);
    kiln_status (*rms_norm_matmul_multi)(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                         float eps, kiln_bk_tensor *h, uint32_t n, const kiln_bk_tensor *const *w,
                                         kiln_bk_tensor *const *dst);
    kiln_status (*rms_norm_matmul_swiglu)(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                          float eps, kiln_bk_tensor *h, const kiln_bk_tensor *w_gate,
                                          const kiln_bk_tensor *w_up, kiln_bk_tensor *up, kiln_bk_tensor *dst);
} kiln_backend_iface;

/* Services of the core for plugins (see set_host). */
typedef struct kiln_bk_host {
    uint32_t struct_size;
    /* Sets the calling thread's kiln_last_error() to `message` and returns
     * `status`: plugins report errors through it. */
    kiln_status (*set_error)(kiln_status status, const char *message);
    /* The core's host allocator: plugins allocate their host memory through
     * it, so it is counted, tagged and fault-injected like the core's. */
    void *(*host_malloc)(size_t size);
    void (*host_free)(void *ptr);
} kiln_bk_host;

/* The entry point a plugin exports. */
typedef const kiln_backend_iface *(*kiln_backend_entry_fn)(uint32_t abi_version);

#ifdef __cplusplus
}
#endif
#endif /* KILN_BACKEND_H */
