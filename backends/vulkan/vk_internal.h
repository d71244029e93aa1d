/*
 * vk_internal.h - what the files of the Vulkan backend share. Not installed;
 * nothing here is exported from libkiln-vulkan.so except the entry point.
 *
 * Files: vk_support.c (errors, logging, host allocation for the plugin),
 * vk_device.c (instance, device enumeration, the shared VkDevice, handles,
 * command recording and submission, the staging ring), vk_memory.c (the
 * sub-allocator over VkDeviceMemory, buffers, the transient pool),
 * vk_pipeline.c (shader modules and pipelines), vk_ops.c, vk_attn.c and vk_fused.c (the operations),
 * vk_layout.c (weight_prepare: the backend's own weight layouts),
 * vk_backend.c (the iface).
 *
 * Objects:
 *  - kiln_vk_shared: one per physical device that has open handles: the
 *    VkDevice, its queue, memory heaps, pipelines. Every handle of that
 *    device shares it (the ABI lets a buffer allocated through one handle be
 *    used by operations of any handle of the same device), refcounted (by
 *    handles and buffers), freed when the last goes, except on a CPU
 *    implementation (lavapipe), kept to spare recompiling its pipelines.
 *    The VkInstance is created once per process.
 *  - kiln_bk_device (a handle): a command pool, one command buffer being
 *    recorded, a fence, the staging ring, the transient pool, the ubatch.
 *    Operations are recorded into the command buffer and submitted when the
 *    caller synchronizes or downloads (or the ring fills), not one submit
 *    per operation.
 *
 * Thread-safety: a handle is used by one thread at a time (the ABI);
 * shared state (queue submission, the sub-allocator, pipeline creation,
 * the device list) is guarded by mutexes.
 */
#ifndef KILN_VK_INTERNAL_H
#define KILN_VK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

#include "internal.h"
#include "kiln_backend.h"

/* Weight types (ggml ids) the shaders know. */
#define KILN_VK_T_F32 0
#define KILN_VK_T_F16 1
#define KILN_VK_T_Q4_0 2
#define KILN_VK_T_Q4_1 3
#define KILN_VK_T_Q5_0 6
#define KILN_VK_T_Q5_1 7
#define KILN_VK_T_Q8_0 8
#define KILN_VK_T_Q4_K 12
#define KILN_VK_T_Q5_K 13
#define KILN_VK_T_Q6_K 14
#define KILN_VK_T_BF16 30

/* Weight layouts (kiln_bk_tensor.layout, weight_prepare in vk_layout.c).
 * Q4_0_SPLIT: each row of nb Q4_0 blocks is stored as the nb 16-byte
 * nibble arrays, then the nb F16 scales (the same 18 nb bytes), for rows
 * of K % 256 == 0 starting on 16-byte boundaries: the decode kernel reads
 * a block's nibbles with one 16-byte load. */
#define KILN_VK_LAYOUT_GGUF 0
#define KILN_VK_LAYOUT_Q4_0_SPLIT 1
/* Q4_0_SPLIT_KQ: the same bytes as Q4_0_SPLIT; the decode kernels sum its
 * rows in KQ order (mmv.glsl), which only the kernels of one product
 * (matmul, matmul_add, matmul_add_rms_norm) have: the fused multi-product
 * entries take their separate form for it. Chosen by weight_prepare for
 * long, few rows (vk_layout.c). */
#define KILN_VK_LAYOUT_Q4_0_SPLIT_KQ 2

/* Block geometry of a type; false for a type the backend does not handle. */
bool kiln_vk_type_geometry(int32_t type, uint32_t *block_elems, uint32_t *block_bytes);
const char *kiln_vk_type_name(int32_t type);

/* ---- pipelines ---- */

/* Kernels per weight-type group: the 11 types (kiln_vk_type_slot), then
 * Q4_0 in the split layout (the *_q4_0s shaders, types.glsl T_Q4_0S). */
#define KILN_VK_N_SLOTS 12
#define KILN_VK_SLOT_Q4_0S 11

enum {
    KILN_VK_P_QUANT_ACT,
    KILN_VK_P_RMS_NORM,
    KILN_VK_P_BINARY,
    KILN_VK_P_ROPE,
    KILN_VK_P_KV_STORE,
    KILN_VK_P_ATTENTION,
    KILN_VK_P_MM_FIRST,                      /* mm_TYPE, in kiln_vk_type_slot order */
    KILN_VK_P_MMSG_FIRST = KILN_VK_P_MM_FIRST + KILN_VK_N_SLOTS,
    KILN_VK_P_GETROWS_FIRST = KILN_VK_P_MMSG_FIRST + KILN_VK_N_SLOTS,
    KILN_VK_P_MMT_FIRST = KILN_VK_P_GETROWS_FIRST + KILN_VK_N_SLOTS, /* tiled matmul for batches */
    KILN_VK_P_MMV_FIRST = KILN_VK_P_MMT_FIRST + KILN_VK_N_SLOTS,    /* matrix-vector (decode), subgroup arithmetic */
    KILN_VK_P_MMC_FIRST = KILN_VK_P_MMV_FIRST + KILN_VK_N_SLOTS,    /* batches on matrix cores (NV cooperative matrix) */
    KILN_VK_P_MMCE_FIRST = KILN_VK_P_MMC_FIRST + KILN_VK_N_SLOTS,   /* mmc emulated without matrix cores (tests) */
    KILN_VK_P_MMC1_FIRST = KILN_VK_P_MMCE_FIRST + KILN_VK_N_SLOTS,  /* the previous matrix-core kernel (KILN_VK_MMC_OLD) */
    KILN_VK_P_MMVM_FIRST = KILN_VK_P_MMC1_FIRST + KILN_VK_N_SLOTS,  /* mmv of up to 3 products of one x (matmul_multi) */
    KILN_VK_P_ADD_RMS_NORM = KILN_VK_P_MMVM_FIRST + KILN_VK_N_SLOTS, /* residual add + norm (add_rms_norm) */
    KILN_VK_P_ROPE_KV,                                 /* rope q, rope k, store k and v (rope_kv_store) */
    KILN_VK_P_MMV1_FIRST,                              /* mmv for one activation row (KILN_VK_MMV_UNROLL) */
    KILN_VK_P_MMVM1_FIRST = KILN_VK_P_MMV1_FIRST + KILN_VK_N_SLOTS, /* mmvm for one activation row (KILN_VK_MMV_UNROLL) */
    KILN_VK_P_ATTN_TILE_FIRST = KILN_VK_P_MMVM1_FIRST + KILN_VK_N_SLOTS, /* prefill attention: mc_64, mc_128, mce_64, mce_128 */
    KILN_VK_P_Q4_0_SPLIT = KILN_VK_P_ATTN_TILE_FIRST + 4, /* weight_prepare: Q4_0 rows to the split layout */
    KILN_VK_P_ATTN_DEC,                                /* attention.comp for subgroup devices (decode steps) */
    KILN_VK_P_MMV1_IDOT_FIRST,                         /* mmv1_ with integer dot products (sh->idot), kiln_vk_idot_index order */
    KILN_VK_P_MMVM1_IDOT_FIRST = KILN_VK_P_MMV1_IDOT_FIRST + 4, /* mmvm1_ with integer dot products */
    KILN_VK_P_IDOT_END = KILN_VK_P_MMVM1_IDOT_FIRST + 4,
    KILN_VK_P_MMCW_FIRST = KILN_VK_P_IDOT_END,         /* mmc, warp-specialized (KILN_VK_MMC_WS) */
    KILN_VK_P_ATTN_DEC_ROPE = KILN_VK_P_MMCW_FIRST + KILN_VK_N_SLOTS, /* rope_kv + attn_dec of one token (rope_kv_attention) */
    KILN_VK_P_ATTN_FOLD,                               /* attn_dec's splits of a long context folded (attn_fold.comp) */
    KILN_VK_P_MMV_IDOT_FIRST,                          /* mmv_ (up to 8 rows) with integer dot products, idot order */
    KILN_VK_P_MMVM_IDOT_FIRST = KILN_VK_P_MMV_IDOT_FIRST + 4, /* mmvm_ with integer dot products */
    KILN_VK_P_IDOT8_END = KILN_VK_P_MMVM_IDOT_FIRST + 4,
    /* mmv1_ + add_rms_norm by the last workgroup (matmul_add_rms_norm), for
     * the weight types where it measured faster on the H100 */
    KILN_VK_P_MMV1N_F16 = KILN_VK_P_IDOT8_END,
    KILN_VK_P_MMV1N_Q4_0S,
    KILN_VK_P_MMV1N_Q4_0S_IDOT,
    /* mmvm1_ of gate and up with swiglu and its quantization (matmul_swiglu) */
    KILN_VK_P_MMVM1S_F16,
    KILN_VK_P_MMVM1S_Q4_0S,
    KILN_VK_P_MMVM1S_Q4_0S_IDOT,
    /* the residual stream's fusions around a norm done by each workgroup
     * of the products after it (matmul_add, rms_norm_matmul_multi,
     * rms_norm_matmul_swiglu; vk_prenorm.c), split Q4_0 weights */
    KILN_VK_P_MMV1R_Q4_0S,
    KILN_VK_P_MMV1R_Q4_0S_IDOT,
    KILN_VK_P_MMVM1P_Q4_0S,
    KILN_VK_P_MMVM1P_Q4_0S_IDOT,
    KILN_VK_P_MMVM1SP_Q4_0S,
    KILN_VK_P_MMVM1SP_Q4_0S_IDOT,
    /* attn_dec_rope with its first K/V loads before the prologue (contexts without splits) */
    KILN_VK_P_ATTN_DEC_ROPE1,
    KILN_VK_P_COUNT
};
/* The weight slots whose one-row decode kernels have an integer dot
 * product variant (split Q4_0, Q8_0, Q4_K, Q6_K): their index 0..3 in the
 * *_IDOT families, -1 for the others. */
int kiln_vk_idot_index(int slot);
/* The slot of idot family index i. */
int kiln_vk_idot_slot(int i);
/* Index 0..10 of a supported type in the per-type pipeline groups, -1 if none. */
int kiln_vk_type_slot(int32_t type);
/* The slot of a weight tensor's kernels: its type's, or KILN_VK_SLOT_Q4_0S
 * for Q4_0 in the split layout; -1 if none. */
int kiln_vk_weight_slot(const kiln_bk_tensor *w);
/* Whether w's rows are summed in KQ order (layout Q4_0_SPLIT_KQ). */
static inline bool kiln_vk_kq(const kiln_bk_tensor *w) { return w->layout == KILN_VK_LAYOUT_Q4_0_SPLIT_KQ; }

#define KILN_VK_MAX_BINDINGS 11
#define KILN_VK_ATTN_UP_DEFAULT 4u /* attn_dec.glsl: positions per subgroup step */
#define KILN_VK_ATTN_SPLIT_DEFAULT 256u      /* decode attention: positions per split ... */
#define KILN_VK_ATTN_SPLIT_MIN_DEFAULT 1024u /* ... in contexts of at least this many cells */
#define KILN_VK_ATTN_SPLIT_SHORT_DEFAULT 128u /* ... and splits of at least this many positions */
#define KILN_VK_PUSH_BYTES 128
#define KILN_VK_ATTN_CNT_OFF 16u    /* wg_cnt's word where decode attention's split counters start ... */
#define KILN_VK_ATTN_CNT_N 8192u    /* ... and how many (rows x heads of a split dispatch at most) */

/* ---- memory ---- */

#define KILN_VK_MEM_DEVICE 0  /* device-local: weights, KV, transient */
#define KILN_VK_MEM_HOST 1    /* host-visible, coherent: staging, ring */
#define KILN_VK_MEM_HOST_NEAR 2 /* host-visible, coherent, device-local where the device has such memory
                                   (a BAR): the small tables a recorded step reads (graph stages) */
#define KILN_VK_MEM_KINDS 3

typedef struct kiln_vk_block kiln_vk_block;
typedef struct kiln_vk_chunk kiln_vk_chunk;

/* A range of a chunk, used or free; all of a chunk's blocks in address order. */
struct kiln_vk_block {
    uint64_t offset, size;
    bool used;
    kiln_vk_block *prev, *next;
};

/* One VkDeviceMemory allocation with one VkBuffer over all of it. */
struct kiln_vk_chunk {
    VkDeviceMemory mem;
    VkBuffer buf;
    uint64_t size, used;
    uint8_t *map;            /* host kind: persistently mapped */
    bool device_local;       /* its memory type is device-local (counted as device memory) */
    int kind;                /* KILN_VK_MEM_* */
    bool dedicated;          /* made for one large buffer; freed with it */
    kiln_vk_block *blocks;
    kiln_vk_chunk *prev, *next;
};

typedef struct kiln_vk_shared kiln_vk_shared;
/* mmv.glsl's weight rows per subgroup pass (specialization constant 1)
 * for a weight slot: KILN_VK_MMV_ROWS, else 2 for Q4_0 and 1 for the rest
 * (measured on the H100 with the unrolled one-row kernels: Q4_0 tg128
 * 241 with 2 vs 228 with 1; F16 136 vs 131, Q4_K_M 152 vs 140 with 1). */
uint32_t kiln_vk_mmv_rows(const kiln_vk_shared *sh, int slot);
/* Row groups a decode kernel `width` invocations wide walks per pass of a
 * workgroup: one per subgroup, or in KQ order (mmv.glsl) one per four. */
uint32_t kiln_vk_mmv_groups_per_wg(const kiln_vk_shared *sh, uint32_t width, bool kq);
struct kiln_vk_pool;

struct kiln_bk_buffer {
    kiln_vk_shared *sh;
    kiln_vk_chunk *chunk;
    kiln_vk_block *blk;
    uint64_t size;           /* bytes usable by the caller */
    uint64_t capacity;       /* bytes of the block (transient: pool granule) */
    uint32_t usage;          /* KILN_BK_BUF_* */
    int bucket;              /* transient: size class */
    struct kiln_vk_pool *pool; /* transient: owner; NULL once detached */
    kiln_bk_device *owner;   /* transient: the handle of the pool */
    kiln_bk_buffer *prev, *next;
    kiln_bk_buffer *lru_prev, *lru_next;
};

#define KILN_VK_POOL_BUCKETS 64

typedef struct kiln_vk_pool {
    kiln_bk_buffer *buckets[KILN_VK_POOL_BUCKETS];
    kiln_bk_buffer *lru_head, *lru_tail;
    kiln_bk_buffer *in_use;
    uint64_t cap;
    uint64_t bytes_in_use, bytes_cached, bytes_peak;
    uint64_t n_allocs, n_frees, n_device_allocs;
} kiln_vk_pool;

struct kiln_vk_shared {
    int32_t index;
    int refs;
    VkPhysicalDevice phys;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family;
    pthread_mutex_t queue_lock;   /* vkQueueSubmit / vkQueueWaitIdle */
    pthread_mutex_t mem_lock;     /* chunks */
    pthread_mutex_t pipe_lock;    /* pipelines[] */
    uint32_t mem_type[2];         /* memory type index per kind */
    uint64_t align;               /* block alignment (>= storage offset alignment) */
    uint64_t storage_align;       /* minStorageBufferOffsetAlignment */
    uint64_t max_range;           /* maxStorageBufferRange */
    uint32_t max_shared;          /* maxComputeSharedMemorySize */
    uint64_t max_alloc;           /* maxMemoryAllocationSize */
    uint32_t max_groups[3];
    uint32_t mmv_rows;            /* KILN_VK_MMV_ROWS (1..4; 0: per type, kiln_vk_mmv_rows) */
    float timestamp_period;       /* ns per timestamp tick */
    uint32_t timestamp_bits;      /* valid bits of the queue's timestamps (0: none) */
    bool subgroup_arith;          /* subgroup shuffles in compute (mmsg_ kernels) */
    bool subgroup_add;            /* subgroup arithmetic in compute (mmv_ kernels) */
    bool coopmat;                 /* VK_NV_cooperative_matrix enabled (mmc_ kernels for batches) */
    bool idot;                    /* VK_KHR_shader_integer_dot_product enabled (the *_idot decode kernels) */
    bool coopmat_emulate;         /* KILN_VK_COOPMAT_EMULATE: mmce_ kernels (mmc's staging, plain products) */
    uint32_t mmc_bm, mmc_bn;      /* mmc.glsl's tile (KILN_VK_MMC_TILE, default 128 x 128): its specialization */
    uint32_t mmc_rowvec;          /* mmc.glsl's staged row in 16-byte vectors (5; KILN_VK_MMC_ROWVEC) */
    uint32_t mmc_stages;          /* mmc.glsl's tile stages in shared memory (2; KILN_VK_MMC_STAGES) */
    uint32_t mmc_kc;              /* mmc.glsl's 32-element chunks per stage (1; KILN_VK_MMC_KC) */
    uint32_t attn_up;             /* attn_dec.glsl's positions per subgroup step (KILN_VK_ATTN_UP) */
    uint32_t swiglu_wg;           /* mmv.glsl KILN_SWIGLU's workgroup width (KILN_VK_SWIGLU_WG, 512) */
    uint32_t prenorm_wg;          /* mmv.glsl KILN_PRENORM's workgroup width (KILN_VK_PRENORM_WG, 256) */
    bool attn_early;              /* attn_dec_rope1 where it applies (KILN_VK_ATTN_EARLY, 1) */
    bool no_au4;                  /* KILN_VK_NO_AU4: mmv.glsl's word loads only (specialization constant 13) */
    uint32_t mmc_mfirst;          /* mmc.glsl's workgroups: x over activation tiles (KILN_VK_MMC_MFIRST) */
    uint32_t mmc_ws;              /* batches through mmcw_main.glsl (warp-specialized): 0 never, 1 float weights, 2 all (KILN_VK_MMC_WS) */
    uint32_t mmc_skip;
    bool pipeline_stats;          /* KILN_VK_PIPELINE_STATS: driver statistics of each pipeline on stderr */
    PFN_vkGetPipelineExecutablePropertiesKHR get_exec_props;
    PFN_vkGetPipelineExecutableStatisticsKHR get_exec_stats;            /* KILN_VK_MMC_SKIP: parts of mmc.glsl's K loop left out (timing only) */
    uint32_t subgroup_size;
    bool is_cpu;                  /* a CPU implementation: fewer, larger workgroups */
    bool keep_open;               /* a CPU device: kept after its last handle closes */
    char name[128];
    kiln_vk_chunk *chunks[KILN_VK_MEM_KINDS];
    uint64_t mem_gen;             /* bumped (atomically) whenever a chunk is destroyed */
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipelines[KILN_VK_P_COUNT];
    PFN_vkCmdPushDescriptorSetKHR push_descriptor;
    kiln_vk_shared *next;
};

/* A region of the handle's staging ring (host-visible; valid until the
 * next wait resets the ring). */
typedef struct kiln_vk_slice {
    kiln_bk_buffer *buf;
    uint64_t offset;
    uint8_t *ptr;
} kiln_vk_slice;

typedef struct kiln_vk_ubatch {
    bool set, has_kv_cell, has_attn;
    uint32_t n_tokens, n_block_entries, block_size, n_cells;
    uint32_t n_tiles;     /* prefill attention tiles (ubatches of more than 32 tokens), 0: none */
    int32_t *data;        /* host copy: pos, kv_cell, attn_table, attn_n_kv [n_tokens each], block tables,
                           * tiles [n_tiles][3]: first token, tokens, largest n_kv */
    size_t cap;           /* int32s allocated */
    uint64_t gen;         /* bumped by every set_ubatch */
    uint64_t ring_epoch;  /* ring epoch of the device copy, 0: none */
    uint64_t ring_offset; /* where the device copy (kv_cell onwards) lives in the ring */
    const kiln_bk_buffer *ring_buf; /* the ring, or a graph's stage */
} kiln_vk_ubatch;

typedef struct kiln_vk_rope_cache {
    bool valid;
    uint64_t ub_gen, ring_epoch, ring_offset;
    const kiln_bk_buffer *ring_buf;
    uint32_t n_rot;
    float freq_base, freq_scale;
    bool has_factors;
    float factors[1024];
    float *host;          /* [n_tokens][n_rot] */
    size_t cap;
} kiln_vk_rope_cache;

/* The quantized copy of the last matmul's activations, reused while its
 * source rows are not written (q, k, v share one; gate and up another). */
typedef struct kiln_vk_act_cache {
    bool valid;
    const kiln_bk_buffer *src;
    uint64_t offset, extent, row_stride;
    int64_t k, m;
    uint32_t mode;
    uint32_t q_off; /* words into the scratch where the quantized rows start (0 but after matmul_swiglu) */
} kiln_vk_act_cache;

/* Activations a matmul quantized lately (format `mode`): the operation
 * that next produces the same rows (rms_norm, add_rms_norm, swiglu)
 * quantizes them itself, so a decode step has no quant_act dispatch. */
#define KILN_VK_ACT_WANTS 8
typedef struct kiln_vk_act_want {
    const kiln_bk_buffer *buf;
    uint64_t offset, row_stride;
    int64_t k, m;
    uint32_t mode;           /* 0: an empty entry */
} kiln_vk_act_want;

/* A recorded decode step (vk_graph.c). */
#define KILN_VK_MAX_GRAPHS 8
typedef struct kiln_vk_graph {
    uint64_t key, hash;
    VkCommandBuffer cmd;     /* recorded once, submitted at every replay */
    kiln_bk_buffer *stage;   /* host-visible: the step's host inputs */
    /* KILN_VK_TIMESTAMPS: a timestamp after each recorded dispatch */
    VkQueryPool ts_pool;
    uint16_t *ts_which;      /* the pipeline of dispatch i (ends at timestamp i + 1) */
    uint32_t ts_n;
} kiln_vk_graph;
#define KILN_VK_TS_MAX 4096  /* timestamps per recorded graph */

/* A binding recorded since the last barrier of the command buffer being
 * recorded (hazard tracking, kiln_vk_dispatch). */
#define KILN_VK_MAX_PENDING 32
typedef struct kiln_vk_pending {
    VkBuffer buf;
    uint64_t lo, hi;         /* bytes of the chunk's VkBuffer */
    bool write;
} kiln_vk_pending;

struct kiln_bk_device {
    kiln_vk_shared *sh;
    kiln_logger log;
    VkCommandPool cmd_pool;
    VkCommandBuffer cmd;
    VkFence fence;
    bool recording;          /* cmd is between begin and end */
    bool pending;            /* submitted, fence not yet waited on */
    uint32_t n_ops;          /* commands recorded since begin */
    kiln_bk_buffer *ring;    /* host-visible staging + small inputs */
    uint64_t ring_used;
    uint64_t ring_epoch;     /* bumped by every reset */
    kiln_bk_buffer *act;     /* quantized activations (device) */
    kiln_bk_buffer *attn_part; /* decode attention's split results (device; grows like act, bumps act_gen) */
    uint32_t attn_split;     /* positions per split of decode attention (KILN_VK_ATTN_SPLIT; 0: never) */
    uint32_t attn_split_min; /* ... in contexts of at least this many cells (KILN_VK_ATTN_SPLIT_MIN) */
    uint32_t attn_split_short; /* ... and at least this many positions (KILN_VK_ATTN_SPLIT_SHORT; attn_split_len) */
    bool attn_fold_apart;    /* KILN_VK_ATTN_FOLD_APART: the splits folded by attn_fold.comp, not the last split (comparisons) */
    kiln_vk_act_cache act_cache;
    kiln_vk_act_want act_want[KILN_VK_ACT_WANTS];
    uint32_t act_want_next;  /* the entry replaced next */
    kiln_vk_pool pool;
    kiln_vk_ubatch ub;
    kiln_vk_rope_cache rope;
    bool no_tiled;           /* KILN_VK_NO_TILED: batches use the row-group matmul too (tests) */
    bool no_mmv;             /* KILN_VK_NO_MMV: decode uses the row-group kernels (mm/mmsg) */
    bool mmc_old;            /* KILN_VK_MMC_OLD: batches on matrix cores use mmc1.glsl (comparisons) */
    bool stage_near;         /* KILN_VK_STAGE_NEAR: graph stages in device memory the host maps (vk_graph.c) */
    bool attn_dec_old;       /* KILN_VK_ATTN_DEC_OLD: small ubatches on attention.comp, not attn_dec.comp (comparisons) */
    bool attn_old;           /* KILN_VK_ATTN_OLD: prefill attention on attention.comp too (comparisons) */
    bool attn_eager;         /* KILN_VK_ATTN_EAGER: attn_tile rescales whenever a row's max grows (tests) */
    bool attn_no_mc;         /* KILN_VK_ATTN_PORTABLE, or the matrix-core attention did not build: attn_mce */
    bool barrier_all;        /* KILN_VK_BARRIER_ALL: a barrier between any two dispatches */
    bool barrier_full;       /* KILN_VK_BARRIER_FULL: between dispatches the full barrier
                                (all stages), not the compute-only one */
    uint32_t no_fused_mask;  /* KILN_VK_NO_FUSED=MASK: which fusions are off (vk_device.c) */
    uint32_t mmv_unroll;     /* KILN_VK_MMV_UNROLL=1: mmv.glsl issues 4 chunks' loads at once (same bits) */
    bool no_idot8;           /* KILN_VK_NO_IDOT8=1: several rows take mmv_ without integer dot products */
    bool multi_kquant;       /* KILN_VK_MULTI_KQUANT=1: matmul_multi of Q4_K/Q6_K weights in one dispatch */
    bool no_weight_layout;   /* KILN_VK_LAYOUT=0: weight_prepare keeps every weight in the GGUF layout */
    uint32_t kq_mode;        /* KILN_VK_KQ: 0 no weight in KQ order, 1 long rows (default), 2 every split weight */
    kiln_vk_pending pend[KILN_VK_MAX_PENDING];
    uint32_t n_pend;         /* bindings since the last barrier */
    bool profile;            /* KILN_VK_PROFILE: time each dispatch (waits after each) */
    uint64_t act_gen;        /* bumped when `act` or `attn_part` is reallocated (graphs reference them) */
    /* graphs (vk_graph.c): mode 0 none, 1 recording, 2 replaying, 3 open
     * but executing eagerly (profiling, or no memory for a recording) */
    int graph_mode;
    bool graph_failed;       /* this step cannot be (or was not) the recorded one */
    uint64_t graph_key, graph_hash;
    uint64_t graph_mem_gen, graph_act_gen; /* what the recordings were made against */
    int graph_cur;           /* replaying: index in graphs[] (-1: none) */
    kiln_vk_graph graph_new; /* being recorded */
    kiln_vk_graph graphs[KILN_VK_MAX_GRAPHS];
    int n_graphs;
    uint64_t stage_used;
    uint8_t *stage_scratch;  /* host inputs of a step that overflowed its stage */
    size_t stage_scratch_cap;
    uint64_t n_graph_records, n_graph_replays, n_graph_redos;
    uint32_t rec_dispatches, rec_barriers;    /* of the graph being recorded */
    uint32_t max_dispatches, max_barriers;    /* of the largest graph recorded (KILN_VK_STATS) */
    double prof_ms[KILN_VK_P_COUNT];
    uint64_t prof_n[KILN_VK_P_COUNT];
    /* KILN_VK_TIMESTAMPS: GPU time of each replayed dispatch, from the
     * timestamps around it (its barrier included), per pipeline */
    bool timestamps;
    /* workgroup counters, 0 between dispatches, zeroed once at
     * device_open: word 0 matmul_add_rms_norm's (mmv.glsl KILN_NORM), from
     * KILN_VK_ATTN_CNT_OFF decode attention's splits per (row, head)
     * (attn_dec.glsl) */
    kiln_bk_buffer *wg_cnt;
    uint32_t norm_dbg; /* KILN_VK_NORM_DBG (profiling only, results wrong): 1 no norm, 2 no quantization */
    uint32_t skip; /* KILN_VK_SKIP (profiling only): kernel classes left out, vk_ops.c skip_class; 1024 no barriers */
    double ts_ms[KILN_VK_P_COUNT];
    uint64_t ts_calls[KILN_VK_P_COUNT];
    uint64_t ts_steps;
    double ts_step_ms;
    /* KILN_VK_TIMESTAMPS=2: also each dispatch of the step by its place
     * (the last shape of step replayed; a new shape starts over) */
    double *ts_at_ms;
    uint16_t *ts_at_which;
    uint32_t ts_at_n;
    uint64_t ts_at_steps;
};

/* ---- vk_support.c ---- */
kiln_status kiln_vk_result(VkResult r, const char *what);
/* The iface's set_host: the core's error sink. */
void kiln_vk_set_host(const kiln_bk_host *host);

/* ---- vk_device.c ---- */
kiln_status kiln_vk_shared_get(int32_t index, kiln_vk_shared **out);
void kiln_vk_shared_put(kiln_vk_shared *sh);
void kiln_vk_shared_ref(kiln_vk_shared *sh);
int32_t kiln_vk_device_count(void);
kiln_status kiln_vk_device_info(int32_t index, kiln_bk_device_info *info);
kiln_status kiln_vk_device_open(int32_t index, const kiln_bk_open_params *params, kiln_bk_device **out);
void kiln_vk_device_close(kiln_bk_device *dev);
/* Makes sure dev->cmd is recording. */
kiln_status kiln_vk_begin(kiln_bk_device *dev);
/* Submits what was recorded (if anything) and waits for all of dev's work. */
kiln_status kiln_vk_finish(kiln_bk_device *dev);
/* A full memory barrier after a recorded command (compute and transfer). */
void kiln_vk_barrier(kiln_bk_device *dev);
void kiln_vk_barrier_cmd(VkCommandBuffer cmd);
/* compute-to-compute only (between dispatches; see vk_device.c) */
void kiln_vk_barrier_compute(VkCommandBuffer cmd);
/* `size` bytes of the staging ring (aligned); may finish() the handle to
 * make room, which invalidates earlier slices. */
kiln_status kiln_vk_ring_alloc(kiln_bk_device *dev, uint64_t size, kiln_vk_slice *out);

/* ---- vk_graph.c ---- */
kiln_status kiln_vk_graph_begin(kiln_bk_device *dev, uint64_t key);
kiln_status kiln_vk_graph_end(kiln_bk_device *dev, int32_t *redo);
/* Adds n bytes describing a dispatch to the open graph's hash. */
void kiln_vk_graph_hash(kiln_bk_device *dev, const void *p, size_t n);
/* A slice of the open graph's stage (kiln_vk_ring_alloc while a graph is open). */
kiln_status kiln_vk_graph_stage(kiln_bk_device *dev, uint64_t size, kiln_vk_slice *out);
/* Forgets every recording (waits for submitted work first). */
void kiln_vk_graphs_forget(kiln_bk_device *dev);
/* graphs_forget and the handle's graph memory, at close. */
void kiln_vk_graphs_close(kiln_bk_device *dev);

/* ---- vk_memory.c ---- */
kiln_status kiln_vk_mem_alloc(kiln_vk_shared *sh, int kind, uint64_t size, kiln_bk_buffer *b);
void kiln_vk_mem_free(kiln_vk_shared *sh, kiln_bk_buffer *b);
void kiln_vk_mem_release_all(kiln_vk_shared *sh);
kiln_status kiln_vk_buffer_alloc(kiln_bk_device *dev, uint64_t size, uint32_t usage, kiln_bk_buffer **out);
/* A buffer outside any pool (ring, activation scratch). */
kiln_status kiln_vk_buffer_new(kiln_bk_device *dev, int kind, uint64_t size, kiln_bk_buffer **out);
void kiln_vk_buffer_free(kiln_bk_buffer *buf);
kiln_status kiln_vk_pool_stats(kiln_bk_device *dev, kiln_bk_pool_stats *stats);
void kiln_vk_pool_set_cap(kiln_bk_device *dev, uint64_t cap);
kiln_status kiln_vk_pool_purge(kiln_bk_device *dev);
void kiln_vk_pool_close(kiln_bk_device *dev);

/* ---- vk_pipeline.c ---- */
kiln_status kiln_vk_layout_create(kiln_vk_shared *sh);
void kiln_vk_pipelines_destroy(kiln_vk_shared *sh);
const char *kiln_vk_pipeline_name(int which);
/* The pipeline, created on first use and kept for the shared device's life. */
kiln_status kiln_vk_pipeline(kiln_vk_shared *sh, int which, VkPipeline *out);

/* ---- vk_ops.c (the operations; rope, KV store and attention in vk_attn.c, fused entries in vk_fused.c) ---- */
/* A storage binding: the tensor's buffer from `offset` for `size` bytes. */
typedef struct kiln_vk_bind {
    const kiln_bk_buffer *buf;
    uint64_t offset, size;   /* the descriptor's range (aligned, with slack) */
    uint64_t lo, len;        /* the operand's own bytes of the chunk's VkBuffer (hazard tracking) */
} kiln_vk_bind;

/* Binds [offset, offset + size) of buf at an aligned descriptor offset;
 * *rem is where `offset` lands inside the binding (bytes). */
kiln_status kiln_vk_bind_range(kiln_bk_device *dev, const kiln_bk_buffer *buf, uint64_t offset, uint64_t size,
                               kiln_vk_bind *out, uint32_t *rem, const char *op);
/* Records a dispatch of pipeline `which` with n bindings and push constants
 * (groups split into several dispatches where they exceed the device's
 * limit along x is the caller's business), after a barrier where it
 * depends on a dispatch recorded since the last one (hazard tracking). In
 * a graph: into the recording, or (replaying) only hashed. */
kiln_status kiln_vk_dispatch(kiln_bk_device *dev, int which, const kiln_vk_bind *binds, uint32_t n_binds,
                             const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz);

/* Helpers the operations' files share (vk_ops.c). tensor_check: as the CPU
 * backend's check, a readable 2-D view of `type` (any type the shaders
 * know if type < 0) inside its buffer, *extent the bytes from its offset
 * to the end of its last row. bind_f32: binds an F32 tensor, *off its
 * first element and *stride its rows in words. ubatch_bind: the ubatch
 * tables in the ring, bound from word 0. act_produce / act_produced: for
 * an operation writing dst that can also quantize it (bit m of `modes`:
 * format m) for a matmul that read those rows so lately, the scratch to
 * quantize into (*qb, *qmode, *q_stride; else *qmode = 0 and *qb binds dst
 * again), then its record after the dispatch. */
kiln_status kiln_vk_tensor_check(const kiln_bk_tensor *t, int32_t type, const char *op, const char *what,
                                 uint64_t *extent);
kiln_status kiln_vk_bind_f32(kiln_bk_device *dev, const kiln_bk_tensor *t, uint64_t extent, kiln_vk_bind *b,
                             uint32_t *off, uint32_t *stride, const char *op);
kiln_status kiln_vk_need_ubatch(const kiln_bk_device *dev, const char *op);
kiln_status kiln_vk_ubatch_bind(kiln_bk_device *dev, kiln_vk_bind *b, const char *op);
#define KILN_VK_QMODES_ALL 0x3eu /* F16, BF16, Q8_0, Q8_1, Q8_K (act_mode 1..5) */
kiln_status kiln_vk_act_produce(kiln_bk_device *dev, const kiln_bk_tensor *dst, uint64_t de, uint32_t modes,
                                kiln_vk_bind *qb, uint32_t *qmode, uint32_t *q_stride, const char *op);
void kiln_vk_act_produced(kiln_bk_device *dev, const kiln_bk_tensor *dst, uint64_t de, uint32_t qmode);
static inline uint32_t kiln_vk_div_up(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }
/* A handle-owned device scratch (*buf: dev->act, dev->attn_part) of at
 * least `bytes`: grown (doubling where it can) after the recorded work
 * that may read the old one finished; bumps dev->act_gen, so recorded
 * graphs that name the old buffer are re-recorded. */
kiln_status kiln_vk_scratch_reserve(kiln_bk_device *dev, kiln_bk_buffer **buf, uint64_t bytes);
/* The activation format a weight type's kernels read (0 F32, 1 F16,
 * 2 BF16, 3 Q8_0, 4 Q8_1, 5 Q8_K, 6 F16 pairs for the matrix cores) and a
 * row's words in it. */
uint32_t kiln_vk_act_mode(int32_t type);
uint64_t kiln_vk_act_row_words(uint32_t mode, uint64_t k);
/* The handle's activation scratch (dev->act), at least `bytes`. */
kiln_status kiln_vk_act_scratch(kiln_bk_device *dev, uint64_t bytes);
/* Whether an act_want entry names tensor t's rows. */
bool kiln_vk_act_want_is(const kiln_vk_act_want *e, const kiln_bk_tensor *t);
/* x in format `mode` in the scratch (one quant_act dispatch unless the act
 * cache holds it): *b binds it, *a_off and *a_stride (words) address it. */
kiln_status kiln_vk_quantize_act(kiln_bk_device *dev, const kiln_bk_tensor *x, uint64_t xe, uint32_t mode,
                                 kiln_vk_bind *b, uint32_t *a_off, uint32_t *a_stride);
/* The decode kernel of weight slot `slot` for M rows from the families
 * `first` (several rows), `first1` (one row), `idot_first`, `idot8_first`. */
int kiln_vk_mmv_pipeline(const kiln_bk_device *dev, int64_t M, int slot, int first, int first1, int idot_first,
                         int idot8_first);
/* Activation rows that take the matrix-vector kernel (mmv.glsl) where the
 * device has subgroup arithmetic: decode steps and speculative verify
 * batches (n_draft 8 + 1), so that a verified token gets the bits of a
 * token decoded alone. */
#define KILN_VK_MMV_MAX 16
#define KILN_VK_MMV_MT 8     /* activation rows per workgroup row (mmv.glsl MT) */
#define KILN_VK_MMV_WG 128   /* invocations per workgroup (mmv.glsl local_size_x) */

kiln_status kiln_vk_set_ubatch(kiln_bk_device *dev, const kiln_bk_ubatch *ub);
kiln_status kiln_vk_get_rows(kiln_bk_device *dev, const kiln_bk_tensor *table, const int32_t *ids,
                             kiln_bk_tensor *dst);
kiln_status kiln_vk_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *w, float eps,
                             kiln_bk_tensor *dst);
kiln_status kiln_vk_matmul(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                           kiln_bk_tensor *dst);
kiln_status kiln_vk_add(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                        kiln_bk_tensor *dst);
kiln_status kiln_vk_rope(kiln_bk_device *dev, kiln_bk_tensor *x, const kiln_bk_rope *rope);
kiln_status kiln_vk_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *gate, const kiln_bk_tensor *up,
                           kiln_bk_tensor *dst);
kiln_status kiln_vk_kv_store(kiln_bk_device *dev, const kiln_bk_tensor *k, const kiln_bk_tensor *v,
                             kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim);
kiln_status kiln_vk_attention(kiln_bk_device *dev, const kiln_bk_tensor *q, const kiln_bk_buffer *k_cache,
                              const kiln_bk_buffer *v_cache, const kiln_bk_attn *attn, kiln_bk_tensor *dst);
/* The OPTIONAL fused entries (kiln_backend.h): one dispatch each where the
 * operands allow (decode steps), else the separate operations. */
kiln_status kiln_vk_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *a, const kiln_bk_tensor *b,
                                 kiln_bk_tensor *sum, const kiln_bk_tensor *w, float eps, kiln_bk_tensor *dst);
kiln_status kiln_vk_matmul_multi(kiln_bk_device *dev, uint32_t n, const kiln_bk_tensor *const *w,
                                 const kiln_bk_tensor *x, kiln_bk_tensor *const *dst);
kiln_status kiln_vk_rope_kv_store(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k, const kiln_bk_tensor *v,
                                  const kiln_bk_rope *rq, const kiln_bk_rope *rk, kiln_bk_buffer *k_cache,
                                  kiln_bk_buffer *v_cache, uint32_t kv_dim);
kiln_status kiln_vk_matmul_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *w_gate, const kiln_bk_tensor *w_up,
                                  const kiln_bk_tensor *x, kiln_bk_tensor *up, kiln_bk_tensor *dst);
kiln_status kiln_vk_matmul_add_rms_norm(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                                        const kiln_bk_tensor *a, kiln_bk_tensor *sum, const kiln_bk_tensor *nw,
                                        float eps, kiln_bk_tensor *dst);
int32_t kiln_vk_prenorm_fused(kiln_bk_device *dev, const kiln_bk_tensor *w, int64_t n_rows);
kiln_status kiln_vk_matmul_add(kiln_bk_device *dev, const kiln_bk_tensor *w, const kiln_bk_tensor *x,
                               const kiln_bk_tensor *a, kiln_bk_tensor *tmp, kiln_bk_tensor *sum);
kiln_status kiln_vk_rms_norm_matmul_multi(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                          float eps, kiln_bk_tensor *h, uint32_t n, const kiln_bk_tensor *const *w,
                                          kiln_bk_tensor *const *dst);
kiln_status kiln_vk_rms_norm_matmul_swiglu(kiln_bk_device *dev, const kiln_bk_tensor *x, const kiln_bk_tensor *nw,
                                           float eps, kiln_bk_tensor *h, const kiln_bk_tensor *w_gate,
                                           const kiln_bk_tensor *w_up, kiln_bk_tensor *up, kiln_bk_tensor *dst);
kiln_status kiln_vk_rope_kv_attention(kiln_bk_device *dev, kiln_bk_tensor *q, kiln_bk_tensor *k,
                                      const kiln_bk_tensor *v, const kiln_bk_rope *rq, const kiln_bk_rope *rk,
                                      kiln_bk_buffer *k_cache, kiln_bk_buffer *v_cache, uint32_t kv_dim,
                                      const kiln_bk_attn *attn, kiln_bk_tensor *dst);
/* ---- vk_layout.c ---- */
/* iface weight_prepare: Q4_0 weights whose rows allow it go to the split
 * layout (KILN_VK_LAYOUT_Q4_0_SPLIT); everything else stays as uploaded. */
kiln_status kiln_vk_weight_prepare(kiln_bk_device *dev, const kiln_bk_tensor *w, int32_t *layout);
/* Whether w->layout is one the kernels can read for this tensor (its
 * rows as weight_prepare requires them); an error naming op otherwise. */
kiln_status kiln_vk_layout_check(const kiln_bk_tensor *w, const char *op);

/* Forget the quantized activations if [offset, +size) of buf overlaps them. */
void kiln_vk_act_written(kiln_bk_device *dev, const kiln_bk_buffer *buf, uint64_t offset, uint64_t size);

/* ---- transfers (vk_device.c) ---- */
kiln_status kiln_vk_upload(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t offset, const void *src,
                           uint64_t size);
kiln_status kiln_vk_download(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t offset, void *dst,
                             uint64_t size);
kiln_status kiln_vk_copy(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t dst_offset,
                         const kiln_bk_buffer *src, uint64_t src_offset, uint64_t size);

#endif /* KILN_VK_INTERNAL_H */
