/*
 * cpu_internal.h - what the files of the CPU backend share: the device
 * handle, buffers, the transient pool, the stored ubatch, scratch memory,
 * tensor checks, and the operation entry points. Not installed; nothing
 * here is exported from libkiln.
 *
 * Files: cpu_backend.c (iface, devices, buffers, pool, ubatch), cpu_ops.c
 * (element-wise and row operations), cpu_attn.c (attention), cpu_matmul.c
 * (the matmul driver over cpu_quant.h's dot kernels), cpu_threads.c (the
 * thread pool), cpu_simd.h (vector helpers).
 */
#ifndef KILN_CPU_INTERNAL_H
#define KILN_CPU_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu_quant.h"
#include "cpu_threads.h"
#include "internal.h"
#include "kiln_backend.h"

/* Instruction-set levels, detected at device_open (tests may lower it). */
#define KILN_CPU_ISA_SCALAR 0
#define KILN_CPU_ISA_AVX2 1   /* AVX2 + FMA + F16C */
#define KILN_CPU_ISA_AVX512 2 /* and AVX-512 F/BW/DQ/VL */

/* Alignment of every buffer and scratch area the backend allocates. */
#define KILN_CPU_ALIGN 64u

struct kiln_cpu_pool;

/* A buffer. Weights/KV/staging buffers own `raw` (NULL when wrapping
 * caller memory); a transient buffer belongs to a pool and goes back to its
 * cache when freed. The struct and the memory are one allocation. */
struct kiln_bk_buffer {
    uint8_t *data;            /* KILN_CPU_ALIGN-aligned (wrapped: as given) */
    uint64_t size;            /* bytes usable by the caller */
    uint64_t capacity;        /* transient: bytes of the block (>= size) */
    uint32_t usage;           /* KILN_BK_BUF_* */
    bool wrapped;             /* memory is the caller's */
    int bucket;               /* transient: size class of capacity */
    struct kiln_cpu_pool *pool; /* transient: owner; NULL once detached */
    kiln_bk_buffer *prev, *next;         /* pool list: in-use or a bucket */
    kiln_bk_buffer *lru_prev, *lru_next; /* cached blocks, oldest first */
};

#define KILN_CPU_POOL_BUCKETS 64

/* The transient pool: freed blocks are cached in size-class buckets (class
 * = floor(log2(capacity))) and reused best-fit; the cache is capped, oldest
 * blocks evicted first. Every block is counted in bytes_in_use or
 * bytes_cached by its capacity. */
typedef struct kiln_cpu_pool {
    kiln_bk_buffer *buckets[KILN_CPU_POOL_BUCKETS];
    kiln_bk_buffer *lru_head, *lru_tail; /* cached, head = least recently freed */
    kiln_bk_buffer *in_use;              /* blocks handed out */
    uint64_t cap;                         /* 0: unlimited */
    uint64_t bytes_in_use, bytes_cached, bytes_peak;
    uint64_t n_allocs, n_frees, n_device_allocs;
} kiln_cpu_pool;

/* The current ubatch, copied by set_ubatch. `order` lists the token indices
 * grouped by block table (stable), `run_start[0..n_runs]` delimits the
 * groups: attention tiles never mix two block tables. */
typedef struct kiln_cpu_ubatch {
    bool set;                 /* set_ubatch succeeded at least once */
    bool has_kv_cell;         /* kv_cell holds this ubatch's cells */
    bool has_attn;            /* attn_table / attn_n_kv / block_tables valid */
    uint32_t n_tokens;
    uint32_t n_block_entries;
    uint32_t block_size;
    uint32_t n_cells;
    int32_t *pos, *kv_cell, *attn_table, *attn_n_kv; /* [n_tokens] or NULL */
    int32_t *block_tables;                           /* [n_block_entries] */
    int32_t *order;                                  /* [n_tokens] */
    uint32_t *run_start;                             /* [n_runs + 1] */
    uint32_t n_runs;
    int32_t max_n_kv;
    uint32_t cap_tokens, cap_blocks;                 /* allocated lengths */
} kiln_cpu_ubatch;

/* cos/sin of the current ubatch's rope angles, reused while the ubatch and
 * the rope parameters stay the same (q and k of every layer share them). */
typedef struct kiln_cpu_rope_cache {
    float *table;             /* [n_tokens][n_rot]: n_rot/2 cos, then n_rot/2 sin */
    size_t cap;               /* floats allocated */
    bool valid;
    uint64_t ub_gen;          /* ubatch the table belongs to */
    uint32_t n_rot;
    float freq_base, freq_scale;
    bool has_factors;
    float factors[1024];      /* copy of freq_factors[0..n_rot/2) */
} kiln_cpu_rope_cache;

struct kiln_bk_device {
    kiln_logger log;
    kiln_cpu_threads *threads;
    int n_threads;
    int isa;                  /* KILN_CPU_ISA_* in use */
    int isa_detected;         /* the best the processor has */
    kiln_cpu_pool pool;
    kiln_cpu_ubatch ub;
    uint64_t ub_gen;          /* bumped by every set_ubatch */
    kiln_cpu_rope_cache rope;
    void *scratch_raw;        /* kiln_malloc'd */
    uint8_t *scratch;         /* aligned into scratch_raw */
    size_t scratch_size;
};

/* ---- helpers (cpu_backend.c) ---- */

/* Makes dev->scratch at least `size` bytes (contents not kept). */
kiln_status kiln_cpu_scratch_reserve(kiln_bk_device *dev, size_t size);

/* Checks that t is a readable 2-D view: buffer present, `type` (or any
 * computable type if type < 0), rows inside the buffer, F32 rows 4-byte
 * aligned. `what` names the operand in the error. */
kiln_status kiln_cpu_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op,
                                  const char *what);

static inline uint8_t *kiln_cpu_row(const kiln_bk_tensor *t, int64_t r) {
    return t->buf->data + t->offset + (uint64_t)r * t->row_stride;
}

/* Rounds n up to a multiple of KILN_CPU_ALIGN. */
static inline size_t kiln_cpu_align_up(size_t n) {
    return (n + KILN_CPU_ALIGN - 1) & ~(size_t)(KILN_CPU_ALIGN - 1);
}

/* Tests only: lowers (or restores) the instruction set used by the ops of
 * this handle; clamped to what the processor has. */
void kiln_cpu_device_set_isa(kiln_bk_device *dev, int isa);

/* ---- operations (cpu_ops.c, cpu_attn.c, cpu_matmul.c) ---- */

kiln_status kiln_cpu_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table,
                              const int32_t *ids, kiln_bk_tensor *dst);
kiln_status kiln_cpu_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x,
                              const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst);
kiln_status kiln_cpu_add(kiln_bk_device *dev, const kiln_bk_tensor *a,
                         const kiln_bk_tensor *b, kiln_bk_tensor *dst);
kiln_status kiln_cpu_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope);
kiln_status kiln_cpu_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate,
                            const kiln_bk_tensor *up, kiln_bk_tensor *dst);
kiln_status kiln_cpu_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k,
                              const kiln_bk_tensor *v, kiln_bk_buffer *k_cache,
                              kiln_bk_buffer *v_cache, uint32_t kv_dim);
kiln_status kiln_cpu_attention(kiln_bk_device *dev, const kiln_bk_tensor *q,
                               const kiln_bk_buffer *k_cache, const kiln_bk_buffer *v_cache,
                               const kiln_bk_attn *attn, kiln_bk_tensor *dst);
kiln_status kiln_cpu_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w,
                            const kiln_bk_tensor *x, kiln_bk_tensor *dst);
/* matmul with explicit dot traits (tests: scalar vs SIMD, private traits). */
kiln_status kiln_cpu_matmul_traits(kiln_bk_device *dev, const kiln_cpu_dot_traits *tr,
                                   const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                   kiln_bk_tensor *dst);

#endif /* KILN_CPU_INTERNAL_H */
