/*
 * util.c - kiln-server's counting allocator, byte buffer and clock.
 *
 * The allocator puts a 16-byte header (the block's size) before every block
 * so that the live byte count is exact; /metrics reports it and the server
 * test checks that it returns to its baseline after many requests.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"

#define SRV_HDR 16 /* keeps the user pointer 16-byte aligned */

static atomic_uint_fast64_t live_bytes;
static atomic_uint_fast64_t live_blocks;

void *srv_malloc(size_t n) {
    if (n > SIZE_MAX - SRV_HDR) return NULL;
    unsigned char *p = malloc(n + SRV_HDR);
    if (!p) return NULL;
    memcpy(p, &n, sizeof n);
    atomic_fetch_add(&live_bytes, n);
    atomic_fetch_add(&live_blocks, 1);
    return p + SRV_HDR;
}

void *srv_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = srv_malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

void srv_free(void *p) {
    if (!p) return;
    unsigned char *b = (unsigned char *)p - SRV_HDR;
    size_t n;
    memcpy(&n, b, sizeof n);
    atomic_fetch_sub(&live_bytes, n);
    atomic_fetch_sub(&live_blocks, 1);
    free(b);
}

void *srv_realloc(void *p, size_t n) {
    if (!p) return srv_malloc(n);
    if (n > SIZE_MAX - SRV_HDR) return NULL;
    unsigned char *b = (unsigned char *)p - SRV_HDR;
    size_t old;
    memcpy(&old, b, sizeof old);
    unsigned char *nb = realloc(b, n + SRV_HDR);
    if (!nb) return NULL;
    memcpy(nb, &n, sizeof n);
    atomic_fetch_sub(&live_bytes, old);
    atomic_fetch_add(&live_bytes, n);
    return nb + SRV_HDR;
}

char *srv_strndup(const char *s, size_t n) {
    char *d = srv_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *srv_strdup(const char *s) { return srv_strndup(s, strlen(s)); }

uint64_t srv_live_bytes(void) { return atomic_load(&live_bytes); }
uint64_t srv_live_blocks(void) { return atomic_load(&live_blocks); }

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int buf_reserve(srv_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *d = srv_realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

int srv_buf_append(srv_buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int srv_buf_puts(srv_buf *b, const char *s) { return srv_buf_append(b, s, strlen(s)); }

int srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if (buf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void srv_buf_free(srv_buf *b) {
    srv_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
