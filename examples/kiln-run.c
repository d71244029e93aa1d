/*
 * kiln-run - generate text with a GGUF model through kiln's public API.
 *
 *   kiln-run [-m FILE] [-p TEXT | -f FILE] [-n N] [--temp T] [--top-k K]
 *            [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S]
 *            [-t THREADS] [-c N_CTX] [--backend NAME] [--device I]
 *            [--split SPEC] [--no-bos] [--parse-special] [--memory] [--help]
 *
 * The prompt and then the generated text go to stdout as they are produced;
 * timings and errors go to stderr. Exit status: 0 success, 1 a runtime
 * failure (missing or corrupt model, decode error), 2 bad usage.
 *
 * Uses include/kiln.h only, as any application would.
 */
#define _POSIX_C_SOURCE 200809L /* readlink, access, getpid, clock_gettime */

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kiln.h"

#define DEFAULT_MODEL_NAME "tiny-target-q4_k_m.gguf"

typedef struct run_args {
    const char *model;
    const char *prompt;
    const char *prompt_file;
    int32_t n_predict;
    float temp;
    int32_t top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
    int have_seed;
    uint64_t seed;
    int32_t threads;
    uint32_t n_ctx;
    const char *backend;
    int32_t device;
    const char *split;
    int no_bos;
    int parse_special;
    int memory;
} run_args;

static void usage(FILE *f) {
    fprintf(f,
        "usage: kiln-run [options]\n"
        "  -m FILE             model (default: the bundled models/" DEFAULT_MODEL_NAME ")\n"
        "  -p TEXT             prompt (default: empty, generation starts from BOS)\n"
        "  -f FILE             read the prompt from FILE\n"
        "  -n N                tokens to generate, -1 = until end of text or context full (default 128)\n"
        "  --temp T            temperature, 0 = greedy (default 0.8)\n"
        "  --top-k K           top-k, 0 = off (default 40)\n"
        "  --top-p P           top-p, 1 = off (default 0.95)\n"
        "  --min-p P           min-p, 0 = off (default 0.05)\n"
        "  --repeat-penalty R  repeat penalty over the last 64 tokens, 1 = off (default 1)\n"
        "  --seed S            RNG seed (default: random, printed on stderr)\n"
        "  -t THREADS          CPU threads (default: number of cores)\n"
        "  -c N_CTX            context size in tokens (default 4096, capped to the model's)\n"
        "  --backend NAME      cpu (default), cuda, vulkan\n"
        "  --device I          device index within the backend (default 0)\n"
        "  --split SPEC        layers across devices, BACKEND:DEVICE[:N_LAYERS],... in layer order\n"
        "                      (e.g. cuda:0:16,cuda:1); overrides --backend/--device\n"
        "  --no-bos            do not add BOS to the prompt\n"
        "  --parse-special     turn special-token text like <|eos|> in the prompt into its id\n"
        "  --memory            print kiln's memory report (stderr) after loading and after generation\n"
        "  --help              this text\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- argument parsing ---------------------------------------------------- */

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "kiln-run: %s expects an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_float(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || v != v) {
        fprintf(stderr, "kiln-run: %s expects a number, got '%s'\n", opt, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_u64(const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "kiln-run: %s expects a non-negative integer, got '%s'\n", opt, s);
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

/* Returns 0 to go on, or the exit status (0 for --help, 2 for bad usage). */
static int parse_args(int argc, char **argv, run_args *a, int *done) {
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            *done = 1;
            return 0;
        }
        if (!strcmp(o, "--no-bos")) { a->no_bos = 1; continue; }
        if (!strcmp(o, "--parse-special")) { a->parse_special = 1; continue; }
        if (!strcmp(o, "--memory")) { a->memory = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "kiln-run: unknown option or missing value: '%s'\n", o);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long n;
        if (!strcmp(o, "-m")) a->model = v;
        else if (!strcmp(o, "-p")) a->prompt = v;
        else if (!strcmp(o, "-f")) a->prompt_file = v;
        else if (!strcmp(o, "-n")) {
            if (!parse_long(o, v, -1, INT32_MAX, &n)) return 2;
            a->n_predict = (int32_t)n;
        } else if (!strcmp(o, "--temp")) {
            if (!parse_float(o, v, &a->temp)) return 2;
        } else if (!strcmp(o, "--top-k")) {
            if (!parse_long(o, v, 0, INT32_MAX, &n)) return 2;
            a->top_k = (int32_t)n;
        } else if (!strcmp(o, "--top-p")) {
            if (!parse_float(o, v, &a->top_p)) return 2;
        } else if (!strcmp(o, "--min-p")) {
            if (!parse_float(o, v, &a->min_p)) return 2;
        } else if (!strcmp(o, "--repeat-penalty")) {
            if (!parse_float(o, v, &a->repeat_penalty) || !(a->repeat_penalty > 0)) {
                fprintf(stderr, "kiln-run: --repeat-penalty must be > 0\n");
                return 2;
            }
        } else if (!strcmp(o, "--seed")) {
            if (!parse_u64(o, v, &a->seed)) return 2;
            a->have_seed = 1;
        } else if (!strcmp(o, "-t")) {
            if (!parse_long(o, v, 1, 4096, &n)) return 2;
            a->threads = (int32_t)n;
        } else if (!strcmp(o, "-c")) {
            if (!parse_long(o, v, 1, INT32_MAX, &n)) return 2;
            a->n_ctx = (uint32_t)n;
        } else if (!strcmp(o, "--backend")) a->backend = v;
        else if (!strcmp(o, "--split")) a->split = v;
        else if (!strcmp(o, "--device")) {
            if (!parse_long(o, v, 0, INT32_MAX, &n)) return 2;
            a->device = (int32_t)n;
        } else {
            fprintf(stderr, "kiln-run: unknown option '%s'\n", o);
            usage(stderr);
            return 2;
        }
    }
    if (a->prompt && a->prompt_file) {
        fprintf(stderr, "kiln-run: give either -p or -f, not both\n");
        return 2;
    }
    return 0;
}

/* ---- the default model --------------------------------------------------- */

static int readable(const char *path) { return access(path, R_OK) == 0; }

/* The bundled model: relative to the cwd (a source checkout), then to the
 * executable (build/bin/ and build/san/bin/ of a checkout, or an installed
 * bin/ next to share/kiln/models), then KILN_MODEL_DIR if compiled in.
 * Writes into buf; returns NULL if none is found. */
static const char *find_default_model(char *buf, size_t cap) {
    static const char *rel = "models/" DEFAULT_MODEL_NAME;
    if (readable(rel)) {
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
                if (readable(buf)) return buf;
            }
        }
    }
#ifdef KILN_MODEL_DIR
    snprintf(buf, cap, "%s/%s", KILN_MODEL_DIR, DEFAULT_MODEL_NAME);
    if (readable(buf)) return buf;
#endif
    return NULL;
}

/* ---- helpers ------------------------------------------------------------- */

/* Reads a whole file into a NUL-terminated malloc'ed buffer. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n + 1 < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) { free(buf); return NULL; }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static uint64_t random_seed(void) {
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&s, sizeof s, 1, f) != 1) s = 0;
        fclose(f);
    }
    if (!s) s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
    return s;
}

/* Writes the text that token completes; returns 0 on a kiln error. */
static int emit_token(kiln_detokenizer *d, int32_t tok, char **buf, size_t *cap) {
    size_t n = 0;
    kiln_status st = kiln_detokenizer_push(d, tok, *buf, *cap, &n);
    if (st == KILN_E_BUFFER_TOO_SMALL) {
        char *nb = realloc(*buf, n);
        if (!nb) {
            fprintf(stderr, "kiln-run: out of memory\n");
            return 0;
        }
        *buf = nb;
        *cap = n;
        st = kiln_detokenizer_push(d, tok, *buf, *cap, &n);
    }
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: detokenizing token %d: %s: %s\n", (int)tok,
                kiln_status_str(st), kiln_last_error());
        return 0;
    }
    fwrite(*buf, 1, n, stdout);
    fflush(stdout);
    return 1;
}

static int flush_detok(kiln_detokenizer *d) {
    size_t n = 0;
    if (kiln_detokenizer_flush(d, NULL, 0, &n) != KILN_OK || n == 0) return 1;
    char *buf = malloc(n);
    if (!buf) return 0;
    if (kiln_detokenizer_flush(d, buf, n, &n) == KILN_OK) fwrite(buf, 1, n, stdout);
    free(buf);
    fflush(stdout);
    return 1;
}

static kiln_status decode_tokens(kiln_context *ctx, const int32_t *toks, uint32_t n) {
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = toks;
    return kiln_decode(ctx, &b);
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv) {
    run_args a = {0};
    kiln_sampler_params sp;
    kiln_sampler_params_init(&sp);
    a.n_predict = 128;
    a.temp = sp.temperature;
    a.top_k = sp.top_k;
    a.top_p = sp.top_p;
    a.min_p = sp.min_p;
    a.repeat_penalty = sp.repeat_penalty;
    int done;
    int rc = parse_args(argc, argv, &a, &done);
    if (rc || done) return rc;

    char model_buf[4096];
    const char *model_path = a.model;
    if (!model_path) {
        model_path = find_default_model(model_buf, sizeof model_buf);
        if (!model_path) {
            fprintf(stderr, "kiln-run: no -m given and the bundled model models/%s was not found "
                            "(looked in the current directory and next to the executable)\n",
                    DEFAULT_MODEL_NAME);
            return 1;
        }
    }

    char *file_prompt = NULL;
    size_t prompt_len = 0;
    const char *prompt = a.prompt ? a.prompt : "";
    if (a.prompt_file) {
        file_prompt = read_file(a.prompt_file, &prompt_len);
        if (!file_prompt) {
            fprintf(stderr, "kiln-run: cannot read prompt file '%s': %s\n", a.prompt_file, strerror(errno));
            return 1;
        }
        prompt = file_prompt;
    } else {
        prompt_len = strlen(prompt);
    }

    int exit_code = 1;
    kiln_model *model = NULL;
    kiln_context *ctx = NULL;
    kiln_sampler *smp = NULL;
    kiln_detokenizer *detok = NULL;
    int32_t *toks = NULL;
    char *out = NULL;
    size_t out_cap = 256;
    kiln_status st;

    /* model */
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = a.backend;
    mp.device = a.device;
    mp.split = a.split;
    double t0 = now_s();
    st = kiln_model_load(model_path, &mp, &model);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: cannot load model '%s': %s: %s\n", model_path,
                kiln_status_str(st), kiln_last_error());
        goto done;
    }
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    if (a.n_ctx) cp.n_ctx = a.n_ctx;
    if (a.threads) cp.n_threads = a.threads;
    st = kiln_context_create(model, &cp, &ctx);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: cannot create a context: %s: %s\n", kiln_status_str(st), kiln_last_error());
        goto done;
    }
    double t_load = now_s() - t0;
    fprintf(stderr, "kiln-run: loaded %s in %.1f ms\n", model_path, t_load * 1e3);
    if (a.memory) {
        fprintf(stderr, "kiln-run: memory after loading:\n");
        kiln_memory_report(stderr, 0);
    }

    /* prompt */
    uint32_t tflags = (a.no_bos ? 0u : KILN_TOKENIZE_ADD_BOS) |
                      (a.parse_special ? KILN_TOKENIZE_PARSE_SPECIAL : 0u);
    size_t n_prompt = 0;
    st = kiln_tokenize(model, prompt, prompt_len, tflags, NULL, 0, &n_prompt);
    if (st == KILN_OK) {
        toks = malloc((n_prompt + 1) * sizeof *toks);
        if (!toks) {
            fprintf(stderr, "kiln-run: out of memory for %zu prompt tokens\n", n_prompt);
            goto done;
        }
        st = kiln_tokenize(model, prompt, prompt_len, tflags, toks, n_prompt + 1, &n_prompt);
    }
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: cannot tokenize the prompt: %s: %s\n", kiln_status_str(st), kiln_last_error());
        goto done;
    }
    if (n_prompt == 0) {
        /* Nothing to condition on: start from BOS if the model has one. */
        int32_t bos = kiln_token_bos(model);
        if (bos < 0) {
            fprintf(stderr, "kiln-run: the prompt is empty and the model has no BOS token\n");
            exit_code = 2;
            goto done;
        }
        toks[0] = bos;
        n_prompt = 1;
    }
    if (n_prompt > UINT32_MAX) {
        fprintf(stderr, "kiln-run: prompt too long (%zu tokens)\n", n_prompt);
        goto done;
    }

    /* sampler */
    sp.temperature = a.temp;
    sp.top_k = a.top_k;
    sp.top_p = a.top_p;
    sp.min_p = a.min_p;
    sp.repeat_penalty = a.repeat_penalty;
    sp.seed = a.have_seed ? a.seed : random_seed();
    st = kiln_sampler_create(&sp, &smp);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: bad sampling parameters: %s\n", kiln_last_error());
        exit_code = 2;
        goto done;
    }
    if (sp.temperature > 0)
        fprintf(stderr, "kiln-run: seed %llu\n", (unsigned long long)sp.seed);
    for (size_t i = 0; i < n_prompt; i++) kiln_sampler_accept(smp, toks[i]);

    st = kiln_detokenizer_create(model, 0, &detok);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-run: cannot create a detokenizer: %s\n", kiln_last_error());
        goto done;
    }
    out = malloc(out_cap);
    if (!out) {
        fprintf(stderr, "kiln-run: out of memory\n");
        goto done;
    }

    fwrite(prompt, 1, prompt_len, stdout);
    fflush(stdout);

    t0 = now_s();
    st = decode_tokens(ctx, toks, (uint32_t)n_prompt);
    double t_prompt = now_s() - t0;
    if (st != KILN_OK) {
        fprintf(stderr, "\nkiln-run: prompt decode (%zu tokens) failed: %s: %s\n", n_prompt,
                kiln_status_str(st), kiln_context_last_error(ctx));
        goto done;
    }

    /* generation */
    const int32_t n_vocab = kiln_model_n_vocab(model);
    int32_t n_gen = 0, n_decoded = 0;
    double t_gen = 0.0, t_sample = 0.0;
    const char *stop = "length limit";
    for (;;) {
        if (a.n_predict >= 0 && n_gen >= a.n_predict) break;
        const float *logits = kiln_context_logits(ctx, -1);
        if (!logits) {
            fprintf(stderr, "\nkiln-run: no logits after decode\n");
            goto done;
        }
        int32_t tok;
        double ts = now_s();
        st = kiln_sampler_sample(smp, logits, n_vocab, &tok);
        t_sample += now_s() - ts;
        if (st != KILN_OK) {
            fprintf(stderr, "\nkiln-run: sampling failed: %s\n", kiln_last_error());
            goto done;
        }
        if (kiln_token_is_eog(model, tok)) {
            stop = "end of text";
            break;
        }
        n_gen++;
        if (!emit_token(detok, tok, &out, &out_cap)) goto done;
        if (a.n_predict >= 0 && n_gen >= a.n_predict) break; /* no need to decode it */
        double td = now_s();
        st = decode_tokens(ctx, &tok, 1);
        t_gen += now_s() - td;
        if (st == KILN_E_CONTEXT_FULL) {
            stop = "context full";
            break;
        }
        if (st != KILN_OK) {
            fprintf(stderr, "\nkiln-run: decode failed after %d tokens: %s: %s\n", (int)n_gen,
                    kiln_status_str(st), kiln_context_last_error(ctx));
            goto done;
        }
        n_decoded++;
    }
    flush_detok(detok);
    fputc('\n', stdout);
    fflush(stdout);

    fprintf(stderr, "kiln-run: stopped: %s\n", stop);
    fprintf(stderr, "kiln-run: load         %10.2f ms\n", t_load * 1e3);
    fprintf(stderr, "kiln-run: prompt eval  %10.2f ms / %5zu tokens (%9.2f t/s)\n", t_prompt * 1e3,
            n_prompt, t_prompt > 0 ? (double)n_prompt / t_prompt : 0.0);
    fprintf(stderr, "kiln-run: generation   %10.2f ms / %5d tokens (%9.2f t/s)\n", t_gen * 1e3,
            (int)n_decoded, t_gen > 0 ? (double)n_decoded / t_gen : 0.0);
    fprintf(stderr, "kiln-run: sampling     %10.2f ms / %5d tokens\n", t_sample * 1e3, (int)n_gen);
    if (a.memory) {
        fprintf(stderr, "kiln-run: memory after generation:\n");
        kiln_memory_report(stderr, 0);
    }
    exit_code = 0;

done:
    free(out);
    free(toks);
    free(file_prompt);
    kiln_detokenizer_free(detok);
    kiln_sampler_free(smp);
    kiln_context_free(ctx);
    kiln_model_free(model);
    return exit_code;
}
