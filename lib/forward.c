/*
 * forward.c - the transformer forward pass for llama, qwen2 and qwen3 over
 * one ubatch, expressed as backend operations:
 *
 *   x = embed(tokens)
 *   per layer: h = rmsnorm(x); q,k,v = h W (+bias); [qwen3: per-head norm]
 *              rope(q,k); store k,v in the KV cache; a = attention(q, cache)
 *              x += a Wo; h = rmsnorm(x); x += (silu(h Wg) * h Wu) Wd
 *   logits = rmsnorm(x[rows wanted]) Wout
 *
 * All activations of the ubatch live in one transient buffer from the
 * device's pool, returned at the end (so the pool's cache is reused by the
 * next ubatch and its statistics see one allocation per ubatch).
 *
 * A split model (lib/split.c) runs each split's layers as a segment on its
 * own device handle, with its own activation buffer; between segments x
 * (n * n_embd floats, all the state a layer passes to the next) is
 * downloaded into host staging and uploaded to the next device. Each
 * segment is its own backend graph on its device.
 */
#include <math.h>
#include <string.h>

#include "context.h"
#include "quant.h"
#include "memtrack.h"

static kiln_bk_tensor act(kiln_bk_buffer *buf, uint64_t off_floats, int64_t ne0, int64_t ne1) {
    kiln_bk_tensor t;
    memset(&t, 0, sizeof t);
    t.buf = buf;
    t.offset = off_floats * sizeof(float);
    t.type = KILN_TYPE_F32;
    t.ne[0] = ne0;
    t.ne[1] = ne1;
    t.row_stride = (uint64_t)ne0 * sizeof(float);
    return t;
}

/* Same memory viewed as rows of `width` (per-head operations). */
static kiln_bk_tensor reshape(const kiln_bk_tensor *t, int64_t width) {
    kiln_bk_tensor r = *t;
    r.ne[1] = t->ne[0] * t->ne[1] / width;
    r.ne[0] = width;
    r.row_stride = (uint64_t)width * sizeof(float);
    return r;
}

#define CHECK(call)                                  \
    do {                                             \
        if ((st = (call)) != KILN_OK) goto done;     \
    } while (0)

/* What one split's segment of the forward pass needs. */
typedef struct segment {
    const kiln_model *m;
    kiln_context *ctx;
    const kiln_backend_iface *bk;
    kiln_bk_device *dev;
    uint32_t split, l0, l1;        /* layers [l0, l1) */
    bool first, last;
    kiln_bk_buffer *buf;           /* this split's activations */
    const int32_t *tokens, *out_idx;
    uint32_t n, n_out;
} segment;

/* Whether the backend fuses every product of layer L with the norm
 * before it (prenorm_fused): q, k, v, o, gate, up and down. */
static bool prenorm_layer(const kiln_backend_iface *bk, kiln_bk_device *dev, const kiln_layer_weights *L,
                          uint32_t n) {
    const kiln_bk_tensor *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    for (int i = 0; i < 7; i++)
        if (!bk->prenorm_fused(dev, ws[i], (int64_t)n)) return false;
    return true;
}

/* Enqueues the operations of one segment on its device: the embedding
 * lookup on the first, its layers, the output rows on the last. */
static kiln_status segment_ops(const segment *g, uint64_t o_lo) {
    const kiln_model *m = g->m;
    const kiln_hparams *hp = &m->hp;
    const kiln_backend_iface *bk = g->bk;
    kiln_bk_device *dev = g->dev;
    kiln_kv *kv = g->ctx->kv;
    const uint32_t n = g->n, n_out = g->n_out;
    const uint64_t E = hp->n_embd, Q = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t KV = (uint64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
    /* layout of the ubatch's activations, in floats (o_lo: see the caller) */
    const uint64_t o_x = 0, o_h = o_x + n * E, o_q = o_h + n * E, o_k = o_q + n * Q;
    const uint64_t o_v = o_k + n * KV, o_a = o_v + n * KV, o_g = o_a + n * Q, o_u = o_g + n * F;
    const uint64_t o_xo = o_u + n * F;
    kiln_bk_buffer *buf = g->buf;
    kiln_bk_tensor x = act(buf, o_x, E, n), h = act(buf, o_h, E, n);
    kiln_bk_tensor q = act(buf, o_q, Q, n), k = act(buf, o_k, KV, n), v = act(buf, o_v, KV, n);
    kiln_bk_tensor a = act(buf, o_a, Q, n), gt = act(buf, o_g, F, n), u = act(buf, o_u, F, n);
    kiln_bk_tensor xo = act(buf, o_xo, E, n_out), lo = act(buf, o_lo, V, n_out);

    kiln_bk_rope rq = {sizeof rq, hp->rope_mode, hp->n_head, hp->head_dim, hp->n_rot,
                       hp->rope_freq_base, hp->rope_freq_scale, m->rope_freqs};
    kiln_bk_rope rk = rq;
    rk.n_head = hp->n_head_kv;
    kiln_bk_attn at = {sizeof at, hp->n_head, hp->n_head_kv, hp->head_dim, 1.0f / sqrtf((float)hp->head_dim)};
    kiln_status st = KILN_OK;

    if (g->first) CHECK(bk->get_rows(dev, &m->tok_embd, g->tokens, &x));
    /* residual add + the next norm in one operation where the backend has
     * it; a segment starts with a plain norm of the x it was given */
    const bool fused = KILN_BK_HAS(bk, add_rms_norm);
    const bool multi = KILN_BK_HAS(bk, matmul_multi);
    const bool rope_store = KILN_BK_HAS(bk, rope_kv_store);
    const bool rope_attn = KILN_BK_HAS(bk, rope_kv_attention);
    const bool mm_norm = fused && KILN_BK_HAS(bk, matmul_add_rms_norm);
    const bool mm_swiglu = KILN_BK_HAS(bk, matmul_swiglu);
    /* the norm in the products after it, for the layers whose every
     * product the backend fuses so (prenorm_layer) */
    const bool prenorm = KILN_BK_HAS(bk, prenorm_fused) && KILN_BK_HAS(bk, matmul_add) &&
                         KILN_BK_HAS(bk, rms_norm_matmul_multi) && KILN_BK_HAS(bk, rms_norm_matmul_swiglu);
    bool h_ready = false; /* h holds this layer's attention norm of x */
    /* this layer and the next take that form (asked once per layer) */
    bool pre = prenorm && g->l0 < g->l1 && prenorm_layer(bk, dev, &m->layers[g->l0], n), pre_next = false;
    for (uint32_t il = g->l0; il < g->l1; il++, pre = pre_next) {
        const kiln_layer_weights *L = &m->layers[il];
        pre_next = prenorm && il + 1 < g->l1 && prenorm_layer(bk, dev, &m->layers[il + 1], n);
        if (pre) {
            const kiln_bk_tensor *w3[3] = {&L->wq, &L->wk, &L->wv};
            kiln_bk_tensor *d3[3] = {&q, &k, &v};
            CHECK(bk->rms_norm_matmul_multi(dev, &x, &L->attn_norm, hp->rms_eps, &h, 3, w3, d3));
        } else if (!h_ready) {
            CHECK(bk->rms_norm(dev, &x, &L->attn_norm, hp->rms_eps, &h));
        }
        if (pre) {
        } else if (multi) { /* the three products of h in as few launches as the backend can */
            const kiln_bk_tensor *w3[3] = {&L->wq, &L->wk, &L->wv};
            kiln_bk_tensor *d3[3] = {&q, &k, &v};
            CHECK(bk->matmul_multi(dev, 3, w3, &h, d3));
        } else {
            CHECK(bk->matmul(dev, &L->wq, &h, &q));
            CHECK(bk->matmul(dev, &L->wk, &h, &k));
            CHECK(bk->matmul(dev, &L->wv, &h, &v));
        }
        if (L->bq.buf) CHECK(bk->add(dev, &q, &L->bq, &q));
        if (L->bk.buf) CHECK(bk->add(dev, &k, &L->bk, &k));
        if (L->bv.buf) CHECK(bk->add(dev, &v, &L->bv, &v));
        if (L->q_norm.buf) {
            kiln_bk_tensor qh = reshape(&q, hp->head_dim), kh = reshape(&k, hp->head_dim);
            CHECK(bk->rms_norm(dev, &qh, &L->q_norm, hp->rms_eps, &qh));
            CHECK(bk->rms_norm(dev, &kh, &L->k_norm, hp->rms_eps, &kh));
        }
        if (rope_attn) {
            CHECK(bk->rope_kv_attention(dev, &q, &k, &v, &rq, &rk, kv->k[il], kv->v[il], (uint32_t)KV, &at, &a));
        } else {
            if (rope_store) {
                CHECK(bk->rope_kv_store(dev, &q, &k, &v, &rq, &rk, kv->k[il], kv->v[il], (uint32_t)KV));
            } else {
                CHECK(bk->rope(dev, &q, &rq));
                CHECK(bk->rope(dev, &k, &rk));
                CHECK(bk->kv_store(dev, &k, &v, kv->k[il], kv->v[il], (uint32_t)KV));
            }
            CHECK(bk->attention(dev, &q, kv->k[il], kv->v[il], &at, &a));
        }
        if (pre) {
            CHECK(bk->matmul_add(dev, &L->wo, &a, &x, &h, &x));
            CHECK(bk->rms_norm_matmul_swiglu(dev, &x, &L->ffn_norm, hp->rms_eps, &h, &L->w_gate, &L->w_up, &u, &gt));
            CHECK(bk->matmul_add(dev, &L->w_down, &gt, &x, &h, &x));
            h_ready = false;
            continue;
        }
        if (mm_norm) {
            CHECK(bk->matmul_add_rms_norm(dev, &L->wo, &a, &x, &x, &L->ffn_norm, hp->rms_eps, &h));
        } else if (fused) {
            CHECK(bk->matmul(dev, &L->wo, &a, &h));
            CHECK(bk->add_rms_norm(dev, &x, &h, &x, &L->ffn_norm, hp->rms_eps, &h));
        } else {
            CHECK(bk->matmul(dev, &L->wo, &a, &h));
            CHECK(bk->add(dev, &x, &h, &x));
            CHECK(bk->rms_norm(dev, &x, &L->ffn_norm, hp->rms_eps, &h));
        }
        if (mm_swiglu) {
            CHECK(bk->matmul_swiglu(dev, &L->w_gate, &L->w_up, &h, &u, &gt));
        } else {
            if (multi) {
                const kiln_bk_tensor *w2[2] = {&L->w_gate, &L->w_up};
                kiln_bk_tensor *d2[2] = {&gt, &u};
                CHECK(bk->matmul_multi(dev, 2, w2, &h, d2));
            } else {
                CHECK(bk->matmul(dev, &L->w_gate, &h, &gt));
                CHECK(bk->matmul(dev, &L->w_up, &h, &u));
            }
            CHECK(bk->swiglu(dev, &gt, &u, &gt));
        }
        /* and the next layer's attention norm, unless that layer does it itself */
        const bool norm_next = fused && il + 1 < g->l1 && !pre_next;
        if (mm_norm && norm_next) {
            CHECK(bk->matmul_add_rms_norm(dev, &L->w_down, &gt, &x, &x, &m->layers[il + 1].attn_norm, hp->rms_eps,
                                          &h));
        } else {
            CHECK(bk->matmul(dev, &L->w_down, &gt, &h));
            if (norm_next)
                CHECK(bk->add_rms_norm(dev, &x, &h, &x, &m->layers[il + 1].attn_norm, hp->rms_eps, &h));
            else
                CHECK(bk->add(dev, &x, &h, &x));
        }
        h_ready = norm_next;
    }
    if (g->last && n_out > 0) {
        CHECK(bk->get_rows(dev, &x, g->out_idx, &xo));
        CHECK(bk->rms_norm(dev, &xo, &m->output_norm, hp->rms_eps, &xo));
        CHECK(bk->matmul(dev, &m->output, &xo, &lo));
    }
done:
    return st;
}

/* Runs one segment: recorded as a backend graph for small ubatches (decode
 * steps, once per shape and device handle) and replayed; if the replay
 * finds different arguments the backend asks for the operations again,
 * executed eagerly. */
static kiln_status segment_run(const segment *g, uint64_t o_lo) {
    const kiln_backend_iface *bk = g->bk;
    bool graph = g->n <= 8 && !g->ctx->no_graphs && KILN_BK_HAS(bk, graph_begin) && KILN_BK_HAS(bk, graph_end);
    kiln_status st;
again:
    if (graph && (st = bk->graph_begin(g->dev, ((uint64_t)g->n << 32) | g->n_out))) return st;
    st = segment_ops(g, o_lo);
    if (graph) {
        int32_t redo = 0;
        kiln_status end = bk->graph_end(g->dev, &redo); /* also closes a failed recording */
        if (st == KILN_OK && end == KILN_OK && redo) {
            graph = false;
            goto again;
        }
        if (st == KILN_OK) st = end;
    }
    return st;
}

kiln_status kiln_forward_ubatch(kiln_context *ctx, const int32_t *tokens, uint32_t n,
                                const int32_t *out_idx, uint32_t n_out, float *logits) {
    const kiln_model *m = ctx->model;
    const kiln_hparams *hp = &m->hp;
    const uint64_t E = hp->n_embd, Q = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t KV = (uint64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
    /* floats of a split's activations (segment_ops' layout); the last
     * split also holds the output rows and their logits */
    const uint64_t body = n * (2 * E + 2 * Q + 2 * KV + 2 * F);
    const uint64_t o_lo = body + (uint64_t)n_out * E, total_last = o_lo + (uint64_t)n_out * V;
    const uint32_t last = ctx->n_splits - 1;

    kiln_bk_buffer *bufs[KILN_SPLIT_MAX] = {0};
    kiln_status st = KILN_OK;
    /* every split's activations first: an out-of-memory on a later device
     * returns what the earlier ones took, with nothing run */
    for (uint32_t s = 0; s <= last; s++) {
        const kiln_backend_iface *bk = kiln_context_split_bk(ctx, s);
        uint64_t bytes = (s == last ? total_last : body) * sizeof(float);
        st = kiln_mem_buffer_alloc(bk, ctx->sdev[s], bytes, KILN_BK_BUF_TRANSIENT, KILN_MEM_POOL, &bufs[s]);
        if (st) {
            kiln_error(st, "decode: cannot allocate %llu bytes of activations on %s:%d", (unsigned long long)bytes,
                       bk->name, m->splits[s].device_index);
            goto out;
        }
    }
    for (uint32_t s = 0; s <= last; s++) {
        const kiln_model_split *sp = &m->splits[s];
        segment g = {m, ctx, kiln_context_split_bk(ctx, s), ctx->sdev[s], s, sp->layer0, sp->layer0 + sp->n_layers, s == 0, s == last,
                     bufs[s], tokens, out_idx, n, n_out};
        if (s > 0) { /* x continues on this device (through the host: no cross-device copy in the interface) */
            const kiln_backend_iface *pbk = kiln_context_split_bk(ctx, s - 1);
            if ((st = pbk->buffer_download(ctx->sdev[s - 1], bufs[s - 1], 0, ctx->stage, n * E * sizeof(float))) ||
                (st = g.bk->buffer_upload(g.dev, bufs[s], 0, ctx->stage, n * E * sizeof(float)))) {
                kiln_error(st, "decode: copying the activations from split %u to split %u failed", s - 1, s);
                goto out;
            }
        }
        if ((st = segment_run(&g, o_lo))) goto out;
    }
    const kiln_backend_iface *lbk = kiln_context_split_bk(ctx, last);
    if (n_out > 0)
        st = lbk->buffer_download(ctx->sdev[last], bufs[last], o_lo * sizeof(float), logits,
                                  (uint64_t)n_out * V * sizeof(float));
    else
        st = lbk->synchronize(ctx->sdev[last]);
out:
    if (st != KILN_OK && !kiln_last_error()[0]) kiln_error(st, "decode: backend %s failed", ctx->bk->name);
    for (uint32_t s = 0; s <= last; s++) kiln_mem_buffer_free(kiln_context_split_bk(ctx, s), bufs[s]);
    return st;
}
