/*
 * gguf_write.c - the GGUF writer: collects keys and tensors in memory and
 * serializes them as a version 3 file.
 *
 * Layout written: header, keys in insertion order (a replaced key keeps its
 * place), tensor infos in insertion order, zero padding to the alignment,
 * then each tensor's data padded to the alignment. The alignment is 32, or
 * the u32 value of general.alignment when that key is set (it must then be
 * a nonzero power of two).
 *
 * Ownership: the writer owns copies of every key, value and tensor byte it
 * was given; kiln_gguf_writer_free releases them. A failed setter leaves
 * the writer as it was (kiln_gguf_copy_keys may have copied some keys
 * before failing). write_file never leaves a partial file at `path`: it
 * writes a temporary file in the same directory, syncs it and renames it.
 *
 * Streaming: kiln_gguf_add_tensor_info declares a tensor without data; its
 * bytes are asked from a producer callback of write_file_stream, in tensor
 * order, while the file is written sequentially, so a file far larger than
 * memory can be written (kiln_model_quantize, kiln-gen-model).
 *
 * Statuses: KILN_E_INVALID_ARG (bad names, types, sizes, duplicate tensor
 * names), KILN_E_OOM_HOST, KILN_E_IO (write_file, with strerror), and
 * whatever a producer returns.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "quant.h"

#define GGUF_WRITER_MAX_NAME (64u * 1024u) /* the reader's limit */

typedef struct wkv {
    char *key;
    int32_t type;
    uint8_t *val;            /* encoded value (what follows the u32 type) */
    size_t val_size;
} wkv;

typedef struct wtensor {
    char *name;
    int32_t type;
    uint32_t n_dims;
    int64_t ne[KILN_GGUF_MAX_DIMS];
    uint8_t *data;           /* NULL when deferred */
    uint64_t size;
    bool deferred;           /* bytes come from the write_file_stream producer */
} wtensor;

struct kiln_gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
};

static void st_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void st_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

kiln_status kiln_gguf_writer_create(kiln_gguf_writer **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: out is NULL");
    *out = kiln_calloc(1, sizeof **out);
    if (!*out) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory");
    return KILN_OK;
}

void kiln_gguf_writer_free(kiln_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        kiln_free(w->kv[i].key);
        kiln_free(w->kv[i].val);
    }
    kiln_free(w->kv);
    for (size_t i = 0; i < w->n_t; i++) {
        kiln_free(w->t[i].name);
        kiln_free(w->t[i].data);
    }
    kiln_free(w->t);
    kiln_free(w);
}

static kiln_status check_name(const char *name, const char *what) {
    if (!name || !*name) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: empty %s", what);
    if (strlen(name) > GGUF_WRITER_MAX_NAME)
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: %s '%.32s...' longer than %u bytes",
                          what, name, GGUF_WRITER_MAX_NAME);
    return KILN_OK;
}

/* Takes ownership of val (freed on failure too). */
static kiln_status put_kv(kiln_gguf_writer *w, const char *key, int32_t type, uint8_t *val,
                          size_t val_size) {
    kiln_status st = check_name(key, "key");
    if (st) {
        kiln_free(val);
        return st;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            kiln_free(w->kv[i].val);
            w->kv[i].type = type;
            w->kv[i].val = val;
            w->kv[i].val_size = val_size;
            return KILN_OK;
        }
    }
    char *k = kiln_strdup(key);
    if (!k) {
        kiln_free(val);
        return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for key '%.64s'", key);
    }
    if (w->n_kv == w->cap_kv) {
        size_t nc = w->cap_kv ? w->cap_kv * 2 : 16, bytes;
        wkv *nk = kiln_mul_size(nc, sizeof *nk, &bytes) ? kiln_realloc(w->kv, bytes) : NULL;
        if (!nk) {
            kiln_free(k);
            kiln_free(val);
            return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for key '%.64s'", key);
        }
        w->kv = nk;
        w->cap_kv = nc;
    }
    w->kv[w->n_kv++] = (wkv){k, type, val, val_size};
    return KILN_OK;
}

/* Copies n bytes into a fresh buffer. */
static uint8_t *dup_bytes(const void *src, size_t n) {
    uint8_t *p = kiln_malloc(n);
    if (p && n) memcpy(p, src, n);
    return p;
}

static kiln_status set_scalar(kiln_gguf_writer *w, const char *key, int32_t type,
                              const uint8_t *le, size_t n) {
    if (!w) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL writer");
    uint8_t *v = dup_bytes(le, n);
    if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory");
    return put_kv(w, key, type, v, n);
}

kiln_status kiln_gguf_set_u8(kiln_gguf_writer *w, const char *key, uint8_t v) {
    return set_scalar(w, key, KILN_GGUF_UINT8, &v, 1);
}
kiln_status kiln_gguf_set_i8(kiln_gguf_writer *w, const char *key, int8_t v) {
    uint8_t b = (uint8_t)v;
    return set_scalar(w, key, KILN_GGUF_INT8, &b, 1);
}
kiln_status kiln_gguf_set_u16(kiln_gguf_writer *w, const char *key, uint16_t v) {
    uint8_t b[2];
    st_u16(b, v);
    return set_scalar(w, key, KILN_GGUF_UINT16, b, 2);
}
kiln_status kiln_gguf_set_i16(kiln_gguf_writer *w, const char *key, int16_t v) {
    uint8_t b[2];
    st_u16(b, (uint16_t)v);
    return set_scalar(w, key, KILN_GGUF_INT16, b, 2);
}
kiln_status kiln_gguf_set_u32(kiln_gguf_writer *w, const char *key, uint32_t v) {
    uint8_t b[4];
    st_u32(b, v);
    return set_scalar(w, key, KILN_GGUF_UINT32, b, 4);
}
kiln_status kiln_gguf_set_i32(kiln_gguf_writer *w, const char *key, int32_t v) {
    uint8_t b[4];
    st_u32(b, (uint32_t)v);
    return set_scalar(w, key, KILN_GGUF_INT32, b, 4);
}
kiln_status kiln_gguf_set_u64(kiln_gguf_writer *w, const char *key, uint64_t v) {
    uint8_t b[8];
    st_u64(b, v);
    return set_scalar(w, key, KILN_GGUF_UINT64, b, 8);
}
kiln_status kiln_gguf_set_i64(kiln_gguf_writer *w, const char *key, int64_t v) {
    uint8_t b[8];
    st_u64(b, (uint64_t)v);
    return set_scalar(w, key, KILN_GGUF_INT64, b, 8);
}
kiln_status kiln_gguf_set_f32(kiln_gguf_writer *w, const char *key, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t b[4];
    st_u32(b, u);
    return set_scalar(w, key, KILN_GGUF_FLOAT32, b, 4);
}
kiln_status kiln_gguf_set_f64(kiln_gguf_writer *w, const char *key, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    uint8_t b[8];
    st_u64(b, u);
    return set_scalar(w, key, KILN_GGUF_FLOAT64, b, 8);
}
kiln_status kiln_gguf_set_bool(kiln_gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, KILN_GGUF_BOOL, &b, 1);
}

kiln_status kiln_gguf_set_str(kiln_gguf_writer *w, const char *key, const char *s) {
    if (!w || !s) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    size_t len = strlen(s), bytes;
    if (!kiln_add_size(len, 8, &bytes))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: string too long");
    uint8_t *v = kiln_malloc(bytes);
    if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for key '%.64s'",
                              key ? key : "");
    st_u64(v, len);
    memcpy(v + 8, s, len);
    return put_kv(w, key, KILN_GGUF_STRING, v, bytes);
}

kiln_status kiln_gguf_set_arr(kiln_gguf_writer *w, const char *key, int32_t elem_type,
                              const void *data, uint64_t n) {
    if (!w || (!data && n)) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    size_t es = (size_t)kiln_gguf_scalar_size(elem_type), bytes;
    if (es == 0)
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: array element type %d is not a scalar",
                          (int)elem_type);
    if (n > SIZE_MAX || !kiln_mul_size((size_t)n, es, &bytes) || !kiln_add_size(bytes, 12, &bytes))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: array of %llu elements too large",
                          (unsigned long long)n);
    if (elem_type == KILN_GGUF_BOOL) {
        const uint8_t *b = data;
        for (uint64_t i = 0; i < n; i++)
            if (b[i] > 1)
                return kiln_error(KILN_E_INVALID_ARG, "gguf writer: bool element %llu is %u",
                                  (unsigned long long)i, b[i]);
    }
    uint8_t *v = kiln_malloc(bytes);
    if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for an array");
    st_u32(v, (uint32_t)elem_type);
    st_u64(v + 4, n);
    /* Elements are host-order; kiln only runs on little-endian hosts, like
     * the tensor data it maps directly. */
    if (n) memcpy(v + 12, data, bytes - 12);
    return put_kv(w, key, KILN_GGUF_ARRAY, v, bytes);
}

kiln_status kiln_gguf_set_arr_str(kiln_gguf_writer *w, const char *key, const char *const *strs,
                                  uint64_t n) {
    if (!w || (!strs && n)) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    size_t bytes = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!strs[i])
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: string %llu is NULL",
                              (unsigned long long)i);
        if (!kiln_add_size(bytes, 8, &bytes) || !kiln_add_size(bytes, strlen(strs[i]), &bytes))
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: string array too large");
    }
    uint8_t *v = kiln_malloc(bytes);
    if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for a string array");
    st_u32(v, KILN_GGUF_STRING);
    st_u64(v + 4, n);
    size_t pos = 12;
    for (uint64_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        st_u64(v + pos, len);
        memcpy(v + pos + 8, strs[i], len);
        pos += 8 + len;
    }
    return put_kv(w, key, KILN_GGUF_ARRAY, v, bytes);
}

kiln_status kiln_gguf_copy_keys(kiln_gguf_writer *w, const kiln_gguf *g) {
    if (!w || !g) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    for (int64_t i = 0; i < kiln_gguf_n_keys(g); i++) {
        const void *raw;
        uint64_t size;
        kiln_status st = kiln_gguf_key_raw(g, i, &raw, &size);
        if (st) return st;
        uint8_t *v = dup_bytes(raw, (size_t)size); /* size <= the mapping's size_t */
        if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory copying keys");
        if ((st = put_kv(w, kiln_gguf_key_name(g, i), kiln_gguf_key_type(g, i), v, (size_t)size)))
            return st;
    }
    return KILN_OK;
}

/* deferred: the data comes from the producer of write_file_stream; `size`
 * is then computed here rather than checked. */
static kiln_status add_tensor(kiln_gguf_writer *w, const char *name, int32_t type,
                              uint32_t n_dims, const int64_t *ne, const void *data,
                              uint64_t size, bool deferred) {
    if (!w || !ne || (!deferred && !data && size))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    kiln_status st = check_name(name, "tensor name");
    if (st) return st;
    if (n_dims == 0 || n_dims > KILN_GGUF_MAX_DIMS)
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: tensor '%.64s': n_dims %u not in 1..4",
                          name, n_dims);
    if (!kiln_type_traits_get(type))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: tensor '%.64s': unknown type %d", name,
                          (int)type);
    uint64_t rows = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] <= 0)
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: tensor '%.64s': dim %u is %lld",
                              name, d, (long long)ne[d]);
        if (d > 0) {
            if (rows > (uint64_t)INT64_MAX / (uint64_t)ne[d])
                return kiln_error(KILN_E_INVALID_ARG, "gguf writer: tensor '%.64s' too large", name);
            rows *= (uint64_t)ne[d];
        }
    }
    const kiln_type_traits *tr = kiln_type_traits_get(type);
    uint64_t row = kiln_type_row_size(type, ne[0]);
    if ((uint64_t)ne[0] / tr->block_size > UINT64_MAX / tr->type_size) row = 0; /* wrapped */
    if (row == 0)
        return kiln_error(KILN_E_INVALID_ARG,
                          "gguf writer: tensor '%.64s': row of %lld is too large or not a multiple of "
                          "the %s block",
                          name, (long long)ne[0], kiln_type_name(type));
    if (deferred && rows <= UINT64_MAX / row) size = row * rows;
    if (rows > UINT64_MAX / row || row * rows != size || (!deferred && size > SIZE_MAX))
        return kiln_error(KILN_E_INVALID_ARG,
                          "gguf writer: tensor '%.64s': %llu bytes given, shape needs %llu", name,
                          (unsigned long long)size,
                          (unsigned long long)(rows > UINT64_MAX / row ? 0 : row * rows));
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: duplicate tensor '%.64s'", name);
    if (w->n_t == w->cap_t) {
        size_t nc = w->cap_t ? w->cap_t * 2 : 16, bytes;
        wtensor *nt = kiln_mul_size(nc, sizeof *nt, &bytes) ? kiln_realloc(w->t, bytes) : NULL;
        if (!nt) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for tensors");
        w->t = nt;
        w->cap_t = nc;
    }
    wtensor t = {.type = type, .n_dims = n_dims, .size = size, .deferred = deferred};
    for (int d = 0; d < KILN_GGUF_MAX_DIMS; d++) t.ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
    t.name = kiln_strdup(name);
    t.data = deferred ? NULL : dup_bytes(data, (size_t)size);
    if (!t.name || (!deferred && !t.data)) {
        kiln_free(t.name);
        kiln_free(t.data);
        return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory copying tensor '%.64s'",
                          name);
    }
    w->t[w->n_t++] = t;
    return KILN_OK;
}

kiln_status kiln_gguf_add_tensor(kiln_gguf_writer *w, const char *name, int32_t type,
                                 uint32_t n_dims, const int64_t *ne, const void *data,
                                 uint64_t size) {
    return add_tensor(w, name, type, n_dims, ne, data, size, false);
}

kiln_status kiln_gguf_add_tensor_info(kiln_gguf_writer *w, const char *name, int32_t type,
                                      uint32_t n_dims, const int64_t *ne) {
    return add_tensor(w, name, type, n_dims, ne, NULL, 0, true);
}

kiln_status kiln_gguf_copy_key(kiln_gguf_writer *w, const kiln_gguf *g, int64_t idx) {
    if (!w || !g || idx < 0 || idx >= kiln_gguf_n_keys(g))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: bad key index");
    const void *raw;
    uint64_t size;
    kiln_status st = kiln_gguf_key_raw(g, idx, &raw, &size);
    if (st) return st;
    uint8_t *v = dup_bytes(raw, (size_t)size); /* size <= the mapping's size_t */
    if (!v) return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory copying a key");
    return put_kv(w, kiln_gguf_key_name(g, idx), kiln_gguf_key_type(g, idx), v, (size_t)size);
}

/* ---- serialization ---- */

/* Where bytes go: a memory image of known size, or a buffered fd. */
struct kiln_gguf_sink {
    uint8_t *mem;
    size_t pos;
    uint64_t written;        /* bytes put so far (checks producers) */
    int fd;
    const char *path;
    kiln_status st;
    size_t blen;
    uint8_t buf[1 << 16];
};
typedef struct kiln_gguf_sink sink;

static void sink_flush(sink *s) {
    size_t off = 0;
    while (s->st == KILN_OK && off < s->blen) {
        ssize_t r = write(s->fd, s->buf + off, s->blen - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            s->st = kiln_error(KILN_E_IO, "gguf writer: writing '%s': %s", s->path,
                               r < 0 ? strerror(errno) : "short write");
            break;
        }
        off += (size_t)r;
    }
    s->blen = 0;
}

static void put(sink *s, const void *data, size_t n) {
    if (s->st) return;
    s->written += n;
    if (s->mem) {
        if (n) memcpy(s->mem + s->pos, data, n);
        s->pos += n;
        return;
    }
    const uint8_t *p = data;
    while (n > 0 && s->st == KILN_OK) {
        size_t k = KILN_MIN(n, sizeof s->buf - s->blen);
        memcpy(s->buf + s->blen, p, k);
        s->blen += k;
        p += k;
        n -= k;
        if (s->blen == sizeof s->buf) sink_flush(s);
    }
}

static void put_zeros(sink *s, size_t n) {
    static const uint8_t zeros[64];
    while (n > 0) {
        size_t k = KILN_MIN(n, sizeof zeros);
        put(s, zeros, k);
        n -= k;
    }
}

kiln_status kiln_gguf_sink_write(kiln_gguf_sink *s, const void *data, size_t n) {
    if (!s || (!data && n)) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    put(s, data, n);
    return s->st;
}

static void put_u32(sink *s, uint32_t v) { uint8_t b[4]; st_u32(b, v); put(s, b, 4); }
static void put_u64(sink *s, uint64_t v) { uint8_t b[8]; st_u64(b, v); put(s, b, 8); }
static void put_str(sink *s, const char *str) {
    size_t len = strlen(str);
    put_u64(s, len);
    put(s, str, len);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Sizes of the file parts; fails on a bad general.alignment or overflow. */
typedef struct layout {
    uint64_t alignment;
    uint64_t infos_end;      /* end of the tensor infos, before padding */
    uint64_t data_offset;
    uint64_t total;
} layout;

/* Deferred tensors need a producer to write them. */
static kiln_status check_producer(const kiln_gguf_writer *w, kiln_gguf_tensor_producer_fn produce) {
    for (size_t i = 0; i < w->n_t && !produce; i++)
        if (w->t[i].deferred)
            return kiln_error(KILN_E_INVALID_ARG,
                              "gguf writer: tensor '%.64s' has no data and no producer was given",
                              w->t[i].name);
    return KILN_OK;
}

static kiln_status plan(const kiln_gguf_writer *w, layout *lo) {
    lo->alignment = KILN_GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment") != 0) continue;
        if (w->kv[i].type != KILN_GGUF_UINT32)
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: general.alignment must be u32");
        const uint8_t *b = w->kv[i].val;
        uint32_t a = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
                     ((uint32_t)b[3] << 24);
        if (a == 0 || (a & (a - 1)))
            return kiln_error(KILN_E_INVALID_ARG,
                              "gguf writer: general.alignment %u is not a power of two", a);
        lo->alignment = a;
    }
    /* Every part is already held in memory, so these sums cannot overflow a
     * 64-bit size except through tensor padding, checked below. */
    uint64_t pos = 24;
    for (size_t i = 0; i < w->n_kv; i++) pos += 8 + strlen(w->kv[i].key) + 4 + w->kv[i].val_size;
    for (size_t i = 0; i < w->n_t; i++) pos += 8 + strlen(w->t[i].name) + 4 + 8 * w->t[i].n_dims + 4 + 8;
    lo->infos_end = pos;
    lo->data_offset = align_up(pos, lo->alignment);
    uint64_t total = lo->data_offset;
    for (size_t i = 0; i < w->n_t; i++) {
        uint64_t padded = align_up(w->t[i].size, lo->alignment);
        if (padded < w->t[i].size || total > UINT64_MAX - padded)
            return kiln_error(KILN_E_INVALID_ARG, "gguf writer: file too large");
        total += padded;
    }
    lo->total = total;
    return KILN_OK;
}

static kiln_status emit(const kiln_gguf_writer *w, const layout *lo, sink *s,
                        kiln_gguf_tensor_producer_fn produce, void *user) {
    put(s, "GGUF", 4);
    put_u32(s, 3);
    put_u64(s, w->n_t);
    put_u64(s, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(s, w->kv[i].key);
        put_u32(s, (uint32_t)w->kv[i].type);
        put(s, w->kv[i].val, w->kv[i].val_size);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        put_str(s, t->name);
        put_u32(s, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) put_u64(s, (uint64_t)t->ne[d]);
        put_u32(s, (uint32_t)t->type);
        put_u64(s, off);
        off += align_up(t->size, lo->alignment);
    }
    put_zeros(s, (size_t)(lo->data_offset - lo->infos_end));
    for (size_t i = 0; i < w->n_t && !s->st; i++) {
        const wtensor *t = &w->t[i];
        if (!t->deferred) {
            put(s, t->data, (size_t)t->size);
        } else {
            uint64_t start = s->written;
            kiln_status st = produce(user, i, s);
            if (st) {
                if (!s->st) s->st = st;
                break;
            }
            if (!s->st && s->written - start != t->size)
                s->st = kiln_error(KILN_E_INTERNAL,
                                   "gguf writer: tensor '%.64s': producer wrote %llu bytes, not %llu",
                                   t->name, (unsigned long long)(s->written - start),
                                   (unsigned long long)t->size);
        }
        put_zeros(s, (size_t)(align_up(t->size, lo->alignment) - t->size));
    }
    if (!s->mem) sink_flush(s);
    return s->st;
}

kiln_status kiln_gguf_writer_write_memory(kiln_gguf_writer *w, void **out, size_t *size) {
    if (!w || !out || !size) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    *out = NULL;
    *size = 0;
    layout lo;
    kiln_status st = check_producer(w, NULL);
    if (st || (st = plan(w, &lo))) return st;
    if (lo.total > SIZE_MAX) return kiln_error(KILN_E_OOM_HOST, "gguf writer: image too large");
    sink *s = kiln_calloc(1, sizeof *s);
    uint8_t *mem = kiln_malloc((size_t)lo.total);
    if (!s || !mem) {
        kiln_free(s);
        kiln_free(mem);
        return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory for a %llu-byte image",
                          (unsigned long long)lo.total);
    }
    s->mem = mem;
    st = emit(w, &lo, s, NULL, NULL);
    kiln_free(s);
    if (st) {
        kiln_free(mem);
        return st;
    }
    *out = mem;
    *size = (size_t)lo.total;
    return KILN_OK;
}

kiln_status kiln_gguf_writer_write_file(kiln_gguf_writer *w, const char *path) {
    return kiln_gguf_writer_write_file_stream(w, path, NULL, NULL);
}

kiln_status kiln_gguf_writer_write_file_stream(kiln_gguf_writer *w, const char *path,
                                               kiln_gguf_tensor_producer_fn produce, void *user) {
    if (!w || !path) return kiln_error(KILN_E_INVALID_ARG, "gguf writer: NULL argument");
    layout lo;
    kiln_status st = check_producer(w, produce);
    if (st || (st = plan(w, &lo))) return st;
    size_t plen = strlen(path), tlen;
    static const char suffix[] = ".tmp-XXXXXX";
    if (!kiln_add_size(plen, sizeof suffix, &tlen))
        return kiln_error(KILN_E_INVALID_ARG, "gguf writer: path too long");
    char *tmp = kiln_malloc(tlen);
    sink *s = kiln_calloc(1, sizeof *s);
    if (!tmp || !s) {
        kiln_free(tmp);
        kiln_free(s);
        return kiln_error(KILN_E_OOM_HOST, "gguf writer: out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = kiln_error(KILN_E_IO, "gguf writer: cannot create a temporary file beside '%s': %s",
                        path, strerror(errno));
        goto out;
    }
    s->fd = fd;
    s->path = tmp;
    st = emit(w, &lo, s, produce, user);
    /* mkstemp makes 0600; a model file should be readable like any other. */
    if (!st && fchmod(fd, 0644) != 0)
        st = kiln_error(KILN_E_IO, "gguf writer: chmod '%s': %s", tmp, strerror(errno));
    if (!st && fsync(fd) != 0)
        st = kiln_error(KILN_E_IO, "gguf writer: sync '%s': %s", tmp, strerror(errno));
    if (close(fd) != 0 && !st)
        st = kiln_error(KILN_E_IO, "gguf writer: close '%s': %s", tmp, strerror(errno));
    if (!st && rename(tmp, path) != 0)
        st = kiln_error(KILN_E_IO, "gguf writer: rename '%s' to '%s': %s", tmp, path,
                        strerror(errno));
    if (st) unlink(tmp);
out:
    kiln_free(tmp);
    kiln_free(s);
    return st;
}
