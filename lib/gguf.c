/*
 * gguf.c - the hardened GGUF reader (versions 2 and 3, little-endian).
 *
 * One parser serves both kiln_gguf_open (a read-only mmap of the file) and
 * kiln_gguf_open_memory (caller bytes, never copied). It validates the
 * whole header, every metadata value and every tensor info before
 * returning, so the getters can then walk values without re-checking
 * anything the file could lie about. Every read goes through a cursor that
 * is bounds-checked against the size; all size arithmetic is done in
 * uint64_t with explicit overflow checks.
 *
 * Memory grows with what is actually parsed (arrays grow by doubling), so a
 * header that claims 2^60 keys costs nothing before it is rejected. The
 * only per-element index is the offset table of top-level string arrays,
 * which makes kiln_gguf_arr_str O(1) (tokenizers call it for every token);
 * its size is bounded by the file size because every string takes at least
 * 8 bytes in the file.
 *
 * Ownership: a kiln_gguf owns its key and tensor-name copies, its indexes
 * and (for kiln_gguf_open) the mapping; kiln_gguf_close releases all.
 * Statuses: KILN_E_IO (open/stat/mmap), KILN_E_FORMAT (anything malformed,
 * message "gguf: <what> at offset N (key 'k' | tensor 't')"),
 * KILN_E_OOM_HOST, KILN_E_INVALID_ARG (NULL arguments).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "quant.h"

/* Limits on things the format leaves unbounded. Keys and tensor names are
 * short in every real file; 64 KiB leaves room for anything sane while
 * keeping a hostile file from making us copy megabytes per name. */
#define GGUF_MAX_NAME_LEN (64u * 1024u)
#define GGUF_MAX_DEPTH 8

/* Smallest possible encodings, used to reject counts that cannot fit in the
 * bytes left before anything is allocated. */
#define GGUF_MIN_KV_BYTES 13     /* u64 key len + u32 type + 1 byte of value */
#define GGUF_MIN_TENSOR_BYTES 32 /* u64 name len + u32 n_dims + u64 ne + u32 type + u64 offset */
#define GGUF_HEADER_BYTES 24     /* magic, version, n_tensors, n_kv */

typedef struct gguf_kv {
    char *key;               /* NUL-terminated copy */
    uint64_t key_off;        /* file offset of the key (for messages) */
    int32_t type;
    int32_t elem_type;       /* arrays only */
    uint64_t n;              /* arrays only */
    const uint8_t *p;        /* as in kiln_gguf_value */
    const uint8_t *raw;      /* bytes after the u32 value type */
    uint64_t raw_size;
    uint64_t *str_off;       /* string arrays: file offset of each element */
} gguf_kv;

/* Open-addressing hash set of indexes into kv[] or tensors[]. */
typedef struct gguf_index {
    int64_t *slots;          /* -1 = empty */
    uint64_t mask;
} gguf_index;

struct kiln_gguf {
    const uint8_t *base;
    uint64_t size;
    void *map;               /* mmap'd region (kiln_gguf_open) or NULL */
    size_t map_size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    kiln_gguf_tensor *tensors;
    uint64_t *tensor_info_off; /* file offset of each tensor info */
    gguf_index kv_index;
    gguf_index tensor_index;
};

/* ---- little-endian loads (the format is little-endian on every host) ---- */

static inline uint16_t ld_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ld_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ld_u64(const uint8_t *p) {
    return (uint64_t)ld_u32(p) | ((uint64_t)ld_u32(p + 4) << 32);
}

uint64_t kiln_gguf_scalar_size(int32_t t) {
    switch (t) {
    case KILN_GGUF_UINT8: case KILN_GGUF_INT8: case KILN_GGUF_BOOL: return 1;
    case KILN_GGUF_UINT16: case KILN_GGUF_INT16: return 2;
    case KILN_GGUF_UINT32: case KILN_GGUF_INT32: case KILN_GGUF_FLOAT32: return 4;
    case KILN_GGUF_UINT64: case KILN_GGUF_INT64: case KILN_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static bool is_integer_type(int32_t t) {
    switch (t) {
    case KILN_GGUF_UINT8: case KILN_GGUF_INT8: case KILN_GGUF_UINT16: case KILN_GGUF_INT16:
    case KILN_GGUF_UINT32: case KILN_GGUF_INT32: case KILN_GGUF_UINT64: case KILN_GGUF_INT64:
        return true;
    default:
        return false;
    }
}

static bool is_float_type(int32_t t) { return t == KILN_GGUF_FLOAT32 || t == KILN_GGUF_FLOAT64; }

/* Smallest encoding of one element of an array of type t. */
static uint64_t min_elem_size(int32_t t) {
    if (t == KILN_GGUF_STRING) return 8;
    if (t == KILN_GGUF_ARRAY) return 12;
    return kiln_gguf_scalar_size(t);
}

const char *kiln_gguf_type_name(int32_t t) {
    static const char *names[KILN_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
    };
    return (t >= 0 && t < KILN_GGUF_TYPE_COUNT) ? names[t] : "invalid";
}

/* Integer scalar at p of type t: sign-aware. *neg tells how to read *mag. */
static void load_int(const uint8_t *p, int32_t t, bool *neg, uint64_t *mag) {
    int64_t s = 0;
    *neg = false;
    switch (t) {
    case KILN_GGUF_UINT8: *mag = p[0]; return;
    case KILN_GGUF_UINT16: *mag = ld_u16(p); return;
    case KILN_GGUF_UINT32: *mag = ld_u32(p); return;
    case KILN_GGUF_UINT64: *mag = ld_u64(p); return;
    case KILN_GGUF_INT8: s = (int8_t)p[0]; break;
    case KILN_GGUF_INT16: s = (int16_t)ld_u16(p); break;
    case KILN_GGUF_INT32: s = (int32_t)ld_u32(p); break;
    case KILN_GGUF_INT64: s = (int64_t)ld_u64(p); break;
    default: *mag = 0; return;
    }
    if (s < 0) {
        *neg = true;
        *mag = (uint64_t)0 - (uint64_t)s; /* |s| without overflow for INT64_MIN */
    } else {
        *mag = (uint64_t)s;
    }
}

static double load_float(const uint8_t *p, int32_t t) {
    if (t == KILN_GGUF_FLOAT32) {
        uint32_t u = ld_u32(p);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    uint64_t u = ld_u64(p);
    double d = 0;
    memcpy(&d, &u, 8);
    return d;
}

/* ---- parser ------------------------------------------------------------ */

typedef struct parser {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    const char *what;        /* "key" or "tensor" for messages, or NULL */
    const uint8_t *name;     /* current key/tensor name bytes (not NUL-terminated) */
    uint64_t name_len;
} parser;

/* A printable, bounded rendering of the current name for messages. */
static void ctx_str(const parser *ps, char *buf, size_t cap) {
    buf[0] = '\0';
    if (!ps->what || !ps->name) return;
    char name[64];
    size_t n = 0;
    for (uint64_t i = 0; i < ps->name_len && n + 1 < sizeof name; i++) {
        uint8_t c = ps->name[i];
        name[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    name[n] = '\0';
    snprintf(buf, cap, " (%s '%s%s')", ps->what, name, ps->name_len > n ? "..." : "");
}

/* kiln_error(KILN_E_FORMAT) with the standard suffix. */
static kiln_status KILN_PRINTF(3, 4) perr(const parser *ps, uint64_t off, const char *fmt, ...) {
    char what[256], ctx[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    ctx_str(ps, ctx, sizeof ctx);
    return kiln_error(KILN_E_FORMAT, "gguf: %s at offset %llu%s", what, (unsigned long long)off,
                      ctx);
}

static uint64_t remaining(const parser *ps) { return ps->size - ps->pos; }

static kiln_status need(parser *ps, uint64_t n, const char *what) {
    if (n > remaining(ps))
        return perr(ps, ps->pos, "truncated %s (need %llu bytes, %llu left)", what,
                    (unsigned long long)n, (unsigned long long)remaining(ps));
    return KILN_OK;
}

static kiln_status rd_u32(parser *ps, uint32_t *v, const char *what) {
    kiln_status st = need(ps, 4, what);
    if (st) return st;
    *v = ld_u32(ps->base + ps->pos);
    ps->pos += 4;
    return KILN_OK;
}

static kiln_status rd_u64(parser *ps, uint64_t *v, const char *what) {
    kiln_status st = need(ps, 8, what);
    if (st) return st;
    *v = ld_u64(ps->base + ps->pos);
    ps->pos += 8;
    return KILN_OK;
}

/* A string: u64 length + bytes. max_len 0 = bounded by the file only. */
static kiln_status rd_str(parser *ps, const uint8_t **s, uint64_t *len, uint64_t max_len,
                          const char *what) {
    uint64_t at = ps->pos;
    kiln_status st = rd_u64(ps, len, what);
    if (st) return st;
    if (max_len && *len > max_len)
        return perr(ps, at, "%s length %llu exceeds the limit of %llu", what,
                    (unsigned long long)*len, (unsigned long long)max_len);
    if (*len > remaining(ps))
        return perr(ps, at, "%s length %llu exceeds the %llu bytes left", what,
                    (unsigned long long)*len, (unsigned long long)remaining(ps));
    *s = ps->base + ps->pos;
    ps->pos += *len;
    return KILN_OK;
}

static kiln_status check_value_type(parser *ps, uint64_t at, uint32_t t, const char *what) {
    if (t >= KILN_GGUF_TYPE_COUNT)
        return perr(ps, at, "invalid %s %u", what, t);
    return KILN_OK;
}

/* Skips (and validates) one value of type t at the cursor. Arrays recurse up
 * to GGUF_MAX_DEPTH levels; every count is checked against the bytes left
 * before the loop, so the total work is linear in the file size. */
static kiln_status skip_value(parser *ps, int32_t t, int depth) {
    uint64_t at = ps->pos;
    if (t == KILN_GGUF_STRING) {
        const uint8_t *s;
        uint64_t len;
        return rd_str(ps, &s, &len, 0, "string");
    }
    if (t == KILN_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_DEPTH)
            return perr(ps, at, "arrays nested deeper than %d levels", GGUF_MAX_DEPTH);
        uint32_t et;
        uint64_t n;
        kiln_status st = rd_u32(ps, &et, "array type");
        if (st) return st;
        if ((st = check_value_type(ps, at, et, "array element type"))) return st;
        if ((st = rd_u64(ps, &n, "array count"))) return st;
        uint64_t min = min_elem_size((int32_t)et);
        if (n > remaining(ps) / min)
            return perr(ps, at, "array count %llu exceeds the %llu bytes left",
                        (unsigned long long)n, (unsigned long long)remaining(ps));
        if (et != KILN_GGUF_STRING && et != KILN_GGUF_ARRAY && et != KILN_GGUF_BOOL) {
            ps->pos += n * min; /* fits: checked above */
            return KILN_OK;
        }
        for (uint64_t i = 0; i < n; i++)
            if ((st = skip_value(ps, (int32_t)et, depth + 1))) return st;
        return KILN_OK;
    }
    kiln_status st = need(ps, kiln_gguf_scalar_size(t), kiln_gguf_type_name(t));
    if (st) return st;
    if (t == KILN_GGUF_BOOL && ps->base[ps->pos] > 1)
        return perr(ps, at, "bool value %u is neither 0 nor 1", ps->base[ps->pos]);
    ps->pos += kiln_gguf_scalar_size(t);
    return KILN_OK;
}

/* ---- hash index over names ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static const char *index_name(const kiln_gguf *g, const gguf_index *ix, int64_t i) {
    return ix == &g->kv_index ? g->kv[i].key : g->tensors[i].name;
}

/* Builds an index over n names; *dup receives the index of the first name
 * that repeats an earlier one (or -1). */
static kiln_status index_build(kiln_gguf *g, gguf_index *ix, int64_t n, int64_t *dup) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap *= 2; /* n <= file size / 13, no overflow */
    size_t bytes;
    if (!kiln_mul_size((size_t)cap, sizeof(int64_t), &bytes) || !(ix->slots = kiln_malloc(bytes)))
        return kiln_error(KILN_E_OOM_HOST, "gguf: out of memory for a name index of %lld entries",
                          (long long)n);
    memset(ix->slots, 0xff, bytes); /* -1 */
    ix->mask = cap - 1;
    *dup = -1;
    for (int64_t i = 0; i < n; i++) {
        const char *name = index_name(g, ix, i);
        uint64_t h = hash_bytes(name, strlen(name)) & ix->mask;
        while (ix->slots[h] >= 0) {
            if (strcmp(index_name(g, ix, ix->slots[h]), name) == 0) {
                if (*dup < 0) *dup = i;
                goto next;
            }
            h = (h + 1) & ix->mask;
        }
        ix->slots[h] = i;
    next:;
    }
    return KILN_OK;
}

static int64_t index_find(const kiln_gguf *g, const gguf_index *ix, const char *name) {
    if (!ix->slots || !name) return -1;
    uint64_t h = hash_bytes(name, strlen(name)) & ix->mask;
    while (ix->slots[h] >= 0) {
        if (strcmp(index_name(g, ix, ix->slots[h]), name) == 0) return ix->slots[h];
        h = (h + 1) & ix->mask;
    }
    return -1;
}

/* ---- open ---- */

/* Copies a key or tensor name into a NUL-terminated string, rejecting empty
 * names and embedded NULs (they would make two distinct names compare
 * equal once terminated). */
static kiln_status copy_name(parser *ps, uint64_t at, const uint8_t *s, uint64_t len,
                             const char *what, char **out) {
    if (len == 0) return perr(ps, at, "empty %s", what);
    if (memchr(s, 0, len)) return perr(ps, at, "%s contains a NUL byte", what);
    char *c = kiln_malloc(len + 1);
    if (!c) return kiln_error(KILN_E_OOM_HOST, "gguf: out of memory copying a %s", what);
    memcpy(c, s, len);
    c[len] = '\0';
    *out = c;
    return KILN_OK;
}

/* Grows *arr (of elem-byte elements) so that index `need` fits. */
static kiln_status grow(void **arr, uint64_t *cap, uint64_t need, size_t elem, uint64_t limit) {
    if (need < *cap) return KILN_OK;
    uint64_t nc = *cap ? *cap * 2 : 16;
    if (nc > limit) nc = limit;
    if (nc <= need) nc = need + 1;
    size_t bytes;
    if (nc > SIZE_MAX || !kiln_mul_size((size_t)nc, elem, &bytes))
        return kiln_error(KILN_E_OOM_HOST, "gguf: table too large");
    void *p = kiln_realloc(*arr, bytes);
    if (!p) return kiln_error(KILN_E_OOM_HOST, "gguf: out of memory for %llu entries",
                              (unsigned long long)nc);
    *arr = p;
    *cap = nc;
    return KILN_OK;
}

static kiln_status parse_kv(parser *ps, gguf_kv *kv) {
    uint64_t at = ps->pos;
    const uint8_t *name;
    uint64_t len;
    ps->what = NULL;
    kiln_status st = rd_str(ps, &name, &len, GGUF_MAX_NAME_LEN, "key");
    if (st) return st;
    ps->what = "key";
    ps->name = name;
    ps->name_len = len;
    kv->key_off = at;
    if ((st = copy_name(ps, at, name, len, "key", &kv->key))) return st;
    uint32_t t;
    uint64_t tat = ps->pos;
    if ((st = rd_u32(ps, &t, "value type"))) return st;
    if ((st = check_value_type(ps, tat, t, "value type"))) return st;
    kv->type = (int32_t)t;
    kv->raw = ps->base + ps->pos;
    uint64_t vstart = ps->pos;
    if ((st = skip_value(ps, kv->type, 0))) return st;
    kv->raw_size = ps->pos - vstart;
    if (kv->type == KILN_GGUF_ARRAY) {
        kv->elem_type = (int32_t)ld_u32(kv->raw);
        kv->n = ld_u64(kv->raw + 4);
        kv->p = kv->raw + 12;
        if (kv->elem_type == KILN_GGUF_STRING && kv->n > 0) {
            /* O(1) element access for tokenizers: n <= file size / 8. */
            size_t bytes;
            if (!kiln_mul_size((size_t)kv->n, sizeof(uint64_t), &bytes) ||
                !(kv->str_off = kiln_malloc(bytes)))
                return kiln_error(KILN_E_OOM_HOST,
                                  "gguf: out of memory indexing string array '%s'", kv->key);
            uint64_t off = vstart + 12;
            for (uint64_t i = 0; i < kv->n; i++) {
                kv->str_off[i] = off;
                off += 8 + ld_u64(ps->base + off); /* validated by skip_value */
            }
        }
    } else {
        kv->p = kv->raw;
    }
    return KILN_OK;
}

static kiln_status parse_tensor(kiln_gguf *g, parser *ps, int64_t idx) {
    kiln_gguf_tensor *t = &g->tensors[idx];
    uint64_t at = ps->pos;
    const uint8_t *name;
    uint64_t len;
    ps->what = NULL;
    kiln_status st = rd_str(ps, &name, &len, GGUF_MAX_NAME_LEN, "tensor name");
    if (st) return st;
    ps->what = "tensor";
    ps->name = name;
    ps->name_len = len;
    g->tensor_info_off[idx] = at;
    char *copy;
    if ((st = copy_name(ps, at, name, len, "tensor name", &copy))) return st;
    t->name = copy;
    uint64_t dat = ps->pos;
    if ((st = rd_u32(ps, &t->n_dims, "n_dims"))) return st;
    if (t->n_dims == 0 || t->n_dims > KILN_GGUF_MAX_DIMS)
        return perr(ps, dat, "n_dims %u is not in 1..%d", t->n_dims, KILN_GGUF_MAX_DIMS);
    for (int d = 0; d < KILN_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    uint64_t nelem = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t v, vat = ps->pos;
        if ((st = rd_u64(ps, &v, "dimension"))) return st;
        if (v == 0 || v > (uint64_t)INT64_MAX)
            return perr(ps, vat, "dimension %u is %lld (must be positive)", d, (long long)v);
        if (nelem > (uint64_t)INT64_MAX / v)
            return perr(ps, vat, "element count overflows");
        nelem *= v;
        t->ne[d] = (int64_t)v;
    }
    uint32_t type;
    uint64_t tat = ps->pos;
    if ((st = rd_u32(ps, &type, "tensor type"))) return st;
    if (type > INT32_MAX || !kiln_type_traits_get((int32_t)type))
        return perr(ps, tat, "unknown tensor type %u", type);
    t->type = (int32_t)type;
    /* Row bytes computed here rather than with kiln_type_row_size so that
     * a dimension near 2^63 cannot wrap the product around. */
    const kiln_type_traits *tr = kiln_type_traits_get(t->type);
    if ((uint64_t)t->ne[0] % tr->block_size != 0)
        return perr(ps, tat, "row of %lld elements is not a multiple of the %s block size %u",
                    (long long)t->ne[0], tr->name, tr->block_size);
    uint64_t blocks = (uint64_t)t->ne[0] / tr->block_size;
    if (blocks > UINT64_MAX / tr->type_size)
        return perr(ps, tat, "row size of %lld elements overflows", (long long)t->ne[0]);
    uint64_t row = blocks * tr->type_size;
    uint64_t rows = nelem / (uint64_t)t->ne[0];
    if (rows > UINT64_MAX / row) return perr(ps, tat, "tensor byte size overflows");
    t->size = row * rows;
    if ((st = rd_u64(ps, &t->offset, "tensor offset"))) return st;
    return KILN_OK;
}

typedef struct off_ref { uint64_t off, end; int64_t i; } off_ref;
static int cmp_off_ref(const void *a, const void *b) {
    const off_ref *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* After all infos: alignment, data section, per-tensor bounds and overlap. */
static kiln_status place_tensors(kiln_gguf *g, parser *ps) {
    uint64_t a = g->alignment;
    uint64_t end_infos = ps->pos;
    /* end_infos <= size < 2^64 - a, so this cannot overflow. */
    g->data_offset = (end_infos + a - 1) / a * a;
    if (g->n_tensors == 0) return KILN_OK;
    ps->what = NULL;
    if (g->data_offset > g->size)
        return perr(ps, end_infos, "data section at %llu starts past the end of the file (%llu bytes)",
                    (unsigned long long)g->data_offset, (unsigned long long)g->size);
    uint64_t avail = g->size - g->data_offset;
    off_ref *refs;
    size_t bytes;
    if (!kiln_mul_size((size_t)g->n_tensors, sizeof *refs, &bytes) || !(refs = kiln_malloc(bytes)))
        return kiln_error(KILN_E_OOM_HOST, "gguf: out of memory checking tensor placement");
    kiln_status st = KILN_OK;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        kiln_gguf_tensor *t = &g->tensors[i];
        ps->what = "tensor";
        ps->name = (const uint8_t *)t->name;
        ps->name_len = strlen(t->name);
        uint64_t at = g->tensor_info_off[i];
        if (t->offset % a != 0) {
            st = perr(ps, at, "data offset %llu is not a multiple of the alignment %llu",
                      (unsigned long long)t->offset, (unsigned long long)a);
            goto done;
        }
        if (t->offset > avail || t->size > avail - t->offset) {
            st = perr(ps, at, "data [%llu, +%llu) lies outside the file (%llu bytes of data)",
                      (unsigned long long)t->offset, (unsigned long long)t->size,
                      (unsigned long long)avail);
            goto done;
        }
        t->data = g->base + g->data_offset + t->offset;
        refs[i] = (off_ref){t->offset, t->offset + t->size, i};
    }
    qsort(refs, (size_t)g->n_tensors, sizeof *refs, cmp_off_ref);
    for (int64_t i = 1; i < g->n_tensors; i++) {
        if (refs[i].off < refs[i - 1].end) {
            kiln_gguf_tensor *t = &g->tensors[refs[i].i];
            ps->what = "tensor";
            ps->name = (const uint8_t *)t->name;
            ps->name_len = strlen(t->name);
            st = perr(ps, g->tensor_info_off[refs[i].i], "data overlaps tensor '%.64s'",
                      g->tensors[refs[i - 1].i].name);
            goto done;
        }
    }
done:
    kiln_free(refs);
    return st;
}

static kiln_status parse(kiln_gguf *g) {
    parser ps = {.base = g->base, .size = g->size, .pos = 0};
    kiln_status st;
    if (g->size < 4) return perr(&ps, 0, "truncated header (file of %llu bytes)",
                                 (unsigned long long)g->size);
    if (memcmp(g->base, "GGUF", 4) != 0) return perr(&ps, 0, "bad magic (not a GGUF file)");
    ps.pos = 4;
    if ((st = rd_u32(&ps, &g->version, "version"))) return st;
    if (g->version != 2 && g->version != 3) {
        uint32_t v = g->version;
        uint32_t swapped = (v >> 24) | ((v >> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24);
        return perr(&ps, 4, "unsupported version %u%s", v,
                    (swapped == 2 || swapped == 3) ? " (a big-endian file?)" : "");
    }
    uint64_t n_tensors, n_kv;
    if ((st = rd_u64(&ps, &n_tensors, "tensor count"))) return st;
    if ((st = rd_u64(&ps, &n_kv, "key count"))) return st;
    uint64_t left = remaining(&ps);
    if (n_kv > left / GGUF_MIN_KV_BYTES)
        return perr(&ps, 16, "key count %llu cannot fit in the %llu bytes left",
                    (unsigned long long)n_kv, (unsigned long long)left);
    if (n_tensors > (left - n_kv * GGUF_MIN_KV_BYTES) / GGUF_MIN_TENSOR_BYTES)
        return perr(&ps, 8, "tensor count %llu cannot fit in the %llu bytes left",
                    (unsigned long long)n_tensors, (unsigned long long)left);

    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        if ((st = grow((void **)&g->kv, &cap, i, sizeof *g->kv, n_kv))) return st;
        memset(&g->kv[i], 0, sizeof g->kv[i]);
        g->n_kv = (int64_t)i + 1; /* so close() frees a half-parsed entry */
        if ((st = parse_kv(&ps, &g->kv[i]))) return st;
    }
    int64_t dup;
    if ((st = index_build(g, &g->kv_index, g->n_kv, &dup))) return st;
    if (dup >= 0) {
        ps.what = "key";
        ps.name = (const uint8_t *)g->kv[dup].key;
        ps.name_len = strlen(g->kv[dup].key);
        return perr(&ps, g->kv[dup].key_off, "duplicate key");
    }

    g->alignment = KILN_GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = index_find(g, &g->kv_index, "general.alignment");
    if (ai >= 0) {
        gguf_kv *kv = &g->kv[ai];
        ps.what = "key";
        ps.name = (const uint8_t *)kv->key;
        ps.name_len = strlen(kv->key);
        if (kv->type != KILN_GGUF_UINT32)
            return perr(&ps, kv->key_off, "alignment has type %s, not u32",
                        kiln_gguf_type_name(kv->type));
        uint32_t a = ld_u32(kv->p);
        if (a == 0 || (a & (a - 1)) != 0)
            return perr(&ps, kv->key_off, "alignment %u is not a power of two", a);
        g->alignment = a;
    }

    cap = 0;
    uint64_t cap_off = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((st = grow((void **)&g->tensors, &cap, i, sizeof *g->tensors, n_tensors))) return st;
        if ((st = grow((void **)&g->tensor_info_off, &cap_off, i, sizeof(uint64_t), n_tensors)))
            return st;
        memset(&g->tensors[i], 0, sizeof g->tensors[i]);
        g->n_tensors = (int64_t)i + 1;
        if ((st = parse_tensor(g, &ps, (int64_t)i))) return st;
    }
    if ((st = index_build(g, &g->tensor_index, g->n_tensors, &dup))) return st;
    if (dup >= 0) {
        ps.what = "tensor";
        ps.name = (const uint8_t *)g->tensors[dup].name;
        ps.name_len = strlen(g->tensors[dup].name);
        return perr(&ps, g->tensor_info_off[dup], "duplicate tensor name");
    }
    return place_tensors(g, &ps);
}

void kiln_gguf_close(kiln_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        kiln_free(g->kv[i].key);
        kiln_free(g->kv[i].str_off);
    }
    kiln_free(g->kv);
    for (int64_t i = 0; i < g->n_tensors; i++) kiln_free((void *)g->tensors[i].name);
    kiln_free(g->tensors);
    kiln_free(g->tensor_info_off);
    kiln_free(g->kv_index.slots);
    kiln_free(g->tensor_index.slots);
    if (g->map) munmap(g->map, g->map_size);
    kiln_free(g);
}

/* Takes ownership of map (if any) in every outcome. */
static kiln_status open_common(const void *data, size_t size, void *map, size_t map_size,
                               kiln_gguf **out) {
    kiln_gguf *g = kiln_calloc(1, sizeof *g);
    if (!g) {
        if (map) munmap(map, map_size);
        return kiln_error(KILN_E_OOM_HOST, "gguf: out of memory");
    }
    g->base = data;
    g->size = size;
    g->map = map;
    g->map_size = map_size;
    kiln_status st = parse(g);
    if (st) {
        kiln_gguf_close(g);
        return st;
    }
    *out = g;
    return KILN_OK;
}

kiln_status kiln_gguf_open_memory(const void *data, size_t size, kiln_gguf **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "gguf: out is NULL");
    *out = NULL;
    if (!data && size) return kiln_error(KILN_E_INVALID_ARG, "gguf: data is NULL");
    static const uint8_t empty[1];
    return open_common(data ? data : empty, size, NULL, 0, out);
}

kiln_status kiln_gguf_open(const char *path, kiln_gguf **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "gguf: out is NULL");
    *out = NULL;
    if (!path) return kiln_error(KILN_E_INVALID_ARG, "gguf: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kiln_error(KILN_E_IO, "gguf: cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return kiln_error(KILN_E_IO, "gguf: cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return kiln_error(KILN_E_IO, "gguf: '%s' is not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return kiln_error(KILN_E_IO, "gguf: '%s' is too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return kiln_error(KILN_E_IO, "gguf: cannot map '%s': %s", path, strerror(e));
        }
    }
    close(fd);
    kiln_status st = open_common(map, size, map, size, out);
    if (st == KILN_E_FORMAT) {
        /* Name the file too: "gguf: <what> ... in 'path'". */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        kiln_error(st, "%s in '%s'", msg, path);
    }
    return st;
}

/* ---- accessors ---- */

uint32_t kiln_gguf_version(const kiln_gguf *g) { return g ? g->version : 0; }
uint32_t kiln_gguf_alignment(const kiln_gguf *g) { return g ? g->alignment : 0; }
const void *kiln_gguf_base(const kiln_gguf *g, size_t *size) {
    if (size) *size = g ? (size_t)g->size : 0;
    return g ? g->base : NULL;
}
uint64_t kiln_gguf_data_offset(const kiln_gguf *g) { return g ? g->data_offset : 0; }

int64_t kiln_gguf_n_keys(const kiln_gguf *g) { return g ? g->n_kv : 0; }
int64_t kiln_gguf_find_key(const kiln_gguf *g, const char *key) {
    return g ? index_find(g, &g->kv_index, key) : -1;
}
const char *kiln_gguf_key_name(const kiln_gguf *g, int64_t idx) {
    return (g && idx >= 0 && idx < g->n_kv) ? g->kv[idx].key : NULL;
}
int32_t kiln_gguf_key_type(const kiln_gguf *g, int64_t idx) {
    return (g && idx >= 0 && idx < g->n_kv) ? g->kv[idx].type : -1;
}

kiln_status kiln_gguf_key_raw(const kiln_gguf *g, int64_t idx, const void **raw, uint64_t *size) {
    if (!g || idx < 0 || idx >= g->n_kv || !raw || !size)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: key index %lld out of range", (long long)idx);
    *raw = g->kv[idx].raw;
    *size = g->kv[idx].raw_size;
    return KILN_OK;
}

/* Finds key; NOT_FOUND / INVALID_ARG with a message. */
static kiln_status lookup(const kiln_gguf *g, const char *key, const gguf_kv **kv) {
    if (!g || !key) return kiln_error(KILN_E_INVALID_ARG, "gguf: NULL argument");
    int64_t i = index_find(g, &g->kv_index, key);
    if (i < 0) return kiln_error(KILN_E_NOT_FOUND, "gguf: key '%s' not found", key);
    *kv = &g->kv[i];
    return KILN_OK;
}

static kiln_status type_err(const gguf_kv *kv, const char *want) {
    return kiln_error(KILN_E_FORMAT, "gguf: key '%s' has type %s, expected %s", kv->key,
                      kiln_gguf_type_name(kv->type), want);
}

/* Integer key into [lo_neg, hi] (lo_neg: largest allowed magnitude below 0). */
static kiln_status get_int(const kiln_gguf *g, const char *key, uint64_t neg_max, uint64_t pos_max,
                           const char *want, bool *neg, uint64_t *mag) {
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (!is_integer_type(kv->type)) return type_err(kv, want);
    load_int(kv->p, kv->type, neg, mag);
    if (*neg ? *mag > neg_max : *mag > pos_max)
        return kiln_error(KILN_E_FORMAT, "gguf: key '%s' value %s%llu does not fit %s", key,
                          *neg ? "-" : "", (unsigned long long)*mag, want);
    return KILN_OK;
}

#define NOT_NULL(p) \
    if (!(p)) return kiln_error(KILN_E_INVALID_ARG, "gguf: NULL output for key")

kiln_status kiln_gguf_get_u32(const kiln_gguf *g, const char *key, uint32_t *out) {
    NOT_NULL(out);
    bool neg = false;
    uint64_t m = 0;
    kiln_status st = get_int(g, key, 0, UINT32_MAX, "u32", &neg, &m);
    if (!st) *out = (uint32_t)m;
    return st;
}
kiln_status kiln_gguf_get_u64(const kiln_gguf *g, const char *key, uint64_t *out) {
    NOT_NULL(out);
    bool neg = false;
    uint64_t m = 0;
    kiln_status st = get_int(g, key, 0, UINT64_MAX, "u64", &neg, &m);
    if (!st) *out = m;
    return st;
}
kiln_status kiln_gguf_get_i32(const kiln_gguf *g, const char *key, int32_t *out) {
    NOT_NULL(out);
    bool neg = false;
    uint64_t m = 0;
    kiln_status st = get_int(g, key, (uint64_t)INT32_MAX + 1, INT32_MAX, "i32", &neg, &m);
    if (!st) *out = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    return st;
}
kiln_status kiln_gguf_get_i64(const kiln_gguf *g, const char *key, int64_t *out) {
    NOT_NULL(out);
    bool neg = false;
    uint64_t m = 0;
    kiln_status st = get_int(g, key, (uint64_t)INT64_MAX + 1, INT64_MAX, "i64", &neg, &m);
    if (!st) *out = neg ? (int64_t)(0 - m) : (int64_t)m; /* two's complement, INT64_MIN ok */
    return st;
}
kiln_status kiln_gguf_get_f64(const kiln_gguf *g, const char *key, double *out) {
    NOT_NULL(out);
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (!is_float_type(kv->type)) return type_err(kv, "f32 or f64");
    *out = load_float(kv->p, kv->type);
    return KILN_OK;
}
kiln_status kiln_gguf_get_f32(const kiln_gguf *g, const char *key, float *out) {
    NOT_NULL(out);
    double d = 0;
    kiln_status st = kiln_gguf_get_f64(g, key, &d);
    if (!st) *out = (float)d;
    return st;
}
kiln_status kiln_gguf_get_bool(const kiln_gguf *g, const char *key, bool *out) {
    NOT_NULL(out);
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (kv->type != KILN_GGUF_BOOL) return type_err(kv, "bool");
    *out = kv->p[0] != 0;
    return KILN_OK;
}
kiln_status kiln_gguf_get_str(const kiln_gguf *g, const char *key, const char **s, uint64_t *len) {
    NOT_NULL(s && len);
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (kv->type != KILN_GGUF_STRING) return type_err(kv, "str");
    *len = ld_u64(kv->p);
    *s = (const char *)kv->p + 8;
    return KILN_OK;
}

kiln_status kiln_gguf_get_arr(const kiln_gguf *g, const char *key, int32_t *elem_type,
                              uint64_t *n) {
    NOT_NULL(elem_type && n);
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (kv->type != KILN_GGUF_ARRAY) return type_err(kv, "arr");
    *elem_type = kv->elem_type;
    *n = kv->n;
    return KILN_OK;
}

kiln_status kiln_gguf_arr_str(const kiln_gguf *g, const char *key, uint64_t i, const char **s,
                              uint64_t *len) {
    NOT_NULL(s && len);
    const gguf_kv *kv;
    kiln_status st = lookup(g, key, &kv);
    if (st) return st;
    if (kv->type != KILN_GGUF_ARRAY || kv->elem_type != KILN_GGUF_STRING)
        return kiln_error(KILN_E_FORMAT, "gguf: key '%s' is not an array of strings", key);
    if (i >= kv->n)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: index %llu past the %llu strings of '%s'",
                          (unsigned long long)i, (unsigned long long)kv->n, key);
    const uint8_t *p = g->base + kv->str_off[i];
    *len = ld_u64(p);
    *s = (const char *)p + 8;
    return KILN_OK;
}

/* Shared prologue of arr_i32 / arr_f32. */
static kiln_status numeric_arr(const kiln_gguf *g, const char *key, const void *out, uint64_t n,
                               const gguf_kv **kv) {
    NOT_NULL(out || n == 0);
    kiln_status st = lookup(g, key, kv);
    if (st) return st;
    if ((*kv)->type != KILN_GGUF_ARRAY || kiln_gguf_scalar_size((*kv)->elem_type) == 0 ||
        (*kv)->elem_type == KILN_GGUF_BOOL)
        return kiln_error(KILN_E_FORMAT, "gguf: key '%s' is not a numeric array", key);
    if ((*kv)->n != n)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: key '%s' has %llu elements, not %llu", key,
                          (unsigned long long)(*kv)->n, (unsigned long long)n);
    return KILN_OK;
}

kiln_status kiln_gguf_arr_i32(const kiln_gguf *g, const char *key, int32_t *out, uint64_t n) {
    const gguf_kv *kv;
    kiln_status st = numeric_arr(g, key, out, n, &kv);
    if (st) return st;
    if (!is_integer_type(kv->elem_type))
        return kiln_error(KILN_E_FORMAT, "gguf: key '%s' is an array of %s, not of integers",
                          key, kiln_gguf_type_name(kv->elem_type));
    uint64_t es = kiln_gguf_scalar_size(kv->elem_type);
    for (uint64_t i = 0; i < n; i++) {
        bool neg;
        uint64_t m;
        load_int(kv->p + i * es, kv->elem_type, &neg, &m);
        if (neg ? m > (uint64_t)INT32_MAX + 1 : m > INT32_MAX)
            return kiln_error(KILN_E_FORMAT, "gguf: element %llu of '%s' does not fit i32",
                              (unsigned long long)i, key);
        out[i] = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    }
    return KILN_OK;
}

kiln_status kiln_gguf_arr_f32(const kiln_gguf *g, const char *key, float *out, uint64_t n) {
    const gguf_kv *kv;
    kiln_status st = numeric_arr(g, key, out, n, &kv);
    if (st) return st;
    uint64_t es = kiln_gguf_scalar_size(kv->elem_type);
    if (kv->elem_type == KILN_GGUF_FLOAT32) {
        for (uint64_t i = 0; i < n; i++) out[i] = (float)load_float(kv->p + i * 4, kv->elem_type);
        return KILN_OK;
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *p = kv->p + i * es;
        if (is_float_type(kv->elem_type)) {
            out[i] = (float)load_float(p, kv->elem_type);
        } else {
            bool neg;
            uint64_t m;
            load_int(p, kv->elem_type, &neg, &m);
            out[i] = neg ? -(float)m : (float)m;
        }
    }
    return KILN_OK;
}

/* ---- generic values ---- */

kiln_status kiln_gguf_key_value(const kiln_gguf *g, int64_t idx, kiln_gguf_value *out) {
    if (!g || !out || idx < 0 || idx >= g->n_kv)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: key index %lld out of range", (long long)idx);
    const gguf_kv *kv = &g->kv[idx];
    out->type = kv->type;
    out->elem_type = kv->type == KILN_GGUF_ARRAY ? kv->elem_type : -1;
    out->n = kv->type == KILN_GGUF_ARRAY ? kv->n : 1;
    out->p = kv->p;
    return KILN_OK;
}

kiln_status kiln_gguf_value_elem(const kiln_gguf *g, const kiln_gguf_value *arr, uint64_t i,
                                 kiln_gguf_value *out) {
    if (!g || !arr || !out || arr->type != KILN_GGUF_ARRAY)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: not an array value");
    if (i >= arr->n)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: index %llu past the %llu elements",
                          (unsigned long long)i, (unsigned long long)arr->n);
    /* A value handed out by this kiln_gguf points into its bytes; anything
     * else is a caller bug, reported rather than followed. */
    if (!arr->p || arr->p < g->base || arr->p > g->base + g->size ||
        arr->elem_type < 0 || arr->elem_type >= KILN_GGUF_TYPE_COUNT)
        return kiln_error(KILN_E_INVALID_ARG, "gguf: array value does not belong to this file");
    parser ps = {.base = g->base, .size = g->size, .pos = (uint64_t)(arr->p - g->base)};
    uint64_t es = kiln_gguf_scalar_size(arr->elem_type);
    kiln_status st;
    if (es) {
        if (i >= (g->size - ps.pos) / es)
            return kiln_error(KILN_E_INVALID_ARG, "gguf: array value exceeds the file");
        ps.pos += i * es;
    } else {
        /* Strings and nested arrays: walk (bounded by the file). */
        for (uint64_t k = 0; k < i; k++)
            if ((st = skip_value(&ps, arr->elem_type, 1))) return st;
    }
    out->type = arr->elem_type;
    out->elem_type = -1;
    out->n = 1;
    if (arr->elem_type == KILN_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if ((st = rd_u32(&ps, &et, "array type")) || (st = rd_u64(&ps, &n, "array count")))
            return st;
        out->elem_type = (int32_t)et;
        out->n = n;
    } else if (arr->elem_type == KILN_GGUF_STRING) {
        if ((st = need(&ps, 8, "string"))) return st;
    }
    out->p = g->base + ps.pos;
    return KILN_OK;
}

kiln_status kiln_gguf_value_i64(const kiln_gguf_value *v, int64_t *out) {
    if (!v || !out || !v->p) return kiln_error(KILN_E_INVALID_ARG, "gguf: NULL value");
    if (!is_integer_type(v->type))
        return kiln_error(KILN_E_FORMAT, "gguf: value of type %s is not an integer",
                          kiln_gguf_type_name(v->type));
    bool neg = false;
    uint64_t m = 0;
    load_int(v->p, v->type, &neg, &m);
    if (!neg && m > INT64_MAX)
        return kiln_error(KILN_E_FORMAT, "gguf: value %llu does not fit i64", (unsigned long long)m);
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return KILN_OK;
}

kiln_status kiln_gguf_value_f64(const kiln_gguf_value *v, double *out) {
    if (!v || !out || !v->p) return kiln_error(KILN_E_INVALID_ARG, "gguf: NULL value");
    if (is_float_type(v->type)) {
        *out = load_float(v->p, v->type);
        return KILN_OK;
    }
    if (!is_integer_type(v->type))
        return kiln_error(KILN_E_FORMAT, "gguf: value of type %s is not a number",
                          kiln_gguf_type_name(v->type));
    bool neg = false;
    uint64_t m = 0;
    load_int(v->p, v->type, &neg, &m);
    *out = neg ? -(double)m : (double)m;
    return KILN_OK;
}

kiln_status kiln_gguf_value_str(const kiln_gguf_value *v, const char **s, uint64_t *len) {
    if (!v || !s || !len || !v->p) return kiln_error(KILN_E_INVALID_ARG, "gguf: NULL value");
    if (v->type != KILN_GGUF_STRING)
        return kiln_error(KILN_E_FORMAT, "gguf: value of type %s is not a string",
                          kiln_gguf_type_name(v->type));
    *len = ld_u64(v->p);
    *s = (const char *)v->p + 8;
    return KILN_OK;
}

/* ---- tensors ---- */

int64_t kiln_gguf_n_tensors(const kiln_gguf *g) { return g ? g->n_tensors : 0; }
const kiln_gguf_tensor *kiln_gguf_tensor_at(const kiln_gguf *g, int64_t i) {
    return (g && i >= 0 && i < g->n_tensors) ? &g->tensors[i] : NULL;
}
const kiln_gguf_tensor *kiln_gguf_find_tensor(const kiln_gguf *g, const char *name) {
    if (!g) return NULL;
    int64_t i = index_find(g, &g->tensor_index, name);
    return i >= 0 ? &g->tensors[i] : NULL;
}
