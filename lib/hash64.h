/*
 * hash64.h - the 64-bit FNV-style hash kiln uses for fingerprints that are
 * not cryptographic: 8 bytes per step (xor, multiply by the FNV prime, fold
 * the high bits down), a byte at a time for the tail. Header-only so that
 * the backend plugins (which cannot link libkiln's hidden functions) use
 * the same one. The arithmetic is part of the KV file format (lib/kv_io.c
 * checksums): never change it.
 */
#ifndef KILN_HASH64_H
#define KILN_HASH64_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* h continued over the n bytes at p. */
static inline uint64_t kiln_hash64(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

#endif
