/*
 * memreport.c - the public memory report: the structured rows
 * (kiln_memory_report_get), the text report (kiln_memory_report_str,
 * kiln_memory_report) and the names of the tag constants. The counting
 * itself is lib/memtrack.c; this file only reads its rows and formats them.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "memtrack.h"

const char *kiln_memory_purpose_str(uint32_t purpose) {
    static const char *const names[KILN_MEM_N_PURPOSES] = {
        "other", "weights", "kv", "kv_host", "pool", "staging",
        "tokenizer", "metadata", "scratch", "device_state", "sampler", "draft"};
    if (purpose == KILN_MEM_ALL) return "all";
    return purpose < KILN_MEM_N_PURPOSES ? names[purpose] : "?";
}

const char *kiln_memory_owner_str(uint32_t kind) {
    static const char *const names[] = {"process", "model", "context", "draft", "sampler", "detokenizer"};
    if (kind == KILN_MEM_OWNER_ALL) return "all";
    return kind < KILN_ARRAY_LEN(names) ? names[kind] : "?";
}

void kiln_memory_entry_init_sized(kiln_memory_entry *e, uint32_t size) {
    kiln_memory_entry d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(e, size, &d, sizeof d);
}

void kiln_memory_event_init_sized(kiln_memory_event *ev, uint32_t size) {
    kiln_memory_event d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(ev, size, &d, sizeof d);
}

/* Rows of a view in a plain malloc'd array (labels too when wanted); free
 * with free(). Not kiln_malloc: the report must not count its own scratch
 * (the host rows would then exceed kiln_alloc_live_bytes() by it). */
static kiln_status collect(uint32_t view, kiln_memory_entry **rows, char (**labels)[48], size_t *n) {
    *rows = NULL;
    if (labels) *labels = NULL;
    size_t want = kiln_mem_rows(view, NULL, NULL, 0);
    for (int attempt = 0; attempt < 8; attempt++) {
        size_t cap = want + 16;
        kiln_memory_entry *r = calloc(cap, sizeof *r);
        char(*l)[48] = labels ? calloc(cap, sizeof *l) : NULL;
        if (!r || (labels && !l)) {
            free(r);
            free(l);
            return kiln_error(KILN_E_OOM_HOST, "memory report: out of memory for %zu rows", cap);
        }
        size_t got = kiln_mem_rows(view, r, l, cap);
        if (got <= cap) {
            *rows = r;
            if (labels) *labels = l;
            *n = got;
            return KILN_OK;
        }
        free(r);
        free(l);
        want = got;
    }
    return kiln_error(KILN_E_BUSY, "memory report: rows kept changing");
}

kiln_status kiln_memory_report_get(uint32_t view, kiln_memory_entry *entries, size_t capacity, uint32_t entry_size,
                                   size_t *n_out) {
    kiln_error_clear();
    if (!n_out || view > KILN_MEMORY_BY_DEVICE || entry_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_memory_report_get: bad view %u, entry_size %u or NULL n_out",
                          view, entry_size);
    if (!entries) {
        *n_out = kiln_mem_rows(view, NULL, NULL, 0);
        return KILN_OK;
    }
    kiln_memory_entry *rows;
    size_t n;
    kiln_status st = collect(view, &rows, NULL, &n);
    if (st) return st;
    *n_out = n;
    if (n > capacity) {
        free(rows);
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "kiln_memory_report_get: %zu rows, capacity %zu", n, capacity);
    }
    uint32_t w = entry_size < sizeof *rows ? entry_size : (uint32_t)sizeof *rows;
    for (size_t i = 0; i < n; i++) {
        rows[i].struct_size = w;
        memcpy((char *)entries + i * entry_size, &rows[i], w);
    }
    free(rows);
    return KILN_OK;
}

/* ---- text ---- */

typedef struct text {
    char *buf;
    size_t len, cap;
    bool oom;
} text;

static void add(text *t, const char *fmt, ...) KILN_PRINTF(2, 3);
static void add(text *t, const char *fmt, ...) {
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap : 1024);
        while (cap <= t->len + (size_t)n) cap *= 2;
        char *b = kiln_realloc(t->buf, cap);
        if (!b) {
            t->oom = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static const char *human(uint64_t b, char *out, size_t n) {
    if (b < 10 * 1024) snprintf(out, n, "%llu B", (unsigned long long)b);
    else if (b < 10ull * 1024 * 1024) snprintf(out, n, "%.1f KiB", (double)b / 1024);
    else if (b < 10ull * 1024 * 1024 * 1024) snprintf(out, n, "%.1f MiB", (double)b / (1024.0 * 1024));
    else snprintf(out, n, "%.2f GiB", (double)b / (1024.0 * 1024 * 1024));
    return out;
}

static bool same_place(const kiln_memory_entry *a, const kiln_memory_entry *b) {
    return a->space == b->space && a->device == b->device && strncmp(a->backend, b->backend, sizeof a->backend) == 0;
}

static int by_owner_purpose(const void *pa, const void *pb) {
    const kiln_memory_entry *a = pa, *b = pb;
    if (a->owner_id != b->owner_id) return a->owner_id < b->owner_id ? -1 : 1;
    return a->purpose < b->purpose ? -1 : a->purpose > b->purpose;
}

static int by_purpose(const void *pa, const void *pb) {
    const kiln_memory_entry *a = pa, *b = pb;
    return a->purpose < b->purpose ? -1 : a->purpose > b->purpose;
}

static bool host_memory_device(const kiln_memory_entry *e) {
    const kiln_backend_iface *bk;
    if (kiln_backend_find(e->backend, &bk) != KILN_OK) return false;
    kiln_bk_device_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    return bk->device_info(e->device, &info) == KILN_OK && (info.flags & KILN_BK_DEVICE_HOST_MEMORY);
}

static kiln_status build(text *t) {
    kiln_memory_entry *dev = NULL, *own = NULL, *pur = NULL;
    char(*labels)[48] = NULL;
    size_t n_dev = 0, n_own = 0, n_pur = 0;
    kiln_status st;
    if ((st = collect(KILN_MEMORY_BY_DEVICE, &dev, NULL, &n_dev)) ||
        (st = collect(KILN_MEMORY_BY_OWNER, &own, &labels, &n_own)) ||
        (st = collect(KILN_MEMORY_BY_PURPOSE, &pur, NULL, &n_pur)))
        goto done;
    /* sort owner rows, carrying their labels along */
    for (size_t i = 0; i < n_own; i++) own[i].struct_size = (uint32_t)i; /* index into labels */
    qsort(own, n_own, sizeof *own, by_owner_purpose);
    qsort(pur, n_pur, sizeof *pur, by_purpose);
    char h1[32], h2[32];
    add(t, "kiln memory report\n");
    for (size_t d = 0; d < n_dev; d++) {
        const kiln_memory_entry *D = &dev[d];
        if (D->space == KILN_MEM_HOST)
            add(t, "host heap: %s in %llu blocks (peak %s)\n", human(D->bytes, h1, sizeof h1),
                (unsigned long long)D->count, human(D->peak_bytes, h2, sizeof h2));
        else
            add(t, "device %s:%d: %s in %llu buffers (peak %s)%s\n", D->backend, (int)D->device,
                human(D->bytes, h1, sizeof h1), (unsigned long long)D->count, human(D->peak_bytes, h2, sizeof h2),
                host_memory_device(D) ? "; host memory: these buffers are also in the host heap, except mapped "
                                        "weights"
                                      : "");
        add(t, "  %-34s %-13s %12s %8s %12s\n", "owner", "purpose", "bytes", "count", "peak");
        for (size_t i = 0; i < n_own; i++) {
            const kiln_memory_entry *e = &own[i];
            if (!same_place(e, D)) continue;
            char who[80];
            const char *label = labels[e->struct_size];
            if (e->owner_kind == KILN_MEM_OWNER_PROCESS) snprintf(who, sizeof who, "process");
            else
                snprintf(who, sizeof who, "%s #%llu%s%s%s", kiln_memory_owner_str(e->owner_kind),
                         (unsigned long long)e->owner_id, label[0] ? " " : "", label,
                         (e->flags & KILN_MEM_ENTRY_OWNER_FREED) ? " (FREED: leak)" : "");
            add(t, "  %-34.34s %-13s %12llu %8llu %12llu\n", who, kiln_memory_purpose_str(e->purpose),
                (unsigned long long)e->bytes, (unsigned long long)e->count, (unsigned long long)e->peak_bytes);
        }
        add(t, "  by purpose:");
        int k = 0;
        for (size_t i = 0; i < n_pur; i++) {
            const kiln_memory_entry *e = &pur[i];
            if (!same_place(e, D)) continue;
            add(t, "%s%s %s (peak %s)", k == 0 ? " " : k % 3 ? ", " : ",\n             ",
                kiln_memory_purpose_str(e->purpose), human(e->bytes, h1, sizeof h1),
                human(e->peak_bytes, h2, sizeof h2));
            k++;
        }
        add(t, "\n");
    }
    uint64_t leaks = kiln_memory_leak_count();
    if (leaks) add(t, "leak guard: %llu leaked allocations found (see the log)\n", (unsigned long long)leaks);
    if (t->oom) st = kiln_error(KILN_E_OOM_HOST, "memory report: out of memory");
done:
    free(dev);
    free(own);
    free(pur);
    free(labels);
    return st;
}

kiln_status kiln_memory_report_str(uint32_t flags, char *buf, size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!n_out || flags) return kiln_error(KILN_E_INVALID_ARG, "kiln_memory_report_str: NULL n_out or flags != 0");
    text t = {0};
    kiln_status st = build(&t);
    if (st == KILN_OK) {
        *n_out = t.len;
        if (buf) {
            if (capacity > t.len) memcpy(buf, t.buf ? t.buf : "", t.len + 1);
            else st = kiln_error(KILN_E_BUFFER_TOO_SMALL, "kiln_memory_report_str: %zu bytes needed", t.len + 1);
        }
    }
    kiln_free(t.buf);
    return st;
}

kiln_status kiln_memory_report(void *stream, uint32_t flags) {
    kiln_error_clear();
    if (!stream || flags) return kiln_error(KILN_E_INVALID_ARG, "kiln_memory_report: NULL stream or flags != 0");
    text t = {0};
    kiln_status st = build(&t);
    if (st == KILN_OK && t.len && fwrite(t.buf, 1, t.len, (FILE *)stream) != t.len)
        st = kiln_error(KILN_E_IO, "kiln_memory_report: write failed");
    if (st == KILN_OK && fflush((FILE *)stream) != 0) st = kiln_error(KILN_E_IO, "kiln_memory_report: flush failed");
    kiln_free(t.buf);
    return st;
}
