/*
 * kiln-bench - prompt-processing and generation throughput, in the manner
 * of llama-bench.
 *
 *   kiln-bench [-m FILE ...] [-p 512] [-n 128] [-r 5] [-t THREADS]
 *              [--backend NAME] [--device I] [--split SPEC] [-ub N] [--memory]
 *
 * For each model (repeat -m) and thread count (-t accepts a comma list, as
 * do -p and -n; 0 skips that test):
 *   ppP: decode one batch of P random tokens into an empty KV cache;
 *   tgN: decode N random tokens one at a time into an empty KV cache.
 * Each test runs once unmeasured (warm-up) and then r times; the table gives
 * tokens per second as mean ± sample standard deviation over the r runs.
 * Results go to stdout as a markdown table, progress and errors to stderr.
 * With --memory, each model's run ends with a second table: the peak bytes
 * per purpose on the host heap and each device (kiln_memory_report_get,
 * view KILN_MEMORY_BY_PURPOSE; high-water marks since the process began).
 * Exit status: 0 success, 1 a model or test failed, 2 bad usage.
 *
 * Uses include/kiln.h only.
 */
#define _POSIX_C_SOURCE 200809L /* readlink, access, getpid, clock_gettime */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kiln.h"

#define DEFAULT_MODEL_NAME "tiny-target-q4_k_m.gguf"
#define MAX_LIST 16

typedef struct int_list {
    int n;
    long v[MAX_LIST];
} int_list;

typedef struct bench_args {
    const char **models;
    int n_models;
    int_list pp, tg, threads;
    int reps;
    const char *backend;
    int32_t device;
    const char *split;
    uint32_t n_ubatch;
    uint32_t depth;  /* -d: tokens already in the cache of each sequence before a test */
    uint32_t n_seq;  /* -s: sequences decoded together in tg tests */
    int memory;
} bench_args;

static const bench_args *g_args; /* depth and sequences for run_once */

static void usage(FILE *f) {
    fprintf(f,
        "usage: kiln-bench [options]\n"
        "  -m FILE          model; repeat for several (default: the bundled models/" DEFAULT_MODEL_NAME ")\n"
        "  -p N[,N...]      prompt-processing batch sizes, 0 = skip (default 512)\n"
        "  -n N[,N...]      generated tokens, 0 = skip (default 128)\n"
        "  -r N             measured repetitions (default 5)\n"
        "  -t N[,N...]      CPU threads (default: number of cores)\n"
        "  --backend NAME   cpu (default), cuda, vulkan\n"
        "  --device I       device index within the backend (default 0)\n"
        "  --split SPEC     layers across devices, BACKEND:DEVICE[:N_LAYERS],... in layer order\n"
        "                   (e.g. cuda:0:16,cuda:1); overrides --backend/--device\n"
        "  -ub N            max tokens per forward pass (default 512)\n"
        "  -d N             context depth: N tokens already in the cache before each test (default 0)\n"
        "  -s N             tg tests decode N sequences together, one token each per step (default 1)\n"
        "  --memory         after each model, print the peak memory per purpose\n"
        "  --help           this text\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "kiln-bench: %s expects an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

/* "512,1024" -> {512, 1024} */
static int parse_list(const char *opt, const char *s, long lo, long hi, int_list *out) {
    out->n = 0;
    char item[64];
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len == 0 || len >= sizeof item || out->n == MAX_LIST) {
            fprintf(stderr, "kiln-bench: bad list for %s (at most %d integers separated by commas)\n",
                    opt, MAX_LIST);
            return 0;
        }
        memcpy(item, s, len);
        item[len] = '\0';
        if (!parse_long(opt, item, lo, hi, &out->v[out->n])) return 0;
        out->n++;
        s += len + (comma ? 1 : 0);
        if (comma && !*s) {
            fprintf(stderr, "kiln-bench: bad list for %s: trailing comma\n", opt);
            return 0;
        }
    }
    if (out->n == 0) {
        fprintf(stderr, "kiln-bench: empty list for %s\n", opt);
        return 0;
    }
    return 1;
}

static int parse_args(int argc, char **argv, bench_args *a, int *done) {
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            *done = 1;
            return 0;
        }
        if (!strcmp(o, "--memory")) {
            a->memory = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kiln-bench: unknown option or missing value: '%s'\n", o);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long n;
        if (!strcmp(o, "-m")) a->models[a->n_models++] = v;
        else if (!strcmp(o, "-p")) {
            if (!parse_list(o, v, 0, 1 << 20, &a->pp)) return 2;
        } else if (!strcmp(o, "-n")) {
            if (!parse_list(o, v, 0, 1 << 20, &a->tg)) return 2;
        } else if (!strcmp(o, "-t")) {
            if (!parse_list(o, v, 1, 4096, &a->threads)) return 2;
        } else if (!strcmp(o, "-r")) {
            if (!parse_long(o, v, 1, 100000, &n)) return 2;
            a->reps = (int)n;
        } else if (!strcmp(o, "--backend")) a->backend = v;
        else if (!strcmp(o, "--split")) a->split = v;
        else if (!strcmp(o, "--device")) {
            if (!parse_long(o, v, 0, INT32_MAX, &n)) return 2;
            a->device = (int32_t)n;
        } else if (!strcmp(o, "-d")) {
            if (!parse_long(o, v, 0, 1 << 20, &n)) return 2;
            a->depth = (uint32_t)n;
        } else if (!strcmp(o, "-s")) {
            if (!parse_long(o, v, 1, 256, &n)) return 2;
            a->n_seq = (uint32_t)n;
        } else if (!strcmp(o, "-ub")) {
            if (!parse_long(o, v, 1, 1 << 20, &n)) return 2;
            a->n_ubatch = (uint32_t)n;
        } else {
            fprintf(stderr, "kiln-bench: unknown option '%s'\n", o);
            usage(stderr);
            return 2;
        }
    }
    return 0;
}

/* Same search as kiln-run: cwd, next to the executable, KILN_MODEL_DIR. */
static const char *find_default_model(char *buf, size_t cap) {
    static const char *rel = "models/" DEFAULT_MODEL_NAME;
    if (access(rel, R_OK) == 0) {
        snprintf(buf, cap, "%s", rel);
        return buf;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            static const char *ups[] = {"/../../models/", "/../../../models/",
                                        "/../share/kiln/models/"};
            for (size_t i = 0; i < sizeof ups / sizeof ups[0]; i++) {
                int w = snprintf(buf, cap, "%s%s%s", exe, ups[i], DEFAULT_MODEL_NAME);
                if (w < 0 || (size_t)w >= cap) continue; /* path too long */
                if (access(buf, R_OK) == 0) return buf;
            }
        }
    }
#ifdef KILN_MODEL_DIR
    snprintf(buf, cap, "%s/%s", KILN_MODEL_DIR, DEFAULT_MODEL_NAME);
    if (access(buf, R_OK) == 0) return buf;
#endif
    return NULL;
}

/* ---- measurements -------------------------------------------------------- */

/* splitmix64: reproducible random token ids. */
static uint64_t rng_next(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void report_failure(const char *what, kiln_context *ctx, kiln_status st) {
    fprintf(stderr, "kiln-bench: %s failed: %s: %s\n", what, kiln_status_str(st),
            ctx ? kiln_context_last_error(ctx) : kiln_last_error());
}

/* One timed run of a test into an emptied KV cache: batch == 1 decodes
 * n_tokens one at a time (tg), else all at once (pp). Reading the logits
 * afterwards makes sure the work has finished on any backend. */
static kiln_status run_once(kiln_context *ctx, const int32_t *toks, uint32_t n_tokens, int one_by_one,
                            double *seconds) {
    kiln_status st = kiln_kv_clear(kiln_context_kv(ctx));
    if (st != KILN_OK) return st;
    const uint32_t ns = one_by_one && g_args->n_seq > 1 ? g_args->n_seq : 1, depth = g_args->depth;
    int32_t seq[256];
    kiln_batch b;
    kiln_batch_init(&b);
    /* the context depth (not timed): each sequence gets `depth` tokens */
    for (uint32_t s = 0; s < ns && depth > 0; s++) {
        for (uint32_t done = 0; done < depth;) {
            uint32_t n = depth - done < 512 ? depth - done : 512;
            int32_t *sid = malloc(n * sizeof *sid);
            if (!sid) return KILN_E_OOM_HOST;
            for (uint32_t i = 0; i < n; i++) sid[i] = (int32_t)s;
            kiln_batch_init(&b);
            b.n_tokens = n;
            b.tokens = toks;
            b.seq_id = sid;
            st = kiln_decode(ctx, &b);
            free(sid);
            if (st != KILN_OK) return st;
            done += n;
        }
    }
    if (depth > 0) (void)kiln_context_logits(ctx, -1); /* waits for the device */
    kiln_batch_init(&b);
    double t0 = now_s();
    if (one_by_one) {
        int32_t step[256];
        for (uint32_t s = 0; s < ns; s++) seq[s] = (int32_t)s;
        for (uint32_t i = 0; i < n_tokens; i++) {
            for (uint32_t s = 0; s < ns; s++) step[s] = toks[(i + s) % n_tokens];
            b.n_tokens = ns;
            b.tokens = step;
            b.seq_id = ns > 1 ? seq : NULL;
            st = kiln_decode(ctx, &b);
            if (st != KILN_OK) return st;
        }
    } else {
        b.n_tokens = n_tokens;
        b.tokens = toks;
        st = kiln_decode(ctx, &b);
        if (st != KILN_OK) return st;
    }
    volatile float sink = kiln_context_logits(ctx, -1) ? kiln_context_logits(ctx, -1)[0] : 0.0f;
    (void)sink;
    *seconds = now_s() - t0;
    return KILN_OK;
}

static void format_size(uint64_t bytes, char *buf, size_t cap) {
    double b = (double)bytes;
    if (b >= 1024.0 * 1024 * 1024) snprintf(buf, cap, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else snprintf(buf, cap, "%.2f MiB", b / (1024.0 * 1024));
}

static void format_params(uint64_t n, char *buf, size_t cap) {
    double v = (double)n;
    if (v >= 1e9) snprintf(buf, cap, "%.2f B", v / 1e9);
    else if (v >= 1e6) snprintf(buf, cap, "%.2f M", v / 1e6);
    else snprintf(buf, cap, "%.2f K", v / 1e3);
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Runs warm-up + reps of one test and prints its table row. */
static int bench_test(kiln_context *ctx, const int32_t *toks, uint32_t n_tokens, int one_by_one,
                      int reps, const char *row_prefix) {
    char name[64];
    const uint32_t ns = one_by_one && g_args->n_seq > 1 ? g_args->n_seq : 1;
    int nl = snprintf(name, sizeof name, "%s%u", one_by_one ? "tg" : "pp", (unsigned)n_tokens);
    if (ns > 1) nl += snprintf(name + nl, sizeof name - (size_t)nl, " x%u seq", (unsigned)ns);
    if (g_args->depth) snprintf(name + nl, sizeof name - (size_t)nl, " @ d%u", (unsigned)g_args->depth);
    double secs;
    kiln_status st = run_once(ctx, toks, n_tokens, one_by_one, &secs);
    if (st != KILN_OK) {
        report_failure(name, ctx, st);
        return 0;
    }
    double *tps = malloc((size_t)reps * sizeof *tps);
    if (!tps) {
        fprintf(stderr, "kiln-bench: out of memory\n");
        return 0;
    }
    double sum = 0.0;
    for (int r = 0; r < reps; r++) {
        st = run_once(ctx, toks, n_tokens, one_by_one, &secs);
        if (st != KILN_OK) {
            report_failure(name, ctx, st);
            free(tps);
            return 0;
        }
        tps[r] = secs > 0 ? (double)n_tokens * ns / secs : 0.0;
        sum += tps[r];
    }
    double mean = sum / reps, var = 0.0;
    for (int r = 0; r < reps; r++) var += (tps[r] - mean) * (tps[r] - mean);
    double sd = reps > 1 ? sqrt(var / (reps - 1)) : 0.0;
    free(tps);
    printf("%s %s | %.2f ± %.2f |\n", row_prefix, name, mean, sd);
    fflush(stdout);
    return 1;
}

/* The high-water mark of every purpose on the host heap and each device,
 * as a markdown table (pools: their contexts' pool statistics, so this runs
 * before the last context is freed). */
static int by_place_purpose(const void *pa, const void *pb) {
    const kiln_memory_entry *a = pa, *b = pb;
    if (a->space != b->space) return a->space < b->space ? -1 : 1;
    int c = strcmp(a->backend, b->backend);
    if (c) return c;
    if (a->device != b->device) return a->device < b->device ? -1 : 1;
    return a->purpose < b->purpose ? -1 : a->purpose > b->purpose;
}

static void print_memory_peaks(const char *model) {
    size_t n = 0;
    if (kiln_memory_report_get(KILN_MEMORY_BY_PURPOSE, NULL, 0, sizeof(kiln_memory_entry), &n) != KILN_OK) return;
    n += 16;
    kiln_memory_entry *r = calloc(n, sizeof *r);
    if (!r || kiln_memory_report_get(KILN_MEMORY_BY_PURPOSE, r, n, sizeof *r, &n) != KILN_OK) {
        fprintf(stderr, "kiln-bench: memory report: %s\n", kiln_last_error());
        free(r);
        return;
    }
    qsort(r, n, sizeof *r, by_place_purpose);
    printf("\n| model | memory | purpose | peak MiB | now MiB |\n| --- | --- | --- | ---: | ---: |\n");
    for (size_t i = 0; i < n; i++) {
        char where[48];
        if (r[i].space == KILN_MEM_HOST) snprintf(where, sizeof where, "host heap");
        else snprintf(where, sizeof where, "%s:%d", r[i].backend, (int)r[i].device);
        printf("| %s | %s | %s | %.3f | %.3f |\n", model, where, kiln_memory_purpose_str(r[i].purpose),
               (double)r[i].peak_bytes / (1024.0 * 1024.0), (double)r[i].bytes / (1024.0 * 1024.0));
    }
    printf("\n");
    fflush(stdout);
    free(r);
}

/* Benchmarks one model at every thread count; returns 0 if anything failed. */
static int bench_model(const char *path, const bench_args *a, uint32_t max_tokens) {
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = a->backend;
    mp.device = a->device;
    mp.split = a->split;
    kiln_model *model = NULL;
    kiln_status st = kiln_model_load(path, &mp, &model);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-bench: cannot load model '%s': %s: %s\n", path, kiln_status_str(st),
                kiln_last_error());
        return 0;
    }
    kiln_model_info info;
    kiln_model_info_init(&info);
    st = kiln_model_get_info(model, &info);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-bench: model info of '%s': %s\n", path, kiln_last_error());
        kiln_model_free(model);
        return 0;
    }
    int ok = 1;
    const uint32_t n_toks = max_tokens > 512 ? max_tokens : 512; /* -d fills the cache 512 at a time */
    int32_t *toks = malloc((size_t)n_toks * sizeof *toks);
    if (!toks) {
        fprintf(stderr, "kiln-bench: out of memory\n");
        kiln_model_free(model);
        return 0;
    }
    uint64_t rng = 0x5EEDull;
    uint32_t n_vocab = info.n_vocab ? info.n_vocab : 1;
    for (uint32_t i = 0; i < n_toks; i++) toks[i] = (int32_t)(rng_next(&rng) % n_vocab);

    char size[32], params[32];
    format_size(info.size_bytes, size, sizeof size);
    format_params(info.n_params, params, sizeof params);

    int n_threads = a->threads.n ? a->threads.n : 1;
    for (int ti = 0; ti < n_threads; ti++) {
        kiln_context_params cp;
        kiln_context_params_init(&cp);
        const uint32_t ns = a->n_seq > 1 ? a->n_seq : 1;
        cp.n_ctx = (max_tokens + a->depth) * ns + 64;
        if (a->n_ubatch) cp.n_ubatch = a->n_ubatch;
        cp.n_seq_max = ns;
        if (a->threads.n) cp.n_threads = (int32_t)a->threads.v[ti];
        kiln_context *ctx = NULL;
        st = kiln_context_create(model, &cp, &ctx);
        if (st != KILN_OK) {
            report_failure("context create", NULL, st);
            ok = 0;
            continue;
        }
        char threads[24];
        if (a->threads.n) snprintf(threads, sizeof threads, "%ld", a->threads.v[ti]);
        else {
            long cores = sysconf(_SC_NPROCESSORS_ONLN);
            snprintf(threads, sizeof threads, "%ld", cores > 0 ? cores : 1);
        }
        char prefix[512];
        snprintf(prefix, sizeof prefix, "| %s | %s | %s | %s | %s |", base_name(path), size, params,
                 a->split ? a->split : a->backend ? a->backend : "cpu", threads);
        for (int i = 0; i < a->pp.n; i++)
            if (a->pp.v[i] > 0) ok &= bench_test(ctx, toks, (uint32_t)a->pp.v[i], 0, a->reps, prefix);
        for (int i = 0; i < a->tg.n; i++)
            if (a->tg.v[i] > 0) ok &= bench_test(ctx, toks, (uint32_t)a->tg.v[i], 1, a->reps, prefix);
        if (a->memory && ti == n_threads - 1) print_memory_peaks(base_name(path));
        kiln_context_free(ctx);
    }
    free(toks);
    kiln_model_free(model);
    return ok;
}

int main(int argc, char **argv) {
    bench_args a = {0};
    a.models = calloc((size_t)argc + 1, sizeof *a.models);
    if (!a.models) {
        fprintf(stderr, "kiln-bench: out of memory\n");
        return 1;
    }
    a.pp = (int_list){1, {512}};
    a.tg = (int_list){1, {128}};
    a.reps = 5;
    int done;
    int rc = parse_args(argc, argv, &a, &done);
    g_args = &a;
    if (rc || done) {
        free(a.models);
        return rc;
    }
    char default_buf[4096];
    if (a.n_models == 0) {
        const char *m = find_default_model(default_buf, sizeof default_buf);
        if (!m) {
            fprintf(stderr, "kiln-bench: no -m given and the bundled model models/%s was not found\n",
                    DEFAULT_MODEL_NAME);
            free(a.models);
            return 1;
        }
        a.models[a.n_models++] = m;
    }
    uint32_t max_tokens = 1;
    for (int i = 0; i < a.pp.n; i++) if ((uint32_t)a.pp.v[i] > max_tokens) max_tokens = (uint32_t)a.pp.v[i];
    for (int i = 0; i < a.tg.n; i++) if ((uint32_t)a.tg.v[i] > max_tokens) max_tokens = (uint32_t)a.tg.v[i];

    printf("| model | size | params | backend | threads | test | t/s |\n");
    printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    fflush(stdout);
    int ok = 1;
    for (int i = 0; i < a.n_models; i++) ok &= bench_model(a.models[i], &a, max_tokens);
    free(a.models);
    return ok ? 0 : 1;
}
