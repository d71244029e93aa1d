/*
 * split.c - kiln_model_params.split: "BACKEND:DEVICE[:N_LAYERS]" entries,
 * comma-separated, in layer order. Entries without a count share what the
 * counted ones leave evenly; the earlier of them take one more layer each
 * when it does not divide.
 */
#include <stdio.h>
#include <string.h>

#include "split.h"

/* A non-negative decimal integer filling [s, e) that fits in int32. */
static bool parse_uint(const char *s, const char *e, int64_t *out) {
    if (s == e || e - s > 9) return false;
    int64_t v = 0;
    for (const char *p = s; p < e; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return true;
}

kiln_status kiln_split_parse(const char *spec, uint32_t n_layer, kiln_split_entry *out, uint32_t *n_out) {
    *n_out = 0;
    uint32_t n = 0, counted_layers = 0, n_uncounted = 0;
    bool counted[KILN_SPLIT_MAX];
    const char *p = spec;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        if (n == KILN_SPLIT_MAX)
            return kiln_error(KILN_E_INVALID_ARG, "split '%s': more than %d entries", spec, KILN_SPLIT_MAX);
        kiln_split_entry *e = &out[n];
        memset(e, 0, sizeof *e);
        const char *c1 = memchr(p, ':', (size_t)(end - p));
        const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(end - c1 - 1)) : NULL;
        int64_t dev = -1, cnt = 0;
        if (!c1 || c1 == p || (size_t)(c1 - p) >= sizeof e->backend ||
            !parse_uint(c1 + 1, c2 ? c2 : end, &dev) || (c2 && !parse_uint(c2 + 1, end, &cnt)))
            return kiln_error(KILN_E_INVALID_ARG,
                              "split '%s': entry %u '%.*s' is not BACKEND:DEVICE[:N_LAYERS]", spec, n + 1,
                              (int)KILN_MIN(end - p, 64), p);
        if (c2 && cnt == 0)
            return kiln_error(KILN_E_INVALID_ARG, "split '%s': entry %u gives 0 layers (at least 1)", spec, n + 1);
        memcpy(e->backend, p, (size_t)(c1 - p));
        e->device = (int32_t)dev;
        e->n_layers = (uint32_t)cnt;
        counted[n] = c2 != NULL;
        if (c2) {
            if (cnt > (int64_t)n_layer - counted_layers)
                return kiln_error(KILN_E_INVALID_ARG, "split '%s': the counts exceed the model's %u layers", spec,
                                  n_layer);
            counted_layers += (uint32_t)cnt;
        } else {
            n_uncounted++;
        }
        n++;
        if (!*end) break;
        p = end + 1;
    }
    uint32_t left = n_layer - counted_layers;
    if (n_uncounted == 0 && left != 0)
        return kiln_error(KILN_E_INVALID_ARG, "split '%s': the counts add up to %u layers, the model has %u", spec,
                          counted_layers, n_layer);
    if (n_uncounted > left)
        return kiln_error(KILN_E_INVALID_ARG,
                          "split '%s': %u layers left for %u entries without a count (at least 1 each)", spec,
                          left, n_uncounted);
    uint32_t share = n_uncounted ? left / n_uncounted : 0, extra = n_uncounted ? left % n_uncounted : 0;
    uint32_t layer = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!counted[i]) out[i].n_layers = share + (extra ? (extra--, 1) : 0);
        out[i].layer0 = layer;
        layer += out[i].n_layers;
    }
    *n_out = n;
    return KILN_OK;
}
