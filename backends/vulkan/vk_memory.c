/*
 * vk_memory.c - device memory: a sub-allocator over VkDeviceMemory, the
 * buffers handed to the core, and each handle's transient pool.
 *
 * Chunks: memory is taken from the device in chunks (KILN_VK_CHUNK bytes,
 * or one dedicated chunk for a buffer of at least half that), each with one
 * VkBuffer spanning it; a kiln buffer is a block of a chunk (first fit,
 * neighbours merged when freed). A chunk whose blocks are all free goes
 * back to the device at once. Two kinds: device-local (weights, KV,
 * transient) and host-visible coherent (staging, the ring), the latter
 * mapped for its life. All under the shared device's mem_lock.
 *
 * Out of device memory (vkAllocateMemory) is KILN_E_OOM_DEVICE; a failed
 * call keeps nothing it allocated.
 *
 * The transient pool (one per handle): freed transient buffers are cached
 * in size-class buckets and reused best fit; bytes cached are capped
 * (oldest evicted first). Cached memory may still be read by work the
 * handle submitted, so releasing it to the device first waits for the
 * handle's work (pool_purge, cap trims); reusing it within the handle
 * needs no wait, as the handle's operations run in order.
 */
#include <string.h>

#include "vk_internal.h"

#define KILN_VK_CHUNK (256ull << 20)
#define KILN_VK_POOL_GRANULE 256u

/* ------------------------------------------------------------------------ */
/* chunks                                                                   */
/* ------------------------------------------------------------------------ */

static int find_type(const VkPhysicalDeviceMemoryProperties *mp, uint32_t bits, VkMemoryPropertyFlags want,
                     VkMemoryPropertyFlags prefer) {
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < mp->memoryTypeCount; i++) {
            VkMemoryPropertyFlags f = mp->memoryTypes[i].propertyFlags;
            if (!(bits & (1u << i)) || (f & want) != want) continue;
            if (pass == 0 && (f & prefer) != prefer) continue;
            return (int)i;
        }
    return -1;
}

static void chunk_destroy(kiln_vk_shared *sh, kiln_vk_chunk *c) {
    __atomic_fetch_add(&sh->mem_gen, 1, __ATOMIC_RELEASE); /* recorded graphs may name its VkBuffer */
    if (c->map) vkUnmapMemory(sh->device, c->mem);
    if (c->buf) vkDestroyBuffer(sh->device, c->buf, NULL);
    if (c->mem) vkFreeMemory(sh->device, c->mem, NULL);
    kiln_vk_block *b = c->blocks;
    while (b) {
        kiln_vk_block *n = b->next;
        kiln_free(b);
        b = n;
    }
    kiln_free(c);
}

static kiln_status chunk_create(kiln_vk_shared *sh, int kind, uint64_t size, bool dedicated, kiln_vk_chunk **out) {
    /* maxMemoryAllocationSize (sh->max_alloc) is advisory: drivers often
     * allocate more in one piece (a 7B model's weights are one buffer), so
     * try anyway and report the driver's answer */
    kiln_vk_chunk *c = kiln_calloc(1, sizeof *c);
    kiln_vk_block *b = kiln_calloc(1, sizeof *b);
    if (!c || !b) {
        kiln_free(c);
        kiln_free(b);
        return kiln_error(KILN_E_OOM_HOST, "vulkan: out of host memory for a memory chunk");
    }
    c->kind = kind;
    c->size = size;
    c->dedicated = dedicated;
    b->size = size;
    c->blocks = b;
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.size = size;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    VkResult r = vkCreateBuffer(sh->device, &bci, NULL, &c->buf);
    if (r != VK_SUCCESS) {
        c->buf = VK_NULL_HANDLE;
        chunk_destroy(sh, c);
        return kiln_vk_result(r, "vkCreateBuffer");
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(sh->device, c->buf, &req);
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(sh->phys, &mp);
    const VkMemoryPropertyFlags hvc = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int t = kind == KILN_VK_MEM_DEVICE ? find_type(&mp, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0)
            : kind == KILN_VK_MEM_HOST ? find_type(&mp, req.memoryTypeBits, hvc, VK_MEMORY_PROPERTY_HOST_CACHED_BIT)
                                       : find_type(&mp, req.memoryTypeBits, hvc, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (t < 0 && kind == KILN_VK_MEM_DEVICE) t = find_type(&mp, req.memoryTypeBits, 0, 0);
    if (t < 0) {
        chunk_destroy(sh, c);
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan: no suitable %s memory type",
                          kind == KILN_VK_MEM_DEVICE ? "device-local" : "host-visible");
    }
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    ai.allocationSize = req.size;
    ai.memoryTypeIndex = (uint32_t)t;
    c->device_local = (mp.memoryTypes[t].propertyFlags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) != 0;
    r = vkAllocateMemory(sh->device, &ai, NULL, &c->mem);
    if (r != VK_SUCCESS) {
        c->mem = VK_NULL_HANDLE;
        chunk_destroy(sh, c);
        if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
            return kiln_error(KILN_E_OOM_DEVICE, "vulkan: out of device memory allocating %llu bytes",
                              (unsigned long long)size);
        return kiln_vk_result(r, "vkAllocateMemory");
    }
    r = vkBindBufferMemory(sh->device, c->buf, c->mem, 0);
    /* host-visible device memory (lavapipe, unified memory) is mapped too:
     * transfers then copy directly instead of through the staging ring */
    const VkMemoryPropertyFlags hv = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    if (r == VK_SUCCESS && (mp.memoryTypes[t].propertyFlags & hv) == hv)
        r = vkMapMemory(sh->device, c->mem, 0, VK_WHOLE_SIZE, 0, (void **)&c->map);
    if (r != VK_SUCCESS) {
        c->map = NULL;
        chunk_destroy(sh, c);
        return kiln_vk_result(r, "binding or mapping device memory");
    }
    *out = c;
    return KILN_OK;
}

/* First fit in c; splits the block (needs one new node, allocated first). */
static kiln_status chunk_take(kiln_vk_chunk *c, uint64_t size, kiln_vk_block **out) {
    for (kiln_vk_block *b = c->blocks; b; b = b->next) {
        if (b->used || b->size < size) continue;
        if (b->size > size) {
            kiln_vk_block *rest = kiln_calloc(1, sizeof *rest);
            if (!rest) return kiln_error(KILN_E_OOM_HOST, "vulkan: out of host memory splitting a memory block");
            rest->offset = b->offset + size;
            rest->size = b->size - size;
            rest->prev = b;
            rest->next = b->next;
            if (b->next) b->next->prev = rest;
            b->next = rest;
            b->size = size;
        }
        b->used = true;
        c->used += size;
        *out = b;
        return KILN_OK;
    }
    *out = NULL;
    return KILN_OK;
}

static void chunk_give(kiln_vk_chunk *c, kiln_vk_block *b) {
    b->used = false;
    c->used -= b->size;
    if (b->next && !b->next->used) {
        kiln_vk_block *n = b->next;
        b->size += n->size;
        b->next = n->next;
        if (n->next) n->next->prev = b;
        kiln_free(n);
    }
    if (b->prev && !b->prev->used) {
        kiln_vk_block *p = b->prev;
        p->size += b->size;
        p->next = b->next;
        if (b->next) b->next->prev = p;
        kiln_free(b);
    }
}

kiln_status kiln_vk_mem_alloc(kiln_vk_shared *sh, int kind, uint64_t size, kiln_bk_buffer *buf) {
    const uint64_t a = sh->align;
    if (size > UINT64_MAX - a)
        return kiln_error(KILN_E_OOM_DEVICE, "vulkan: %llu bytes is too large", (unsigned long long)size);
    uint64_t need = size == 0 ? a : (size + a - 1) / a * a;
    bool dedicated = need >= KILN_VK_CHUNK / 2;
    kiln_status st = KILN_OK;
    kiln_vk_chunk *owner = NULL;
    kiln_vk_block *b = NULL;
    pthread_mutex_lock(&sh->mem_lock);
    if (!dedicated)
        for (kiln_vk_chunk *c = sh->chunks[kind]; c && !b; c = c->next) {
            if (c->dedicated || c->size - c->used < need) continue;
            if ((st = chunk_take(c, need, &b)) != KILN_OK) break;
            if (b) owner = c;
        }
    if (st == KILN_OK && !b) {
        kiln_vk_chunk *c = NULL;
        st = chunk_create(sh, kind, dedicated ? need : KILN_VK_CHUNK, dedicated, &c);
        if (st == KILN_OK && (st = chunk_take(c, need, &b)) != KILN_OK) chunk_destroy(sh, c);
        if (st == KILN_OK) {
            c->prev = NULL;
            c->next = sh->chunks[kind];
            if (c->next) c->next->prev = c;
            sh->chunks[kind] = c;
            owner = c;
        }
    }
    if (st == KILN_OK) {
        buf->chunk = owner;
        buf->blk = b;
        buf->capacity = need;
        buf->sh = sh;
    }
    pthread_mutex_unlock(&sh->mem_lock);
    return st;
}

void kiln_vk_mem_free(kiln_vk_shared *sh, kiln_bk_buffer *buf) {
    if (!buf->chunk) return;
    pthread_mutex_lock(&sh->mem_lock);
    kiln_vk_chunk *c = buf->chunk;
    chunk_give(c, buf->blk);
    if (c->used == 0) {
        if (c->prev) c->prev->next = c->next;
        else sh->chunks[c->kind] = c->next;
        if (c->next) c->next->prev = c->prev;
        chunk_destroy(sh, c);
    }
    pthread_mutex_unlock(&sh->mem_lock);
    buf->chunk = NULL;
    buf->blk = NULL;
}

void kiln_vk_mem_release_all(kiln_vk_shared *sh) {
    for (int k = 0; k < KILN_VK_MEM_KINDS; k++) {
        while (sh->chunks[k]) {
            kiln_vk_chunk *c = sh->chunks[k];
            sh->chunks[k] = c->next;
            chunk_destroy(sh, c);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* buffers                                                                  */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_buffer_new(kiln_bk_device *dev, int kind, uint64_t size, kiln_bk_buffer **out) {
    *out = NULL;
    kiln_bk_buffer *b = kiln_calloc(1, sizeof *b);
    if (!b) return kiln_error(KILN_E_OOM_HOST, "vulkan backend: out of memory for a buffer");
    kiln_status st = kiln_vk_mem_alloc(dev->sh, kind, size, b);
    if (st != KILN_OK) {
        kiln_free(b);
        return st;
    }
    kiln_vk_shared_ref(dev->sh); /* a buffer keeps its device alive */
    b->size = size;
    b->usage = kind == KILN_VK_MEM_DEVICE ? KILN_BK_BUF_WEIGHTS : KILN_BK_BUF_STAGING;
    *out = b;
    return KILN_OK;
}

static int size_class(uint64_t n) {
    int c = 0;
    while (n > 1 && c < KILN_VK_POOL_BUCKETS - 1) {
        n >>= 1;
        c++;
    }
    return c;
}

static void list_push(kiln_bk_buffer **head, kiln_bk_buffer *b) {
    b->prev = NULL;
    b->next = *head;
    if (*head) (*head)->prev = b;
    *head = b;
}

static void list_remove(kiln_bk_buffer **head, kiln_bk_buffer *b) {
    if (b->prev) b->prev->next = b->next;
    else *head = b->next;
    if (b->next) b->next->prev = b->prev;
    b->prev = b->next = NULL;
}

static void lru_append(kiln_vk_pool *pool, kiln_bk_buffer *b) {
    b->lru_next = NULL;
    b->lru_prev = pool->lru_tail;
    if (pool->lru_tail) pool->lru_tail->lru_next = b;
    else pool->lru_head = b;
    pool->lru_tail = b;
}

static void lru_remove(kiln_vk_pool *pool, kiln_bk_buffer *b) {
    if (b->lru_prev) b->lru_prev->lru_next = b->lru_next;
    else pool->lru_head = b->lru_next;
    if (b->lru_next) b->lru_next->lru_prev = b->lru_prev;
    else pool->lru_tail = b->lru_prev;
    b->lru_prev = b->lru_next = NULL;
}

static void pool_uncache(kiln_vk_pool *pool, kiln_bk_buffer *b) {
    list_remove(&pool->buckets[b->bucket], b);
    lru_remove(pool, b);
    pool->bytes_cached -= b->capacity;
}

static void buffer_release(kiln_bk_buffer *b) {
    kiln_vk_shared *sh = b->sh;
    kiln_vk_mem_free(sh, b);
    kiln_free(b);
    kiln_vk_shared_put(sh);
}

/* Frees cached blocks, oldest first, until bytes_cached <= limit, after
 * waiting for the handle's submitted work (it may still read them). */
static void pool_trim(kiln_bk_device *dev, uint64_t limit) {
    kiln_vk_pool *pool = &dev->pool;
    if (pool->bytes_cached <= limit) return;
    kiln_vk_graphs_forget(dev); /* they may reference what goes */
    (void)kiln_vk_finish(dev);
    while (pool->bytes_cached > limit && pool->lru_head) {
        kiln_bk_buffer *b = pool->lru_head;
        pool_uncache(pool, b);
        buffer_release(b);
    }
}

static kiln_bk_buffer *pool_find(kiln_vk_pool *pool, uint64_t need) {
    int c = size_class(need);
    for (int k = c; k <= c + 1 && k < KILN_VK_POOL_BUCKETS; k++) {
        kiln_bk_buffer *best = NULL;
        for (kiln_bk_buffer *b = pool->buckets[k]; b; b = b->next)
            if (b->capacity >= need && (!best || b->capacity < best->capacity)) best = b;
        if (best) return best;
    }
    return NULL;
}

static kiln_status pool_alloc(kiln_bk_device *dev, uint64_t size, kiln_bk_buffer **out) {
    kiln_vk_pool *pool = &dev->pool;
    uint64_t need = size == 0 ? KILN_VK_POOL_GRANULE
                              : (size + KILN_VK_POOL_GRANULE - 1) / KILN_VK_POOL_GRANULE * KILN_VK_POOL_GRANULE;
    if (need < size)
        return kiln_error(KILN_E_OOM_DEVICE, "vulkan pool: %llu bytes is too large", (unsigned long long)size);
    kiln_bk_buffer *b = pool_find(pool, need);
    if (b) {
        pool_uncache(pool, b);
    } else {
        kiln_status st = kiln_vk_buffer_new(dev, KILN_VK_MEM_DEVICE, need, &b);
        if (st == KILN_E_OOM_DEVICE && pool->lru_head) { /* give the cache back, retry */
            pool_trim(dev, 0);
            st = kiln_vk_buffer_new(dev, KILN_VK_MEM_DEVICE, need, &b);
        }
        if (st != KILN_OK) return st;
        b->capacity = need;
        b->bucket = size_class(need);
        pool->n_device_allocs++;
    }
    b->size = size;
    b->usage = KILN_BK_BUF_TRANSIENT;
    b->pool = pool;
    b->owner = dev;
    list_push(&pool->in_use, b);
    pool->bytes_in_use += b->capacity;
    pool->n_allocs++;
    uint64_t held = pool->bytes_in_use + pool->bytes_cached;
    if (held > pool->bytes_peak) pool->bytes_peak = held;
    *out = b;
    return KILN_OK;
}

static void pool_free(kiln_bk_buffer *b) {
    kiln_vk_pool *pool = b->pool;
    kiln_bk_device *dev = b->owner;
    list_remove(&pool->in_use, b);
    pool->bytes_in_use -= b->capacity;
    pool->n_frees++;
    if (pool->cap != 0 && b->capacity > pool->cap) {
        (void)kiln_vk_finish(dev);
        buffer_release(b);
        return;
    }
    list_push(&pool->buckets[b->bucket], b);
    lru_append(pool, b);
    pool->bytes_cached += b->capacity;
    if (pool->cap != 0) pool_trim(dev, pool->cap);
}

kiln_status kiln_vk_buffer_alloc(kiln_bk_device *dev, uint64_t size, uint32_t usage, kiln_bk_buffer **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_alloc: out is NULL");
    *out = NULL;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_alloc: device is NULL");
    if (usage > KILN_BK_BUF_STAGING)
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_alloc: unknown usage %u", usage);
    if (usage == KILN_BK_BUF_TRANSIENT) return pool_alloc(dev, size, out);
    kiln_status st = kiln_vk_buffer_new(dev, usage == KILN_BK_BUF_STAGING ? KILN_VK_MEM_HOST : KILN_VK_MEM_DEVICE,
                                        size, out);
    if (st != KILN_OK) return st;
    (*out)->usage = usage;
    return KILN_OK;
}

void kiln_vk_buffer_free(kiln_bk_buffer *buf) {
    if (!buf) return;
    if (buf->usage == KILN_BK_BUF_TRANSIENT && buf->pool) {
        pool_free(buf);
        return;
    }
    /* work submitted on any handle may still use it */
    if (buf->sh) {
        pthread_mutex_lock(&buf->sh->queue_lock);
        vkQueueWaitIdle(buf->sh->queue);
        pthread_mutex_unlock(&buf->sh->queue_lock);
    }
    buffer_release(buf);
}

/* ------------------------------------------------------------------------ */
/* the pool's public side                                                   */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_pool_stats(kiln_bk_device *dev, kiln_bk_pool_stats *stats) {
    if (!dev || !stats || stats->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: pool_stats: NULL device or stats");
    const kiln_vk_pool *pool = &dev->pool;
    kiln_bk_pool_stats s;
    memset(&s, 0, sizeof s);
    s.bytes_in_use = pool->bytes_in_use;
    s.bytes_cached = pool->bytes_cached;
    s.bytes_peak = pool->bytes_peak;
    s.cap = pool->cap;
    s.n_allocs = pool->n_allocs;
    s.n_frees = pool->n_frees;
    s.n_device_allocs = pool->n_device_allocs;
    /* the handle's own buffers outside the pool: activation scratch (device),
     * ring (host-visible) and recorded graphs' stages (host-visible, in
     * device memory where the device maps it; a recording's command buffer
     * is the driver's host memory) */
    s.bytes_internal = (dev->act ? dev->act->capacity : 0) + (dev->attn_part ? dev->attn_part->capacity : 0) +
                       (dev->wg_cnt ? dev->wg_cnt->capacity : 0);
    s.bytes_internal_host = dev->ring ? dev->ring->capacity : 0;
    for (int i = 0; i < dev->n_graphs; i++) {
        const kiln_bk_buffer *st = dev->graphs[i].stage;
        if (st && st->chunk->device_local) s.bytes_internal += st->capacity;
        else if (st) s.bytes_internal_host += st->capacity;
    }
    uint32_t caller = stats->struct_size;
    memcpy(stats, &s, caller < sizeof s ? caller : sizeof s);
    stats->struct_size = caller;
    return KILN_OK;
}

void kiln_vk_pool_set_cap(kiln_bk_device *dev, uint64_t cap) {
    if (!dev) return;
    dev->pool.cap = cap;
    if (cap != 0) pool_trim(dev, cap);
}

kiln_status kiln_vk_pool_purge(kiln_bk_device *dev) {
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: pool_purge: device is NULL");
    kiln_status st = kiln_vk_finish(dev); /* the fences of submitted work first */
    if (st != KILN_OK) return st;
    kiln_vk_graphs_forget(dev);
    pool_trim(dev, 0);
    return KILN_OK;
}

void kiln_vk_pool_close(kiln_bk_device *dev) {
    kiln_vk_pool *pool = &dev->pool;
    pool_trim(dev, 0);
    uint64_t n = 0;
    while (pool->in_use) {
        kiln_bk_buffer *b = pool->in_use;
        list_remove(&pool->in_use, b);
        b->pool = NULL;
        b->owner = NULL;
        n++;
    }
    if (n)
        kiln_log(&dev->log, KILN_LOG_WARN, "vulkan backend: device closed with %llu transient buffers still allocated",
                 (unsigned long long)n);
}
