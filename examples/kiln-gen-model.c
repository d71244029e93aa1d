// KILN_EXAMPLE_STATIC
/*
 * kiln-gen-model - writes a GGUF model of a real architecture's shapes with
 * random weights, for benchmarks (speed does not depend on weight values).
 *
 *   kiln-gen-model --shape NAME --type TYPE --vocab FILE -o OUT.gguf
 *                  [--seed N] [-t THREADS] [--layers N] [-q]
 *
 * Shapes (architecture "llama"):
 *   mistral-7b  32 layers, 4096 dim, 32 heads, 8 KV heads, FFN 14336, rope base 1e6
 *   llama2-7b   32 layers, 4096 dim, 32 heads, 32 KV heads, FFN 11008, rope base 1e4
 *   llama-1b    16 layers, 2048 dim, 32 heads, 8 KV heads, FFN 8192, rope base 5e5
 *   tiny        2 layers, 256 dim, 4 heads, 2 KV heads, FFN 768, rope base 1e4 (tests)
 * The vocabulary and tokenizer (every tokenizer.* key) come from --vocab, any
 * GGUF file with a tokenizer (e.g. ../shared/vocab/vocab-llama-spm.gguf: 32000
 * tokens); its token count sets the embedding and output sizes.
 * TYPE: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k q4_k_m q5_k_m;
 * the mixes get the tensor types kiln-quantize would choose (lib/quantize.h).
 *
 * Weights are random block bytes, not quantized floats: each row is filled
 * from its own seeded generator (so the file depends only on --seed, not on
 * the thread count) and each block's scale fields are then set to finite
 * F16 values that give the weights of a matrix with K inputs an RMS of
 * about 1/sqrt(K), so activations stay finite through any number of layers.
 * Norm weights are 1. The file is streamed (one slice of rows at a time,
 * through a temporary file renamed at the end), so memory stays small for
 * any size. Exit status: 0 success, 1 failure (no file left), 2 bad usage.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "quant.h"
#include "quant_blocks.h"
#include "quantize.h"

#define GEN_SLICE_BYTES ((uint64_t)64 << 20) /* output bytes per slice */
#define GEN_MAX_THREADS 256

typedef struct shape {
    const char *name;
    uint32_t n_layer, dim, n_head, n_kv, ffn, ctx;
    float rope_base;
} shape;

static const shape shapes[] = {
    {"mistral-7b", 32, 4096, 32, 8, 14336, 32768, 1e6f},
    {"llama2-7b", 32, 4096, 32, 32, 11008, 4096, 1e4f},
    {"llama-1b", 16, 2048, 32, 8, 8192, 8192, 5e5f},
    {"tiny", 2, 256, 4, 2, 768, 2048, 1e4f},
};

static const struct {
    const char *name;
    int32_t ftype;
} ftypes[] = {
    {"f32", KILN_FTYPE_F32},       {"f16", KILN_FTYPE_F16},       {"bf16", KILN_FTYPE_BF16},
    {"q8_0", KILN_FTYPE_Q8_0},     {"q4_0", KILN_FTYPE_Q4_0},     {"q4_1", KILN_FTYPE_Q4_1},
    {"q5_0", KILN_FTYPE_Q5_0},     {"q5_1", KILN_FTYPE_Q5_1},     {"q4_k", KILN_FTYPE_Q4_K},
    {"q5_k", KILN_FTYPE_Q5_K},     {"q6_k", KILN_FTYPE_Q6_K},     {"q4_k_m", KILN_FTYPE_Q4_K_M},
    {"q5_k_m", KILN_FTYPE_Q5_K_M},
};

/* ---- random bytes ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* xoshiro256** state, seeded per row from (seed, tensor, row). */
typedef struct rng { uint64_t s[4]; } rng;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}
static void rng_seed(rng *r, uint64_t seed, uint64_t tensor, uint64_t row) {
    uint64_t sm = seed ^ (tensor * 0xd1342543de82ef95ull) ^ (row * 0x2545f4914f6cdd1dull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&sm);
}
static void rng_fill(rng *r, uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t v = rng_next(r);
        memcpy(p, &v, 8);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = rng_next(r);
        memcpy(p, &v, n);
    }
}

/* ---- one row of random weights ---- */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Fills a row of n elements of `type` whose values have an RMS of about
 * `rms`. Block types: random bytes, then the scale fields set so that
 * (the RMS of the quantized levels) * d = rms. */
static void fill_row(int32_t type, uint8_t *row, int64_t n, float rms, rng *r) {
    const kiln_type_traits *tr = kiln_type_traits_get(type);
    const int64_t nb = n / tr->block_size;
    const size_t bs = tr->type_size;
    rng_fill(r, row, (size_t)nb * bs);
    if (type == KILN_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, row + 4 * i, 4);
            float f = (float)v * 0x1p-31f * rms * 1.7320508f; /* uniform, RMS rms */
            memcpy(row + 4 * i, &f, 4);
        }
        return;
    }
    if (type == KILN_TYPE_F16 || type == KILN_TYPE_BF16) {
        /* sign, a random mantissa and one of the 4 binades below 2 * rms:
         * cheap bit twiddling, every value finite and normal */
        int e2;
        frexpf(rms, &e2); /* rms = m * 2^e2, m in [0.5, 1) */
        int top = e2; /* values below 2^top */
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            int e = top - 1 - (h >> 13 & 3);
            uint16_t v = type == KILN_TYPE_F16
                ? (uint16_t)((h & 0x83ff) | (uint16_t)((e + 15 < 1 ? 1 : e + 15) << 10))
                : (uint16_t)((h & 0x807f) | (uint16_t)((e + 127 < 1 ? 1 : e + 127) << 7));
            put16(row + 2 * i, v);
        }
        return;
    }
    /* the RMS of each format's integer levels for random bytes (uniform
     * levels; K formats: level * uniform 6-bit or 8-bit scale, plus the
     * min term), so d = rms / level_rms */
    float level_rms;
    switch (type) {
    case KILN_TYPE_Q8_0: level_rms = 73.9f; break;
    case KILN_TYPE_Q4_0: case KILN_TYPE_Q4_1: level_rms = 4.64f; break;
    case KILN_TYPE_Q5_0: case KILN_TYPE_Q5_1: level_rms = 9.24f; break;
    case KILN_TYPE_Q4_K: level_rms = 255.f; break;
    case KILN_TYPE_Q5_K: level_rms = 519.f; break;
    case KILN_TYPE_Q6_K: level_rms = 1369.f; break;
    default: level_rms = 1.f; break;
    }
    const uint16_t d = kiln_fp32_to_fp16(rms / level_rms);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = row + (size_t)b * bs;
        switch (type) {
        case KILN_TYPE_Q8_0: case KILN_TYPE_Q4_0: case KILN_TYPE_Q5_0:
            put16(blk, d); /* d first */
            break;
        case KILN_TYPE_Q4_1:
            put16(blk, d);
            put16(blk + 2, kiln_fp32_to_fp16(-7.5f * kiln_fp16_to_fp32(d))); /* centre 0..15 */
            break;
        case KILN_TYPE_Q5_1:
            put16(blk, d);
            put16(blk + 2, kiln_fp32_to_fp16(-15.5f * kiln_fp16_to_fp32(d)));
            break;
        case KILN_TYPE_Q4_K: case KILN_TYPE_Q5_K: {
            /* x = d * sc * q - dmin * mn: dmin = d * mean(q) centres it */
            float mean_q = type == KILN_TYPE_Q4_K ? 7.5f : 15.5f;
            put16(blk + offsetof(kiln_block_q4_K, d), d);
            put16(blk + offsetof(kiln_block_q4_K, dmin), kiln_fp32_to_fp16(mean_q * kiln_fp16_to_fp32(d)));
            break;
        }
        case KILN_TYPE_Q6_K:
            put16(blk + offsetof(kiln_block_q6_K, d), d);
            break;
        default:
            break;
        }
    }
}

/* ---- the model ---- */

typedef struct gtensor {
    const char *name;        /* first: kiln_quant_tensor_order sorts these;
                              * points into gen.names, which never moves */
    uint32_t n_dims;
    int64_t ne[2];
    int32_t type;
    bool norm;               /* all ones */
} gtensor;

typedef struct gen gen;
typedef struct gworker {
    gen *g;
    int64_t r0, r1;
} gworker;

struct gen {
    gtensor *t;
    size_t n_t;
    char (*names)[64];
    uint64_t seed;
    int n_threads;
    uint8_t *slice;
    gworker w[GEN_MAX_THREADS];
    /* the tensor being written */
    const gtensor *cur;
    size_t cur_index;
    uint64_t row_size;
    int64_t slice_r0;
    bool quiet;
};

static void *gen_rows(void *arg) {
    gworker *w = arg;
    gen *g = w->g;
    const gtensor *t = g->cur;
    const float rms = 1.f / sqrtf((float)t->ne[0]);
    for (int64_t r = w->r0; r < w->r1; r++) {
        uint8_t *row = g->slice + (uint64_t)(r - g->slice_r0) * g->row_size;
        rng rr;
        rng_seed(&rr, g->seed, g->cur_index, (uint64_t)r);
        fill_row(t->type, row, t->ne[0], rms, &rr);
    }
    return NULL;
}

static kiln_status produce(void *user, size_t index, kiln_gguf_sink *sink) {
    gen *g = user;
    const gtensor *t = &g->t[index];
    if (!g->quiet) fprintf(stderr, "[%3zu/%3zu] %-28s %s\n", index + 1, g->n_t, t->name, kiln_type_name(t->type));
    g->cur = t;
    g->cur_index = index;
    g->row_size = kiln_type_row_size(t->type, t->ne[0]);
    const int64_t rows = t->n_dims > 1 ? t->ne[1] : 1;
    if (t->norm) {
        float one = 1.f;
        for (int64_t i = 0; i < t->ne[0]; i++) {
            kiln_status st = kiln_gguf_sink_write(sink, &one, 4);
            if (st) return st;
        }
        return KILN_OK;
    }
    const int64_t per = KILN_MAX((int64_t)1, (int64_t)(GEN_SLICE_BYTES / g->row_size));
    for (int64_t r = 0; r < rows; r += per) {
        int64_t r1 = KILN_MIN(rows, r + per), n = r1 - r;
        int nt = (int)KILN_MIN((int64_t)g->n_threads, n);
        pthread_t th[GEN_MAX_THREADS];
        bool started[GEN_MAX_THREADS] = {false};
        g->slice_r0 = r;
        for (int i = 0; i < nt; i++) {
            g->w[i].g = g;
            g->w[i].r0 = r + n * i / nt;
            g->w[i].r1 = r + n * (i + 1) / nt;
        }
        for (int i = 1; i < nt; i++) started[i] = pthread_create(&th[i], NULL, gen_rows, &g->w[i]) == 0;
        gen_rows(&g->w[0]);
        for (int i = 1; i < nt; i++) {
            if (started[i]) pthread_join(th[i], NULL);
            else gen_rows(&g->w[i]); /* no thread: do its share here */
        }
        kiln_status st = kiln_gguf_sink_write(sink, g->slice, (size_t)((uint64_t)n * g->row_size));
        if (st) return st;
    }
    return KILN_OK;
}

static void add_t(gen *g, const char *name, uint32_t n_dims, int64_t ne0, int64_t ne1) {
    gtensor *t = &g->t[g->n_t];
    snprintf(g->names[g->n_t], sizeof g->names[0], "%s", name);
    t->name = g->names[g->n_t++];
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->norm = n_dims == 1;
}

static void usage(FILE *f) {
    fprintf(f,
        "usage: kiln-gen-model --shape NAME --type TYPE --vocab FILE -o OUT.gguf [options]\n"
        "  --shape NAME   mistral-7b, llama2-7b, llama-1b, tiny\n"
        "  --type TYPE    f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k q4_k_m q5_k_m\n"
        "  --vocab FILE   GGUF file whose tokenizer.* keys are copied (sets the vocabulary size)\n"
        "  -o FILE        output\n"
        "  --seed N       random seed (default 1); the file depends only on it\n"
        "  -t N           threads (default: all cores)\n"
        "  --layers N     override the shape's layer count\n"
        "  -q             no progress lines\n");
}

int main(int argc, char **argv) {
    const char *shape_name = NULL, *type_name = NULL, *vocab = NULL, *out = NULL;
    long threads = 0, layers = 0;
    unsigned long long seed = 1;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-q") == 0) {
            quiet = true;
        } else if (!v) {
            fprintf(stderr, "kiln-gen-model: '%s' needs a value or is unknown\n", a);
            usage(stderr);
            return 2;
        } else if (strcmp(a, "--shape") == 0) {
            shape_name = argv[++i];
        } else if (strcmp(a, "--type") == 0) {
            type_name = argv[++i];
        } else if (strcmp(a, "--vocab") == 0) {
            vocab = argv[++i];
        } else if (strcmp(a, "-o") == 0) {
            out = argv[++i];
        } else if (strcmp(a, "--seed") == 0) {
            seed = strtoull(argv[++i], &end, 0);
        } else if (strcmp(a, "-t") == 0) {
            threads = strtol(argv[++i], &end, 10);
            if (threads < 0 || threads > GEN_MAX_THREADS) end = argv[i];
        } else if (strcmp(a, "--layers") == 0) {
            layers = strtol(argv[++i], &end, 10);
            if (layers < 1 || layers > 1000) end = argv[i];
        } else {
            fprintf(stderr, "kiln-gen-model: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "kiln-gen-model: bad value '%s' for %s\n", argv[i], a);
            return 2;
        }
    }
    if (!shape_name || !type_name || !vocab || !out) {
        usage(stderr);
        return 2;
    }
    const shape *sh = NULL;
    for (size_t i = 0; i < KILN_ARRAY_LEN(shapes); i++)
        if (strcmp(shape_name, shapes[i].name) == 0) sh = &shapes[i];
    int32_t ftype = -1;
    for (size_t i = 0; i < KILN_ARRAY_LEN(ftypes); i++)
        if (strcasecmp(type_name, ftypes[i].name) == 0) ftype = ftypes[i].ftype;
    if (!sh || ftype < 0) {
        fprintf(stderr, "kiln-gen-model: unknown %s '%s'\n", sh ? "type" : "shape", sh ? type_name : shape_name);
        usage(stderr);
        return 2;
    }
    const uint32_t n_layer = layers ? (uint32_t)layers : sh->n_layer, hd = sh->dim / sh->n_head;

    gen g;
    memset(&g, 0, sizeof g);
    g.seed = seed;
    g.quiet = quiet;
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    g.n_threads = threads ? (int)threads : (int)KILN_MAX(1, KILN_MIN(nproc, GEN_MAX_THREADS));
    kiln_gguf *vg = NULL;
    kiln_gguf_writer *w = NULL;
    kiln_status st;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((st = kiln_gguf_open(vocab, &vg)) || (st = kiln_gguf_writer_create(&w))) goto fail;
    int32_t et;
    uint64_t n_vocab = 0;
    if ((st = kiln_gguf_get_arr(vg, "tokenizer.ggml.tokens", &et, &n_vocab))) goto fail;
    if (n_vocab == 0 || n_vocab > (1u << 24)) {
        st = kiln_error(KILN_E_FORMAT, "%s: %llu tokens", vocab, (unsigned long long)n_vocab);
        goto fail;
    }

    /* metadata: general.*, the llama hyperparameters, the tokenizer */
    char name[64];
    snprintf(name, sizeof name, "random %s", sh->name);
    if ((st = kiln_gguf_set_str(w, "general.architecture", "llama")) ||
        (st = kiln_gguf_set_str(w, "general.name", name)) ||
        (st = kiln_gguf_set_u32(w, "llama.context_length", sh->ctx)) ||
        (st = kiln_gguf_set_u32(w, "llama.embedding_length", sh->dim)) ||
        (st = kiln_gguf_set_u32(w, "llama.block_count", n_layer)) ||
        (st = kiln_gguf_set_u32(w, "llama.feed_forward_length", sh->ffn)) ||
        (st = kiln_gguf_set_u32(w, "llama.attention.head_count", sh->n_head)) ||
        (st = kiln_gguf_set_u32(w, "llama.attention.head_count_kv", sh->n_kv)) ||
        (st = kiln_gguf_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f)) ||
        (st = kiln_gguf_set_f32(w, "llama.rope.freq_base", sh->rope_base)) ||
        (st = kiln_gguf_set_u32(w, "llama.rope.dimension_count", hd)) ||
        (st = kiln_gguf_set_u32(w, "llama.vocab_size", (uint32_t)n_vocab)))
        goto fail;
    for (int64_t i = 0; i < kiln_gguf_n_keys(vg); i++)
        if (strncmp(kiln_gguf_key_name(vg, i), "tokenizer.", 10) == 0 && (st = kiln_gguf_copy_key(w, vg, i)))
            goto fail;
    if ((st = kiln_gguf_set_u32(w, "general.quantization_version", 2)) ||
        (st = kiln_gguf_set_u32(w, "general.file_type", (uint32_t)ftype)))
        goto fail;

    /* tensors, in llama.cpp's order, typed as kiln-quantize would */
    g.t = kiln_calloc(3 + 9 * (size_t)n_layer, sizeof *g.t);
    g.names = kiln_calloc(3 + 9 * (size_t)n_layer, sizeof *g.names);
    if (!g.t || !g.names) {
        st = kiln_error(KILN_E_OOM_HOST, "out of memory");
        goto fail;
    }
    add_t(&g, "token_embd.weight", 2, sh->dim, (int64_t)n_vocab);
    add_t(&g, "output_norm.weight", 1, sh->dim, 1);
    add_t(&g, "output.weight", 2, sh->dim, (int64_t)n_vocab);
    for (uint32_t l = 0; l < n_layer; l++) {
        static const char *const parts[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                            "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
        const int64_t q = (int64_t)sh->n_head * hd, kv = (int64_t)sh->n_kv * hd;
        const int64_t shapes2[9][2] = {{sh->dim, 1}, {sh->dim, q}, {sh->dim, kv}, {sh->dim, kv}, {q, sh->dim},
                                       {sh->dim, 1}, {sh->dim, sh->ffn}, {sh->dim, sh->ffn}, {sh->ffn, sh->dim}};
        for (int p = 0; p < 9; p++) {
            snprintf(name, sizeof name, "blk.%u.%s.weight", l, parts[p]);
            add_t(&g, name, shapes2[p][1] == 1 ? 1 : 2, shapes2[p][0], shapes2[p][1]);
        }
    }
    qsort(g.t, g.n_t, sizeof *g.t, kiln_quant_tensor_order);
    kiln_quant_plan plan;
    if ((st = kiln_quant_plan_init(&plan, ftype, false, true, (int)n_layer, (int)n_layer))) goto fail;
    uint64_t max_slice = 0, total = 0;
    for (size_t i = 0; i < g.n_t; i++) {
        gtensor *t = &g.t[i];
        t->type = t->norm ? KILN_TYPE_F32 : kiln_quant_tensor_type(&plan, t->name, t->n_dims, t->ne, KILN_TYPE_F32);
        if ((st = kiln_gguf_add_tensor_info(w, t->name, t->type, t->n_dims, t->ne))) goto fail;
        uint64_t row = kiln_type_row_size(t->type, t->ne[0]), rows = t->n_dims > 1 ? (uint64_t)t->ne[1] : 1;
        uint64_t per = KILN_MAX(1, GEN_SLICE_BYTES / row);
        max_slice = KILN_MAX(max_slice, row * KILN_MIN(per, rows));
        total += row * rows;
    }
    g.slice = kiln_malloc((size_t)max_slice);
    if (!g.slice) {
        st = kiln_error(KILN_E_OOM_HOST, "out of memory for a %llu-byte slice", (unsigned long long)max_slice);
        goto fail;
    }
    if ((st = kiln_gguf_writer_write_file_stream(w, out, produce, &g))) goto fail;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!quiet) {
        double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        fprintf(stderr, "kiln-gen-model: wrote %s: %s %s, %zu tensors, %.2f GB of weights in %.1f s\n", out,
                sh->name, type_name, g.n_t, (double)total / 1e9, s);
    }
    kiln_free(g.slice);
    kiln_free(g.t);
    kiln_free(g.names);
    kiln_gguf_writer_free(w);
    kiln_gguf_close(vg);
    return 0;
fail:
    fprintf(stderr, "kiln-gen-model: %s: %s\n", kiln_status_str(st), kiln_last_error());
    kiln_free(g.slice);
    kiln_free(g.t);
    kiln_free(g.names);
    kiln_gguf_writer_free(w);
    kiln_gguf_close(vg);
    return 1;
}
