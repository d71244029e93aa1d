/*
 * model.h - a loaded model: hyperparameters, weights on a backend device,
 * and the tokenizer. Immutable after load and shared by contexts through a
 * reference count, so kiln_model_free() may come before the contexts'.
 */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include <pthread.h>
#include <stdatomic.h>

#include "backend.h"
#include "gguf.h"
#include "internal.h"
#include "vocab.h"

typedef enum kiln_arch {
    KILN_ARCH_LLAMA = 0,
    KILN_ARCH_QWEN2,
    KILN_ARCH_QWEN3,
} kiln_arch;

typedef struct kiln_hparams {
    kiln_arch arch;
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t n_ff;
    uint32_t head_dim;       /* attention.key_length or n_embd / n_head */
    uint32_t n_rot;          /* rope.dimension_count or head_dim */
    float rms_eps;
    float rope_freq_base;
    float rope_freq_scale;   /* 1 / rope.scaling.factor for linear scaling */
    int32_t rope_mode;       /* KILN_ROPE_NORM / KILN_ROPE_NEOX */
} kiln_hparams;

/* A weight tensor on the model's device (buf == NULL: absent). */
typedef kiln_bk_tensor kiln_weight;

typedef struct kiln_layer_weights {
    kiln_weight attn_norm, wq, wk, wv, wo;
    kiln_weight bq, bk, bv;          /* qwen2 biases (optional) */
    kiln_weight q_norm, k_norm;      /* qwen3 per-head norms (optional) */
    kiln_weight ffn_norm, w_gate, w_up, w_down;
} kiln_layer_weights;

/* One piece of the weights' device copy: size bytes from offset src of the
 * file's tensor data to offset dst of a split's weights buffer. */
typedef struct kiln_weight_copy {
    uint64_t src, dst, size;
} kiln_weight_copy;

/* The layers [layer0, layer0 + n_layers) of a model and the weights they
 * use, on one backend device (lib/split.c). An unsplit model has one split
 * with every layer. Split 0 also holds the token embeddings, the last split
 * the output norm and matrix. */
typedef struct kiln_model_split {
    const kiln_backend_iface *bk;
    int32_t device_index;
    kiln_bk_device *dev;             /* the model's handle for this split's weights */
    kiln_bk_buffer *weights;         /* NULL while released (lib/suspend.c) */
    bool zero_copy;                  /* weights wrap the file mapping */
    uint32_t layer0, n_layers;
    /* how the device copy is filled from the mapping (empty when
     * zero_copy): an unsplit model copies the whole data region as one
     * piece (tensor offsets as in the file); a split packs only the
     * tensors of its own layers */
    kiln_weight_copy *copies;
    uint32_t n_copies;
    uint64_t buffer_bytes;           /* size of the device copy */
} kiln_model_split;

struct kiln_model {
    atomic_int refs;                 /* the caller's + one per context */
    kiln_logger log;
    char arch_name[32];
    char name[128];
    kiln_hparams hp;
    kiln_gguf *gguf;                 /* keeps the mapping alive */
    kiln_vocab *vocab;
    /* Split 0's backend, device and weights buffer (the whole model's
     * when unsplit): kept equal to splits[0]'s. */
    const kiln_backend_iface *bk;
    int32_t device_index;
    kiln_bk_device *dev;
    kiln_bk_buffer *weights;
    kiln_model_split *splits;        /* [n_splits], in layer order */
    uint32_t n_splits;               /* 1 unless loaded with params.split */
    uint16_t *layer_split;           /* [n_layer] split of each layer */
    kiln_weight tok_embd, output_norm, output;
    float *rope_freqs;               /* host copy of rope_freqs.weight or NULL */
    kiln_layer_weights *layers;
    uint64_t n_params;
    uint64_t weight_bytes;

    /* Residency of the weights' device copy (lib/suspend.c). Contexts hold
     * the weights while active or suspended at level 1; when the last holder
     * lets go and at least one context is suspended at level 2 ("parked"),
     * a device copy (not a zero-copy wrap of the mapping) is freed and
     * `weights` is NULL until a holder comes back and re-uploads it from
     * the mapping. Guarded by weights_lock (contexts may live on several
     * threads). */
    pthread_mutex_t weights_lock;
    bool weights_lock_ok;            /* weights_lock was initialised */
    bool weights_released;           /* the non-zero-copy splits' weights are freed */
    uint32_t weights_holds;
    uint32_t weights_parked;
    uint32_t flags;                  /* KILN_MODEL_* it was loaded with */
    /* 64-bit FNV-1a hash of the architecture, hyperparameters and every
     * tensor's name, shape and type: KV state exported from one model is
     * only imported into a model with the same fingerprint (lib/kv_io.c). */
    uint64_t fingerprint;
};

/* Points every present weight tensor of split s at buf (its weights
 * buffer after a re-upload, or NULL once released); keeps m->weights equal
 * to split 0's. */
void kiln_model_rebind_split(kiln_model *m, uint32_t s, kiln_bk_buffer *buf);
/* Allocates split s's weights buffer and fills it from the mapping (its
 * copy list); on failure nothing is kept. */
kiln_status kiln_model_split_upload(kiln_model *m, uint32_t s);
/* The split that holds the output norm and matrix. */
static inline uint32_t kiln_model_last_split(const kiln_model *m) { return m->n_splits - 1; }

/* Reference counting: the model is destroyed when the last holder lets go. */
void kiln_model_retain(kiln_model *m);
void kiln_model_release(kiln_model *m);

#endif
