/*
 * test_split.c - one model's layers split across several devices
 * (kiln_model_params.split): the logits of a split model equal the unsplit
 * model's (bit for bit by default: on the CPU backend the same kernels run
 * on both device handles and the activations cross through host memory
 * unchanged) for several sequences in one batch, then decode steps, at
 * n_ubatch 1, 7 and 512; suspend/resume at both levels, offload/restore,
 * KV export into an unsplit context and a save/load round trip continue
 * exactly; a draft on a split target gives the target's greedy output;
 * every free order is clean; bad specs fail with a status and leak nothing;
 * host allocation failures at every point of load and create leak nothing.
 *
 * The CPU backend has one device, so by default the split names it twice
 * ("cpu:0:N,cpu:0"): two device handles, two weight buffers, the whole
 * mechanism. The environment points it at other devices:
 *   KILN_SPLIT_DEVICES  "BACKEND:DEVICE,BACKEND:DEVICE[,...]" the split's
 *                       devices (default "cpu:0,cpu:0")
 *   KILN_SPLIT_BASE     "BACKEND:DEVICE" of the unsplit model compared
 *                       against (default the first split device)
 *   KILN_SPLIT_TOL      largest absolute logit difference allowed (default
 *                       0: bit for bit); above 0 the argmax must agree too
 *   KILN_SPLIT_MODELS   comma-separated model paths (default the shared
 *                       tiny-target-q4_k_m and tiny-qwen3-f16)
 *   KILN_SPLIT_UBATCHES comma-separated n_ubatch values (default 1,7,512)
 * test/vulkan.sh runs it with "cpu:0,vulkan:0", test/device/run.sh with
 * "cuda:0,cuda:1".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "kiln.h"
#include "kt.h"
#include "context.h"

#define MAX_DEV 8

static char dev_backend[MAX_DEV][32];
static int32_t dev_index[MAX_DEV];
static int n_dev;
static char base_backend[32];
static int32_t base_index;
static double tol;

static int parse_dev(const char *s, size_t n, char *backend, int32_t *index) {
    const char *c = memchr(s, ':', n);
    if (!c || c == s || (size_t)(c - s) >= 32) return -1;
    memcpy(backend, s, (size_t)(c - s));
    backend[c - s] = '\0';
    *index = (int32_t)atoi(c + 1);
    return 0;
}

static void setup(void) {
    const char *d = getenv("KILN_SPLIT_DEVICES");
    if (!d || !*d) d = "cpu:0,cpu:0";
    for (const char *p = d; *p && n_dev < MAX_DEV;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (parse_dev(p, len, dev_backend[n_dev], &dev_index[n_dev]) == 0) n_dev++;
        p += len + (e ? 1 : 0);
    }
    const char *b = getenv("KILN_SPLIT_BASE");
    if (!b || !*b || parse_dev(b, strlen(b), base_backend, &base_index) != 0) {
        snprintf(base_backend, sizeof base_backend, "%s", dev_backend[0]);
        base_index = dev_index[0];
    }
    const char *t = getenv("KILN_SPLIT_TOL");
    tol = t && *t ? atof(t) : 0.0;
}

/* The split spec over the configured devices for a model of n_layer
 * layers: the first entry gets `first` layers, the others share the rest
 * (fewer entries when there are fewer layers than devices). */
static void make_spec(char *spec, size_t cap, uint32_t n_layer, uint32_t first) {
    int nd = n_dev < (int)n_layer ? n_dev : (int)n_layer;
    if (first == 0 || first > n_layer - (uint32_t)(nd - 1)) first = 1;
    size_t off = (size_t)snprintf(spec, cap, "%s:%d:%u", dev_backend[0], dev_index[0], first);
    for (int i = 1; i < nd && off < cap; i++)
        off += (size_t)snprintf(spec + off, cap - off, ",%s:%d", dev_backend[i], dev_index[i]);
}

static int n_models;
static const char *model_paths[8];

static void find_models(void) {
    static char buf[2048];
    const char *env = getenv("KILN_SPLIT_MODELS");
    if (env && *env) {
        snprintf(buf, sizeof buf, "%s", env);
        for (char *p = strtok(buf, ","); p && n_models < 8; p = strtok(NULL, ","))
            if (access(p, R_OK) == 0) model_paths[n_models++] = p;
        return;
    }
    const char *a = kt_shared("models/tiny-target-q4_k_m.gguf");
    if (!a && access("models/tiny-target-q4_k_m.gguf", R_OK) == 0) a = "models/tiny-target-q4_k_m.gguf";
    const char *b = kt_shared("models/tiny-qwen3-f16.gguf");
    if (a) model_paths[n_models++] = a;
    if (b) model_paths[n_models++] = b;
}

static kiln_model *load_split(const char *path, const char *spec, uint32_t flags) {
    kiln_model_params p;
    kiln_model_params_init(&p);
    p.flags = flags;
    p.split = spec;
    kiln_model *m = NULL;
    KT_CHECK_OK(kiln_model_load(path, &p, &m));
    return m;
}

static kiln_model *load_base(const char *path, uint32_t flags) {
    kiln_model_params p;
    kiln_model_params_init(&p);
    p.flags = flags;
    p.backend = base_backend;
    p.device = base_index;
    kiln_model *m = NULL;
    KT_CHECK_OK(kiln_model_load(path, &p, &m));
    return m;
}

static uint32_t n_layer_of(kiln_model *m) {
    kiln_model_info info;
    kiln_model_info_init(&info);
    kiln_model_get_info(m, &info);
    return info.n_layer;
}

static kiln_context *make_ctx(kiln_model *m, uint32_t n_ubatch) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 512;
    cp.n_ubatch = n_ubatch;
    cp.n_seq_max = 4;
    cp.n_threads = 2;
    kiln_context *c = NULL;
    KT_CHECK_OK(kiln_context_create(m, &cp, &c));
    return c;
}

static const char *const prompts[] = {
    "In the beginning",
    "The LORD is my shepherd; I shall not want.",
    "A computer is",
    "Hello, world! 123 + 456 = 579.",
};
#define N_PROMPTS 4

typedef struct batch_buf {
    int32_t tok[512], seq[512];
    int8_t want[512];
    uint32_t n;
} batch_buf;

/* Every prompt in its own sequence, one batch, all logits wanted. */
static void prompts_batch(kiln_model *m, batch_buf *bb) {
    bb->n = 0;
    for (int s = 0; s < N_PROMPTS; s++) {
        size_t nt = 0;
        KT_CHECK_OK(kiln_tokenize(m, prompts[s], strlen(prompts[s]), KILN_TOKENIZE_ADD_BOS, bb->tok + bb->n,
                                  512 - bb->n, &nt));
        for (size_t i = 0; i < nt; i++) {
            bb->seq[bb->n + i] = s;
            bb->want[bb->n + i] = 1;
        }
        bb->n += (uint32_t)nt;
    }
}

static kiln_status decode_bb(kiln_context *c, const batch_buf *bb) {
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = bb->n;
    b.tokens = bb->tok;
    b.seq_id = bb->seq;
    b.logits = bb->want;
    return kiln_decode(c, &b);
}

static int argmax(const float *l, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

/* Row i of the last batch of a and b agree (bit for bit when tol is 0). */
static bool rows_equal(kiln_context *a, kiln_context *b, int32_t i, int nv, const char *what) {
    const float *x = kiln_context_logits(a, i), *y = kiln_context_logits(b, i);
    if (!x || !y) {
        kt_fail(__FILE__, __LINE__, "%s: no logits for row %d", what, i);
        return false;
    }
    if (tol == 0.0) {
        if (memcmp(x, y, sizeof(float) * (size_t)nv) == 0) return true;
        int j = 0;
        while (j < nv && memcmp(&x[j], &y[j], sizeof(float)) == 0) j++;
        kt_fail(__FILE__, __LINE__, "%s: row %d differs first at %d: %.9g vs %.9g", what, i, j, x[j], y[j]);
        return false;
    }
    double d = 0;
    for (int j = 0; j < nv; j++) d = fmax(d, fabs((double)x[j] - y[j]));
    if (d <= tol && argmax(x, nv) == argmax(y, nv)) return true;
    kt_fail(__FILE__, __LINE__, "%s: row %d max |diff| %g (tolerance %g), argmax %d vs %d", what, i, d, tol,
            argmax(x, nv), argmax(y, nv));
    return false;
}

/* One decode step: the argmax of each sequence's last row continues it
 * (the same tokens in both contexts: taken from a). */
static void step_both(kiln_context *a, kiln_context *b, int nv, int32_t *last_rows, int n_seq, const char *what) {
    batch_buf bb;
    bb.n = (uint32_t)n_seq;
    for (int s = 0; s < n_seq; s++) {
        bb.tok[s] = argmax(kiln_context_logits(a, last_rows[s]), nv);
        bb.seq[s] = s;
        bb.want[s] = 1;
        last_rows[s] = s;
    }
    KT_CHECK_OK(decode_bb(a, &bb));
    KT_CHECK_OK(decode_bb(b, &bb));
    for (int s = 0; s < n_seq; s++)
        if (!rows_equal(a, b, s, nv, what)) break;
}

static void last_rows_of(const batch_buf *bb, int32_t *last_rows) {
    for (uint32_t i = 0; i < bb->n; i++) last_rows[bb->seq[i]] = (int32_t)i;
}

/* ---- logits ---- */

static void test_logits(void) {
    if (!n_models) KT_SKIP("no model (../shared not found)");
    for (int mi = 0; mi < n_models; mi++) {
        kiln_model *base = load_base(model_paths[mi], 0);
        if (!base) continue;
        const uint32_t nl = n_layer_of(base);
        const int nv = kiln_model_n_vocab(base);
        /* an uneven split, and (with 3+ layers) three entries, the middle
         * one without a count */
        char specs[2][256];
        make_spec(specs[0], sizeof specs[0], nl, nl > 2 ? nl / 2 - 1 : 1);
        int n_specs = 1;
        if (nl >= 3 && n_dev >= 2) {
            snprintf(specs[1], sizeof specs[1], "%s:%d:1,%s:%d,%s:%d:1", dev_backend[0], dev_index[0],
                     dev_backend[1], dev_index[1], dev_backend[0], dev_index[0]);
            n_specs = 2;
        }
        for (int si = 0; si < n_specs; si++) {
            kiln_model *sm = load_split(model_paths[mi], specs[si], 0);
            if (!sm) continue;
            KT_CHECK(sm->n_splits >= 2);
            uint32_t ubs[8] = {1, 7, 512};
            size_t n_ubs = 3;
            const char *ue = getenv("KILN_SPLIT_UBATCHES");
            if (ue && *ue) {
                n_ubs = 0;
                for (const char *q = ue; *q && n_ubs < 8; q += strcspn(q, ","), q += *q == ',') {
                    int v = atoi(q);
                    if (v > 0) ubs[n_ubs++] = (uint32_t)v;
                }
            }
            for (size_t ui = 0; ui < n_ubs; ui++) {
                char what[1024];
                snprintf(what, sizeof what, "%s split '%s' n_ubatch %u", model_paths[mi], specs[si], ubs[ui]);
                kiln_context *a = make_ctx(base, ubs[ui]), *b = make_ctx(sm, ubs[ui]);
                if (!a || !b) {
                    kiln_context_free(a);
                    kiln_context_free(b);
                    continue;
                }
                batch_buf bb;
                prompts_batch(base, &bb);
                KT_CHECK_OK(decode_bb(a, &bb));
                KT_CHECK_OK(decode_bb(b, &bb));
                for (uint32_t i = 0; i < bb.n; i++)
                    if (!rows_equal(a, b, (int32_t)i, nv, what)) break;
                int32_t last[N_PROMPTS];
                last_rows_of(&bb, last);
                for (int step = 0; step < 4; step++) step_both(a, b, nv, last, N_PROMPTS, what);
                printf("  %s: %u rows + 4 steps agree\n", what, bb.n);
                kiln_context_free(a);
                kiln_context_free(b);
            }
            kiln_model_free(sm);
        }
        kiln_model_free(base);
    }
}

/* ---- lifecycle ---- */

static char *tmp_path(const char *name) {
    static char p[256];
    const char *d = getenv("TMPDIR");
    snprintf(p, sizeof p, "%s/kiln-split-%d-%s", d && *d ? d : "/tmp", (int)getpid(), name);
    return p;
}

static void test_lifecycle(void) {
    if (!n_models) KT_SKIP("no model (../shared not found)");
    const char *path = model_paths[0];
    kiln_model *base = load_base(path, 0);
    if (!base) return;
    char spec[256];
    make_spec(spec, sizeof spec, n_layer_of(base), 2);
    /* copied weights (not a zero-copy wrap) so level 2 releases them */
    kiln_model *sm = load_split(path, spec, KILN_MODEL_NO_MMAP);
    if (!sm) {
        kiln_model_free(base);
        return;
    }
    const int nv = kiln_model_n_vocab(base);
    kiln_context *a = make_ctx(base, 512), *b = make_ctx(sm, 512);
    batch_buf bb;
    prompts_batch(base, &bb);
    KT_CHECK_OK(decode_bb(a, &bb));
    KT_CHECK_OK(decode_bb(b, &bb));
    int32_t last[N_PROMPTS];
    last_rows_of(&bb, last);

    /* level 1: the KV cache of every device to the host and back */
    KT_CHECK_OK(kiln_context_suspend(b, KILN_SUSPEND_KV));
    KT_CHECK(b->kv->k[0] == NULL && b->kv->k[b->kv->n_layer - 1] == NULL);
    step_both(a, b, nv, last, N_PROMPTS, "after suspend level 1");
    /* level 2: every split's weights are released, and come back */
    KT_CHECK_OK(kiln_context_suspend(b, KILN_SUSPEND_WEIGHTS));
    for (uint32_t s = 0; s < sm->n_splits; s++) KT_CHECK(sm->splits[s].weights == NULL);
    KT_CHECK(sm->layers[sm->hp.n_layer - 1].wq.buf == NULL && sm->output.buf == NULL);
    KT_CHECK_OK(kiln_context_resume(b));
    for (uint32_t s = 0; s < sm->n_splits; s++) KT_CHECK(sm->splits[s].weights != NULL);
    KT_CHECK(sm->output.buf == sm->splits[sm->n_splits - 1].weights);
    step_both(a, b, nv, last, N_PROMPTS, "after suspend level 2");

    /* offload/restore */
    kiln_kv *kb = kiln_context_kv(b);
    KT_CHECK_OK(kiln_kv_seq_offload(kb, 1));
    KT_CHECK_OK(kiln_kv_seq_offload(kb, 2));
    KT_CHECK_OK(kiln_kv_seq_restore(kb, 1));
    step_both(a, b, nv, last, N_PROMPTS, "after offload/restore");

    /* export from the split context into a fresh unsplit one: the same
     * fingerprint, and the continuation matches */
    size_t n_exp = 0;
    KT_CHECK_OK(kiln_kv_seq_export(kb, 0, NULL, 0, &n_exp));
    void *exp = malloc(n_exp);
    KT_CHECK_OK(kiln_kv_seq_export(kb, 0, exp, n_exp, &n_exp));
    kiln_context *u = make_ctx(base, 512);
    KT_CHECK_OK(kiln_kv_seq_import(kiln_context_kv(u), 0, exp, n_exp));
    /* and a save/load round trip into the split context's sequence 3 */
    const char *file = tmp_path("seq0.kv");
    KT_CHECK_OK(kiln_kv_seq_save(kiln_context_kv(a), 0, file));
    KT_CHECK_OK(kiln_kv_seq_load(kb, 3, file));
    unlink(file);
    free(exp);
    int32_t tok = argmax(kiln_context_logits(a, last[0]), nv);
    int32_t pos = kiln_kv_seq_pos_max(kiln_context_kv(a), 0) + 1;
    KT_CHECK(kiln_kv_seq_pos_max(kiln_context_kv(u), 0) + 1 == pos);
    KT_CHECK(kiln_kv_seq_pos_max(kb, 3) + 1 == pos);
    kiln_batch one;
    kiln_batch_init(&one);
    int32_t seq3 = 3;
    int8_t want = 1;
    one.n_tokens = 1;
    one.tokens = &tok;
    one.logits = &want;
    KT_CHECK_OK(kiln_decode(u, &one));
    one.seq_id = &seq3;
    KT_CHECK_OK(kiln_decode(b, &one));
    rows_equal(u, b, 0, nv, "imported/loaded sequence");

    /* the pool statistics add up every device's pool; a purge empties all */
    kiln_pool_stats ps;
    kiln_pool_stats_init(&ps);
    KT_CHECK_OK(kiln_context_pool_stats(b, &ps));
    KT_CHECK(ps.n_allocs >= sm->n_splits && ps.bytes_in_use == 0);
    KT_CHECK_OK(kiln_context_pool_purge(b));
    KT_CHECK_OK(kiln_context_pool_stats(b, &ps));
    KT_CHECK(ps.bytes_cached == 0);
    KT_CHECK_OK(kiln_context_pool_set_cap(b, 1 << 20));
    KT_CHECK_OK(kiln_context_pool_stats(b, &ps));
    KT_CHECK(ps.cap == 1 << 20);

    /* the memory report has the split's KV cache and weights */
    kiln_memory_entry rows[256];
    size_t nr = 0;
    KT_CHECK_OK(kiln_memory_report_get(KILN_MEMORY_BY_OWNER, rows, 256, sizeof rows[0], &nr));
    uint64_t kv_bytes = 0;
    for (size_t i = 0; i < nr && i < 256; i++)
        if (rows[i].owner_handle == (uint64_t)(uintptr_t)b && rows[i].purpose == KILN_MEM_KV &&
            rows[i].space == KILN_MEM_DEVICE)
            kv_bytes += rows[i].bytes;
    kiln_kv_stats ks;
    kiln_kv_stats_init(&ks);
    KT_CHECK_OK(kiln_kv_get_stats(kb, &ks));
    KT_CHECKF(kv_bytes == ks.bytes_device, "report: %llu KV bytes, stats %llu", (unsigned long long)kv_bytes,
              (unsigned long long)ks.bytes_device);

    kiln_context_free(u);
    kiln_context_free(a);
    kiln_context_free(b);
    kiln_model_free(sm);
    kiln_model_free(base);
}

/* ---- a draft on a split target ---- */

static void test_draft(void) {
    const char *tp = kt_shared("models/tiny-target-f16.gguf"), *dp = kt_shared("models/tiny-draft-f16.gguf");
    if (!tp) tp = kt_shared("models/tiny-target-q4_k_m.gguf"); /* a GPU machine with a few models */
    if (!tp || !dp) KT_SKIP("tiny-target / tiny-draft-f16 not found");
    kiln_model *base = load_base(tp, 0);
    if (!base) return;
    char spec[256];
    make_spec(spec, sizeof spec, n_layer_of(base), 3);
    kiln_model *sm = load_split(tp, spec, 0);
    kiln_model *dm = load_base(dp, 0);
    if (!sm || !dm) goto out;
    int32_t prompt[64], ref[24], got[24];
    size_t np = 0, nref = 0, ngot = 0;
    KT_CHECK_OK(kiln_tokenize(base, prompts[1], strlen(prompts[1]), KILN_TOKENIZE_ADD_BOS, prompt, 64, &np));
    {
        /* greedy on the unsplit target alone */
        kiln_context *c = make_ctx(base, 512);
        kiln_batch b;
        kiln_batch_init(&b);
        b.n_tokens = (uint32_t)np;
        b.tokens = prompt;
        KT_CHECK_OK(kiln_decode(c, &b));
        for (nref = 0; nref < 24; nref++) {
            int32_t t = argmax(kiln_context_logits(c, -1), kiln_model_n_vocab(base));
            if (kiln_token_is_eog(base, t)) break;
            ref[nref] = t;
            b.n_tokens = 1;
            b.tokens = &ref[nref];
            KT_CHECK_OK(kiln_decode(c, &b));
        }
        kiln_context_free(c);
    }
    kiln_context *tc = make_ctx(sm, 512);
    kiln_draft *d = NULL;
    KT_CHECK_OK(kiln_draft_create(tc, dm, NULL, &d));
    KT_CHECK_OK(kiln_draft_generate(d, prompt, np, 24, NULL, got, 24, &ngot));
    KT_CHECK(tol > 0 || (ngot == nref && memcmp(got, ref, nref * sizeof(int32_t)) == 0));
    /* suspend follows into the draft; the target freed first */
    KT_CHECK_OK(kiln_context_suspend(tc, KILN_SUSPEND_WEIGHTS));
    KT_CHECK_OK(kiln_draft_reset(d));
    KT_CHECK_OK(kiln_draft_generate(d, prompt, np, 8, NULL, got, 24, &ngot));
    kiln_context_free(tc);
    kiln_draft_free(d);
out:
    kiln_model_free(dm);
    kiln_model_free(sm);
    kiln_model_free(base);
}

/* ---- free orders ---- */

static void test_free_orders(void) {
    if (!n_models) KT_SKIP("no model (../shared not found)");
    const char *path = model_paths[0];
    kiln_model *base = load_base(path, 0);
    if (!base) return;
    char spec[256];
    make_spec(spec, sizeof spec, n_layer_of(base), 1);
    kiln_model_free(base);
    batch_buf bb;
    for (int order = 0; order < 3; order++) {
        kiln_model *m = load_split(path, spec, order == 2 ? KILN_MODEL_NO_MMAP : 0);
        if (!m) return;
        kiln_context *a = make_ctx(m, 7), *b = make_ctx(m, 512);
        prompts_batch(m, &bb);
        KT_CHECK_OK(decode_bb(a, &bb));
        if (order == 0) { /* model first: the contexts keep it */
            kiln_model_free(m);
            KT_CHECK_OK(decode_bb(b, &bb));
            kiln_context_free(a);
            kiln_context_free(b);
        } else if (order == 1) {
            kiln_context_free(b);
            kiln_model_free(m);
            kiln_context_free(a);
        } else { /* suspended contexts freed */
            KT_CHECK_OK(kiln_context_suspend(a, KILN_SUSPEND_WEIGHTS));
            KT_CHECK_OK(kiln_context_suspend(b, KILN_SUSPEND_KV));
            kiln_context_free(a);
            kiln_model_free(m);
            kiln_context_free(b);
        }
    }
}

/* ---- bad specs ---- */

static void test_bad_specs(void) {
    const char *path = n_models ? model_paths[0] : NULL;
    if (!path) KT_SKIP("no model (../shared not found)");
    kiln_model *base = load_base(path, 0);
    if (!base) return;
    const uint32_t nl = n_layer_of(base);
    kiln_model_free(base);
    char many[512] = "", over[64], under[64], exact[64], share0[64];
    size_t off = 0;
    for (int i = 0; i <= KILN_SPLIT_MAX; i++) off += (size_t)snprintf(many + off, sizeof many - off, "%scpu:0", i ? "," : "");
    snprintf(over, sizeof over, "cpu:0:%u,cpu:0:1", nl);
    snprintf(under, sizeof under, "cpu:0:1,cpu:0:%u", nl - 2);
    snprintf(exact, sizeof exact, "cpu:0:1,cpu:0:%u", nl - 1);
    snprintf(share0, sizeof share0, "cpu:0:%u,cpu:0", nl);
    struct {
        const char *spec;
        kiln_status want;
    } cases[] = {
        {"cpu", KILN_E_INVALID_ARG},         {"cpu:", KILN_E_INVALID_ARG},
        {":0", KILN_E_INVALID_ARG},          {"cpu:x", KILN_E_INVALID_ARG},
        {"cpu:0:", KILN_E_INVALID_ARG},      {"cpu:0:0,cpu:0", KILN_E_INVALID_ARG},
        {"cpu:-1,cpu:0", KILN_E_INVALID_ARG}, {"cpu:0,,cpu:0", KILN_E_INVALID_ARG},
        {"cpu:0,", KILN_E_INVALID_ARG},      {"cpu:0:1:2", KILN_E_INVALID_ARG},
        {many, KILN_E_INVALID_ARG},          {over, KILN_E_INVALID_ARG},
        {under, KILN_E_INVALID_ARG},         {share0, KILN_E_INVALID_ARG},
        {"nosuchbackend:0,cpu:0", KILN_E_NOT_FOUND},
        {"cpu:0,cpu:7", KILN_E_NOT_FOUND},
        {"cpu:0:99999999999,cpu:0", KILN_E_INVALID_ARG},
    };
    const uint64_t live0 = kiln_alloc_live_bytes();
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        kiln_model_params p;
        kiln_model_params_init(&p);
        p.split = cases[i].spec;
        kiln_model *m = (kiln_model *)1;
        kiln_status st = kiln_model_load(path, &p, &m);
        KT_CHECKF(st == cases[i].want && m == NULL && kiln_last_error()[0],
                  "spec '%s': %d (%s), expected %d", cases[i].spec, st, kiln_last_error(), cases[i].want);
        if (st == KILN_OK) kiln_model_free(m);
        KT_CHECKF(kiln_alloc_live_bytes() == live0, "spec '%s' leaked", cases[i].spec);
    }
    /* more entries than layers */
    if (nl < KILN_SPLIT_MAX) {
        char lots[512];
        off = 0;
        for (uint32_t i = 0; i <= nl; i++) off += (size_t)snprintf(lots + off, sizeof lots - off, "%scpu:0", i ? "," : "");
        kiln_model_params p;
        kiln_model_params_init(&p);
        p.split = lots;
        kiln_model *m = NULL;
        KT_CHECK(kiln_model_load(path, &p, &m) == KILN_E_INVALID_ARG && !m);
    }
    /* good ones: one entry, exact counts, an empty string (unsplit) */
    const char *good[] = {"cpu:0", exact, ""};
    for (size_t i = 0; i < KILN_ARRAY_LEN(good); i++) {
        kiln_model *m = load_split(path, good[i], 0);
        if (m) KT_CHECK(m->n_splits == (i == 1 ? 2u : 1u));
        kiln_model_free(m);
    }
    KT_CHECK(kiln_alloc_live_bytes() == live0);
}

/* ---- host allocation failures ---- */

/* Loads with the n-th allocation failing; KILN_OK or an out-of-memory
 * status, nothing leaked. *made: allocations the load made. */
static kiln_status load_failing(const char *path, const kiln_model_params *p, uint64_t n, uint64_t *made,
                                kiln_model **out) {
    kiln_test_fail_alloc_after(n);
    kiln_status st = kiln_model_load(path, p, out);
    *made = kiln_test_fail_alloc_after(0);
    return st;
}

static void test_alloc_failures(void) {
    if (!n_models) KT_SKIP("no model (../shared not found)");
    const char *path = model_paths[n_models - 1]; /* the smallest */
    kiln_model *base = load_base(path, 0);
    if (!base) return;
    char spec[256];
    make_spec(spec, sizeof spec, n_layer_of(base), 1);
    kiln_model_free(base);
    kiln_model_params p;
    kiln_model_params_init(&p);
    p.split = spec;
    p.flags = KILN_MODEL_NO_MMAP; /* the weight copies are host allocations on the CPU backend */
    const uint64_t live0 = kiln_alloc_live_bytes();
    /* model load: the split's allocations come last (after the tokenizer's
     * many), so every one of the last 200 fails in turn, and a sample of
     * the earlier ones */
    uint64_t total = 0;
    kiln_model *m = NULL;
    KT_CHECK_OK(load_failing(path, &p, UINT64_MAX / 2, &total, &m));
    kiln_model_free(m);
    int points = 0;
    for (uint64_t n = 1; n <= total; n += n + 200 < total ? 97 : 1) {
        uint64_t made;
        m = NULL;
        kiln_status st = load_failing(path, &p, n, &made, &m);
        KT_CHECKF(st == KILN_E_OOM_HOST && !m, "load, allocation %llu of %llu: %d (%s)", (unsigned long long)n,
                  (unsigned long long)total, st, kiln_last_error());
        kiln_model_free(m);
        KT_CHECKF(kiln_alloc_live_bytes() == live0, "load leaked after failing allocation %llu",
                  (unsigned long long)n);
        points++;
        if (kt_case_failed) return;
    }
    /* context create, a decode, suspend and resume at level 2: every allocation */
    m = load_split(path, spec, KILN_MODEL_NO_MMAP);
    if (!m) return;
    const uint64_t live1 = kiln_alloc_live_bytes();
    for (uint64_t n = 1; n < 100000; n++) {
        kiln_test_fail_alloc_after(n);
        kiln_context *c = NULL;
        kiln_status st = kiln_context_create(m, NULL, &c);
        int32_t t[3] = {1, 2, 3};
        kiln_batch b;
        kiln_batch_init(&b);
        b.n_tokens = 3;
        b.tokens = t;
        if (st == KILN_OK) st = kiln_decode(c, &b);
        if (st == KILN_OK) st = kiln_context_suspend(c, KILN_SUSPEND_WEIGHTS);
        if (st == KILN_OK) st = kiln_context_resume(c);
        uint64_t made = kiln_test_fail_alloc_after(0);
        if (c) { /* the context stays usable after any failure */
            KT_CHECK_OK(kiln_context_resume(c));
            b.n_tokens = 1;
            KT_CHECK_OK(kiln_decode(c, &b));
        }
        kiln_context_free(c);
        KT_CHECKF(kiln_alloc_live_bytes() == live1, "create/decode leaked after failing allocation %llu",
                  (unsigned long long)n);
        if (made < n) break; /* nothing left to fail */
        KT_CHECKF(st == KILN_E_OOM_HOST, "create/decode, allocation %llu: %d (%s)", (unsigned long long)n, st,
                  kiln_last_error());
        points++;
        if (kt_case_failed) break;
    }
    kiln_model_free(m);
    KT_CHECK(kiln_alloc_live_bytes() == live0);
    printf("  %d allocation failure points\n", points);
}

int main(void) {
    setup();
    find_models();
    if (n_dev < 2) {
        printf("KILN_SPLIT_DEVICES needs two or more BACKEND:DEVICE entries\n");
        return 1;
    }
    KT_RUN(test_logits);
    KT_RUN(test_lifecycle);
    KT_RUN(test_draft);
    KT_RUN(test_free_orders);
    bool all_cpu = strcmp(base_backend, "cpu") == 0;
    for (int i = 0; i < n_dev; i++) all_cpu &= strcmp(dev_backend[i], "cpu") == 0;
    if (all_cpu) { /* about the CPU spelling and host allocations */
        KT_RUN(test_bad_specs);
        KT_RUN(test_alloc_failures);
    }
    return kt_finish();
}
