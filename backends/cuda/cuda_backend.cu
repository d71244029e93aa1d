/*
 * cuda_backend.cu - the CUDA backend's iface: devices (enumerated without
 * creating a context), device handles (stream, cuBLAS), device buffers,
 * the stream-ordered transient pool, host staging, the ubatch, and graph
 * capture/replay of decode steps.
 *
 * Ownership: a handle owns its stream, cuBLAS handle and workspace, pool
 * (cached and in-use blocks), staging areas, ubatch tables and graphs;
 * device_close() frees all of it after waiting for the stream. Weights/KV
 * buffers are independent of the handle that allocated them. A transient
 * buffer still in use when its handle closes is detached and freed by its
 * own buffer_free().
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_internal.cuh"
#include "hash64.h"

/* ------------------------------------------------------------------------ */
/* errors and logging                                                       */
/* ------------------------------------------------------------------------ */

static const kiln_bk_host *g_host;
int kcu_pdl_mode = 2;

kiln_status kcu_error(kiln_status st, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_host && g_host->set_error) return g_host->set_error(st, msg);
    return st;
}

kiln_status kcu_cuda_error(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so the handle stays usable */
    kiln_status st = e == cudaErrorMemoryAllocation ? KILN_E_OOM_DEVICE : KILN_E_BACKEND;
    return kcu_error(st, "cuda backend: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

void kcu_log(const kiln_bk_device *dev, int32_t level, const char *fmt, ...) {
    if (!dev || !dev->log_fn || level > dev->log_level) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dev->log_fn(level, msg, dev->log_user);
}

static void cuda_set_host(const kiln_bk_host *host) { g_host = host; }

/* Host memory through the core's allocator when it offers one (counted and
 * fault-injected with the rest of kiln's). */
static bool host_has_alloc(void) {
    return g_host && g_host->struct_size >= offsetof(kiln_bk_host, host_free) + sizeof(void *) &&
           g_host->host_malloc && g_host->host_free;
}

void *kcu_calloc(size_t n) {
    void *p = host_has_alloc() ? g_host->host_malloc(n) : malloc(n);
    if (p) memset(p, 0, n);
    return p;
}

void kcu_free(void *p) {
    if (!p) return;
    if (host_has_alloc()) g_host->host_free(p);
    else free(p);
}

int kcu_type_block_bytes(int32_t type) {
    switch (type) {
    case KCU_F32: return 4;
    case KCU_F16: case KCU_BF16: return 2;
    case KCU_Q4_0: return 18;
    case KCU_Q4_1: return 20;
    case KCU_Q5_0: return 22;
    case KCU_Q5_1: return 24;
    case KCU_Q8_0: return 34;
    case KCU_Q4_K: return 144;
    case KCU_Q5_K: return 176;
    case KCU_Q6_K: return 210;
    default: return 0;
    }
}

int kcu_type_block_elems(int32_t type) {
    switch (type) {
    case KCU_F32: case KCU_F16: case KCU_BF16: return 1;
    case KCU_Q4_0: case KCU_Q4_1: case KCU_Q5_0: case KCU_Q5_1: case KCU_Q8_0: return 32;
    case KCU_Q4_K: case KCU_Q5_K: case KCU_Q6_K: return 256;
    default: return 0;
    }
}

kiln_status kcu_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op, const char *name) {
    if (!t || !t->buf) return kcu_error(KILN_E_INVALID_ARG, "cuda %s: %s is NULL", op, name);
    if (type >= 0 && t->type != type)
        return kcu_error(KILN_E_INVALID_ARG, "cuda %s: %s has type %d, expected %d", op, name, t->type, type);
    int be = kcu_type_block_elems(t->type), bb = kcu_type_block_bytes(t->type);
    if (!be) return kcu_error(KILN_E_UNSUPPORTED, "cuda %s: %s has unsupported type %d", op, name, t->type);
    if (t->ne[0] < 0 || t->ne[1] < 0 || t->ne[0] % be)
        return kcu_error(KILN_E_INVALID_ARG, "cuda %s: %s has shape %lldx%lld", op, name,
                         (long long)t->ne[0], (long long)t->ne[1]);
    uint64_t row = (uint64_t)(t->ne[0] / be) * (uint64_t)bb;
    if (t->ne[1] > 1 && t->row_stride < row)
        return kcu_error(KILN_E_INVALID_ARG, "cuda %s: %s rows of %llu bytes %llu apart", op, name,
                         (unsigned long long)row, (unsigned long long)t->row_stride);
    uint64_t span = t->ne[1] ? (uint64_t)(t->ne[1] - 1) * t->row_stride + row : 0;
    if (t->offset > t->buf->size || span > t->buf->size - t->offset)
        return kcu_error(KILN_E_INVALID_ARG, "cuda %s: %s [%llu, +%llu) outside a %llu-byte buffer", op, name,
                         (unsigned long long)t->offset, (unsigned long long)span,
                         (unsigned long long)t->buf->size);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* devices: enumeration creates no context                                  */
/* ------------------------------------------------------------------------ */

static int32_t cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

/* Free memory without a CUDA context: NVML, loaded on first use (absent:
 * mem_free is reported as 0, "unknown"). */
typedef struct { unsigned long long total, free, used; } kcu_nvml_memory;
static struct {
    pthread_once_t once;
    int ok;
    int (*get_handle)(const char *bus_id, void **dev);
    int (*get_memory)(void *dev, kcu_nvml_memory *mem);
} nvml = {PTHREAD_ONCE_INIT, 0, NULL, NULL};

static void nvml_load(void) {
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    nvml.get_handle = (int (*)(const char *, void **))dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    nvml.get_memory = (int (*)(void *, kcu_nvml_memory *))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvml.ok = init && nvml.get_handle && nvml.get_memory && init() == 0;
}

static kiln_status cuda_device_info(int32_t index, kiln_bk_device_info *info) {
    if (!info || info->struct_size < sizeof(uint32_t))
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: device_info needs an info struct");
    if (index < 0 || index >= cuda_device_count())
        return kcu_error(KILN_E_NOT_FOUND, "cuda backend: no device %d (%d found)", index, cuda_device_count());
    cudaDeviceProp p;
    KCU_CHECK(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    kiln_bk_device_info d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    snprintf(d.name, sizeof d.name, "%.127s", p.name);
    d.mem_total = p.totalGlobalMem;
    pthread_once(&nvml.once, nvml_load);
    if (nvml.ok) {
        char bus[32];
        snprintf(bus, sizeof bus, "%08x:%02x:%02x.0", p.pciDomainID, p.pciBusID, p.pciDeviceID);
        void *h = NULL;
        kcu_nvml_memory m;
        if (nvml.get_handle(bus, &h) == 0 && nvml.get_memory(h, &m) == 0) d.mem_free = m.free;
    }
    uint32_t caller_size = info->struct_size;
    memcpy(info, &d, caller_size < sizeof d ? caller_size : sizeof d);
    info->struct_size = caller_size;
    return KILN_OK;
}

static int32_t cuda_supports_type(int32_t index, int32_t type) {
    if (index < 0 || index >= cuda_device_count()) return 0;
    return kcu_type_block_elems(type) != 0;
}

/* ------------------------------------------------------------------------ */
/* device handles                                                           */
/* ------------------------------------------------------------------------ */

#define KCU_CUBLAS_WS (32u << 20)
/* Default cap on cached transient bytes: a 7B prefill ubatch uses a few
 * hundred MiB; a lower cap would free and re-allocate every ubatch. */
#define KCU_POOL_DEFAULT_CAP (1ull << 30)
#define KCU_STAGE_MIN (256u << 10)

/* cuBLAS is created on first use (prefill): a model's own handle, which
 * only uploads weights, never pays for it. Never called while capturing. */
/* Free device memory now (cudaMemGetInfo), for measuring what a library
 * call allocates on the handle's behalf; 0 if the query fails. */
static uint64_t device_free_bytes(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    return free_b;
}

/* What a measured call took: before - after, 0 when memory grew back (a
 * concurrent free elsewhere in the process) or the query failed. */
static uint64_t measured_delta(uint64_t before, uint64_t after) {
    return before && after && before > after ? before - after : 0;
}

kiln_status kcu_cublas(kiln_bk_device *dev) {
    if (dev->cublas) return KILN_OK;
    uint64_t before = device_free_bytes();
    cublasStatus_t cs = cublasCreate(&dev->cublas);
    dev->cublas_bytes = measured_delta(before, device_free_bytes());
    if (cs != CUBLAS_STATUS_SUCCESS) {
        dev->cublas = NULL;
        return kcu_error(cs == CUBLAS_STATUS_ALLOC_FAILED ? KILN_E_OOM_DEVICE : KILN_E_BACKEND,
                         "cuda backend: cublasCreate failed (%d)", (int)cs);
    }
    cudaError_t e = cudaMalloc(&dev->cublas_ws, KCU_CUBLAS_WS);
    if (e != cudaSuccess) {
        cublasDestroy(dev->cublas);
        dev->cublas = NULL;
        dev->cublas_ws = NULL;
        return kcu_cuda_error(e, "cuBLAS workspace");
    }
    dev->cublas_ws_size = KCU_CUBLAS_WS;
    cublasSetStream(dev->cublas, dev->stream);
    cublasSetWorkspace(dev->cublas, dev->cublas_ws, dev->cublas_ws_size);
    cublasSetMathMode(dev->cublas, CUBLAS_DEFAULT_MATH);
    return KILN_OK;
}

kiln_status kcu_use(kiln_bk_device *dev) {
    if (!dev) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: device handle is NULL");
    /* Between graph_begin and graph_end the caller is inside one forward
     * pass on this thread and graph_begin made the device current: skip the
     * call for each of the step's few hundred operations. */
    if (dev->graph_mode) return KILN_OK;
    KCU_CHECK(cudaSetDevice(dev->index), "cudaSetDevice");
    return KILN_OK;
}

static void graphs_clear(kiln_bk_device *dev);
static void pool_release_cached(kiln_bk_device *dev);
static void ub_free(kiln_bk_device *dev);

static kiln_status stage_reserve(kiln_bk_device *dev, size_t cap) {
    if (cap <= dev->stage_cap) return KILN_OK;
    uint8_t *h = NULL, *d = NULL;
    cudaError_t e = cudaMallocHost((void **)&h, cap);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d, cap);
    if (e != cudaSuccess) {
        if (h) cudaFreeHost(h);
        return kcu_cuda_error(e, "staging area");
    }
    if (dev->stage_host) {
        cudaStreamSynchronize(dev->stream);
        cudaFreeHost(dev->stage_host);
        cudaFree(dev->stage_dev);
        graphs_clear(dev); /* recorded copies point into the old area */
    }
    dev->stage_host = h;
    dev->stage_dev = d;
    dev->stage_cap = cap;
    dev->stage_used = 0;
    return KILN_OK;
}

static void cuda_device_close(kiln_bk_device *dev);

static kiln_status cuda_device_open(int32_t index, const kiln_bk_open_params *params, kiln_bk_device **out) {
    if (!out) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: device_open: out is NULL");
    *out = NULL;
    int n = cuda_device_count();
    if (index < 0 || index >= n) return kcu_error(KILN_E_NOT_FOUND, "cuda backend: no device %d (%d found)", index, n);
    kiln_bk_open_params p;
    memset(&p, 0, sizeof p);
    p.log_level = KILN_LOG_ERROR;
    if (params) memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);

    kiln_bk_device *dev = (kiln_bk_device *)kcu_calloc(sizeof *dev);
    if (!dev) return kcu_error(KILN_E_OOM_HOST, "cuda backend: out of memory for a device handle");
    dev->index = index;
    dev->log_fn = p.log_fn;
    dev->log_user = p.log_user;
    dev->log_level = p.log_level;
    dev->pool.cap = KCU_POOL_DEFAULT_CAP; /* pool_set_cap changes it */
    {
        const char *v = getenv("KILN_CUDA_MMV");
        dev->mmv_variant = v ? atoi(v) : 0;
        const char *lay = getenv("KILN_CUDA_LAYOUT");
        dev->no_weight_layout = lay && strcmp(lay, "0") == 0;
        const char *pdl = getenv("KILN_CUDA_PDL");
        if (pdl && *pdl) kcu_pdl_mode = atoi(pdl);
        const char *pr = getenv("KILN_CUDA_PROFILE");
        dev->profile = pr && *pr && strcmp(pr, "0") != 0;
        const char *at = getenv("KILN_CUDA_ATTN");
        dev->attn_tile_only = at && strcmp(at, "tile") == 0;
        dev->attn_steps = at && strcmp(at, "steps") == 0;
        const char *mx = getenv("KILN_CUDA_MIXED");
        dev->no_mixed = mx && strcmp(mx, "0") == 0;
        const char *ai = getenv("KILN_CUDA_ATTN_IDLE");
        dev->attn_idle_wait = ai && strcmp(ai, "wait") == 0;
        const char *sk = getenv("KILN_CUDA_SKIP");
        dev->skip = sk ? (uint32_t)atoi(sk) : 0;
        const char *sy = getenv("KILN_CUDA_SYNC");
        dev->spin_sync = sy && strcmp(sy, "spin") == 0;
        const char *pf = getenv("KILN_CUDA_PREFETCH");
        dev->prefetch_bytes = (uint64_t)(pf && *pf ? atoi(pf) : KCU_PREFETCH_MIB_DEFAULT) << 20;
    }
    kiln_status st = KILN_OK;
    cudaError_t e;
    /* cudaSetDevice creates the primary context of this device only */
    if ((e = cudaSetDevice(index)) != cudaSuccess) { st = kcu_cuda_error(e, "cudaSetDevice"); goto fail; }
    if ((e = cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = kcu_cuda_error(e, "cudaStreamCreate");
        goto fail;
    }
    cudaDeviceGetAttribute(&dev->sm_count, cudaDevAttrMultiProcessorCount, index);
    {
        /* the kernels' early-launch level, in each kernel file's constant memory of this device */
        const int early = kcu_pdl_mode >= 2 ? kcu_pdl_mode - 1 : 0;
        if ((e = kcu_ops_set_pdl_early(early)) != cudaSuccess || (e = kcu_matmul_set_pdl_early(early)) != cudaSuccess ||
            (e = kcu_attn_set_pdl_early(early)) != cudaSuccess) {
            st = kcu_cuda_error(e, "cuda backend: kernel settings");
            goto fail;
        }
    }
    if ((st = stage_reserve(dev, KCU_STAGE_MIN))) goto fail;
    if (dev->profile && (cudaEventCreate(&dev->ev0) != cudaSuccess || cudaEventCreate(&dev->ev1) != cudaSuccess ||
                         cudaEventCreate(&dev->ev2) != cudaSuccess)) {
        (void)cudaGetLastError();
        dev->profile = false;
    }
    {
        cudaDeviceProp prop;
        cudaGetDeviceProperties(&prop, index);
        kcu_log(dev, KILN_LOG_INFO, "cuda backend: device %d (%s, %d SMs, %.1f GiB) open", index, prop.name,
                dev->sm_count, prop.totalGlobalMem / 1073741824.0);
    }
    *out = dev;
    return KILN_OK;
fail:
    cuda_device_close(dev);
    return st;
}

static void pool_detach_in_use(kiln_bk_device *dev);

static void cuda_device_close(kiln_bk_device *dev) {
    if (!dev) return;
    cudaSetDevice(dev->index);
    if (dev->graph_mode == 1) {
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(dev->stream, &g);
        if (g) cudaGraphDestroy(g);
    }
    if (dev->stream) cudaStreamSynchronize(dev->stream);
    if (dev->profile) {
        kcu_log(dev, KILN_LOG_ERROR,
                "cuda profile: graphs: %llu captured, %llu captures failed (last error %d), %llu replays, %llu "
                "replays that did not match",
                (unsigned long long)dev->n_captures, (unsigned long long)dev->n_capture_fail,
                dev->last_capture_error, (unsigned long long)dev->n_replays, (unsigned long long)dev->n_mismatch);
        if (dev->prof_n)
            kcu_log(dev, KILN_LOG_ERROR,
                    "cuda profile: %llu graph launches of %llu nodes: GPU %.3f ms each, %.3f ms wall from one "
                    "launch to the next, %.3f ms of it issuing the replayed operations",
                    (unsigned long long)dev->prof_n, (unsigned long long)dev->prof_nodes,
                    dev->prof_gpu_ms / dev->prof_n, dev->prof_wall_ms / dev->prof_n,
                    dev->prof_issue_ms / (double)dev->n_replays);
        if (dev->prof_n)
            kcu_log(dev, KILN_LOG_ERROR,
                    "cuda profile: host ms per replay: set_ubatch %.3f, graph_begin %.3f, graph launch %.3f, "
                    "download (incl. waiting for the GPU) %.3f; outside the backend from a download to the "
                    "next set_ubatch %.3f",
                    dev->prof_ub_ms / dev->prof_n, dev->prof_begin_ms / dev->prof_n,
                    dev->prof_launch_ms / dev->prof_n, dev->prof_dl_ms / dev->prof_n, dev->prof_core_ms / dev->prof_n);
        if (dev->prof_dl_n)
            kcu_log(dev, KILN_LOG_ERROR,
                    "cuda profile: per download after a replay: graph end to copy end on the GPU %.3f ms, "
                    "host copy out of the staging %.3f ms; host time from the launch to the logits minus the GPU's "
                    "time for the same (submission and wake-up latency) %.3f ms",
                    dev->prof_copy_gpu_ms / dev->prof_dl_n, dev->prof_after_sync_ms / dev->prof_dl_n,
                    dev->prof_latency_ms / dev->prof_dl_n);
        if (dev->ev0) cudaEventDestroy(dev->ev0);
        if (dev->ev1) cudaEventDestroy(dev->ev1);
        if (dev->ev2) cudaEventDestroy(dev->ev2);
    }
    graphs_clear(dev);
    kcu_xq_release(dev);
    pool_detach_in_use(dev);
    pool_release_cached(dev);
    ub_free(dev);
    if (dev->stage_host) cudaFreeHost(dev->stage_host);
    if (dev->stage_dev) cudaFree(dev->stage_dev);
    if (dev->cublas) cublasDestroy(dev->cublas);
    if (dev->cublas_ws) cudaFree(dev->cublas_ws);
    if (dev->stream) cudaStreamDestroy(dev->stream);
    (void)cudaGetLastError();
    kcu_free(dev);
}

static kiln_status cuda_synchronize(kiln_bk_device *dev) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: synchronize inside a graph");
    kcu_xq_release(dev);
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "stream synchronize");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* the transient pool                                                       */
/* ------------------------------------------------------------------------ */

static void list_push(kiln_bk_buffer **head, kiln_bk_buffer *b) {
    b->prev = NULL;
    b->next = *head;
    if (*head) (*head)->prev = b;
    *head = b;
}

static void list_remove(kiln_bk_buffer **head, kiln_bk_buffer *b) {
    if (b->prev) b->prev->next = b->next;
    else *head = b->next;
    if (b->next) b->next->prev = b->prev;
    b->prev = b->next = NULL;
}

/* Requests round up to 4 KiB, or to 1 MiB above 16 MiB, so that ubatches
 * of similar size share blocks. */
static uint64_t pool_round(uint64_t n) {
    uint64_t g = n > (16u << 20) ? (1u << 20) : 4096u;
    if (n == 0) n = 1;
    return (n + g - 1) / g * g;
}

/* Frees cached blocks (least recently freed first) until bytes_cached <=
 * limit. Graph recordings may point into them: they are forgotten. Never
 * while capturing (cudaFree would break the capture): graph_end trims. */
static void pool_trim(kiln_bk_device *dev, uint64_t limit) {
    struct kcu_pool *pool = &dev->pool;
    if (pool->bytes_cached <= limit || dev->graph_mode == 1) return;
    cudaStreamSynchronize(dev->stream);
    graphs_clear(dev);
    while (pool->bytes_cached > limit && pool->cached) {
        kiln_bk_buffer *b = pool->cached;
        while (b->next) b = b->next; /* the oldest is last */
        list_remove(&pool->cached, b);
        pool->bytes_cached -= b->capacity;
        cudaFree(b->ptr);
        kcu_free(b);
    }
}

static void pool_release_cached(kiln_bk_device *dev) { pool_trim(dev, 0); }

kiln_status kcu_pool_alloc(kiln_bk_device *dev, uint64_t size, kiln_bk_buffer **out) {
    struct kcu_pool *pool = &dev->pool;
    uint64_t need = pool_round(size);
    kiln_bk_buffer *best = NULL;
    for (kiln_bk_buffer *b = pool->cached; b; b = b->next)
        if (b->capacity >= need && b->capacity <= 2 * need && (!best || b->capacity < best->capacity)) best = b;
    if (best) {
        list_remove(&pool->cached, best);
        pool->bytes_cached -= best->capacity;
    } else {
        best = (kiln_bk_buffer *)kcu_calloc(sizeof *best);
        if (!best) return kcu_error(KILN_E_OOM_HOST, "cuda pool: out of host memory");
        cudaError_t e = cudaMalloc(&best->ptr, need);
        if (e == cudaErrorMemoryAllocation && pool->cached && dev->graph_mode != 1) {
            (void)cudaGetLastError();
            pool_release_cached(dev); /* memory pressure: give the cache back, retry */
            e = cudaMalloc(&best->ptr, need);
        }
        if (e != cudaSuccess) {
            kcu_free(best);
            kiln_status st = kcu_cuda_error(e, "pool allocation");
            return kcu_error(st, "cuda pool: cannot allocate %llu bytes on device %d", (unsigned long long)need,
                             dev->index);
        }
        best->capacity = need;
        best->device = dev->index;
        pool->n_device_allocs++;
    }
    best->size = size;
    best->usage = KILN_BK_BUF_TRANSIENT;
    best->owner = dev;
    list_push(&pool->in_use, best);
    pool->bytes_in_use += best->capacity;
    pool->n_allocs++;
    uint64_t held = pool->bytes_in_use + pool->bytes_cached;
    if (held > pool->bytes_peak) pool->bytes_peak = held;
    *out = best;
    return KILN_OK;
}

/* Stream-ordered: the block may be handed out again at once, since its next
 * user is enqueued on the same stream after everything that used it. */
void kcu_pool_free(kiln_bk_buffer *b) {
    if (!b) return;
    kiln_bk_device *dev = b->owner;
    struct kcu_pool *pool = &dev->pool;
    list_remove(&pool->in_use, b);
    pool->bytes_in_use -= b->capacity;
    pool->n_frees++;
    list_push(&pool->cached, b);
    pool->bytes_cached += b->capacity;
    if (pool->cap != 0) pool_trim(dev, pool->cap);
}

static void pool_detach_in_use(kiln_bk_device *dev) {
    uint64_t n = 0;
    while (dev->pool.in_use) {
        kiln_bk_buffer *b = dev->pool.in_use;
        list_remove(&dev->pool.in_use, b);
        b->owner = NULL;
        n++;
    }
    if (n) kcu_log(dev, KILN_LOG_WARN, "cuda backend: device closed with %llu transient buffers in use",
                   (unsigned long long)n);
}

static kiln_status cuda_pool_stats(kiln_bk_device *dev, kiln_bk_pool_stats *stats) {
    if (!dev || !stats || stats->struct_size < sizeof(uint32_t))
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: pool_stats: NULL device or stats");
    kiln_bk_pool_stats s;
    memset(&s, 0, sizeof s);
    s.bytes_in_use = dev->pool.bytes_in_use;
    s.bytes_cached = dev->pool.bytes_cached;
    s.bytes_peak = dev->pool.bytes_peak;
    s.cap = dev->pool.cap;
    s.n_allocs = dev->pool.n_allocs;
    s.n_frees = dev->pool.n_frees;
    s.n_device_allocs = dev->pool.n_device_allocs;
    /* the handle's own memory outside buffers and the pool */
    s.bytes_internal = (dev->cublas ? dev->cublas_bytes : 0) + (dev->cublas_ws ? dev->cublas_ws_size : 0) +
                       (dev->stage_dev ? dev->stage_cap : 0) + (dev->ub_dev ? dev->ub_dev_cap + KCU_ATTN_COUNTERS * sizeof(int32_t) : 0);
    for (int i = 0; i < dev->n_graphs; i++) s.bytes_internal += dev->graphs[i].device_bytes;
    s.bytes_internal_host = dev->stage_host ? dev->stage_cap : 0;
    uint32_t caller_size = stats->struct_size;
    memcpy(stats, &s, caller_size < sizeof s ? caller_size : sizeof s);
    stats->struct_size = caller_size;
    return KILN_OK;
}

static void cuda_pool_set_cap(kiln_bk_device *dev, uint64_t cap) {
    if (!dev || kcu_use(dev)) return;
    dev->pool.cap = cap;
    if (cap) pool_trim(dev, cap);
}

static kiln_status cuda_pool_purge(kiln_bk_device *dev) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: purge inside a graph");
    kcu_xq_release(dev);
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "purge: stream synchronize");
    graphs_clear(dev);
    pool_release_cached(dev);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* buffers                                                                  */
/* ------------------------------------------------------------------------ */

static kiln_status cuda_buffer_alloc(kiln_bk_device *dev, uint64_t size, uint32_t usage, kiln_bk_buffer **out) {
    if (!out) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: buffer_alloc: out is NULL");
    *out = NULL;
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (usage > KILN_BK_BUF_STAGING) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: unknown usage %u", usage);
    if (usage == KILN_BK_BUF_TRANSIENT) return kcu_pool_alloc(dev, size, out);
    kiln_bk_buffer *b = (kiln_bk_buffer *)kcu_calloc(sizeof *b);
    if (!b) return kcu_error(KILN_E_OOM_HOST, "cuda backend: out of host memory for a buffer");
    if (size) {
        cudaError_t e = cudaMalloc(&b->ptr, size);
        if (e == cudaErrorMemoryAllocation && dev->pool.cached && dev->graph_mode != 1) {
            (void)cudaGetLastError();
            pool_release_cached(dev); /* the pool's cache gives way to lasting buffers */
            e = cudaMalloc(&b->ptr, size);
        }
        if (e != cudaSuccess) {
            kcu_free(b);
            st = kcu_cuda_error(e, "buffer allocation");
            return kcu_error(st, "cuda backend: cannot allocate %llu bytes (%s) on device %d",
                             (unsigned long long)size, usage == KILN_BK_BUF_KV ? "kv" : "weights", dev->index);
        }
    }
    b->size = b->capacity = size;
    b->usage = usage;
    b->device = dev->index;
    *out = b;
    return KILN_OK;
}

static void cuda_buffer_free(kiln_bk_buffer *b) {
    if (!b) return;
    if (b->owner) {
        cudaSetDevice(b->owner->index);
        kcu_pool_free(b);
        return;
    }
    if (b->ptr) {
        cudaSetDevice(b->device);
        cudaFree(b->ptr); /* waits for work that may still use it */
    }
    kcu_free(b);
}

static bool range_ok(const kiln_bk_buffer *b, uint64_t off, uint64_t n) {
    return off <= b->size && n <= b->size - off;
}

static kiln_status cuda_buffer_upload(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t off, const void *src,
                                      uint64_t n) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (!dst || (!src && n)) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: upload: NULL buffer or source");
    if (!range_ok(dst, off, n))
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: upload [%llu, +%llu) outside %llu bytes",
                         (unsigned long long)off, (unsigned long long)n, (unsigned long long)dst->size);
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: upload inside a graph");
    if (!n) return KILN_OK;
    KCU_CHECK(cudaMemcpyAsync((uint8_t *)dst->ptr + off, src, n, cudaMemcpyHostToDevice, dev->stream), "upload");
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "upload: synchronize");
    return KILN_OK;
}

static kiln_status buffer_download(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t off, void *dst,
                                   uint64_t n);
static kiln_status cuda_buffer_download(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t off, void *dst,
                                        uint64_t n) {
    if (!dev || !dev->profile) return buffer_download(dev, src, off, dst, n);
    const double t0 = kcu_now_ms();
    kiln_status st = buffer_download(dev, src, off, dst, n);
    dev->prof_dl_end = kcu_now_ms();
    dev->prof_dl_ms += dev->prof_dl_end - t0;
    return st;
}

static kiln_status buffer_download(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t off, void *dst,
                                   uint64_t n) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (!src || (!dst && n)) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: download: NULL buffer or destination");
    if (!range_ok(src, off, n))
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: download [%llu, +%llu) outside %llu bytes",
                         (unsigned long long)off, (unsigned long long)n, (unsigned long long)src->size);
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: download inside a graph");
    kcu_xq_release(dev);
    /* A small download (a step's logits) goes through the pinned staging
     * area past what this step staged: a copy from pageable memory would be
     * staged by the driver, synchronously, at a lower rate. The stream
     * orders it after the step's copies out of the area. */
    const size_t used = (dev->stage_used + 255) & ~(size_t)255;
    if (n && dev->stage_host && used <= dev->stage_cap && n <= dev->stage_cap - used) {
        KCU_CHECK(cudaMemcpyAsync(dev->stage_host + used, (const uint8_t *)src->ptr + off, n, cudaMemcpyDeviceToHost,
                                  dev->stream),
                  "download");
        if (dev->profile && dev->ev_pending) cudaEventRecord(dev->ev2, dev->stream);
        cudaError_t se;
        if (dev->spin_sync) /* experiment: no sleeping wake-up */
            while ((se = cudaStreamQuery(dev->stream)) == cudaErrorNotReady) {
            }
        else
            se = cudaStreamSynchronize(dev->stream);
        KCU_CHECK(se, "download: synchronize");
        const double t1 = dev->profile ? kcu_now_ms() : 0.0;
        memcpy(dst, dev->stage_host + used, n);
        if (dev->profile && dev->ev_pending) {
            float ms = 0;
            cudaEventElapsedTime(&ms, dev->ev1, dev->ev2);
            dev->prof_copy_gpu_ms += ms;
            cudaEventElapsedTime(&ms, dev->ev0, dev->ev2);
            dev->prof_latency_ms += t1 - dev->prof_t_launch - ms;
            dev->prof_after_sync_ms += kcu_now_ms() - t1;
            dev->prof_dl_n++;
        }
        return KILN_OK;
    }
    if (n) KCU_CHECK(cudaMemcpyAsync(dst, (const uint8_t *)src->ptr + off, n, cudaMemcpyDeviceToHost, dev->stream),
                     "download");
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "download: synchronize");
    return KILN_OK;
}

static kiln_status cuda_buffer_copy(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t doff, const kiln_bk_buffer *src,
                                    uint64_t soff, uint64_t n) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (!dst || !src) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: copy: NULL buffer");
    if (!range_ok(src, soff, n) || !range_ok(dst, doff, n))
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: copy of %llu bytes out of range", (unsigned long long)n);
    if (!n) return KILN_OK;
    struct { const void *d, *s; uint64_t n; } args = {(uint8_t *)dst->ptr + doff, (const uint8_t *)src->ptr + soff, n};
    if (!kcu_op(dev, &args, sizeof args)) return KILN_OK;
    if (src->device == dst->device) {
        KCU_CHECK(cudaMemcpyAsync((void *)args.d, args.s, n, cudaMemcpyDeviceToDevice, dev->stream), "copy");
    } else { /* between GPUs (a model split over devices) */
        KCU_CHECK(cudaMemcpyPeerAsync((void *)args.d, dst->device, args.s, src->device, n, dev->stream), "peer copy");
    }
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* host staging                                                             */
/* ------------------------------------------------------------------------ */

kiln_status kcu_stage(kiln_bk_device *dev, const void *src, size_t bytes, const void **out) {
    size_t need = (bytes + 255) & ~(size_t)255;
    if (dev->stage_used + need > dev->stage_cap) {
        if (dev->graph_mode) {
            /* cannot wait while recording or replaying: graph_end will ask
             * for the operations again, eagerly; nothing recorded here runs */
            dev->graph_failed = true;
            *out = dev->stage_dev;
            return KILN_OK;
        }
        KCU_CHECK(cudaStreamSynchronize(dev->stream), "staging: synchronize");
        dev->stage_used = 0;
        if (need > dev->stage_cap) {
            kiln_status st = stage_reserve(dev, need * 2);
            if (st) return st;
        }
    }
    uint8_t *h = dev->stage_host + dev->stage_used, *d = dev->stage_dev + dev->stage_used;
    dev->stage_used += need;
    if (bytes) memcpy(h, src, bytes);
    *out = d;
    if (dev->graph_mode == 2 || !bytes) return KILN_OK; /* the graph holds the copy */
    KCU_CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, dev->stream), "staging copy");
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* ubatch                                                                   */
/* ------------------------------------------------------------------------ */

static void ub_free(kiln_bk_device *dev) {
    if (dev->ub_dev) cudaFree(dev->ub_dev);
    dev->ub_dev = NULL;
    dev->ub_dev_cap = 0;
    dev->attn_count = NULL;
    kcu_free(dev->ub.tiles_host);
    memset(&dev->ub, 0, sizeof dev->ub);
}

static kiln_status ubatch_validate(const kiln_bk_ubatch *u) {
    uint32_t n = u->n_tokens;
    if (n && !u->pos) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: pos is NULL");
    if (u->kv_cell)
        for (uint32_t i = 0; i < n; i++)
            if (u->kv_cell[i] < 0 || (uint32_t)u->kv_cell[i] >= u->n_cells)
                return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: token %u: kv cell %d outside [0, %u)", i,
                                 u->kv_cell[i], u->n_cells);
    if (!u->attn_table != !u->attn_n_kv)
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: attn_table and attn_n_kv must come together");
    if (!u->attn_table) return KILN_OK;
    if (u->n_block_entries && !u->block_tables)
        return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: block_tables is NULL");
    for (uint32_t i = 0; i < n; i++) {
        int32_t n_kv = u->attn_n_kv[i];
        if (n_kv < 0) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: token %u: attn_n_kv %d", i, n_kv);
        if (n_kv == 0) continue;
        if (u->block_size == 0) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: block_size is 0");
        uint64_t nb = ((uint64_t)n_kv + u->block_size - 1) / u->block_size;
        int32_t t0 = u->attn_table[i];
        if (t0 < 0 || (uint64_t)t0 + nb > u->n_block_entries)
            return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: token %u: block table outside %u entries", i,
                             u->n_block_entries);
        for (uint64_t j = 0; j < nb; j++) {
            int32_t b = u->block_tables[(uint64_t)t0 + j];
            if (b < 0 || ((uint64_t)b + 1) * u->block_size > u->n_cells)
                return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: token %u: block %d outside %u cells", i,
                                 b, u->n_cells);
        }
    }
    return KILN_OK;
}

/* The tables go to one device array [pos | kv_cell | attn_table | attn_n_kv
 * | block_tables], replaced only when it must grow (graphs hold its
 * address), through the pinned staging area. */
static kiln_status set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ubp);
static kiln_status cuda_set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ubp) {
    if (!dev || !dev->profile) return set_ubatch(dev, ubp);
    const double t0 = kcu_now_ms();
    if (dev->prof_dl_end > 0) { /* the caller's time between a step's logits and the next step */
        dev->prof_core_ms += t0 - dev->prof_dl_end;
        dev->prof_dl_end = 0;
    }
    kiln_status st = set_ubatch(dev, ubp);
    dev->prof_ub_ms += kcu_now_ms() - t0;
    return st;
}

/* Runs of up to `max` consecutive tokens with the same block table, as
 * (first token, count) pairs into out; returns how many. */
static uint32_t build_tiles(const int32_t *attn_table, uint32_t n, int32_t max, int32_t *out) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i == 0 || attn_table[i] != attn_table[i - 1] || out[2 * k - 1] == max) {
            out[2 * k] = (int32_t)i;
            out[2 * k + 1] = 0;
            k++;
        }
        out[2 * k - 1]++;
    }
    return k;
}

static kiln_status set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ubp) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (!ubp) return kcu_error(KILN_E_INVALID_ARG, "cuda backend: set_ubatch: ubatch is NULL");
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: set_ubatch inside a graph");
    kcu_xq_release(dev);
    kiln_bk_ubatch u;
    memset(&u, 0, sizeof u);
    memcpy(&u, ubp, ubp->struct_size < sizeof u ? ubp->struct_size : sizeof u);
    if ((st = ubatch_validate(&u))) return st;
    uint32_t n = u.n_tokens, nb = u.n_block_entries;
    /* prefill attention tiles (see cuda_attn.cu, cuda_attn_mma.cu): runs
     * of up to 8 and up to 64 consecutive tokens with the same block table */
    uint32_t n_tiles = 0, n_tiles64 = 0;
    if (u.attn_table && n > 8) {
        if (4 * n > dev->ub.tiles_cap) {
            int32_t *t = (int32_t *)kcu_calloc((size_t)4 * n * sizeof(int32_t));
            if (!t) return kcu_error(KILN_E_OOM_HOST, "cuda backend: set_ubatch: out of memory for tiles");
            kcu_free(dev->ub.tiles_host);
            dev->ub.tiles_host = t;
            dev->ub.tiles_cap = 4 * n;
        }
        n_tiles = build_tiles(u.attn_table, n, 8, dev->ub.tiles_host);
        n_tiles64 = build_tiles(u.attn_table, n, 64, dev->ub.tiles_host + 2 * n_tiles);
    }
    size_t need = ((size_t)4 * n + nb + 2 * n_tiles + 2 * n_tiles64 + 1) * sizeof(int32_t);
    if (need > dev->ub_dev_cap) {
        int32_t *d = NULL;
        size_t cap = (need * 2 + 255) & ~(size_t)255;
        cudaError_t e = cudaMalloc((void **)&d, cap + KCU_ATTN_COUNTERS * sizeof(int32_t));
        if (e != cudaSuccess) return kcu_cuda_error(e, "ubatch tables");
        e = cudaMemsetAsync((uint8_t *)d + cap, 0, KCU_ATTN_COUNTERS * sizeof(int32_t), dev->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(dev->stream);
        if (e != cudaSuccess) {
            cudaFree(d);
            return kcu_cuda_error(e, "set_ubatch: ubatch tables");
        }
        if (dev->ub_dev) cudaFree(dev->ub_dev);
        dev->ub_dev = d;
        dev->ub_dev_cap = cap;
        dev->attn_count = (int32_t *)((uint8_t *)d + cap);
        graphs_clear(dev);
    }
    /* the pinned source of the previous copies must be free to overwrite */
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "set_ubatch: synchronize");
    dev->stage_used = 0;
    if (need > dev->stage_cap && (st = stage_reserve(dev, need * 2))) return st;
    int32_t *h = (int32_t *)dev->stage_host;
    memset(h, 0, need);
    size_t b4 = (size_t)n * sizeof(int32_t);
    int32_t max_n_kv = 0;
    if (n) memcpy(h, u.pos, b4);
    if (u.kv_cell && n) memcpy(h + n, u.kv_cell, b4);
    if (u.attn_table && n) {
        memcpy(h + 2 * n, u.attn_table, b4);
        memcpy(h + 3 * n, u.attn_n_kv, b4);
        for (uint32_t i = 0; i < n; i++) max_n_kv = u.attn_n_kv[i] > max_n_kv ? u.attn_n_kv[i] : max_n_kv;
    }
    if (nb) memcpy(h + 4 * n, u.block_tables, (size_t)nb * sizeof(int32_t));
    if (n_tiles) memcpy(h + 4 * n + nb, dev->ub.tiles_host, (size_t)2 * (n_tiles + n_tiles64) * sizeof(int32_t));
    KCU_CHECK(cudaMemcpyAsync(dev->ub_dev, h, need, cudaMemcpyHostToDevice, dev->stream), "set_ubatch: copy");
    dev->stage_used = (need + 255) & ~(size_t)255;
    struct kcu_ubatch *ub = &dev->ub;
    ub->set = true;
    ub->n_tokens = n;
    ub->n_block_entries = nb;
    ub->block_size = u.block_size;
    ub->n_cells = u.n_cells;
    ub->has_kv = u.kv_cell != NULL;
    ub->has_attn = u.attn_table != NULL;
    ub->max_n_kv = max_n_kv;
    ub->pos = dev->ub_dev;
    ub->kv_cell = dev->ub_dev + n;
    ub->attn_table = dev->ub_dev + 2 * n;
    ub->attn_n_kv = dev->ub_dev + 3 * n;
    ub->block_tables = dev->ub_dev + 4 * n;
    ub->tiles = dev->ub_dev + 4 * n + nb;
    ub->n_tiles = n_tiles;
    ub->tiles64 = ub->tiles + 2 * n_tiles;
    ub->n_tiles64 = n_tiles64;
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* graphs                                                                   */
/* ------------------------------------------------------------------------ */

/* Operation arguments are hashed with kiln_hash64 (hash64.h: 8 bytes per
 * step; a decode step hashes ~300 operations between two launches). */
static void graphs_clear(kiln_bk_device *dev) {
    for (int i = 0; i < dev->n_graphs; i++) cudaGraphExecDestroy(dev->graphs[i].exec);
    dev->n_graphs = 0;
}

void kcu_xq_release(kiln_bk_device *dev) {
    if (dev->xq_buf) kcu_pool_free(dev->xq_buf);
    dev->xq_buf = NULL;
    dev->xq_src = NULL;
}

kiln_status kcu_xq_produce(kiln_bk_device *dev, const void *dst, uint64_t row_stride, int64_t K, int64_t rows,
                           int8_t **xq, float **xd) {
    *xq = NULL;
    *xd = NULL;
    if (!dev->int8_seen || rows > 8 || rows < 1 || K % 32 || dev->mmv_variant == 6) return KILN_OK;
    kcu_xq_release(dev);
    kiln_status st = kcu_pool_alloc(dev, (uint64_t)rows * K + (uint64_t)rows * (K / 32) * sizeof(float), &dev->xq_buf);
    if (st) return st;
    *xq = (int8_t *)dev->xq_buf->ptr;
    *xd = (float *)(*xq + (uint64_t)rows * K);
    dev->xq_src = dst;
    dev->xq_stride = row_stride;
    dev->xq_K = K;
    dev->xq_nt = rows;
    return KILN_OK;
}

bool kcu_op_matmul(kiln_bk_device *dev, const void *args, size_t n) {
    if (!dev->graph_mode) return true;
    dev->graph_hash = kiln_hash64(dev->graph_hash, args, n);
    return dev->graph_mode == 1;
}

bool kcu_op(kiln_bk_device *dev, const void *args, size_t n) {
    if (dev->graph_mode != 2) kcu_xq_release(dev);
    if (!dev->graph_mode) return true;
    dev->graph_hash = kiln_hash64(dev->graph_hash, args, n);
    return dev->graph_mode == 1;
}

static kiln_status graph_begin(kiln_bk_device *dev, uint64_t key);
static kiln_status cuda_graph_begin(kiln_bk_device *dev, uint64_t key) {
    if (!dev || !dev->profile) return graph_begin(dev, key);
    const double t0 = kcu_now_ms();
    kiln_status st = graph_begin(dev, key);
    dev->prof_begin_ms += kcu_now_ms() - t0;
    return st;
}

static kiln_status graph_begin(kiln_bk_device *dev, uint64_t key) {
    kiln_status st = kcu_use(dev);
    if (st) return st;
    if (dev->graph_mode) return kcu_error(KILN_E_INTERNAL, "cuda backend: graph_begin inside a graph");
    kcu_xq_release(dev);
    /* the staged inputs of the last launch must have been read */
    KCU_CHECK(cudaStreamSynchronize(dev->stream), "graph_begin: synchronize");
    if (dev->profile && dev->ev_pending) {
        float ms = 0;
        cudaEventElapsedTime(&ms, dev->ev0, dev->ev1);
        dev->prof_gpu_ms += ms;
        dev->ev_pending = false;
    }
    if (dev->stage_cap < (1u << 20) && (st = stage_reserve(dev, 1u << 20))) return st;
    if (dev->profile) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        dev->prof_issue_t0 = ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
    }
    dev->stage_used = 0;
    dev->graph_failed = false;
    dev->graph_key = key;
    uint64_t h = kiln_hash64(0xcbf29ce484222325ull, &key, sizeof key);
    const struct kcu_ubatch *ub = &dev->ub;
    const void *ptrs[2] = {dev->ub_dev, dev->stage_dev};
    h = kiln_hash64(h, ptrs, sizeof ptrs);
    uint32_t shape[4] = {ub->n_tokens, ub->n_block_entries, ub->block_size, ub->n_cells};
    h = kiln_hash64(h, shape, sizeof shape);
    dev->graph_hash = h;
    for (int i = 0; i < dev->n_graphs; i++)
        if (dev->graphs[i].key == key) {
            dev->graph_mode = 2;
            return KILN_OK;
        }
    KCU_CHECK(cudaStreamBeginCapture(dev->stream, cudaStreamCaptureModeRelaxed), "begin capture");
    dev->graph_mode = 1;
    return KILN_OK;
}

static kiln_status cuda_graph_end(kiln_bk_device *dev, int32_t *redo) {
    int32_t dummy;
    if (!redo) redo = &dummy;
    *redo = 0;
    kiln_status st = kcu_use(dev);
    if (st) return st;
    int mode = dev->graph_mode;
    if (mode == 1) kcu_xq_release(dev); /* recorded: its memory is the graph's now */
    dev->graph_mode = 0;
    if (mode == 0) return kcu_error(KILN_E_INTERNAL, "cuda backend: graph_end without graph_begin");
    if (mode == 2) {
        for (int i = 0; i < dev->n_graphs; i++) {
            if (dev->graphs[i].key != dev->graph_key) continue;
            if (dev->graphs[i].hash != dev->graph_hash || dev->graph_failed) {
                dev->n_mismatch++;
                cudaGraphExecDestroy(dev->graphs[i].exec);
                dev->graphs[i] = dev->graphs[--dev->n_graphs];
                *redo = 1;
                return KILN_OK;
            }
            dev->n_replays++;
            if (dev->profile) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                const double now = ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
                dev->prof_issue_ms += now - dev->prof_issue_t0;
                if (dev->prof_last_end > 0) {
                    dev->prof_wall_ms += now - dev->prof_last_end;
                    dev->prof_n++;
                }
                dev->prof_last_end = now;
                dev->prof_t_launch = now;
                cudaEventRecord(dev->ev0, dev->stream);
            }
            const double tl = dev->profile ? kcu_now_ms() : 0.0;
            KCU_CHECK(cudaGraphLaunch(dev->graphs[i].exec, dev->stream), "graph launch");
            if (dev->profile) dev->prof_launch_ms += kcu_now_ms() - tl;
            if (dev->profile) {
                cudaEventRecord(dev->ev1, dev->stream);
                dev->ev_pending = true;
            }
            return KILN_OK;
        }
        *redo = 1;
        return KILN_OK;
    }
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(dev->stream, &g);
    cudaGraphExec_t exec = NULL;
    uint64_t before = device_free_bytes();
    if (e == cudaSuccess && !dev->graph_failed) e = cudaGraphInstantiate(&exec, g, 0);
    /* instantiating and uploading a graph takes device memory of its own */
    if (e == cudaSuccess && exec) e = cudaGraphUpload(exec, dev->stream);
    uint64_t graph_bytes = e == cudaSuccess ? measured_delta(before, device_free_bytes()) : 0;
    if (e == cudaSuccess && g && dev->profile) {
        size_t nn = 0;
        cudaGraphGetNodes(g, NULL, &nn);
        dev->prof_nodes = nn;
    }
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess || dev->graph_failed) {
        dev->n_capture_fail++;
        dev->last_capture_error = dev->graph_failed ? -1 : (int)e;
        (void)cudaGetLastError();
        if (exec) cudaGraphExecDestroy(exec);
        *redo = 1; /* nothing recorded ran: the caller issues the operations again */
        if (dev->pool.cap) pool_trim(dev, dev->pool.cap);
        return KILN_OK;
    }
    if (dev->n_graphs == KCU_MAX_GRAPHS) {
        cudaGraphExecDestroy(dev->graphs[0].exec);
        memmove(dev->graphs, dev->graphs + 1, sizeof dev->graphs[0] * (KCU_MAX_GRAPHS - 1));
        dev->n_graphs--;
    }
    dev->n_captures++;
    dev->graphs[dev->n_graphs].key = dev->graph_key;
    dev->graphs[dev->n_graphs].hash = dev->graph_hash;
    dev->graphs[dev->n_graphs].exec = exec;
    dev->graphs[dev->n_graphs].device_bytes = graph_bytes;
    dev->n_graphs++;
    KCU_CHECK(cudaGraphLaunch(exec, dev->stream), "graph launch");
    if (dev->pool.cap) pool_trim(dev, dev->pool.cap); /* deferred while capturing */
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* the iface                                                                */
/* ------------------------------------------------------------------------ */

static const kiln_backend_iface cuda_iface = {
    sizeof(kiln_backend_iface),
    KILN_BACKEND_ABI_VERSION,
    "cuda",
    cuda_device_count,
    cuda_device_info,
    cuda_supports_type,
    cuda_device_open,
    cuda_device_close,
    cuda_buffer_alloc,
    NULL, /* buffer_wrap_host: weights are copied to the device */
    cuda_buffer_free,
    cuda_buffer_upload,
    cuda_buffer_download,
    cuda_buffer_copy,
    NULL, /* buffer_host_ptr: device memory is not mapped */
    cuda_synchronize,
    cuda_pool_stats,
    cuda_pool_set_cap,
    cuda_pool_purge,
    cuda_set_ubatch,
    kcu_get_rows,
    kcu_rms_norm,
    kcu_matmul,
    kcu_add,
    kcu_rope,
    kcu_swiglu,
    kcu_kv_store,
    kcu_attention,
    cuda_set_host,
    cuda_graph_begin,
    cuda_graph_end,
    kcu_add_rms_norm,
    kcu_matmul_multi,
    kcu_rope_kv_store,
    kcu_weight_prepare,
    kcu_rope_kv_attention,
    NULL, /* matmul_add_rms_norm: the core's matmul, then add_rms_norm */
    NULL, /* matmul_swiglu: the core's matmul_multi, then swiglu */
    NULL, /* prenorm_fused, matmul_add, rms_norm_matmul_multi, rms_norm_matmul_swiglu: */
    NULL, /* the norm stays after the product before it (PDL hides a launch there) */
    NULL,
    NULL,
};

extern "C" __attribute__((visibility("default"))) const kiln_backend_iface *kiln_backend_entry(uint32_t abi_version) {
    return abi_version == KILN_BACKEND_ABI_VERSION ? &cuda_iface : NULL;
}
