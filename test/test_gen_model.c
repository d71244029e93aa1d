/*
 * test_gen_model.c - the random-weight model generator (examples/kiln-gen-model).
 *
 *   types          the tiny shape in every weight type: the file loads,
 *                  a prompt decodes, every logit is finite and they are not
 *                  all equal, greedy decoding goes on finite; the mixes
 *                  carry kiln-quantize's tensor types
 *   deterministic  the bytes depend on --seed only, not on the threads
 *   examples       kiln-run and kiln-bench run on a generated file
 *   spm_vocab      the tokenizer of ../shared/vocab/vocab-llama-spm.gguf
 *                  (32000 tokens), as the benchmark shapes use it
 *   usage          bad arguments exit 2, a bad vocabulary file 1, and no
 *                  output file is left
 * The tokenizer comes from the bundled models/tiny-target-q4_k_m.gguf, so
 * only spm_vocab needs ../shared. Runs from the repository root.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "kt.h"
#include "quant.h"
#include "refdata.h"

#define VOCAB "models/tiny-target-q4_k_m.gguf"

static char tmpdir[64];
static char bindir[512];

static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

/* Runs a command line; returns its exit status (-1 if it did not exit). */
static int run(const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int gen(const char *type, const char *vocab, const char *out, const char *extra) {
    return run("%s/kiln-gen-model --shape tiny --type %s --vocab %s -o %s -q %s", bindir, type, vocab, out,
               extra ? extra : "-t 2");
}

/* Decodes a prompt and 4 greedy tokens; every logit must be finite. */
static void check_model(const char *path, const char *what) {
    kiln_model *m = NULL;
    kiln_context *c = NULL;
    KT_CHECK_OK(kt_model_load(path, NULL, &m));
    if (!m) return;
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 256;
    cp.n_threads = 2;
    KT_CHECK_OK(kiln_context_create(m, &cp, &c));
    int32_t toks[64];
    size_t n = 0;
    const char *text = "In the beginning God created the heaven and the earth.";
    KT_CHECK_OK(kiln_tokenize(m, text, strlen(text), KILN_TOKENIZE_ADD_BOS, toks, 64, &n));
    const int nv = kiln_model_n_vocab(m);
    int8_t want[64];
    memset(want, 1, sizeof want);
    kiln_batch b;
    kiln_batch_init(&b);
    b.tokens = toks;
    b.n_tokens = (uint32_t)n;
    b.logits = want;
    int bad = 0, flat = 0;
    for (int step = 0; c && step < 5; step++) {
        kiln_status st = kiln_decode(c, &b);
        KT_CHECK_OK(st);
        if (st) break;
        for (uint32_t i = 0; i < b.n_tokens; i++) {
            const float *l = kiln_context_logits(c, (int32_t)i);
            float mn = INFINITY, mx = -INFINITY;
            for (int v = 0; l && v < nv; v++) {
                bad += !isfinite(l[v]);
                mn = fminf(mn, l[v]);
                mx = fmaxf(mx, l[v]);
            }
            flat += !(mx - mn > 1e-3f);
        }
        const float *l = kiln_context_logits(c, -1);
        int best = 0;
        for (int v = 1; l && v < nv; v++)
            if (l[v] > l[best]) best = v;
        toks[0] = best;
        b.n_tokens = 1;
        b.logits = NULL;
    }
    KT_CHECKF(bad == 0 && flat == 0, "%s: %d non-finite logits, %d flat rows", what, bad, flat);
    kiln_context_free(c);
    kiln_model_free(m);
}

static int32_t tensor_type(const char *path, const char *name) {
    kiln_gguf *g = NULL;
    int32_t t = -1;
    if (kiln_gguf_open(path, &g) == KILN_OK) {
        const kiln_gguf_tensor *x = kiln_gguf_find_tensor(g, name);
        t = x ? x->type : -1;
    }
    kiln_gguf_close(g);
    return t;
}

static void test_types(void) {
    static const char *types[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0",
                                  "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"};
    for (size_t i = 0; i < KILN_ARRAY_LEN(types); i++) {
        char name[64];
        snprintf(name, sizeof name, "tiny-%s.gguf", types[i]);
        const char *path = tmp_path(name);
        int rc = gen(types[i], VOCAB, path, NULL);
        KT_CHECKF(rc == 0, "%s: kiln-gen-model exit %d", types[i], rc);
        if (rc == 0) check_model(path, types[i]);
        if (strcmp(types[i], "q4_k_m") == 0) {
            /* as kiln-quantize chooses: Q6_K output, Q6_K attn_v in layer 1 of 2 */
            KT_CHECK(tensor_type(path, "output.weight") == KILN_TYPE_Q6_K);
            KT_CHECK(tensor_type(path, "blk.0.attn_v.weight") == KILN_TYPE_Q4_K);
            KT_CHECK(tensor_type(path, "blk.1.attn_v.weight") == KILN_TYPE_Q6_K);
            KT_CHECK(tensor_type(path, "blk.0.attn_norm.weight") == KILN_TYPE_F32);
        }
        if (strcmp(types[i], "q4_0") != 0) unlink(path);
    }
}

static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *da = ref_read_all(a, &na), *db = ref_read_all(b, &nb);
    int same = da && db && na == nb && memcmp(da, db, na) == 0;
    free(da);
    free(db);
    return same;
}

static void test_deterministic(void) {
    const char *a = tmp_path("s7a.gguf"), *b = tmp_path("s7b.gguf"), *c = tmp_path("s8.gguf");
    KT_CHECK(gen("q4_k_m", VOCAB, a, "--seed 7 -t 1") == 0);
    KT_CHECK(gen("q4_k_m", VOCAB, b, "--seed 7 -t 3") == 0);
    KT_CHECK(gen("q4_k_m", VOCAB, c, "--seed 8 -t 2") == 0);
    KT_CHECK(same_file(a, b));
    KT_CHECK(!same_file(a, c));
    unlink(a);
    unlink(b);
    unlink(c);
}

static void test_examples(void) {
    const char *path = tmp_path("tiny-q4_0.gguf"); /* left by test_types */
    if (access(path, R_OK) != 0) KT_SKIP("no generated file");
    KT_CHECK(run("%s/kiln-run -m %s -p 'In the beginning' -n 8 -t 2 > %s 2>&1", bindir, path,
                 tmp_path("run.log")) == 0);
    KT_CHECK(run("%s/kiln-bench -m %s -p 16 -n 8 -r 1 -t 2 > %s 2>&1", bindir, path, tmp_path("bench.log")) == 0);
}

static void test_spm_vocab(void) {
    const char *vocab = kt_shared("vocab/vocab-llama-spm.gguf");
    if (!vocab) KT_SKIP("../shared not found");
    const char *path = tmp_path("spm.gguf");
    KT_CHECK(gen("q4_0", vocab, path, NULL) == 0);
    kiln_model *m = NULL;
    KT_CHECK_OK(kt_model_load(path, NULL, &m));
    KT_CHECK(m && kiln_model_n_vocab(m) == 32000 && kiln_token_bos(m) == 1);
    kiln_model_free(m);
    check_model(path, "llama-spm vocabulary");
    unlink(path);
}

static void test_usage(void) {
    const char *out = tmp_path("bad.gguf");
    KT_CHECK(run("%s/kiln-gen-model > /dev/null 2>&1", bindir) == 2);
    KT_CHECK(run("%s/kiln-gen-model --shape huge --type q4_0 --vocab %s -o %s 2>/dev/null", bindir, VOCAB, out) == 2);
    KT_CHECK(run("%s/kiln-gen-model --shape tiny --type q3_k --vocab %s -o %s 2>/dev/null", bindir, VOCAB, out) == 2);
    KT_CHECK(run("%s/kiln-gen-model --shape tiny --type q4_0 --vocab %s -o %s -t x 2>/dev/null", bindir, VOCAB,
                 out) == 2);
    KT_CHECK(run("%s/kiln-gen-model --shape tiny --type q4_0 --vocab %s -o %s 2>/dev/null", bindir,
                 tmp_path("none.gguf"), out) == 1);
    KT_CHECK(run("%s/kiln-gen-model --shape tiny --type q4_0 --vocab %s -o %s/no/dir.gguf 2>/dev/null", bindir, VOCAB,
                 tmpdir) == 1);
    KT_CHECK(access(out, F_OK) != 0);
}

int main(void) {
    const char *build = getenv("KILN_BUILD");
    snprintf(bindir, sizeof bindir, "%s/bin", build && *build ? build : "build");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln-gen-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char gen_path[600];
    snprintf(gen_path, sizeof gen_path, "%s/kiln-gen-model", bindir);
    if (access(gen_path, X_OK) != 0 || access(VOCAB, R_OK) != 0) {
        printf("  %s or %s missing (run from the repository root after make)\n", gen_path, VOCAB);
        printf("kt: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    KT_RUN(test_types);
    KT_RUN(test_deterministic);
    KT_RUN(test_examples);
    KT_RUN(test_spm_vocab);
    KT_RUN(test_usage);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return kt_finish();
}
