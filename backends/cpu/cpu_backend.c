/*
 * cpu_backend.c - the CPU backend's iface: the one device, device handles,
 * host buffers, the transient pool, the stored ubatch and the scratch area
 * the operations share. The operations themselves live in cpu_ops.c,
 * cpu_attn.c and cpu_matmul.c.
 *
 * Execution is synchronous: every operation has finished when its call
 * returns, so synchronize() has nothing to wait for, and buffer_free() and
 * pool_purge() never race with queued work.
 *
 * Ownership: device_open() returns a handle that owns its thread pool, its
 * transient pool (cached and in-use blocks), its ubatch copy and its
 * scratch; device_close() frees all of it. Buffers other than transient ones
 * are independent of the handle that allocated them (the ABI lets any handle
 * of the device use them). A transient buffer belongs to its handle's pool:
 * free it on the thread that uses that handle (the pool has no lock, like
 * the rest of the handle). One still in use when its handle closes is
 * detached from the pool and freed by its own buffer_free().
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "cpu_backend.h"
#include "cpu_internal.h"
#include "quant.h"

/* Transient blocks are rounded up to this so that requests of similar size
 * share blocks. */
#define KILN_CPU_POOL_GRANULE 256u
/* Default cap on cached transient bytes (pool_set_cap changes it). */
#define KILN_CPU_POOL_DEFAULT_CAP (256ull << 20)

/* ------------------------------------------------------------------------ */
/* device enumeration                                                       */
/* ------------------------------------------------------------------------ */

static int32_t cpu_device_count(void) { return 1; }

/* Reads "Key:   123 kB" from /proc/meminfo text; 0 if absent. */
static uint64_t meminfo_kb(const char *text, const char *key) {
    const char *p = strstr(text, key);
    if (!p) return 0;
    p += strlen(key);
    while (*p == ' ' || *p == ':' || *p == '\t') p++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

/* Host memory, without allocating (device_info must have no side effects):
 * MemAvailable counts reclaimable page cache, which is what "free" means to
 * a caller sizing a KV cache; sysinfo() is the fallback. */
static void host_memory(uint64_t *total, uint64_t *avail) {
    *total = 0;
    *avail = 0;
    char text[4096];
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        if (n > 0) {
            text[n] = '\0';
            *total = meminfo_kb(text, "MemTotal") * 1024u;
            *avail = meminfo_kb(text, "MemAvailable") * 1024u;
        }
    }
    if (*total == 0 || *avail == 0) {
        struct sysinfo si;
        if (sysinfo(&si) == 0) {
            if (*total == 0) *total = (uint64_t)si.totalram * si.mem_unit;
            if (*avail == 0) *avail = (uint64_t)(si.freeram + si.bufferram) * si.mem_unit;
        }
    }
}

static kiln_status cpu_device_info(int32_t index, kiln_bk_device_info *info) {
    if (index != 0) return kiln_error(KILN_E_NOT_FOUND, "cpu backend: no device %d (only 0)", index);
    if (!info || info->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: device_info needs an info struct");
    kiln_bk_device_info d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    snprintf(d.name, sizeof d.name, "cpu");
    host_memory(&d.mem_total, &d.mem_free);
    d.flags = KILN_BK_DEVICE_HOST_MEMORY;
    /* Write only what the caller's struct has room for. */
    uint32_t n = info->struct_size < sizeof d ? info->struct_size : (uint32_t)sizeof d;
    uint32_t caller_size = info->struct_size;
    memcpy(info, &d, n);
    info->struct_size = caller_size;
    return KILN_OK;
}

static int32_t cpu_supports_type(int32_t index, int32_t type) {
    if (index != 0) return 0;
    const kiln_type_traits *t = kiln_type_traits_get(type);
    return t && t->computable && kiln_cpu_dot_get(type) != NULL;
}

/* ------------------------------------------------------------------------ */
/* device handles                                                           */
/* ------------------------------------------------------------------------ */

/* AVX2 + FMA + F16C with the OS saving YMM state (XCR0 bits 1-2), then
 * AVX-512 F/DQ/BW/VL with opmask and ZMM state (XCR0 bits 5-7). Read with
 * cpuid directly: compilers disagree on __builtin_cpu_supports names. */
static int detect_isa(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KILN_CPU_ISA_SCALAR;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!(fma && osxsave && avx && f16c)) return KILN_CPU_ISA_SCALAR;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 6u) != 6u) return KILN_CPU_ISA_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 5))) return KILN_CPU_ISA_SCALAR;
    const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31); /* F, DQ, BW, VL */
    if ((b & avx512) == avx512 && (xlo & 0xe0u) == 0xe0u) return KILN_CPU_ISA_AVX512;
    return KILN_CPU_ISA_AVX2;
#else
    return KILN_CPU_ISA_SCALAR;
#endif
}

void kiln_cpu_device_set_isa(kiln_bk_device *dev, int isa) {
    if (!dev) return;
    if (isa < KILN_CPU_ISA_SCALAR) isa = KILN_CPU_ISA_SCALAR;
    dev->isa = isa < dev->isa_detected ? isa : dev->isa_detected;
}

static void pool_release_cached(kiln_cpu_pool *pool);
static void pool_detach_in_use(kiln_bk_device *dev);
static void ubatch_free(kiln_cpu_ubatch *ub);

static kiln_status cpu_device_open(int32_t index, const kiln_bk_open_params *params,
                                   kiln_bk_device **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: device_open: out is NULL");
    *out = NULL;
    if (index != 0) return kiln_error(KILN_E_NOT_FOUND, "cpu backend: no device %d (only 0)", index);

    /* Read only the part of params the caller's struct has. */
    kiln_bk_open_params p;
    memset(&p, 0, sizeof p);
    p.log_level = KILN_LOG_ERROR;
    if (params) {
        uint32_t n = params->struct_size < sizeof p ? params->struct_size : (uint32_t)sizeof p;
        memcpy(&p, params, n);
    }

    kiln_bk_device *dev = kiln_calloc(1, sizeof *dev);
    if (!dev) return kiln_error(KILN_E_OOM_HOST, "cpu backend: out of memory for a device handle");
    kiln_logger_init(&dev->log, p.log_fn, p.log_user, p.log_level);
    dev->pool.cap = KILN_CPU_POOL_DEFAULT_CAP;
    dev->isa_detected = detect_isa();
    dev->isa = dev->isa_detected;

    kiln_status st = kiln_cpu_threads_create(p.n_threads, &dev->threads);
    if (st != KILN_OK) {
        kiln_free(dev);
        return st;
    }
    dev->n_threads = kiln_cpu_threads_count(dev->threads);
    kiln_log(&dev->log, KILN_LOG_INFO, "cpu backend: device open, %d threads, %s kernels",
             dev->n_threads,
             dev->isa == KILN_CPU_ISA_AVX512 ? "avx512" : dev->isa == KILN_CPU_ISA_AVX2 ? "avx2" : "scalar");
    *out = dev;
    return KILN_OK;
}

static void cpu_device_close(kiln_bk_device *dev) {
    if (!dev) return;
    pool_detach_in_use(dev);
    pool_release_cached(&dev->pool);
    kiln_cpu_threads_free(dev->threads);
    ubatch_free(&dev->ub);
    kiln_free(dev->rope.table);
    kiln_free(dev->scratch_raw);
    kiln_free(dev);
}

/* Operations are synchronous: when they return, their results are in
 * memory. There is never anything queued to wait for. */
static kiln_status cpu_synchronize(kiln_bk_device *dev) {
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: synchronize: device is NULL");
    return KILN_OK;
}

kiln_status kiln_cpu_scratch_reserve(kiln_bk_device *dev, size_t size) {
    if (size <= dev->scratch_size) return KILN_OK;
    size_t grow = dev->scratch_size + dev->scratch_size / 2;
    size_t want = size > grow ? size : grow;
    size_t total;
    if (!kiln_add_size(want, KILN_CPU_ALIGN, &total))
        return kiln_error(KILN_E_OOM_HOST, "cpu backend: scratch of %zu bytes is too large", size);
    void *raw = kiln_malloc(total);
    if (!raw && want > size) { /* the geometric growth may be what failed */
        want = size;
        total = size + KILN_CPU_ALIGN;
        raw = kiln_malloc(total);
    }
    if (!raw) return kiln_error(KILN_E_OOM_HOST, "cpu backend: out of memory for %zu bytes of scratch", size);
    kiln_free(dev->scratch_raw);
    dev->scratch_raw = raw;
    dev->scratch = (uint8_t *)(((uintptr_t)raw + KILN_CPU_ALIGN - 1) & ~(uintptr_t)(KILN_CPU_ALIGN - 1));
    dev->scratch_size = want;
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* One allocation holds the struct, padding, and `size` aligned bytes. */
static kiln_bk_buffer *buffer_new(uint64_t size) {
    size_t total;
    if (size > SIZE_MAX || !kiln_add_size(sizeof(kiln_bk_buffer) + KILN_CPU_ALIGN, (size_t)size, &total))
        return NULL;
    kiln_bk_buffer *b = kiln_malloc(total);
    if (!b) return NULL;
    memset(b, 0, sizeof *b);
    uintptr_t d = (uintptr_t)(b + 1);
    b->data = (uint8_t *)((d + KILN_CPU_ALIGN - 1) & ~(uintptr_t)(KILN_CPU_ALIGN - 1));
    b->size = size;
    b->capacity = size;
    return b;
}

static int size_class(uint64_t n) {
    int c = 0;
    while (n > 1 && c < KILN_CPU_POOL_BUCKETS - 1) {
        n >>= 1;
        c++;
    }
    return c;
}

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

static void lru_append(kiln_cpu_pool *pool, kiln_bk_buffer *b) {
    b->lru_next = NULL;
    b->lru_prev = pool->lru_tail;
    if (pool->lru_tail) pool->lru_tail->lru_next = b;
    else pool->lru_head = b;
    pool->lru_tail = b;
}

static void lru_remove(kiln_cpu_pool *pool, kiln_bk_buffer *b) {
    if (b->lru_prev) b->lru_prev->lru_next = b->lru_next;
    else pool->lru_head = b->lru_next;
    if (b->lru_next) b->lru_next->lru_prev = b->lru_prev;
    else pool->lru_tail = b->lru_prev;
    b->lru_prev = b->lru_next = NULL;
}

/* Takes a cached block out of the cache (the caller accounts for it). */
static void pool_uncache(kiln_cpu_pool *pool, kiln_bk_buffer *b) {
    list_remove(&pool->buckets[b->bucket], b);
    lru_remove(pool, b);
    pool->bytes_cached -= b->capacity;
}

/* Frees cached blocks, oldest first, until bytes_cached <= limit. */
static void pool_trim(kiln_cpu_pool *pool, uint64_t limit) {
    while (pool->bytes_cached > limit && pool->lru_head) {
        kiln_bk_buffer *b = pool->lru_head;
        pool_uncache(pool, b);
        kiln_free(b);
    }
}

static void pool_release_cached(kiln_cpu_pool *pool) { pool_trim(pool, 0); }

/* Best fit among cached blocks of capacity >= need, looking in need's size
 * class and the next one (so a block is never more than 4x the request). */
static kiln_bk_buffer *pool_find(kiln_cpu_pool *pool, uint64_t need) {
    int c = size_class(need);
    for (int k = c; k <= c + 1 && k < KILN_CPU_POOL_BUCKETS; k++) {
        kiln_bk_buffer *best = NULL;
        for (kiln_bk_buffer *b = pool->buckets[k]; b; b = b->next)
            if (b->capacity >= need && (!best || b->capacity < best->capacity)) best = b;
        if (best) return best;
    }
    return NULL;
}

static kiln_status pool_alloc(kiln_bk_device *dev, uint64_t size, kiln_bk_buffer **out) {
    kiln_cpu_pool *pool = &dev->pool;
    uint64_t need = size == 0 ? KILN_CPU_POOL_GRANULE
                              : (size + KILN_CPU_POOL_GRANULE - 1) / KILN_CPU_POOL_GRANULE * KILN_CPU_POOL_GRANULE;
    if (need < size) return kiln_error(KILN_E_OOM_HOST, "cpu pool: %llu bytes is too large",
                                       (unsigned long long)size);
    kiln_bk_buffer *b = pool_find(pool, need);
    if (b) {
        pool_uncache(pool, b);
    } else {
        b = buffer_new(need);
        if (!b && pool->lru_head) { /* memory pressure: give the cache back, retry */
            pool_release_cached(pool);
            b = buffer_new(need);
        }
        if (!b)
            return kiln_error(KILN_E_OOM_HOST, "cpu pool: out of memory for a %llu-byte transient buffer",
                              (unsigned long long)size);
        b->capacity = need;
        b->bucket = size_class(need);
        pool->n_device_allocs++;
    }
    b->size = size;
    b->usage = KILN_BK_BUF_TRANSIENT;
    b->pool = pool;
    list_push(&pool->in_use, b);
    pool->bytes_in_use += b->capacity;
    pool->n_allocs++;
    uint64_t held = pool->bytes_in_use + pool->bytes_cached;
    if (held > pool->bytes_peak) pool->bytes_peak = held;
    *out = b;
    return KILN_OK;
}

static void pool_free(kiln_bk_buffer *b) {
    kiln_cpu_pool *pool = b->pool;
    list_remove(&pool->in_use, b);
    pool->bytes_in_use -= b->capacity;
    pool->n_frees++;
    b->pool = NULL;
    if (pool->cap != 0 && b->capacity > pool->cap) {
        kiln_free(b);
        return;
    }
    b->pool = pool;
    list_push(&pool->buckets[b->bucket], b);
    lru_append(pool, b);
    pool->bytes_cached += b->capacity;
    if (pool->cap != 0) pool_trim(pool, pool->cap);
}

/* At close: blocks still handed out forget their pool, so that a late
 * buffer_free releases the memory instead of touching a freed handle. */
static void pool_detach_in_use(kiln_bk_device *dev) {
    kiln_cpu_pool *pool = &dev->pool;
    uint64_t n = 0;
    while (pool->in_use) {
        kiln_bk_buffer *b = pool->in_use;
        list_remove(&pool->in_use, b);
        b->pool = NULL;
        n++;
    }
    if (n)
        kiln_log(&dev->log, KILN_LOG_WARN,
                 "cpu backend: device closed with %llu transient buffers still allocated",
                 (unsigned long long)n);
}

static kiln_status cpu_buffer_alloc(kiln_bk_device *dev, uint64_t size, uint32_t usage,
                                    kiln_bk_buffer **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_alloc: out is NULL");
    *out = NULL;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_alloc: device is NULL");
    if (usage > KILN_BK_BUF_STAGING)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_alloc: unknown usage %u", usage);
    if (usage == KILN_BK_BUF_TRANSIENT) return pool_alloc(dev, size, out);
    kiln_bk_buffer *b = buffer_new(size);
    if (!b)
        return kiln_error(KILN_E_OOM_HOST, "cpu backend: out of memory for a %llu-byte buffer",
                          (unsigned long long)size);
    b->usage = usage;
    *out = b;
    return KILN_OK;
}

static kiln_status cpu_buffer_wrap_host(kiln_bk_device *dev, void *ptr, uint64_t size,
                                        kiln_bk_buffer **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_wrap_host: out is NULL");
    *out = NULL;
    if (!dev || (!ptr && size != 0))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_wrap_host: NULL device or memory");
    kiln_bk_buffer *b = kiln_calloc(1, sizeof *b);
    if (!b) return kiln_error(KILN_E_OOM_HOST, "cpu backend: out of memory for a buffer handle");
    b->data = ptr;
    b->size = size;
    b->capacity = size;
    b->usage = KILN_BK_BUF_WEIGHTS;
    b->wrapped = true;
    *out = b;
    return KILN_OK;
}

static void cpu_buffer_free(kiln_bk_buffer *buf) {
    if (!buf) return;
    if (buf->pool) pool_free(buf);
    else kiln_free(buf); /* the struct heads the allocation (or is alone when wrapped) */
}

static bool range_ok(const kiln_bk_buffer *b, uint64_t offset, uint64_t size) {
    return offset <= b->size && size <= b->size - offset;
}

static kiln_status cpu_buffer_upload(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t offset,
                                     const void *src, uint64_t size) {
    if (!dst || (!src && size))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_upload: NULL buffer or source");
    if (dst->wrapped)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_upload: buffer wraps read-only caller memory");
    if (!range_ok(dst, offset, size))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_upload: [%llu, +%llu) outside a %llu-byte buffer",
                          (unsigned long long)offset, (unsigned long long)size, (unsigned long long)dst->size);
    if (size) memcpy(dst->data + offset, src, size);
    return KILN_OK;
}

static kiln_status cpu_buffer_download(kiln_bk_device *dev, const kiln_bk_buffer *src,
                                       uint64_t offset, void *dst, uint64_t size) {
    if (!src || (!dst && size))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_download: NULL buffer or destination");
    if (!range_ok(src, offset, size))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_download: [%llu, +%llu) outside a %llu-byte buffer",
                          (unsigned long long)offset, (unsigned long long)size, (unsigned long long)src->size);
    if (size) memcpy(dst, src->data + offset, size);
    return KILN_OK;
}

static kiln_status cpu_buffer_copy(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t dst_offset,
                                   const kiln_bk_buffer *src, uint64_t src_offset, uint64_t size) {
    if (!dst || !src) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_copy: NULL buffer");
    if (dst->wrapped)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: buffer_copy: destination wraps read-only caller memory");
    if (!range_ok(src, src_offset, size) || !range_ok(dst, dst_offset, size))
        return kiln_error(KILN_E_INVALID_ARG,
                          "cpu backend: buffer_copy: %llu bytes from %llu (of %llu) to %llu (of %llu) out of range",
                          (unsigned long long)size, (unsigned long long)src_offset,
                          (unsigned long long)src->size, (unsigned long long)dst_offset,
                          (unsigned long long)dst->size);
    if (size) memmove(dst->data + dst_offset, src->data + src_offset, size);
    return KILN_OK;
}

static void *cpu_buffer_host_ptr(kiln_bk_buffer *buf) { return buf ? buf->data : NULL; }

/* ------------------------------------------------------------------------ */
/* the transient pool                                                       */
/* ------------------------------------------------------------------------ */

static kiln_status cpu_pool_stats(kiln_bk_device *dev, kiln_bk_pool_stats *stats) {
    if (!dev || !stats || stats->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: pool_stats: NULL device or stats");
    const kiln_cpu_pool *pool = &dev->pool;
    kiln_bk_pool_stats s;
    memset(&s, 0, sizeof s);
    s.bytes_in_use = pool->bytes_in_use;
    s.bytes_cached = pool->bytes_cached;
    s.bytes_peak = pool->bytes_peak;
    s.cap = pool->cap;
    s.n_allocs = pool->n_allocs;
    s.n_frees = pool->n_frees;
    s.n_device_allocs = pool->n_device_allocs;
    uint32_t caller_size = stats->struct_size;
    uint32_t n = caller_size < sizeof s ? caller_size : (uint32_t)sizeof s;
    memcpy(stats, &s, n);
    stats->struct_size = caller_size;
    return KILN_OK;
}

static void cpu_pool_set_cap(kiln_bk_device *dev, uint64_t cap_bytes) {
    if (!dev) return;
    dev->pool.cap = cap_bytes;
    if (cap_bytes != 0) pool_trim(&dev->pool, cap_bytes);
}

static kiln_status cpu_pool_purge(kiln_bk_device *dev) {
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: pool_purge: device is NULL");
    /* synchronous backend: nothing queued can still use a cached block */
    pool_release_cached(&dev->pool);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* ubatch                                                                   */
/* ------------------------------------------------------------------------ */

static void ubatch_free(kiln_cpu_ubatch *ub) {
    kiln_free(ub->pos);
    kiln_free(ub->kv_cell);
    kiln_free(ub->attn_table);
    kiln_free(ub->attn_n_kv);
    kiln_free(ub->block_tables);
    kiln_free(ub->order);
    kiln_free(ub->run_start);
    memset(ub, 0, sizeof *ub);
}

static kiln_status grow_array(void **p, size_t n, size_t elem) {
    size_t bytes;
    if (!kiln_mul_size(n, elem, &bytes)) return KILN_E_OOM_HOST;
    void *q = kiln_realloc(*p, bytes);
    if (!q) return KILN_E_OOM_HOST;
    *p = q;
    return KILN_OK;
}

/* Checks the caller's ubatch before anything is copied, so that a bad one
 * leaves the previous ubatch in place. Every cell an operation will touch
 * is proven inside [0, n_cells) here, once. */
static kiln_status ubatch_validate(const kiln_bk_ubatch *u) {
    uint32_t n = u->n_tokens;
    if (n == 0) return KILN_OK;
    if (u->kv_cell) {
        for (uint32_t i = 0; i < n; i++)
            if (u->kv_cell[i] < 0 || (uint32_t)u->kv_cell[i] >= u->n_cells)
                return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: token %u: kv cell %d outside [0, %u)",
                                  i, u->kv_cell[i], u->n_cells);
    }
    if (!u->attn_table != !u->attn_n_kv)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: attn_table and attn_n_kv must come together");
    if (!u->attn_table) return KILN_OK;
    if (u->n_block_entries && !u->block_tables)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: block_tables is NULL");
    for (uint32_t i = 0; i < n; i++) {
        int32_t n_kv = u->attn_n_kv[i];
        if (n_kv < 0) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: token %u: attn_n_kv %d", i, n_kv);
        if (n_kv == 0) continue;
        if (u->block_size == 0) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: block_size is 0");
        uint64_t nb = ((uint64_t)n_kv + u->block_size - 1) / u->block_size;
        int32_t t0 = u->attn_table[i];
        if (t0 < 0 || (uint64_t)t0 + nb > u->n_block_entries)
            return kiln_error(KILN_E_INVALID_ARG,
                              "cpu backend: set_ubatch: token %u: block table [%d, +%llu) outside %u entries",
                              i, t0, (unsigned long long)nb, u->n_block_entries);
        for (uint64_t j = 0; j < nb; j++) {
            int32_t b = u->block_tables[(uint64_t)t0 + j];
            if (b < 0 || ((uint64_t)b + 1) * u->block_size > u->n_cells)
                return kiln_error(KILN_E_INVALID_ARG,
                                  "cpu backend: set_ubatch: token %u: block %d (entry %llu) outside %u cells",
                                  i, b, (unsigned long long)((uint64_t)t0 + j), u->n_cells);
        }
    }
    return KILN_OK;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Groups tokens by block table (stable) into ub->order / run_start. `keys`
 * is NULL when the tables are already in order, else n_tokens int64 of
 * temporary space for the sort. */
static void ubatch_group(kiln_cpu_ubatch *ub, int64_t *keys) {
    uint32_t n = ub->n_tokens;
    const int32_t *tab = ub->has_attn ? ub->attn_table : NULL;
    for (uint32_t i = 0; i < n; i++) ub->order[i] = (int32_t)i;
    if (keys) { /* the caller found the tables out of order */
        for (uint32_t i = 0; i < n; i++) keys[i] = ((int64_t)tab[i] << 32) | (int64_t)i;
        qsort(keys, n, sizeof *keys, cmp_i64);
        for (uint32_t i = 0; i < n; i++) ub->order[i] = (int32_t)(keys[i] & 0xffffffff);
    }
    ub->n_runs = 0;
    ub->max_n_kv = 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t t = ub->order[i];
        if (i == 0 || (tab && tab[t] != tab[ub->order[i - 1]])) ub->run_start[ub->n_runs++] = i;
        if (tab && ub->attn_n_kv[t] > ub->max_n_kv) ub->max_n_kv = ub->attn_n_kv[t];
    }
    ub->run_start[ub->n_runs] = n;
}

static kiln_status cpu_set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ubp) {
    if (!dev || !ubp) return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: NULL device or ubatch");
    kiln_bk_ubatch u;
    memset(&u, 0, sizeof u);
    memcpy(&u, ubp, ubp->struct_size < sizeof u ? ubp->struct_size : sizeof u);
    if (u.n_tokens && !u.pos)
        return kiln_error(KILN_E_INVALID_ARG, "cpu backend: set_ubatch: pos is NULL");
    kiln_status st = ubatch_validate(&u);
    if (st != KILN_OK) return st;

    kiln_cpu_ubatch *ub = &dev->ub;
    uint32_t n = u.n_tokens;
    if (n > ub->cap_tokens) {
        if (grow_array((void **)&ub->pos, n, sizeof(int32_t)) ||
            grow_array((void **)&ub->kv_cell, n, sizeof(int32_t)) ||
            grow_array((void **)&ub->attn_table, n, sizeof(int32_t)) ||
            grow_array((void **)&ub->attn_n_kv, n, sizeof(int32_t)) ||
            grow_array((void **)&ub->order, n, sizeof(int32_t)) ||
            grow_array((void **)&ub->run_start, (size_t)n + 1, sizeof(uint32_t)))
            return kiln_error(KILN_E_OOM_HOST, "cpu backend: set_ubatch: out of memory for %u tokens", n);
        ub->cap_tokens = n;
    }
    if (u.n_block_entries > ub->cap_blocks) {
        if (grow_array((void **)&ub->block_tables, u.n_block_entries, sizeof(int32_t)))
            return kiln_error(KILN_E_OOM_HOST, "cpu backend: set_ubatch: out of memory for %u block entries",
                              u.n_block_entries);
        ub->cap_blocks = u.n_block_entries;
    }
    int64_t *keys = NULL;
    if (u.attn_table && n > 1) {
        bool sorted = true;
        for (uint32_t i = 1; i < n && sorted; i++) sorted = u.attn_table[i] >= u.attn_table[i - 1];
        if (!sorted) {
            keys = kiln_malloc((size_t)n * sizeof *keys);
            if (!keys)
                return kiln_error(KILN_E_OOM_HOST, "cpu backend: set_ubatch: out of memory grouping %u tokens", n);
        }
    }

    ub->set = true;
    dev->ub_gen++;
    ub->n_tokens = n;
    ub->n_block_entries = u.n_block_entries;
    ub->block_size = u.block_size;
    ub->n_cells = u.n_cells;
    ub->n_runs = 0;
    size_t bytes = (size_t)n * sizeof(int32_t);
    if (n) memcpy(ub->pos, u.pos, bytes);
    if (u.kv_cell && n) memcpy(ub->kv_cell, u.kv_cell, bytes);
    if (u.attn_table && n) {
        memcpy(ub->attn_table, u.attn_table, bytes);
        memcpy(ub->attn_n_kv, u.attn_n_kv, bytes);
    }
    if (u.n_block_entries) memcpy(ub->block_tables, u.block_tables, (size_t)u.n_block_entries * sizeof(int32_t));
    ub->has_kv_cell = u.kv_cell != NULL;
    ub->has_attn = u.attn_table != NULL;
    ubatch_group(ub, keys);
    kiln_free(keys);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* tensor checks                                                            */
/* ------------------------------------------------------------------------ */

kiln_status kiln_cpu_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op,
                                  const char *what) {
    if (!t || !t->buf) return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s is NULL", op, what);
    if (type >= 0 && t->type != type)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s is %s, expected %s", op, what,
                          kiln_type_name(t->type), kiln_type_name(type));
    const kiln_type_traits *tr = kiln_type_traits_get(t->type);
    if (!tr || !tr->computable)
        return kiln_error(KILN_E_UNSUPPORTED, "cpu %s: %s has type %s", op, what, kiln_type_name(t->type));
    if (t->ne[0] < 0 || t->ne[1] < 0)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s has a negative shape", op, what);
    if (t->ne[0] % tr->block_size != 0)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s rows of %lld are not whole %s blocks", op, what,
                          (long long)t->ne[0], tr->name);
    if (t->ne[1] == 0 || t->ne[0] == 0) return KILN_OK;
    uint64_t row = kiln_type_row_size(t->type, t->ne[0]);
    if (t->ne[1] > 1 && t->row_stride < row)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s row stride %llu < row size %llu", op, what,
                          (unsigned long long)t->row_stride, (unsigned long long)row);
    /* end = offset + (ne1 - 1) * stride + row, overflow-checked */
    uint64_t n1 = (uint64_t)t->ne[1] - 1;
    if (t->ne[1] > 1 && t->row_stride > (UINT64_MAX - row) / n1)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s extent overflows", op, what);
    uint64_t extent = n1 * (t->ne[1] > 1 ? t->row_stride : 0) + row;
    if (t->offset > t->buf->size || extent > t->buf->size - t->offset)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s [%llu, +%llu) outside its %llu-byte buffer", op, what,
                          (unsigned long long)t->offset, (unsigned long long)extent,
                          (unsigned long long)t->buf->size);
    unsigned align = t->type == KILN_TYPE_F32 ? 4 : (t->type == KILN_TYPE_F16 || t->type == KILN_TYPE_BF16) ? 2 : 1;
    if (((uintptr_t)(t->buf->data + t->offset) | (t->ne[1] > 1 ? t->row_stride : 0)) % align)
        return kiln_error(KILN_E_INVALID_ARG, "cpu %s: %s rows are not %u-byte aligned", op, what, align);
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* the iface                                                                */
/* ------------------------------------------------------------------------ */

static const kiln_backend_iface cpu_iface = {
    .struct_size = sizeof(kiln_backend_iface),
    .abi_version = KILN_BACKEND_ABI_VERSION,
    .name = "cpu",
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .supports_type = cpu_supports_type,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_wrap_host = cpu_buffer_wrap_host,
    .buffer_free = cpu_buffer_free,
    .buffer_upload = cpu_buffer_upload,
    .buffer_download = cpu_buffer_download,
    .buffer_copy = cpu_buffer_copy,
    .buffer_host_ptr = cpu_buffer_host_ptr,
    .synchronize = cpu_synchronize,
    .pool_stats = cpu_pool_stats,
    .pool_set_cap = cpu_pool_set_cap,
    .pool_purge = cpu_pool_purge,
    .set_ubatch = cpu_set_ubatch,
    .get_rows = kiln_cpu_get_rows,
    .rms_norm = kiln_cpu_rms_norm,
    .matmul = kiln_cpu_matmul,
    .add = kiln_cpu_add,
    .rope = kiln_cpu_rope,
    .swiglu = kiln_cpu_swiglu,
    .kv_store = kiln_cpu_kv_store,
    .attention = kiln_cpu_attention,
};

const kiln_backend_iface *kiln_cpu_backend_iface(void) { return &cpu_iface; }
