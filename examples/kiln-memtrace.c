/*
 * kiln-memtrace - records kiln's memory timeline as CSV: every allocation
 * and free the library makes while it loads a model, decodes a prompt,
 * generates, offloads and restores a second sequence, suspends and resumes
 * the context, and frees everything.
 *
 *   kiln-memtrace -m FILE [-o trace.csv] [-p N_PROMPT] [-n N_GEN]
 *                 [-t THREADS] [--backend NAME] [--device I]
 *
 * One CSV row per event (kiln_memory_set_callback): seq, time_ms, phase,
 * sign (+1/-1), space (host/device), device, owner, purpose, size, the
 * live bytes of that space and device after it (bytes_live), the latest
 * bytes_live of the host heap and of the device (host_live, device_live:
 * one device is assumed), and the live host-heap bytes of each purpose
 * (columns host_<purpose>), which the example keeps by adding up the
 * events. docs/memtrace.gp plots the file
 * as a PNG. A summary and the text report go to stderr.
 *
 * Uses include/kiln.h only, as any application would.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static const char *const phases[] = {"load", "create", "prompt", "generate", "offload", "restore",
                                     "suspend", "resume", "free"};

typedef struct trace {
    FILE *csv;
    int phase;
    uint64_t t0_ns;
    int64_t host_live[KILN_MEM_N_PURPOSES];
    uint64_t events, peak_host, peak_device, host_now, device_now;
} trace;

/* The callback: quick, no kiln calls (it runs inside kiln's allocator). */
static void on_event(const kiln_memory_event *ev, void *user) {
    trace *t = user;
    if (!t->t0_ns) t->t0_ns = ev->time_ns;
    if (ev->space == KILN_MEM_HOST && ev->purpose < KILN_MEM_N_PURPOSES)
        t->host_live[ev->purpose] += ev->sign * (int64_t)ev->size;
    if (ev->space == KILN_MEM_HOST) t->host_now = ev->bytes_live;
    else t->device_now = ev->bytes_live;
    if (ev->space == KILN_MEM_HOST && ev->bytes_live > t->peak_host) t->peak_host = ev->bytes_live;
    if (ev->space == KILN_MEM_DEVICE && ev->bytes_live > t->peak_device) t->peak_device = ev->bytes_live;
    t->events++;
    char dev[32] = "host";
    if (ev->space == KILN_MEM_DEVICE) snprintf(dev, sizeof dev, "%s:%d", ev->backend, (int)ev->device);
    fprintf(t->csv, "%llu,%.3f,%s,%d,%s,%s,%s#%llu,%s,%llu,%llu,%llu,%llu", (unsigned long long)ev->seq,
            (double)(ev->time_ns - t->t0_ns) / 1e6, phases[t->phase], (int)ev->sign,
            ev->space == KILN_MEM_HOST ? "host" : "device", dev, kiln_memory_owner_str(ev->owner_kind),
            (unsigned long long)ev->owner_id, kiln_memory_purpose_str(ev->purpose), (unsigned long long)ev->size,
            (unsigned long long)ev->bytes_live, (unsigned long long)t->host_now,
            (unsigned long long)t->device_now);
    for (uint32_t p = 0; p < KILN_MEM_N_PURPOSES; p++) fprintf(t->csv, ",%lld", (long long)t->host_live[p]);
    fputc('\n', t->csv);
}

static int fail(const char *what, kiln_status st) {
    fprintf(stderr, "kiln-memtrace: %s: %s: %s\n", what, kiln_status_str(st), kiln_last_error());
    return 1;
}

static kiln_status decode(kiln_context *ctx, const int32_t *toks, uint32_t n, int32_t seq) {
    int32_t *sid = malloc(n * sizeof *sid);
    if (!sid) return KILN_E_OOM_HOST;
    for (uint32_t i = 0; i < n; i++) sid[i] = seq;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = toks;
    b.seq_id = sid;
    kiln_status st = kiln_decode(ctx, &b);
    free(sid);
    return st;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *out = "memtrace.csv", *backend = NULL;
    long n_prompt = 200, n_gen = 64, threads = 0, device = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            printf("usage: kiln-memtrace -m FILE [-o trace.csv] [-p N_PROMPT] [-n N_GEN] [-t THREADS] "
                   "[--backend NAME] [--device I]\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "kiln-memtrace: missing value for '%s'\n", o);
            return 2;
        }
        i++;
        if (!strcmp(o, "-m")) model_path = v;
        else if (!strcmp(o, "-o")) out = v;
        else if (!strcmp(o, "-p")) n_prompt = strtol(v, NULL, 10);
        else if (!strcmp(o, "-n")) n_gen = strtol(v, NULL, 10);
        else if (!strcmp(o, "-t")) threads = strtol(v, NULL, 10);
        else if (!strcmp(o, "--backend")) backend = v;
        else if (!strcmp(o, "--device")) device = strtol(v, NULL, 10);
        else {
            fprintf(stderr, "kiln-memtrace: unknown option '%s'\n", o);
            return 2;
        }
    }
    if (!model_path || n_prompt < 1 || n_prompt > 4096 || n_gen < 0 || n_gen > 4096) {
        fprintf(stderr, "kiln-memtrace: need -m FILE, 1 <= -p <= 4096, 0 <= -n <= 4096\n");
        return 2;
    }
    trace t;
    memset(&t, 0, sizeof t);
    t.csv = fopen(out, "w");
    if (!t.csv) {
        fprintf(stderr, "kiln-memtrace: cannot create '%s'\n", out);
        return 1;
    }
    fprintf(t.csv, "seq,time_ms,phase,sign,space,device,owner,purpose,size,bytes_live,host_live,device_live");
    for (uint32_t p = 0; p < KILN_MEM_N_PURPOSES; p++) fprintf(t.csv, ",host_%s", kiln_memory_purpose_str(p));
    fputc('\n', t.csv);
    kiln_memory_set_callback(on_event, &t);

    int rc = 1;
    kiln_model *model = NULL;
    kiln_context *ctx = NULL;
    int32_t *toks = NULL;
    kiln_status st;
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = backend;
    mp.device = (int32_t)device;
    t.phase = 0;
    if ((st = kiln_model_load(model_path, &mp, &model))) {
        rc = fail("load", st);
        goto done;
    }
    t.phase = 1;
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = (uint32_t)(2 * (n_prompt + n_gen) + 64);
    cp.n_ubatch = 64;
    cp.n_seq_max = 2;
    if (threads > 0) cp.n_threads = (int32_t)threads;
    if ((st = kiln_context_create(model, &cp, &ctx))) {
        rc = fail("context", st);
        goto done;
    }
    uint32_t n_vocab = (uint32_t)kiln_model_n_vocab(model), n_tok = (uint32_t)(n_prompt + n_gen);
    toks = malloc(n_tok * sizeof *toks);
    if (!toks) goto done;
    for (uint32_t i = 0; i < n_tok; i++) toks[i] = (int32_t)((i * 7919u + 13u) % (n_vocab - 1) + 1);
    t.phase = 2; /* two sequences' prompts (the second one will be offloaded) */
    if ((st = decode(ctx, toks, (uint32_t)n_prompt, 0)) || (st = decode(ctx, toks, (uint32_t)n_prompt, 1))) {
        rc = fail("prompt", st);
        goto done;
    }
    t.phase = 3;
    for (uint32_t i = 0; i < (uint32_t)n_gen; i++)
        if ((st = decode(ctx, toks + n_prompt + i, 1, 0))) {
            rc = fail("generate", st);
            goto done;
        }
    t.phase = 4;
    if ((st = kiln_kv_seq_offload(kiln_context_kv(ctx), 1))) {
        rc = fail("offload", st);
        goto done;
    }
    t.phase = 5;
    if ((st = kiln_kv_seq_restore(kiln_context_kv(ctx), 1))) {
        rc = fail("restore", st);
        goto done;
    }
    t.phase = 6;
    if ((st = kiln_context_suspend(ctx, KILN_SUSPEND_WEIGHTS))) {
        rc = fail("suspend", st);
        goto done;
    }
    t.phase = 7;
    if ((st = kiln_context_resume(ctx)) || (st = decode(ctx, toks, 1, 1))) {
        rc = fail("resume", st);
        goto done;
    }
    fprintf(stderr, "kiln-memtrace: before free:\n");
    kiln_memory_report(stderr, 0);
    rc = 0;
done:
    t.phase = 8;
    kiln_context_free(ctx);
    kiln_model_free(model);
    kiln_memory_set_callback(NULL, NULL);
    free(toks);
    fclose(t.csv);
    fprintf(stderr, "kiln-memtrace: %llu events to %s; peak host heap %.2f MiB, peak device buffers %.2f MiB\n",
            (unsigned long long)t.events, out, (double)t.peak_host / 1048576.0,
            (double)t.peak_device / 1048576.0);
    return rc;
}
