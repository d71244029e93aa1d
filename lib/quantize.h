/*
 * quantize.h - the per-tensor type choice of kiln_model_quantize (lib/quantize.c),
 * shared with the random-weight generator (examples/kiln-gen-model.c) so
 * that its mixes have the same tensor types as a quantized real model.
 *
 * Thread-safety: a kiln_quant_plan is used by one thread at a time.
 */
#ifndef KILN_QUANTIZE_H
#define KILN_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "kiln.h"

/* The state of the type choice over one model: llama.cpp decides some
 * tensors by their position among tensors of the same kind (attn_v and
 * ffn_down layers), so tensors must be asked for in the order they are
 * written (kiln_quant_tensor_order) and each exactly once. */
typedef struct kiln_quant_plan {
    int32_t ftype;        /* KILN_FTYPE_* */
    int32_t base_type;    /* its weight type (KILN_TYPE_*) */
    bool pure;            /* KILN_QUANTIZE_PURE */
    bool has_output;      /* the model has output.weight (else tied to token_embd) */
    int n_attn_v, i_attn_v;
    int n_ffn_down, i_ffn_down;
} kiln_quant_plan;

/* The weight type of an ftype, or -1 for an unknown ftype. */
int32_t kiln_ftype_base_type(int32_t ftype);

/* Starts a plan. n_attn_v: tensors whose name contains "attn_v.weight" or
 * "attn_qkv.weight"; n_layer: the model's block count. KILN_E_INVALID_ARG
 * for an unknown ftype. */
kiln_status kiln_quant_plan_init(kiln_quant_plan *p, int32_t ftype, bool pure, bool has_output,
                                 int n_attn_v, int n_layer);

/* The type to write tensor `name` (n_dims dims ne[], stored as src_type)
 * in. Tensors that are not 2-D+ weights keep src_type. Never fails: shapes
 * the chosen type cannot hold fall back to a type that can (F16 last). */
int32_t kiln_quant_tensor_type(kiln_quant_plan *p, const char *name, uint32_t n_dims,
                               const int64_t *ne, int32_t src_type);

/* Orders tensor names as llama.cpp writes them: by layer number ("blk.N.";
 * others count as layer -1), then by name. For qsort over const char *. */
int kiln_quant_tensor_order(const void *a, const void *b);

#endif /* KILN_QUANTIZE_H */
