/*
 * test_gguf.c - the GGUF reader and writer: round trips, every malformed
 * input the reader promises to reject (crafted in memory), truncation at
 * every byte, allocation failure at every allocation, and the real files
 * in ../shared.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "kt.h"
#include "quant.h"

/* ---- a byte builder for crafted files (test code: plain malloc) ---- */

typedef struct bb {
    uint8_t *p;
    size_t n, cap;
} bb;

static void bb_put(bb *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->n + n) nc *= 2;
        b->p = realloc(b->p, nc);
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u8(bb *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u32(bb *b, uint32_t v) { bb_put(b, &v, 4); } /* little-endian host */
static void bb_u64(bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_strn(bb *b, const char *s, size_t n) { bb_u64(b, n); bb_put(b, s, n); }
static void bb_str(bb *b, const char *s) { bb_strn(b, s, strlen(s)); }
static void bb_pad(bb *b, size_t a) { while (b->n % a) bb_u8(b, 0); }
static void bb_free(bb *b) { free(b->p); memset(b, 0, sizeof *b); }

static void hdr(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void kv_u32(bb *b, const char *k, uint32_t v) { bb_str(b, k); bb_u32(b, KILN_GGUF_UINT32); bb_u32(b, v); }
static void kv_str(bb *b, const char *k, const char *v) { bb_str(b, k); bb_u32(b, KILN_GGUF_STRING); bb_str(b, v); }
static void tinfo(bb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                  uint64_t offset) {
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) bb_u64(b, ne[i]);
    bb_u32(b, type);
    bb_u64(b, offset);
}
/* Pads to 32 and appends n bytes of tensor data. */
static void data(bb *b, size_t n) {
    bb_pad(b, 32);
    for (size_t i = 0; i < n; i++) bb_u8(b, (uint8_t)i);
}

/* Opens b from an exact-size heap copy (so ASan sees any overread). */
static kiln_status open_bb(const bb *b, kiln_gguf **g) {
    void *copy = malloc(b->n ? b->n : 1);
    if (b->n) memcpy(copy, b->p, b->n);
    kiln_status st = kiln_gguf_open_memory(copy, b->n, g);
    if (st == KILN_OK) {
        /* Touch everything while the memory lives, then close. */
        kiln_gguf_close(*g);
        *g = NULL;
    }
    free(copy);
    return st;
}

/* Expect KILN_E_FORMAT with every substring in the message. */
#define EXPECT_FORMAT(b, ...)                                                          \
    do {                                                                               \
        kiln_gguf *g_ = (kiln_gguf *)1;                                                \
        kiln_status st_ = open_bb(b, &g_);                                             \
        KT_CHECKF(st_ == KILN_E_FORMAT, "line %d: status %d (%s)", __LINE__, st_,      \
                  kiln_last_error());                                                  \
        KT_CHECK(g_ == NULL);                                                          \
        const char *subs_[] = {"offset", __VA_ARGS__};                                 \
        for (size_t i_ = 0; i_ < sizeof subs_ / sizeof subs_[0]; i_++)                 \
            KT_CHECKF(strstr(kiln_last_error(), subs_[i_]), "line %d: '%s' not in '%s'", \
                      __LINE__, subs_[i_], kiln_last_error());                         \
        bb_free(b);                                                                    \
    } while (0)

/* ---- round trip ---- */

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 65535, 7};
static const int16_t arr_i16[] = {-32768, 32767, -1};
static const uint32_t arr_u32[] = {0, 4000000000u, 12};
static const int32_t arr_i32[] = {INT32_MIN, INT32_MAX, -5};
static const float arr_f32[] = {1.5f, -0.25f, 3e38f};
static const bool arr_bool[] = {true, false, true};
static const uint64_t arr_u64[] = {0, UINT64_MAX, 42};
static const int64_t arr_i64[] = {INT64_MIN, INT64_MAX, -42};
static const double arr_f64[] = {1e300, -2.5, 0.1};
static const char *const arr_strs[] = {"alpha", "", "gamma \xe2\x9c\x93", "d"};

/* A file with a nested array (the writer has no setter for those, so it is
 * crafted and then brought in with kiln_gguf_copy_keys). */
static void nested_source(bb *b) {
    hdr(b, 3, 0, 2);
    bb_str(b, "test.nested");
    bb_u32(b, KILN_GGUF_ARRAY);
    bb_u32(b, KILN_GGUF_ARRAY); /* array of 2 arrays */
    bb_u64(b, 2);
    bb_u32(b, KILN_GGUF_INT32);
    bb_u64(b, 3);
    bb_u32(b, 1); bb_u32(b, 2); bb_u32(b, 3);
    bb_u32(b, KILN_GGUF_STRING);
    bb_u64(b, 2);
    bb_str(b, "x");
    bb_str(b, "yz");
    kv_str(b, "test.from_copy", "copied");
}

typedef struct tspec {
    const char *name;
    int32_t type;
    uint32_t n_dims;
    int64_t ne[4];
} tspec;
static const tspec tensors[] = {
    {"t.f32", KILN_TYPE_F32, 2, {7, 3, 1, 1}},
    {"t.f16", KILN_TYPE_F16, 1, {5, 1, 1, 1}},
    {"t.q4_0", KILN_TYPE_Q4_0, 2, {64, 2, 1, 1}},
    {"t.q8_0", KILN_TYPE_Q8_0, 3, {32, 1, 3, 1}},
    {"t.q4_K", KILN_TYPE_Q4_K, 4, {256, 2, 1, 2}},
    {"t.bf16", KILN_TYPE_BF16, 1, {3, 1, 1, 1}},
};
#define N_TENSORS (sizeof tensors / sizeof tensors[0])

static uint64_t tensor_bytes(const tspec *t) {
    return kiln_type_row_size(t->type, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
}
static uint8_t tensor_byte(size_t ti, uint64_t i) { return (uint8_t)(ti * 31 + i * 7 + 1); }

/* Builds the full round-trip writer; alignment 0 = default. */
static kiln_gguf_writer *make_writer(uint32_t alignment) {
    kiln_gguf_writer *w = NULL;
    KT_CHECK_OK(kiln_gguf_writer_create(&w));
    if (!w) return NULL;
    KT_CHECK_OK(kiln_gguf_set_str(w, "general.architecture", "llama"));
    KT_CHECK_OK(kiln_gguf_set_u8(w, "s.u8", 200));
    KT_CHECK_OK(kiln_gguf_set_i8(w, "s.i8", -100));
    KT_CHECK_OK(kiln_gguf_set_u16(w, "s.u16", 60000));
    KT_CHECK_OK(kiln_gguf_set_i16(w, "s.i16", -30000));
    KT_CHECK_OK(kiln_gguf_set_u32(w, "s.u32", 4000000000u));
    KT_CHECK_OK(kiln_gguf_set_i32(w, "s.i32", -2000000000));
    KT_CHECK_OK(kiln_gguf_set_u64(w, "s.u64", UINT64_MAX));
    KT_CHECK_OK(kiln_gguf_set_i64(w, "s.i64", INT64_MIN));
    KT_CHECK_OK(kiln_gguf_set_f32(w, "s.f32", 0.125f));
    KT_CHECK_OK(kiln_gguf_set_f64(w, "s.f64", -1e-300));
    KT_CHECK_OK(kiln_gguf_set_bool(w, "s.bool", true));
    KT_CHECK_OK(kiln_gguf_set_str(w, "s.str", "temporary"));
    KT_CHECK_OK(kiln_gguf_set_str(w, "s.str", "hello, gguf")); /* replaces */
    KT_CHECK_OK(kiln_gguf_set_str(w, "s.empty", ""));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.u8", KILN_GGUF_UINT8, arr_u8, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.i8", KILN_GGUF_INT8, arr_i8, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.u16", KILN_GGUF_UINT16, arr_u16, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.i16", KILN_GGUF_INT16, arr_i16, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.u32", KILN_GGUF_UINT32, arr_u32, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.i32", KILN_GGUF_INT32, arr_i32, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.f32", KILN_GGUF_FLOAT32, arr_f32, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.bool", KILN_GGUF_BOOL, arr_bool, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.u64", KILN_GGUF_UINT64, arr_u64, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.i64", KILN_GGUF_INT64, arr_i64, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.f64", KILN_GGUF_FLOAT64, arr_f64, 3));
    KT_CHECK_OK(kiln_gguf_set_arr(w, "a.empty", KILN_GGUF_INT32, NULL, 0));
    KT_CHECK_OK(kiln_gguf_set_arr_str(w, "a.str", arr_strs, 4));
    if (alignment) KT_CHECK_OK(kiln_gguf_set_u32(w, "general.alignment", alignment));

    bb src = {0};
    nested_source(&src);
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open_memory(src.p, src.n, &g));
    if (g) KT_CHECK_OK(kiln_gguf_copy_keys(w, g));
    kiln_gguf_close(g);
    bb_free(&src);

    for (size_t ti = 0; ti < N_TENSORS; ti++) {
        uint64_t n = tensor_bytes(&tensors[ti]);
        uint8_t *d = malloc(n);
        for (uint64_t i = 0; i < n; i++) d[i] = tensor_byte(ti, i);
        KT_CHECK_OK(kiln_gguf_add_tensor(w, tensors[ti].name, tensors[ti].type,
                                         tensors[ti].n_dims, tensors[ti].ne, d, n));
        free(d);
    }
    return w;
}

static void check_round_trip(const kiln_gguf *g, uint32_t alignment) {
    KT_CHECK(kiln_gguf_version(g) == 3);
    KT_CHECK(kiln_gguf_alignment(g) == (alignment ? alignment : 32));
    KT_CHECK(kiln_gguf_n_keys(g) == 29 + (alignment ? 1 : 0));
    uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; float f; double d; bool b;
    const char *s; uint64_t len;
    KT_CHECK_OK(kiln_gguf_get_str(g, "general.architecture", &s, &len));
    KT_CHECK(len == 5 && memcmp(s, "llama", 5) == 0);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "s.u8", &u32)); KT_CHECK(u32 == 200);
    KT_CHECK_OK(kiln_gguf_get_i32(g, "s.i8", &i32)); KT_CHECK(i32 == -100);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "s.u16", &u32)); KT_CHECK(u32 == 60000);
    KT_CHECK_OK(kiln_gguf_get_i64(g, "s.i16", &i64)); KT_CHECK(i64 == -30000);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "s.u32", &u32)); KT_CHECK(u32 == 4000000000u);
    KT_CHECK_OK(kiln_gguf_get_i32(g, "s.i32", &i32)); KT_CHECK(i32 == -2000000000);
    KT_CHECK_OK(kiln_gguf_get_u64(g, "s.u64", &u64)); KT_CHECK(u64 == UINT64_MAX);
    KT_CHECK_OK(kiln_gguf_get_i64(g, "s.i64", &i64)); KT_CHECK(i64 == INT64_MIN);
    KT_CHECK_OK(kiln_gguf_get_f32(g, "s.f32", &f)); KT_CHECK(f == 0.125f);
    KT_CHECK_OK(kiln_gguf_get_f64(g, "s.f64", &d)); KT_CHECK(d == -1e-300);
    KT_CHECK_OK(kiln_gguf_get_f64(g, "s.f32", &d)); KT_CHECK(d == 0.125);
    KT_CHECK_OK(kiln_gguf_get_bool(g, "s.bool", &b)); KT_CHECK(b);
    KT_CHECK_OK(kiln_gguf_get_str(g, "s.str", &s, &len));
    KT_CHECK(len == 11 && memcmp(s, "hello, gguf", 11) == 0);
    KT_CHECK_OK(kiln_gguf_get_str(g, "s.empty", &s, &len)); KT_CHECK(len == 0);

    /* Conversions that must fail, with the right status. */
    KT_CHECK(kiln_gguf_get_u32(g, "s.i8", &u32) == KILN_E_FORMAT);      /* negative */
    KT_CHECK(strstr(kiln_last_error(), "s.i8"));
    KT_CHECK(kiln_gguf_get_i32(g, "s.u32", &i32) == KILN_E_FORMAT);     /* too large */
    KT_CHECK(kiln_gguf_get_i64(g, "s.u64", &i64) == KILN_E_FORMAT);
    KT_CHECK(kiln_gguf_get_u64(g, "s.i64", &u64) == KILN_E_FORMAT);
    KT_CHECK(kiln_gguf_get_u32(g, "s.f32", &u32) == KILN_E_FORMAT);     /* float */
    KT_CHECK(kiln_gguf_get_bool(g, "s.u8", &b) == KILN_E_FORMAT);       /* bool from BOOL only */
    KT_CHECK(kiln_gguf_get_f32(g, "s.u32", &f) == KILN_E_FORMAT);
    KT_CHECK(kiln_gguf_get_str(g, "s.u32", &s, &len) == KILN_E_FORMAT);
    KT_CHECK(kiln_gguf_get_u32(g, "no.such.key", &u32) == KILN_E_NOT_FOUND);
    KT_CHECK(strstr(kiln_last_error(), "no.such.key"));
    KT_CHECK(kiln_gguf_get_u32(g, NULL, &u32) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_get_u32(g, "s.u32", NULL) == KILN_E_INVALID_ARG);

    /* Arrays. */
    int32_t et; uint64_t n;
    struct { const char *key; int32_t type; const void *vals; size_t es; } arrs[] = {
        {"a.u8", KILN_GGUF_UINT8, arr_u8, 1},     {"a.i8", KILN_GGUF_INT8, arr_i8, 1},
        {"a.u16", KILN_GGUF_UINT16, arr_u16, 2},  {"a.i16", KILN_GGUF_INT16, arr_i16, 2},
        {"a.u32", KILN_GGUF_UINT32, arr_u32, 4},  {"a.i32", KILN_GGUF_INT32, arr_i32, 4},
        {"a.f32", KILN_GGUF_FLOAT32, arr_f32, 4}, {"a.bool", KILN_GGUF_BOOL, arr_bool, 1},
        {"a.u64", KILN_GGUF_UINT64, arr_u64, 8},  {"a.i64", KILN_GGUF_INT64, arr_i64, 8},
        {"a.f64", KILN_GGUF_FLOAT64, arr_f64, 8},
    };
    for (size_t k = 0; k < sizeof arrs / sizeof arrs[0]; k++) {
        KT_CHECK_OK(kiln_gguf_get_arr(g, arrs[k].key, &et, &n));
        KT_CHECK(et == arrs[k].type && n == 3);
        kiln_gguf_value v, e;
        int64_t idx = kiln_gguf_find_key(g, arrs[k].key);
        KT_CHECK(idx >= 0 && kiln_gguf_key_type(g, idx) == KILN_GGUF_ARRAY);
        KT_CHECK_OK(kiln_gguf_key_value(g, idx, &v));
        KT_CHECK(v.type == KILN_GGUF_ARRAY && v.elem_type == arrs[k].type && v.n == 3);
        for (uint64_t i = 0; i < 3; i++) {
            KT_CHECK_OK(kiln_gguf_value_elem(g, &v, i, &e));
            KT_CHECK(e.type == arrs[k].type);
            KT_CHECK(memcmp(e.p, (const uint8_t *)arrs[k].vals + i * arrs[k].es, arrs[k].es) == 0);
        }
        KT_CHECK(kiln_gguf_value_elem(g, &v, 3, &e) == KILN_E_INVALID_ARG);
    }
    int32_t i32s[3]; float f32s[3];
    KT_CHECK_OK(kiln_gguf_arr_i32(g, "a.i16", i32s, 3));
    KT_CHECK(i32s[0] == -32768 && i32s[1] == 32767 && i32s[2] == -1);
    KT_CHECK(kiln_gguf_arr_i32(g, "a.i16", i32s, 2) == KILN_E_INVALID_ARG); /* wrong n */
    KT_CHECK(kiln_gguf_arr_i32(g, "a.i64", i32s, 3) == KILN_E_FORMAT);  /* INT64_MIN */
    KT_CHECK(kiln_gguf_arr_i32(g, "a.u32", i32s, 3) == KILN_E_FORMAT);  /* 4e9 */
    KT_CHECK(kiln_gguf_arr_i32(g, "a.f32", i32s, 3) == KILN_E_FORMAT);
    KT_CHECK(kiln_gguf_arr_i32(g, "a.str", i32s, 3) == KILN_E_FORMAT);
    KT_CHECK_OK(kiln_gguf_arr_f32(g, "a.i32", f32s, 3));
    KT_CHECK(f32s[2] == -5.0f);
    KT_CHECK_OK(kiln_gguf_arr_f32(g, "a.f64", f32s, 3));
    KT_CHECK(f32s[1] == -2.5f);
    KT_CHECK_OK(kiln_gguf_arr_f32(g, "a.f32", f32s, 3));
    KT_CHECK(f32s[0] == 1.5f && f32s[2] == 3e38f);
    KT_CHECK_OK(kiln_gguf_get_arr(g, "a.empty", &et, &n));
    KT_CHECK(et == KILN_GGUF_INT32 && n == 0);
    KT_CHECK_OK(kiln_gguf_arr_i32(g, "a.empty", NULL, 0));

    KT_CHECK_OK(kiln_gguf_get_arr(g, "a.str", &et, &n));
    KT_CHECK(et == KILN_GGUF_STRING && n == 4);
    for (uint64_t i = 0; i < 4; i++) {
        KT_CHECK_OK(kiln_gguf_arr_str(g, "a.str", i, &s, &len));
        KT_CHECK(len == strlen(arr_strs[i]) && memcmp(s, arr_strs[i], len) == 0);
    }
    KT_CHECK(kiln_gguf_arr_str(g, "a.str", 4, &s, &len) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_arr_str(g, "a.u8", 0, &s, &len) == KILN_E_FORMAT);

    /* The nested array came through copy_keys byte for byte. */
    KT_CHECK_OK(kiln_gguf_get_arr(g, "test.nested", &et, &n));
    KT_CHECK(et == KILN_GGUF_ARRAY && n == 2);
    kiln_gguf_value v, inner, e;
    KT_CHECK_OK(kiln_gguf_key_value(g, kiln_gguf_find_key(g, "test.nested"), &v));
    KT_CHECK_OK(kiln_gguf_value_elem(g, &v, 0, &inner));
    KT_CHECK(inner.type == KILN_GGUF_ARRAY && inner.elem_type == KILN_GGUF_INT32 && inner.n == 3);
    KT_CHECK_OK(kiln_gguf_value_elem(g, &inner, 2, &e));
    KT_CHECK_OK(kiln_gguf_value_i64(&e, &i64));
    KT_CHECK(i64 == 3);
    KT_CHECK_OK(kiln_gguf_value_elem(g, &v, 1, &inner));
    KT_CHECK(inner.type == KILN_GGUF_ARRAY && inner.elem_type == KILN_GGUF_STRING && inner.n == 2);
    KT_CHECK_OK(kiln_gguf_value_elem(g, &inner, 1, &e));
    KT_CHECK_OK(kiln_gguf_value_str(&e, &s, &len));
    KT_CHECK(len == 2 && memcmp(s, "yz", 2) == 0);
    KT_CHECK(kiln_gguf_value_i64(&e, &i64) == KILN_E_FORMAT);
    KT_CHECK_OK(kiln_gguf_get_str(g, "test.from_copy", &s, &len));
    KT_CHECK(len == 6 && memcmp(s, "copied", 6) == 0);

    /* Key order is insertion order; replacing kept s.str in place. */
    KT_CHECK(strcmp(kiln_gguf_key_name(g, 0), "general.architecture") == 0);
    KT_CHECK(strcmp(kiln_gguf_key_name(g, 12), "s.str") == 0);
    KT_CHECK(kiln_gguf_key_name(g, -1) == NULL && kiln_gguf_key_name(g, 1000) == NULL);

    /* Tensors. */
    KT_CHECK(kiln_gguf_n_tensors(g) == (int64_t)N_TENSORS);
    size_t size;
    const uint8_t *base = kiln_gguf_base(g, &size);
    uint32_t a = kiln_gguf_alignment(g);
    KT_CHECK(kiln_gguf_data_offset(g) % a == 0);
    for (size_t ti = 0; ti < N_TENSORS; ti++) {
        const kiln_gguf_tensor *t = kiln_gguf_find_tensor(g, tensors[ti].name);
        KT_CHECK(t == kiln_gguf_tensor_at(g, (int64_t)ti));
        if (!t) continue;
        KT_CHECK(strcmp(t->name, tensors[ti].name) == 0);
        KT_CHECK(t->type == tensors[ti].type && t->n_dims == tensors[ti].n_dims);
        for (int d = 0; d < 4; d++) KT_CHECK(t->ne[d] == tensors[ti].ne[d]);
        KT_CHECK(t->size == tensor_bytes(&tensors[ti]));
        KT_CHECK(t->offset % a == 0);
        KT_CHECK((const uint8_t *)t->data == base + kiln_gguf_data_offset(g) + t->offset);
        bool same = true;
        for (uint64_t i = 0; i < t->size; i++)
            same &= ((const uint8_t *)t->data)[i] == tensor_byte(ti, i);
        KT_CHECK(same);
    }
    KT_CHECK(kiln_gguf_find_tensor(g, "t.none") == NULL);
    KT_CHECK(kiln_gguf_tensor_at(g, (int64_t)N_TENSORS) == NULL);
}

static void test_round_trip_memory(void) {
    kiln_gguf_writer *w = make_writer(0);
    void *img = NULL;
    size_t n = 0;
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w, &img, &n));
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open_memory(img, n, &g));
    if (g) check_round_trip(g, 0);
    /* Copying everything into a new writer reproduces the same bytes. */
    kiln_gguf_writer *w2 = NULL;
    KT_CHECK_OK(kiln_gguf_writer_create(&w2));
    KT_CHECK_OK(kiln_gguf_copy_keys(w2, g));
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        KT_CHECK_OK(kiln_gguf_add_tensor(w2, t->name, t->type, t->n_dims, t->ne, t->data, t->size));
    }
    void *img2 = NULL;
    size_t n2 = 0;
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w2, &img2, &n2));
    KT_CHECK(n2 == n && img2 && memcmp(img, img2, n) == 0);
    kiln_free(img2);
    kiln_gguf_writer_free(w2);
    kiln_gguf_close(g);
    kiln_free(img);
    kiln_gguf_writer_free(w);
}

static void test_round_trip_file(void) {
    char dir[] = "/tmp/kiln-gguf-XXXXXX";
    KT_CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/rt.gguf", dir);
    kiln_gguf_writer *w = make_writer(64);
    KT_CHECK_OK(kiln_gguf_writer_write_file(w, path));
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open(path, &g));
    if (g) check_round_trip(g, 64);
    kiln_gguf_close(g);
    /* Rewriting over an existing file replaces it; no temp file is left. */
    KT_CHECK_OK(kiln_gguf_writer_write_file(w, path));
    DIR *dd = opendir(dir);
    int entries = 0;
    for (struct dirent *de; dd && (de = readdir(dd));)
        if (de->d_name[0] != '.') entries++;
    if (dd) closedir(dd);
    KT_CHECK(entries == 1);
    /* A file in a missing directory: KILN_E_IO, nothing created. */
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing/x.gguf", dir);
    KT_CHECK(kiln_gguf_writer_write_file(w, bad) == KILN_E_IO);
    KT_CHECK(kiln_gguf_open(bad, &g) == KILN_E_IO && g == NULL);
    KT_CHECK(strstr(kiln_last_error(), "No such file"));
    kiln_gguf_writer_free(w);
    unlink(path);
    rmdir(dir);
}

static void test_writer_rejects(void) {
    kiln_gguf_writer *w = NULL;
    KT_CHECK_OK(kiln_gguf_writer_create(&w));
    int64_t ne[2] = {33, 2};
    uint8_t buf[256] = {0};
    KT_CHECK(kiln_gguf_set_u32(w, "", 1) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_set_u32(w, NULL, 1) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_set_str(w, "k", NULL) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_set_arr(w, "k", KILN_GGUF_STRING, buf, 1) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_set_arr(w, "k", 99, buf, 1) == KILN_E_INVALID_ARG);
    uint8_t badbool[2] = {1, 2};
    KT_CHECK(kiln_gguf_set_arr(w, "k", KILN_GGUF_BOOL, badbool, 2) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 2, ne, buf, 36) == KILN_E_INVALID_ARG);
    ne[0] = 32;
    KT_CHECK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 2, ne, buf, 35) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_add_tensor(w, "q", 4, 2, ne, buf, 36) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 0, ne, buf, 36) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 5, ne, buf, 36) == KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 2, ne, buf, 36));
    KT_CHECK(kiln_gguf_add_tensor(w, "q", KILN_TYPE_Q4_0, 2, ne, buf, 36) == KILN_E_INVALID_ARG);
    int64_t huge[1] = {((int64_t)1 << 62) + 32};
    KT_CHECK(kiln_gguf_add_tensor(w, "h", KILN_TYPE_F32, 1, huge, buf, 128) == KILN_E_INVALID_ARG);
    void *img;
    size_t n;
    KT_CHECK_OK(kiln_gguf_set_u32(w, "general.alignment", 48));
    KT_CHECK(kiln_gguf_writer_write_memory(w, &img, &n) == KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_gguf_set_u64(w, "general.alignment", 64));
    KT_CHECK(kiln_gguf_writer_write_memory(w, &img, &n) == KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_gguf_set_u32(w, "general.alignment", 1));
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w, &img, &n));
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open_memory(img, n, &g));
    KT_CHECK(kiln_gguf_alignment(g) == 1);
    kiln_gguf_close(g);
    kiln_free(img);
    kiln_gguf_writer_free(w);
    kiln_gguf_writer_free(NULL);
    kiln_gguf_close(NULL);
}

/* ---- malformed inputs ---- */

static void test_malformed_header(void) {
    bb b = {0};
    bb_put(&b, "GGUX", 4); bb_u32(&b, 3); bb_u64(&b, 0); bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "bad magic");
    hdr(&b, 1, 0, 0);
    EXPECT_FORMAT(&b, "unsupported version 1");
    hdr(&b, 4, 0, 0);
    EXPECT_FORMAT(&b, "unsupported version 4");
    hdr(&b, 0x03000000, 0, 0);
    EXPECT_FORMAT(&b, "unsupported version", "big-endian");
    bb_put(&b, "GGUF", 4); bb_u32(&b, 3); bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "truncated");
    bb_put(&b, "GG", 2);
    EXPECT_FORMAT(&b, "truncated header");
    hdr(&b, 3, 0, (uint64_t)1 << 60);
    EXPECT_FORMAT(&b, "key count");
    hdr(&b, 3, UINT64_MAX, 0);
    EXPECT_FORMAT(&b, "tensor count");
    hdr(&b, 3, 1, 0); /* a tensor count the bytes left cannot hold */
    bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "tensor count");
    /* v2 is accepted; an empty file is valid. */
    hdr(&b, 2, 0, 1);
    kv_u32(&b, "a", 1);
    kiln_gguf *g = NULL;
    KT_CHECK_OK(open_bb(&b, &g));
    bb_free(&b);
}

static void test_malformed_keys(void) {
    bb b = {0};
    hdr(&b, 3, 0, 1); bb_u64(&b, UINT64_MAX); bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "key length");
    hdr(&b, 3, 0, 1); bb_u64(&b, 70000); for (int i = 0; i < 70010; i++) bb_u8(&b, 'k');
    EXPECT_FORMAT(&b, "key length 70000 exceeds the limit");
    hdr(&b, 3, 0, 1); bb_u64(&b, 100); bb_put(&b, "abcdefgh", 8);
    EXPECT_FORMAT(&b, "key length 100 exceeds");
    hdr(&b, 3, 0, 1); bb_str(&b, ""); bb_u32(&b, KILN_GGUF_UINT8); bb_u8(&b, 1);
    EXPECT_FORMAT(&b, "empty key");
    hdr(&b, 3, 0, 1); bb_strn(&b, "a\0b", 3); bb_u32(&b, KILN_GGUF_UINT8); bb_u8(&b, 1);
    EXPECT_FORMAT(&b, "NUL");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.type"); bb_u32(&b, 13); bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "invalid value type 13", "key 'k.type'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.trunc"); bb_u32(&b, KILN_GGUF_UINT64); bb_u32(&b, 0);
    EXPECT_FORMAT(&b, "truncated", "key 'k.trunc'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.s"); bb_u32(&b, KILN_GGUF_STRING); bb_u64(&b, 1000);
    bb_put(&b, "short", 5);
    EXPECT_FORMAT(&b, "string length 1000", "key 'k.s'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.s"); bb_u32(&b, KILN_GGUF_STRING); bb_u64(&b, UINT64_MAX);
    EXPECT_FORMAT(&b, "string length", "key 'k.s'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.b"); bb_u32(&b, KILN_GGUF_BOOL); bb_u8(&b, 2);
    EXPECT_FORMAT(&b, "bool value 2", "key 'k.b'");
    hdr(&b, 3, 0, 2); kv_u32(&b, "dup", 1); kv_u32(&b, "other", 2); kv_u32(&b, "dup", 3);
    b.p[16] = 3; /* n_kv = 3 */
    EXPECT_FORMAT(&b, "duplicate key", "key 'dup'");
    /* Arrays. */
    hdr(&b, 3, 0, 1); bb_str(&b, "k.a"); bb_u32(&b, KILN_GGUF_ARRAY); bb_u32(&b, 42); bb_u64(&b, 1);
    EXPECT_FORMAT(&b, "invalid array element type 42", "key 'k.a'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.a"); bb_u32(&b, KILN_GGUF_ARRAY); bb_u32(&b, KILN_GGUF_UINT64);
    bb_u64(&b, (uint64_t)1 << 61); bb_u64(&b, 0);
    EXPECT_FORMAT(&b, "array count 2305843009213693952", "key 'k.a'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.a"); bb_u32(&b, KILN_GGUF_ARRAY); bb_u32(&b, KILN_GGUF_STRING);
    bb_u64(&b, 3); bb_str(&b, "x"); bb_str(&b, "y"); bb_u64(&b, 99);
    EXPECT_FORMAT(&b, "string length 99", "key 'k.a'");
    hdr(&b, 3, 0, 1); bb_str(&b, "k.a"); bb_u32(&b, KILN_GGUF_ARRAY); bb_u32(&b, KILN_GGUF_BOOL);
    bb_u64(&b, 3); bb_u8(&b, 0); bb_u8(&b, 1); bb_u8(&b, 7);
    EXPECT_FORMAT(&b, "bool value 7", "key 'k.a'");
    /* Nesting: 8 levels are fine, 9 are not. */
    for (int depth = 8; depth <= 9; depth++) {
        hdr(&b, 3, 0, 1); bb_str(&b, "k.deep"); bb_u32(&b, KILN_GGUF_ARRAY);
        for (int i = 1; i < depth; i++) { bb_u32(&b, KILN_GGUF_ARRAY); bb_u64(&b, 1); }
        bb_u32(&b, KILN_GGUF_UINT8); bb_u64(&b, 1); bb_u8(&b, 5);
        if (depth == 8) {
            kiln_gguf *g = NULL;
            KT_CHECK_OK(open_bb(&b, &g));
            bb_free(&b);
        } else {
            EXPECT_FORMAT(&b, "nested deeper than 8", "key 'k.deep'");
        }
    }
    /* general.alignment. */
    hdr(&b, 3, 0, 1); bb_str(&b, "general.alignment"); bb_u32(&b, KILN_GGUF_UINT64); bb_u64(&b, 32);
    EXPECT_FORMAT(&b, "alignment has type u64", "key 'general.alignment'");
    hdr(&b, 3, 0, 1); kv_u32(&b, "general.alignment", 0);
    EXPECT_FORMAT(&b, "alignment 0 is not a power of two");
    hdr(&b, 3, 0, 1); kv_u32(&b, "general.alignment", 24);
    EXPECT_FORMAT(&b, "alignment 24 is not a power of two");
}

static void test_malformed_tensors(void) {
    bb b = {0};
    uint64_t ne2[2] = {4, 2}, ne1[1] = {8};
    /* The valid baseline: two f32 tensors. */
    hdr(&b, 3, 2, 1); kv_u32(&b, "x", 1);
    tinfo(&b, "t0", 2, ne2, KILN_TYPE_F32, 0); tinfo(&b, "t1", 1, ne1, KILN_TYPE_F32, 32);
    data(&b, 64);
    kiln_gguf *g = NULL;
    KT_CHECK_OK(open_bb(&b, &g));
    bb_free(&b);

    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 0, ne2, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "n_dims 0", "tensor 't0'");
    uint64_t ne5[5] = {1, 1, 1, 1, 1};
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 5, ne5, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "n_dims 5", "tensor 't0'");
    uint64_t ne0[2] = {4, 0};
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 2, ne0, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "dimension 1 is 0", "tensor 't0'");
    uint64_t neneg[2] = {4, UINT64_MAX};
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 2, neneg, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "dimension 1 is -1", "tensor 't0'");
    uint64_t neov[3] = {(uint64_t)1 << 32, (uint64_t)1 << 32, 2};
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 3, neov, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "element count overflows", "tensor 't0'");
    uint64_t nebig[1] = {((uint64_t)1 << 62) + 1}; /* row bytes would wrap to 4 */
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, nebig, KILN_TYPE_F32, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "row size", "overflows", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, 4, 0); data(&b, 64); /* retired Q4_2 */
    EXPECT_FORMAT(&b, "unknown tensor type 4", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, 0x80000000u, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "unknown tensor type", "tensor 't0'");
    uint64_t ne33[1] = {33};
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne33, KILN_TYPE_Q4_0, 0); data(&b, 64);
    EXPECT_FORMAT(&b, "not a multiple of the q4_0 block size 32", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, 8); data(&b, 64);
    EXPECT_FORMAT(&b, "not a multiple of the alignment", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, 64); data(&b, 64);
    EXPECT_FORMAT(&b, "outside the file", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, UINT64_MAX - 31); data(&b, 64);
    EXPECT_FORMAT(&b, "outside the file", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, 0); data(&b, 31);
    EXPECT_FORMAT(&b, "outside the file", "tensor 't0'");
    hdr(&b, 3, 1, 0); tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, 0); /* no data section */
    EXPECT_FORMAT(&b, "data section");
    hdr(&b, 3, 2, 0);
    tinfo(&b, "same", 1, ne1, KILN_TYPE_F32, 0); tinfo(&b, "same", 1, ne1, KILN_TYPE_F32, 32);
    data(&b, 64);
    EXPECT_FORMAT(&b, "duplicate tensor name", "tensor 'same'");
    hdr(&b, 3, 2, 0);
    tinfo(&b, "t0", 2, ne2, KILN_TYPE_F32, 0); tinfo(&b, "t1", 1, ne1, KILN_TYPE_F32, 0);
    data(&b, 64);
    EXPECT_FORMAT(&b, "overlaps", "tensor 't");
    hdr(&b, 3, 1, 0); bb_str(&b, ""); bb_u32(&b, 1); bb_u64(&b, 8); bb_u32(&b, 0); bb_u64(&b, 0);
    data(&b, 64);
    EXPECT_FORMAT(&b, "empty tensor name");
    hdr(&b, 3, 1, 0); bb_u64(&b, 65537); for (int i = 0; i < 65600; i++) bb_u8(&b, 'n');
    EXPECT_FORMAT(&b, "tensor name length 65537 exceeds the limit");
    hdr(&b, 3, 1, 0); bb_str(&b, "a-long-tensor-name"); bb_u32(&b, 2); bb_u64(&b, 4);
    EXPECT_FORMAT(&b, "truncated dimension", "tensor 'a-long-tensor-name'");
    /* With a larger alignment, offsets must be multiples of it. */
    hdr(&b, 3, 1, 1); kv_u32(&b, "general.alignment", 64);
    tinfo(&b, "t0", 1, ne1, KILN_TYPE_F32, 32); data(&b, 256);
    EXPECT_FORMAT(&b, "not a multiple of the alignment 64", "tensor 't0'");
}

/* Every prefix of a valid file fails cleanly (until the data is complete),
 * and corrupting any header byte never crashes. */
static void test_truncation_and_corruption(void) {
    kiln_gguf_writer *w = make_writer(0);
    void *img = NULL;
    size_t n = 0;
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w, &img, &n));
    kiln_gguf_writer_free(w);
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open_memory(img, n, &g));
    uint64_t min_len = 0;
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        uint64_t end = kiln_gguf_data_offset(g) + t->offset + t->size;
        if (end > min_len) min_len = end;
    }
    uint64_t header_len = kiln_gguf_data_offset(g);
    kiln_gguf_close(g);
    int bad = 0;
    for (size_t len = 0; len <= n; len++) {
        bb b = {0};
        bb_put(&b, img, len);
        kiln_gguf *t = NULL;
        kiln_status st = open_bb(&b, &t);
        bool want_ok = len >= min_len;
        if (want_ok ? st != KILN_OK : st != KILN_E_FORMAT) bad++;
        if (!want_ok && !strstr(kiln_last_error(), "offset")) bad++;
        bb_free(&b);
    }
    KT_CHECKF(bad == 0, "%d truncations misbehaved", bad);
    /* Flip every header byte to a few values: any outcome but a crash. */
    int ok = 0;
    static const uint8_t vals[] = {0x00, 0xff, 0x80, 0x01, 0x7f};
    for (size_t i = 0; i < header_len; i++) {
        for (size_t k = 0; k < sizeof vals; k++) {
            bb b = {0};
            bb_put(&b, img, n);
            b.p[i] ^= vals[k] ? vals[k] : 0x10;
            kiln_gguf *t = NULL;
            if (open_bb(&b, &t) == KILN_OK) ok++;
            bb_free(&b);
        }
    }
    printf("  %zu-byte file: %llu truncations, %d of %llu corruptions still valid\n", n,
           (unsigned long long)n + 1, ok, (unsigned long long)header_len * 5);
    kiln_free(img);
}

/* Allocation failure at every allocation: a clean KILN_E_OOM_HOST, no leak
 * (the sanitized build's leak checker watches). */
static void test_alloc_failures(void) {
    kiln_gguf_writer *w = make_writer(0);
    void *img = NULL;
    size_t n = 0;
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w, &img, &n));
    kiln_gguf_writer_free(w);
    int oom = 0, bad = 0;
    for (uint64_t k = 1; k < 1000; k++) {
        kiln_test_fail_alloc_after(k);
        kiln_gguf *g = NULL;
        kiln_status st = kiln_gguf_open_memory(img, n, &g);
        kiln_test_fail_alloc_after(0);
        if (st == KILN_OK) {
            kiln_gguf_close(g);
            break;
        }
        if (st == KILN_E_OOM_HOST && g == NULL) oom++;
        else bad++;
    }
    KT_CHECK(oom > 5 && bad == 0);
    oom = 0;
    for (uint64_t k = 1; k < 1000; k++) {
        kiln_test_fail_alloc_after(k);
        kiln_gguf_writer *w2 = NULL;
        kiln_status st = kiln_gguf_writer_create(&w2);
        kiln_gguf *g = NULL;
        if (!st) st = kiln_gguf_set_str(w2, "a", "b");
        if (!st) st = kiln_gguf_set_arr_str(w2, "c", arr_strs, 4);
        if (!st) st = kiln_gguf_open_memory(img, n, &g);
        if (!st) st = kiln_gguf_copy_keys(w2, g);
        for (int64_t i = 0; !st && i < kiln_gguf_n_tensors(g); i++) {
            const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
            st = kiln_gguf_add_tensor(w2, t->name, t->type, t->n_dims, t->ne, t->data, t->size);
        }
        void *img2 = NULL;
        size_t n2;
        if (!st) st = kiln_gguf_writer_write_memory(w2, &img2, &n2);
        kiln_test_fail_alloc_after(0);
        kiln_free(img2);
        kiln_gguf_close(g);
        kiln_gguf_writer_free(w2);
        if (st == KILN_OK) break;
        if (st == KILN_E_OOM_HOST) oom++;
        else bad++;
    }
    KT_CHECK(oom > 10 && bad == 0);
    kiln_free(img);
}

/* ---- the real files ---- */

static void check_real_file(const char *path) {
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open(path, &g));
    if (!g) return;
    const char *s;
    uint64_t len;
    int32_t et;
    uint64_t n_tok = 0;
    KT_CHECK_OK(kiln_gguf_get_str(g, "tokenizer.ggml.model", &s, &len));
    KT_CHECK_OK(kiln_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok));
    KT_CHECK(et == KILN_GGUF_STRING && n_tok >= 4096);
    /* Every token through the O(1) accessor. */
    uint64_t total = 0;
    for (uint64_t i = 0; i < n_tok; i++) {
        if (kiln_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len) != KILN_OK) {
            KT_CHECKF(0, "%s: token %llu: %s", path, (unsigned long long)i, kiln_last_error());
            break;
        }
        total += len;
    }
    KT_CHECK(total >= n_tok);
    size_t size;
    kiln_gguf_base(g, &size);
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        KT_CHECK(t->offset + t->size + kiln_gguf_data_offset(g) <= size);
        KT_CHECK(kiln_gguf_find_tensor(g, t->name) == t);
    }
    kiln_gguf_close(g);
}

static int check_dir(const char *rel) {
    const char *dir = kt_shared(rel);
    if (!dir) return 0;
    DIR *d = opendir(dir);
    int count = 0;
    for (struct dirent *de; d && (de = readdir(d));) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".gguf") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        check_real_file(path);
        count++;
    }
    if (d) closedir(d);
    return count;
}

static void test_shared_files(void) {
    int n = check_dir("models") + check_dir("vocab");
    if (n == 0) KT_SKIP("../shared is absent");
    KT_CHECK(n >= 15);
}

static void test_tiny_target(void) {
    const char *path = kt_shared("models/tiny-target-f16.gguf");
    if (!path) KT_SKIP("tiny-target-f16.gguf is absent");
    kiln_gguf *g = NULL;
    KT_CHECK_OK(kiln_gguf_open(path, &g));
    if (!g) return;
    const char *s;
    uint64_t len, n;
    uint32_t u;
    int32_t et;
    float f;
    KT_CHECK_OK(kiln_gguf_get_str(g, "general.architecture", &s, &len));
    KT_CHECK(len == 5 && memcmp(s, "llama", 5) == 0);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "llama.block_count", &u)); KT_CHECK(u == 6);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "llama.embedding_length", &u)); KT_CHECK(u == 512);
    KT_CHECK_OK(kiln_gguf_get_u32(g, "llama.attention.head_count_kv", &u)); KT_CHECK(u == 2);
    KT_CHECK_OK(kiln_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f));
    KT_CHECK(fabsf(f - 1e-5f) < 1e-9f);
    KT_CHECK_OK(kiln_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n));
    KT_CHECK(n == 4096);
    KT_CHECK_OK(kiln_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s, &len));
    KT_CHECK(len == 7 && memcmp(s, "<|bos|>", 7) == 0);
    const kiln_gguf_tensor *t = kiln_gguf_find_tensor(g, "token_embd.weight");
    KT_CHECK(t && t->type == KILN_TYPE_F16 && t->ne[0] == 512 && t->ne[1] == 4096);
    KT_CHECK(kiln_gguf_n_tensors(g) == 57);

    /* Copy the whole model through the writer; keys survive byte for byte. */
    kiln_gguf_writer *w = NULL;
    KT_CHECK_OK(kiln_gguf_writer_create(&w));
    KT_CHECK_OK(kiln_gguf_copy_keys(w, g));
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
        t = kiln_gguf_tensor_at(g, i);
        KT_CHECK_OK(kiln_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->size));
    }
    void *img = NULL;
    size_t sz = 0;
    KT_CHECK_OK(kiln_gguf_writer_write_memory(w, &img, &sz));
    kiln_gguf_writer_free(w);
    kiln_gguf *g2 = NULL;
    KT_CHECK_OK(kiln_gguf_open_memory(img, sz, &g2));
    if (g2) {
        KT_CHECK(kiln_gguf_n_keys(g2) == kiln_gguf_n_keys(g));
        for (int64_t i = 0; i < kiln_gguf_n_keys(g); i++) {
            const void *r1, *r2;
            uint64_t s1, s2;
            KT_CHECK_OK(kiln_gguf_key_raw(g, i, &r1, &s1));
            KT_CHECK_OK(kiln_gguf_key_raw(g2, i, &r2, &s2));
            KT_CHECK(strcmp(kiln_gguf_key_name(g, i), kiln_gguf_key_name(g2, i)) == 0);
            KT_CHECK(s1 == s2 && memcmp(r1, r2, s1) == 0);
        }
        for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++) {
            const kiln_gguf_tensor *a = kiln_gguf_tensor_at(g, i), *b = kiln_gguf_tensor_at(g2, i);
            KT_CHECK(strcmp(a->name, b->name) == 0 && a->size == b->size &&
                     memcmp(a->data, b->data, a->size) == 0);
        }
        /* llama.cpp's writer lays files out the same way: same bytes. */
        size_t orig_size;
        const void *orig = kiln_gguf_base(g, &orig_size);
        KT_CHECK(sz == orig_size && memcmp(img, orig, sz) == 0);
    }
    kiln_gguf_close(g2);
    kiln_free(img);
    kiln_gguf_close(g);
}

int main(void) {
    KT_RUN(test_round_trip_memory);
    KT_RUN(test_round_trip_file);
    KT_RUN(test_writer_rejects);
    KT_RUN(test_malformed_header);
    KT_RUN(test_malformed_keys);
    KT_RUN(test_malformed_tensors);
    KT_RUN(test_truncation_and_corruption);
    KT_RUN(test_alloc_failures);
    KT_RUN(test_shared_files);
    KT_RUN(test_tiny_target);
    return kt_finish();
}
