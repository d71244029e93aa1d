/*
 * ref_f64.c - a float64 forward pass of a shared model, to tell which of
 * kiln and llama.cpp's reference outputs (../shared/reference) deviates
 * from the exact computation, and where. Diagnostic, not part of
 * `make check` (a 1052-token prompt takes about a minute on one core).
 *
 * The forward pass is the one of lib/forward.c written out in double:
 * weights dequantized with kiln's own dequantizers (so the weights are
 * exactly the file's), activations never quantized or rounded, RoPE angles
 * pos * base^(-2i/n_rot) in double, softmax in double. The one rounding
 * kept by default is K and V to F16, because both kiln and llama.cpp store
 * the KV cache in F16 (a storage format, not an arithmetic choice);
 * --kv64 keeps them in double too.
 *
 * For each prompt it prints, for groups of reference rows, max |logit
 * difference| and mean KL(f64 || x) of:
 *   kiln       kiln as built (CPU backend, 2 threads, ubatch 512)
 *   kiln+ggml  kiln with llama.cpp's attention arithmetic (test/ggml_attn.h)
 *   llama.cpp  the reference file
 * and kiln against llama.cpp. With -v, one line per row. With --greedy N,
 * the first N tokens of the greedy continuation by each of them and by
 * the float64 pass (recomputed per token), with the float64 top-2 gaps.
 *
 * Build and run from the repository root:
 *   make build/libkiln.a
 *   cc -O2 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Ilib -Ibackends/cpu -Itest \
 *      test/ref_f64.c build/libkiln.a -lm -lpthread -ldl -o build/ref_f64
 *   build/ref_f64 [-v] [--kv64] [--greedy N] MODEL.gguf REF.logits PROMPT_INDEX...
 * e.g. build/ref_f64 ../shared/models/tiny-target-f16.gguf \
 *      ../shared/reference/tiny-target-f16.logits 7
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"
#include "ggml_attn.h"
#include "model.h"
#include "quant.h"
#include "refdata.h"

/* a weight as double rows: w[r * cols + c] */
typedef struct {
    double *w;
    int64_t rows, cols;
} dmat;

static int to_double(const kiln_weight *t, dmat *out) {
    out->w = NULL;
    out->rows = out->cols = 0;
    if (!t->buf) return 0;
    out->cols = t->ne[0];
    out->rows = t->ne[1] ? t->ne[1] : 1;
    out->w = malloc(sizeof(double) * (size_t)(out->rows * out->cols));
    float *row = malloc(sizeof(float) * (size_t)out->cols);
    if (!out->w || !row) return -1;
    for (int64_t r = 0; r < out->rows; r++) {
        const uint8_t *src = t->buf->data + t->offset + (uint64_t)r * t->row_stride;
        if (kiln_dequantize_row(t->type, src, row, out->cols) != KILN_OK) {
            fprintf(stderr, "ref_f64: cannot dequantize type %d: %s\n", t->type, kiln_last_error());
            free(row);
            return -1;
        }
        for (int64_t c = 0; c < out->cols; c++) out->w[r * out->cols + c] = row[c];
    }
    free(row);
    return 0;
}

/* y[t][r] = sum_c W[r][c] x[t][c] (+ b[r]) for n tokens */
static void matmul(const dmat *W, const dmat *b, const double *x, int64_t n, double *y) {
    const int64_t R = W->rows, C = W->cols;
    for (int64_t t = 0; t < n; t++) {
        const double *xt = x + t * C;
        for (int64_t r = 0; r < R; r++) {
            const double *w = W->w + r * C;
            double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            int64_t c = 0;
            for (; c + 4 <= C; c += 4) {
                a0 += w[c] * xt[c];
                a1 += w[c + 1] * xt[c + 1];
                a2 += w[c + 2] * xt[c + 2];
                a3 += w[c + 3] * xt[c + 3];
            }
            for (; c < C; c++) a0 += w[c] * xt[c];
            y[t * R + r] = (a0 + a1) + (a2 + a3) + (b && b->w ? b->w[r] : 0.0);
        }
    }
}

static void rms_norm(const double *x, const dmat *w, int64_t n, int64_t width, double eps, double *y) {
    for (int64_t t = 0; t < n; t++) {
        double ss = 0;
        for (int64_t i = 0; i < width; i++) ss += x[t * width + i] * x[t * width + i];
        const double s = 1.0 / sqrt(ss / (double)width + eps);
        for (int64_t i = 0; i < width; i++) y[t * width + i] = x[t * width + i] * s * w->w[i];
    }
}

static void rope(double *x, int64_t n, uint32_t n_head, const kiln_hparams *hp, const float *factors) {
    const uint32_t d = hp->head_dim, half = hp->n_rot / 2;
    for (int64_t t = 0; t < n; t++)
        for (uint32_t h = 0; h < n_head; h++) {
            double *v = x + (t * n_head + h) * d;
            for (uint32_t i = 0; i < half; i++) {
                double th = (double)t * pow((double)hp->rope_freq_base, -2.0 * i / hp->n_rot);
                th = th / (factors ? factors[i] : 1.0) * hp->rope_freq_scale;
                const double c = cos(th), s = sin(th);
                double *a = hp->rope_mode == KILN_ROPE_NEOX ? v + i : v + 2 * i;
                double *b = hp->rope_mode == KILN_ROPE_NEOX ? v + i + half : v + 2 * i + 1;
                const double x0 = *a, x1 = *b;
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
}

typedef struct {
    dmat attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, ffn_norm, gate, up, down;
} dlayer;

/* Float64 logits of the tokens' rows `rows` (n_rows of them) into out. */
static int forward_f64(const kiln_model *m, const int32_t *tokens, int64_t n, const int32_t *rows, uint32_t n_rows,
                       int kv64, double *out) {
    const kiln_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, D = hp->head_dim, Q = (int64_t)hp->n_head * D, KV = (int64_t)hp->n_head_kv * D;
    const int64_t F = hp->n_ff, V = hp->n_vocab;
    dmat emb, onorm, outw;
    dlayer *L = calloc(hp->n_layer, sizeof *L);
    if (to_double(&m->tok_embd, &emb) || to_double(&m->output_norm, &onorm) || to_double(&m->output, &outw))
        return -1;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const kiln_layer_weights *w = &m->layers[l];
        if (to_double(&w->attn_norm, &L[l].attn_norm) || to_double(&w->wq, &L[l].wq) || to_double(&w->wk, &L[l].wk) ||
            to_double(&w->wv, &L[l].wv) || to_double(&w->wo, &L[l].wo) || to_double(&w->bq, &L[l].bq) ||
            to_double(&w->bk, &L[l].bk) || to_double(&w->bv, &L[l].bv) || to_double(&w->q_norm, &L[l].q_norm) ||
            to_double(&w->k_norm, &L[l].k_norm) || to_double(&w->ffn_norm, &L[l].ffn_norm) ||
            to_double(&w->w_gate, &L[l].gate) || to_double(&w->w_up, &L[l].up) || to_double(&w->w_down, &L[l].down))
            return -1;
    }
    double *x = malloc(sizeof(double) * n * E), *h = malloc(sizeof(double) * n * E);
    double *q = malloc(sizeof(double) * n * Q), *k = malloc(sizeof(double) * n * KV);
    double *v = malloc(sizeof(double) * n * KV), *a = malloc(sizeof(double) * n * Q);
    double *g = malloc(sizeof(double) * n * F), *u = malloc(sizeof(double) * n * F);
    double *p = malloc(sizeof(double) * n);
    for (int64_t t = 0; t < n; t++) memcpy(x + t * E, emb.w + (int64_t)tokens[t] * E, sizeof(double) * E);
    const double scale = 1.0 / sqrt((double)D);
    const uint32_t group = hp->n_head / hp->n_head_kv;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        rms_norm(x, &L[l].attn_norm, n, E, hp->rms_eps, h);
        matmul(&L[l].wq, &L[l].bq, h, n, q);
        matmul(&L[l].wk, &L[l].bk, h, n, k);
        matmul(&L[l].wv, &L[l].bv, h, n, v);
        if (L[l].q_norm.w) {
            rms_norm(q, &L[l].q_norm, n * hp->n_head, D, hp->rms_eps, q);
            rms_norm(k, &L[l].k_norm, n * hp->n_head_kv, D, hp->rms_eps, k);
        }
        rope(q, n, hp->n_head, hp, m->rope_freqs);
        rope(k, n, hp->n_head_kv, hp, m->rope_freqs);
        if (!kv64)
            for (int64_t i = 0; i < n * KV; i++) {
                k[i] = kiln_fp16_to_fp32(kiln_fp32_to_fp16((float)k[i]));
                v[i] = kiln_fp16_to_fp32(kiln_fp32_to_fp16((float)v[i]));
            }
        for (int64_t t = 0; t < n; t++)
            for (uint32_t hd = 0; hd < hp->n_head; hd++) {
                const double *qr = q + (t * hp->n_head + hd) * D;
                const int64_t kh = hd / group;
                double mx = -INFINITY, sum = 0;
                for (int64_t s = 0; s <= t; s++) {
                    const double *kr = k + s * KV + kh * D;
                    double dot = 0;
                    for (int64_t i = 0; i < D; i++) dot += qr[i] * kr[i];
                    p[s] = dot * scale;
                    if (p[s] > mx) mx = p[s];
                }
                for (int64_t s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                double *o = a + (t * hp->n_head + hd) * D;
                for (int64_t i = 0; i < D; i++) o[i] = 0;
                for (int64_t s = 0; s <= t; s++) {
                    const double *vr = v + s * KV + kh * D;
                    for (int64_t i = 0; i < D; i++) o[i] += p[s] * vr[i];
                }
                for (int64_t i = 0; i < D; i++) o[i] /= sum;
            }
        matmul(&L[l].wo, NULL, a, n, h);
        for (int64_t i = 0; i < n * E; i++) x[i] += h[i];
        rms_norm(x, &L[l].ffn_norm, n, E, hp->rms_eps, h);
        matmul(&L[l].gate, NULL, h, n, g);
        matmul(&L[l].up, NULL, h, n, u);
        for (int64_t i = 0; i < n * F; i++) g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
        matmul(&L[l].down, NULL, g, n, h);
        for (int64_t i = 0; i < n * E; i++) x[i] += h[i];
    }
    for (uint32_t r = 0; r < n_rows; r++) {
        rms_norm(x + (int64_t)rows[r] * E, &onorm, 1, E, hp->rms_eps, h);
        matmul(&outw, NULL, h, 1, out + (int64_t)r * V);
    }
    free(x), free(h), free(q), free(k), free(v), free(a), free(g), free(u), free(p);
    free(emb.w), free(onorm.w), free(outw.w);
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        dmat *all = &L[l].attn_norm;
        for (size_t i = 0; i < sizeof(dlayer) / sizeof(dmat); i++) free(all[i].w);
    }
    free(L);
    return 0;
}

/* kiln's logits of the reference rows (emulate: llama.cpp's attention) */
static int run_kiln(kiln_model *m, const ref_prompt *p, int emulate, float *out) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 2048;
    cp.n_ubatch = 512;
    cp.n_threads = 2;
    kiln_context *c = NULL;
    if (kiln_context_create(m, &cp, &c) != KILN_OK) return -1;
    if (emulate) ggml_attn_install(c);
    int8_t *want = calloc(p->n_tokens, 1);
    for (uint32_t r = 0; r < p->n_rows; r++) want[p->row_pos[r]] = 1;
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = p->n_tokens;
    b.tokens = p->tokens;
    b.logits = want;
    int rc = kiln_decode(c, &b) == KILN_OK ? 0 : -1;
    const int32_t nv = kiln_model_n_vocab(m);
    for (uint32_t r = 0; rc == 0 && r < p->n_rows; r++)
        memcpy(out + (size_t)r * nv, kiln_context_logits(c, p->row_pos[r]), sizeof(float) * nv);
    free(want);
    kiln_context_free(c);
    return rc;
}

/* Greedy continuation of n tokens by kiln (emulate: with llama.cpp's
 * attention), decoding the prompt in one batch then one token at a time,
 * as test_reference.c does. */
static int greedy_kiln(kiln_model *m, const ref_prompt *p, int emulate, uint32_t n, int32_t *gen) {
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = 2048;
    cp.n_ubatch = 512;
    cp.n_threads = 2;
    kiln_context *c = NULL;
    if (kiln_context_create(m, &cp, &c) != KILN_OK) return -1;
    if (emulate) ggml_attn_install(c);
    const int32_t nv = kiln_model_n_vocab(m);
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = p->n_tokens;
    b.tokens = p->tokens;
    int rc = 0;
    for (uint32_t g = 0; g < n; g++) {
        if (kiln_decode(c, &b) != KILN_OK) {
            rc = -1;
            break;
        }
        const float *l = kiln_context_logits(c, -1);
        int32_t best = 0;
        for (int32_t i = 1; i < nv; i++)
            if (l[i] > l[best]) best = i;
        gen[g] = best;
        b.n_tokens = 1;
        b.tokens = &gen[g];
    }
    kiln_context_free(c);
    return rc;
}

/* Greedy continuation in float64 (the whole sequence recomputed per
 * token); gap[g] = the top-2 logit gap at step g. */
static int greedy_f64(const kiln_model *m, const ref_prompt *p, int kv64, uint32_t n, int32_t *gen, double *gap) {
    const int nv = (int)m->hp.n_vocab;
    int32_t *toks = malloc(sizeof(int32_t) * (p->n_tokens + n));
    double *l = malloc(sizeof(double) * nv);
    memcpy(toks, p->tokens, sizeof(int32_t) * p->n_tokens);
    for (uint32_t g = 0; g < n; g++) {
        const int32_t last = (int32_t)(p->n_tokens + g - 1);
        if (forward_f64(m, toks, p->n_tokens + g, &last, 1, kv64, l)) return -1;
        int32_t best = 0, second = -1;
        for (int32_t i = 1; i < nv; i++)
            if (l[i] > l[best]) best = i;
        for (int32_t i = 0; i < nv; i++)
            if (i != best && (second < 0 || l[i] > l[second])) second = i;
        gen[g] = best;
        gap[g] = l[best] - l[second];
        toks[p->n_tokens + g] = best;
    }
    free(toks);
    free(l);
    return 0;
}

static void print_gen(const char *who, const int32_t *gen, const int32_t *ref, uint32_t n) {
    uint32_t first = n;
    for (uint32_t g = 0; g < n && first == n; g++)
        if (gen[g] != ref[g]) first = g;
    printf("    %-10s", who);
    for (uint32_t g = 0; g < n; g++) printf(" %d", gen[g]);
    if (first < n) printf("   (differs from llama.cpp at token %u)\n", first);
    else printf("   (same as llama.cpp)\n");
}

typedef struct {
    double max_diff, kl;
    long rows;
} acc;

/* argmax of n floats or doubles, and the gap to the runner-up */
static int top2(const float *xf, const double *xd, int n, double *gap) {
    int b = 0, s = -1;
    for (int i = 1; i < n; i++)
        if ((xf ? xf[i] : xd[i]) > (xf ? xf[b] : xd[b])) b = i;
    for (int i = 0; i < n; i++)
        if (i != b && (s < 0 || (xf ? xf[i] : xd[i]) > (xf ? xf[s] : xd[s]))) s = i;
    *gap = (xf ? xf[b] : xd[b]) - (xf ? xf[s] : xd[s]);
    return b;
}

/* KL(p || q) of softmax(ref) and softmax(x); max |ref - x| */
static void cmp_row(const double *ref, const float *xf, const double *xd, int nv, acc *s) {
    double mr = -1e300, mx = -1e300, zr = 0, zx = 0, kl = 0;
    for (int i = 0; i < nv; i++) {
        const double xi = xf ? xf[i] : xd[i];
        if (fabs(ref[i] - xi) > s->max_diff) s->max_diff = fabs(ref[i] - xi);
        if (ref[i] > mr) mr = ref[i];
        if (xi > mx) mx = xi;
    }
    for (int i = 0; i < nv; i++) {
        zr += exp(ref[i] - mr);
        zx += exp((xf ? xf[i] : xd[i]) - mx);
    }
    for (int i = 0; i < nv; i++) {
        const double lp = ref[i] - mr - log(zr), lq = (xf ? xf[i] : xd[i]) - mx - log(zx);
        kl += exp(lp) * (lp - lq);
    }
    s->kl += kl;
    s->rows++;
}

int main(int argc, char **argv) {
    int verbose = 0, kv64 = 0, ai = 1;
    uint32_t n_greedy = 0;
    for (; ai < argc && argv[ai][0] == '-'; ai++) {
        if (!strcmp(argv[ai], "-v")) verbose = 1;
        else if (!strcmp(argv[ai], "--kv64")) kv64 = 1;
        else if (!strcmp(argv[ai], "--greedy") && ai + 1 < argc) n_greedy = (uint32_t)atoi(argv[++ai]);
        else break;
    }
    if (argc - ai < 3) {
        fprintf(stderr, "usage: ref_f64 [-v] [--kv64] [--greedy N] MODEL.gguf REF.logits PROMPT_INDEX...\n");
        return 2;
    }
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    kiln_model *m = NULL;
    if (kiln_model_load(argv[ai], &mp, &m) != KILN_OK) {
        fprintf(stderr, "ref_f64: %s\n", kiln_last_error());
        return 1;
    }
    ref_file rf;
    if (ref_load(argv[ai + 1], &rf) != 0 || rf.n_vocab != m->hp.n_vocab) {
        fprintf(stderr, "ref_f64: cannot read %s or vocabularies differ\n", argv[ai + 1]);
        return 1;
    }
    const int nv = (int)rf.n_vocab;
    acc tot[4];          /* all rows of all prompts given */
    long agree[4] = {0}; /* rows whose argmax is the other side's */
    memset(tot, 0, sizeof tot);
    printf("%s, K/V %s in the float64 pass\n", argv[ai], kv64 ? "in double" : "rounded to F16");
    for (int pi = ai + 2; pi < argc; pi++) {
        const uint32_t idx = (uint32_t)atoi(argv[pi]);
        if (idx >= rf.n_prompts) continue;
        const ref_prompt *p = &rf.p[idx];
        double *f64 = malloc(sizeof(double) * p->n_rows * nv);
        float *kn = malloc(sizeof(float) * p->n_rows * nv), *ke = malloc(sizeof(float) * p->n_rows * nv);
        if (forward_f64(m, p->tokens, p->n_tokens, p->row_pos, p->n_rows, kv64, f64) || run_kiln(m, p, 0, kn) ||
            run_kiln(m, p, 1, ke)) {
            fprintf(stderr, "ref_f64: prompt %u failed: %s\n", idx, kiln_last_error());
            return 1;
        }
        /* row groups: positions below 1024 and from 1024 (the reference's
         * last, short ubatch of the long prompt) */
        acc s[2][4];
        memset(s, 0, sizeof s);
        for (uint32_t r = 0; r < p->n_rows; r++) {
            const int grp = p->row_pos[r] >= 1024;
            const double *ref = f64 + (size_t)r * nv;
            const float *ll = p->logits + (size_t)r * nv;
            acc row[4];
            memset(row, 0, sizeof row);
            cmp_row(ref, kn + (size_t)r * nv, NULL, nv, &row[0]);
            cmp_row(ref, ke + (size_t)r * nv, NULL, nv, &row[1]);
            cmp_row(ref, ll, NULL, nv, &row[2]);
            double *lld = malloc(sizeof(double) * nv);
            for (int i = 0; i < nv; i++) lld[i] = ll[i];
            cmp_row(lld, kn + (size_t)r * nv, NULL, nv, &row[3]);
            free(lld);
            for (int j = 0; j < 4; j++) {
                if (row[j].max_diff > s[grp][j].max_diff) s[grp][j].max_diff = row[j].max_diff;
                s[grp][j].kl += row[j].kl;
                s[grp][j].rows++;
                if (row[j].max_diff > tot[j].max_diff) tot[j].max_diff = row[j].max_diff;
                tot[j].kl += row[j].kl;
                tot[j].rows++;
            }
            double g_f64, g_ll, g_kn, g_ke;
            const int a_f64 = top2(NULL, ref, nv, &g_f64), a_ll = top2(ll, NULL, nv, &g_ll);
            const int a_kn = top2(kn + (size_t)r * nv, NULL, nv, &g_kn);
            const int a_ke = top2(ke + (size_t)r * nv, NULL, nv, &g_ke);
            agree[0] += a_kn == a_f64;
            agree[1] += a_ke == a_f64;
            agree[2] += a_ll == a_f64;
            agree[3] += a_kn == a_ll;
            if (a_kn != a_ll || a_ke != a_ll)
                printf("  pos %4d: argmax llama.cpp %d (gap %.3f), kiln %d (gap %.3f), kiln+ggml %d (gap %.3f), "
                       "f64 %d (gap %.3f)\n",
                       p->row_pos[r], a_ll, g_ll, a_kn, g_kn, a_ke, g_ke, a_f64, g_f64);
            if (verbose)
                printf("  pos %4d: max|d| kiln %.4f kiln+ggml %.4f llama.cpp %.4f (kiln vs llama.cpp %.4f)\n",
                       p->row_pos[r], row[0].max_diff, row[1].max_diff, row[2].max_diff, row[3].max_diff);
        }
        static const char *names[4] = {"kiln      vs f64", "kiln+ggml vs f64", "llama.cpp vs f64",
                                       "kiln vs llama.cpp"};
        printf("prompt %u (%u tokens)\n", idx, p->n_tokens);
        for (int grp = 0; grp < 2; grp++) {
            if (!s[grp][0].rows) continue;
            printf("  rows at positions %s 1024 (%ld rows): max |diff| / mean KL\n", grp ? ">=" : "<",
                   s[grp][0].rows);
            for (int j = 0; j < 4; j++)
                printf("    %-18s %.4f / %.2e\n", names[j], s[grp][j].max_diff, s[grp][j].kl / s[grp][j].rows);
        }
        free(f64), free(kn), free(ke);
        if (n_greedy > p->n_gen) n_greedy = p->n_gen;
        if (n_greedy) {
            int32_t gk[64], ge[64], gf[64];
            double gap[64];
            if (n_greedy > 64) n_greedy = 64;
            if (greedy_kiln(m, p, 0, n_greedy, gk) || greedy_kiln(m, p, 1, n_greedy, ge) ||
                greedy_f64(m, p, kv64, n_greedy, gf, gap))
                return 1;
            printf("  greedy continuation (%u tokens):\n", n_greedy);
            print_gen("llama.cpp", p->gen, p->gen, n_greedy);
            print_gen("kiln", gk, p->gen, n_greedy);
            print_gen("kiln+ggml", ge, p->gen, n_greedy);
            print_gen("f64", gf, p->gen, n_greedy);
            printf("    f64 top-2 gap per token:");
            for (uint32_t g = 0; g < n_greedy; g++) printf(" %.3f", gap[g]);
            printf("\n");
        }
    }
    if (tot[0].rows) {
        static const char *names[4] = {"kiln      vs f64", "kiln+ggml vs f64", "llama.cpp vs f64",
                                       "kiln vs llama.cpp"};
        printf("all %ld rows: max |diff| / mean KL / argmax agreement\n", tot[0].rows);
        for (int j = 0; j < 4; j++)
            printf("    %-18s %.4f / %.2e / %.2f%%\n", names[j], tot[j].max_diff, tot[j].kl / tot[j].rows,
                   100.0 * agree[j] / tot[j].rows);
    }
    ref_free(&rf);
    kiln_model_free(m);
    return 0;
}
