/*
 * test_memory.c - the memory report, the timeline callback and the leak
 * guard (issue 8): the report's rows add up to the library's own
 * accounting (kiln_alloc_live_bytes for the host heap, the KV statistics,
 * the pool statistics and the weight bytes for the device), the three
 * views agree, the callback sees every allocation freed again, the size
 * protocols hold, and a deliberately leaked host block and device buffer
 * (through the internal allocation hooks) are caught, logged with their
 * tag and site, and reported as belonging to a freed owner.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "internal.h"
#include "kiln.h"
#include "kt.h"
#include "memtrack.h"

#define MODEL "models/tiny-target-q4_0.gguf"
#define MAX_ROWS 256

static kiln_model *load(uint32_t flags) {
    const char *path = kt_shared(MODEL);
    if (!path) return NULL;
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.flags = flags;
    kiln_model *m = NULL;
    KT_CHECK_OK(kt_model_load(path, &mp, &m));
    return m;
}

static kiln_context *make_ctx(kiln_model *m) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 256;
    cp.n_ubatch = 64;
    cp.n_seq_max = 2;
    cp.n_threads = 2;
    cp.kv_block_size = 16;
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(m, &cp, &c));
    return c;
}

static kiln_status decode(kiln_context *c, uint32_t n, int32_t seq) {
    int32_t t[64], s[64];
    uint32_t nv = (uint32_t)kiln_model_n_vocab(c->model);
    for (uint32_t i = 0; i < n && i < 64; i++) {
        t[i] = (int32_t)((i * 7919u + 3u) % (nv - 1) + 1);
        s[i] = seq;
    }
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = t;
    b.seq_id = s;
    return kiln_decode(c, &b);
}

static size_t rows(uint32_t view, kiln_memory_entry *r) {
    size_t n = 0;
    KT_CHECK_OK(kiln_memory_report_get(view, r, MAX_ROWS, sizeof *r, &n));
    return n;
}

typedef struct sums {
    uint64_t host, device;           /* BY_OWNER totals */
    uint64_t ctx_kv, ctx_pool, ctx_pool_peak, ctx_kv_host, model_weights;
    uint64_t other_owner_bytes;      /* rows of owners other than ctx/model/process */
} sums;

static sums sum_rows(const kiln_context *ctx, const kiln_model *m) {
    kiln_memory_entry r[MAX_ROWS];
    size_t n = rows(KILN_MEMORY_BY_OWNER, r);
    sums s;
    memset(&s, 0, sizeof s);
    for (size_t i = 0; i < n; i++) {
        const kiln_memory_entry *e = &r[i];
        KT_CHECK(e->struct_size == sizeof *e);
        KT_CHECK(e->peak_bytes >= e->bytes);
        if (e->space == KILN_MEM_HOST) s.host += e->bytes;
        else s.device += e->bytes;
        bool is_ctx = ctx && e->owner_handle == (uint64_t)(uintptr_t)ctx;
        bool is_model = m && e->owner_handle == (uint64_t)(uintptr_t)m;
        if (is_ctx && e->space == KILN_MEM_DEVICE && e->purpose == KILN_MEM_KV) s.ctx_kv += e->bytes;
        if (is_ctx && e->space == KILN_MEM_DEVICE && e->purpose == KILN_MEM_POOL) {
            s.ctx_pool += e->bytes;
            s.ctx_pool_peak += e->peak_bytes;
        }
        if (is_ctx && e->space == KILN_MEM_HOST && e->purpose == KILN_MEM_KV_HOST) s.ctx_kv_host += e->bytes;
        if (is_model && e->space == KILN_MEM_DEVICE && e->purpose == KILN_MEM_WEIGHTS) s.model_weights += e->bytes;
        if (!is_ctx && !is_model && e->owner_kind != KILN_MEM_OWNER_PROCESS) s.other_owner_bytes += e->bytes;
    }
    return s;
}

/* The three views give the same total per space (device: one device). */
static void check_views_agree(void) {
    kiln_memory_entry r[MAX_ROWS];
    uint64_t tot[3][2] = {{0}};
    for (uint32_t v = 0; v < 3; v++) {
        size_t n = rows(v, r);
        for (size_t i = 0; i < n; i++) {
            tot[v][r[i].space == KILN_MEM_DEVICE] += r[i].bytes;
            if (v != KILN_MEMORY_BY_OWNER) KT_CHECK(r[i].owner_kind == KILN_MEM_OWNER_ALL);
            if (v == KILN_MEMORY_BY_DEVICE) KT_CHECK(r[i].purpose == KILN_MEM_ALL);
        }
    }
    for (int sp = 0; sp < 2; sp++) {
        KT_CHECKF(tot[0][sp] == tot[1][sp] && tot[1][sp] == tot[2][sp],
                  "space %d: by owner %llu, by purpose %llu, by device %llu", sp, (unsigned long long)tot[0][sp],
                  (unsigned long long)tot[1][sp], (unsigned long long)tot[2][sp]);
    }
}

static void check_against_stats(kiln_context *ctx, kiln_model *m, const char *when) {
    sums s = sum_rows(ctx, m);
    uint64_t live = kiln_alloc_live_bytes();
    KT_CHECKF(s.host == live, "%s: host rows %llu, kiln_alloc_live_bytes %llu", when, (unsigned long long)s.host,
              (unsigned long long)live);
    kiln_kv_stats ks;
    kiln_kv_stats_init(&ks);
    KT_CHECK_OK(kiln_kv_get_stats(kiln_context_kv(ctx), &ks));
    KT_CHECKF(s.ctx_kv == ks.bytes_device, "%s: kv rows %llu, kv stats bytes_device %llu", when,
              (unsigned long long)s.ctx_kv, (unsigned long long)ks.bytes_device);
    KT_CHECKF(s.ctx_kv_host == ks.bytes_host, "%s: kv_host rows %llu, kv stats bytes_host %llu", when,
              (unsigned long long)s.ctx_kv_host, (unsigned long long)ks.bytes_host);
    kiln_pool_stats ps;
    kiln_pool_stats_init(&ps);
    KT_CHECK_OK(kiln_context_pool_stats(ctx, &ps));
    KT_CHECKF(s.ctx_pool == ps.bytes_in_use + ps.bytes_cached && s.ctx_pool_peak == ps.bytes_peak,
              "%s: pool row %llu (peak %llu), pool stats %llu + %llu (peak %llu)", when,
              (unsigned long long)s.ctx_pool, (unsigned long long)s.ctx_pool_peak,
              (unsigned long long)ps.bytes_in_use, (unsigned long long)ps.bytes_cached,
              (unsigned long long)ps.bytes_peak);
    kiln_model_info mi;
    kiln_model_info_init(&mi);
    KT_CHECK_OK(kiln_model_get_info(m, &mi));
    /* the weights buffer is the file's data section: every tensor plus
     * alignment padding */
    KT_CHECKF(s.model_weights >= mi.size_bytes && s.model_weights - mi.size_bytes < (1u << 20),
              "%s: weights row %llu, model size_bytes %llu", when, (unsigned long long)s.model_weights,
              (unsigned long long)mi.size_bytes);
    check_views_agree();
}

static void test_report_matches_accounting(void) {
    for (int copy = 0; copy < 2; copy++) {
        kiln_model *m = load(copy ? KILN_MODEL_NO_MMAP : 0);
        if (!m) KT_SKIP("../shared/" MODEL " not found");
        kiln_context *c = make_ctx(m);
        if (!c) {
            kiln_model_free(m);
            return;
        }
        check_against_stats(c, m, "after create");
        KT_CHECK_OK(decode(c, 40, 0));
        KT_CHECK_OK(decode(c, 1, 0));
        KT_CHECK_OK(decode(c, 20, 1));
        check_against_stats(c, m, "after decodes");
        KT_CHECK_OK(kiln_kv_seq_offload(kiln_context_kv(c), 1));
        check_against_stats(c, m, "after offload");
        sums s = sum_rows(c, m);
        KT_CHECK(s.ctx_kv_host > 0);
        KT_CHECK_OK(kiln_context_suspend(c, KILN_SUSPEND_WEIGHTS));
        s = sum_rows(c, m);
        KT_CHECK(s.ctx_kv == 0);
        /* a device copy of the weights is released at level 2 */
        if (copy) KT_CHECKF(s.model_weights == 0, "weights row %llu while parked", (unsigned long long)s.model_weights);
        KT_CHECK(s.host == kiln_alloc_live_bytes());
        KT_CHECK_OK(decode(c, 1, 0)); /* resumes */
        check_against_stats(c, m, "after resume");
        KT_CHECK_OK(kiln_context_pool_purge(c));
        check_against_stats(c, m, "after purge");

        /* the text report names both owners and the device */
        size_t len = 0;
        KT_CHECK_OK(kiln_memory_report_str(0, NULL, 0, &len));
        char *txt = malloc(len + 64);
        size_t len2 = 0;
        KT_CHECK(txt && kiln_memory_report_str(0, txt, len + 64, &len2) == KILN_OK);
        if (txt) {
            KT_CHECK(strlen(txt) == len2);
            KT_CHECK(strstr(txt, "host heap:") && strstr(txt, "device cpu:0") && strstr(txt, "context #") &&
                     strstr(txt, "model #") && strstr(txt, "weights") && strstr(txt, "kv_host"));
            if (copy == 0) printf("%s", txt);
        }
        free(txt);
        kiln_context_free(c);
        kiln_model_free(m);
        sums after = sum_rows(NULL, NULL);
        KT_CHECK(after.device == 0);
        KT_CHECK(after.other_owner_bytes == 0);
        KT_CHECK(after.host == kiln_alloc_live_bytes());
    }
}

static void test_size_protocols(void) {
    size_t n = 0;
    KT_CHECK(kiln_memory_report_get(7, NULL, 0, sizeof(kiln_memory_entry), &n) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_memory_report_get(KILN_MEMORY_BY_OWNER, NULL, 0, 2, &n) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_memory_report_get(KILN_MEMORY_BY_OWNER, NULL, 0, sizeof(kiln_memory_entry), NULL) ==
             KILN_E_INVALID_ARG);
    KT_CHECK_OK(kiln_memory_report_get(KILN_MEMORY_BY_DEVICE, NULL, 0, sizeof(kiln_memory_entry), &n));
    KT_CHECK(n >= 1); /* the host heap */
    kiln_memory_entry r[MAX_ROWS];
    size_t n2 = 0;
    if (n > 0) {
        KT_CHECK(kiln_memory_report_get(KILN_MEMORY_BY_DEVICE, r, n - 1, sizeof r[0], &n2) ==
                 KILN_E_BUFFER_TOO_SMALL);
        KT_CHECK(n2 == n);
    }
    /* an older, shorter entry: nothing written past its size */
    const uint32_t old = (uint32_t)offsetof(kiln_memory_entry, peak_bytes);
    unsigned char raw[4 * sizeof(kiln_memory_entry)];
    memset(raw, 0xAB, sizeof raw);
    KT_CHECK_OK(kiln_memory_report_get(KILN_MEMORY_BY_DEVICE, (kiln_memory_entry *)(void *)raw, 3, old, &n2));
    KT_CHECK(n2 >= 1 && n2 <= 3);
    uint32_t ss;
    memcpy(&ss, raw, sizeof ss);
    KT_CHECK(ss == old);
    for (size_t i = n2 * old; i < sizeof raw; i++) KT_CHECK(raw[i] == 0xAB);
    char small[8];
    size_t len = 0;
    KT_CHECK(kiln_memory_report_str(0, small, sizeof small, &len) == KILN_E_BUFFER_TOO_SMALL);
    KT_CHECK(len > sizeof small);
    KT_CHECK(kiln_memory_report_str(1, NULL, 0, &len) == KILN_E_INVALID_ARG);
    KT_CHECK(strcmp(kiln_memory_purpose_str(KILN_MEM_KV_HOST), "kv_host") == 0);
    KT_CHECK(strcmp(kiln_memory_owner_str(KILN_MEM_OWNER_CONTEXT), "context") == 0);
    KT_CHECK(strcmp(kiln_memory_purpose_str(999), "?") == 0);
}

/* ---- timeline ---- */

typedef struct timeline {
    int64_t bytes[2], count[2];   /* per space: allocations minus frees */
    uint64_t events, last_seq, device_events, with_site;
    bool seq_ok;
} timeline;

static void on_event(const kiln_memory_event *ev, void *user) {
    timeline *t = user;
    int sp = ev->space == KILN_MEM_DEVICE;
    t->bytes[sp] += ev->sign * (int64_t)ev->size;
    t->count[sp] += ev->sign;
    if (ev->seq <= t->last_seq) t->seq_ok = false;
    t->last_seq = ev->seq;
    t->events++;
    if (sp) t->device_events++;
    if (ev->file && ev->line > 0) t->with_site++;
    /* calls into kiln from here are not reported (nor deadlock) */
    void *p = kiln_malloc(8);
    kiln_free(p);
}

static void test_timeline_balanced(void) {
    const char *path = kt_shared(MODEL);
    if (!path) KT_SKIP("../shared/" MODEL " not found");
    timeline t;
    memset(&t, 0, sizeof t);
    t.seq_ok = true;
    uint64_t live0 = kiln_alloc_live_bytes();
    kiln_memory_set_callback(on_event, &t);
    kiln_model *m = load(KILN_MODEL_NO_MMAP);
    kiln_context *c = m ? make_ctx(m) : NULL;
    if (c) {
        KT_CHECK_OK(decode(c, 30, 0));
        KT_CHECK_OK(kiln_kv_seq_offload(kiln_context_kv(c), 0));
        KT_CHECK_OK(kiln_context_suspend(c, KILN_SUSPEND_WEIGHTS));
        KT_CHECK_OK(decode(c, 1, 0));
        KT_CHECK(t.bytes[0] == (int64_t)(kiln_alloc_live_bytes() - live0));
    }
    kiln_context_free(c);
    kiln_model_free(m);
    kiln_memory_set_callback(NULL, NULL);
    KT_CHECK(t.events > 100);
    KT_CHECK(t.device_events >= 4);
    KT_CHECK(t.with_site == t.device_events);
    KT_CHECK(t.seq_ok);
    KT_CHECKF(t.bytes[0] == 0 && t.count[0] == 0, "host: %lld bytes, %lld blocks unbalanced", (long long)t.bytes[0],
              (long long)t.count[0]);
    KT_CHECKF(t.bytes[1] == 0 && t.count[1] == 0, "device: %lld bytes, %lld buffers unbalanced",
              (long long)t.bytes[1], (long long)t.count[1]);
    uint64_t before = t.events;
    void *p = kiln_malloc(16);
    kiln_free(p);
    KT_CHECK(t.events == before); /* removed */
}

/* ---- the leak guard ---- */

static char logged[8][512];
static int n_logged;

static void sink(int32_t level, const char *msg, void *user) {
    (void)user;
    if (level == KILN_LOG_ERROR && strstr(msg, "leak guard") && n_logged < 8)
        snprintf(logged[n_logged++], sizeof logged[0], "%s", msg);
}

static bool logged_has(const char *a, const char *b) {
    for (int i = 0; i < n_logged; i++)
        if (strstr(logged[i], a) && (!b || strstr(logged[i], b))) return true;
    return false;
}

static void test_leak_guard_catches_a_leak(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared/" MODEL " not found");
    kiln_context *c = make_ctx(m);
    if (!c) {
        kiln_model_free(m);
        return;
    }
    kiln_log_set_default(sink, NULL, KILN_LOG_ERROR);
    n_logged = 0;
    uint64_t leaks0 = kiln_memory_leak_count();
    /* a deliberate leak, test-only: a host block and a device buffer
     * tagged to the context that its free does not know about */
    void *leaked;
    {
        KILN_MEM_SCOPE(c, KILN_MEM_SCRATCH);
        leaked = kiln_malloc(1000);
    }
    const kiln_backend_iface *bk = c->bk;
    kiln_bk_buffer *buf = NULL;
    KT_CHECK_OK(kiln_mem_buffer_alloc(bk, c->dev, 4096, KILN_BK_BUF_KV, KILN_MEM_KV, &buf));
    KT_CHECK(leaked != NULL);
    uint64_t ctx_handle = (uint64_t)(uintptr_t)c;
    /* on a backend whose buffers are host memory (the CPU) the buffer's
     * own host block leaks too, tagged like the buffer */
    kiln_device_info di;
    kiln_device_info_init(&di);
    KT_CHECK_OK(kiln_backend_device_info(bk->name, 0, &di));
    const uint64_t expect = (di.flags & KILN_DEVICE_HOST_MEMORY) ? 3 : 2;
    kiln_context_free(c);
    KT_CHECKF(kiln_memory_leak_count() - leaks0 == expect, "leaks counted: %llu, expected %llu",
              (unsigned long long)(kiln_memory_leak_count() - leaks0), (unsigned long long)expect);
    KT_CHECK(logged_has("context #", "1000 bytes in 1 allocations"));
    KT_CHECK(logged_has("scratch on host", NULL));
    KT_CHECK(logged_has("4096 bytes", "kv on cpu:0"));
    KT_CHECK(logged_has("test/test_memory.c:", NULL)); /* the buffer's allocation site */
    for (int i = 0; i < n_logged; i++) printf("  logged: %s\n", logged[i]);
    /* the report shows them under the freed owner */
    kiln_memory_entry r[MAX_ROWS];
    size_t n = rows(KILN_MEMORY_BY_OWNER, r);
    int freed_rows = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].owner_handle == ctx_handle && (r[i].flags & KILN_MEM_ENTRY_OWNER_FREED) && r[i].bytes) freed_rows++;
    KT_CHECK(freed_rows == (int)expect);
    /* freeing them late clears the rows */
    kiln_free(leaked);
    kiln_mem_buffer_free(bk, buf);
    n = rows(KILN_MEMORY_BY_OWNER, r);
    for (size_t i = 0; i < n; i++) KT_CHECK(!(r[i].flags & KILN_MEM_ENTRY_OWNER_FREED));
    /* a clean free logs nothing */
    n_logged = 0;
    uint64_t leaks1 = kiln_memory_leak_count();
    kiln_context *c2 = make_ctx(m);
    KT_CHECK_OK(decode(c2, 8, 0));
    kiln_context_free(c2);
    kiln_model_free(m);
    KT_CHECK(kiln_memory_leak_count() == leaks1);
    KT_CHECK(n_logged == 0);
    kiln_log_set_default(NULL, NULL, KILN_LOG_ERROR);
    kiln_mem_test_reset_leaks(); /* these were deliberate: kt_finish must not fail on them */
}

/* Every handle kind, freed in a model-first order: no leak, no row left. */
static void test_all_handles_clean(void) {
    kiln_model *m = load(0);
    if (!m) KT_SKIP("../shared/" MODEL " not found");
    const char *dpath = kt_shared("models/tiny-draft-f16.gguf");
    kiln_model *dm = NULL;
    if (dpath) KT_CHECK_OK(kt_model_load(dpath, NULL, &dm));
    uint64_t leaks0 = kiln_memory_leak_count();
    kiln_context *c = make_ctx(m);
    kiln_draft *d = NULL;
    if (dm && c) KT_CHECK_OK(kiln_draft_create(c, dm, NULL, &d));
    kiln_sampler_params sp;
    kiln_sampler_params_init(&sp);
    kiln_sampler *s = NULL;
    KT_CHECK_OK(kiln_sampler_create(&sp, &s));
    kiln_detokenizer *dt = NULL;
    KT_CHECK_OK(kiln_detokenizer_create(m, 0, &dt));
    if (d) {
        int32_t prompt[4] = {1, 2, 3, 4}, out[8];
        size_t n_out = 0;
        KT_CHECK_OK(kiln_draft_generate(d, prompt, 4, 6, s, out, 8, &n_out));
    }
    kiln_memory_entry r[MAX_ROWS];
    size_t n = rows(KILN_MEMORY_BY_OWNER, r);
    bool kinds[6] = {false};
    for (size_t i = 0; i < n; i++)
        if (r[i].owner_kind < 6 && r[i].bytes) kinds[r[i].owner_kind] = true;
    KT_CHECK(kinds[KILN_MEM_OWNER_MODEL] && kinds[KILN_MEM_OWNER_CONTEXT] && kinds[KILN_MEM_OWNER_SAMPLER] &&
             kinds[KILN_MEM_OWNER_DETOKENIZER]);
    if (d) KT_CHECK(kinds[KILN_MEM_OWNER_DRAFT]);
    kiln_model_free(m);
    kiln_model_free(dm);
    kiln_context_free(c); /* detaches and frees the draft's context */
    kiln_draft_free(d);
    kiln_sampler_free(s);
    kiln_detokenizer_free(dt);
    KT_CHECK(kiln_memory_leak_count() == leaks0);
    n = rows(KILN_MEMORY_BY_OWNER, r);
    for (size_t i = 0; i < n; i++)
        KT_CHECKF(r[i].owner_kind == KILN_MEM_OWNER_PROCESS || r[i].bytes == 0, "owner %s #%llu: %llu bytes of %s",
                  kiln_memory_owner_str(r[i].owner_kind), (unsigned long long)r[i].owner_id,
                  (unsigned long long)r[i].bytes, kiln_memory_purpose_str(r[i].purpose));
}

/* Two threads each run their own context while a third reads the report
 * in a loop: the registry is thread-safe (run under ASan in the sanitized
 * suite) and everything is back at zero afterwards. */
static kiln_model *shared_model;
static _Atomic int workers_done;

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 3; i++) {
        kiln_context *c = make_ctx(shared_model);
        if (!c) break;
        for (int k = 0; k < 4; k++) KT_CHECK_OK(decode(c, k ? 1 : 20, 0));
        if (i == 1) KT_CHECK_OK(kiln_context_suspend(c, KILN_SUSPEND_KV));
        kiln_context_free(c);
    }
    atomic_fetch_add(&workers_done, 1);
    return NULL;
}

static void test_report_while_decoding_on_other_threads(void) {
    shared_model = load(0);
    if (!shared_model) KT_SKIP("../shared/" MODEL " not found");
    uint64_t leaks0 = kiln_memory_leak_count();
    atomic_store(&workers_done, 0);
    pthread_t th[2];
    int started = 0;
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, worker, NULL) == 0) started++;
    int reports = 0;
    while (atomic_load(&workers_done) < started) {
        size_t len = 0;
        KT_CHECK_OK(kiln_memory_report_str(0, NULL, 0, &len));
        kiln_memory_entry r[MAX_ROWS];
        size_t n = 0;
        KT_CHECK_OK(kiln_memory_report_get(KILN_MEMORY_BY_OWNER, r, MAX_ROWS, sizeof r[0], &n));
        reports++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    kiln_model_free(shared_model);
    KT_CHECK(reports > 0);
    KT_CHECK(kiln_memory_leak_count() == leaks0);
    sums after = sum_rows(NULL, NULL);
    KT_CHECK(after.device == 0 && after.other_owner_bytes == 0);
    KT_CHECK(after.host == kiln_alloc_live_bytes());
}

int main(void) {
    setenv("KILN_LEAK_GUARD", "1", 1); /* before the registry reads it */
    KT_RUN(test_report_matches_accounting);
    KT_RUN(test_timeline_balanced);
    KT_RUN(test_leak_guard_catches_a_leak);
    KT_RUN(test_all_handles_clean);
    KT_RUN(test_report_while_decoding_on_other_threads);
    KT_RUN(test_size_protocols); /* after the others: the host heap has a row */
    return kt_finish();
}
