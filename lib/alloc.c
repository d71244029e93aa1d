/*
 * alloc.c - the library's host allocator: a thin layer over malloc that lets
 * tests fail the n-th allocation (fault injection) so that every error path
 * can be exercised.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Atomic uint64_t fail_countdown = 0; /* 0: never fail */
static _Atomic uint64_t alloc_count = 0;

static bool should_fail(void) {
    atomic_fetch_add(&alloc_count, 1);
    uint64_t c = atomic_load(&fail_countdown);
    while (c != 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &c, c - 1)) return c == 1;
    }
    return false;
}

uint64_t kiln_test_fail_alloc_after(uint64_t n) {
    atomic_store(&fail_countdown, n);
    return atomic_exchange(&alloc_count, 0);
}

void *kiln_malloc(size_t size) {
    if (should_fail()) return NULL;
    return malloc(size ? size : 1);
}

void *kiln_calloc(size_t n, size_t size) {
    if (should_fail()) return NULL;
    if (n == 0 || size == 0) return calloc(1, 1);
    return calloc(n, size);
}

void *kiln_realloc(void *p, size_t size) {
    if (should_fail()) return NULL;
    return realloc(p, size ? size : 1);
}

void kiln_free(void *p) { free(p); }

char *kiln_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = kiln_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
