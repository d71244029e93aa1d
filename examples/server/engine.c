/*
 * engine.c - one model served by kiln-server: its kiln context, N slots
 * (one KV sequence each), the request queue and the decode thread.
 *
 * Continuous batching: each step the decode thread builds one kiln_batch
 * from every generating slot's next token and chunks of pending prompts
 * (at most cfg.n_batch prompt tokens per step), decodes it, samples each
 * slot that needs a token, and publishes text to the requests. Requests
 * join and leave between steps.
 *
 * Prefix reuse: a slot remembers the tokens its KV sequence holds. A new
 * request goes to the idle slot whose tokens share the longest prefix with
 * its prompt (else the least recently used one); only the rest of the
 * prompt is decoded, and that count is the request's cached_tokens.
 *
 * Memory lifecycle: an idle slot's sequence is offloaded to host memory
 * after --offload-idle seconds (kiln_kv_seq_offload) and the next decode of
 * it brings it back; with --kv-device-budget kiln also offloads the least
 * recently used sequences by itself. After --sleep-idle seconds without
 * work the context is suspended (--sleep-level) and resumed by the next
 * request.
 *
 * Speculative decoding (--draft): slot 0 is the draft's sequence (kiln's
 * draft API speaks for sequence 0); its generation runs as propose/verify
 * steps beside the batch. Its prompt is decoded in the batch like any
 * other, less the last token, which starts the first proposal.
 *
 * Thread-safety: everything here but the srv_engine_* entry points runs on
 * the decode thread, the only user of the context. The queue, the
 * published statistics and slot descriptions are guarded by e->mu; a
 * request's shared fields by its own mutex.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "server.h"

typedef enum slot_state {
    SLOT_IDLE,
    SLOT_PREFILL, /* prompt tokens left to decode */
    SLOT_GEN,     /* `pending` sampled, to be decoded in the next batch */
    SLOT_SPEC,    /* slot 0 with a draft: `pending` is the draft API's last_token */
} slot_state;

typedef struct srv_slot {
    int32_t id; /* its KV sequence */
    slot_state state;
    int32_t *cache; /* the tokens its KV sequence holds, in order */
    size_t n_cache, cap_cache;
    double last_used;
    int offloaded; /* offloaded by the idle policy */
    uint64_t n_requests;

    srv_request *req;
    size_t n_done;   /* prompt tokens in the KV sequence */
    size_t n_target; /* prompt tokens to decode before the first sample */
    int32_t pending;
    int32_t n_gen;
    kiln_sampler *smp;
    kiln_detokenizer *detok;
    size_t max_stop; /* longest stop string */
    /* this step's segment of the batch */
    uint32_t b_start, b_count;
    int in_batch;
} srv_slot;

struct srv_engine {
    char *name, *path;
    srv_config cfg;
    kiln_model *model, *draft_model;
    kiln_context *ctx;
    kiln_kv *kv;
    kiln_draft *draft;
    int32_t n_vocab;
    uint32_t n_ctx_slot;
    srv_chat_kind chat_kind;
    char chat_error[256];

    srv_slot *slots;
    int32_t n_slots;
    int32_t *b_tok, *b_pos, *b_seq;
    int8_t *b_logits;
    uint32_t b_cap;
    int32_t *spec_buf;
    int suspended;
    double last_activity;

    pthread_mutex_t mu;
    pthread_cond_t cv;      /* the decode thread waits for work */
    pthread_cond_t done_cv; /* erase requests wait for the decode thread */
    srv_request *q_head, *q_tail;
    int32_t n_queued;
    int stopping;
    uint64_t erase_req, erase_done;
    int32_t erase_count;
    pthread_t thread;
    int thread_ok;
    srv_engine_stats stats;  /* published copy */
    srv_slot_info *slot_info; /* published copy */
    /* counters owned by the decode thread, copied into stats */
    srv_engine_stats work;
};

/* ---- requests ------------------------------------------------------------------- */

srv_request *srv_request_new(void) {
    srv_request *r = srv_calloc(1, sizeof *r);
    if (!r) return NULL;
    if (pthread_mutex_init(&r->mu, NULL)) {
        srv_free(r);
        return NULL;
    }
    if (pthread_cond_init(&r->cv, NULL)) {
        pthread_mutex_destroy(&r->mu);
        srv_free(r);
        return NULL;
    }
    r->refs = 1;
    r->slot = -1;
    kiln_sampler_params_init(&r->sp);
    return r;
}

void srv_request_release(srv_request *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    srv_free(r->prompt);
    for (size_t i = 0; i < r->n_stop; i++) srv_free(r->stop[i]);
    srv_free(r->stop);
    srv_buf_free(&r->text);
    srv_buf_free(&r->out);
    srv_free(r);
}

void srv_request_fail_locked(srv_request *r, int status, const char *type, const char *msg) {
    if (r->done) return;
    r->err_status = status;
    snprintf(r->err_type, sizeof r->err_type, "%s", type);
    snprintf(r->err_msg, sizeof r->err_msg, "%s", msg);
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
}

/* ---- slot bookkeeping (decode thread) ----------------------------------------- */

static int cache_append(srv_slot *s, const int32_t *t, size_t n) {
    if (s->n_cache + n > s->cap_cache) {
        size_t cap = s->cap_cache ? s->cap_cache : 64;
        while (cap < s->n_cache + n) cap *= 2;
        int32_t *c = srv_realloc(s->cache, cap * sizeof *c);
        if (!c) return -1;
        s->cache = c;
        s->cap_cache = cap;
    }
    memcpy(s->cache + s->n_cache, t, n * sizeof *t);
    s->n_cache += n;
    return 0;
}

/* Ends the slot's request (already marked done) and returns the slot to
 * idle (engine_maintain offloads it later, per --offload-idle). */
static void slot_release(srv_engine *e, srv_slot *s) {
    kiln_sampler_free(s->smp);
    kiln_detokenizer_free(s->detok);
    s->smp = NULL;
    s->detok = NULL;
    srv_request_release(s->req);
    s->req = NULL;
    s->state = SLOT_IDLE;
    s->last_used = srv_now();
    s->n_requests++;
    e->last_activity = s->last_used;
}

static void slot_fail(srv_engine *e, srv_slot *s, int status, const char *type, const char *msg) {
    srv_request *r = s->req;
    pthread_mutex_lock(&r->mu);
    srv_request_fail_locked(r, status, type, msg);
    pthread_mutex_unlock(&r->mu);
    e->work.n_requests_failed++;
    if (e->cfg.verbose) fprintf(stderr, "kiln-server: %s: slot %d: %s\n", e->name, s->id, msg);
    slot_release(e, s);
}

static void slot_finish(srv_engine *e, srv_slot *s, const char *reason, int flush) {
    srv_request *r = s->req;
    char tail[64];
    size_t n = 0;
    if (flush && kiln_detokenizer_flush(s->detok, tail, sizeof tail, &n) != KILN_OK) n = 0;
    pthread_mutex_lock(&r->mu);
    if (n) srv_buf_append(&r->text, tail, n); /* best effort: held-back invalid UTF-8 */
    r->n_ready = r->text.len;
    r->finish_reason = reason;
    r->n_completion = (uint32_t)s->n_gen;
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    e->work.n_requests++;
    e->work.n_prompt_tokens += r->n_prompt;
    if (e->cfg.verbose)
        fprintf(stderr, "kiln-server: %s: %s on slot %d: %zu prompt tokens (%u cached), %d generated, %s\n", e->name,
                r->id, (int)s->id, r->n_prompt, r->n_cached, (int)s->n_gen, reason);
    slot_release(e, s);
}

/* The longest suffix of text[0..len) that is a proper prefix of a stop
 * string: those bytes are held back until the next token decides. */
static size_t stop_holdback(const srv_request *r, const char *text, size_t len) {
    size_t best = 0;
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = sl > len + 1 ? len : sl - 1; k > best; k--)
            if (!memcmp(text + len - k, r->stop[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

/* Records one generated token: end of text, text, stop strings and the
 * token limit. Returns 1 when the request finished. */
static int slot_emit(srv_engine *e, srv_slot *s, int32_t tok) {
    srv_request *r = s->req;
    if (kiln_token_is_eog(e->model, tok)) {
        slot_finish(e, s, "stop", 1);
        return 1;
    }
    s->n_gen++;
    e->work.n_generated_tokens++;
    char small[256], *piece = small;
    size_t n = 0;
    kiln_status st = kiln_detokenizer_push(s->detok, tok, small, sizeof small, &n);
    if (st == KILN_E_BUFFER_TOO_SMALL) {
        piece = srv_malloc(n);
        st = piece ? kiln_detokenizer_push(s->detok, tok, piece, n, &n) : KILN_E_OOM_HOST;
    }
    if (st != KILN_OK) {
        if (piece != small) srv_free(piece);
        slot_fail(e, s, 500, "server_error", "detokenizing failed");
        return 1;
    }
    pthread_mutex_lock(&r->mu);
    size_t old = r->text.len;
    int oom = srv_buf_append(&r->text, piece, n);
    pthread_mutex_unlock(&r->mu);
    if (piece != small) srv_free(piece);
    if (oom) {
        slot_fail(e, s, 500, "server_error", "out of memory for the generated text");
        return 1;
    }
    /* the engine is the only writer of r->text: reading it unlocked is safe */
    if (r->n_stop) {
        size_t from = old > s->max_stop ? old - s->max_stop : 0;
        size_t cut = SIZE_MAX;
        for (size_t i = 0; i < r->n_stop; i++) {
            const char *hit = memmem(r->text.data + from, r->text.len - from, r->stop[i], strlen(r->stop[i]));
            if (hit && (size_t)(hit - r->text.data) < cut) cut = (size_t)(hit - r->text.data);
        }
        if (cut != SIZE_MAX) {
            pthread_mutex_lock(&r->mu);
            r->text.len = cut;
            r->text.data[cut] = '\0';
            pthread_mutex_unlock(&r->mu);
            slot_finish(e, s, "stop", 0);
            return 1;
        }
    }
    if (r->max_tokens >= 0 && s->n_gen >= r->max_tokens) {
        slot_finish(e, s, "length", 1);
        return 1;
    }
    size_t hold = r->n_stop ? stop_holdback(r, r->text.data, r->text.len) : 0;
    pthread_mutex_lock(&r->mu);
    r->n_ready = r->text.len - hold;
    r->n_completion = (uint32_t)s->n_gen;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* Samples the slot's next token from logits and records it; a slot that
 * goes on is left in SLOT_GEN with the token pending. */
static void slot_sample(srv_engine *e, srv_slot *s, const float *logits) {
    int32_t tok;
    if (!logits || kiln_sampler_sample(s->smp, logits, e->n_vocab, &tok) != KILN_OK) {
        slot_fail(e, s, 500, "server_error", "sampling failed");
        return;
    }
    if (slot_emit(e, s, tok)) return;
    if (s->n_cache + 1 > e->n_ctx_slot) {
        slot_finish(e, s, "length", 1);
        return;
    }
    s->pending = tok;
    s->state = SLOT_GEN;
}

/* The prompt is in the draft's and the target's sequence 0 (all but its
 * last token): speculative generation can begin. */
static void slot_spec_begin(srv_engine *e, srv_slot *s) {
    srv_request *r = s->req;
    kiln_status st = kiln_draft_reset(e->draft);
    if (st == KILN_OK && s->n_target > 0) st = kiln_draft_prefill(e->draft, r->prompt, s->n_target);
    if (st != KILN_OK) {
        slot_fail(e, s, 500, "server_error", "the draft model could not take the prompt");
        return;
    }
    if (r->max_tokens == 0) {
        slot_finish(e, s, "length", 0);
        return;
    }
    s->pending = r->prompt[r->n_prompt - 1];
    s->state = SLOT_SPEC;
}

/* One propose/verify round of the speculative slot. */
static void slot_spec_step(srv_engine *e, srv_slot *s) {
    srv_request *r = s->req;
    if (s->n_cache + 1 > e->n_ctx_slot) {
        slot_finish(e, s, "length", 1);
        return;
    }
    int64_t remaining = r->max_tokens < 0 ? INT32_MAX : (int64_t)r->max_tokens - s->n_gen;
    int64_t room = (int64_t)e->n_ctx_slot - (int64_t)s->n_cache - 1;
    int64_t maxp = e->cfg.n_draft;
    if (remaining - 1 < maxp) maxp = remaining - 1;
    if (room < maxp) maxp = room;
    if (maxp < 0) maxp = 0;
    int32_t n = 0, n_acc = 0, next = -1;
    double t0 = srv_now();
    kiln_status st = kiln_draft_propose(e->draft, s->pending, e->spec_buf, (int32_t)maxp, &n);
    if (st == KILN_OK) st = kiln_draft_verify(e->draft, s->pending, e->spec_buf, n, s->smp, &n_acc, &next);
    e->work.t_generate += srv_now() - t0;
    if (st == KILN_E_CONTEXT_FULL) {
        slot_finish(e, s, "length", 1);
        return;
    }
    if (st != KILN_OK) {
        slot_fail(e, s, 500, "server_error", "speculative decoding failed");
        return;
    }
    e->work.n_decodes++;
    e->work.n_gen_in_generate += (uint64_t)n_acc + 1;
    if (cache_append(s, &s->pending, 1) || cache_append(s, e->spec_buf, (size_t)n_acc)) {
        /* the KV holds tokens we cannot remember: forget the slot's prefix */
        kiln_kv_seq_rm(e->kv, s->id, 0, -1);
        s->n_cache = 0;
        slot_fail(e, s, 500, "server_error", "out of memory");
        return;
    }
    for (int32_t i = 0; i < n_acc; i++)
        if (slot_emit(e, s, e->spec_buf[i])) return;
    if (slot_emit(e, s, next)) return;
    s->pending = next;
}

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Another slot may hold a longer prefix of the prompt (a system prompt
 * shared by conversations): the slot then takes a copy of that sequence,
 * which shares its KV blocks (copy-on-write, kiln_kv_seq_cp), cut to the
 * common prefix. Returns the slot's usable prefix (c if nothing better). */
#define SHARE_MIN_GAIN 16 /* tokens: below this, decoding them is cheaper */
static size_t slot_share_prefix(srv_engine *e, srv_slot *s, size_t c) {
    srv_request *r = s->req;
    srv_slot *donor = NULL;
    size_t dc = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        srv_slot *o = &e->slots[i];
        if (o == s) continue;
        size_t d = common_prefix(o->cache, o->n_cache, r->prompt, r->n_prompt);
        if (d > dc) {
            donor = o;
            dc = d;
        }
    }
    if (dc > r->n_prompt - 1) dc = r->n_prompt - 1;
    if (!donor || dc < c + SHARE_MIN_GAIN) return c;
    if (s->cap_cache < dc) {
        int32_t *t = srv_realloc(s->cache, dc * sizeof *t);
        if (!t) return c;
        s->cache = t;
        s->cap_cache = dc;
    }
    if (kiln_kv_seq_cp(e->kv, donor->id, s->id) != KILN_OK) return c; /* unchanged on failure */
    if (kiln_kv_seq_rm(e->kv, s->id, (int32_t)dc, -1) != KILN_OK) {
        kiln_kv_seq_rm(e->kv, s->id, 0, -1);
        s->n_cache = 0;
        return 0;
    }
    memcpy(s->cache, donor->cache, dc * sizeof *s->cache);
    s->n_cache = dc;
    e->work.n_shared_prefixes++;
    return dc;
}

/* Prepares a slot for the request just assigned to it: keeps the longest
 * common prefix of its KV sequence and the prompt, creates the sampler and
 * detokenizer. */
static void slot_start(srv_engine *e, srv_slot *s) {
    srv_request *r = s->req;
    int spec = e->draft && s->id == 0;
    size_t c = common_prefix(s->cache, s->n_cache, r->prompt, r->n_prompt);
    if (c > r->n_prompt - 1) c = r->n_prompt - 1; /* the last prompt token gives the logits */
    if (c < s->n_cache && kiln_kv_seq_rm(e->kv, s->id, (int32_t)c, -1) != KILN_OK) {
        c = 0;
        kiln_kv_seq_rm(e->kv, s->id, 0, -1);
    }
    s->n_cache = c;
    if (s->offloaded) {
        /* the decode would restore it too; doing it here counts it, and a
         * full cache is left to the decode (which can offload others) */
        if (c > 0 && kiln_kv_seq_restore(e->kv, s->id) == KILN_OK) e->work.n_restores++;
        s->offloaded = 0;
    }
    c = slot_share_prefix(e, s, c);
    s->n_done = c;
    s->n_target = spec ? r->n_prompt - 1 : r->n_prompt;
    s->n_gen = 0;
    s->max_stop = 0;
    for (size_t i = 0; i < r->n_stop; i++)
        if (strlen(r->stop[i]) > s->max_stop) s->max_stop = strlen(r->stop[i]);
    e->work.n_cached_tokens += c;
    pthread_mutex_lock(&r->mu);
    r->n_cached = (uint32_t)c;
    r->slot = s->id;
    pthread_mutex_unlock(&r->mu);
    if (kiln_sampler_create(&r->sp, &s->smp) != KILN_OK) {
        slot_fail(e, s, 400, "invalid_request_error", "bad sampling parameters");
        return;
    }
    for (size_t i = 0; i < r->n_prompt; i++) kiln_sampler_accept(s->smp, r->prompt[i]);
    if (kiln_detokenizer_create(e->model, 0, &s->detok) != KILN_OK) {
        slot_fail(e, s, 500, "server_error", "cannot create a detokenizer");
        return;
    }
    s->state = SLOT_PREFILL;
    if (s->n_done == s->n_target) { /* only possible for the speculative slot */
        slot_spec_begin(e, s);
        return;
    }
}

/* After a successful decode of the slot's segment: the tokens are in its
 * KV sequence; sample if it needs a token. logits_i indexes the decoded
 * batch (or -1 for its last token). */
static void slot_after_decode(srv_engine *e, srv_slot *s, int32_t logits_i) {
    srv_request *r = s->req;
    const int32_t *toks = e->b_tok + s->b_start;
    if (cache_append(s, toks, s->b_count)) {
        kiln_kv_seq_rm(e->kv, s->id, 0, -1);
        s->n_cache = 0;
        slot_fail(e, s, 500, "server_error", "out of memory");
        return;
    }
    if (s->state == SLOT_PREFILL) {
        s->n_done += s->b_count;
        e->work.n_evaluated_tokens += s->b_count;
        if (s->n_done < s->n_target) return;
        if (e->draft && s->id == 0) {
            slot_spec_begin(e, s);
            return;
        }
        if (r->max_tokens == 0) {
            slot_finish(e, s, "length", 0);
            return;
        }
    }
    slot_sample(e, s, kiln_context_logits(e->ctx, logits_i));
}

static int slot_cancelled(srv_slot *s) {
    pthread_mutex_lock(&s->req->mu);
    int c = s->req->cancelled;
    pthread_mutex_unlock(&s->req->mu);
    return c;
}

/* ---- one step of the decode loop ------------------------------------------------ */

static void batch_add(srv_engine *e, uint32_t *n, int32_t tok, int32_t pos, int32_t seq, int8_t logits) {
    e->b_tok[*n] = tok;
    e->b_pos[*n] = pos;
    e->b_seq[*n] = seq;
    e->b_logits[*n] = logits;
    (*n)++;
}

static void engine_step(srv_engine *e) {
    /* cancelled requests leave first */
    for (int32_t i = 0; i < e->n_slots; i++) {
        srv_slot *s = &e->slots[i];
        if (s->state != SLOT_IDLE && slot_cancelled(s)) slot_finish(e, s, "stop", 0);
    }

    uint32_t n = 0, budget = e->cfg.n_batch;
    int has_prompt = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        srv_slot *s = &e->slots[i];
        s->in_batch = 0;
        if (s->state == SLOT_GEN) {
            s->b_start = n;
            s->b_count = 1;
            s->in_batch = 1;
            batch_add(e, &n, s->pending, (int32_t)s->n_cache, s->id, 1);
        }
    }
    for (int32_t i = 0; i < e->n_slots && budget > 0; i++) {
        srv_slot *s = &e->slots[i];
        if (s->state != SLOT_PREFILL) continue;
        size_t k = s->n_target - s->n_done;
        if (k > budget) k = budget;
        s->b_start = n;
        s->b_count = (uint32_t)k;
        s->in_batch = 1;
        int wants = s->n_done + k == s->n_target && !(e->draft && s->id == 0);
        for (size_t j = 0; j < k; j++)
            batch_add(e, &n, s->req->prompt[s->n_done + j], (int32_t)(s->n_cache + j), s->id,
                      (int8_t)(wants && j + 1 == k));
        budget -= (uint32_t)k;
        has_prompt = 1;
    }

    if (n > 0) {
        kiln_batch b;
        kiln_batch_init(&b);
        b.n_tokens = n;
        b.tokens = e->b_tok;
        b.pos = e->b_pos;
        b.seq_id = e->b_seq;
        b.logits = e->b_logits;
        double t0 = srv_now();
        kiln_status st = kiln_decode(e->ctx, &b);
        double dt = srv_now() - t0;
        if (has_prompt) e->work.t_prompt += dt;
        else {
            e->work.t_generate += dt;
            e->work.n_gen_in_generate += n;
        }
        e->work.n_decodes++;
        if (st == KILN_OK) {
            /* a segment that asked for logits asked for its last token's */
            for (int32_t i = 0; i < e->n_slots; i++) {
                srv_slot *s = &e->slots[i];
                if (!s->in_batch) continue;
                int32_t idx = -1;
                if (e->b_logits[s->b_start + s->b_count - 1]) idx = (int32_t)(s->b_start + s->b_count - 1);
                slot_after_decode(e, s, idx < 0 ? 0 : idx);
            }
        } else {
            /* decode the segments one at a time: one slot's failure must
             * not fail the others. A slot that finds the cache full waits
             * for the next step while others make progress (finishing
             * frees their blocks, or lets kiln offload them); only when
             * no slot can move does the first one give up. */
            int progress = 0;
            srv_slot *first_full = NULL;
            for (int32_t i = 0; i < e->n_slots; i++) {
                srv_slot *s = &e->slots[i];
                if (!s->in_batch) continue;
                kiln_batch one;
                kiln_batch_init(&one);
                one.n_tokens = s->b_count;
                one.tokens = e->b_tok + s->b_start;
                one.pos = e->b_pos + s->b_start;
                one.seq_id = e->b_seq + s->b_start;
                one.logits = e->b_logits + s->b_start;
                st = kiln_decode(e->ctx, &one);
                if (st == KILN_OK) {
                    e->work.n_decodes++;
                    progress = 1;
                    /* b_tok is still this segment's: slot_after_decode reads it */
                    slot_after_decode(e, s, -1);
                } else if (st == KILN_E_CONTEXT_FULL) {
                    if (!first_full) first_full = s;
                } else {
                    char msg[256];
                    snprintf(msg, sizeof msg, "decode failed: %s: %s", kiln_status_str(st),
                             kiln_context_last_error(e->ctx));
                    slot_fail(e, s, 500, "server_error", msg);
                }
            }
            if (!progress && first_full) {
                srv_slot *s = first_full;
                if (s->state == SLOT_GEN) {
                    slot_finish(e, s, "length", 1);
                } else {
                    char msg[256];
                    snprintf(msg, sizeof msg, "the KV cache is full: %s", kiln_context_last_error(e->ctx));
                    slot_fail(e, s, 503, "server_busy", msg);
                }
            }
        }
    }
    for (int32_t i = 0; i < e->n_slots; i++) {
        srv_slot *s = &e->slots[i];
        if (s->state == SLOT_SPEC) slot_spec_step(e, s);
    }
}

/* ---- idle work: offload idle slots, sleep ------------------------------------------ */

static int engine_busy(const srv_engine *e) {
    for (int32_t i = 0; i < e->n_slots; i++)
        if (e->slots[i].state != SLOT_IDLE) return 1;
    return 0;
}

/* The time of the next idle action (INFINITY: none). */
static double engine_next_deadline(const srv_engine *e) {
    double t = INFINITY;
    if (e->suspended) return t; /* offloading would wake the context */
    if (e->cfg.offload_idle >= 0)
        for (int32_t i = 0; i < e->n_slots; i++) {
            const srv_slot *s = &e->slots[i];
            if (s->state == SLOT_IDLE && s->n_cache > 0 && !s->offloaded && s->last_used + e->cfg.offload_idle < t)
                t = s->last_used + e->cfg.offload_idle;
        }
    if (e->cfg.sleep_idle > 0 && !engine_busy(e) && e->last_activity + e->cfg.sleep_idle < t)
        t = e->last_activity + e->cfg.sleep_idle;
    return t;
}

/* Runs the idle actions that are due at `now`. */
static void engine_maintain(srv_engine *e, double now) {
    if (e->suspended) return;
    if (e->cfg.offload_idle >= 0)
        for (int32_t i = 0; i < e->n_slots; i++) {
            srv_slot *s = &e->slots[i];
            if (s->state != SLOT_IDLE || s->n_cache == 0 || s->offloaded) continue;
            if (s->last_used + e->cfg.offload_idle > now) continue;
            if (kiln_kv_seq_offload(e->kv, s->id) == KILN_OK) e->work.n_offloads++;
            s->offloaded = 1; /* on failure too: do not retry in a loop */
        }
    if (e->cfg.sleep_idle > 0 && !engine_busy(e) && e->last_activity + e->cfg.sleep_idle <= now) {
        kiln_status st = kiln_context_suspend(e->ctx, e->cfg.sleep_level);
        if (st == KILN_OK) {
            e->suspended = 1;
            e->work.n_suspends++;
            if (e->cfg.verbose) fprintf(stderr, "kiln-server: %s: asleep (level %d)\n", e->name, e->cfg.sleep_level);
        } else {
            /* try again after another idle period */
            e->last_activity = now;
            fprintf(stderr, "kiln-server: %s: suspend failed: %s\n", e->name, kiln_context_last_error(e->ctx));
        }
    }
}

static void engine_erase_idle(srv_engine *e) {
    int32_t n = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        srv_slot *s = &e->slots[i];
        if (s->state != SLOT_IDLE) continue;
        if (s->n_cache > 0 || s->offloaded) n++;
        kiln_kv_seq_rm(e->kv, s->id, 0, -1);
        s->n_cache = 0;
        s->offloaded = 0;
        srv_free(s->cache); /* back to the state of a fresh slot */
        s->cache = NULL;
        s->cap_cache = 0;
    }
    if (!e->suspended) kiln_context_pool_purge(e->ctx);
    if (e->draft && !e->slots[0].req) kiln_draft_reset(e->draft);
    e->erase_count = n;
    e->work.n_erases++;
}

/* Copies the decode thread's counters and the cache statistics into the
 * published statistics (e->mu held). */
static void engine_publish_locked(srv_engine *e) {
    srv_engine_stats *w = &e->work;
    kiln_kv_stats_init(&w->kv);
    kiln_kv_get_stats(e->kv, &w->kv);
    kiln_pool_stats_init(&w->pool);
    kiln_context_pool_stats(e->ctx, &w->pool);
    w->has_draft = e->draft != NULL;
    kiln_draft_stats_init(&w->draft);
    if (e->draft) kiln_draft_get_stats(e->draft, &w->draft);
    w->suspended = kiln_context_suspended(e->ctx);
    w->n_busy = 0;
    double now = srv_now();
    for (int32_t i = 0; i < e->n_slots; i++) {
        const srv_slot *s = &e->slots[i];
        srv_slot_info *o = &e->slot_info[i];
        o->id = s->id;
        o->busy = s->state != SLOT_IDLE;
        o->offloaded = s->offloaded;
        o->n_cached = (uint32_t)s->n_cache;
        o->idle_s = o->busy ? 0 : now - s->last_used;
        o->n_requests = s->n_requests;
        w->n_busy += o->busy;
    }
    w->n_queued = e->n_queued;
    e->stats = *w;
}

/* Hands queued requests to idle slots (e->mu held): the slot whose KV
 * shares the longest prefix with the prompt, else the least recently used.
 * Returns the slots that got a request through `started`. */
static int32_t engine_assign_locked(srv_engine *e, srv_slot **started) {
    int32_t n = 0;
    while (e->q_head) {
        srv_request *r = e->q_head;
        /* a slot whose conversation this prompt continues (it keeps at
         * least half of what the slot holds), else the least recently used
         * (empty slots first) */
        srv_slot *reuse = NULL, *lru = NULL;
        size_t reuse_c = 0;
        for (int32_t i = 0; i < e->n_slots; i++) {
            srv_slot *s = &e->slots[i];
            if (s->state != SLOT_IDLE || s->req) continue;
            size_t c = common_prefix(s->cache, s->n_cache, r->prompt, r->n_prompt);
            if (c > 0 && 2 * c >= s->n_cache && c > reuse_c) {
                reuse = s;
                reuse_c = c;
            }
            if (!lru || (s->n_cache == 0) > (lru->n_cache == 0) ||
                ((s->n_cache == 0) == (lru->n_cache == 0) && s->last_used < lru->last_used))
                lru = s;
        }
        srv_slot *best = reuse ? reuse : lru;
        if (!best) break;
        e->q_head = r->next;
        if (!e->q_head) e->q_tail = NULL;
        r->next = NULL;
        e->n_queued--;
        best->req = r; /* the queue's reference becomes the slot's */
        started[n++] = best;
    }
    return n;
}

static void fail_all_locked(srv_engine *e) {
    while (e->q_head) {
        srv_request *r = e->q_head;
        e->q_head = r->next;
        pthread_mutex_lock(&r->mu);
        srv_request_fail_locked(r, 503, "server_shutdown", "the server is shutting down");
        pthread_mutex_unlock(&r->mu);
        srv_request_release(r);
    }
    e->q_tail = NULL;
    e->n_queued = 0;
}

static void *engine_main(void *arg) {
    srv_engine *e = arg;
    srv_slot **started = srv_calloc((size_t)e->n_slots, sizeof *started);
    pthread_mutex_lock(&e->mu);
    if (!started) e->stopping = 1;
    for (;;) {
        while (!e->stopping && !e->q_head && !engine_busy(e) && e->erase_req == e->erase_done) {
            double deadline = engine_next_deadline(e), now = srv_now();
            if (deadline <= now) {
                pthread_mutex_unlock(&e->mu);
                engine_maintain(e, now);
                pthread_mutex_lock(&e->mu);
                engine_publish_locked(e);
                continue;
            }
            if (isinf(deadline)) {
                pthread_cond_wait(&e->cv, &e->mu);
            } else {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                double wait = deadline - now;
                ts.tv_sec += (time_t)wait;
                ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            }
        }
        if (e->stopping) break;
        int erase = e->erase_req != e->erase_done;
        int32_t n_started = engine_assign_locked(e, started);
        pthread_mutex_unlock(&e->mu);

        if (e->suspended && (n_started > 0 || erase)) {
            kiln_status st = kiln_context_resume(e->ctx);
            if (st == KILN_OK) {
                e->suspended = 0;
                e->work.n_resumes++;
            } else {
                for (int32_t i = 0; i < n_started; i++)
                    slot_fail(e, started[i], 503, "server_busy", "the model could not wake up");
                n_started = 0;
            }
        }
        for (int32_t i = 0; i < n_started; i++) slot_start(e, started[i]);
        engine_step(e);
        double now = srv_now();
        if (n_started > 0) e->last_activity = now;
        engine_maintain(e, now);
        if (erase) engine_erase_idle(e);

        pthread_mutex_lock(&e->mu);
        if (erase) {
            e->erase_done = e->erase_req;
            pthread_cond_broadcast(&e->done_cv);
        }
        engine_publish_locked(e);
    }
    /* shutting down: fail what is queued and what runs */
    fail_all_locked(e);
    pthread_mutex_unlock(&e->mu);
    for (int32_t i = 0; i < e->n_slots; i++)
        if (e->slots[i].state != SLOT_IDLE)
            slot_fail(e, &e->slots[i], 503, "server_shutdown", "the server is shutting down");
    pthread_mutex_lock(&e->mu);
    e->erase_done = e->erase_req;
    pthread_cond_broadcast(&e->done_cv);
    engine_publish_locked(e);
    pthread_mutex_unlock(&e->mu);
    srv_free(started);
    return NULL;
}

/* ---- public entry points ------------------------------------------------------------ */

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static int load_model(const char *path, const char *backend, int32_t device, kiln_model **out) {
    kiln_model_params mp;
    kiln_model_params_init(&mp);
    mp.backend = backend;
    mp.device = device;
    kiln_status st = kiln_model_load(path, &mp, out);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-server: %s: %s: %s\n", path, kiln_status_str(st), kiln_last_error());
        return -1;
    }
    return 0;
}

static void engine_detect_chat(srv_engine *e) {
    if (e->cfg.chat_template) {
        e->chat_kind = srv_chat_from_name(e->cfg.chat_template);
        return;
    }
    size_t n = 0;
    kiln_status st = kiln_model_meta_str(e->model, "tokenizer.chat_template", NULL, 0, &n);
    if (st == KILN_E_NOT_FOUND) {
        e->chat_kind = SRV_CHAT_PLAIN;
        return;
    }
    char *t = st == KILN_OK ? srv_malloc(n) : NULL;
    if (t && kiln_model_meta_str(e->model, "tokenizer.chat_template", t, n, &n) == KILN_OK)
        e->chat_kind = srv_chat_detect(t);
    else
        e->chat_kind = SRV_CHAT_UNKNOWN;
    srv_free(t);
    if (e->chat_kind == SRV_CHAT_UNKNOWN)
        snprintf(e->chat_error, sizeof e->chat_error,
                 "model '%s': its chat template (tokenizer.chat_template) is not ChatML, Llama 3 or Mistral; "
                 "start kiln-server with --chat-template chatml|llama3|mistral|plain",
                 e->name);
}

srv_engine *srv_engine_create(const srv_model_spec *spec, const srv_config *cfg) {
    srv_engine *e = srv_calloc(1, sizeof *e);
    if (!e) return NULL;
    e->cfg = *cfg;
    e->path = srv_strdup(spec->path);
    e->name = srv_strdup(spec->alias ? spec->alias : base_name(spec->path));
    e->n_slots = cfg->n_slots;
    e->slots = srv_calloc((size_t)e->n_slots, sizeof *e->slots);
    e->slot_info = srv_calloc((size_t)e->n_slots, sizeof *e->slot_info);
    e->b_cap = cfg->n_batch + (uint32_t)cfg->n_slots;
    e->b_tok = srv_malloc(e->b_cap * sizeof *e->b_tok);
    e->b_pos = srv_malloc(e->b_cap * sizeof *e->b_pos);
    e->b_seq = srv_malloc(e->b_cap * sizeof *e->b_seq);
    e->b_logits = srv_malloc(e->b_cap * sizeof *e->b_logits);
    e->spec_buf = srv_malloc((size_t)(cfg->n_draft > 0 ? cfg->n_draft : 1) * sizeof *e->spec_buf);
    int sync_ok = 0;
    pthread_condattr_t ca;
    if (!pthread_mutex_init(&e->mu, NULL)) {
        sync_ok = 1;
        if (!pthread_condattr_init(&ca)) {
            pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
            if (!pthread_cond_init(&e->cv, &ca)) sync_ok = 2;
            if (sync_ok == 2 && !pthread_cond_init(&e->done_cv, NULL)) sync_ok = 3;
            pthread_condattr_destroy(&ca);
        }
    }
    if (sync_ok < 3 || !e->path || !e->name || !e->slots || !e->slot_info || !e->b_tok || !e->b_pos || !e->b_seq ||
        !e->b_logits || !e->spec_buf) {
        fprintf(stderr, "kiln-server: out of memory creating the engine of %s\n", spec->path);
        if (sync_ok >= 3) pthread_cond_destroy(&e->done_cv);
        if (sync_ok >= 2) pthread_cond_destroy(&e->cv);
        if (sync_ok >= 1) pthread_mutex_destroy(&e->mu);
        srv_free(e->spec_buf);
        srv_free(e->b_logits);
        srv_free(e->b_seq);
        srv_free(e->b_pos);
        srv_free(e->b_tok);
        srv_free(e->slot_info);
        srv_free(e->slots);
        srv_free(e->name);
        srv_free(e->path);
        srv_free(e);
        return NULL;
    }
    e->thread_ok = 0;
    for (int32_t i = 0; i < e->n_slots; i++) e->slots[i].id = i;

    if (load_model(spec->path, spec->backend, spec->device, &e->model)) goto fail;
    e->n_vocab = kiln_model_n_vocab(e->model);
    kiln_context_params cp;
    kiln_context_params_init(&cp);
    if (cfg->n_ctx) cp.n_ctx = cfg->n_ctx;
    cp.n_seq_max = (uint32_t)e->n_slots;
    cp.n_threads = cfg->n_threads;
    cp.kv_device_budget = cfg->kv_device_budget;
    kiln_status st = kiln_context_create(e->model, &cp, &e->ctx);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-server: %s: cannot create a context: %s: %s\n", spec->path, kiln_status_str(st),
                kiln_last_error());
        goto fail;
    }
    e->kv = kiln_context_kv(e->ctx);
    kiln_kv_stats ks;
    kiln_kv_stats_init(&ks);
    kiln_kv_get_stats(e->kv, &ks);
    /* every slot gets an equal share of whole blocks, so that the active
     * slots always fit (idle ones may be offloaded to make room) */
    uint32_t per_slot = ks.n_blocks_total / (uint32_t)e->n_slots;
    e->n_ctx_slot = per_slot * ks.block_size;
    if (e->n_ctx_slot < 2) {
        fprintf(stderr, "kiln-server: %s: %u KV blocks of %u tokens cannot serve %d slots: raise -c\n", spec->path,
                ks.n_blocks_total, ks.block_size, (int)e->n_slots);
        goto fail;
    }
    if (spec->draft) {
        if (load_model(spec->draft, spec->backend, spec->device, &e->draft_model)) goto fail;
        kiln_draft_params dp;
        kiln_draft_params_init(&dp);
        dp.n_draft = cfg->n_draft;
        dp.n_ctx = e->n_ctx_slot + (uint32_t)cfg->n_draft + 1;
        st = kiln_draft_create(e->ctx, e->draft_model, &dp, &e->draft);
        if (st != KILN_OK) {
            fprintf(stderr, "kiln-server: %s: draft %s: %s: %s\n", spec->path, spec->draft, kiln_status_str(st),
                    kiln_last_error());
            goto fail;
        }
    }
    engine_detect_chat(e);
    if (e->cfg.chat_template && e->chat_kind == SRV_CHAT_UNKNOWN) {
        fprintf(stderr, "kiln-server: unknown --chat-template '%s' (chatml, llama3, mistral, plain)\n",
                e->cfg.chat_template);
        goto fail;
    }
    e->last_activity = srv_now();
    pthread_mutex_lock(&e->mu);
    engine_publish_locked(e);
    pthread_mutex_unlock(&e->mu);
    if (pthread_create(&e->thread, NULL, engine_main, e)) {
        fprintf(stderr, "kiln-server: cannot start the decode thread of %s\n", spec->path);
        goto fail;
    }
    e->thread_ok = 1;
    return e;
fail:
    srv_engine_free(e);
    return NULL;
}

void srv_engine_shutdown(srv_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void srv_engine_free(srv_engine *e) {
    if (!e) return;
    if (e->thread_ok) {
        srv_engine_shutdown(e);
        pthread_join(e->thread, NULL);
    } else {
        fail_all_locked(e); /* no thread: nothing else touches the queue */
    }
    for (int32_t i = 0; i < e->n_slots; i++) srv_free(e->slots[i].cache);
    kiln_draft_free(e->draft);
    kiln_context_free(e->ctx);
    kiln_model_free(e->draft_model);
    kiln_model_free(e->model);
    pthread_cond_destroy(&e->done_cv);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    srv_free(e->spec_buf);
    srv_free(e->b_logits);
    srv_free(e->b_seq);
    srv_free(e->b_pos);
    srv_free(e->b_tok);
    srv_free(e->slot_info);
    srv_free(e->slots);
    srv_free(e->name);
    srv_free(e->path);
    srv_free(e);
}

const char *srv_engine_name(const srv_engine *e) { return e->name; }
const char *srv_engine_path(const srv_engine *e) { return e->path; }
kiln_model *srv_engine_model(srv_engine *e) { return e->model; }
uint32_t srv_engine_slot_ctx(const srv_engine *e) { return e->n_ctx_slot; }
int32_t srv_engine_n_slots(const srv_engine *e) { return e->n_slots; }
srv_chat_kind srv_engine_chat_kind(const srv_engine *e) { return e->chat_kind; }
const char *srv_engine_chat_error(const srv_engine *e) { return e->chat_error; }

int srv_engine_matches(const srv_engine *e, const char *name) {
    if (!strcmp(name, e->name)) return 1;
    const char *b = base_name(e->path);
    if (!strcmp(name, b)) return 1;
    size_t n = strlen(b);
    return n > 5 && !strcmp(b + n - 5, ".gguf") && strlen(name) == n - 5 && !strncmp(name, b, n - 5);
}

int srv_engine_submit(srv_engine *e, srv_request *r) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
    r->next = NULL;
    if (e->q_tail) e->q_tail->next = r;
    else e->q_head = r;
    e->q_tail = r;
    e->n_queued++;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void srv_engine_get_stats(srv_engine *e, srv_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    out->n_queued = e->n_queued;
    pthread_mutex_unlock(&e->mu);
}

int32_t srv_engine_get_slots(srv_engine *e, srv_slot_info *out, int32_t cap) {
    pthread_mutex_lock(&e->mu);
    int32_t n = e->n_slots < cap ? e->n_slots : cap;
    memcpy(out, e->slot_info, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&e->mu);
    return n;
}

int32_t srv_engine_erase_idle(srv_engine *e) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    uint64_t ticket = ++e->erase_req;
    pthread_cond_broadcast(&e->cv);
    while (e->erase_done < ticket) pthread_cond_wait(&e->done_cv, &e->mu);
    int32_t n = e->erase_count;
    pthread_mutex_unlock(&e->mu);
    return n;
}
