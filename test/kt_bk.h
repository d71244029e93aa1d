/*
 * kt_bk.h - helpers for tests that drive a backend plugin's iface
 * directly (test_backend_attn, test_vulkan_ops): a buffer with optional
 * contents, a byte comparison of two buffers, a 2-D tensor view.
 */
#ifndef KILN_KT_BK_H
#define KILN_KT_BK_H

#include <stdlib.h>
#include <string.h>

#include "kiln_backend.h"
#include "kt.h"
#include "quant.h"

/* A transient buffer of `size` bytes on d, filled from data (or not). */
static inline kiln_bk_buffer *kt_bk_buf(const kiln_backend_iface *be, kiln_bk_device *d, uint64_t size,
                                        const void *data) {
    kiln_bk_buffer *b = NULL;
    KT_CHECK_OK(be->buffer_alloc(d, size, KILN_BK_BUF_TRANSIENT, &b));
    if (b && data) KT_CHECK_OK(be->buffer_upload(d, b, 0, data, size));
    return b;
}

/* Whether [off, off + size) of two buffers on d holds the same bytes. */
static inline int kt_bk_same(const kiln_backend_iface *be, kiln_bk_device *d, kiln_bk_buffer *a,
                             kiln_bk_buffer *b, uint64_t off, uint64_t size) {
    uint8_t *ha = malloc(size), *hb = malloc(size);
    KT_CHECK_OK(be->buffer_download(d, a, off, ha, size));
    KT_CHECK_OK(be->buffer_download(d, b, off, hb, size));
    const int same = memcmp(ha, hb, size) == 0;
    free(ha);
    free(hb);
    return same;
}

/* ne0 x ne1 of `type` at offset of b, rows packed. */
static inline kiln_bk_tensor kt_bk_tensor(kiln_bk_buffer *b, int32_t type, int64_t ne0, int64_t ne1,
                                          uint64_t offset) {
    kiln_bk_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = b;
    t.offset = offset;
    t.type = type;
    t.ne[0] = ne0;
    t.ne[1] = ne1;
    t.row_stride = kiln_type_row_size(type, ne0);
    return t;
}

#endif
