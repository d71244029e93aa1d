/*
 * memtrack.h - the memory registry behind kiln_memory_report (issue 8): every
 * host block and every device buffer the core allocates carries a tag
 * (owner handle, purpose, space, backend, device) and is counted per tag,
 * per device and per purpose with high-water marks; freeing a handle checks
 * that nothing is still tagged to it (the leak guard).
 *
 * Host blocks: kiln_malloc & co (lib/alloc.c) ask kiln_mem_host_alloc() for
 * the tag of the current *scope* and keep its slot number in their header,
 * so no call site changes. A scope is a stack variable opened with
 * KILN_MEM_SCOPE(owner, purpose) in an API entry point (model load, context
 * create, decode, suspend, ...); it names the owning handle (NULL: the
 * enclosing scope's) and the purpose (KILN_MEM_INHERIT: the enclosing
 * scope's) and closes itself when the function returns (GNU cleanup
 * attribute, gcc and clang). A block allocated outside any scope belongs to
 * the process (owner kind PROCESS, purpose OTHER). realloc keeps a block's
 * tag. Declare a scope before any `goto` that jumps past it.
 *
 * Device buffers: the core (lib/) allocates and free them only through
 * kiln_mem_buffer_alloc / _wrap_host / _free and open device handles through
 * kiln_mem_device_open / _close. A buffer belongs to the owner of the
 * device handle it was allocated on; the host blocks a backend allocates
 * inside the call (the CPU backend's buffers are kiln_malloc'd) get the same
 * owner and purpose. TRANSIENT (pool) buffers are tracked for the leak
 * guard but not reported one by one: the report shows each handle's pool
 * from the backend's own pool_stats, snapshotted by the owning thread with
 * kiln_mem_pool_snapshot() (the report may run on any thread, and a
 * backend's pool is not thread-safe).
 *
 * Thread-safety: everything here is thread-safe. The registry lock is a
 * leaf: no callback, log or backend call runs while it is held (the pool
 * snapshot calls the backend before taking it).
 *
 * Cost: a host allocation does a few uncontended atomic adds on its slot,
 * its device total and its purpose total; the lock is taken only the first
 * time a scope allocates and for device buffers. The registry's own memory
 * comes from plain malloc, is not counted, and failing to get it never
 * fails the caller: the allocation is then counted under the process.
 */
#ifndef KILN_MEMTRACK_H
#define KILN_MEMTRACK_H

#include "internal.h"
#include "kiln_backend.h"

#define KILN_MEM_INHERIT 0xffu /* scope purpose: the enclosing scope's */

typedef struct kiln_mem_scope {
    struct kiln_mem_scope *parent;
    const void *owner;   /* owner handle, NULL: inherit */
    uint32_t purpose;    /* KILN_MEM_*, KILN_MEM_INHERIT */
    uint32_t slot;       /* host slot, 0 until the first allocation */
    bool dead;           /* its owner was closed inside the scope */
} kiln_mem_scope;

void kiln_mem_scope_push(kiln_mem_scope *s, const void *owner, uint32_t purpose);
void kiln_mem_scope_pop(kiln_mem_scope *s);

#define KILN_MEM_CAT2(a, b) a##b
#define KILN_MEM_CAT(a, b) KILN_MEM_CAT2(a, b)
/* Opens a scope until the end of the enclosing block. */
#define KILN_MEM_SCOPE(owner, purpose)                                                        \
    kiln_mem_scope KILN_MEM_CAT(kiln_mem_scope_, __LINE__)                                    \
        __attribute__((cleanup(kiln_mem_scope_pop))) = {0};                                   \
    kiln_mem_scope_push(&KILN_MEM_CAT(kiln_mem_scope_, __LINE__), (owner), (purpose))

/* ---- owners (handles) ---- */

/* Registers a handle as an owner (kind KILN_MEM_OWNER_*) and moves its own
 * block (handle must be a kiln_malloc'd block) under it. label: a short
 * description for the report (copied; may be NULL). Never fails: without
 * memory for the record the handle's memory counts under the process. */
void kiln_mem_owner_open(uint32_t kind, void *handle, const char *label);
/* Called after the handle freed everything it owns: whatever is still
 * tagged to it is a leak, logged (KILN_DEBUG builds or KILN_LEAK_GUARD=1)
 * with its tag and allocation site and counted (kiln_memory_leak_count).
 * Unknown handles are ignored. */
void kiln_mem_owner_close(const void *handle);

/* ---- host blocks (lib/alloc.c) ---- */

/* Counts a new block of `size` bytes under the current scope; returns the
 * slot to keep in the block's header. */
uint32_t kiln_mem_host_alloc(size_t size);
/* A block of slot `slot` grew or shrank from old_size to new_size. */
void kiln_mem_host_resize(uint32_t slot, size_t old_size, size_t new_size);
/* A block of slot `slot` was freed. */
void kiln_mem_host_free(uint32_t slot, size_t size);
/* Moves a live kiln_malloc'd block to the current scope's slot
 * (lib/alloc.c, which owns the header; it calls kiln_mem_host_move). */
void kiln_mem_retag(void *p);
uint32_t kiln_mem_host_move(uint32_t old_slot, size_t size);

/* ---- device handles and buffers ---- */

kiln_status kiln_mem_device_open(const kiln_backend_iface *bk, int32_t index,
                                 const kiln_bk_open_params *params, const void *owner,
                                 kiln_bk_device **out);
void kiln_mem_device_close(const kiln_backend_iface *bk, kiln_bk_device *dev);
kiln_status kiln_mem_buffer_alloc_at(const kiln_backend_iface *bk, kiln_bk_device *dev, uint64_t size,
                                     uint32_t usage, uint32_t purpose, kiln_bk_buffer **out,
                                     const char *file, int line);
kiln_status kiln_mem_buffer_wrap_host_at(const kiln_backend_iface *bk, kiln_bk_device *dev, void *ptr,
                                         uint64_t size, uint32_t purpose, kiln_bk_buffer **out,
                                         const char *file, int line);
/* NULL-safe, like the backend's buffer_free. */
void kiln_mem_buffer_free(const kiln_backend_iface *bk, kiln_bk_buffer *buf);
#define kiln_mem_buffer_alloc(bk, dev, size, usage, purpose, out) \
    kiln_mem_buffer_alloc_at(bk, dev, size, usage, purpose, out, __FILE__, __LINE__)
#define kiln_mem_buffer_wrap_host(bk, dev, ptr, size, purpose, out) \
    kiln_mem_buffer_wrap_host_at(bk, dev, ptr, size, purpose, out, __FILE__, __LINE__)

/* Records the handle's pool_stats for the report. Call on the thread that
 * uses the handle (after a decode, purge, cap change, suspend). */
void kiln_mem_pool_snapshot(const kiln_backend_iface *bk, kiln_bk_device *dev);

/* ---- for the report (lib/memreport.c) and tests ---- */

/* Copies up to `cap` rows of `view` (KILN_MEMORY_BY_*) into rows[] (and
 * each row's owner label into labels[], which may be NULL) under the
 * registry lock; returns the number of rows there are. Host rows of the
 * BY_OWNER view sum exactly to kiln_alloc_live_bytes() when no other
 * thread allocates meanwhile. */
size_t kiln_mem_rows(uint32_t view, kiln_memory_entry *rows, char (*labels)[48], size_t cap);
/* Leaks counted since the last reset (test hook). */
void kiln_mem_test_reset_leaks(void);

#endif
