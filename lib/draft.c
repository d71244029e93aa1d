/*
 * draft.c - draft contexts and speculative decoding on sequence 0
 * (include/kiln.h, "Speculative decoding").
 *
 * State kept between the steps. The target's and the draft's sequence 0
 * hold the same history, except that the draft may lag by one token: when
 * the target accepts a whole proposal, the last proposed token was never
 * decoded on the draft (proposing it needed only the logits before it), so
 * it is kept in `pending` and decoded in front of the next propose's batch.
 * The newest token of the sequence (`last_token` of the API) is in neither
 * cache until the next propose/verify decodes it.
 *
 * A propose remembers how the draft looked before it (pre_*), so that a
 * failed propose or verify puts the draft back exactly; the target's decode
 * rolls itself back on failure.
 *
 * Greedy choices are argmax with ties to the lowest id (the sampler's
 * greedy rule), so greedy output equals plain greedy decoding.
 *
 * Ownership: the draft owns its context (which holds the draft model
 * reference) and three scratch arrays sized for n_draft at create, so the
 * steady state allocates nothing here. The target owns nothing of the
 * draft; see draft.h for the detach protocol.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "context.h"
#include "draft.h"
#include "memtrack.h"

#define DRAFT_MAX_N 256

struct kiln_draft {
    kiln_context *target;      /* borrowed; NULL once detached */
    kiln_context *ctx;         /* the draft's own context; NULL once detached */
    kiln_draft_params params;
    uint32_t n_vocab;

    int32_t *props;            /* [n_draft] the open proposal */
    int32_t n_props;
    bool have_prop;            /* a proposal awaits verify/accept */
    uint32_t prop_base;        /* history length when it was proposed */
    uint32_t pre_len;          /* draft seq 0 length before the propose */
    bool pre_has_pending;
    int32_t pre_pending;

    bool has_pending;          /* the draft lags the history by `pending` */
    int32_t pending;

    int32_t *batch_tok;        /* [n_draft + 2] */
    int8_t *batch_out;         /* [n_draft + 2] logits flags, all 1 */
    kiln_draft_stats stats;
};

void kiln_draft_params_init_sized(kiln_draft_params *p, uint32_t size) {
    kiln_draft_params d;
    memset(&d, 0, sizeof d);
    d.n_draft = 8;
    d.n_ctx = 0;
    d.n_threads = 0;
    d.p_min = 0.0f;
    kiln_params_emit(p, size, &d, sizeof d);
}

void kiln_draft_stats_init_sized(kiln_draft_stats *s, uint32_t size) {
    kiln_draft_stats d;
    memset(&d, 0, sizeof d);
    kiln_params_emit(s, size, &d, sizeof d);
}

/* ---- lifetime ------------------------------------------------------------ */

static void draft_release(kiln_draft *d) {
    kiln_context_free(d->ctx);
    d->ctx = NULL;
    kiln_free(d->props);
    kiln_free(d->batch_tok);
    kiln_free(d->batch_out);
    d->props = d->batch_tok = NULL;
    d->batch_out = NULL;
    d->have_prop = d->has_pending = false;
}

void kiln_draft_detach(kiln_draft *d) {
    if (!d) return;
    d->target = NULL;
    draft_release(d);
}

void kiln_draft_free(kiln_draft *d) {
    if (!d) return;
    if (d->target && d->target->draft == d) d->target->draft = NULL;
    draft_release(d);
    kiln_free(d);
    kiln_mem_owner_close(d); /* the leak guard: nothing may still be tagged to d */
}

kiln_status kiln_draft_suspend(kiln_draft *d, int32_t level) {
    return d && d->ctx ? kiln_context_suspend(d->ctx, level) : KILN_OK;
}

kiln_context *kiln_draft_context(kiln_draft *d) { return d ? d->ctx : NULL; }

/* KILN_E_INCOMPATIBLE unless both vocabularies have the same size and the
 * same text for every token. */
static kiln_status check_vocab(const kiln_model *t, const kiln_model *m) {
    int32_t nt = kiln_vocab_n_tokens(t->vocab), nm = kiln_vocab_n_tokens(m->vocab);
    if (t->hp.n_vocab != m->hp.n_vocab || nt != nm)
        return kiln_error(KILN_E_INCOMPATIBLE,
                          "kiln_draft_create: the draft model's vocabulary has %u tokens (%d in the "
                          "tokenizer), the target's %u (%d)",
                          m->hp.n_vocab, nm, t->hp.n_vocab, nt);
    for (int32_t i = 0; i < nt; i++) {
        size_t lt = 0, lm = 0;
        const char *st = kiln_vocab_token_text(t->vocab, i, &lt);
        const char *sm = kiln_vocab_token_text(m->vocab, i, &lm);
        if (lt != lm || (lt && memcmp(st, sm, lt) != 0))
            return kiln_error(KILN_E_INCOMPATIBLE,
                              "kiln_draft_create: token %d differs: the target's is '%.*s', the draft "
                              "model's '%.*s'",
                              i, (int)KILN_MIN(lt, 64), st ? st : "", (int)KILN_MIN(lm, 64), sm ? sm : "");
    }
    return KILN_OK;
}

kiln_status kiln_draft_create(kiln_context *target, kiln_model *draft_model, const kiln_draft_params *params,
                              kiln_draft **out) {
    kiln_error_clear();
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_create: out is NULL");
    *out = NULL;
    if (!target || !draft_model)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_create: %s is NULL", target ? "draft_model" : "target");
    if (target->draft) return kiln_error(KILN_E_BUSY, "kiln_draft_create: the target context already has a draft");
    if (!draft_model->dev)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_create: the draft model was loaded vocab-only");
    kiln_draft_params p;
    kiln_draft_params_init(&p);
    kiln_status st;
    if (params && (st = kiln_params_copy(&p, sizeof p, params))) return st;
    if (p.n_draft < 1 || p.n_draft > DRAFT_MAX_N || !(p.p_min >= 0.0f && p.p_min <= 1.0f))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_create: bad params (n_draft %d not in 1..%d or p_min %g not in [0, 1])",
                          p.n_draft, DRAFT_MAX_N, (double)p.p_min);
    if ((st = check_vocab(target->model, draft_model))) return st;

    kiln_draft *d = kiln_calloc(1, sizeof *d);
    if (!d) return kiln_error(KILN_E_OOM_HOST, "kiln_draft_create: out of memory");
    kiln_mem_owner_open(KILN_MEM_OWNER_DRAFT, d, draft_model->name[0] ? draft_model->name : draft_model->arch_name);
    KILN_MEM_SCOPE(d, KILN_MEM_DRAFT);
    d->params = p;
    d->n_vocab = target->model->hp.n_vocab;
    d->props = kiln_calloc((size_t)p.n_draft, sizeof(int32_t));
    d->batch_tok = kiln_calloc((size_t)p.n_draft + 2, sizeof(int32_t));
    d->batch_out = kiln_malloc((size_t)p.n_draft + 2);
    if (!d->props || !d->batch_tok || !d->batch_out) {
        kiln_draft_free(d);
        return kiln_error(KILN_E_OOM_HOST, "kiln_draft_create: out of memory");
    }
    memset(d->batch_out, 1, (size_t)p.n_draft + 2);

    /* the draft context mirrors the target's shape: one sequence, the same
     * ubatch and block size, the target's log sink */
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    cp.n_ctx = p.n_ctx ? p.n_ctx : target->params.n_ctx;
    cp.n_ubatch = target->params.n_ubatch;
    cp.n_seq_max = 1;
    cp.n_threads = p.n_threads > 0 ? p.n_threads : target->params.n_threads;
    cp.kv_block_size = target->params.kv_block_size;
    cp.log_level = target->log.level;
    cp.log_fn = target->log.fn;
    cp.log_user = target->log.user;
    if ((st = kiln_context_create(draft_model, &cp, &d->ctx))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        kiln_draft_free(d);
        return kiln_error(st, "kiln_draft_create: %s", msg);
    }
    d->target = target;
    target->draft = d;
    *out = d;
    return KILN_OK;
}

/* ---- helpers ------------------------------------------------------------- */

static kiln_status check_attached(const kiln_draft *d, const char *fn) {
    if (!d) return kiln_error(KILN_E_INVALID_ARG, "%s: draft is NULL", fn);
    if (!d->target || !d->ctx)
        return kiln_error(KILN_E_INVALID_ARG, "%s: the draft's target context was freed", fn);
    return KILN_OK;
}

static uint32_t seq0_len(kiln_context *c) {
    return (uint32_t)(kiln_kv_seq_pos_max(kiln_context_kv(c), 0) + 1);
}

/* Cuts sequence 0 of c to len positions (a suffix removal, cannot fail for
 * a valid len; the status is passed on all the same). */
static kiln_status truncate0(kiln_context *c, uint32_t len) {
    if (seq0_len(c) <= len) return KILN_OK;
    return kiln_kv_seq_rm(kiln_context_kv(c), 0, (int32_t)len, -1);
}

/* Decodes tokens[0..n) on sequence 0 of c; logits for the last token only,
 * or for all when all_logits. */
static kiln_status decode0(kiln_draft *d, kiln_context *c, const int32_t *tokens, uint32_t n, bool all_logits) {
    kiln_batch b;
    kiln_batch_init(&b);
    b.n_tokens = n;
    b.tokens = tokens;
    b.logits = all_logits ? d->batch_out : NULL;
    return kiln_decode(c, &b);
}

/* Greedy choice: the argmax, ties to the lowest id; NaN never wins. *prob
 * (if not NULL) gets its softmax probability. */
static kiln_status argmax(const float *l, uint32_t n, int32_t *tok, double *prob) {
    int32_t best = -1;
    float bv = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (l[i] > bv) {
            bv = l[i];
            best = (int32_t)i;
        }
    if (best < 0) return kiln_error(KILN_E_BACKEND, "speculative decoding: logits without a finite maximum");
    *tok = best;
    if (prob) {
        double sum = 0.0;
        if (isinf(bv)) {
            *prob = 1.0;
            return KILN_OK;
        }
        for (uint32_t i = 0; i < n; i++)
            if (l[i] > -INFINITY) sum += exp((double)l[i] - (double)bv);
        *prob = sum > 0.0 ? 1.0 / sum : 1.0;
    }
    return KILN_OK;
}

/* The target's choice from a row of logits: greedy or the caller's sampler. */
static kiln_status choose(kiln_draft *d, const float *l, kiln_sampler *smp, int32_t *tok) {
    if (!l) return kiln_error(KILN_E_INTERNAL, "speculative decoding: missing logits row");
    if (smp) return kiln_sampler_sample(smp, l, (int32_t)d->n_vocab, tok);
    return argmax(l, d->n_vocab, tok, NULL);
}

/* Puts the draft back as it was before the open proposal (after a failure)
 * and keeps the failure's message. */
static kiln_status cancel_proposal(kiln_draft *d, kiln_status st) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kiln_last_error());
    if (d->ctx) (void)truncate0(d->ctx, d->pre_len);
    d->has_pending = d->pre_has_pending;
    d->pending = d->pre_pending;
    d->have_prop = false;
    return kiln_error(st, "%s", msg);
}

/* ---- steps ------------------------------------------------------------------ */

kiln_status kiln_draft_prefill(kiln_draft *d, const int32_t *tokens, size_t n) {
    kiln_error_clear();
    kiln_status st = check_attached(d, "kiln_draft_prefill");
    if (st) return st;
    if (n == 0) return KILN_OK;
    if (!tokens || n > UINT32_MAX) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_prefill: bad tokens");
    d->have_prop = false;
    if (d->has_pending) { /* the lagging token comes first */
        if ((st = decode0(d, d->ctx, &d->pending, 1, false))) return st;
        d->has_pending = false;
        d->stats.n_draft_batches++;
    }
    st = decode0(d, d->ctx, tokens, (uint32_t)n, false);
    d->stats.n_draft_batches++;
    return st;
}

kiln_status kiln_draft_reset(kiln_draft *d) {
    kiln_error_clear();
    kiln_status st = check_attached(d, "kiln_draft_reset");
    if (st) return st;
    d->have_prop = d->has_pending = false;
    return truncate0(d->ctx, 0);
}

kiln_status kiln_draft_propose(kiln_draft *d, int32_t last_token, int32_t *tokens, int32_t max, int32_t *n) {
    kiln_error_clear();
    kiln_status st = check_attached(d, "kiln_draft_propose");
    if (st) return st;
    if (!n || max < 0 || (max > 0 && !tokens))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_propose: bad arguments (max %d)", max);
    *n = 0;
    if (last_token < 0 || (uint32_t)last_token >= d->n_vocab)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_propose: token %d out of range (n_vocab %u)", last_token,
                          d->n_vocab);
    uint32_t hist = seq0_len(d->ctx) + (d->has_pending ? 1u : 0u), t_len = seq0_len(d->target);
    if (hist != t_len)
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_draft_propose: out of sync: the target's sequence 0 holds %u tokens, the draft's "
                          "history %u",
                          t_len, hist);
    int32_t k = KILN_MIN(max, d->params.n_draft);
    d->pre_len = seq0_len(d->ctx);
    d->pre_has_pending = d->has_pending;
    d->pre_pending = d->pending;
    d->prop_base = hist;
    d->n_props = 0;
    d->have_prop = true;

    uint32_t nb = 0;
    if (d->has_pending) d->batch_tok[nb++] = d->pending;
    d->batch_tok[nb++] = last_token;
    st = decode0(d, d->ctx, d->batch_tok, nb, false);
    d->stats.n_draft_batches++;
    if (st) return cancel_proposal(d, st);
    d->has_pending = false;
    for (int32_t i = 0; i < k; i++) {
        int32_t t;
        double prob = 1.0;
        if ((st = argmax(kiln_context_logits(d->ctx, -1), d->n_vocab, &t, &prob))) return cancel_proposal(d, st);
        if (d->params.p_min > 0.0f && prob < (double)d->params.p_min) break;
        d->props[d->n_props++] = t;
        /* the last proposal and an end of generation need no decode */
        if (i + 1 == k || kiln_token_is_eog(d->ctx->model, t)) break;
        st = decode0(d, d->ctx, &t, 1, false);
        d->stats.n_draft_batches++;
        if (st) return cancel_proposal(d, st);
    }
    if (d->n_props) memmove(tokens, d->props, (size_t)d->n_props * sizeof(int32_t));
    *n = d->n_props;
    return KILN_OK;
}

/* Keeps last_token and n_acc proposed tokens in both caches. The target
 * must hold at least that much (checked before anything changes). */
static kiln_status accept_impl(kiln_draft *d, int32_t n_acc) {
    uint32_t keep = d->prop_base + 1 + (uint32_t)n_acc;
    if (seq0_len(d->target) < keep)
        return kiln_error(KILN_E_INVALID_ARG,
                          "kiln_draft_accept: the target's sequence 0 holds %u tokens, accepting %d needs %u "
                          "(decode last_token and the proposal on the target first)",
                          seq0_len(d->target), n_acc, keep);
    kiln_status st;
    if ((st = truncate0(d->target, keep))) return st;
    uint32_t dl = seq0_len(d->ctx);
    if (dl > keep) {
        if ((st = truncate0(d->ctx, keep))) return st;
    } else if (dl + 1 == keep && n_acc > 0) {
        d->pending = d->props[n_acc - 1]; /* proposed but never decoded on the draft */
        d->has_pending = true;
    }
    d->stats.n_proposed += (uint64_t)d->n_props;
    d->stats.n_accepted += (uint64_t)n_acc;
    d->have_prop = false;
    return KILN_OK;
}

kiln_status kiln_draft_accept(kiln_draft *d, int32_t n_accepted) {
    kiln_error_clear();
    kiln_status st = check_attached(d, "kiln_draft_accept");
    if (st) return st;
    if (!d->have_prop) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_accept: no open proposal");
    if (n_accepted < 0 || n_accepted > d->n_props)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_accept: %d accepted of a proposal of %d", n_accepted,
                          d->n_props);
    return accept_impl(d, n_accepted);
}

kiln_status kiln_draft_verify(kiln_draft *d, int32_t last_token, const int32_t *tokens, int32_t n, kiln_sampler *smp,
                              int32_t *n_accepted, int32_t *next_token) {
    kiln_error_clear();
    kiln_status st = check_attached(d, "kiln_draft_verify");
    if (st) return st;
    if (!n_accepted || !next_token) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_verify: NULL output");
    if (!d->have_prop) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_verify: no open proposal");
    if (n != d->n_props || (n > 0 && (!tokens || memcmp(tokens, d->props, (size_t)n * sizeof(int32_t)) != 0)))
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_verify: the tokens are not the open proposal");
    if (last_token < 0 || (uint32_t)last_token >= d->n_vocab)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_verify: token %d out of range (n_vocab %u)", last_token,
                          d->n_vocab);
    d->batch_tok[0] = last_token;
    if (n) memcpy(d->batch_tok + 1, d->props, (size_t)n * sizeof(int32_t));
    st = decode0(d, d->target, d->batch_tok, (uint32_t)n + 1, true);
    d->stats.n_target_batches++;
    if (st) return cancel_proposal(d, st);
    int32_t acc = 0, next = -1;
    for (int32_t i = 0; i <= n; i++) {
        int32_t c;
        if ((st = choose(d, kiln_context_logits(d->target, i), smp, &c))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", kiln_last_error());
            (void)truncate0(d->target, d->prop_base);
            (void)cancel_proposal(d, st);
            return kiln_error(st, "%s", msg);
        }
        /* an agreeing end of generation ends the sequence: it is returned
         * as next_token, never accepted as a proposal */
        if (i < n && c == d->props[i] && !kiln_token_is_eog(d->target->model, c)) {
            acc++;
            continue;
        }
        next = c;
        break;
    }
    if ((st = accept_impl(d, acc))) return st;
    *n_accepted = acc;
    *next_token = next;
    return KILN_OK;
}

/* ---- one call ----------------------------------------------------------------- */

kiln_status kiln_draft_generate(kiln_draft *d, const int32_t *prompt, size_t n_prompt, int32_t n_predict,
                                kiln_sampler *smp, int32_t *out_tokens, size_t capacity, size_t *n_out) {
    kiln_error_clear();
    if (!n_out) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_generate: n_out is NULL");
    *n_out = 0;
    kiln_status st = check_attached(d, "kiln_draft_generate");
    if (st) return st;
    if (!prompt || n_prompt == 0 || n_prompt > UINT32_MAX || n_predict < 1 || !out_tokens)
        return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_generate: bad arguments (n_prompt %zu, n_predict %d)",
                          n_prompt, n_predict);
    if (capacity < (size_t)n_predict) {
        *n_out = (size_t)n_predict;
        return kiln_error(KILN_E_BUFFER_TOO_SMALL, "kiln_draft_generate: capacity %zu < n_predict %d", capacity,
                          n_predict);
    }
    d->have_prop = d->has_pending = false;
    if ((st = truncate0(d->target, 0)) || (st = truncate0(d->ctx, 0))) return st;

    st = decode0(d, d->target, prompt, (uint32_t)n_prompt, false);
    d->stats.n_target_batches++;
    if (st) return st;
    int32_t last;
    if ((st = choose(d, kiln_context_logits(d->target, -1), smp, &last))) return st;
    st = decode0(d, d->ctx, prompt, (uint32_t)n_prompt, false);
    d->stats.n_draft_batches++;
    if (st) return st;

    const kiln_model *m = d->target->model;
    size_t n = 0;
    for (;;) {
        if (kiln_token_is_eog(m, last)) break;
        out_tokens[n++] = last;
        *n_out = n;
        if (n == (size_t)n_predict) break;
        /* accepted tokens plus the target's own must fit what is left */
        int32_t k = (int32_t)KILN_MIN((size_t)d->params.n_draft, (size_t)n_predict - n - 1), np, acc, next;
        if ((st = kiln_draft_propose(d, last, d->props, k, &np)) ||
            (st = kiln_draft_verify(d, last, d->props, np, smp, &acc, &next)))
            return st;
        for (int32_t i = 0; i < acc; i++) out_tokens[n++] = d->props[i];
        *n_out = n;
        last = next;
    }
    return KILN_OK;
}

kiln_status kiln_draft_get_stats(const kiln_draft *d, kiln_draft_stats *out) {
    kiln_error_clear();
    if (!d || !out) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_get_stats: NULL argument");
    uint32_t sz = out->struct_size;
    if (sz < sizeof(uint32_t)) return kiln_error(KILN_E_INVALID_ARG, "kiln_draft_get_stats: bad struct_size %u", sz);
    kiln_draft_stats full = d->stats;
    full.struct_size = sz < sizeof full ? sz : (uint32_t)sizeof full;
    memcpy(out, &full, full.struct_size);
    return KILN_OK;
}
