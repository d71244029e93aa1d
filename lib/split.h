/*
 * split.h - parsing kiln_model_params.split ("BACKEND:DEVICE[:N_LAYERS],...")
 * into layer ranges. Resolving the backends and devices is the model
 * loader's (lib/model.c).
 */
#ifndef KILN_SPLIT_H
#define KILN_SPLIT_H

#include "internal.h"

typedef struct kiln_split_entry {
    char backend[32];
    int32_t device;
    uint32_t layer0, n_layers;
} kiln_split_entry;

/* Parses spec for a model of n_layer layers into out[0..*n_out) (at most
 * KILN_SPLIT_MAX), assigning every layer to exactly one entry in order.
 * KILN_E_INVALID_ARG with a message naming the entry on bad syntax, too
 * many entries, a zero count, or counts that do not add up to n_layer.
 * Pure: allocates nothing. */
kiln_status kiln_split_parse(const char *spec, uint32_t n_layer, kiln_split_entry *out, uint32_t *n_out);

#endif
