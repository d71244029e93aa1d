/*
 * gguf_fuzz.c - libFuzzer harness for the GGUF reader.
 *
 * Parses the input with kiln_gguf_open_memory and, when it is accepted,
 * walks everything a loader would touch: every key through the generic
 * value API (nested arrays included, element counts capped so one input
 * stays fast), the typed getters, and every tensor's first and last data
 * byte. libFuzzer hands us a buffer of exactly `size` bytes, so AddressSanitizer
 * flags any read past it.
 *
 * Build and run: make fuzz FUZZ_SECONDS=N (see test/fuzz/run.sh).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf.h"

#define MAX_ELEMS 64       /* elements visited per array level */
#define MAX_WALK_DEPTH 10  /* deeper than the reader allows, to test its limit */

static volatile uint64_t sink; /* keeps the reads from being optimized out */

static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    if (n) sink += b[0] + b[n - 1];
}

static void walk_value(const kiln_gguf *g, const kiln_gguf_value *v, int depth) {
    int64_t i64;
    double f64;
    const char *s;
    uint64_t len;
    if (v->type == KILN_GGUF_STRING) {
        if (kiln_gguf_value_str(v, &s, &len) == KILN_OK) touch(s, len);
        return;
    }
    if (v->type != KILN_GGUF_ARRAY) {
        if (kiln_gguf_value_i64(v, &i64) == KILN_OK) sink += (uint64_t)i64;
        if (kiln_gguf_value_f64(v, &f64) == KILN_OK) sink += (uint64_t)(f64 == f64);
        return;
    }
    if (depth >= MAX_WALK_DEPTH) return;
    uint64_t n = v->n < MAX_ELEMS ? v->n : MAX_ELEMS;
    for (uint64_t i = 0; i < n; i++) {
        kiln_gguf_value e;
        if (kiln_gguf_value_elem(g, v, i, &e) != KILN_OK) break;
        walk_value(g, &e, depth + 1);
    }
    if (v->n > 0) { /* the last element too: the far end of the array */
        kiln_gguf_value e;
        if (kiln_gguf_value_elem(g, v, v->n - 1, &e) == KILN_OK) walk_value(g, &e, depth + 1);
    }
}

static void walk_key(const kiln_gguf *g, int64_t idx) {
    const char *key = kiln_gguf_key_name(g, idx);
    if (!key) return;
    kiln_gguf_value v;
    if (kiln_gguf_key_value(g, idx, &v) == KILN_OK) walk_value(g, &v, 0);
    if (kiln_gguf_find_key(g, key) != idx) __builtin_trap(); /* the index must agree */

    uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; float f; double d; bool b;
    const char *s; uint64_t len; int32_t et; uint64_t n;
    kiln_gguf_get_u32(g, key, &u32);
    kiln_gguf_get_i32(g, key, &i32);
    kiln_gguf_get_u64(g, key, &u64);
    kiln_gguf_get_i64(g, key, &i64);
    kiln_gguf_get_f32(g, key, &f);
    kiln_gguf_get_f64(g, key, &d);
    kiln_gguf_get_bool(g, key, &b);
    if (kiln_gguf_get_str(g, key, &s, &len) == KILN_OK) touch(s, len);
    const void *raw;
    if (kiln_gguf_key_raw(g, idx, &raw, &u64) == KILN_OK) touch(raw, u64);
    if (kiln_gguf_get_arr(g, key, &et, &n) != KILN_OK) return;
    if (et == KILN_GGUF_STRING) {
        for (uint64_t i = 0; i < n && i < MAX_ELEMS; i++)
            if (kiln_gguf_arr_str(g, key, i, &s, &len) == KILN_OK) touch(s, len);
        if (n && kiln_gguf_arr_str(g, key, n - 1, &s, &len) == KILN_OK) touch(s, len);
    } else if (n <= 4096) {
        static int32_t ibuf[4096];
        static float fbuf[4096];
        kiln_gguf_arr_i32(g, key, ibuf, n);
        kiln_gguf_arr_f32(g, key, fbuf, n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_gguf *g = NULL;
    if (kiln_gguf_open_memory(data, size, &g) != KILN_OK) {
        if (g) __builtin_trap(); /* a failed open must not hand out a handle */
        return 0;
    }
    sink += kiln_gguf_version(g) + kiln_gguf_alignment(g) + kiln_gguf_data_offset(g);
    for (int64_t i = 0; i < kiln_gguf_n_keys(g); i++) walk_key(g, i);
    size_t base_size;
    const uint8_t *base = kiln_gguf_base(g, &base_size);
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        if (kiln_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        if (t->size == 0 || p < base || t->size > base_size || p - base > (ptrdiff_t)(base_size - t->size))
            __builtin_trap(); /* data must lie inside the input */
        touch(p, t->size);
    }
    kiln_gguf_close(g);
    return 0;
}
