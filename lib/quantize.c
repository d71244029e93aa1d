/*
 * quantize.c - kiln_model_quantize: a GGUF model to a GGUF model with its
 * weights in another type, and the per-tensor type choice of the mixes.
 *
 * Streaming: the input is mapped (kiln_gguf_open), the output is declared
 * tensor by tensor without data (kiln_gguf_add_tensor_info) and written
 * sequentially by kiln_gguf_writer_write_file_stream, which asks the
 * producer below for each tensor's bytes in turn. The producer converts a
 * slice of rows at a time (QUANT_CHUNK_ELEMS elements, split over worker
 * threads), so memory is bounded by the slice, not by the model: a 7B F16
 * model needs a few tens of MB besides the page cache.
 *
 * The type choice reproduces llama.cpp's documented behaviour for the
 * types kiln writes (llama_tensor_get_type in llama-quant.cpp, read to
 * understand, not copied): the output projection gets Q6_K unless the file
 * is Q8_0 (token_embd.weight when the output is tied to it); in the _M
 * mixes attn_v.weight and ffn_down get Q6_K in the layers where
 * "use_more_bits" holds (the first and last eighth, and every third layer
 * between), attn_qkv gets one step more; a row length that does not divide
 * into the chosen type's blocks falls back (Q4_K to Q5_0, Q5_K to Q5_1,
 * Q6_K to Q8_0, then F16). The tensor order is llama.cpp's too (by layer,
 * then by name), and the keys are copied in order with general.file_type
 * and general.quantization_version moved to the end, as llama-quantize
 * leaves them, so files match its output byte for byte wherever the
 * quantizers agree (test/test_quantize.c checks this on ../shared).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "internal.h"
#include "quant.h"
#include "quantize.h"

#define QUANT_CHUNK_ELEMS ((int64_t)1 << 22) /* elements converted per slice */
#define QUANT_MAX_THREADS 64
#define QUANT_VERSION 2 /* general.quantization_version of the block layouts */

/* ---- params ---- */

void kiln_quantize_params_init_sized(kiln_quantize_params *p, uint32_t size) {
    kiln_quantize_params d;
    memset(&d, 0, sizeof d);
    d.ftype = KILN_FTYPE_Q4_K_M;
    kiln_params_emit(p, size, &d, sizeof d);
}

/* ---- type choice ---- */

int32_t kiln_ftype_base_type(int32_t ftype) {
    switch (ftype) {
    case KILN_FTYPE_F32: return KILN_TYPE_F32;
    case KILN_FTYPE_F16: return KILN_TYPE_F16;
    case KILN_FTYPE_BF16: return KILN_TYPE_BF16;
    case KILN_FTYPE_Q4_0: return KILN_TYPE_Q4_0;
    case KILN_FTYPE_Q4_1: return KILN_TYPE_Q4_1;
    case KILN_FTYPE_Q5_0: return KILN_TYPE_Q5_0;
    case KILN_FTYPE_Q5_1: return KILN_TYPE_Q5_1;
    case KILN_FTYPE_Q8_0: return KILN_TYPE_Q8_0;
    case KILN_FTYPE_Q4_K: case KILN_FTYPE_Q4_K_M: return KILN_TYPE_Q4_K;
    case KILN_FTYPE_Q5_K: case KILN_FTYPE_Q5_K_M: return KILN_TYPE_Q5_K;
    case KILN_FTYPE_Q6_K: return KILN_TYPE_Q6_K;
    default: return -1;
    }
}

static bool is_block_type(int32_t t) {
    return t != KILN_TYPE_F32 && t != KILN_TYPE_F16 && t != KILN_TYPE_BF16;
}

kiln_status kiln_quant_plan_init(kiln_quant_plan *p, int32_t ftype, bool pure, bool has_output,
                                 int n_attn_v, int n_layer) {
    memset(p, 0, sizeof *p);
    p->base_type = kiln_ftype_base_type(ftype);
    if (p->base_type < 0) return kiln_error(KILN_E_INVALID_ARG, "quantize: unknown ftype %d", (int)ftype);
    p->ftype = ftype;
    p->pure = pure;
    p->has_output = has_output;
    p->n_attn_v = n_attn_v;
    p->n_ffn_down = n_layer;
    return KILN_OK;
}

/* llama.cpp's "use_more_bits": the first and last eighth of the layers and
 * every third layer between get more bits in the _M mixes. */
static bool use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

static bool fits_blocks(int32_t type, int64_t ne0) {
    const kiln_type_traits *tr = kiln_type_traits_get(type);
    return tr && ne0 % tr->block_size == 0;
}

int32_t kiln_quant_tensor_type(kiln_quant_plan *p, const char *name, uint32_t n_dims,
                               const int64_t *ne, int32_t src_type) {
    /* Only matrices named *weight are converted; norms, biases, rope
     * factors and routers keep their type (they are small and sensitive). */
    if (n_dims < 2 || !ends_with(name, "weight") || strstr(name, "ffn_gate_inp") ||
        strstr(name, "pos_embd") || strstr(name, "token_types"))
        return src_type;
    int32_t t = p->base_type;
    const bool mix = !p->pure && is_block_type(t);
    const bool m_mix = p->ftype == KILN_FTYPE_Q4_K_M || p->ftype == KILN_FTYPE_Q5_K_M;
    if (!mix) {
        /* plain conversion */
    } else if (strcmp(name, "output.weight") == 0 ||
               (!p->has_output && strcmp(name, "token_embd.weight") == 0)) {
        /* The output projection decides every token: Q6_K unless the
         * whole file is Q8_0 already; Q8_0 if Q6_K cannot hold the rows. */
        if (!fits_blocks(t, ne[0])) t = KILN_TYPE_Q8_0;
        else if (t != KILN_TYPE_Q8_0) t = KILN_TYPE_Q6_K;
    } else if (strstr(name, "attn_v.weight")) {
        if (m_mix && use_more_bits(p->i_attn_v, p->n_attn_v)) t = KILN_TYPE_Q6_K;
        p->i_attn_v++;
    } else if (strstr(name, "ffn_down")) {
        if (m_mix && use_more_bits(p->i_ffn_down, p->n_ffn_down)) t = KILN_TYPE_Q6_K;
        p->i_ffn_down++;
    } else if (strstr(name, "attn_qkv.weight")) {
        if (p->ftype == KILN_FTYPE_Q4_K_M) t = KILN_TYPE_Q5_K;
        else if (p->ftype == KILN_FTYPE_Q5_K_M) t = KILN_TYPE_Q6_K;
    }
    if (!fits_blocks(t, ne[0])) {
        switch (t) {
        case KILN_TYPE_Q4_K: t = KILN_TYPE_Q5_0; break;
        case KILN_TYPE_Q5_K: t = KILN_TYPE_Q5_1; break;
        case KILN_TYPE_Q6_K: t = KILN_TYPE_Q8_0; break;
        default: break;
        }
        if (!fits_blocks(t, ne[0])) t = KILN_TYPE_F16;
    }
    return t;
}

static int layer_of(const char *name) {
    if (strncmp(name, "blk.", 4) != 0) return -1;
    const char *p = name + 4;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    for (; *p >= '0' && *p <= '9' && v < 1000000; p++) v = v * 10 + (*p - '0');
    return *p == '.' ? (int)v : -1;
}

int kiln_quant_tensor_order(const void *a, const void *b) {
    const char *na = *(const char *const *)a, *nb = *(const char *const *)b;
    int la = layer_of(na), lb = layer_of(nb);
    if (la != lb) return la < lb ? -1 : 1;
    return strcmp(na, nb);
}

/* ---- conversion ---- */

typedef struct qjob {
    const char *name;        /* first: kiln_quant_tensor_order sorts these */
    const kiln_gguf_tensor *src;
    int32_t dst_type;
} qjob;

typedef struct qrun qrun;

/* One worker's share of a slice: rows [r0, r1) of the current tensor. */
typedef struct qworker {
    qrun *run;
    float *row;              /* ne0 floats */
    int64_t r0, r1;
    kiln_status st;
    char err[256];
} qworker;

struct qrun {
    const kiln_quantize_params *p;
    const kiln_gguf *g;
    qjob *jobs;
    size_t n_jobs;
    int n_threads;
    qworker *w;
    uint8_t *out;            /* one slice of converted rows */
    /* the tensor being converted */
    const qjob *job;
    int64_t ne0;
    uint64_t src_row, dst_row;
    int64_t slice_r0;        /* first row of the current slice */
};

static void convert_rows(qworker *w) {
    const qrun *q = w->run;
    const uint8_t *src = q->job->src->data;
    w->st = KILN_OK;
    for (int64_t r = w->r0; r < w->r1; r++) {
        kiln_status st = kiln_dequantize_row(q->job->src->type, src + (uint64_t)r * q->src_row, w->row,
                                             q->ne0);
        if (!st)
            st = kiln_quantize_row(q->job->dst_type, w->row,
                                   q->out + (uint64_t)(r - q->slice_r0) * q->dst_row, q->ne0);
        if (st) {
            /* kiln_last_error is per thread: keep the message for the caller */
            snprintf(w->err, sizeof w->err, "%s", kiln_last_error());
            w->st = st;
            return;
        }
    }
}

static void *worker_main(void *arg) {
    convert_rows(arg);
    return NULL;
}

/* Converts rows [r0, r1) of the current tensor into q->out, split over the
 * workers; a worker thread that cannot be started leaves its share to the
 * calling thread. */
static kiln_status convert_slice(qrun *q, int64_t r0, int64_t r1) {
    int64_t n = r1 - r0;
    int nt = (int)KILN_MIN((int64_t)q->n_threads, n);
    pthread_t th[QUANT_MAX_THREADS];
    bool started[QUANT_MAX_THREADS] = {false};
    q->slice_r0 = r0;
    for (int i = 0; i < nt; i++) {
        q->w[i].r0 = r0 + n * i / nt;
        q->w[i].r1 = r0 + n * (i + 1) / nt;
        q->w[i].st = KILN_OK;
    }
    for (int i = 1; i < nt; i++) started[i] = pthread_create(&th[i], NULL, worker_main, &q->w[i]) == 0;
    convert_rows(&q->w[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else convert_rows(&q->w[i]);
    }
    for (int i = 0; i < nt; i++)
        if (q->w[i].st)
            return kiln_error(q->w[i].st, "quantize: tensor '%.64s': %s", q->job->name, q->w[i].err);
    return KILN_OK;
}

/* Drops the input pages of a tensor that is done from this process's
 * resident set: the mapping is private and read-only, so they are only
 * re-read from the file if touched again. Without this, converting a 14 GB
 * model would leave 14 GB of its pages mapped in (reclaimable, but counted
 * as the process's memory). Best effort: a failure changes nothing. */
static void release_input(const qrun *q, const kiln_gguf_tensor *t) {
    size_t map_size;
    const uint8_t *base = kiln_gguf_base(q->g, &map_size);
    long page = sysconf(_SC_PAGESIZE);
    if (!base || page <= 0 || t->size == 0) return;
    uintptr_t a = (uintptr_t)t->data, e = a + (uintptr_t)t->size, lo = (uintptr_t)base;
    a -= (a - lo) % (uintptr_t)page; /* whole pages, inside the mapping */
    e = KILN_MIN(e + ((uintptr_t)page - (e - lo) % (uintptr_t)page) % (uintptr_t)page, lo + map_size);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

static kiln_status produce_tensor(qrun *q, const qjob *j, kiln_gguf_sink *sink);

static kiln_status produce(void *user, size_t index, kiln_gguf_sink *sink) {
    qrun *q = user;
    const qjob *j = &q->jobs[index];
    if (q->p->progress && q->p->progress(index, q->n_jobs, j->name, j->dst_type, q->p->progress_user))
        return kiln_error(KILN_E_CANCELLED, "quantize: cancelled at tensor '%.64s'", j->name);
    kiln_status st = produce_tensor(q, j, sink);
    release_input(q, j->src);
    return st;
}

static kiln_status produce_tensor(qrun *q, const qjob *j, kiln_gguf_sink *sink) {
    const kiln_gguf_tensor *t = j->src;
    if (j->dst_type == t->type) return kiln_gguf_sink_write(sink, t->data, (size_t)t->size);
    q->job = j;
    q->ne0 = t->ne[0];
    q->src_row = kiln_type_row_size(t->type, t->ne[0]);
    q->dst_row = kiln_type_row_size(j->dst_type, t->ne[0]);
    const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const int64_t per_slice = KILN_MAX((int64_t)1, QUANT_CHUNK_ELEMS / t->ne[0]);
    for (int64_t r = 0; r < rows; r += per_slice) {
        int64_t r1 = KILN_MIN(rows, r + per_slice);
        kiln_status st = convert_slice(q, r, r1);
        if (!st) st = kiln_gguf_sink_write(sink, q->out, (size_t)((uint64_t)(r1 - r) * q->dst_row));
        if (st) return st;
    }
    return KILN_OK;
}

/* The conversions kiln can make: from the float types always; from a
 * block type only when asked (dequantize first). */
static kiln_status check_convertible(const qjob *j, uint32_t flags) {
    int32_t s = j->src->type;
    if (s == j->dst_type || !is_block_type(s)) return KILN_OK;
    const kiln_type_traits *tr = kiln_type_traits_get(s);
    if (!(flags & KILN_QUANTIZE_ALLOW_REQUANTIZE))
        return kiln_error(KILN_E_UNSUPPORTED,
                          "quantize: tensor '%.64s' is already %s (set KILN_QUANTIZE_ALLOW_REQUANTIZE "
                          "to convert it to %s anyway)",
                          j->name, tr ? tr->name : "?", kiln_type_name(j->dst_type));
    if (!tr || !tr->computable)
        return kiln_error(KILN_E_UNSUPPORTED, "quantize: tensor '%.64s': cannot read type %s", j->name,
                          kiln_type_name(s));
    return KILN_OK;
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > QUANT_MAX_THREADS ? QUANT_MAX_THREADS : (int)n;
}

/* The model's layer count: <arch>.block_count, else the number of
 * ffn_down tensors (what llama.cpp's use_more_bits counts over). */
static int layer_count(const kiln_gguf *g) {
    const char *arch;
    uint64_t len;
    if (kiln_gguf_get_str(g, "general.architecture", &arch, &len) == KILN_OK && len < 64) {
        char key[96];
        uint32_t n;
        snprintf(key, sizeof key, "%.*s.block_count", (int)len, arch);
        if (kiln_gguf_get_u32(g, key, &n) == KILN_OK && n <= 1000000) return (int)n;
    }
    int n = 0;
    for (int64_t i = 0; i < kiln_gguf_n_tensors(g); i++)
        n += strstr(kiln_gguf_tensor_at(g, i)->name, "ffn_down") != NULL;
    kiln_error_clear();
    return n;
}

/* Declares every output tensor (type chosen, in llama.cpp's order) and the
 * metadata on w; fills q->jobs. */
static kiln_status plan_file(const kiln_gguf *g, const kiln_quantize_params *p, kiln_gguf_writer *w,
                             qrun *q, int64_t *max_ne0) {
    const int64_t nt = kiln_gguf_n_tensors(g);
    q->jobs = kiln_calloc(nt > 0 ? (size_t)nt : 1, sizeof *q->jobs);
    if (!q->jobs) return kiln_error(KILN_E_OOM_HOST, "quantize: out of memory");
    q->n_jobs = (size_t)nt;
    int n_attn_v = 0;
    bool has_output = false;
    for (int64_t i = 0; i < nt; i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(g, i);
        q->jobs[i].name = t->name;
        q->jobs[i].src = t;
        n_attn_v += strstr(t->name, "attn_v.weight") || strstr(t->name, "attn_qkv.weight");
        has_output |= strcmp(t->name, "output.weight") == 0;
    }
    qsort(q->jobs, q->n_jobs, sizeof *q->jobs, kiln_quant_tensor_order);

    kiln_quant_plan plan;
    kiln_status st = kiln_quant_plan_init(&plan, p->ftype, (p->flags & KILN_QUANTIZE_PURE) != 0,
                                          has_output, n_attn_v, layer_count(g));
    if (st) return st;
    /* keys in order, the two that llama-quantize rewrites moved to the end */
    for (int64_t i = 0; i < kiln_gguf_n_keys(g); i++) {
        const char *k = kiln_gguf_key_name(g, i);
        if (strcmp(k, "general.file_type") == 0 || strcmp(k, "general.quantization_version") == 0)
            continue;
        if ((st = kiln_gguf_copy_key(w, g, i))) return st;
    }
    if ((st = kiln_gguf_set_u32(w, "general.quantization_version", QUANT_VERSION)) ||
        (st = kiln_gguf_set_u32(w, "general.file_type", (uint32_t)p->ftype)))
        return st;
    *max_ne0 = 1;
    for (size_t i = 0; i < q->n_jobs; i++) {
        qjob *j = &q->jobs[i];
        const kiln_gguf_tensor *t = j->src;
        j->dst_type = kiln_quant_tensor_type(&plan, t->name, t->n_dims, t->ne, t->type);
        if ((st = check_convertible(j, p->flags))) return st;
        if ((st = kiln_gguf_add_tensor_info(w, t->name, j->dst_type, t->n_dims, t->ne))) return st;
        if (j->dst_type != t->type) *max_ne0 = KILN_MAX(*max_ne0, t->ne[0]);
    }
    return KILN_OK;
}

kiln_status kiln_model_quantize(const char *in_path, const char *out_path,
                                const kiln_quantize_params *params) {
    kiln_error_clear();
    kiln_quantize_params p;
    kiln_quantize_params_init(&p);
    kiln_status st;
    if (params && (st = kiln_params_copy(&p, sizeof p, params))) return st;
    if (!in_path || !out_path) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_quantize: NULL path");
    if (kiln_ftype_base_type(p.ftype) < 0)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_model_quantize: unknown ftype %d", (int)p.ftype);
    if (p.flags & ~(KILN_QUANTIZE_PURE | KILN_QUANTIZE_ALLOW_REQUANTIZE))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_model_quantize: unknown flags 0x%x", p.flags);
    if (p.n_threads < 0)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_model_quantize: n_threads %d < 0", (int)p.n_threads);

    kiln_gguf *g = NULL;
    kiln_gguf_writer *w = NULL;
    qrun q;
    memset(&q, 0, sizeof q);
    q.p = &p;
    q.n_threads = p.n_threads ? KILN_MIN(p.n_threads, QUANT_MAX_THREADS) : default_threads();
    if ((st = kiln_gguf_open(in_path, &g)) || (st = kiln_gguf_writer_create(&w))) goto out;
    q.g = g;
    int64_t max_ne0 = 1;
    if ((st = plan_file(g, &p, w, &q, &max_ne0))) goto out;

    /* Buffers: one slice of output (the largest row size times the rows of
     * a slice) and one F32 row per worker. */
    size_t out_bytes = 0;
    for (size_t i = 0; i < q.n_jobs; i++) {
        const qjob *j = &q.jobs[i];
        if (j->dst_type == j->src->type) continue;
        int64_t rows = j->src->ne[1] * j->src->ne[2] * j->src->ne[3];
        int64_t per = KILN_MIN(rows, KILN_MAX((int64_t)1, QUANT_CHUNK_ELEMS / j->src->ne[0]));
        uint64_t b = kiln_type_row_size(j->dst_type, j->src->ne[0]) * (uint64_t)per;
        if (b > out_bytes) out_bytes = (size_t)b;
    }
    q.w = kiln_calloc((size_t)q.n_threads, sizeof *q.w);
    q.out = out_bytes ? kiln_malloc(out_bytes) : NULL;
    if (!q.w || (out_bytes && !q.out)) {
        st = kiln_error(KILN_E_OOM_HOST, "quantize: out of memory for %zu-byte buffers", out_bytes);
        goto out;
    }
    for (int i = 0; i < q.n_threads; i++) {
        q.w[i].run = &q;
        if (!(q.w[i].row = kiln_malloc(sizeof(float) * (size_t)max_ne0))) {
            st = kiln_error(KILN_E_OOM_HOST, "quantize: out of memory for row buffers");
            goto out;
        }
    }
    st = kiln_gguf_writer_write_file_stream(w, out_path, produce, &q);
out:
    if (q.w)
        for (int i = 0; i < q.n_threads; i++) kiln_free(q.w[i].row);
    kiln_free(q.w);
    kiln_free(q.out);
    kiln_free(q.jobs);
    kiln_gguf_writer_free(w);
    kiln_gguf_close(g);
    return st;
}
