/*
 * kiln-spec - speculative decoding with a draft model, using only kiln's
 * public API (it links the shared library). Prints the prompt and its
 * continuation on standard output and the acceptance statistics on stderr.
 * The text is what plain decoding on the target gives (kiln-run with the
 * same sampling settings), only faster when the draft guesses well.
 *
 *     kiln-spec -m TARGET -d DRAFT [-p TEXT] [-n N] [--n-draft K]
 *               [--temp T] [--seed S] [-t THREADS] [-c N_CTX]
 *
 *   -m FILE        the target model
 *   -d FILE        the draft model (same vocabulary)
 *   -p TEXT        the prompt (default: empty, generation starts from BOS)
 *   -n N           tokens to generate (default 128)
 *   --n-draft K    max tokens per proposal (default 8)
 *   --temp T       0 = greedy (default); > 0 samples (top-k/top-p/min-p off)
 *   --seed S       RNG seed for --temp > 0 (default 1)
 *   -t THREADS     CPU threads (default: number of cores)
 *   -c N_CTX       context size in tokens (default 4096, capped to the model's)
 *
 * Exit status: 0 on success, 1 on a failure ("kiln-spec: <reason>" on
 * stderr), 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln.h"

static void usage(void) {
    fprintf(stderr, "usage: kiln-spec -m TARGET -d DRAFT [-p TEXT] [-n N] [--n-draft K] [--temp T] [--seed S]\n"
                    "                 [-t THREADS] [-c N_CTX]\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Prints "kiln-spec: what: <last error>" and returns 1. */
static int fail(const char *what) {
    fprintf(stderr, "kiln-spec: %s: %s\n", what, kiln_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *target_path = NULL, *draft_path = NULL, *prompt = "";
    long n_predict = 128, n_draft = 8, threads = 0, n_ctx = 4096;
    double temp = 0.0;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (!v) {
            usage();
            return 2;
        }
        char *end = NULL;
        if (strcmp(a, "-m") == 0) target_path = v;
        else if (strcmp(a, "-d") == 0) draft_path = v;
        else if (strcmp(a, "-p") == 0) prompt = v;
        else if (strcmp(a, "-n") == 0) n_predict = strtol(v, &end, 10);
        else if (strcmp(a, "--n-draft") == 0) n_draft = strtol(v, &end, 10);
        else if (strcmp(a, "-t") == 0) threads = strtol(v, &end, 10);
        else if (strcmp(a, "-c") == 0) n_ctx = strtol(v, &end, 10);
        else if (strcmp(a, "--temp") == 0) temp = strtod(v, &end);
        else if (strcmp(a, "--seed") == 0) seed = strtoull(v, &end, 10);
        else {
            usage();
            return 2;
        }
        if (end && *end) {
            usage();
            return 2;
        }
        i++;
    }
    if (!target_path || !draft_path || n_predict < 1 || n_predict > 1 << 20 || n_draft < 1 || n_draft > 256 ||
        n_ctx < 1 || n_ctx > 1 << 24) {
        usage();
        return 2;
    }

    int rc = 1;
    kiln_model *tm = NULL, *dm = NULL;
    kiln_context *ctx = NULL;
    kiln_draft *draft = NULL;
    kiln_sampler *smp = NULL;
    int32_t *prompt_toks = NULL, *out = NULL;
    char *text = NULL;
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    if (kiln_model_load(target_path, &mp, &tm)) {
        rc = fail(target_path);
        goto done;
    }
    if (kiln_model_load(draft_path, &mp, &dm)) {
        rc = fail(draft_path);
        goto done;
    }
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_threads = (int32_t)threads;
    cp.n_seq_max = 1;
    if (kiln_context_create(tm, &cp, &ctx)) {
        rc = fail("context");
        goto done;
    }
    kiln_draft_params dp;
    kiln_draft_params_init(&dp);
    dp.n_draft = (int32_t)n_draft;
    if (kiln_draft_create(ctx, dm, &dp, &draft)) {
        rc = fail("draft");
        goto done;
    }
    if (temp > 0.0) {
        kiln_sampler_params sp;
        kiln_sampler_params_init(&sp);
        sp.temperature = (float)temp;
        sp.top_k = 0;
        sp.top_p = 1.0f;
        sp.min_p = 0.0f;
        sp.seed = seed;
        if (kiln_sampler_create(&sp, &smp)) {
            rc = fail("sampler");
            goto done;
        }
    }

    size_t n_prompt = 0, n_out = 0, n_text = 0;
    size_t plen = strlen(prompt);
    if (kiln_tokenize(tm, prompt, plen, KILN_TOKENIZE_ADD_BOS, NULL, 0, &n_prompt)) {
        rc = fail("tokenize");
        goto done;
    }
    prompt_toks = malloc((n_prompt ? n_prompt : 1) * sizeof(int32_t));
    out = malloc((size_t)n_predict * sizeof(int32_t));
    if (!prompt_toks || !out) {
        fprintf(stderr, "kiln-spec: out of memory\n");
        goto done;
    }
    if (kiln_tokenize(tm, prompt, plen, KILN_TOKENIZE_ADD_BOS, prompt_toks, n_prompt, &n_prompt)) {
        rc = fail("tokenize");
        goto done;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "kiln-spec: the prompt has no tokens (the model adds no BOS)\n");
        goto done;
    }
    double t0 = now_s();
    if (kiln_draft_generate(draft, prompt_toks, n_prompt, (int32_t)n_predict, smp, out, (size_t)n_predict,
                            &n_out)) {
        rc = fail("generate");
        goto done;
    }
    double dt = now_s() - t0;
    if (kiln_detokenize(tm, out, n_out, 0, NULL, 0, &n_text) || !(text = malloc(n_text + 1)) ||
        kiln_detokenize(tm, out, n_out, 0, text, n_text, &n_text)) {
        rc = fail("detokenize");
        goto done;
    }
    fwrite(prompt, 1, plen, stdout);
    fwrite(text, 1, n_text, stdout);
    fputc('\n', stdout);
    kiln_draft_stats st;
    kiln_draft_stats_init(&st);
    if (kiln_draft_get_stats(draft, &st) == KILN_OK)
        fprintf(stderr,
                "kiln-spec: %zu tokens in %.2f ms (%.2f t/s, prompt included); draft tokens accepted %llu of "
                "%llu (%.1f%%); %llu target batches\n",
                n_out, dt * 1e3, dt > 0 ? (double)n_out / dt : 0.0, (unsigned long long)st.n_accepted,
                (unsigned long long)st.n_proposed,
                st.n_proposed ? 100.0 * (double)st.n_accepted / (double)st.n_proposed : 0.0,
                (unsigned long long)st.n_target_batches);
    rc = 0;
done:
    free(text);
    free(out);
    free(prompt_toks);
    kiln_sampler_free(smp);
    kiln_draft_free(draft);
    kiln_context_free(ctx);
    kiln_model_free(dm);
    kiln_model_free(tm);
    return rc;
}
