/*
 * memtrack.c - the memory registry: tags, counters, owners, device buffer
 * records, the leak guard and the timeline callback (see memtrack.h).
 *
 * Counters live in *slots*. A row slot is one (owner, space, backend,
 * device, purpose); each row slot also feeds two aggregate slots, the
 * total of its space and device and the total of its purpose there, so
 * the per-device and per-purpose high-water marks are exact (a sum of the
 * rows' peaks would overstate them). Slots sit in chunks that never move
 * (a block's header holds a slot number that is read without the lock);
 * chunk 0 is static and holds the slots the host fallback needs, so a host
 * allocation always finds a slot even when the registry cannot grow.
 *
 * A row slot belongs to its owner's list. When the owner is closed its
 * empty slots are recycled at once; slots still holding something are
 * leaks: they stay (flagged OWNER_FREED in the report) until their last
 * block is freed.
 *
 * Device buffers have no header, so the core's buffer wrappers keep a
 * record per buffer (slot, size, allocation site) in an open-addressing
 * table keyed by the buffer's address.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memtrack.h"

#define SLOT_CHUNK 256u
#define MAX_CHUNKS 4096u /* a million slots */

enum { SLOT_ROW = 0, SLOT_TRANSIENT, SLOT_AGG_DEVICE, SLOT_AGG_PURPOSE };

typedef struct mem_owner mem_owner;

typedef struct mem_slot {
    _Atomic uint64_t bytes, count, peak;
    mem_owner *owner;           /* NULL: the process (or an aggregate) */
    uint32_t kind, space, purpose;
    int32_t device;
    char backend[16];
    uint32_t agg_device, agg_purpose; /* 0 for aggregates and transient slots */
    uint32_t next;              /* owner's / global list, or the free list */
    _Atomic(const char *) file; /* last allocation site (device buffers) */
    _Atomic int line;
    _Atomic bool orphan;        /* its owner was closed while it held blocks */
    bool used;
} mem_slot;

struct mem_owner {
    const void *handle;
    uint32_t kind;
    uint64_t serial;
    char label[48];
    _Atomic bool closed;
    uint32_t slots;             /* head of its slot list */
    uint32_t n_slots;
    mem_owner *next;            /* open owners */
};

typedef struct mem_dev {
    kiln_bk_device *dev;
    const kiln_backend_iface *bk;
    int32_t index;
    mem_owner *owner;
    kiln_bk_pool_stats pool;
    bool have_pool;
    struct mem_dev *next;
} mem_dev;

typedef struct buf_rec {
    const void *buf;            /* NULL: empty */
    uint32_t slot;
    uint64_t size;
    const char *file;
    int line;
} buf_rec;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static _Atomic bool reg_ready;
static bool guard_logs;

static mem_slot chunk0[SLOT_CHUNK];
static mem_slot *chunks[MAX_CHUNKS] = {chunk0};
static uint32_t n_slots_made;   /* slot numbers handed out so far (high water) */
static uint32_t free_slots;     /* free list */
static uint32_t global_slots;   /* process rows and aggregates */
static mem_owner *owners;
static uint64_t next_serial;
static mem_dev *devs;
static buf_rec *bufs;
static size_t bufs_cap, bufs_n;
static _Atomic uint64_t leaks_found;

/* slots made at init (chunk 0, cannot fail) */
enum { S_NONE = 0, S_HOST_TOTAL = 1, S_HOST_OTHER_TOTAL = 2, S_HOST_PROCESS = 3, S_FIRST_FREE = 4 };

static _Thread_local kiln_mem_scope *tls_scope;
static _Thread_local bool tls_in_callback;

static _Atomic(kiln_memory_fn) cb_fn;
static void *cb_user;
static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t cb_seq;

static inline mem_slot *slot_at(uint32_t i) { return &chunks[i / SLOT_CHUNK][i % SLOT_CHUNK]; }

static void init_slot(uint32_t i, mem_owner *owner, uint32_t kind, uint32_t space, const char *backend,
                      int32_t device, uint32_t purpose) {
    mem_slot *s = slot_at(i);
    atomic_store(&s->bytes, 0);
    atomic_store(&s->count, 0);
    atomic_store(&s->peak, 0);
    s->owner = owner;
    s->kind = kind;
    s->space = space;
    s->purpose = purpose;
    s->device = device;
    snprintf(s->backend, sizeof s->backend, "%s", backend ? backend : "");
    s->agg_device = s->agg_purpose = 0;
    atomic_store(&s->file, NULL);
    atomic_store(&s->line, 0);
    atomic_store(&s->orphan, false);
    s->used = true;
}

static void reg_init(void) {
    init_slot(S_HOST_TOTAL, NULL, SLOT_AGG_DEVICE, KILN_MEM_HOST, "", -1, KILN_MEM_ALL);
    init_slot(S_HOST_OTHER_TOTAL, NULL, SLOT_AGG_PURPOSE, KILN_MEM_HOST, "", -1, KILN_MEM_OTHER);
    init_slot(S_HOST_PROCESS, NULL, SLOT_ROW, KILN_MEM_HOST, "", -1, KILN_MEM_OTHER);
    slot_at(S_HOST_PROCESS)->agg_device = S_HOST_TOTAL;
    slot_at(S_HOST_PROCESS)->agg_purpose = S_HOST_OTHER_TOTAL;
    slot_at(S_HOST_TOTAL)->next = S_HOST_OTHER_TOTAL;
    slot_at(S_HOST_OTHER_TOTAL)->next = S_HOST_PROCESS;
    slot_at(S_HOST_PROCESS)->next = 0;
    global_slots = S_HOST_TOTAL;
    n_slots_made = S_FIRST_FREE;
#ifdef KILN_DEBUG
    guard_logs = true;
#else
    const char *e = getenv("KILN_LEAK_GUARD");
    guard_logs = e && strcmp(e, "1") == 0;
#endif
    atomic_store_explicit(&reg_ready, true, memory_order_release);
}

static inline void ensure_init(void) {
    if (KILN_UNLIKELY(!atomic_load_explicit(&reg_ready, memory_order_acquire))) pthread_once(&reg_once, reg_init);
}

/* ---- counters ---- */

static inline void slot_add(uint32_t i, uint64_t size, uint64_t n) {
    mem_slot *s = slot_at(i);
    uint64_t now = atomic_fetch_add_explicit(&s->bytes, size, memory_order_relaxed) + size;
    if (n) atomic_fetch_add_explicit(&s->count, n, memory_order_relaxed);
    uint64_t p = atomic_load_explicit(&s->peak, memory_order_relaxed);
    while (now > p && !atomic_compare_exchange_weak_explicit(&s->peak, &p, now, memory_order_relaxed,
                                                             memory_order_relaxed)) {
    }
}

static inline void slot_sub(uint32_t i, uint64_t size, uint64_t n) {
    mem_slot *s = slot_at(i);
    atomic_fetch_sub_explicit(&s->bytes, size, memory_order_relaxed);
    if (n) atomic_fetch_sub_explicit(&s->count, n, memory_order_relaxed);
}

static void account(uint32_t i, uint64_t size, int sign, uint64_t n) {
    if (i == S_NONE) return;
    const mem_slot *s = slot_at(i);
    uint32_t idx[3] = {i, s->agg_device, s->agg_purpose};
    for (int k = 0; k < 3; k++) {
        if (!idx[k]) continue;
        if (sign > 0) slot_add(idx[k], size, n);
        else slot_sub(idx[k], size, n);
    }
}

/* ---- the timeline callback ---- */

static void emit(uint32_t i, uint64_t size, int32_t sign, const char *file, int line) {
    if (KILN_LIKELY(atomic_load_explicit(&cb_fn, memory_order_relaxed) == NULL) || tls_in_callback || i == S_NONE)
        return;
    pthread_mutex_lock(&cb_lock);
    kiln_memory_fn fn = atomic_load(&cb_fn);
    if (fn) {
        const mem_slot *s = slot_at(i);
        kiln_memory_event ev;
        memset(&ev, 0, sizeof ev);
        ev.struct_size = sizeof ev;
        ev.sign = sign;
        ev.seq = ++cb_seq;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ev.time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        ev.size = size;
        ev.bytes_live = s->agg_device ? atomic_load(&slot_at(s->agg_device)->bytes) : 0;
        ev.space = s->space;
        memcpy(ev.backend, s->backend, sizeof ev.backend);
        ev.device = s->device;
        ev.owner_kind = s->owner ? s->owner->kind : KILN_MEM_OWNER_PROCESS;
        ev.owner_id = s->owner ? s->owner->serial : 0;
        ev.purpose = s->purpose;
        ev.file = file;
        ev.line = line;
        tls_in_callback = true;
        fn(&ev, cb_user);
        tls_in_callback = false;
    }
    pthread_mutex_unlock(&cb_lock);
}

void kiln_memory_set_callback(kiln_memory_fn fn, void *user) {
    ensure_init();
    if (tls_in_callback) { /* the lock is ours already */
        cb_user = user;
        atomic_store(&cb_fn, fn);
        return;
    }
    pthread_mutex_lock(&cb_lock);
    cb_user = user;
    atomic_store(&cb_fn, fn);
    pthread_mutex_unlock(&cb_lock);
}

/* ---- slots (lock held) ---- */

static uint32_t slot_new(void) {
    if (free_slots) {
        uint32_t i = free_slots;
        free_slots = slot_at(i)->next;
        return i;
    }
    uint32_t i = n_slots_made;
    if (i / SLOT_CHUNK >= MAX_CHUNKS) return S_NONE;
    if (!chunks[i / SLOT_CHUNK]) {
        mem_slot *c = calloc(SLOT_CHUNK, sizeof *c);
        if (!c) return S_NONE;
        chunks[i / SLOT_CHUNK] = c;
    }
    n_slots_made++;
    return i;
}

static bool slot_matches(const mem_slot *s, uint32_t kind, uint32_t space, const char *backend, int32_t device,
                         uint32_t purpose) {
    return s->kind == kind && s->space == space && s->device == device && s->purpose == purpose &&
           strncmp(s->backend, backend, sizeof s->backend) == 0;
}

/* The slot of (owner, kind, space, backend, device, purpose), made if new;
 * S_NONE when the registry cannot grow. */
static uint32_t slot_get(mem_owner *o, uint32_t kind, uint32_t space, const char *backend, int32_t device,
                         uint32_t purpose) {
    if (!backend) backend = "";
    uint32_t *head = o ? &o->slots : &global_slots;
    for (uint32_t i = *head; i; i = slot_at(i)->next)
        if (slot_matches(slot_at(i), kind, space, backend, device, purpose)) return i;
    uint32_t agg_d = 0, agg_p = 0;
    if (kind == SLOT_ROW) {
        agg_d = slot_get(NULL, SLOT_AGG_DEVICE, space, backend, device, KILN_MEM_ALL);
        agg_p = slot_get(NULL, SLOT_AGG_PURPOSE, space, backend, device, purpose);
        if (!agg_d || !agg_p) return S_NONE;
    }
    uint32_t i = slot_new();
    if (!i) return S_NONE;
    init_slot(i, o, kind, space, backend, device, purpose);
    slot_at(i)->agg_device = agg_d;
    slot_at(i)->agg_purpose = agg_p;
    slot_at(i)->next = *head;
    *head = i;
    if (o) o->n_slots++;
    return i;
}

static mem_owner *owner_find(const void *handle) {
    for (mem_owner *o = owners; o; o = o->next)
        if (o->handle == handle) return o;
    return NULL;
}

/* Unlinks an owner's slot that holds nothing and recycles it (and the
 * owner record when it was closed and this was its last slot). */
static void slot_reclaim(mem_owner *o, uint32_t i) {
    for (uint32_t *p = &o->slots; *p; p = &slot_at(*p)->next) {
        if (*p == i) {
            *p = slot_at(i)->next;
            break;
        }
    }
    slot_at(i)->used = false;
    slot_at(i)->owner = NULL;
    atomic_store(&slot_at(i)->orphan, false);
    slot_at(i)->next = free_slots;
    free_slots = i;
    o->n_slots--;
}

/* After the last block of a leaked slot (its owner closed) is freed. */
static void maybe_reclaim(uint32_t i) {
    mem_slot *s = slot_at(i);
    if (!atomic_load(&s->orphan) || atomic_load(&s->count) != 0) return;
    mem_owner *gone = NULL;
    pthread_mutex_lock(&reg_lock);
    mem_owner *o = s->owner;
    if (s->used && o && atomic_load(&s->orphan) && atomic_load(&s->count) == 0 && atomic_load(&s->bytes) == 0) {
        slot_reclaim(o, i);
        if (o->n_slots == 0) gone = o;
    }
    pthread_mutex_unlock(&reg_lock);
    free(gone); /* closed and unlisted: nothing else can reach it */
}

/* ---- scopes and host blocks ---- */

void kiln_mem_scope_push(kiln_mem_scope *s, const void *owner, uint32_t purpose) {
    s->parent = tls_scope;
    s->owner = owner;
    s->purpose = purpose;
    s->slot = 0;
    s->dead = false;
    tls_scope = s;
}

void kiln_mem_scope_pop(kiln_mem_scope *s) {
    if (tls_scope == s) tls_scope = s->parent;
}

static uint32_t scope_slot(kiln_mem_scope *sc) {
    const void *owner = NULL;
    bool dead = false;
    uint32_t purpose = KILN_MEM_INHERIT;
    for (kiln_mem_scope *p = sc; p; p = p->parent) {
        if (!owner && !dead) {
            if (p->dead) dead = true;
            else owner = p->owner;
        }
        if (purpose == KILN_MEM_INHERIT) purpose = p->purpose;
    }
    if (purpose == KILN_MEM_INHERIT) purpose = KILN_MEM_OTHER;
    pthread_mutex_lock(&reg_lock);
    mem_owner *o = owner ? owner_find(owner) : NULL;
    uint32_t i = slot_get(o, SLOT_ROW, KILN_MEM_HOST, "", -1, purpose);
    pthread_mutex_unlock(&reg_lock);
    return i ? i : S_HOST_PROCESS;
}

static uint32_t current_host_slot(void) {
    ensure_init();
    kiln_mem_scope *sc = tls_scope;
    if (!sc) return S_HOST_PROCESS;
    if (!sc->slot) sc->slot = scope_slot(sc);
    return sc->slot;
}

uint32_t kiln_mem_host_alloc(size_t size) {
    uint32_t i = current_host_slot();
    account(i, size, +1, 1);
    emit(i, size, +1, NULL, 0);
    return i;
}

void kiln_mem_host_resize(uint32_t slot, size_t old_size, size_t new_size) {
    if (slot == S_NONE) return;
    if (new_size >= old_size) account(slot, new_size - old_size, +1, 0);
    else account(slot, old_size - new_size, -1, 0);
    emit(slot, old_size, -1, NULL, 0);
    emit(slot, new_size, +1, NULL, 0);
}

void kiln_mem_host_free(uint32_t slot, size_t size) {
    if (slot == S_NONE) return;
    account(slot, size, -1, 1);
    emit(slot, size, -1, NULL, 0);
    maybe_reclaim(slot);
}

uint32_t kiln_mem_host_move(uint32_t old_slot, size_t size) {
    uint32_t i = current_host_slot();
    if (i == old_slot) return i;
    kiln_mem_host_free(old_slot, size);
    return kiln_mem_host_alloc(size);
}

/* ---- owners ---- */

void kiln_mem_owner_open(uint32_t kind, void *handle, const char *label) {
    ensure_init();
    if (!handle) return;
    mem_owner *o = calloc(1, sizeof *o);
    if (!o) return; /* its memory counts under the process */
    o->handle = handle;
    o->kind = kind;
    snprintf(o->label, sizeof o->label, "%s", label ? label : "");
    pthread_mutex_lock(&reg_lock);
    o->serial = ++next_serial;
    o->next = owners;
    owners = o;
    pthread_mutex_unlock(&reg_lock);
    KILN_MEM_SCOPE(handle, KILN_MEM_OTHER);
    kiln_mem_retag(handle);
}

typedef struct leak_line {
    char text[320];
} leak_line;

#define MAX_LEAK_LINES 16

static const char *space_name(const mem_slot *s, char *buf, size_t n) {
    if (s->space == KILN_MEM_HOST) snprintf(buf, n, "host");
    else snprintf(buf, n, "%s:%d", s->backend, (int)s->device);
    return buf;
}

void kiln_mem_owner_close(const void *handle) {
    if (!handle || !atomic_load_explicit(&reg_ready, memory_order_acquire)) return;
    leak_line lines[MAX_LEAK_LINES];
    int n_lines = 0;
    uint64_t n_leaks = 0;
    pthread_mutex_lock(&reg_lock);
    mem_owner *o = NULL;
    for (mem_owner **p = &owners; *p; p = &(*p)->next) {
        if ((*p)->handle == handle) {
            o = *p;
            *p = o->next;
            break;
        }
    }
    if (!o) {
        pthread_mutex_unlock(&reg_lock);
        return;
    }
    atomic_store(&o->closed, true);
    /* scopes of this thread that name it or cached one of its slots */
    for (kiln_mem_scope *sc = tls_scope; sc; sc = sc->parent) {
        if (sc->owner == handle) sc->dead = true;
        if (sc->slot && slot_at(sc->slot)->owner == o) sc->slot = 0;
    }
    const char *kind = kiln_memory_owner_str(o->kind);
    for (mem_dev *d = devs; d; d = d->next) {
        if (d->owner != o) continue;
        n_leaks++;
        if (n_lines < MAX_LEAK_LINES)
            snprintf(lines[n_lines++].text, sizeof lines[0].text,
                     "leak guard: %s #%llu (%s) freed with a %s device handle on device %d still open", kind,
                     (unsigned long long)o->serial, o->label, d->bk->name, (int)d->index);
        d->owner = NULL;
    }
    uint32_t i = o->slots;
    while (i) {
        mem_slot *s = slot_at(i);
        uint32_t next = s->next;
        uint64_t count = atomic_load(&s->count), bytes = atomic_load(&s->bytes);
        if (count == 0 && bytes == 0) {
            slot_reclaim(o, i);
        } else {
            atomic_store(&s->orphan, true);
            n_leaks += count ? count : 1;
            char where[40], site[200] = "";
            const char *file = atomic_load(&s->file);
            if (file) snprintf(site, sizeof site, " (last allocated at %s:%d)", file, atomic_load(&s->line));
            if (n_lines < MAX_LEAK_LINES)
                snprintf(lines[n_lines++].text, sizeof lines[0].text,
                         "leak guard: %s #%llu (%s) freed with %llu bytes in %llu %s still tagged to it: %s on %s%s",
                         kind, (unsigned long long)o->serial, o->label, (unsigned long long)bytes,
                         (unsigned long long)count, s->kind == SLOT_TRANSIENT ? "pool buffers" : "allocations",
                         kiln_memory_purpose_str(s->purpose), space_name(s, where, sizeof where), site);
            /* each leaked device buffer with its own site */
            for (size_t b = 0; b < bufs_cap && bufs; b++) {
                if (!bufs[b].buf || bufs[b].slot != i || n_lines >= MAX_LEAK_LINES) continue;
                snprintf(lines[n_lines++].text, sizeof lines[0].text,
                         "leak guard:   buffer %p of %llu bytes allocated at %s:%d", bufs[b].buf,
                         (unsigned long long)bufs[b].size, bufs[b].file ? bufs[b].file : "?", bufs[b].line);
            }
        }
        i = next;
    }
    if (o->n_slots == 0) free(o); /* else its leaked slots keep it for the report */
    pthread_mutex_unlock(&reg_lock);
    if (n_leaks) {
        atomic_fetch_add(&leaks_found, n_leaks);
        if (guard_logs)
            for (int k = 0; k < n_lines; k++) kiln_log(NULL, KILN_LOG_ERROR, "%s", lines[k].text);
    }
}

uint64_t kiln_memory_leak_count(void) { return atomic_load(&leaks_found); }
void kiln_mem_test_reset_leaks(void) { atomic_store(&leaks_found, 0); }

/* ---- device handles and buffers ---- */

static mem_dev *dev_find(const kiln_bk_device *dev) {
    for (mem_dev *d = devs; d; d = d->next)
        if (d->dev == dev) return d;
    return NULL;
}

kiln_status kiln_mem_device_open(const kiln_backend_iface *bk, int32_t index, const kiln_bk_open_params *params,
                                 const void *owner, kiln_bk_device **out) {
    ensure_init();
    kiln_status st;
    {
        KILN_MEM_SCOPE(owner, KILN_MEM_DEVICE_STATE);
        st = bk->device_open(index, params, out);
    }
    if (st) return st;
    mem_dev *d = calloc(1, sizeof *d);
    if (!d) return KILN_OK; /* untracked: its buffers count under the process */
    d->dev = *out;
    d->bk = bk;
    d->index = index;
    pthread_mutex_lock(&reg_lock);
    d->owner = owner ? owner_find(owner) : NULL;
    d->next = devs;
    devs = d;
    pthread_mutex_unlock(&reg_lock);
    return KILN_OK;
}

void kiln_mem_device_close(const kiln_backend_iface *bk, kiln_bk_device *dev) {
    if (!dev) return;
    mem_dev *d = NULL;
    pthread_mutex_lock(&reg_lock);
    for (mem_dev **p = &devs; *p; p = &(*p)->next) {
        if ((*p)->dev == dev) {
            d = *p;
            *p = d->next;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    free(d);
    bk->device_close(dev);
}

void kiln_mem_pool_snapshot(const kiln_backend_iface *bk, kiln_bk_device *dev) {
    if (!dev) return;
    kiln_bk_pool_stats ps;
    memset(&ps, 0, sizeof ps);
    ps.struct_size = sizeof ps;
    if (bk->pool_stats(dev, &ps) != KILN_OK) return;
    pthread_mutex_lock(&reg_lock);
    mem_dev *d = dev_find(dev);
    if (d) {
        d->pool = ps;
        d->have_pool = true;
    }
    pthread_mutex_unlock(&reg_lock);
}

static size_t buf_hash(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static bool bufs_grow(void) {
    size_t ncap = bufs_cap ? bufs_cap * 2 : 256;
    buf_rec *nb = calloc(ncap, sizeof *nb);
    if (!nb) return false;
    for (size_t i = 0; i < bufs_cap; i++) {
        if (!bufs[i].buf) continue;
        size_t h = buf_hash(bufs[i].buf, ncap);
        while (nb[h].buf) h = (h + 1) & (ncap - 1);
        nb[h] = bufs[i];
    }
    free(bufs);
    bufs = nb;
    bufs_cap = ncap;
    return true;
}

static bool bufs_insert(const buf_rec *r) {
    if ((bufs_n + 1) * 2 > bufs_cap && !bufs_grow()) return false;
    size_t h = buf_hash(r->buf, bufs_cap);
    while (bufs[h].buf) h = (h + 1) & (bufs_cap - 1);
    bufs[h] = *r;
    bufs_n++;
    return true;
}

static bool bufs_remove(const void *buf, buf_rec *out) {
    if (!bufs_cap) return false;
    size_t h = buf_hash(buf, bufs_cap);
    while (bufs[h].buf && bufs[h].buf != buf) h = (h + 1) & (bufs_cap - 1);
    if (!bufs[h].buf) return false;
    *out = bufs[h];
    /* backward-shift deletion keeps every probe chain intact */
    size_t hole = h, j = h;
    for (;;) {
        j = (j + 1) & (bufs_cap - 1);
        if (!bufs[j].buf) break;
        size_t home = buf_hash(bufs[j].buf, bufs_cap);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            bufs[hole] = bufs[j];
            hole = j;
        }
    }
    bufs[hole].buf = NULL;
    bufs_n--;
    return true;
}

static void track_buffer(const kiln_backend_iface *bk, kiln_bk_device *dev, kiln_bk_buffer *buf, uint64_t size,
                         uint32_t usage, uint32_t purpose, const char *file, int line) {
    bool transient = usage == KILN_BK_BUF_TRANSIENT;
    pthread_mutex_lock(&reg_lock);
    mem_dev *d = dev_find(dev);
    uint32_t i = slot_get(d ? d->owner : NULL, transient ? SLOT_TRANSIENT : SLOT_ROW, KILN_MEM_DEVICE, bk->name,
                          d ? d->index : -1, purpose);
    buf_rec r = {buf, i, size, file, line};
    if (i && !bufs_insert(&r)) i = S_NONE;
    pthread_mutex_unlock(&reg_lock);
    if (!i) return; /* untracked (the registry could not grow) */
    atomic_store(&slot_at(i)->file, file);
    atomic_store(&slot_at(i)->line, line);
    account(i, size, +1, 1);
    if (!transient) emit(i, size, +1, file, line);
}

/* The owner handle a device handle's buffers belong to (for the scope
 * around the backend call, so its host blocks get the same owner). */
static const void *dev_owner_handle(const kiln_bk_device *dev) {
    pthread_mutex_lock(&reg_lock);
    mem_dev *d = dev_find(dev);
    const void *h = d && d->owner ? d->owner->handle : NULL;
    pthread_mutex_unlock(&reg_lock);
    return h;
}

kiln_status kiln_mem_buffer_alloc_at(const kiln_backend_iface *bk, kiln_bk_device *dev, uint64_t size,
                                     uint32_t usage, uint32_t purpose, kiln_bk_buffer **out, const char *file,
                                     int line) {
    ensure_init();
    kiln_status st;
    {
        KILN_MEM_SCOPE(dev_owner_handle(dev), purpose);
        st = bk->buffer_alloc(dev, size, usage, out);
    }
    if (st == KILN_OK) track_buffer(bk, dev, *out, size, usage, purpose, file, line);
    return st;
}

kiln_status kiln_mem_buffer_wrap_host_at(const kiln_backend_iface *bk, kiln_bk_device *dev, void *ptr,
                                         uint64_t size, uint32_t purpose, kiln_bk_buffer **out,
                                         const char *file, int line) {
    ensure_init();
    kiln_status st;
    {
        KILN_MEM_SCOPE(dev_owner_handle(dev), purpose);
        st = bk->buffer_wrap_host(dev, ptr, size, out);
    }
    if (st == KILN_OK) track_buffer(bk, dev, *out, size, KILN_BK_BUF_WEIGHTS, purpose, file, line);
    return st;
}

void kiln_mem_buffer_free(const kiln_backend_iface *bk, kiln_bk_buffer *buf) {
    if (!buf) return;
    buf_rec r;
    bool found = false;
    if (atomic_load_explicit(&reg_ready, memory_order_acquire)) {
        pthread_mutex_lock(&reg_lock);
        found = bufs_remove(buf, &r);
        pthread_mutex_unlock(&reg_lock);
    }
    bk->buffer_free(buf);
    if (!found) return;
    account(r.slot, r.size, -1, 1);
    if (slot_at(r.slot)->kind != SLOT_TRANSIENT) emit(r.slot, r.size, -1, r.file, r.line);
    maybe_reclaim(r.slot);
}

/* ---- rows for the report ---- */

static void row_from_slot(const mem_slot *s, kiln_memory_entry *e) {
    memset(e, 0, sizeof *e);
    e->struct_size = sizeof *e;
    e->space = s->space;
    memcpy(e->backend, s->backend, sizeof e->backend);
    e->device = s->device;
    if (s->kind == SLOT_ROW) {
        e->owner_kind = s->owner ? s->owner->kind : KILN_MEM_OWNER_PROCESS;
        e->owner_id = s->owner ? s->owner->serial : 0;
        e->owner_handle = s->owner ? (uint64_t)(uintptr_t)s->owner->handle : 0;
        if (s->owner && atomic_load(&s->owner->closed)) e->flags |= KILN_MEM_ENTRY_OWNER_FREED;
    } else {
        e->owner_kind = KILN_MEM_OWNER_ALL;
    }
    e->purpose = s->purpose;
    e->bytes = atomic_load(&s->bytes);
    e->count = atomic_load(&s->count);
    e->peak_bytes = atomic_load(&s->peak);
}

typedef struct row_sink {
    kiln_memory_entry *rows;
    char (*labels)[48];
    size_t cap, n;
} row_sink;

static void put(row_sink *k, const kiln_memory_entry *e, const char *label) {
    if (k->n < k->cap) {
        k->rows[k->n] = *e;
        if (k->labels) snprintf(k->labels[k->n], sizeof k->labels[0], "%s", label ? label : "");
    }
    k->n++;
}

/* Adds bytes to the aggregate row of (space, backend, device[, purpose in
 * the purpose view]), or puts a row of its own when there is none. */
static void add_to_aggregate(row_sink *k, uint32_t view, uint32_t space, const char *backend, int32_t device,
                             uint32_t purpose, uint64_t bytes, uint64_t count, uint64_t peak) {
    for (size_t r = 0; r < k->n && r < k->cap; r++) {
        kiln_memory_entry *e = &k->rows[r];
        if (e->space != space || e->device != device || strncmp(e->backend, backend, sizeof e->backend) != 0)
            continue;
        if (view == KILN_MEMORY_BY_PURPOSE && e->purpose != purpose) continue;
        e->bytes += bytes;
        e->count += count;
        e->peak_bytes += peak;
        return;
    }
    kiln_memory_entry e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.space = space;
    snprintf(e.backend, sizeof e.backend, "%s", backend);
    e.device = device;
    e.owner_kind = KILN_MEM_OWNER_ALL;
    e.purpose = view == KILN_MEMORY_BY_PURPOSE ? purpose : KILN_MEM_ALL;
    e.bytes = bytes;
    e.count = count;
    e.peak_bytes = peak;
    put(k, &e, NULL);
}

/* A device handle's own rows for the owner view: its pool, and the memory
 * the backend holds for the handle outside buffers (device and pinned host). */
static void put_handle_rows(row_sink *k, const mem_dev *d) {
    kiln_memory_entry e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.space = KILN_MEM_DEVICE;
    snprintf(e.backend, sizeof e.backend, "%s", d->bk->name);
    e.device = d->index;
    e.owner_kind = d->owner ? d->owner->kind : KILN_MEM_OWNER_PROCESS;
    e.owner_id = d->owner ? d->owner->serial : 0;
    e.owner_handle = d->owner ? (uint64_t)(uintptr_t)d->owner->handle : 0;
    const char *label = d->owner ? d->owner->label : NULL;
    e.purpose = KILN_MEM_POOL;
    e.bytes = d->pool.bytes_in_use + d->pool.bytes_cached;
    e.count = d->pool.n_allocs - d->pool.n_frees;
    e.peak_bytes = d->pool.bytes_peak;
    put(k, &e, label);
    e.purpose = KILN_MEM_DEVICE_STATE;
    e.count = 1;
    if (d->pool.bytes_internal) {
        e.bytes = e.peak_bytes = d->pool.bytes_internal;
        put(k, &e, label);
    }
    if (d->pool.bytes_internal_host) {
        e.space = KILN_MEM_HOST;
        e.backend[0] = '\0';
        e.device = -1;
        e.bytes = e.peak_bytes = d->pool.bytes_internal_host;
        put(k, &e, label);
    }
}

/* Pool and backend-internal totals per (backend, device) for the aggregate
 * views (the pool's peak is its own; internal memory has no history). */
static void add_pools(row_sink *k, uint32_t view) {
    for (mem_dev *d = devs; d; d = d->next) {
        if (!d->have_pool) continue;
        add_to_aggregate(k, view, KILN_MEM_DEVICE, d->bk->name, d->index, KILN_MEM_POOL,
                         d->pool.bytes_in_use + d->pool.bytes_cached, d->pool.n_allocs - d->pool.n_frees,
                         d->pool.bytes_peak);
        if (d->pool.bytes_internal)
            add_to_aggregate(k, view, KILN_MEM_DEVICE, d->bk->name, d->index, KILN_MEM_DEVICE_STATE,
                             d->pool.bytes_internal, 1, d->pool.bytes_internal);
        if (d->pool.bytes_internal_host)
            add_to_aggregate(k, view, KILN_MEM_HOST, "", -1, KILN_MEM_DEVICE_STATE, d->pool.bytes_internal_host, 1,
                             d->pool.bytes_internal_host);
    }
}

size_t kiln_mem_rows(uint32_t view, kiln_memory_entry *rows, char (*labels)[48], size_t cap) {
    ensure_init();
    row_sink k = {rows, labels, rows ? cap : 0, 0};
    pthread_mutex_lock(&reg_lock);
    uint32_t want = view == KILN_MEMORY_BY_OWNER ? SLOT_ROW
                    : view == KILN_MEMORY_BY_PURPOSE ? SLOT_AGG_PURPOSE : SLOT_AGG_DEVICE;
    for (uint32_t i = 1; i < n_slots_made; i++) {
        const mem_slot *s = slot_at(i);
        if (!s->used || s->kind != want) continue;
        if (atomic_load(&s->peak) == 0 && atomic_load(&s->count) == 0) continue;
        kiln_memory_entry e;
        row_from_slot(s, &e);
        put(&k, &e, s->owner ? s->owner->label : NULL);
    }
    if (view == KILN_MEMORY_BY_OWNER) {
        for (mem_dev *d = devs; d; d = d->next)
            if (d->have_pool) put_handle_rows(&k, d);
    } else {
        add_pools(&k, view);
    }
    pthread_mutex_unlock(&reg_lock);
    return k.n;
}

/* At exit, give the registry's own memory back (valgrind's "all heap
 * blocks were freed"); later calls find no chunk and count nothing new. */
__attribute__((destructor)) static void reg_fini(void) {
    pthread_mutex_lock(&reg_lock);
    if (bufs_n == 0) {
        free(bufs);
        bufs = NULL;
        bufs_cap = 0;
    }
    pthread_mutex_unlock(&reg_lock);
}
