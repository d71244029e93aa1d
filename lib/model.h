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

struct kiln_model {
    atomic_int refs;                 /* the caller's + one per context */
    kiln_logger log;
    char arch_name[32];
    char name[128];
    kiln_hparams hp;
    kiln_gguf *gguf;                 /* keeps the mapping alive */
    kiln_vocab *vocab;
    const kiln_backend_iface *bk;
    int32_t device_index;
    kiln_bk_device *dev;             /* the weights' device handle */
    kiln_bk_buffer *weights;         /* all tensor data in one buffer */
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
    bool weights_zero_copy;          /* weights wrap the mapping: nothing to release */
    uint32_t weights_holds;
    uint32_t weights_parked;
    uint32_t flags;                  /* KILN_MODEL_* it was loaded with */
    /* 64-bit FNV-1a hash of the architecture, hyperparameters and every
     * tensor's name, shape and type: KV state exported from one model is
     * only imported into a model with the same fingerprint (lib/kv_io.c). */
    uint64_t fingerprint;
};

/* Points every present weight tensor at buf (the model's single weights
 * buffer, after a re-upload). */
void kiln_model_rebind_weights(kiln_model *m, kiln_bk_buffer *buf);

/* Reference counting: the model is destroyed when the last holder lets go. */
void kiln_model_retain(kiln_model *m);
void kiln_model_release(kiln_model *m);

#endif
