/*
 * gguf.h - a hardened reader and a writer for GGUF files (versions 2 and 3).
 *
 * The reader maps the file read-only and validates everything before it
 * returns: every malformed input gives KILN_E_FORMAT (or KILN_E_IO) with a
 * message in kiln_last_error() naming what is wrong and where (byte offset,
 * key or tensor name). Nothing in here asserts or aborts on file content.
 *
 * Strings returned by the getters point into the mapping (NOT NUL-
 * terminated in the file, so every string comes with its length); they stay
 * valid until kiln_gguf_close(). Keys and tensor names are copied at open
 * time into NUL-terminated strings owned by the kiln_gguf.
 *
 * Thread-safety: a kiln_gguf is immutable after open; getters may be
 * called from any thread.
 */
#ifndef KILN_GGUF_H
#define KILN_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* Metadata value types (pinned by the format). */
enum {
    KILN_GGUF_UINT8 = 0,
    KILN_GGUF_INT8 = 1,
    KILN_GGUF_UINT16 = 2,
    KILN_GGUF_INT16 = 3,
    KILN_GGUF_UINT32 = 4,
    KILN_GGUF_INT32 = 5,
    KILN_GGUF_FLOAT32 = 6,
    KILN_GGUF_BOOL = 7,
    KILN_GGUF_STRING = 8,
    KILN_GGUF_ARRAY = 9,
    KILN_GGUF_UINT64 = 10,
    KILN_GGUF_INT64 = 11,
    KILN_GGUF_FLOAT64 = 12,
    KILN_GGUF_TYPE_COUNT
};

#define KILN_GGUF_MAX_DIMS 4
#define KILN_GGUF_DEFAULT_ALIGNMENT 32

typedef struct kiln_gguf kiln_gguf;

typedef struct kiln_gguf_tensor {
    const char *name;        /* NUL-terminated, owned by the kiln_gguf */
    uint32_t n_dims;         /* 1..4 */
    int64_t ne[KILN_GGUF_MAX_DIMS]; /* dims; unused ones are 1 */
    int32_t type;            /* KILN_TYPE_* */
    uint64_t offset;         /* from the start of the data section */
    uint64_t size;           /* bytes */
    const void *data;        /* into the mapping (or memory image) */
} kiln_gguf_tensor;

/* Opens and validates a file. *out is NULL on failure. KILN_E_IO (open,
 * stat, mmap; with strerror), KILN_E_FORMAT (message ends "in 'path'"),
 * KILN_E_OOM_HOST, KILN_E_INVALID_ARG. Limits beyond the format: keys and
 * tensor names 1..64 KiB without NUL bytes, arrays nested at most 8 deep,
 * bools 0 or 1, general.alignment a u32 power of two, tensors inside the
 * file, aligned and not overlapping. */
kiln_status kiln_gguf_open(const char *path, kiln_gguf **out);
/* Same over caller memory (not copied; must outlive the kiln_gguf). Used by
 * the fuzzer and by tests. */
kiln_status kiln_gguf_open_memory(const void *data, size_t size, kiln_gguf **out);
void kiln_gguf_close(kiln_gguf *g); /* NULL-safe */

uint32_t kiln_gguf_version(const kiln_gguf *g);
uint32_t kiln_gguf_alignment(const kiln_gguf *g);
/* Base of the mapping and its size (for zero-copy weight buffers). */
const void *kiln_gguf_base(const kiln_gguf *g, size_t *size);
/* Start of tensor data: the end of the tensor infos rounded up to the
 * alignment. In a file without tensors it may lie past the end of the file
 * (the padding is optional there). */
uint64_t kiln_gguf_data_offset(const kiln_gguf *g);

/* ---- metadata ---- */

int64_t kiln_gguf_n_keys(const kiln_gguf *g);
/* Index of key, or -1. */
int64_t kiln_gguf_find_key(const kiln_gguf *g, const char *key);
const char *kiln_gguf_key_name(const kiln_gguf *g, int64_t idx);
int32_t kiln_gguf_key_type(const kiln_gguf *g, int64_t idx); /* KILN_GGUF_* */

/* Typed getters by key name. KILN_E_NOT_FOUND if the key is missing,
 * KILN_E_FORMAT if it has an incompatible type (message names the key).
 * Integer getters accept any integer type whose value fits the target;
 * float getters accept FLOAT32 and FLOAT64. */
kiln_status kiln_gguf_get_u32(const kiln_gguf *g, const char *key, uint32_t *out);
kiln_status kiln_gguf_get_i32(const kiln_gguf *g, const char *key, int32_t *out);
kiln_status kiln_gguf_get_u64(const kiln_gguf *g, const char *key, uint64_t *out);
kiln_status kiln_gguf_get_i64(const kiln_gguf *g, const char *key, int64_t *out);
kiln_status kiln_gguf_get_f32(const kiln_gguf *g, const char *key, float *out);
kiln_status kiln_gguf_get_f64(const kiln_gguf *g, const char *key, double *out);
kiln_status kiln_gguf_get_bool(const kiln_gguf *g, const char *key, bool *out);
kiln_status kiln_gguf_get_str(const kiln_gguf *g, const char *key, const char **s, uint64_t *len);

/* Arrays: element type and count. Nested arrays report KILN_GGUF_ARRAY. */
kiln_status kiln_gguf_get_arr(const kiln_gguf *g, const char *key, int32_t *elem_type,
                              uint64_t *n);
/* Element i of a string array. */
kiln_status kiln_gguf_arr_str(const kiln_gguf *g, const char *key, uint64_t i,
                              const char **s, uint64_t *len);
/* Copies a numeric array converted to the target type into out[0..n)
 * (n must equal the array's length). Integer arrays to i32 (values must
 * fit), integer or float arrays to f32. */
kiln_status kiln_gguf_arr_i32(const kiln_gguf *g, const char *key, int32_t *out, uint64_t n);
kiln_status kiln_gguf_arr_f32(const kiln_gguf *g, const char *key, float *out, uint64_t n);

/* Generic value walk, for dumping and nested arrays: a value reference. */
typedef struct kiln_gguf_value {
    int32_t type;            /* KILN_GGUF_* */
    int32_t elem_type;       /* for arrays */
    uint64_t n;              /* for arrays: element count */
    const uint8_t *p;        /* raw bytes of the value in the file: a scalar's
                              * bytes; a string's u64 length prefix; an
                              * array's first element */
} kiln_gguf_value;
kiln_status kiln_gguf_key_value(const kiln_gguf *g, int64_t idx, kiln_gguf_value *out);
/* Element i of an array value (nested arrays included). O(i) for string and
 * nested-array elements. */
kiln_status kiln_gguf_value_elem(const kiln_gguf *g, const kiln_gguf_value *arr, uint64_t i,
                                 kiln_gguf_value *out);
/* Scalars as numbers / strings (any numeric type to double / int64). */
kiln_status kiln_gguf_value_f64(const kiln_gguf_value *v, double *out);
kiln_status kiln_gguf_value_i64(const kiln_gguf_value *v, int64_t *out);
kiln_status kiln_gguf_value_str(const kiln_gguf_value *v, const char **s, uint64_t *len);
/* The encoded value of key idx exactly as stored after its u32 value type
 * (for arrays: u32 elem type, u64 count, elements). Points into the file;
 * the writer's kiln_gguf_copy_keys copies it verbatim. */
kiln_status kiln_gguf_key_raw(const kiln_gguf *g, int64_t idx, const void **raw, uint64_t *size);
const char *kiln_gguf_type_name(int32_t gguf_type);
/* Bytes of one element of a scalar value type; 0 for STRING, ARRAY or an
 * invalid type. Shared by the reader and the writer. */
uint64_t kiln_gguf_scalar_size(int32_t gguf_type);

/* ---- tensors ---- */

int64_t kiln_gguf_n_tensors(const kiln_gguf *g);
const kiln_gguf_tensor *kiln_gguf_tensor_at(const kiln_gguf *g, int64_t i);
/* NULL if absent. */
const kiln_gguf_tensor *kiln_gguf_find_tensor(const kiln_gguf *g, const char *name);

/* ---- writer ---- */

typedef struct kiln_gguf_writer kiln_gguf_writer;

kiln_status kiln_gguf_writer_create(kiln_gguf_writer **out); /* version 3 */
void kiln_gguf_writer_free(kiln_gguf_writer *w);
/* Setting an existing key replaces its value. Strings and data are copied. */
kiln_status kiln_gguf_set_u8(kiln_gguf_writer *w, const char *key, uint8_t v);
kiln_status kiln_gguf_set_i8(kiln_gguf_writer *w, const char *key, int8_t v);
kiln_status kiln_gguf_set_u16(kiln_gguf_writer *w, const char *key, uint16_t v);
kiln_status kiln_gguf_set_i16(kiln_gguf_writer *w, const char *key, int16_t v);
kiln_status kiln_gguf_set_u32(kiln_gguf_writer *w, const char *key, uint32_t v);
kiln_status kiln_gguf_set_i32(kiln_gguf_writer *w, const char *key, int32_t v);
kiln_status kiln_gguf_set_u64(kiln_gguf_writer *w, const char *key, uint64_t v);
kiln_status kiln_gguf_set_i64(kiln_gguf_writer *w, const char *key, int64_t v);
kiln_status kiln_gguf_set_f32(kiln_gguf_writer *w, const char *key, float v);
kiln_status kiln_gguf_set_f64(kiln_gguf_writer *w, const char *key, double v);
kiln_status kiln_gguf_set_bool(kiln_gguf_writer *w, const char *key, bool v);
kiln_status kiln_gguf_set_str(kiln_gguf_writer *w, const char *key, const char *s);
/* Array of a scalar type (not STRING/ARRAY): n elements of that type. */
kiln_status kiln_gguf_set_arr(kiln_gguf_writer *w, const char *key, int32_t elem_type,
                              const void *data, uint64_t n);
kiln_status kiln_gguf_set_arr_str(kiln_gguf_writer *w, const char *key,
                                  const char *const *strs, uint64_t n);
/* Copies every key of g (values verbatim, nested arrays included). */
kiln_status kiln_gguf_copy_keys(kiln_gguf_writer *w, const kiln_gguf *g);
/* Adds a tensor; data (size = row size * rows) is copied. */
kiln_status kiln_gguf_add_tensor(kiln_gguf_writer *w, const char *name, int32_t type,
                                 uint32_t n_dims, const int64_t *ne, const void *data,
                                 uint64_t size);
kiln_status kiln_gguf_writer_write_file(kiln_gguf_writer *w, const char *path);
/* Copies key idx of g (value verbatim), after the keys already set (or in
 * place of one of the same name). */
kiln_status kiln_gguf_copy_key(kiln_gguf_writer *w, const kiln_gguf *g, int64_t idx);

/* Streaming: a tensor declared without data (its size follows from type and
 * shape); write_file_stream asks `produce` for its bytes when the file
 * reaches it. The producer must hand exactly the tensor's size to
 * kiln_gguf_sink_write (in as many calls as it likes), else the write fails
 * with KILN_E_INTERNAL; a status it returns stops the write (and no file is
 * left behind). Tensors are produced in the order they were added, on the
 * calling thread. write_memory and write_file refuse deferred tensors. */
typedef struct kiln_gguf_sink kiln_gguf_sink;
typedef kiln_status (*kiln_gguf_tensor_producer_fn)(void *user, size_t tensor_index,
                                                    kiln_gguf_sink *sink);
kiln_status kiln_gguf_add_tensor_info(kiln_gguf_writer *w, const char *name, int32_t type,
                                      uint32_t n_dims, const int64_t *ne);
/* Appends bytes to the file; returns the write's status so far (KILN_E_IO
 * once a write failed, e.g. the disk is full). */
kiln_status kiln_gguf_sink_write(kiln_gguf_sink *sink, const void *data, size_t n);
kiln_status kiln_gguf_writer_write_file_stream(kiln_gguf_writer *w, const char *path,
                                               kiln_gguf_tensor_producer_fn produce, void *user);
/* *out is kiln_malloc'd; free with kiln_free. */
kiln_status kiln_gguf_writer_write_memory(kiln_gguf_writer *w, void **out, size_t *size);

#endif /* KILN_GGUF_H */
