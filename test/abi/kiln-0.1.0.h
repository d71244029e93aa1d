/*
 * kiln.h - the stable public C API of kiln, an embeddable inference library
 * for large language models stored in GGUF files.
 *
 * ABI rules (a contract with every caller and binding):
 *   - Handles are opaque. Only params/info/stats structs have a public layout.
 *   - Every such struct starts with `uint32_t struct_size`. Fill it with the
 *     matching `..._init()` function, then change fields. The library reads
 *     only the first `struct_size` bytes and uses defaults for the rest, so a
 *     caller compiled against an older header keeps working. Fields are only
 *     ever appended. Structs are always passed by pointer.
 *   - Status codes are pinned forever; new ones are only appended.
 *   - Exported symbols are never renamed or removed; a changed behaviour gets
 *     a new symbol (e.g. `_v2`).
 *   - Only fixed-width types cross the ABI (friendly to FFI).
 *
 * Ownership: a `..._create`/`..._load` returns a handle the caller owns and
 * releases with the matching `..._free`, which accepts NULL. Pointers
 * returned by `const`-returning getters are borrowed: they stay valid for
 * the lifetime stated on the getter.
 *
 * Thread-safety: distinct handles may be used from distinct threads at the
 * same time (a model may be shared by contexts on several threads). A single
 * context (and its kv and draft) must not be used from two threads at once.
 * Functions marked "thread-safe" may be called from any thread at any time.
 *
 * Errors: every fallible function returns `kiln_status` (0 = KILN_OK,
 * negative = error). A message for the last failure is available from
 * kiln_last_error() (thread-local, any call) and, for calls on a context,
 * kiln_context_last_error(). Nothing reachable from caller input, a file or
 * a device failure aborts or exits the process.
 *
 * Variable-length output (tokenize, detokenize, export) follows one
 * protocol: pass buf == NULL to learn the required size in *n_out (status
 * KILN_OK); pass a buffer too small and get KILN_E_BUFFER_TOO_SMALL with the
 * required size in *n_out and nothing written.
 *
 * Since: 0.1.0 unless marked otherwise.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(KILN_BUILD)
#    define KILN_API __declspec(dllexport)
#  else
#    define KILN_API
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define KILN_API __attribute__((visibility("default")))
#else
#  define KILN_API
#endif

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_NUMBER \
    (KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH)

/* ------------------------------------------------------------------------ */
/* Status codes (pinned forever; append only)                               */
/* ------------------------------------------------------------------------ */

typedef int32_t kiln_status;

#define KILN_OK                    0
#define KILN_E_INVALID_ARG        -1  /* a bad argument: NULL, out of range */
#define KILN_E_IO                 -2  /* open/read/write/mmap failed */
#define KILN_E_FORMAT             -3  /* malformed file or byte stream */
#define KILN_E_UNSUPPORTED        -4  /* valid but not supported (arch, type) */
#define KILN_E_OOM_HOST           -5  /* host memory exhausted */
#define KILN_E_OOM_DEVICE         -6  /* device memory exhausted */
#define KILN_E_BACKEND            -7  /* backend or device error */
#define KILN_E_CONTEXT_FULL       -8  /* no room left in the KV cache */
#define KILN_E_BUSY               -9  /* the handle is in use */
#define KILN_E_CANCELLED         -10  /* a callback asked to stop */
#define KILN_E_NOT_FOUND         -11  /* no such key, tensor, sequence, device */
#define KILN_E_BUFFER_TOO_SMALL  -12  /* see the size protocol above */
#define KILN_E_INCOMPATIBLE      -13  /* e.g. state from another model */
#define KILN_E_INTERNAL          -14  /* a bug in kiln; please report it */

/* A static English description of a status ("ok", "invalid argument", ...).
 * Never NULL; unknown values give "unknown status". Thread-safe. */
KILN_API const char *kiln_status_str(kiln_status status);

/* The message of the last failed kiln call on this thread ("" if none).
 * Valid until the next kiln call on this thread. Thread-safe. */
KILN_API const char *kiln_last_error(void);

/* Library version: "MAJOR.MINOR.PATCH". Thread-safe. */
KILN_API const char *kiln_version(void);
/* KILN_VERSION_NUMBER of the library actually loaded. Thread-safe. */
KILN_API uint32_t kiln_version_number(void);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

#define KILN_LOG_ERROR 0
#define KILN_LOG_WARN  1
#define KILN_LOG_INFO  2
#define KILN_LOG_DEBUG 3

/* A log sink. `msg` is one line without a trailing newline, valid only
 * during the call. May be called from any thread that uses the handle. */
typedef void (*kiln_log_fn)(int32_t level, const char *msg, void *user);

/* Sets the process default sink, used by handles created without their own
 * sink and by calls made before a handle exists. fn == NULL restores the
 * built-in default: errors to stderr, nothing else. Messages above
 * max_level are dropped. Thread-safe; affects handles created afterwards. */
KILN_API void kiln_log_set_default(kiln_log_fn fn, void *user, int32_t max_level);

/* ------------------------------------------------------------------------ */
/* Handles                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct kiln_model   kiln_model;   /* weights + tokenizer, immutable */
typedef struct kiln_context kiln_context; /* KV cache + compute state */
typedef struct kiln_draft   kiln_draft;   /* a draft context (speculative) */
typedef struct kiln_kv      kiln_kv;      /* a context's KV cache (borrowed) */
typedef struct kiln_sampler kiln_sampler; /* a sampling chain */
typedef struct kiln_detokenizer kiln_detokenizer; /* streaming detokenizer */

/* ------------------------------------------------------------------------ */
/* Model                                                                    */
/* ------------------------------------------------------------------------ */

#define KILN_MODEL_NO_MMAP  (1u << 0)  /* read weights into memory instead */
#define KILN_MODEL_VOCAB_ONLY (1u << 1) /* load the tokenizer only */

typedef struct kiln_model_params {
    uint32_t struct_size;
    uint32_t flags;         /* KILN_MODEL_* (default 0) */
    const char *backend;    /* "cpu" (default when NULL), "cuda", "vulkan" */
    int32_t device;         /* device index within the backend (default 0) */
    int32_t log_level;      /* max level for this handle (default ERROR) */
    kiln_log_fn log_fn;     /* NULL: the process default sink */
    void *log_user;
    /* Layers split across devices (NULL or "": all on backend/device).
     * Comma-separated entries "BACKEND:DEVICE[:N_LAYERS]" in layer order,
     * at most KILN_SPLIT_MAX and at most one per layer, e.g.
     * "cuda:0:16,cuda:1": the first 16 layers on cuda:0, the rest on
     * cuda:1. An entry without N_LAYERS gets an even share of the layers
     * the counted entries leave (earlier entries take the remainder); every
     * entry gets at least one layer and the counts must add up to the
     * model's n_layer. The same device may be named more than once (each
     * entry opens its own device handle). When set, backend and device are
     * ignored. Token embeddings live with the first entry, the output norm
     * and matrix with the last; each context of the model opens a device
     * handle per entry, keeps each layer's KV cache on that layer's device,
     * and copies the activations between devices through host memory.
     * Errors: KILN_E_INVALID_ARG (syntax, counts), KILN_E_NOT_FOUND
     * (unknown backend, no such device). Copied during kiln_model_load. */
    const char *split;
} kiln_model_params;

#define KILN_SPLIT_MAX 16 /* entries of kiln_model_params.split */

/* Fills *p with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_model_params_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_model_params_init_sized(kiln_model_params *p, uint32_t size);
static inline void kiln_model_params_init(kiln_model_params *p) {
    kiln_model_params_init_sized(p, (uint32_t)sizeof(*p));
}

/* Loads a GGUF model. On success *out owns the model. On failure *out is
 * NULL, nothing is leaked and kiln_last_error() says what and where.
 * Returns KILN_E_INVALID_ARG, KILN_E_IO, KILN_E_FORMAT, KILN_E_UNSUPPORTED,
 * KILN_E_OOM_HOST, KILN_E_OOM_DEVICE, KILN_E_BACKEND. Thread-safe. */
KILN_API kiln_status kiln_model_load(const char *path, const kiln_model_params *params,
                                     kiln_model **out);

/* Releases the caller's reference. Contexts created from the model keep it
 * alive until they are freed, so any free order is safe. NULL is a no-op. */
KILN_API void kiln_model_free(kiln_model *model);

typedef struct kiln_model_info {
    uint32_t struct_size;
    char arch[32];          /* "llama", "qwen2", "qwen3" */
    char name[128];         /* general.name or "" */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t n_ff;
    uint32_t head_dim;
    uint64_t n_params;      /* number of weights */
    uint64_t size_bytes;    /* bytes of weight data */
    int32_t bos;            /* -1 if none */
    int32_t eos;            /* -1 if none */
} kiln_model_info;

/* Fills *info with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_model_info_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_model_info_init_sized(kiln_model_info *info, uint32_t size);
static inline void kiln_model_info_init(kiln_model_info *info) {
    kiln_model_info_init_sized(info, (uint32_t)sizeof(*info));
}
/* Fills *info (up to info->struct_size bytes). Thread-safe. */
KILN_API kiln_status kiln_model_get_info(const kiln_model *model, kiln_model_info *info);

/* Copies the string value of the model file's GGUF metadata key `key`
 * (e.g. "tokenizer.chat_template") into buf, NUL-terminated; *n_out is the
 * size including the NUL. Size protocol as at the top of this file.
 * Returns KILN_E_INVALID_ARG (NULL argument, or the key's value is not a
 * string), KILN_E_NOT_FOUND (no such key), KILN_E_BUFFER_TOO_SMALL.
 * Thread-safe. Since: 0.1.0 (added with kiln-server). */
KILN_API kiln_status kiln_model_meta_str(const kiln_model *model, const char *key, char *buf,
                                         size_t capacity, size_t *n_out);

/* ------------------------------------------------------------------------ */
/* Quantization (a model file to a model file)                              */
/* ------------------------------------------------------------------------ */

/* Target file types. The values are those of GGUF's general.file_type
 * (llama.cpp's llama_ftype), which the output file records. "Mostly":
 * 1-D tensors (norms) keep their type, and the mixes choose per tensor. */
#define KILN_FTYPE_F32     0
#define KILN_FTYPE_F16     1
#define KILN_FTYPE_Q4_0    2
#define KILN_FTYPE_Q4_1    3
#define KILN_FTYPE_Q8_0    7
#define KILN_FTYPE_Q5_0    8
#define KILN_FTYPE_Q5_1    9
#define KILN_FTYPE_Q4_K   14 /* Q4_K weights (llama.cpp's file_type Q4_K_S) */
#define KILN_FTYPE_Q4_K_M 15 /* Q4_K, with Q6_K for some attn_v / ffn_down */
#define KILN_FTYPE_Q5_K   16 /* Q5_K weights (llama.cpp's file_type Q5_K_S) */
#define KILN_FTYPE_Q5_K_M 17 /* Q5_K, with Q6_K for some attn_v / ffn_down */
#define KILN_FTYPE_Q6_K   18
#define KILN_FTYPE_BF16   32

/* kiln_quantize_params.flags */
#define KILN_QUANTIZE_PURE (1u << 0) /* every 2-D weight gets the ftype's
                                      * type: no per-tensor mix, no Q6_K
                                      * output.weight */
#define KILN_QUANTIZE_ALLOW_REQUANTIZE (1u << 1) /* accept already quantized
                                      * input tensors (dequantized first:
                                      * quality suffers) */

/* Called before each tensor is written: tensor i of n (from 0), its name,
 * and the GGUF type id it is written in. Return 0 to go on, nonzero to
 * cancel (KILN_E_CANCELLED, no output file). Runs on the calling thread. */
typedef int32_t (*kiln_quantize_progress_fn)(uint64_t i, uint64_t n, const char *name,
                                             int32_t type, void *user);

typedef struct kiln_quantize_params {
    uint32_t struct_size;
    int32_t ftype;          /* KILN_FTYPE_* (default KILN_FTYPE_Q4_K_M) */
    uint32_t flags;         /* KILN_QUANTIZE_* (default 0) */
    int32_t n_threads;      /* worker threads; 0 (default): one per core */
    kiln_quantize_progress_fn progress; /* NULL (default): none */
    void *progress_user;
} kiln_quantize_params;

/* Fills *p with defaults, writing only the first `size` bytes (the
 * caller's sizeof) and sets struct_size = min(size, the library's size).
 * The inline kiln_quantize_params_init() passes sizeof for you. */
KILN_API void kiln_quantize_params_init_sized(kiln_quantize_params *p, uint32_t size);
static inline void kiln_quantize_params_init(kiln_quantize_params *p) {
    kiln_quantize_params_init_sized(p, (uint32_t)sizeof(*p));
}

/* Writes the GGUF model at in_path with its weights converted to
 * params->ftype (params NULL: defaults) as out_path. Every metadata key is
 * copied (general.file_type and general.quantization_version are set);
 * tensors are written in llama.cpp's order (by layer, then name), so the
 * result matches llama-quantize's file byte for byte where the
 * quantizers agree. The mixes choose types per tensor as llama.cpp does
 * (output.weight Q6_K, attn_v / ffn_down Q6_K in the first and last eighth
 * of the layers and every third between; tensors whose rows do not divide
 * into the type's blocks fall back to Q5_0/Q5_1/Q8_0/F16). Input tensors
 * may be F32, F16 or BF16 (or, with KILN_QUANTIZE_ALLOW_REQUANTIZE, any
 * type kiln reads); a tensor already in its target type is copied.
 * Memory stays bounded: the input is mapped and each tensor is converted
 * in slices of rows and written sequentially. The output is written to a
 * temporary file beside out_path and renamed at the end, so a failed or
 * cancelled call leaves no partial file (and an existing out_path as it
 * was). Returns KILN_E_INVALID_ARG (NULL path, unknown ftype or flags),
 * KILN_E_IO (cannot read in_path, cannot write beside out_path, disk
 * full), KILN_E_FORMAT (malformed input), KILN_E_UNSUPPORTED (an input
 * tensor type it cannot convert), KILN_E_OOM_HOST, KILN_E_CANCELLED.
 * Thread-safe (independent calls may run at once). */
KILN_API kiln_status kiln_model_quantize(const char *in_path, const char *out_path,
                                         const kiln_quantize_params *params);

/* ------------------------------------------------------------------------ */
/* Tokenizer                                                                */
/* ------------------------------------------------------------------------ */

#define KILN_TOKENIZE_ADD_BOS       (1u << 0) /* add BOS if the model wants one */
#define KILN_TOKENIZE_PARSE_SPECIAL (1u << 1) /* "<|eos|>" in text -> its id */

/* Tokenizes text[0..text_len). Size protocol: tokens == NULL -> *n_out =
 * count, KILN_OK; capacity too small -> KILN_E_BUFFER_TOO_SMALL. Invalid
 * UTF-8 is tokenized as bytes, never rejected. Thread-safe. */
KILN_API kiln_status kiln_tokenize(const kiln_model *model, const char *text, size_t text_len,
                                   uint32_t flags, int32_t *tokens, size_t capacity,
                                   size_t *n_out);

#define KILN_DETOK_SKIP_SPECIAL (1u << 0) /* do not render control tokens */

/* Writes the bytes of tokens[0..n) (not NUL-terminated) to buf. Size
 * protocol as above. KILN_E_INVALID_ARG for an out-of-range token.
 * Thread-safe. */
KILN_API kiln_status kiln_detokenize(const kiln_model *model, const int32_t *tokens, size_t n,
                                     uint32_t flags, char *buf, size_t capacity, size_t *n_out);

KILN_API int32_t kiln_token_bos(const kiln_model *model); /* -1 if none */
KILN_API int32_t kiln_token_eos(const kiln_model *model); /* -1 if none */
/* 1 if the token ends generation (EOS, EOT, ...), else 0. */
KILN_API int32_t kiln_token_is_eog(const kiln_model *model, int32_t token);
KILN_API int32_t kiln_model_n_vocab(const kiln_model *model);

/* A streaming detokenizer: feed tokens one at a time and get only complete
 * UTF-8 (a multi-byte character split across tokens is held back until it
 * completes). Borrows the model (keeps it alive). */
KILN_API kiln_status kiln_detokenizer_create(kiln_model *model, uint32_t flags,
                                             kiln_detokenizer **out);
KILN_API void kiln_detokenizer_free(kiln_detokenizer *d);
/* Appends the text completed by `token` to buf; size protocol as above
 * (state changes only when KILN_OK is returned with buf != NULL). */
KILN_API kiln_status kiln_detokenizer_push(kiln_detokenizer *d, int32_t token, char *buf,
                                           size_t capacity, size_t *n_out);
/* Returns whatever is held back (invalid sequences as U+FFFD) and resets. */
KILN_API kiln_status kiln_detokenizer_flush(kiln_detokenizer *d, char *buf, size_t capacity,
                                            size_t *n_out);

/* ------------------------------------------------------------------------ */
/* Context and decoding                                                     */
/* ------------------------------------------------------------------------ */

/* Called by kiln_decode after every ubatch has run (see ubatch_cb below):
 * ubatch_index counts from 0 within the decode call, n_tokens is the
 * ubatch's token count, kv_len the longest attention span in it (for a
 * single sequence: its KV length after this ubatch). Return 0 to go on,
 * nonzero to cancel the decode (KILN_E_CANCELLED, KV cache as before the
 * call). Runs on the decoding thread. Inside the callback only these calls
 * on ctx are allowed: kiln_context_pool_stats, kiln_context_pool_purge,
 * kiln_context_pool_set_cap, kiln_context_last_error and the read-only
 * kiln_kv_seq_pos_max (which reports lengths from before the call);
 * kiln_decode, kiln_context_suspend and kiln_context_resume return
 * KILN_E_BUSY there, and anything else (freeing ctx, changing its KV cache)
 * is undefined. */
typedef int32_t (*kiln_ubatch_fn)(kiln_context *ctx, uint32_t ubatch_index, uint32_t n_tokens,
                                  uint32_t kv_len, void *user);

/* kiln_context_params.flags */
#define KILN_CONTEXT_AUTO_PURGE (1u << 0) /* purge the pool after every prefill
                                              ubatch (one with > 1 token) */
/* Past kv_host_budget, automatic idle offload drops the least recently used
 * idle offloaded sequence (its positions are lost: pos_max becomes -1)
 * instead of failing the decode with KILN_E_CONTEXT_FULL. */
#define KILN_CONTEXT_KV_DROP_LRU (1u << 1)

typedef struct kiln_context_params {
    uint32_t struct_size;
    uint32_t n_ctx;          /* KV capacity in tokens, all sequences (default 4096,
                                capped to the model's training context) */
    uint32_t n_ubatch;       /* max tokens per forward pass (default 512) */
    uint32_t n_seq_max;      /* max distinct sequence ids (default 16) */
    int32_t n_threads;       /* CPU threads; <= 0: number of cores (default 0) */
    uint32_t kv_block_size;  /* tokens per KV block (default 32) */
    uint32_t flags;          /* KILN_CONTEXT_* (default 0) */
    int32_t log_level;       /* max level for this handle (default ERROR) */
    kiln_log_fn log_fn;      /* NULL: the model's sink */
    void *log_user;
    kiln_ubatch_fn ubatch_cb; /* NULL: none (default) */
    void *ubatch_user;       /* passed to ubatch_cb */
    uint64_t pool_cap;       /* max cached bytes of the context's transient
                                pool (of each, for a split model); 0: the
                                backend's default (default 0) */
    /* Automatic idle offload (docs/memory.md). kv_device_budget: bytes of
     * KV blocks a decode may keep on the device (for a split model: on all
     * its devices together, a block holding its layers' rows on each
     * layer's device; rounded down to whole
     * blocks, at least one; kiln_kv_stats.block_bytes per block). When a
     * decode needs more blocks than the budget (or the cache) has free,
     * the least recently used sequences not in that batch are offloaded to
     * host memory first, and come back by themselves when decoded again,
     * with identical logits. A budget at or above the whole cache
     * (UINT64_MAX) offloads only when the cache's blocks run out. 0
     * (default): no automatic offload; a decode that does not fit returns
     * KILN_E_CONTEXT_FULL as before. Explicit kiln_kv_seq_restore,
     * copies and middle removals are bounded by the cache, not the
     * budget. */
    uint64_t kv_device_budget;
    /* bytes of offloaded rows the automatic offload may hold in host
     * memory (explicit offloads are not limited but count); only used
     * with a kv_device_budget; past it see
     * KILN_CONTEXT_KV_DROP_LRU. 0 (default): unlimited. */
    uint64_t kv_host_budget;
} kiln_context_params;

/* Fills *p with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_context_params_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_context_params_init_sized(kiln_context_params *p, uint32_t size);
static inline void kiln_context_params_init(kiln_context_params *p) {
    kiln_context_params_init_sized(p, (uint32_t)sizeof(*p));
}

/* Creates a context on the model's backend and device. Takes a reference to
 * the model. Returns KILN_E_INVALID_ARG, KILN_E_OOM_HOST, KILN_E_OOM_DEVICE,
 * KILN_E_BACKEND. Thread-safe with respect to other contexts. */
KILN_API kiln_status kiln_context_create(kiln_model *model, const kiln_context_params *params,
                                         kiln_context **out);
/* Frees the context, its KV cache and compute buffers; drops its model
 * reference. NULL is a no-op. */
KILN_API void kiln_context_free(kiln_context *ctx);

/* The message of the last failure on this context ("" if none). Valid until
 * the next call on the context. */
KILN_API const char *kiln_context_last_error(const kiln_context *ctx);

/* The context's KV cache, borrowed: valid while the context lives. */
KILN_API kiln_kv *kiln_context_kv(kiln_context *ctx);

typedef struct kiln_batch {
    uint32_t struct_size;
    uint32_t n_tokens;
    const int32_t *tokens;   /* n_tokens ids */
    const int32_t *pos;      /* positions; NULL: each token continues its sequence */
    const int32_t *seq_id;   /* sequence ids in [0, n_seq_max); NULL: all 0 */
    const int8_t *logits;    /* nonzero: return logits for this token;
                                NULL: only the last token */
} kiln_batch;

/* Fills *b with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_batch_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_batch_init_sized(kiln_batch *b, uint32_t size);
static inline void kiln_batch_init(kiln_batch *b) {
    kiln_batch_init_sized(b, (uint32_t)sizeof(*b));
}

/* Decodes a batch: tokens of several sequences may be mixed; each sequence's
 * tokens must be in increasing, contiguous positions that continue the
 * sequence (pos == current length). The batch is split into ubatches of
 * n_ubatch tokens. On KILN_E_CONTEXT_FULL (or any other error) the KV cache
 * is left as it was before the call. Returns KILN_E_INVALID_ARG,
 * KILN_E_CONTEXT_FULL, KILN_E_OOM_HOST, KILN_E_OOM_DEVICE, KILN_E_BACKEND. */
KILN_API kiln_status kiln_decode(kiln_context *ctx, const kiln_batch *batch);

/* Logits (n_vocab floats) of token i of the last decoded batch; i < 0 counts
 * from the end (-1 = last). NULL if that token's logits were not requested.
 * Valid until the next decode or free of ctx. */
KILN_API const float *kiln_context_logits(kiln_context *ctx, int32_t i);

/* Statistics of a context's transient pool (activation buffers of its
 * device handle; weights and KV cache are not counted). See docs/memory.md. */
typedef struct kiln_pool_stats {
    uint32_t struct_size;
    uint64_t bytes_in_use;    /* handed out to running work, not yet returned */
    uint64_t bytes_cached;    /* returned and kept for reuse (purge frees them) */
    uint64_t bytes_peak;      /* max of in_use + cached since the context began */
    uint64_t cap;             /* max bytes_cached; 0: unlimited */
    uint64_t n_allocs;        /* buffers handed out */
    uint64_t n_frees;         /* buffers returned */
    uint64_t n_device_allocs; /* handouts that had to allocate device memory */
} kiln_pool_stats;

/* Fills *s with zeros, writing only the first `size` bytes, and sets
 * struct_size = min(size, the library's size). The inline
 * kiln_pool_stats_init() passes sizeof for you. */
KILN_API void kiln_pool_stats_init_sized(kiln_pool_stats *s, uint32_t size);
static inline void kiln_pool_stats_init(kiln_pool_stats *s) {
    kiln_pool_stats_init_sized(s, (uint32_t)sizeof(*s));
}
/* Fills *out (up to out->struct_size bytes) with the pool statistics of
 * the context's device handle (of a split model: the sums over the
 * context's handle per split; bytes_peak is then the sum of the pools'
 * peaks). Allowed inside the ubatch callback.
 * Returns KILN_E_INVALID_ARG. */
KILN_API kiln_status kiln_context_pool_stats(kiln_context *ctx, kiln_pool_stats *out);
/* Waits for the context's queued work, then frees every cached pool buffer
 * (bytes_cached becomes 0; buffers in use are never freed). Allowed inside
 * the ubatch callback. Returns KILN_E_INVALID_ARG, KILN_E_BACKEND. */
KILN_API kiln_status kiln_context_pool_purge(kiln_context *ctx);
/* Sets the pool's cap on cached bytes (0: unlimited; a split model's
 * context: each device's pool) and trims the cache down to it at once; a returned buffer larger than the cap is freed
 * rather than cached. Allowed inside the ubatch callback.
 * Returns KILN_E_INVALID_ARG. */
KILN_API kiln_status kiln_context_pool_set_cap(kiln_context *ctx, uint64_t bytes);

/* Suspend levels */
#define KILN_SUSPEND_KV      1 /* KV cache to host memory, pool purged */
#define KILN_SUSPEND_WEIGHTS 2 /* also the model's device copy of the weights */

/* Releases a context's device memory while keeping its state. Level 1:
 * the KV cache contents move to host memory (kiln_malloc'd copies of the
 * used part of every layer's K and V) and the device KV buffers and the
 * cached pool buffers are freed. Level 2: level 1, and the context stops
 * holding the model's device copy of the weights; the model releases it
 * when no context holds it (a model shared by contexts keeps its weights
 * until every one of them is suspended at level 2). Weights that are
 * zero-copy over the file mapping (the CPU backend) have no device copy:
 * level 2 then releases nothing more than level 1. The KV handle, sequence
 * lengths, the last logits and the pool statistics' counters stay
 * available; KV operations that move rows (export, import, offload,
 * restore, save, load) resume the context first, as kiln_decode does. Suspending a suspended context at a higher level deepens it;
 * at the same or a lower level it is a no-op (KILN_OK).
 * On failure the context is still active, unchanged.
 * Returns KILN_E_INVALID_ARG, KILN_E_OOM_HOST, KILN_E_BACKEND, and
 * KILN_E_BUSY inside the ubatch callback. */
KILN_API kiln_status kiln_context_suspend(kiln_context *ctx, int32_t level);
/* Brings a suspended context back: re-uploads the weights if they were
 * released (from the mapped file) and the KV cache; every sequence then
 * continues with the same logits as if never suspended. A no-op on an
 * active context. kiln_decode resumes a suspended context by itself. On
 * failure the context is still suspended, unchanged, and resume may be
 * retried. Returns KILN_E_INVALID_ARG, KILN_E_OOM_HOST, KILN_E_OOM_DEVICE,
 * KILN_E_BACKEND, and KILN_E_BUSY inside the ubatch callback. */
KILN_API kiln_status kiln_context_resume(kiln_context *ctx);
/* The context's suspend level: 0 active, 1 or 2. */
KILN_API int32_t kiln_context_suspended(const kiln_context *ctx);

/* ------------------------------------------------------------------------ */
/* KV cache                                                                 */
/* ------------------------------------------------------------------------ */

/* Removes every cell of every sequence. */
KILN_API kiln_status kiln_kv_clear(kiln_kv *kv);
/* Removes positions [p0, p1) of sequence seq (p1 < 0: to the end). seq < 0:
 * every sequence. A range in the middle (p1 < length) is removed by
 * shifting: later positions move down by p1 - p0 and their K rows are
 * re-rotated for their new positions (like llama.cpp's context shift, the
 * result is close to, not equal to, a fresh prefill without the removed
 * tokens). A middle removal needs free KV blocks for the rewritten tail
 * (KILN_E_CONTEXT_FULL otherwise, nothing changed) and a single seq >= 0
 * (KILN_E_UNSUPPORTED for seq < 0). Before the KV sequence operations
 * were added, middle ranges always gave KILN_E_UNSUPPORTED. */
KILN_API kiln_status kiln_kv_seq_rm(kiln_kv *kv, int32_t seq, int32_t p0, int32_t p1);
/* Highest position stored for seq, -1 if empty. */
KILN_API int32_t kiln_kv_seq_pos_max(const kiln_kv *kv, int32_t seq);

/* Makes dst_seq a copy of src_seq (dst_seq is cleared first). The copy
 * shares src_seq's KV blocks by reference; when either sequence later
 * appends into a shared, partially filled block, that block is copied first
 * (copy-on-write), so each sequence decodes exactly as if it had been
 * prefilled alone. A copy of an offloaded sequence is offloaded too (its
 * host rows are duplicated). src_seq == dst_seq is a no-op. Returns
 * KILN_E_INVALID_ARG, KILN_E_OOM_HOST (nothing changed). */
KILN_API kiln_status kiln_kv_seq_cp(kiln_kv *kv, int32_t src_seq, int32_t dst_seq);
/* Removes every sequence except seq (offloaded ones included). Returns
 * KILN_E_INVALID_ARG. */
KILN_API kiln_status kiln_kv_seq_keep(kiln_kv *kv, int32_t seq);

/* Serializes sequence seq (its positions 0..len-1 of every layer's K and V,
 * as F16, plus a header with the model's fingerprint) into buf, following
 * the size protocol at the top of this file. The bytes do not depend on
 * n_ctx, the block size or where the blocks live (an offloaded sequence
 * exports the same bytes); they can be imported into any context of a
 * model with the same architecture, hyperparameters and tensor shapes and
 * types. Little-endian hosts. Returns KILN_E_INVALID_ARG,
 * KILN_E_BUFFER_TOO_SMALL, KILN_E_BACKEND. */
KILN_API kiln_status kiln_kv_seq_export(kiln_kv *kv, int32_t seq, void *buf, size_t capacity,
                                        size_t *n_out);
/* Replaces sequence seq with the state in buf[0..size) written by
 * kiln_kv_seq_export. Everything is validated before anything changes:
 * KILN_E_FORMAT for malformed or truncated bytes, KILN_E_INCOMPATIBLE for
 * state from another model (fingerprint, layer count or KV width) or a
 * newer format version, KILN_E_CONTEXT_FULL if the free blocks cannot hold
 * it (the new rows are placed before the old ones are released), also
 * KILN_E_INVALID_ARG, KILN_E_BACKEND. On any error the cache is unchanged.
 * buf is only read during the call. */
KILN_API kiln_status kiln_kv_seq_import(kiln_kv *kv, int32_t seq, const void *buf, size_t size);
/* kiln_kv_seq_export to a file: written to "<path>.tmp" and renamed over
 * path, so path never holds a partial state. Returns what export returns,
 * KILN_E_OOM_HOST and KILN_E_IO. */
KILN_API kiln_status kiln_kv_seq_save(kiln_kv *kv, int32_t seq, const char *path);
/* kiln_kv_seq_import from a file. Returns what import returns, KILN_E_IO
 * and KILN_E_OOM_HOST. */
KILN_API kiln_status kiln_kv_seq_load(kiln_kv *kv, int32_t seq, const char *path);

/* Moves sequence seq's KV rows into host memory owned by the cache and
 * releases its device blocks (a block shared with other sequences keeps
 * their reference; this sequence's rows are copied). The sequence keeps
 * its length and positions; a decode that appends to it restores it
 * automatically (KILN_E_CONTEXT_FULL from that decode if no blocks are
 * free), and it then continues with bit-identical logits. Offloading an
 * empty or already offloaded sequence is a no-op. Returns
 * KILN_E_INVALID_ARG, KILN_E_OOM_HOST, KILN_E_BACKEND (nothing changed). */
KILN_API kiln_status kiln_kv_seq_offload(kiln_kv *kv, int32_t seq);
/* Brings an offloaded sequence back onto device blocks and frees its host
 * copy; a no-op for a sequence on the device. Returns KILN_E_INVALID_ARG,
 * KILN_E_CONTEXT_FULL (not enough free blocks), KILN_E_BACKEND (nothing
 * changed). */
KILN_API kiln_status kiln_kv_seq_restore(kiln_kv *kv, int32_t seq);

typedef struct kiln_kv_stats {
    uint32_t struct_size;
    uint32_t block_size;       /* cells (token positions) per block */
    uint32_t n_blocks_total;   /* blocks in the cache */
    uint32_t n_blocks_used;    /* blocks held by at least one sequence */
    uint32_t n_blocks_free;    /* n_blocks_total - n_blocks_used */
    uint32_t n_blocks_shared;  /* blocks held by two or more sequences */
    uint32_t n_seq_max;        /* sequence ids of the context */
    uint32_t n_seq;            /* non-empty sequences (offloaded included) */
    uint32_t n_seq_offloaded;  /* sequences whose rows are in host memory */
    uint32_t reserved;         /* 0 */
    uint64_t block_bytes;      /* device bytes of one block, all layers, K and V */
    uint64_t bytes_device;     /* device bytes of the KV buffers (all blocks;
                                  0 while the context is suspended) */
    uint64_t bytes_host;       /* host bytes holding offloaded rows (and a
                                  suspended context's cache) */
    uint64_t n_auto_offloads;  /* sequences offloaded by automatic idle offload */
    uint64_t n_auto_restores;  /* offloaded sequences brought back by a decode */
    uint64_t n_dropped;        /* sequences dropped under KILN_CONTEXT_KV_DROP_LRU */
} kiln_kv_stats;

/* Fills *s with zeros, writing only the first `size` bytes (the caller's
 * sizeof: a caller built against an older, shorter struct is never
 * overrun) and sets struct_size = min(size, the library's size). The
 * inline kiln_kv_stats_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_kv_stats_init_sized(kiln_kv_stats *s, uint32_t size);
static inline void kiln_kv_stats_init(kiln_kv_stats *s) {
    kiln_kv_stats_init_sized(s, (uint32_t)sizeof(*s));
}
/* Fills *out (up to out->struct_size bytes) with the cache's statistics.
 * (Named _get_stats because the struct owns the name kiln_kv_stats.)
 * Returns KILN_E_INVALID_ARG. */
KILN_API kiln_status kiln_kv_get_stats(const kiln_kv *kv, kiln_kv_stats *out);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct kiln_sampler_params {
    uint32_t struct_size;
    float temperature;       /* <= 0: greedy (default 0.8) */
    int32_t top_k;           /* <= 0: off (default 40) */
    float top_p;             /* >= 1: off (default 0.95) */
    float min_p;             /* <= 0: off (default 0.05) */
    float repeat_penalty;    /* 1: off (default 1) */
    float freq_penalty;      /* 0: off (default 0) */
    float presence_penalty;  /* 0: off (default 0) */
    int32_t penalty_last_n;  /* tokens of history for penalties (default 64) */
    uint64_t seed;           /* RNG seed (default 0xC0FFEE) */
} kiln_sampler_params;

/* Fills *p with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_sampler_params_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_sampler_params_init_sized(kiln_sampler_params *p, uint32_t size);
static inline void kiln_sampler_params_init(kiln_sampler_params *p) {
    kiln_sampler_params_init_sized(p, (uint32_t)sizeof(*p));
}
/* Order: penalties (repeat, frequency, presence over the last penalty_last_n
 * accepted tokens), then greedy argmax if temperature <= 0, else top-k ->
 * top-p -> min-p -> temperature -> softmax -> seeded draw (llama.cpp common
 * sampler order; top-p/min-p see the T = 1 distribution). NaN logits count
 * as -inf; all NaN/-inf gives KILN_E_INVALID_ARG. */
KILN_API kiln_status kiln_sampler_create(const kiln_sampler_params *params, kiln_sampler **out);
KILN_API void kiln_sampler_free(kiln_sampler *s);
/* Picks a token from n_vocab logits (not modified). Same seed and inputs ->
 * same token sequence on every platform. */
KILN_API kiln_status kiln_sampler_sample(kiln_sampler *s, const float *logits, int32_t n_vocab,
                                         int32_t *token);
/* Records a token in the penalty history (sample() does this itself for
 * the tokens it returns; call it for prompt tokens). */
KILN_API kiln_status kiln_sampler_accept(kiln_sampler *s, int32_t token);
/* Clears history and reseeds. */
KILN_API void kiln_sampler_reset(kiln_sampler *s, uint64_t seed);

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */
/* ------------------------------------------------------------------------ */

#define KILN_DEVICE_HOST_MEMORY (1u << 0) /* the device computes in host memory */

typedef struct kiln_device_info {
    uint32_t struct_size;
    char name[128];          /* the device's name ("cpu", a GPU's product name) */
    char backend[32];        /* the backend's name */
    uint64_t mem_total;      /* bytes; 0 if unknown */
    uint64_t mem_free;       /* bytes available now; 0 if unknown */
    uint32_t flags;          /* KILN_DEVICE_* */
} kiln_device_info;

/* Fills *info with defaults, writing only the first `size` bytes, and sets
 * struct_size = min(size, the library's size). The inline
 * kiln_device_info_init() passes sizeof for you. */
KILN_API void kiln_device_info_init_sized(kiln_device_info *info, uint32_t size);
static inline void kiln_device_info_init(kiln_device_info *info) {
    kiln_device_info_init_sized(info, (uint32_t)sizeof(*info));
}

/* Number of devices of a backend ("cpu" when NULL); loads a plugin backend
 * if needed but creates no device context and allocates nothing on any
 * device. -1 (with kiln_last_error()) if the backend is unknown or cannot
 * be loaded. Thread-safe. */
KILN_API int32_t kiln_backend_device_count(const char *backend);
/* Describes device `index` of a backend (up to info->struct_size bytes)
 * without creating a device context. Returns KILN_E_INVALID_ARG,
 * KILN_E_NOT_FOUND (unknown backend or index), KILN_E_BACKEND. Thread-safe. */
KILN_API kiln_status kiln_backend_device_info(const char *backend, int32_t index,
                                              kiln_device_info *info);
/* Speculative decoding                                                     */
/* ------------------------------------------------------------------------ */

/* A draft (kiln_draft) pairs a target context with a small draft model of
 * the same vocabulary. The draft proposes tokens greedily on a context of
 * its own; the target checks all of them in one batch and keeps the longest
 * prefix it agrees with, plus one token of its own. Sequence 0 of the
 * target is the one spoken for; the draft mirrors it.
 *
 * Ownership: the draft holds a reference to the draft model (any free order
 * of the models is safe) and belongs to its target: freeing the target
 * first releases the draft's context and device memory at once, leaving a
 * detached shell on which every call but kiln_draft_free and
 * kiln_draft_get_stats returns KILN_E_INVALID_ARG; kiln_draft_free is still
 * required and works before or after the target's free. A target has at
 * most one draft at a time. Suspending the target (kiln_context_suspend)
 * suspends the draft's context at the same level; it resumes by itself when
 * the draft is used again.
 *
 * Thread-safety: a draft is used together with its target: never from two
 * threads at once, nor at the same time as the target context. */

typedef struct kiln_draft_params {
    uint32_t struct_size;
    int32_t n_draft;     /* max tokens per proposal, 1..256 (default 8) */
    uint32_t n_ctx;      /* the draft context's KV capacity in tokens;
                            0: the target's n_ctx (default 0) */
    int32_t n_threads;   /* CPU threads; <= 0: the target's (default 0) */
    float p_min;         /* stop a proposal when the draft's greedy token has
                            probability < p_min (default 0: never) */
} kiln_draft_params;

/* Fills *p with defaults, writing only the first `size` bytes (the
 * caller's sizeof: a caller built against an older, shorter struct is
 * never overrun) and sets struct_size = min(size, the library's size).
 * The inline kiln_draft_params_init() passes sizeof for you; FFI bindings call
 * this with their own struct size. */
KILN_API void kiln_draft_params_init_sized(kiln_draft_params *p, uint32_t size);
static inline void kiln_draft_params_init(kiln_draft_params *p) {
    kiln_draft_params_init_sized(p, (uint32_t)sizeof(*p));
}

/* Creates a draft for `target` on `draft_model` (params NULL: defaults).
 * The vocabularies must match: the same n_vocab and identical token texts,
 * else KILN_E_INCOMPATIBLE naming the first differing token. Creates the
 * draft's own context on the draft model's backend and device (taking a
 * model reference). The draft's sequence 0 starts empty. On failure *out
 * is NULL and nothing is leaked. Returns KILN_E_INVALID_ARG (NULL, bad
 * params, a vocab-only model), KILN_E_BUSY (target already has a draft),
 * KILN_E_INCOMPATIBLE, KILN_E_OOM_HOST, KILN_E_OOM_DEVICE, KILN_E_BACKEND. */
KILN_API kiln_status kiln_draft_create(kiln_context *target, kiln_model *draft_model,
                                       const kiln_draft_params *params, kiln_draft **out);
/* Frees the draft (and its context, if its target has not freed it yet)
 * and detaches it from its target. NULL is a no-op. */
KILN_API void kiln_draft_free(kiln_draft *d);

/* One call generate-with-draft on sequence 0. Removes sequence 0 from both
 * caches (other sequences of the target are untouched), decodes the prompt
 * (n_prompt >= 1 tokens, e.g. from kiln_tokenize with BOS) on the target
 * and the draft, then alternates: the draft proposes up to n_draft tokens,
 * the target verifies them in one batch, both caches are cut back to the
 * accepted length. Stops after n_predict tokens or at an end-of-generation
 * token (which is not written). The output, with smp == NULL (greedy,
 * argmax with ties to the lowest id) or with any sampler, is the token
 * sequence that plain decoding on the target alone gives with the same
 * sampler: each output token is chosen by the target's logits for its
 * position, one kiln_sampler_sample per output token in order (so the
 * sampler's history and random draws match a plain loop; the prompt is not
 * fed to the sampler: call kiln_sampler_accept for it first if penalties
 * should see it). For a sampler at temperature > 0 this is the speculative
 * rule "accept draft token x with probability min(1, p_t(x)/p_d(x)), on a
 * reject draw from normalize(max(0, p_t - p_d)))" for a greedy draft, whose
 * p_d is one-hot: the target's distribution is preserved exactly.
 * out_tokens needs capacity >= n_predict (n_predict >= 1), else
 * KILN_E_BUFFER_TOO_SMALL before anything is done. On an error the tokens
 * generated so far are in out_tokens[0..*n_out) and sequence 0 holds the
 * prompt and those tokens (less the newest one, which is never decoded).
 * Returns KILN_E_INVALID_ARG, KILN_E_BUFFER_TOO_SMALL, KILN_E_CONTEXT_FULL
 * (either cache is full), KILN_E_OOM_HOST, KILN_E_OOM_DEVICE,
 * KILN_E_BACKEND. */
KILN_API kiln_status kiln_draft_generate(kiln_draft *d, const int32_t *prompt, size_t n_prompt,
                                         int32_t n_predict, kiln_sampler *smp, int32_t *out_tokens,
                                         size_t capacity, size_t *n_out);

/* The lower-level steps behind kiln_draft_generate, for callers that run
 * their own loop. Invariant between steps: sequence 0 of the target and of
 * the draft hold the same tokens (the history), and `last_token`, the
 * newest token of the sequence, is in neither cache yet.
 *
 * kiln_draft_prefill decodes tokens[0..n) into the draft's sequence 0: the
 * history the caller decoded on the target itself (e.g. the prompt).
 * kiln_draft_reset empties the draft's sequence 0.
 *
 * kiln_draft_propose decodes last_token on the draft and continues greedily:
 * writes up to min(max, n_draft) proposed tokens to tokens[0..*n) (fewer if
 * p_min stops it; max == 0 gives none). The target's sequence 0 must be as
 * long as the draft's history (else KILN_E_INVALID_ARG: out of sync).
 *
 * kiln_draft_verify decodes [last_token, tokens[0..n)] on the target in one
 * batch with logits for every position, accepts the longest prefix of the
 * proposal that the target chooses too (greedy when smp == NULL, else one
 * kiln_sampler_sample per position in order, stopping at the first
 * mismatch), writes the count to *n_accepted and the target's own choice
 * after it to *next_token (the next last_token), and calls
 * kiln_draft_accept(d, *n_accepted). tokens/n must be the last proposal
 * (else KILN_E_INVALID_ARG).
 *
 * kiln_draft_accept, for callers that verify on the target themselves
 * (after decoding last_token and the proposal on the target's sequence 0):
 * keeps last_token and the first n_accepted proposed tokens in both caches
 * and removes the rest (0 <= n_accepted <= the proposal's length).
 *
 * On any failure of propose or verify both caches are left as before the
 * propose; the proposal is dropped. Return KILN_E_INVALID_ARG,
 * KILN_E_CONTEXT_FULL, KILN_E_OOM_HOST, KILN_E_OOM_DEVICE, KILN_E_BACKEND. */
KILN_API kiln_status kiln_draft_prefill(kiln_draft *d, const int32_t *tokens, size_t n);
KILN_API kiln_status kiln_draft_reset(kiln_draft *d);
KILN_API kiln_status kiln_draft_propose(kiln_draft *d, int32_t last_token, int32_t *tokens,
                                        int32_t max, int32_t *n);
KILN_API kiln_status kiln_draft_verify(kiln_draft *d, int32_t last_token, const int32_t *tokens,
                                       int32_t n, kiln_sampler *smp, int32_t *n_accepted,
                                       int32_t *next_token);
KILN_API kiln_status kiln_draft_accept(kiln_draft *d, int32_t n_accepted);

typedef struct kiln_draft_stats {
    uint32_t struct_size;
    uint64_t n_proposed;        /* draft tokens proposed */
    uint64_t n_accepted;        /* of those, accepted by the target */
    uint64_t n_target_batches;  /* target decodes made by the draft API
                                   (prompts and verifications) */
    uint64_t n_draft_batches;   /* draft decodes (prefills and proposal steps) */
} kiln_draft_stats;

/* Fills *s with zeros, writing only the first `size` bytes (see
 * kiln_draft_params_init_sized). */
KILN_API void kiln_draft_stats_init_sized(kiln_draft_stats *s, uint32_t size);
static inline void kiln_draft_stats_init(kiln_draft_stats *s) {
    kiln_draft_stats_init_sized(s, (uint32_t)sizeof(*s));
}
/* Fills *out (up to out->struct_size bytes) with the counts since create
 * (kiln_draft_reset does not clear them). Works on a detached draft. */
KILN_API kiln_status kiln_draft_get_stats(const kiln_draft *d, kiln_draft_stats *out);


/* ------------------------------------------------------------------------ */
/* Memory report (docs/memory.md "Finding where memory goes")               */
/* ------------------------------------------------------------------------ */

/* Every host allocation of the library and every device buffer it asks a
 * backend for is tagged with its owner (the handle it belongs to), its
 * purpose, and where it lives (the host heap, or a backend's device). The
 * report below sums those tags; the pools of transient buffers are taken
 * from each device handle's own pool statistics. All of it is thread-safe
 * and may be called at any time from any thread; the figures are a
 * snapshot (pool figures as of each context's last decode, purge, cap
 * change or suspend). */

/* kiln_memory_entry.space */
#define KILN_MEM_HOST   0u /* the library's host heap (kiln's own allocations) */
#define KILN_MEM_DEVICE 1u /* buffers on a backend device (on the CPU backend
                              these are host memory too: see docs/memory.md) */

/* kiln_memory_entry.owner_kind */
#define KILN_MEM_OWNER_PROCESS     0u /* no handle: process-wide state */
#define KILN_MEM_OWNER_MODEL       1u
#define KILN_MEM_OWNER_CONTEXT     2u /* includes a draft's own context */
#define KILN_MEM_OWNER_DRAFT       3u
#define KILN_MEM_OWNER_SAMPLER     4u
#define KILN_MEM_OWNER_DETOKENIZER 5u
#define KILN_MEM_OWNER_ALL   0xffffffffu /* a total over every owner */

/* kiln_memory_entry.purpose */
#define KILN_MEM_OTHER        0u
#define KILN_MEM_WEIGHTS      1u  /* model weights (mapped or a device copy) */
#define KILN_MEM_KV           2u  /* the KV cache and its block tables */
#define KILN_MEM_KV_HOST      3u  /* offloaded sequences, a suspended cache */
#define KILN_MEM_POOL         4u  /* transient (activation) pools */
#define KILN_MEM_STAGING      5u  /* export/import/save/load buffers */
#define KILN_MEM_TOKENIZER    6u  /* vocabulary, merges, tries */
#define KILN_MEM_METADATA     7u  /* GGUF tables, hyperparameters, bindings */
#define KILN_MEM_SCRATCH      8u  /* per-context host scratch and logits */
#define KILN_MEM_DEVICE_STATE 9u  /* backend handles: thread pools, streams */
#define KILN_MEM_SAMPLER     10u
#define KILN_MEM_DRAFT       11u  /* a draft's own state (its context is a
                                     CONTEXT owner) */
#define KILN_MEM_N_PURPOSES  12u
#define KILN_MEM_ALL   0xffffffffu /* a total over every purpose */

/* kiln_memory_entry.flags */
#define KILN_MEM_ENTRY_OWNER_FREED (1u << 0) /* the owner was freed: a leak */

/* Views of kiln_memory_report_get. Within one space and device, each
 * view's rows add up to the same total. */
#define KILN_MEMORY_BY_OWNER   0u /* per space, device, owner, purpose */
#define KILN_MEMORY_BY_PURPOSE 1u /* per space, device, purpose (all owners) */
#define KILN_MEMORY_BY_DEVICE  2u /* per space and device */

typedef struct kiln_memory_entry {
    uint32_t struct_size;
    uint32_t space;          /* KILN_MEM_HOST or KILN_MEM_DEVICE */
    char backend[16];        /* device rows: "cpu", "cuda", ...; host rows: "" */
    int32_t device;          /* device index; -1 on host rows */
    uint32_t owner_kind;     /* KILN_MEM_OWNER_* */
    uint64_t owner_id;       /* 1, 2, ...: the owner's number in this process
                                (0: the process, or all owners) */
    uint64_t owner_handle;   /* the handle's address, (uint64_t)(uintptr_t)ctx;
                                0 if none */
    uint32_t purpose;        /* KILN_MEM_* */
    uint32_t flags;          /* KILN_MEM_ENTRY_* */
    uint64_t bytes;          /* live bytes */
    uint64_t count;          /* live allocations (pools: buffers in use) */
    uint64_t peak_bytes;     /* high-water mark of bytes. Exact for host rows
                                and device buffers; a pool's is the backend's
                                bytes_peak, and a total that includes pools
                                adds their peaks (an upper bound) */
} kiln_memory_entry;

/* Fills *e with zeros, writing only the first `size` bytes, and sets
 * struct_size = min(size, the library's size); for bindings that mirror
 * the struct (kiln_memory_report_get needs no initialized entries). */
KILN_API void kiln_memory_entry_init_sized(kiln_memory_entry *e, uint32_t size);
static inline void kiln_memory_entry_init(kiln_memory_entry *e) {
    kiln_memory_entry_init_sized(e, (uint32_t)sizeof(*e));
}

/* Fills entries[0..*n_out) with the rows of `view` (KILN_MEMORY_BY_*).
 * entry_size is the caller's sizeof(kiln_memory_entry): entry i is at
 * (char *)entries + i * entry_size, and only min(entry_size, the
 * library's size) bytes of each are written (struct_size says how many).
 * Size protocol: entries == NULL gives the row count in *n_out (KILN_OK);
 * too small a capacity gives KILN_E_BUFFER_TOO_SMALL with the count in
 * *n_out and nothing written (rows may come and go between two calls:
 * leave room). Returns KILN_E_INVALID_ARG (bad view, n_out NULL,
 * entry_size < 4). Thread-safe. */
KILN_API kiln_status kiln_memory_report_get(uint32_t view, kiln_memory_entry *entries,
                                            size_t capacity, uint32_t entry_size,
                                            size_t *n_out);

/* The report as text (per device and per owner, bytes and counts by
 * purpose, peaks). flags: 0 (reserved). kiln_memory_report_str follows
 * the size protocol: buf == NULL gives the length (without the NUL) in
 * *n_out; otherwise the text and a NUL are written if capacity > length,
 * else KILN_E_BUFFER_TOO_SMALL and nothing written. kiln_memory_report
 * writes it to `stream`, a FILE * (void * keeps this header free of
 * <stdio.h>); KILN_E_IO if writing fails. Thread-safe. */
KILN_API kiln_status kiln_memory_report_str(uint32_t flags, char *buf, size_t capacity,
                                            size_t *n_out);
KILN_API kiln_status kiln_memory_report(void *stream, uint32_t flags);

/* Names for the constants above ("weights", "context", ...); "?" for
 * unknown values. Static strings. Thread-safe. */
KILN_API const char *kiln_memory_purpose_str(uint32_t purpose);
KILN_API const char *kiln_memory_owner_str(uint32_t owner_kind);

/* One allocation or free, for the timeline callback. */
typedef struct kiln_memory_event {
    uint32_t struct_size;
    int32_t sign;            /* +1 allocation, -1 free (a resize is a free
                                and an allocation) */
    uint64_t seq;            /* events since the process began (1, 2, ...) */
    uint64_t time_ns;        /* CLOCK_MONOTONIC */
    uint64_t size;           /* bytes allocated or freed */
    uint64_t bytes_live;     /* live bytes of the same space and device
                                after this event (pools not included) */
    uint32_t space;          /* as in kiln_memory_entry */
    char backend[16];
    int32_t device;
    uint32_t owner_kind;
    uint64_t owner_id;
    uint32_t purpose;
    int32_t line;            /* allocation site in kiln's sources where cheap
                                (device buffers), else 0 */
    const char *file;        /* static string or NULL */
} kiln_memory_event;

/* Fills *ev with zeros, writing only the first `size` bytes, and sets
 * struct_size = min(size, the library's size) (for bindings). */
KILN_API void kiln_memory_event_init_sized(kiln_memory_event *ev, uint32_t size);
static inline void kiln_memory_event_init(kiln_memory_event *ev) {
    kiln_memory_event_init_sized(ev, (uint32_t)sizeof(*ev));
}

/* Called for each allocation and free of host blocks and device buffers
 * (a pool's transient buffers are not reported: they come and go with
 * every ubatch; the CPU pool's host blocks are). ev is valid during the
 * call only. Calls are serialized (never two at once) but may come from
 * any thread that allocates, including backend worker threads; the
 * callback must be quick and must not call kiln (calls it makes are not
 * reported). */
typedef void (*kiln_memory_fn)(const kiln_memory_event *ev, void *user);

/* Sets (fn != NULL) or removes (fn == NULL) the process's timeline
 * callback. Events made after it returns go to the new callback; when it
 * removes one, no call of the old callback is running any more (unless
 * called from inside the callback). Thread-safe. */
KILN_API void kiln_memory_set_callback(kiln_memory_fn fn, void *user);

/* The leak guard: each handle's free checks that nothing is still tagged
 * to it. Found leaks are always counted here; they are logged (at
 * KILN_LOG_ERROR through the default sink, one line per group of
 * allocations with its tag and allocation site) in builds with KILN_DEBUG
 * defined and when the environment variable KILN_LEAK_GUARD=1 is set. A
 * leak is a bug in kiln: please report it. Thread-safe. */
KILN_API uint64_t kiln_memory_leak_count(void);

#ifdef __cplusplus
}
#endif
#endif /* KILN_H */
