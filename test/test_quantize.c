/*
 * test_quantize.c - kiln_model_quantize (lib/quantize.c) and the streamed
 * GGUF writing under it.
 *
 *   type_choice    llama.cpp's per-tensor mix on a 32-layer layout (Q4_K_M:
 *                  16 of 32 attn_v / ffn_down in Q6_K), tied output,
 *                  fallbacks for rows that do not divide into blocks, order
 *   byte_identical re-quantizing ../shared's tiny-target-f16 to q8_0, q4_0,
 *                  q6_k and q4_k_m reproduces llama-quantize's files byte
 *                  for byte (whole files, metadata included)
 *   quality        mean KL(F16 reference || kiln on the quantized file)
 *                  over the reference prompts, for each type, no worse than
 *                  the shared file of the same type + 10% (types without a
 *                  shared file: the next coarser one, see quality_cases)
 *   float_inputs   BF16 and F32 inputs (F16 -> F32 -> Q8_0 equals F16 -> Q8_0)
 *   errors         bad paths, malformed input, unknown ftype, quantized
 *                  input, cancel, a full disk (RLIMIT_FSIZE): statuses, and
 *                  no output file is left behind (an old one is kept)
 *   alloc_failures every allocation of a run failing in turn: OOM status,
 *                  no file, no leak
 * The model cases skip without ../shared.
 */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "kt.h"
#include "quant.h"
#include "quantize.h"
#include "refdata.h"

static char tmpdir[64];

static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

static int file_exists(const char *p) { return access(p, F_OK) == 0; }

/* Files in tmpdir other than the expected ones (temporary leftovers). */
static int stray_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp-")) n++;
    if (d) closedir(d);
    return n;
}

static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *da = ref_read_all(a, &na), *db = ref_read_all(b, &nb);
    int same = da && db && na == nb && memcmp(da, db, na) == 0;
    free(da);
    free(db);
    return same;
}

static kiln_status quantize(const char *in, const char *out, int32_t ftype, uint32_t flags) {
    kiln_quantize_params qp;
    kiln_quantize_params_init(&qp);
    qp.ftype = ftype;
    qp.flags = flags;
    qp.n_threads = 2;
    return kiln_model_quantize(in, out, &qp);
}

/* ---- type choice ---- */

static void test_type_choice(void) {
    kiln_quant_plan p;
    const int64_t ne_q[2] = {4096, 4096}, ne_v[2] = {4096, 1024}, ne_d[2] = {14336, 4096},
                  ne_o[2] = {4096, 32000};
    KT_CHECK_OK(kiln_quant_plan_init(&p, KILN_FTYPE_Q4_K_M, false, true, 32, 32));
    int n6_v = 0, n6_d = 0, n_other = 0;
    char name[64];
    for (int l = 0; l < 32; l++) {
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", l);
        n_other += kiln_quant_tensor_type(&p, name, 2, ne_q, KILN_TYPE_F16) != KILN_TYPE_Q4_K;
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", l);
        int32_t tv = kiln_quant_tensor_type(&p, name, 2, ne_v, KILN_TYPE_F16);
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", l);
        int32_t td = kiln_quant_tensor_type(&p, name, 2, ne_d, KILN_TYPE_F16);
        /* llama.cpp's use_more_bits for 32 layers: 0-3, 28-31, 6, 9, ..., 27 */
        int more = l < 4 || l >= 28 || (l - 4) % 3 == 2;
        KT_CHECKF(tv == (more ? KILN_TYPE_Q6_K : KILN_TYPE_Q4_K), "layer %d attn_v %s", l, kiln_type_name(tv));
        KT_CHECKF(td == (more ? KILN_TYPE_Q6_K : KILN_TYPE_Q4_K), "layer %d ffn_down %s", l, kiln_type_name(td));
        n6_v += tv == KILN_TYPE_Q6_K;
        n6_d += td == KILN_TYPE_Q6_K;
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        n_other += kiln_quant_tensor_type(&p, name, 1, ne_q, KILN_TYPE_F32) != KILN_TYPE_F32;
    }
    KT_CHECK(n6_v == 16 && n6_d == 16 && n_other == 0);
    KT_CHECK(kiln_quant_tensor_type(&p, "output.weight", 2, ne_o, KILN_TYPE_F16) == KILN_TYPE_Q6_K);
    KT_CHECK(kiln_quant_tensor_type(&p, "token_embd.weight", 2, ne_o, KILN_TYPE_F16) == KILN_TYPE_Q4_K);
    /* rows that do not divide into 256: Q4_K -> Q5_0; then F16 */
    const int64_t ne64[2] = {64, 8}, ne48[2] = {48, 8};
    KT_CHECK(kiln_quant_tensor_type(&p, "blk.0.attn_q.weight", 2, ne64, KILN_TYPE_F16) == KILN_TYPE_Q5_0);
    KT_CHECK(kiln_quant_tensor_type(&p, "blk.0.attn_q.weight", 2, ne48, KILN_TYPE_F16) == KILN_TYPE_F16);
    KT_CHECK(kiln_quant_tensor_type(&p, "output.weight", 2, ne64, KILN_TYPE_F16) == KILN_TYPE_Q8_0);

    /* tied output: token_embd takes the output's type; Q8_0 keeps Q8_0 */
    KT_CHECK_OK(kiln_quant_plan_init(&p, KILN_FTYPE_Q4_0, false, false, 32, 32));
    KT_CHECK(kiln_quant_tensor_type(&p, "token_embd.weight", 2, ne_o, KILN_TYPE_F16) == KILN_TYPE_Q6_K);
    KT_CHECK(kiln_quant_tensor_type(&p, "blk.3.attn_v.weight", 2, ne_v, KILN_TYPE_F16) == KILN_TYPE_Q4_0);
    KT_CHECK_OK(kiln_quant_plan_init(&p, KILN_FTYPE_Q8_0, false, true, 32, 32));
    KT_CHECK(kiln_quant_tensor_type(&p, "output.weight", 2, ne_o, KILN_TYPE_F16) == KILN_TYPE_Q8_0);
    /* pure: no mix */
    KT_CHECK_OK(kiln_quant_plan_init(&p, KILN_FTYPE_Q5_K_M, true, true, 32, 32));
    KT_CHECK(kiln_quant_tensor_type(&p, "output.weight", 2, ne_o, KILN_TYPE_F16) == KILN_TYPE_Q5_K);
    KT_CHECK(kiln_quant_tensor_type(&p, "blk.0.attn_v.weight", 2, ne_v, KILN_TYPE_F16) == KILN_TYPE_Q5_K);
    KT_CHECK(kiln_quant_plan_init(&p, 4, false, true, 1, 1) == KILN_E_INVALID_ARG);

    /* llama.cpp's order: layer, then name */
    const char *names[] = {"blk.10.a", "output.weight", "blk.2.z", "blk.2.a", "token_embd.weight", "blk.1x"};
    qsort(names, 6, sizeof names[0], kiln_quant_tensor_order);
    const char *want[] = {"blk.1x", "output.weight", "token_embd.weight", "blk.2.a", "blk.2.z", "blk.10.a"};
    for (int i = 0; i < 6; i++) KT_CHECKF(strcmp(names[i], want[i]) == 0, "order %d: %s", i, names[i]);
}

/* ---- against llama.cpp's files ---- */

static void test_byte_identical(void) {
    const char *f16 = kt_shared("models/tiny-target-f16.gguf");
    if (!f16) KT_SKIP("../shared not found");
    static const struct { const char *name; int32_t ftype; } cases[] = {
        {"q8_0", KILN_FTYPE_Q8_0}, {"q4_0", KILN_FTYPE_Q4_0},
        {"q6_k", KILN_FTYPE_Q6_K}, {"q4_k_m", KILN_FTYPE_Q4_K_M},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        char rel[128], out[64];
        snprintf(rel, sizeof rel, "models/tiny-target-%s.gguf", cases[i].name);
        snprintf(out, sizeof out, "%s.gguf", cases[i].name);
        const char *ref = kt_shared(rel), *path = tmp_path(out);
        KT_CHECK_OK(quantize(f16, path, cases[i].ftype, 0));
        int same = ref && same_file(path, ref);
        KT_CHECKF(same, "%s: differs from llama.cpp's file", cases[i].name);
        if (same) printf("  %s: byte-identical to ../shared/%s\n", cases[i].name, rel);
    }
}

/* Mean KL(reference F16 || model) over every reference row. */
static double mean_kl(const char *model_path, const ref_file *rf) {
    kiln_model *m = NULL;
    kiln_context *c = NULL;
    double sum = 0;
    long rows = 0;
    KT_CHECK_OK(kt_model_load(model_path, NULL, &m));
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 2048;
    cp.n_threads = 2;
    if (m) KT_CHECK_OK(kiln_context_create(m, &cp, &c));
    const int nv = (int)rf->n_vocab;
    /* the sanitized build evaluates a few prompts only (same rows for the
     * shared file and ours, so the comparison holds) */
    const char *san = getenv("SANITIZE");
    uint32_t n_prompts = san && *san ? KILN_MIN(rf->n_prompts, 4u) : rf->n_prompts;
    for (uint32_t pi = 0; c && pi < n_prompts; pi++) {
        const ref_prompt *p = &rf->p[pi];
        int8_t *want = malloc(p->n_tokens + 1);
        memset(want, 1, p->n_tokens + 1);
        kiln_kv_clear(kiln_context_kv(c));
        kiln_batch b;
        kiln_batch_init(&b);
        b.n_tokens = p->n_tokens;
        b.tokens = p->tokens;
        b.logits = want;
        kiln_status st = kiln_decode(c, &b);
        free(want);
        KT_CHECK_OK(st);
        if (st) break;
        for (uint32_t r = 0; r < p->n_rows; r++) {
            const float *ref = p->logits + (size_t)r * nv, *got = kiln_context_logits(c, p->row_pos[r]);
            if (!got) {
                KT_CHECK(got != NULL);
                continue;
            }
            double mr = -INFINITY, mg = -INFINITY, zr = 0, zg = 0, kl = 0;
            for (int i = 0; i < nv; i++) {
                mr = fmax(mr, ref[i]);
                mg = fmax(mg, got[i]);
            }
            for (int i = 0; i < nv; i++) {
                zr += exp(ref[i] - mr);
                zg += exp(got[i] - mg);
            }
            for (int i = 0; i < nv; i++) {
                double lp = ref[i] - mr - log(zr), lq = got[i] - mg - log(zg);
                kl += exp(lp) * (lp - lq);
            }
            sum += kl;
            rows++;
        }
    }
    kiln_context_free(c);
    kiln_model_free(m);
    return rows ? sum / rows : INFINITY;
}

static void test_quality(void) {
    const char *f16 = kt_shared("models/tiny-target-f16.gguf");
    const char *rpath = kt_shared("reference/tiny-target-f16.logits");
    if (!f16 || !rpath) KT_SKIP("../shared not found");
    ref_file rf;
    KT_CHECK(ref_load(rpath, &rf) == 0);
    /* Each type against the shared file of the same type; the types
     * llama.cpp's shared set lacks against the next coarser shared file
     * (more bits must not do worse): Q5_K, Q5_K_M against Q4_K_M, and
     * Q4_K (the Q4_K_M mix without its Q6_K tensors) against Q4_0. */
    static const struct { const char *name; int32_t ftype; const char *shared; } cases[] = {
        {"q8_0", KILN_FTYPE_Q8_0, "q8_0"},     {"q6_k", KILN_FTYPE_Q6_K, "q6_k"},
        {"q5_k_m", KILN_FTYPE_Q5_K_M, "q4_k_m"}, {"q5_k", KILN_FTYPE_Q5_K, "q4_k_m"},
        {"q4_k_m", KILN_FTYPE_Q4_K_M, "q4_k_m"}, {"q4_k", KILN_FTYPE_Q4_K, "q4_0"},
        {"q4_0", KILN_FTYPE_Q4_0, "q4_0"},
    };
    double shared_kl[KILN_ARRAY_LEN(cases)];
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        char rel[128], out[64];
        snprintf(rel, sizeof rel, "models/tiny-target-%s.gguf", cases[i].shared);
        const char *ref = kt_shared(rel);
        KT_CHECK(ref != NULL);
        if (!ref) continue;
        /* a shared file's KL is measured once */
        shared_kl[i] = -1;
        for (size_t k = 0; k < i; k++)
            if (strcmp(cases[k].shared, cases[i].shared) == 0) shared_kl[i] = shared_kl[k];
        if (shared_kl[i] < 0) shared_kl[i] = mean_kl(ref, &rf);
        snprintf(out, sizeof out, "quality-%s.gguf", cases[i].name);
        const char *path = tmp_path(out);
        KT_CHECK_OK(quantize(f16, path, cases[i].ftype, 0));
        double kl = same_file(path, ref) ? shared_kl[i] : mean_kl(path, &rf);
        printf("  %-7s mean KL %.6f (shared %s %.6f)%s\n", cases[i].name, kl, cases[i].shared, shared_kl[i],
               same_file(path, ref) ? ", byte-identical" : "");
        KT_CHECKF(kl <= 1.1 * shared_kl[i], "%s: mean KL %.6f > 1.1 x %.6f", cases[i].name, kl, shared_kl[i]);
        unlink(path);
    }
    ref_free(&rf);
}

/* BF16 and F32 inputs: the draft model's BF16 file and an F32 copy of its
 * F16 file, each to Q8_0, stay as close to the F16 reference as Q8_0 of
 * the F16 file does (+10%, and under the README's 0.005). */
static void test_float_inputs(void) {
    const char *f16 = kt_shared("models/tiny-draft-f16.gguf"), *bf16 = kt_shared("models/tiny-draft-bf16.gguf");
    const char *rpath = kt_shared("reference/tiny-draft-f16.logits");
    if (!f16 || !bf16 || !rpath) KT_SKIP("../shared not found");
    ref_file rf;
    KT_CHECK(ref_load(rpath, &rf) == 0);
    const char *q_f16 = tmp_path("d-f16-q8.gguf"), *q_bf16 = tmp_path("d-bf16-q8.gguf");
    const char *f32 = tmp_path("d-f32.gguf"), *q_f32 = tmp_path("d-f32-q8.gguf");
    KT_CHECK_OK(quantize(f16, q_f16, KILN_FTYPE_Q8_0, 0));
    KT_CHECK_OK(quantize(bf16, q_bf16, KILN_FTYPE_Q8_0, 0));
    KT_CHECK_OK(quantize(f16, f32, KILN_FTYPE_F32, 0));
    KT_CHECK_OK(quantize(f32, q_f32, KILN_FTYPE_Q8_0, 0));
    /* F16 -> F32 -> Q8_0 is F16 -> Q8_0 (the F32 step is exact) */
    KT_CHECK(same_file(q_f16, q_f32));
    double k16 = mean_kl(q_f16, &rf), kb16 = mean_kl(q_bf16, &rf);
    printf("  draft q8_0 from f16: mean KL %.6f, from bf16: %.6f\n", k16, kb16);
    KT_CHECK(k16 <= 0.005 && kb16 <= KILN_MAX(1.1 * k16, 0.005));
    unlink(q_f16);
    unlink(q_bf16);
    unlink(f32);
    unlink(q_f32);
    ref_free(&rf);
}

/* ---- failures ---- */

static int32_t cancel_at_3(uint64_t i, uint64_t n, const char *name, int32_t type, void *user) {
    (*(int *)user)++;
    return i == 3;
}

static void test_errors(void) {
    const char *out = tmp_path("err.gguf"), *junk = tmp_path("junk.gguf");
    kiln_quantize_params qp;
    kiln_quantize_params_init(&qp);
    KT_CHECK(qp.struct_size == sizeof qp && qp.ftype == KILN_FTYPE_Q4_K_M && qp.flags == 0);
    KT_CHECK(kiln_model_quantize(NULL, out, NULL) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_model_quantize(out, NULL, NULL) == KILN_E_INVALID_ARG);
    KT_CHECK(kiln_model_quantize(tmp_path("none.gguf"), out, NULL) == KILN_E_IO);
    KT_CHECK(strstr(kiln_last_error(), "none.gguf") != NULL);
    FILE *f = fopen(junk, "wb");
    if (f) {
        fputs("GGUF but not really a model file", f);
        fclose(f);
    }
    KT_CHECK(kiln_model_quantize(junk, out, NULL) == KILN_E_FORMAT);
    KT_CHECK(!file_exists(out));

    const char *in = kt_shared("models/tiny-draft-f16.gguf");
    if (!in) KT_SKIP("../shared not found");
    KT_CHECK(quantize(in, out, 4, 0) == KILN_E_INVALID_ARG); /* Q4_1_SOME_F16: not a target */
    KT_CHECK(quantize(in, out, KILN_FTYPE_Q8_0, 1u << 7) == KILN_E_INVALID_ARG);
    qp.ftype = KILN_FTYPE_Q8_0;
    qp.n_threads = -1;
    KT_CHECK(kiln_model_quantize(in, out, &qp) == KILN_E_INVALID_ARG);
    qp.struct_size = 2;
    KT_CHECK(kiln_model_quantize(in, out, &qp) == KILN_E_INVALID_ARG);
    KT_CHECK(quantize(in, tmp_path("no/such/dir.gguf"), KILN_FTYPE_Q8_0, 0) == KILN_E_IO);
    KT_CHECK(!file_exists(out) && stray_files() == 0);

    /* A struct from an older caller (only struct_size, ftype) works. */
    kiln_quantize_params old;
    kiln_quantize_params_init(&old);
    old.struct_size = offsetof(kiln_quantize_params, flags);
    old.ftype = KILN_FTYPE_Q8_0;
    old.flags = 0xdead; /* past struct_size: ignored */
    KT_CHECK_OK(kiln_model_quantize(in, out, &old));
    KT_CHECK(file_exists(out) && stray_files() == 0);

    /* quantized input: refused unless asked for; then it loads */
    const char *q4 = tmp_path("q4.gguf");
    KT_CHECK(quantize(out, q4, KILN_FTYPE_Q4_0, 0) == KILN_E_UNSUPPORTED);
    KT_CHECK(strstr(kiln_last_error(), "already q8_0") != NULL);
    KT_CHECK(!file_exists(q4));
    KT_CHECK_OK(quantize(out, q4, KILN_FTYPE_Q4_0, KILN_QUANTIZE_ALLOW_REQUANTIZE));
    kiln_model *m = NULL;
    KT_CHECK_OK(kt_model_load(q4, NULL, &m));
    kiln_model_free(m);
    unlink(q4);

    /* cancel: CANCELLED, the old output stays as it was */
    char *before = NULL;
    size_t nb = 0;
    before = ref_read_all(out, &nb);
    int calls = 0;
    kiln_quantize_params_init(&qp);
    qp.ftype = KILN_FTYPE_Q4_0;
    qp.progress = cancel_at_3;
    qp.progress_user = &calls;
    KT_CHECK(kiln_model_quantize(in, out, &qp) == KILN_E_CANCELLED);
    KT_CHECK(calls == 4);
    size_t na = 0;
    char *after = ref_read_all(out, &na);
    KT_CHECK(before && after && na == nb && memcmp(before, after, na) == 0);
    KT_CHECK(stray_files() == 0);
    free(before);
    free(after);
    unlink(out);

    /* a full disk: writes past the file size limit fail (EFBIG) */
    struct rlimit old_lim, lim;
    KT_CHECK(getrlimit(RLIMIT_FSIZE, &old_lim) == 0);
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old_lim;
    lim.rlim_cur = 1 << 20;
    KT_CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    kiln_status st = quantize(in, out, KILN_FTYPE_F32, 0);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    signal(SIGXFSZ, old_sig);
    KT_CHECKF(st == KILN_E_IO, "full disk: %d %s", st, kiln_last_error());
    KT_CHECK(!file_exists(out) && stray_files() == 0);
}

static void test_alloc_failures(void) {
    const char *in = kt_shared("models/tiny-draft-f16.gguf");
    if (!in) KT_SKIP("../shared not found");
    const char *out = tmp_path("oom.gguf");
    uint64_t base = kiln_alloc_live_bytes();
    int oom = 0, bad = 0, ok = 0;
    for (uint64_t k = 1; k < 5000 && !ok; k++) {
        kiln_test_fail_alloc_after(k);
        kiln_status st = quantize(in, out, KILN_FTYPE_Q8_0, 0);
        kiln_test_fail_alloc_after(0);
        if (st == KILN_OK) ok = 1;
        else if (st == KILN_E_OOM_HOST && !file_exists(out)) oom++;
        else bad++;
        if (kiln_alloc_live_bytes() != base) bad++;
    }
    printf("  %d allocation failures, each a clean KILN_E_OOM_HOST\n", oom);
    KT_CHECK(ok && oom > 10 && bad == 0 && stray_files() == 0);
    unlink(out);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln-quantize-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    KT_RUN(test_type_choice);
    KT_RUN(test_byte_identical);
    KT_RUN(test_quality);
    KT_RUN(test_float_inputs);
    KT_RUN(test_errors);
    KT_RUN(test_alloc_failures);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return kt_finish();
}
