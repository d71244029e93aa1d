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

kiln_status kiln_forward_ubatch(kiln_context *ctx, const int32_t *tokens, uint32_t n,
                                const int32_t *out_idx, uint32_t n_out, float *logits) {
    const kiln_model *m = ctx->model;
    const kiln_hparams *hp = &m->hp;
    const kiln_backend_iface *bk = ctx->bk;
    kiln_bk_device *dev = ctx->dev;
    const uint64_t E = hp->n_embd, Q = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t KV = (uint64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, V = hp->n_vocab;

    /* layout of the ubatch's activations, in floats */
    const uint64_t o_x = 0, o_h = o_x + n * E, o_q = o_h + n * E, o_k = o_q + n * Q;
    const uint64_t o_v = o_k + n * KV, o_a = o_v + n * KV, o_g = o_a + n * Q, o_u = o_g + n * F;
    const uint64_t o_xo = o_u + n * F, o_lo = o_xo + (uint64_t)n_out * E, total = o_lo + (uint64_t)n_out * V;

    kiln_bk_buffer *buf = NULL;
    kiln_status st = kiln_mem_buffer_alloc(bk, dev, total * sizeof(float), KILN_BK_BUF_TRANSIENT, KILN_MEM_POOL,
                                           &buf);
    if (st) return kiln_error(st, "decode: cannot allocate %llu bytes of activations on %s",
                              (unsigned long long)(total * sizeof(float)), bk->name);

    kiln_bk_tensor x = act(buf, o_x, E, n), h = act(buf, o_h, E, n);
    kiln_bk_tensor q = act(buf, o_q, Q, n), k = act(buf, o_k, KV, n), v = act(buf, o_v, KV, n);
    kiln_bk_tensor a = act(buf, o_a, Q, n), g = act(buf, o_g, F, n), u = act(buf, o_u, F, n);
    kiln_bk_tensor xo = act(buf, o_xo, E, n_out), lo = act(buf, o_lo, V, n_out);

    kiln_bk_rope rq = {sizeof rq, hp->rope_mode, hp->n_head, hp->head_dim, hp->n_rot,
                       hp->rope_freq_base, hp->rope_freq_scale, m->rope_freqs};
    kiln_bk_rope rk = rq;
    rk.n_head = hp->n_head_kv;
    kiln_bk_attn at = {sizeof at, hp->n_head, hp->n_head_kv, hp->head_dim, 1.0f / sqrtf((float)hp->head_dim)};

    /* Small ubatches (decode steps) are recorded once per shape as a
     * backend graph and replayed; if the replay finds different arguments
     * the backend asks for the operations again, executed eagerly. */
    bool graph = n <= 8 && !ctx->no_graphs && KILN_BK_HAS(bk, graph_begin) && KILN_BK_HAS(bk, graph_end);
    bool in_graph = false;
again:
    if (graph) {
        CHECK(bk->graph_begin(dev, ((uint64_t)n << 32) | n_out));
        in_graph = true;
    }
    CHECK(bk->get_rows(dev, &m->tok_embd, tokens, &x));
    /* residual add + the next norm in one operation where the backend has it */
    const bool fused = KILN_BK_HAS(bk, add_rms_norm);
    const bool multi = KILN_BK_HAS(bk, matmul_multi);
    const bool rope_store = KILN_BK_HAS(bk, rope_kv_store);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const kiln_layer_weights *L = &m->layers[il];
        if (il == 0 || !fused) CHECK(bk->rms_norm(dev, &x, &L->attn_norm, hp->rms_eps, &h));
        if (multi) { /* the three products of h in as few launches as the backend can */
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
        if (rope_store) {
            CHECK(bk->rope_kv_store(dev, &q, &k, &v, &rq, &rk, ctx->kv->k[il], ctx->kv->v[il], (uint32_t)KV));
        } else {
            CHECK(bk->rope(dev, &q, &rq));
            CHECK(bk->rope(dev, &k, &rk));
            CHECK(bk->kv_store(dev, &k, &v, ctx->kv->k[il], ctx->kv->v[il], (uint32_t)KV));
        }
        CHECK(bk->attention(dev, &q, ctx->kv->k[il], ctx->kv->v[il], &at, &a));
        CHECK(bk->matmul(dev, &L->wo, &a, &h));
        if (fused) {
            CHECK(bk->add_rms_norm(dev, &x, &h, &x, &L->ffn_norm, hp->rms_eps, &h));
        } else {
            CHECK(bk->add(dev, &x, &h, &x));
            CHECK(bk->rms_norm(dev, &x, &L->ffn_norm, hp->rms_eps, &h));
        }
        if (multi) {
            const kiln_bk_tensor *w2[2] = {&L->w_gate, &L->w_up};
            kiln_bk_tensor *d2[2] = {&g, &u};
            CHECK(bk->matmul_multi(dev, 2, w2, &h, d2));
        } else {
            CHECK(bk->matmul(dev, &L->w_gate, &h, &g));
            CHECK(bk->matmul(dev, &L->w_up, &h, &u));
        }
        CHECK(bk->swiglu(dev, &g, &u, &g));
        CHECK(bk->matmul(dev, &L->w_down, &g, &h));
        if (fused && il + 1 < hp->n_layer) /* and the next layer's attention norm */
            CHECK(bk->add_rms_norm(dev, &x, &h, &x, &m->layers[il + 1].attn_norm, hp->rms_eps, &h));
        else
            CHECK(bk->add(dev, &x, &h, &x));
    }
    if (n_out > 0) {
        CHECK(bk->get_rows(dev, &x, out_idx, &xo));
        CHECK(bk->rms_norm(dev, &xo, &m->output_norm, hp->rms_eps, &xo));
        CHECK(bk->matmul(dev, &m->output, &xo, &lo));
    }
    if (in_graph) {
        int32_t redo = 0;
        in_graph = false;
        CHECK(bk->graph_end(dev, &redo));
        if (redo) {
            graph = false;
            goto again;
        }
    }
    if (n_out > 0) {
        CHECK(bk->buffer_download(dev, buf, o_lo * sizeof(float), logits, (uint64_t)n_out * V * sizeof(float)));
    } else {
        CHECK(bk->synchronize(dev));
    }
done:
    if (in_graph) { /* a failed operation inside a recording: close it, keep the error */
        int32_t redo = 0;
        bk->graph_end(dev, &redo);
    }
    if (st != KILN_OK && !kiln_last_error()[0]) kiln_error(st, "decode: backend %s failed", bk->name);
    kiln_mem_buffer_free(bk, buf);
    return st;
}
