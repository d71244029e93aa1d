/*
 * internal.h - helpers shared by every file of the core and the built-in CPU
 * backend: errors, logging, allocation. Not installed.
 */
#ifndef KILN_INTERNAL_H
#define KILN_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

#if defined(__GNUC__)
#  define KILN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#  define KILN_LIKELY(x) __builtin_expect(!!(x), 1)
#  define KILN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define KILN_PRINTF(a, b)
#  define KILN_LIKELY(x) (x)
#  define KILN_UNLIKELY(x) (x)
#endif

#define KILN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KILN_MAX(a, b) ((a) > (b) ? (a) : (b))
#define KILN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- errors ------------------------------------------------------------ */

/* Records a formatted message as this thread's kiln_last_error() and returns
 * `status`, so failures read `return kiln_error(KILN_E_FORMAT, "...", ...)`. */
kiln_status kiln_error(kiln_status status, const char *fmt, ...) KILN_PRINTF(2, 3);
kiln_status kiln_verror(kiln_status status, const char *fmt, va_list ap);
/* Clears this thread's last error (done at the start of public calls). */
void kiln_error_clear(void);

/* ---- logging ------------------------------------------------------------ */

/* A sink bound to a handle: copied from params at create time. */
typedef struct kiln_logger {
    kiln_log_fn fn;   /* NULL: use the process default at log time */
    void *user;
    int32_t level;
} kiln_logger;

/* Fills lg from (fn, user, level); fn == NULL means the process default. */
void kiln_logger_init(kiln_logger *lg, kiln_log_fn fn, void *user, int32_t level);
/* A kiln_log_fn whose user pointer is a kiln_logger (for backend plugins). */
void kiln_log_sink(int32_t level, const char *msg, void *user);
/* lg may be NULL (process default). */
void kiln_log(const kiln_logger *lg, int32_t level, const char *fmt, ...) KILN_PRINTF(3, 4);

/* ---- versioned params structs ---- */

/* Writes the defaults in `full` (full_size bytes) to a caller's struct of
 * `size` bytes: never more than the caller's size, and struct_size set to
 * what was written. The body of every kiln_*_init_sized(). */
void kiln_params_emit(void *dst, uint32_t size, void *full, size_t full_size);

/* Copies a caller's versioned params struct over defaults: reads only the
 * first src->struct_size bytes. KILN_E_INVALID_ARG if struct_size is too
 * small to hold itself. `dst` must already hold the defaults. */
kiln_status kiln_params_copy(void *dst, size_t dst_size, const void *src);

/* ---- allocation --------------------------------------------------------- */

/* All host allocations of the library go through these so that tests can
 * inject failures (kiln_test_fail_alloc_after) and count live bytes. */
void *kiln_malloc(size_t size);
void *kiln_calloc(size_t n, size_t size);
void *kiln_realloc(void *p, size_t size);
void kiln_free(void *p);
char *kiln_strdup(const char *s);

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool kiln_mul_size(size_t a, size_t b, size_t *out) {
    if (b != 0 && a > SIZE_MAX / b) return false;
    *out = a * b;
    return true;
}
static inline bool kiln_add_size(size_t a, size_t b, size_t *out) {
    if (a > SIZE_MAX - b) return false;
    *out = a + b;
    return true;
}

/* Test hook (not exported from the shared library; tests link the static
 * library): the n-th kiln_malloc/calloc/realloc from now fails (n >= 1);
 * n == 0 disables. Returns how many allocations were made since the last
 * call. */
uint64_t kiln_test_fail_alloc_after(uint64_t n);

/* Bytes currently allocated through kiln_malloc/calloc/realloc/strdup and
 * not yet freed (as requested, excluding the allocator's 16-byte headers).
 * For the lifecycle tests: it returns to its baseline after every teardown. */
uint64_t kiln_alloc_live_bytes(void);

#endif /* KILN_INTERNAL_H */
