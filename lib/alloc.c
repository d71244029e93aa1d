/*
 * alloc.c - the library's host allocator: a thin layer over malloc that lets
 * tests fail the n-th allocation (fault injection) so that every error path
 * can be exercised, and counts the live bytes the library holds so that the
 * lifecycle tests can prove every teardown returns them all.
 *
 * Every block carries a 16-byte header in front of the pointer handed out,
 * holding the requested size (kiln_free needs it to decrement the counter)
 * and the block's memory tag: the slot number of the registry
 * (lib/memtrack.h) that counts it, taken from the current tag scope.
 * 16 bytes keep the returned pointer aligned as malloc's own (max_align_t on
 * x86-64 and aarch64). Memory from kiln_malloc/calloc/realloc/strdup must be
 * released with kiln_free (never free()), and kiln_free takes nothing else.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "memtrack.h"

#define KILN_ALLOC_HEADER 16u

static _Atomic uint64_t fail_countdown = 0; /* 0: never fail */
static _Atomic uint64_t alloc_count = 0;
static _Atomic uint64_t live_bytes = 0;

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

uint64_t kiln_alloc_live_bytes(void) { return atomic_load(&live_bytes); }

/* Header <-> user pointer: the size as a size_t at the start, the slot as
 * a uint32_t after it. */
static void *user_ptr(void *raw, size_t size, uint32_t slot) {
    memcpy(raw, &size, sizeof size);
    memcpy((unsigned char *)raw + sizeof size, &slot, sizeof slot);
    atomic_fetch_add(&live_bytes, (uint64_t)size);
    return (unsigned char *)raw + KILN_ALLOC_HEADER;
}

static void *new_block(void *raw, size_t size) {
    return raw ? user_ptr(raw, size, kiln_mem_host_alloc(size)) : NULL;
}

static void *raw_ptr(void *p, size_t *size, uint32_t *slot) {
    unsigned char *raw = (unsigned char *)p - KILN_ALLOC_HEADER;
    memcpy(size, raw, sizeof *size);
    memcpy(slot, raw + sizeof *size, sizeof *slot);
    return raw;
}

_Static_assert(sizeof(size_t) + sizeof(uint32_t) <= KILN_ALLOC_HEADER, "allocation header too small");

void *kiln_malloc(size_t size) {
    if (should_fail()) return NULL;
    if (size > SIZE_MAX - KILN_ALLOC_HEADER) return NULL;
    return new_block(malloc(KILN_ALLOC_HEADER + (size ? size : 1)), size);
}

void *kiln_calloc(size_t n, size_t size) {
    if (should_fail()) return NULL;
    size_t total;
    if (!kiln_mul_size(n, size, &total) || total > SIZE_MAX - KILN_ALLOC_HEADER) return NULL;
    return new_block(calloc(1, KILN_ALLOC_HEADER + (total ? total : 1)), total);
}

void *kiln_realloc(void *p, size_t size) {
    if (should_fail()) return NULL;
    if (size > SIZE_MAX - KILN_ALLOC_HEADER) return NULL;
    if (!p) return new_block(malloc(KILN_ALLOC_HEADER + (size ? size : 1)), size);
    size_t old;
    uint32_t slot;
    void *raw = raw_ptr(p, &old, &slot);
    void *nraw = realloc(raw, KILN_ALLOC_HEADER + (size ? size : 1));
    if (!nraw) return NULL; /* p is untouched and still counted */
    atomic_fetch_sub(&live_bytes, (uint64_t)old);
    kiln_mem_host_resize(slot, old, size); /* a block keeps its tag */
    return user_ptr(nraw, size, slot);
}

void kiln_free(void *p) {
    if (!p) return;
    size_t size;
    uint32_t slot;
    void *raw = raw_ptr(p, &size, &slot);
    atomic_fetch_sub(&live_bytes, (uint64_t)size);
    free(raw);
    kiln_mem_host_free(slot, size);
}

void kiln_mem_retag(void *p) {
    if (!p) return;
    size_t size;
    uint32_t slot;
    unsigned char *raw = raw_ptr(p, &size, &slot);
    slot = kiln_mem_host_move(slot, size);
    memcpy(raw + sizeof size, &slot, sizeof slot);
}

char *kiln_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = kiln_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
