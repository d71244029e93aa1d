/*
 * model.c - loading a GGUF model: architecture and hyperparameters, the
 * tokenizer, and the weights bound to a backend device (zero-copy over the
 * mapping when the backend can use host memory).
 */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "quant.h"
#include "memtrack.h"
#include "split.h"

kiln_status kiln_params_copy(void *dst, size_t dst_size, const void *src) {
    uint32_t n;
    memcpy(&n, src, sizeof n);
    if (n < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "params struct_size %u is too small", n);
    memcpy(dst, src, n < dst_size ? n : dst_size);
    memcpy(dst, &(uint32_t){(uint32_t)dst_size}, sizeof(uint32_t));
    return KILN_OK;
}

void kiln_params_emit(void *dst, uint32_t size, void *full, size_t full_size) {
    if (!dst || size < sizeof(uint32_t)) return;
    uint32_t n = size < full_size ? size : (uint32_t)full_size;
    memcpy(full, &n, sizeof n);
    memcpy(dst, full, n);
}

void kiln_model_params_init_sized(kiln_model_params *p, uint32_t size) {
    kiln_model_params d;
    memset(&d, 0, sizeof d);
    d.log_level = KILN_LOG_ERROR;
    kiln_params_emit(p, size, &d, sizeof d);
}

void kiln_model_info_init_sized(kiln_model_info *info, uint32_t size) {
    kiln_model_info d;
    memset(&d, 0, sizeof d);
    d.bos = d.eos = -1;
    kiln_params_emit(info, size, &d, sizeof d);
}

/* ---- architecture table ---- */

typedef struct arch_desc {
    const char *name;
    kiln_arch arch;
    int32_t rope_mode;
} arch_desc;

static const arch_desc archs[] = {
    {"llama", KILN_ARCH_LLAMA, KILN_ROPE_NORM},
    {"qwen2", KILN_ARCH_QWEN2, KILN_ROPE_NEOX},
    {"qwen3", KILN_ARCH_QWEN3, KILN_ROPE_NEOX},
};

/* "<arch>.<suffix>" */
static const char *akey(const kiln_model *m, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", m->arch_name, suffix);
    return buf;
}

static kiln_status get_u32_req(const kiln_model *m, const char *suffix, uint32_t *out) {
    char key[128];
    kiln_status st = kiln_gguf_get_u32(m->gguf, akey(m, suffix, key, sizeof key), out);
    if (st == KILN_E_NOT_FOUND) return kiln_error(KILN_E_FORMAT, "model: required key '%s' missing", key);
    return st;
}

static kiln_status get_u32_opt(const kiln_model *m, const char *suffix, uint32_t *out) {
    char key[128];
    kiln_status st = kiln_gguf_get_u32(m->gguf, akey(m, suffix, key, sizeof key), out);
    return st == KILN_E_NOT_FOUND ? KILN_OK : st;
}

static kiln_status get_f32_opt(const kiln_model *m, const char *suffix, float *out) {
    char key[128];
    kiln_status st = kiln_gguf_get_f32(m->gguf, akey(m, suffix, key, sizeof key), out);
    return st == KILN_E_NOT_FOUND ? KILN_OK : st;
}

static kiln_status load_hparams(kiln_model *m) {
    const char *s;
    uint64_t len;
    kiln_status st = kiln_gguf_get_str(m->gguf, "general.architecture", &s, &len);
    if (st == KILN_E_NOT_FOUND) return kiln_error(KILN_E_FORMAT, "model: general.architecture missing");
    if (st) return st;
    const arch_desc *ad = NULL;
    for (size_t i = 0; i < KILN_ARRAY_LEN(archs); i++)
        if (strlen(archs[i].name) == len && memcmp(archs[i].name, s, len) == 0) ad = &archs[i];
    if (!ad)
        return kiln_error(KILN_E_UNSUPPORTED, "model: architecture '%.*s' is not supported (llama, qwen2, qwen3)",
                          (int)(len > 64 ? 64 : len), s);
    snprintf(m->arch_name, sizeof m->arch_name, "%s", ad->name);
    if (kiln_gguf_get_str(m->gguf, "general.name", &s, &len) == KILN_OK)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(len > 127 ? 127 : len), s);

    kiln_hparams *hp = &m->hp;
    memset(hp, 0, sizeof *hp);
    hp->arch = ad->arch;
    hp->rope_mode = ad->rope_mode;
    hp->rms_eps = 1e-5f;
    hp->rope_freq_base = 10000.0f;
    hp->rope_freq_scale = 1.0f;
    hp->n_ctx_train = 2048;
    if ((st = get_u32_req(m, "embedding_length", &hp->n_embd)) ||
        (st = get_u32_req(m, "block_count", &hp->n_layer)) ||
        (st = get_u32_req(m, "feed_forward_length", &hp->n_ff)) ||
        (st = get_u32_req(m, "attention.head_count", &hp->n_head)) ||
        (st = get_u32_opt(m, "context_length", &hp->n_ctx_train)))
        return st;
    hp->n_head_kv = hp->n_head;
    if ((st = get_u32_opt(m, "attention.head_count_kv", &hp->n_head_kv))) return st;
    if ((st = get_f32_opt(m, "attention.layer_norm_rms_epsilon", &hp->rms_eps))) return st;
    if ((st = get_f32_opt(m, "rope.freq_base", &hp->rope_freq_base))) return st;
    if (hp->n_head == 0 || hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0 || hp->n_layer == 0 ||
        hp->n_embd == 0 || hp->n_ff == 0 || hp->n_layer > 4096 || hp->n_head > 4096)
        return kiln_error(KILN_E_FORMAT, "model: inconsistent head counts (n_head %u, n_head_kv %u) or sizes",
                          hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if ((st = get_u32_opt(m, "attention.key_length", &hp->head_dim))) return st;
    uint32_t vlen = hp->head_dim;
    if ((st = get_u32_opt(m, "attention.value_length", &vlen))) return st;
    if (vlen != hp->head_dim)
        return kiln_error(KILN_E_UNSUPPORTED, "model: key_length %u != value_length %u", hp->head_dim, vlen);
    hp->n_rot = hp->head_dim;
    if ((st = get_u32_opt(m, "rope.dimension_count", &hp->n_rot))) return st;
    if (hp->head_dim == 0 || hp->head_dim > 1024 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return kiln_error(KILN_E_FORMAT, "model: bad head_dim %u / rope dims %u", hp->head_dim, hp->n_rot);
    float factor = 0.0f;
    char key[128];
    const char *stype;
    uint64_t stlen;
    if (kiln_gguf_get_str(m->gguf, akey(m, "rope.scaling.type", key, sizeof key), &stype, &stlen) == KILN_OK) {
        if (stlen == 6 && memcmp(stype, "linear", 6) == 0) {
            if ((st = get_f32_opt(m, "rope.scaling.factor", &factor))) return st;
            if (factor > 0.0f) hp->rope_freq_scale = 1.0f / factor;
        } else if (!(stlen == 4 && memcmp(stype, "none", 4) == 0)) {
            return kiln_error(KILN_E_UNSUPPORTED, "model: rope scaling '%.*s' is not supported",
                              (int)(stlen > 32 ? 32 : stlen), stype);
        }
    }
    return KILN_OK;
}

/* ---- weights ---- */

/* Checks and describes tensor `name` in *w for split `split`: shape, type
 * (supported by that split's backend), and its offset in the file's tensor
 * data; the buffer is bound once the split's weights are placed. count:
 * add it to n_params and weight_bytes (not for a second copy of a tied
 * embedding). */
static kiln_status bind(kiln_model *m, uint32_t split, kiln_weight *w, const char *name, int64_t ne0, int64_t ne1,
                        bool required, bool f32_only, bool count) {
    const kiln_gguf_tensor *t = kiln_gguf_find_tensor(m->gguf, name);
    const kiln_model_split *sp = &m->splits[split];
    memset(w, 0, sizeof *w);
    if (!t) {
        if (required) return kiln_error(KILN_E_FORMAT, "model: tensor '%s' missing", name);
        return KILN_OK;
    }
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    if (t->ne[0] != ne0 || rows != ne1)
        return kiln_error(KILN_E_FORMAT, "model: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                          name, (long long)t->ne[0], (long long)rows, (long long)ne0, (long long)ne1);
    if (f32_only ? t->type != KILN_TYPE_F32 : !sp->bk->supports_type(sp->device_index, t->type))
        return kiln_error(KILN_E_UNSUPPORTED, "model: tensor '%s' has type %s, not supported %s%s", name,
                          kiln_type_name(t->type), f32_only ? "(expected f32)" : "by backend ",
                          f32_only ? "" : sp->bk->name);
    w->offset = t->offset;
    w->type = t->type;
    w->ne[0] = ne0;
    w->ne[1] = ne1;
    w->row_stride = kiln_type_row_size(t->type, ne0);
    if (count) {
        m->n_params += (uint64_t)ne0 * (uint64_t)ne1;
        m->weight_bytes += t->size;
    }
    return KILN_OK;
}

/* Calls fn on every present weight of split s (its layers; the token
 * embeddings on split 0; the output norm and matrix on the last). */
static kiln_status for_split_weights(kiln_model *m, uint32_t s, kiln_status (*fn)(kiln_model_split *, kiln_weight *,
                                                                                void *), void *user) {
    kiln_model_split *sp = &m->splits[s];
    kiln_status st = KILN_OK;
#define VISIT(w) if ((w)->ne[0] != 0 && (st = fn(sp, (w), user))) return st;
    if (s == 0) VISIT(&m->tok_embd)
    for (uint32_t i = sp->layer0; m->layers && i < sp->layer0 + sp->n_layers; i++) {
        kiln_layer_weights *l = &m->layers[i];
        VISIT(&l->attn_norm) VISIT(&l->wq) VISIT(&l->wk) VISIT(&l->wv) VISIT(&l->wo) VISIT(&l->bq)
        VISIT(&l->bk) VISIT(&l->bv) VISIT(&l->q_norm) VISIT(&l->k_norm) VISIT(&l->ffn_norm) VISIT(&l->w_gate)
        VISIT(&l->w_up) VISIT(&l->w_down)
    }
    if (s == kiln_model_last_split(m)) {
        VISIT(&m->output_norm)
        VISIT(&m->output)
    }
#undef VISIT
    return st;
}

static kiln_status set_buf(kiln_model_split *sp, kiln_weight *w, void *buf) {
    (void)sp;
    w->buf = buf;
    return KILN_OK;
}

_Static_assert(sizeof(kiln_layer_weights) == 14 * sizeof(kiln_weight),
               "for_split_weights must list every layer weight");

void kiln_model_rebind_split(kiln_model *m, uint32_t s, kiln_bk_buffer *buf) {
    (void)for_split_weights(m, s, set_buf, buf);
    m->splits[s].weights = buf;
    if (s == 0) m->weights = buf;
}

/* Packs weight w into split sp's device copy: appends (or extends) a copy
 * from its file offset and moves w->offset to its place in the copy. The
 * same file bytes packed twice (tied tensors) are copied once. */
static kiln_status pack_weight(kiln_model_split *sp, kiln_weight *w, void *user) {
    (void)user;
    const uint64_t size = w->row_stride * (uint64_t)w->ne[1], align = 256;
    for (uint32_t i = 0; i < sp->n_copies; i++) {
        const kiln_weight_copy *c = &sp->copies[i];
        if (w->offset >= c->src && w->offset + size <= c->src + c->size) {
            w->offset = c->dst + (w->offset - c->src);
            return KILN_OK;
        }
    }
    kiln_weight_copy *last = sp->n_copies ? &sp->copies[sp->n_copies - 1] : NULL;
    if (last && last->src + last->size == w->offset && last->dst + last->size == sp->buffer_bytes) {
        last->size += size; /* adjacent in the file and in the copy: one upload */
        w->offset = sp->buffer_bytes;
        sp->buffer_bytes += size;
        return KILN_OK;
    }
    kiln_weight_copy *c = kiln_realloc(sp->copies, (sp->n_copies + 1) * sizeof *c);
    if (!c) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
    sp->copies = c;
    uint64_t dst = (sp->buffer_bytes + align - 1) / align * align;
    c[sp->n_copies++] = (kiln_weight_copy){w->offset, dst, size};
    w->offset = dst;
    sp->buffer_bytes = dst + size;
    return KILN_OK;
}

static kiln_status reset_layout(kiln_model_split *sp, kiln_weight *w, void *user) {
    (void)sp, (void)user;
    w->layout = 0;
    return KILN_OK;
}

/* Weights already prepared, by offset in the split's copy: tied tensors
 * share their bytes and must be rearranged once. */
typedef struct prepared {
    struct { uint64_t offset; int32_t layout; } *done;
    uint32_t n, cap;
} prepared;

static kiln_status prepare_weight(kiln_model_split *sp, kiln_weight *w, void *user) {
    prepared *p = user;
    for (uint32_t i = 0; i < p->n; i++)
        if (p->done[i].offset == w->offset) {
            w->layout = p->done[i].layout;
            return KILN_OK;
        }
    if (p->n == p->cap) {
        const uint32_t cap = p->cap ? 2 * p->cap : 64;
        void *d = kiln_realloc(p->done, cap * sizeof *p->done);
        if (!d) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
        p->done = d;
        p->cap = cap;
    }
    int32_t layout = 0;
    kiln_status st = sp->bk->weight_prepare(sp->dev, w, &layout);
    if (st) return st;
    w->layout = layout;
    p->done[p->n].offset = w->offset;
    p->done[p->n++].layout = layout;
    return KILN_OK;
}

kiln_status kiln_model_split_upload(kiln_model *m, uint32_t s) {
    kiln_model_split *sp = &m->splits[s];
    (void)for_split_weights(m, s, reset_layout, NULL);
    size_t map_size;
    const uint8_t *data = kiln_gguf_base(m->gguf, &map_size) + kiln_gguf_data_offset(m->gguf);
    kiln_bk_buffer *buf = NULL;
    kiln_status st = kiln_mem_buffer_alloc(sp->bk, sp->dev, sp->buffer_bytes ? sp->buffer_bytes : 1,
                                           KILN_BK_BUF_WEIGHTS, KILN_MEM_WEIGHTS, &buf);
    if (st)
        return kiln_error(st, "model: cannot allocate %llu bytes of weights on %s:%d",
                          (unsigned long long)sp->buffer_bytes, sp->bk->name, sp->device_index);
    const uint64_t chunk = 64u << 20;
    for (uint32_t i = 0; i < sp->n_copies && st == KILN_OK; i++) {
        const kiln_weight_copy *c = &sp->copies[i];
        for (uint64_t off = 0; off < c->size && st == KILN_OK; off += chunk)
            st = sp->bk->buffer_upload(sp->dev, buf, c->dst + off, data + c->src + off, KILN_MIN(chunk, c->size - off));
    }
    if (st == KILN_OK) st = sp->bk->synchronize(sp->dev);
    if (st == KILN_OK && KILN_BK_HAS(sp->bk, weight_prepare)) {
        /* the backend's own layouts, on the uploaded bytes; the weights
         * point at buf while it runs and go back below if it fails */
        kiln_bk_buffer *old = sp->weights;
        kiln_model_rebind_split(m, s, buf);
        prepared p = {0};
        st = for_split_weights(m, s, prepare_weight, &p);
        if (st == KILN_OK) st = sp->bk->synchronize(sp->dev);
        kiln_free(p.done);
        if (st) {
            (void)for_split_weights(m, s, reset_layout, NULL);
            kiln_model_rebind_split(m, s, old);
        }
    }
    if (st) {
        kiln_mem_buffer_free(sp->bk, buf);
        return kiln_error(st, "model: weight upload to %s:%d failed", sp->bk->name, sp->device_index);
    }
    kiln_model_rebind_split(m, s, buf);
    return KILN_OK;
}

/* The span [lo, hi) of the file's tensor data that a split's weights use. */
typedef struct span {
    uint64_t lo, hi;
} span;

static kiln_status span_add(kiln_model_split *sp, kiln_weight *w, void *user) {
    (void)sp;
    span *r = user;
    r->lo = KILN_MIN(r->lo, w->offset);
    r->hi = KILN_MAX(r->hi, w->offset + w->row_stride * (uint64_t)w->ne[1]);
    return KILN_OK;
}

static kiln_status span_shift(kiln_model_split *sp, kiln_weight *w, void *user) {
    (void)sp;
    w->offset -= *(const uint64_t *)user;
    return KILN_OK;
}

/* Gives split s its weights: a wrap of the mapping where the backend can
 * use host memory (zero-copy; a split wraps only the span of the file its
 * tensors lie in), else a device copy. */
static kiln_status place_split(kiln_model *m, uint32_t s) {
    kiln_model_split *sp = &m->splits[s];
    size_t map_size;
    const uint8_t *base = kiln_gguf_base(m->gguf, &map_size);
    uint64_t data_off = kiln_gguf_data_offset(m->gguf);
    uint64_t data_size = map_size > data_off ? map_size - data_off : 0;
    if (!(m->flags & KILN_MODEL_NO_MMAP) && KILN_BK_HAS(sp->bk, buffer_wrap_host)) {
        span r = {0, data_size};
        if (m->n_splits > 1) {
            r = (span){UINT64_MAX, 0};
            (void)for_split_weights(m, s, span_add, &r);
            if (r.hi <= r.lo) r = (span){0, 0};
        }
        kiln_bk_buffer *buf = NULL;
        kiln_status st = kiln_mem_buffer_wrap_host(sp->bk, sp->dev, (void *)(base + data_off + r.lo),
                                                   r.hi > r.lo ? r.hi - r.lo : 1, KILN_MEM_WEIGHTS, &buf);
        if (st == KILN_OK) {
            sp->zero_copy = true;
            if (r.lo) (void)for_split_weights(m, s, span_shift, &r.lo);
            kiln_model_rebind_split(m, s, buf);
            return KILN_OK;
        }
        if (st != KILN_E_UNSUPPORTED)
            return kiln_error(st, "model: cannot map weights on %s:%d", sp->bk->name, sp->device_index);
    }
    kiln_status st;
    if (m->n_splits == 1) { /* the whole data region, offsets as in the file */
        sp->copies = kiln_malloc(sizeof *sp->copies);
        if (!sp->copies) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
        sp->copies[0] = (kiln_weight_copy){0, 0, data_size};
        sp->n_copies = 1;
        sp->buffer_bytes = data_size;
    } else if ((st = for_split_weights(m, s, pack_weight, NULL))) {
        return st;
    }
    return kiln_model_split_upload(m, s);
}

static kiln_status load_weights(kiln_model *m) {
    const kiln_hparams *hp = &m->hp;
    kiln_status st;
    m->layers = kiln_calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
    const uint32_t last = kiln_model_last_split(m);
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim;
    const int64_t KV = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
    if ((st = bind(m, 0, &m->tok_embd, "token_embd.weight", E, V, true, false, true)) ||
        (st = bind(m, last, &m->output_norm, "output_norm.weight", E, 1, true, true, true)) ||
        (st = bind(m, last, &m->output, "output.weight", E, V, false, false, true)))
        return st;
    /* tied embeddings: the last split reads (its own copy of) token_embd */
    if (!m->output.ne[0] && (st = bind(m, last, &m->output, "token_embd.weight", E, V, true, false, false)))
        return st;
    const bool qwen2 = hp->arch == KILN_ARCH_QWEN2, qwen3 = hp->arch == KILN_ARCH_QWEN3;
    for (uint32_t i = 0; i < hp->n_layer; i++) {
        kiln_layer_weights *l = &m->layers[i];
        uint32_t sp = m->layer_split[i];
        char n[96];
#define B(field, suffix, ne0, ne1, req, f32)                                   \
        snprintf(n, sizeof n, "blk.%u.%s", i, suffix);                        \
        if ((st = bind(m, sp, &l->field, n, ne0, ne1, req, f32, true))) return st;
        B(attn_norm, "attn_norm.weight", E, 1, true, true)
        B(wq, "attn_q.weight", E, Q, true, false)
        B(wk, "attn_k.weight", E, KV, true, false)
        B(wv, "attn_v.weight", E, KV, true, false)
        B(wo, "attn_output.weight", Q, E, true, false)
        B(bq, "attn_q.bias", Q, 1, qwen2, true)
        B(bk, "attn_k.bias", KV, 1, qwen2, true)
        B(bv, "attn_v.bias", KV, 1, qwen2, true)
        B(q_norm, "attn_q_norm.weight", hp->head_dim, 1, qwen3, true)
        B(k_norm, "attn_k_norm.weight", hp->head_dim, 1, qwen3, true)
        B(ffn_norm, "ffn_norm.weight", E, 1, true, true)
        B(w_gate, "ffn_gate.weight", E, F, true, false)
        B(w_up, "ffn_up.weight", E, F, true, false)
        B(w_down, "ffn_down.weight", F, E, true, false)
#undef B
    }
    const kiln_gguf_tensor *rf = kiln_gguf_find_tensor(m->gguf, "rope_freqs.weight");
    if (rf) {
        if (rf->type != KILN_TYPE_F32 || rf->ne[0] != hp->n_rot / 2)
            return kiln_error(KILN_E_FORMAT, "model: rope_freqs.weight must be f32[%u]", hp->n_rot / 2);
        m->rope_freqs = kiln_malloc(rf->size);
        if (!m->rope_freqs) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
        memcpy(m->rope_freqs, rf->data, rf->size);
    }
    for (uint32_t s = 0; s < m->n_splits; s++) {
        KILN_MEM_SCOPE(NULL, KILN_MEM_WEIGHTS);
        if ((st = place_split(m, s))) return st;
        kiln_mem_pool_snapshot(m->splits[s].bk, m->splits[s].dev); /* the handle's own staging, for the report */
    }
    return KILN_OK;
}

/* Resolves the split entries (or the one implied by backend/device) into
 * m->splits: finds each backend, checks the device and opens the model's
 * handle on it. */
static kiln_status open_splits(kiln_model *m, const kiln_model_params *p) {
    kiln_split_entry ents[KILN_SPLIT_MAX];
    uint32_t n = 1;
    kiln_status st;
    if (p->split && p->split[0]) {
        if ((st = kiln_split_parse(p->split, m->hp.n_layer, ents, &n))) return st;
    } else {
        memset(&ents[0], 0, sizeof ents[0]);
        ents[0].device = p->device;
        ents[0].n_layers = m->hp.n_layer;
    }
    m->splits = kiln_calloc(n, sizeof *m->splits);
    m->layer_split = kiln_calloc(m->hp.n_layer, sizeof *m->layer_split);
    if (!m->splits || !m->layer_split) return kiln_error(KILN_E_OOM_HOST, "model: out of memory");
    m->n_splits = n;
    for (uint32_t s = 0; s < n; s++) {
        kiln_model_split *sp = &m->splits[s];
        const bool named = p->split && p->split[0];
        if ((st = kiln_backend_find(named ? ents[s].backend : p->backend, &sp->bk))) {
            if (!named) return st;
            char msg[256];
            snprintf(msg, sizeof msg, "%s", kiln_last_error());
            return kiln_error(st, "split '%s': entry %u: %s", p->split, s + 1, msg);
        }
        if (ents[s].device < 0 || ents[s].device >= sp->bk->device_count())
            return named ? kiln_error(KILN_E_NOT_FOUND, "split '%s': entry %u: backend '%s' has no device %d",
                                      p->split, s + 1, sp->bk->name, ents[s].device)
                         : kiln_error(KILN_E_NOT_FOUND, "backend '%s' has no device %d", sp->bk->name,
                                      ents[s].device);
        sp->device_index = ents[s].device;
        sp->layer0 = ents[s].layer0;
        sp->n_layers = ents[s].n_layers;
        for (uint32_t l = sp->layer0; l < sp->layer0 + sp->n_layers; l++) m->layer_split[l] = (uint16_t)s;
        kiln_bk_open_params op = {sizeof op, 1, KILN_LOG_DEBUG, kiln_log_sink, &m->log};
        if ((st = kiln_mem_device_open(sp->bk, sp->device_index, &op, m, &sp->dev))) return st;
    }
    m->bk = m->splits[0].bk;
    m->device_index = m->splits[0].device_index;
    m->dev = m->splits[0].dev;
    if (n > 1)
        for (uint32_t s = 0; s < n; s++)
            kiln_log(&m->log, KILN_LOG_INFO, "split %u: layers %u..%u on %s:%d", s, m->splits[s].layer0,
                     m->splits[s].layer0 + m->splits[s].n_layers - 1, m->splits[s].bk->name,
                     m->splits[s].device_index);
    return KILN_OK;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* The model fingerprint (see model.h). Hashes values field by field, in a
 * fixed width, so padding and struct layout never change it. */
static uint64_t model_fingerprint(const kiln_model *m) {
    const kiln_hparams *hp = &m->hp;
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, m->arch_name, strlen(m->arch_name) + 1);
    const uint32_t u[] = {(uint32_t)hp->arch, hp->n_vocab, hp->n_ctx_train, hp->n_embd, hp->n_layer, hp->n_head,
                          hp->n_head_kv, hp->n_ff, hp->head_dim, hp->n_rot, (uint32_t)hp->rope_mode};
    h = fnv1a(h, u, sizeof u);
    const float f[] = {hp->rms_eps, hp->rope_freq_base, hp->rope_freq_scale};
    h = fnv1a(h, f, sizeof f);
    int64_t nt = kiln_gguf_n_tensors(m->gguf);
    for (int64_t i = 0; i < nt; i++) {
        const kiln_gguf_tensor *t = kiln_gguf_tensor_at(m->gguf, i);
        h = fnv1a(h, t->name, strlen(t->name) + 1);
        h = fnv1a(h, t->ne, sizeof t->ne);
        int32_t type = (int32_t)t->type;
        h = fnv1a(h, &type, sizeof type);
    }
    return h;
}

static void model_destroy(kiln_model *m) {
    if (!m) return;
    for (uint32_t s = 0; m->splits && s < m->n_splits; s++) {
        kiln_model_split *sp = &m->splits[s];
        if (sp->weights) kiln_mem_buffer_free(sp->bk, sp->weights);
        if (sp->dev) kiln_mem_device_close(sp->bk, sp->dev);
        kiln_free(sp->copies);
    }
    kiln_free(m->splits);
    kiln_free(m->layer_split);
    kiln_free(m->layers);
    kiln_free(m->rope_freqs);
    kiln_vocab_free(m->vocab);
    kiln_gguf_close(m->gguf);
    if (m->weights_lock_ok) pthread_mutex_destroy(&m->weights_lock);
    kiln_free(m);
    kiln_mem_owner_close(m); /* the leak guard: nothing may still be tagged to m */
}

void kiln_model_retain(kiln_model *m) { atomic_fetch_add(&m->refs, 1); }

void kiln_model_release(kiln_model *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_destroy(m);
}

void kiln_model_free(kiln_model *m) { kiln_model_release(m); }

kiln_status kiln_model_load(const char *path, const kiln_model_params *params, kiln_model **out) {
    kiln_error_clear();
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_load: out is NULL");
    *out = NULL;
    if (!path) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_load: path is NULL");
    kiln_model_params p;
    kiln_model_params_init(&p);
    kiln_status st;
    if (params && (st = kiln_params_copy(&p, sizeof p, params))) return st;

    kiln_model *m = kiln_calloc(1, sizeof *m);
    if (!m) return kiln_error(KILN_E_OOM_HOST, "kiln_model_load: out of memory");
    atomic_init(&m->refs, 1);
    m->flags = p.flags;
    if (pthread_mutex_init(&m->weights_lock, NULL) != 0) {
        kiln_free(m);
        return kiln_error(KILN_E_INTERNAL, "kiln_model_load: cannot create a mutex");
    }
    m->weights_lock_ok = true;
    /* everything allocated from here on is tagged to the model */
    const char *base_name = strrchr(path, '/');
    char label[48];
    snprintf(label, sizeof label, "%s", base_name ? base_name + 1 : path);
    char *ext = strstr(label, ".gguf");
    if (ext && ext[5] == '\0') *ext = '\0';
    kiln_mem_owner_open(KILN_MEM_OWNER_MODEL, m, label);
    KILN_MEM_SCOPE(m, KILN_MEM_METADATA);
    kiln_logger_init(&m->log, p.log_fn, p.log_user, p.log_level);
    m->device_index = p.device;

    if ((st = kiln_gguf_open(path, &m->gguf))) goto fail;
    if ((st = load_hparams(m))) goto fail;
    {
        KILN_MEM_SCOPE(NULL, KILN_MEM_TOKENIZER);
        st = kiln_vocab_load(m->gguf, &m->vocab);
    }
    if (st) goto fail;
    m->hp.n_vocab = (uint32_t)kiln_vocab_n_tokens(m->vocab);
    if (p.flags & KILN_MODEL_VOCAB_ONLY) goto done;

    if ((st = open_splits(m, &p))) goto fail;
    if ((st = load_weights(m))) goto fail;
    m->fingerprint = model_fingerprint(m);
done:
    kiln_log(&m->log, KILN_LOG_INFO, "loaded %s: %s, %u layers, %u embd, %llu params", path, m->arch_name,
             m->hp.n_layer, m->hp.n_embd, (unsigned long long)m->n_params);
    *out = m;
    return KILN_OK;
fail: {
    /* keep the first error's message: teardown may not overwrite it */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kiln_last_error());
    model_destroy(m);
    if (!msg[0]) snprintf(msg, sizeof msg, "%s", kiln_status_str(st));
    if (strncmp(msg, path, strlen(path)) != 0) return kiln_error(st, "%s: %s", path, msg);
    return kiln_error(st, "%s", msg);
}
}

kiln_status kiln_model_get_info(const kiln_model *m, kiln_model_info *info) {
    if (!m || !info) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_get_info: NULL argument");
    kiln_model_info full;
    kiln_model_info_init(&full);
    snprintf(full.arch, sizeof full.arch, "%s", m->arch_name);
    snprintf(full.name, sizeof full.name, "%s", m->name);
    full.n_vocab = m->hp.n_vocab;
    full.n_ctx_train = m->hp.n_ctx_train;
    full.n_embd = m->hp.n_embd;
    full.n_layer = m->hp.n_layer;
    full.n_head = m->hp.n_head;
    full.n_head_kv = m->hp.n_head_kv;
    full.n_ff = m->hp.n_ff;
    full.head_dim = m->hp.head_dim;
    full.n_params = m->n_params;
    full.size_bytes = m->weight_bytes;
    full.bos = kiln_vocab_bos(m->vocab);
    full.eos = kiln_vocab_eos(m->vocab);
    uint32_t n = info->struct_size;
    if (n < sizeof(uint32_t)) return kiln_error(KILN_E_INVALID_ARG, "kiln_model_info: bad struct_size %u", n);
    full.struct_size = n < sizeof full ? n : (uint32_t)sizeof full;
    memcpy(info, &full, full.struct_size);
    return KILN_OK;
}

int32_t kiln_model_n_vocab(const kiln_model *m) { return m ? (int32_t)m->hp.n_vocab : 0; }
