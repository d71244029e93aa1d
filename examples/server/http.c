/*
 * http.c - kiln-server's HTTP endpoints on libmicrohttpd (one thread per
 * connection) with JSON by cJSON:
 *
 *   POST /v1/completions, /v1/chat/completions   OpenAI-compatible, with
 *        server-sent events when "stream": true
 *   GET  /v1/models, /health, /metrics (Prometheus text), /slots
 *   POST /slots/erase   forget every idle slot's KV (and purge the pool)
 *
 * A handler parses and checks the request, tokenizes the prompt, queues a
 * srv_request on the model's engine and either waits for it (plain
 * response) or streams it from a content-reader callback. Every bad
 * request gets a 4xx with {"error":{"message":...,"type":...}}.
 */
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "server.h"

#define MAX_BODY (8u << 20) /* bytes of a request body */
#define MAX_STOP 8          /* stop strings per request */
#define MAX_STOP_LEN 256

struct srv_server {
    struct MHD_Daemon *daemon;
    srv_engine **engines;
    int32_t n_engines;
    const srv_config *cfg;
    uint16_t port;
    double t_start;
    atomic_uint_fast64_t n_http, n_4xx, n_5xx, next_id, n_seeds;
};

typedef struct conn_state {
    srv_buf body;
    int too_large;
} conn_state;

/* ---- responses ---------------------------------------------------------------------- */

static enum MHD_Result send_bytes(srv_server *S, struct MHD_Connection *c, unsigned status, const char *ctype,
                                  const char *body, size_t len) {
    if (status >= 500) atomic_fetch_add(&S->n_5xx, 1);
    else if (status >= 400) atomic_fetch_add(&S->n_4xx, 1);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(srv_server *S, struct MHD_Connection *c, unsigned status, const char *type,
                                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The error body is built by hand-escaping nothing: cJSON writes it. */
static enum MHD_Result send_error(srv_server *S, struct MHD_Connection *c, unsigned status, const char *type,
                                  const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    char *text = NULL;
    if (err && cJSON_AddStringToObject(err, "message", msg) && cJSON_AddStringToObject(err, "type", type) &&
        cJSON_AddNumberToObject(err, "code", status))
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}";
    enum MHD_Result ret = text ? send_bytes(S, c, status, "application/json", text, strlen(text))
                               : send_bytes(S, c, 500, "application/json", oom, sizeof oom - 1);
    cJSON_free(text);
    return ret;
}

/* Sends and frees root (NULL: out of memory). */
static enum MHD_Result send_json(srv_server *S, struct MHD_Connection *c, unsigned status, cJSON *root) {
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return send_error(S, c, 500, "server_error", "out of memory building the response");
    enum MHD_Result ret = send_bytes(S, c, status, "application/json", text, strlen(text));
    cJSON_free(text);
    return ret;
}

/* ---- request parsing --------------------------------------------------------------- */

typedef struct parse_err {
    unsigned status;
    const char *type;
    char msg[400];
} parse_err;

static int fail(parse_err *pe, unsigned status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(parse_err *pe, unsigned status, const char *type, const char *fmt, ...) {
    pe->status = status;
    pe->type = type;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->msg, sizeof pe->msg, fmt, ap);
    va_end(ap);
    return -1;
}

#define BAD(...) fail(pe, 400, "invalid_request_error", __VA_ARGS__)

/* An optional number field: absent/null -> 0 (untouched), else *out. */
static int get_number(const cJSON *root, const char *key, double *out, int *present, parse_err *pe) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *present = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return BAD("'%s' must be a number", key);
    *out = v->valuedouble;
    *present = 1;
    return 0;
}

static int get_int(const cJSON *root, const char *key, double lo, double hi, int64_t *out, int *present,
                   parse_err *pe) {
    double d = 0;
    if (get_number(root, key, &d, present, pe)) return -1;
    if (!*present) return 0;
    if (d != floor(d)) return BAD("'%s' must be an integer", key);
    if (d < lo) return BAD("'%s' must be at least %.0f", key, lo);
    if (d > hi) return BAD("'%s' must be at most %.0f", key, hi);
    *out = (int64_t)d;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, int *out, parse_err *pe) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return BAD("'%s' must be true or false", key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

static int add_stop(srv_request *r, const cJSON *v, parse_err *pe) {
    if (!cJSON_IsString(v)) return BAD("'stop' must be a string or an array of strings");
    size_t n = strlen(v->valuestring);
    if (n == 0) return 0;
    if (n > MAX_STOP_LEN) return BAD("a stop string is longer than %d bytes", MAX_STOP_LEN);
    if (r->n_stop >= MAX_STOP) return BAD("at most %d stop strings", MAX_STOP);
    char *s = srv_strdup(v->valuestring);
    if (!s) return fail(pe, 500, "server_error", "out of memory");
    r->stop[r->n_stop++] = s;
    return 0;
}

/* Fields shared by both endpoints: sampling, limits, stop, stream. */
static int parse_options(const cJSON *root, srv_request *r, const srv_config *cfg, parse_err *pe) {
    int present, b;
    int64_t i64;
    double d;
    if (get_int(root, "n", 1, 1e9, &i64, &present, pe)) return -1;
    if (present && i64 != 1) return BAD("only 'n': 1 is supported");
    r->max_tokens = r->kind == SRV_REQ_COMPLETION ? cfg->default_max_tokens : -1;
    const char *mt_keys[] = {"max_tokens", "max_completion_tokens", "n_predict"};
    for (size_t k = 0; k < 3; k++) {
        if (get_int(root, mt_keys[k], 0, INT32_MAX, &i64, &present, pe)) return -1;
        if (present) r->max_tokens = (int32_t)i64;
    }
    if (get_number(root, "temperature", &d, &present, pe)) return -1;
    if (present) {
        if (d < 0) return BAD("'temperature' must be >= 0");
        r->sp.temperature = (float)d;
    }
    if (get_number(root, "top_p", &d, &present, pe)) return -1;
    if (present) {
        if (d <= 0 || d > 1) return BAD("'top_p' must be in (0, 1]");
        r->sp.top_p = (float)d;
    }
    if (get_int(root, "top_k", 0, INT32_MAX, &i64, &present, pe)) return -1;
    if (present) r->sp.top_k = (int32_t)i64;
    if (get_number(root, "min_p", &d, &present, pe)) return -1;
    if (present) {
        if (d < 0 || d > 1) return BAD("'min_p' must be in [0, 1]");
        r->sp.min_p = (float)d;
    }
    if (get_int(root, "seed", -9007199254740992.0, 9007199254740992.0, &i64, &present, pe)) return -1;
    if (present) r->sp.seed = (uint64_t)i64;
    if (get_number(root, "repeat_penalty", &d, &present, pe)) return -1;
    if (present) {
        if (d <= 0) return BAD("'repeat_penalty' must be > 0");
        r->sp.repeat_penalty = (float)d;
    }
    if (get_number(root, "frequency_penalty", &d, &present, pe)) return -1;
    if (present) r->sp.freq_penalty = (float)d;
    if (get_number(root, "presence_penalty", &d, &present, pe)) return -1;
    if (present) r->sp.presence_penalty = (float)d;

    b = 0;
    if (get_bool(root, "stream", &b, pe)) return -1;
    r->stream = b;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return BAD("'stream_options' must be an object");
        b = 0;
        if (get_bool(so, "include_usage", &b, pe)) return -1;
        r->include_usage = b;
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        r->stop = srv_calloc(MAX_STOP, sizeof *r->stop);
        if (!r->stop) return fail(pe, 500, "server_error", "out of memory");
        if (cJSON_IsArray(stop)) {
            const cJSON *it;
            cJSON_ArrayForEach(it, stop) if (add_stop(r, it, pe)) return -1;
        } else if (add_stop(r, stop, pe)) {
            return -1;
        }
    }
    return 0;
}

static int tokenize(srv_engine *e, const char *text, size_t len, uint32_t flags, srv_request *r, parse_err *pe) {
    kiln_model *m = srv_engine_model(e);
    size_t n = 0;
    kiln_status st = kiln_tokenize(m, text, len, flags, NULL, 0, &n);
    if (st != KILN_OK) return fail(pe, 500, "server_error", "tokenizing failed: %s", kiln_last_error());
    r->prompt = srv_malloc((n + 1) * sizeof *r->prompt);
    if (!r->prompt) return fail(pe, 500, "server_error", "out of memory for %zu prompt tokens", n);
    st = kiln_tokenize(m, text, len, flags, r->prompt, n + 1, &n);
    if (st != KILN_OK) return fail(pe, 500, "server_error", "tokenizing failed: %s", kiln_last_error());
    r->n_prompt = n;
    return 0;
}

static int parse_prompt(const cJSON *root, srv_engine *e, srv_request *r, parse_err *pe) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) return BAD("'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsString(p))
        return tokenize(e, p->valuestring, strlen(p->valuestring), KILN_TOKENIZE_ADD_BOS, r, pe);
    if (!cJSON_IsArray(p)) return BAD("'prompt' must be a string, or an array of one string or of token ids");
    int n = cJSON_GetArraySize(p);
    int32_t n_vocab = kiln_model_n_vocab(srv_engine_model(e));
    r->prompt = srv_malloc(((size_t)n + 1) * sizeof *r->prompt);
    if (!r->prompt) return fail(pe, 500, "server_error", "out of memory");
    const cJSON *it;
    size_t i = 0;
    cJSON_ArrayForEach(it, p) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= n_vocab)
            return BAD("'prompt' token %zu is not a token id in [0, %d)", i, (int)n_vocab);
        r->prompt[i++] = (int32_t)it->valuedouble;
    }
    r->n_prompt = i;
    return 0;
}

/* Text of a message's content: a string, null, or an array of
 * {"type":"text","text":...} parts (joined). Appends to out. */
static int content_text(const cJSON *c, srv_buf *out, size_t idx, parse_err *pe) {
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c))
        return srv_buf_puts(out, c->valuestring) ? fail(pe, 500, "server_error", "out of memory") : 0;
    if (!cJSON_IsArray(c)) return BAD("messages[%zu].content must be a string or an array of text parts", idx);
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t))
            return BAD("messages[%zu].content: only text parts are supported", idx);
        if (srv_buf_puts(out, t->valuestring)) return fail(pe, 500, "server_error", "out of memory");
    }
    return 0;
}

static int parse_messages(const cJSON *root, srv_engine *e, srv_request *r, parse_err *pe) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!msgs) return BAD("'messages' is required");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) return BAD("'messages' must be a non-empty array");
    srv_chat_kind kind = srv_engine_chat_kind(e);
    if (kind == SRV_CHAT_UNKNOWN) return BAD("%s", srv_engine_chat_error(e));
    size_t n = (size_t)cJSON_GetArraySize(msgs);
    srv_chat_msg *m = srv_calloc(n, sizeof *m);
    srv_buf *texts = srv_calloc(n, sizeof *texts);
    srv_buf rendered = {0};
    int rc = 0;
    if (!m || !texts) rc = fail(pe, 500, "server_error", "out of memory");
    size_t i = 0;
    const cJSON *it;
    if (!rc) cJSON_ArrayForEach(it, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role)) {
            rc = BAD("messages[%zu] must be an object with a string 'role'", i);
            break;
        }
        if ((rc = content_text(cJSON_GetObjectItemCaseSensitive(it, "content"), &texts[i], i, pe))) break;
        m[i].role = role->valuestring;
        m[i].content = texts[i].data ? texts[i].data : "";
        i++;
    }
    if (!rc) {
        char err[256] = "";
        int st = srv_chat_render(kind, m, n, &rendered, err, sizeof err);
        if (st == -1) rc = fail(pe, 500, "server_error", "out of memory");
        else if (st) rc = BAD("%s", err);
    }
    /* the template's special tokens (<|im_start|>, ...) are meant as tokens */
    if (!rc) rc = tokenize(e, rendered.data, rendered.len, KILN_TOKENIZE_ADD_BOS | KILN_TOKENIZE_PARSE_SPECIAL, r, pe);
    srv_buf_free(&rendered);
    for (size_t k = 0; texts && k < n; k++) srv_buf_free(&texts[k]);
    srv_free(texts);
    srv_free(m);
    return rc;
}

/* Parses a generation request into *out (a new request for *engine). */
static int parse_generation(srv_server *S, const char *body, size_t len, srv_req_kind kind, srv_engine **engine,
                            srv_request **out, parse_err *pe) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return BAD("the body is not valid JSON");
    int rc = 0;
    srv_request *r = NULL;
    srv_engine *e = S->engines[0];
    if (!cJSON_IsObject(root)) {
        rc = BAD("the body must be a JSON object");
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) {
            rc = BAD("'model' must be a string");
            goto done;
        }
        e = NULL;
        for (int32_t i = 0; i < S->n_engines && !e; i++)
            if (srv_engine_matches(S->engines[i], model->valuestring)) e = S->engines[i];
        if (!e) {
            rc = fail(pe, 404, "model_not_found", "the model '%.200s' does not exist (see /v1/models)",
                      model->valuestring);
            goto done;
        }
    }
    r = srv_request_new();
    if (!r) {
        rc = fail(pe, 500, "server_error", "out of memory");
        goto done;
    }
    r->kind = kind;
    r->model_name = srv_engine_name(e);
    /* without a "seed", every request draws differently */
    r->sp.seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (atomic_fetch_add(&S->n_seeds, 1) + 1) * 0xBF58476D1CE4E5B9ull;
    if ((rc = parse_options(root, r, S->cfg, pe))) goto done;
    if ((rc = kind == SRV_REQ_CHAT ? parse_messages(root, e, r, pe) : parse_prompt(root, e, r, pe))) goto done;
    if (r->n_prompt == 0) {
        int32_t bos = kiln_token_bos(srv_engine_model(e));
        if (bos < 0) {
            rc = BAD("the prompt is empty and the model has no BOS token");
            goto done;
        }
        r->prompt[0] = bos;
        r->n_prompt = 1;
    }
    uint32_t n_ctx = srv_engine_slot_ctx(e);
    if (r->n_prompt + 1 > n_ctx) {
        rc = fail(pe, 400, "context_length_exceeded",
                  "the prompt has %zu tokens; a slot's context holds %u (prompt and completion)", r->n_prompt,
                  n_ctx);
        goto done;
    }
    snprintf(r->id, sizeof r->id, "%s-%llu", kind == SRV_REQ_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)atomic_fetch_add(&S->next_id, 1));
    r->created = (int64_t)time(NULL);
done:
    cJSON_Delete(root);
    if (rc) {
        srv_request_release(r);
        return rc;
    }
    *engine = e;
    *out = r;
    return 0;
}

/* ---- generation responses ---------------------------------------------------------- */

static cJSON *usage_json(const srv_request *r) {
    cJSON *u = cJSON_CreateObject();
    cJSON *det = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    if (!det || !cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->n_prompt) ||
        !cJSON_AddNumberToObject(u, "completion_tokens", r->n_completion) ||
        !cJSON_AddNumberToObject(u, "total_tokens", (double)r->n_prompt + r->n_completion) ||
        !cJSON_AddNumberToObject(det, "cached_tokens", r->n_cached)) {
        cJSON_Delete(u);
        return NULL;
    }
    return u;
}

/* The envelope shared by responses and chunks. */
static cJSON *envelope(const srv_request *r, const char *object, cJSON **choice) {
    cJSON *root = cJSON_CreateObject();
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    *choice = choices ? cJSON_CreateObject() : NULL;
    if (!*choice || !cJSON_AddStringToObject(root, "id", r->id) || !cJSON_AddStringToObject(root, "object", object) ||
        !cJSON_AddNumberToObject(root, "created", (double)r->created) ||
        !cJSON_AddStringToObject(root, "model", r->model_name) || !cJSON_AddItemToArray(choices, *choice) ||
        !cJSON_AddNumberToObject(*choice, "index", 0)) {
        if (*choice && !cJSON_GetArraySize(choices)) cJSON_Delete(*choice);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* The whole response of a finished request (r->mu held or r done). */
static cJSON *final_json(const srv_request *r) {
    cJSON *choice;
    int chat = r->kind == SRV_REQ_CHAT;
    cJSON *root = envelope(r, chat ? "chat.completion" : "text_completion", &choice);
    if (!root) return NULL;
    const char *text = r->text.data ? r->text.data : "";
    int ok;
    if (chat) {
        cJSON *msg = cJSON_AddObjectToObject(choice, "message");
        ok = msg && cJSON_AddStringToObject(msg, "role", "assistant") && cJSON_AddStringToObject(msg, "content", text);
    } else {
        ok = cJSON_AddStringToObject(choice, "text", text) && cJSON_AddNullToObject(choice, "logprobs");
    }
    cJSON *u = ok ? usage_json(r) : NULL;
    if (!u || !cJSON_AddStringToObject(choice, "finish_reason", r->finish_reason ? r->finish_reason : "stop") ||
        !cJSON_AddItemToObject(root, "usage", u)) {
        if (u && !cJSON_GetObjectItemCaseSensitive(root, "usage")) cJSON_Delete(u);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Appends one SSE event "data: <json>\n\n" (frees j). -1: out of memory. */
static int sse_json(srv_buf *out, cJSON *j) {
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!t) return -1;
    int rc = srv_buf_printf(out, "data: %s\n\n", t);
    cJSON_free(t);
    return rc;
}

/* A streaming chunk carrying text (delta may be NULL: the chat role
 * chunk), or the finish reason when finish != NULL. */
static cJSON *chunk_json(const srv_request *r, const char *delta, const char *finish, int role) {
    cJSON *choice;
    int chat = r->kind == SRV_REQ_CHAT;
    cJSON *root = envelope(r, chat ? "chat.completion.chunk" : "text_completion", &choice);
    if (!root) return NULL;
    int ok = 1;
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(choice, "delta");
        ok = d != NULL;
        if (ok && role) ok = cJSON_AddStringToObject(d, "role", "assistant") != NULL;
        if (ok && delta) ok = cJSON_AddStringToObject(d, "content", delta) != NULL;
    } else {
        ok = cJSON_AddStringToObject(choice, "text", delta ? delta : "") && cJSON_AddNullToObject(choice, "logprobs");
    }
    if (ok) ok = (finish ? cJSON_AddStringToObject(choice, "finish_reason", finish)
                         : cJSON_AddNullToObject(choice, "finish_reason")) != NULL;
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static cJSON *usage_chunk(const srv_request *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON *u = usage_json(r);
    if (!u || !cJSON_AddStringToObject(root, "id", r->id) ||
        !cJSON_AddStringToObject(root, "object",
                                 r->kind == SRV_REQ_CHAT ? "chat.completion.chunk" : "text_completion") ||
        !cJSON_AddNumberToObject(root, "created", (double)r->created) ||
        !cJSON_AddStringToObject(root, "model", r->model_name) || !cJSON_AddArrayToObject(root, "choices") ||
        !cJSON_AddItemToObject(root, "usage", u)) {
        if (u && !cJSON_GetObjectItemCaseSensitive(root, "usage")) cJSON_Delete(u);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static cJSON *error_json(const char *type, const char *msg, int status) {
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (!err || !cJSON_AddStringToObject(err, "message", msg) || !cJSON_AddStringToObject(err, "type", type) ||
        !cJSON_AddNumberToObject(err, "code", status)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Builds the next SSE bytes of r into r->out, waiting for the engine if
 * there is nothing new. -1: out of memory. */
static int stream_fill(srv_request *r) {
    r->out.len = 0;
    r->out_pos = 0;
    if (!r->sent_head && r->kind == SRV_REQ_CHAT) {
        r->sent_head = 1;
        return sse_json(&r->out, chunk_json(r, NULL, NULL, 1));
    }
    r->sent_head = 1;
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    while (!r->done && r->n_ready <= r->sent) pthread_cond_wait(&r->cv, &r->mu);
    size_t ready = r->done && !r->err_status ? r->text.len : r->n_ready;
    if (ready > r->sent) {
        char *delta = srv_strndup(r->text.data + r->sent, ready - r->sent);
        rc = delta ? sse_json(&r->out, chunk_json(r, delta, NULL, 0)) : -1;
        srv_free(delta);
        if (!rc) r->sent = ready;
    }
    if (!rc && r->done) {
        if (r->err_status) {
            rc = sse_json(&r->out, error_json(r->err_type, r->err_msg, r->err_status));
        } else {
            rc = sse_json(&r->out, chunk_json(r, NULL, r->finish_reason ? r->finish_reason : "stop", 0));
            if (!rc && r->include_usage) rc = sse_json(&r->out, usage_chunk(r));
        }
        if (!rc) rc = srv_buf_puts(&r->out, "data: [DONE]\n\n");
        r->sent_tail = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    srv_request *r = cls;
    (void)pos;
    while (r->out_pos >= r->out.len) {
        if (r->sent_tail) return MHD_CONTENT_READER_END_OF_STREAM;
        if (stream_fill(r)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = r->out.len - r->out_pos;
    if (n > max) n = max;
    memcpy(buf, r->out.data + r->out_pos, n);
    r->out_pos += n;
    return (ssize_t)n;
}

/* The connection is done with the stream (finished or the client left). */
static void stream_free(void *cls) {
    srv_request *r = cls;
    pthread_mutex_lock(&r->mu);
    r->cancelled = 1;
    pthread_mutex_unlock(&r->mu);
    srv_request_release(r);
}

static enum MHD_Result handle_generation(srv_server *S, struct MHD_Connection *c, conn_state *k,
                                         srv_req_kind kind) {
    parse_err pe;
    srv_engine *e = NULL;
    srv_request *r = NULL;
    if (k->too_large) return send_error(S, c, 413, "invalid_request_error", "the body is larger than %u bytes", MAX_BODY);
    if (parse_generation(S, k->body.data ? k->body.data : "", k->body.len, kind, &e, &r, &pe))
        return send_error(S, c, pe.status, pe.type, "%s", pe.msg);
    if (srv_engine_submit(e, r)) {
        srv_request_release(r);
        return send_error(S, c, 503, "server_shutdown", "the server is shutting down");
    }
    if (r->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader,
                                                                      r, stream_free);
        if (!resp) {
            stream_free(r);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp); /* the connection keeps it; stream_free releases r */
        return ret;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->done) pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    enum MHD_Result ret;
    if (r->err_status) ret = send_error(S, c, (unsigned)r->err_status, r->err_type, "%s", r->err_msg);
    else ret = send_json(S, c, 200, final_json(r));
    srv_request_release(r);
    return ret;
}

/* ---- the other endpoints ----------------------------------------------------------- */

static enum MHD_Result handle_models(srv_server *S, struct MHD_Connection *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    int ok = data && cJSON_AddStringToObject(root, "object", "list");
    for (int32_t i = 0; ok && i < S->n_engines; i++) {
        srv_engine *e = S->engines[i];
        cJSON *m = cJSON_CreateObject();
        ok = m && cJSON_AddItemToArray(data, m);
        if (!ok) {
            cJSON_Delete(m);
            break;
        }
        cJSON *meta = cJSON_AddObjectToObject(m, "meta");
        kiln_model_info info;
        kiln_model_info_init(&info);
        kiln_model_get_info(srv_engine_model(e), &info);
        ok = meta && cJSON_AddStringToObject(m, "id", srv_engine_name(e)) &&
             cJSON_AddStringToObject(m, "object", "model") && cJSON_AddNumberToObject(m, "created", 0) &&
             cJSON_AddStringToObject(m, "owned_by", "kiln") && cJSON_AddStringToObject(meta, "path", srv_engine_path(e)) &&
             cJSON_AddStringToObject(meta, "arch", info.arch) &&
             cJSON_AddNumberToObject(meta, "n_params", (double)info.n_params) &&
             cJSON_AddNumberToObject(meta, "slots", srv_engine_n_slots(e)) &&
             cJSON_AddNumberToObject(meta, "n_ctx_slot", srv_engine_slot_ctx(e)) &&
             cJSON_AddStringToObject(meta, "chat_template", srv_chat_name(srv_engine_chat_kind(e)));
    }
    if (!ok) {
        cJSON_Delete(root);
        root = NULL;
    }
    return send_json(S, c, 200, root);
}

static enum MHD_Result handle_health(srv_server *S, struct MHD_Connection *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON *models = cJSON_AddArrayToObject(root, "models");
    int ok = models && cJSON_AddStringToObject(root, "status", "ok");
    for (int32_t i = 0; ok && i < S->n_engines; i++) {
        srv_engine_stats st;
        srv_engine_get_stats(S->engines[i], &st);
        cJSON *m = cJSON_CreateObject();
        ok = m && cJSON_AddItemToArray(models, m);
        if (!ok) {
            cJSON_Delete(m);
            break;
        }
        ok = cJSON_AddStringToObject(m, "id", srv_engine_name(S->engines[i])) &&
             cJSON_AddBoolToObject(m, "sleeping", st.suspended != 0) &&
             cJSON_AddNumberToObject(m, "slots_busy", st.n_busy) &&
             cJSON_AddNumberToObject(m, "queued", st.n_queued);
    }
    if (!ok) {
        cJSON_Delete(root);
        root = NULL;
    }
    return send_json(S, c, 200, root);
}

static enum MHD_Result handle_slots(srv_server *S, struct MHD_Connection *c) {
    cJSON *root = cJSON_CreateArray();
    int ok = root != NULL;
    for (int32_t i = 0; ok && i < S->n_engines; i++) {
        srv_engine *e = S->engines[i];
        int32_t n = srv_engine_n_slots(e);
        srv_slot_info *info = srv_calloc((size_t)n, sizeof *info);
        if (!info) {
            ok = 0;
            break;
        }
        n = srv_engine_get_slots(e, info, n);
        for (int32_t j = 0; ok && j < n; j++) {
            cJSON *s = cJSON_CreateObject();
            ok = s && cJSON_AddItemToArray(root, s);
            if (!ok) {
                cJSON_Delete(s);
                break;
            }
            ok = cJSON_AddNumberToObject(s, "id", info[j].id) &&
                 cJSON_AddStringToObject(s, "model", srv_engine_name(e)) &&
                 cJSON_AddStringToObject(s, "state", info[j].busy ? "busy" : "idle") &&
                 cJSON_AddNumberToObject(s, "n_cached", info[j].n_cached) &&
                 cJSON_AddBoolToObject(s, "offloaded", info[j].offloaded) &&
                 cJSON_AddNumberToObject(s, "idle_seconds", info[j].idle_s) &&
                 cJSON_AddNumberToObject(s, "n_requests", (double)info[j].n_requests);
        }
        srv_free(info);
    }
    if (!ok) {
        cJSON_Delete(root);
        root = NULL;
    }
    return send_json(S, c, 200, root);
}

static enum MHD_Result handle_erase(srv_server *S, struct MHD_Connection *c) {
    int32_t n = 0;
    for (int32_t i = 0; i < S->n_engines; i++) n += srv_engine_erase_idle(S->engines[i]);
    cJSON *root = cJSON_CreateObject();
    if (root && !cJSON_AddNumberToObject(root, "erased", n)) {
        cJSON_Delete(root);
        root = NULL;
    }
    return send_json(S, c, 200, root);
}

/* Prometheus text exposition, one family at a time for every model. */
static int metric(srv_buf *o, const char *name, const char *type, const char *help) {
    return srv_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static enum MHD_Result handle_metrics(srv_server *S, struct MHD_Connection *c) {
    /* read first: what this handler allocates is not counted */
    uint64_t live_bytes = srv_live_bytes(), live_blocks = srv_live_blocks();
    srv_engine_stats *st = srv_calloc((size_t)S->n_engines, sizeof *st);
    if (!st) return send_error(S, c, 500, "server_error", "out of memory");
    for (int32_t i = 0; i < S->n_engines; i++) srv_engine_get_stats(S->engines[i], &st[i]);
    srv_buf o = {0};
    int bad = 0;
#define FAMILY(NAME, TYPE, HELP, FMT, EXPR)                                                            \
    do {                                                                                               \
        bad |= metric(&o, NAME, TYPE, HELP);                                                           \
        for (int32_t i = 0; i < S->n_engines; i++) {                                                   \
            const srv_engine_stats *s = &st[i];                                                        \
            (void)s;                                                                                   \
            bad |= srv_buf_printf(&o, NAME "{model=\"%s\"} " FMT "\n", srv_engine_name(S->engines[i]), EXPR); \
        }                                                                                              \
    } while (0)
#define U64(x) (unsigned long long)(x)
    FAMILY("kiln_requests_total", "counter", "Generation requests finished.", "%llu", U64(s->n_requests));
    FAMILY("kiln_requests_failed_total", "counter", "Generation requests that failed after being queued.", "%llu",
           U64(s->n_requests_failed));
    FAMILY("kiln_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", "%llu",
           U64(s->n_prompt_tokens));
    FAMILY("kiln_prompt_tokens_cached_total", "counter",
           "Prompt tokens found in a slot's KV cache and not evaluated again.", "%llu", U64(s->n_cached_tokens));
    FAMILY("kiln_prompt_tokens_evaluated_total", "counter", "Prompt tokens decoded (re-evaluated).", "%llu",
           U64(s->n_evaluated_tokens));
    FAMILY("kiln_prefix_copies_total", "counter",
           "Prompts that took a copy of another slot's common prefix (shared KV blocks).", "%llu",
           U64(s->n_shared_prefixes));
    FAMILY("kiln_generated_tokens_total", "counter", "Tokens generated.", "%llu", U64(s->n_generated_tokens));
    FAMILY("kiln_decode_steps_total", "counter", "Batched decode steps.", "%llu", U64(s->n_decodes));
    FAMILY("kiln_prompt_seconds_total", "counter", "Seconds in decode steps that carried prompt tokens.", "%.6f",
           s->t_prompt);
    FAMILY("kiln_generation_seconds_total", "counter", "Seconds in generation-only decode steps.", "%.6f",
           s->t_generate);
    FAMILY("kiln_prompt_tokens_per_second", "gauge", "Prompt tokens evaluated per second of prompt steps.", "%.3f",
           s->t_prompt > 0 ? (double)s->n_evaluated_tokens / s->t_prompt : 0.0);
    FAMILY("kiln_generation_tokens_per_second", "gauge", "Tokens decoded per second of generation-only steps.",
           "%.3f", s->t_generate > 0 ? (double)s->n_gen_in_generate / s->t_generate : 0.0);
    FAMILY("kiln_slots_busy", "gauge", "Slots generating.", "%d", s->n_busy);
    FAMILY("kiln_requests_queued", "gauge", "Requests waiting for a slot.", "%d", s->n_queued);
    FAMILY("kiln_kv_blocks_total", "gauge", "KV cache blocks of the context.", "%u", s->kv.n_blocks_total);
    FAMILY("kiln_kv_block_bytes", "gauge", "Device bytes of one KV block (all layers, K and V).", "%llu",
           U64(s->kv.block_bytes));
    FAMILY("kiln_kv_blocks_device", "gauge", "KV blocks held on the device by sequences.", "%u",
           s->kv.n_blocks_used);
    FAMILY("kiln_kv_blocks_host", "gauge", "KV blocks' worth of rows held in host memory (offloaded, suspended).",
           "%llu", U64(s->kv.block_bytes ? (s->kv.bytes_host + s->kv.block_bytes - 1) / s->kv.block_bytes : 0));
    FAMILY("kiln_kv_bytes_device", "gauge", "Device bytes of the KV buffers (0 while asleep).", "%llu",
           U64(s->kv.bytes_device));
    FAMILY("kiln_kv_bytes_host", "gauge", "Host bytes of offloaded KV rows and a suspended cache.", "%llu",
           U64(s->kv.bytes_host));
    FAMILY("kiln_kv_sequences_offloaded", "gauge", "KV sequences in host memory.", "%u", s->kv.n_seq_offloaded);
    FAMILY("kiln_kv_auto_offloads_total", "counter", "Sequences offloaded by kiln under the device KV budget.",
           "%llu", U64(s->kv.n_auto_offloads));
    FAMILY("kiln_kv_auto_restores_total", "counter", "Offloaded sequences brought back by a decode.", "%llu",
           U64(s->kv.n_auto_restores));
    FAMILY("kiln_offloads_total", "counter", "Idle slots offloaded to host memory (--offload-idle).", "%llu",
           U64(s->n_offloads));
    FAMILY("kiln_restores_total", "counter", "Offloaded slots restored when their conversation returned.", "%llu",
           U64(s->n_restores));
    FAMILY("kiln_pool_bytes_in_use", "gauge", "Transient pool bytes in use.", "%llu", U64(s->pool.bytes_in_use));
    FAMILY("kiln_pool_bytes_cached", "gauge", "Transient pool bytes cached for reuse.", "%llu",
           U64(s->pool.bytes_cached));
    FAMILY("kiln_pool_bytes_peak", "gauge", "Peak transient pool bytes.", "%llu", U64(s->pool.bytes_peak));
    FAMILY("kiln_suspends_total", "counter", "Times the context was put to sleep (--sleep-idle).", "%llu",
           U64(s->n_suspends));
    FAMILY("kiln_resumes_total", "counter", "Times the context woke up for a request.", "%llu", U64(s->n_resumes));
    FAMILY("kiln_suspended", "gauge", "The context's suspend level (0 awake).", "%d", s->suspended);
    FAMILY("kiln_draft_proposed_total", "counter", "Draft tokens proposed (--draft).", "%llu",
           U64(s->draft.n_proposed));
    FAMILY("kiln_draft_accepted_total", "counter", "Draft tokens accepted.", "%llu", U64(s->draft.n_accepted));
#undef FAMILY
    struct mallinfo2 mi = mallinfo2();
    bad |= metric(&o, "kiln_http_requests_total", "counter", "HTTP requests received.");
    bad |= srv_buf_printf(&o, "kiln_http_requests_total %llu\n", U64(atomic_load(&S->n_http)));
    bad |= metric(&o, "kiln_http_errors_total", "counter", "HTTP error responses by class.");
    bad |= srv_buf_printf(&o, "kiln_http_errors_total{class=\"4xx\"} %llu\nkiln_http_errors_total{class=\"5xx\"} %llu\n",
                          U64(atomic_load(&S->n_4xx)), U64(atomic_load(&S->n_5xx)));
    bad |= metric(&o, "kiln_server_alloc_bytes", "gauge", "Bytes the server itself holds (requests, JSON, slots).");
    bad |= srv_buf_printf(&o, "kiln_server_alloc_bytes %llu\n", U64(live_bytes));
    bad |= metric(&o, "kiln_server_alloc_blocks", "gauge", "Blocks the server itself holds.");
    bad |= srv_buf_printf(&o, "kiln_server_alloc_blocks %llu\n", U64(live_blocks));
    bad |= metric(&o, "kiln_process_heap_bytes", "gauge", "malloc'd bytes in use in the whole process (mallinfo2).");
    bad |= srv_buf_printf(&o, "kiln_process_heap_bytes %llu\n", U64(mi.uordblks + mi.hblkhd));
    unsigned long long pages_total = 0, pages_rss = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (statm) {
        if (fscanf(statm, "%llu %llu", &pages_total, &pages_rss) != 2) pages_rss = 0;
        fclose(statm);
    }
    bad |= metric(&o, "kiln_process_resident_bytes", "gauge", "Resident memory of the process (/proc/self/statm).");
    bad |= srv_buf_printf(&o, "kiln_process_resident_bytes %llu\n", pages_rss * (unsigned long long)sysconf(_SC_PAGESIZE));
    bad |= metric(&o, "kiln_uptime_seconds", "gauge", "Seconds since the server started.");
    bad |= srv_buf_printf(&o, "kiln_uptime_seconds %.3f\n", srv_now() - S->t_start);
#undef U64
    srv_free(st);
    enum MHD_Result ret = bad || !o.data ? send_error(S, c, 500, "server_error", "out of memory")
                                         : send_bytes(S, c, 200, "text/plain; version=0.0.4", o.data, o.len);
    srv_buf_free(&o);
    return ret;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **con_cls) {
    srv_server *S = cls;
    (void)version;
    conn_state *k = *con_cls;
    if (!k) {
        k = srv_calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!k->too_large && (k->body.len + *upload_size > MAX_BODY || srv_buf_append(&k->body, upload_data, *upload_size)))
            k->too_large = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&S->n_http, 1);
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions")) {
        if (post) return handle_generation(S, c, k, SRV_REQ_COMPLETION);
    } else if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions")) {
        if (post) return handle_generation(S, c, k, SRV_REQ_CHAT);
    } else if (!strcmp(url, "/v1/models") || !strcmp(url, "/models")) {
        if (get) return handle_models(S, c);
    } else if (!strcmp(url, "/health")) {
        if (get) return handle_health(S, c);
    } else if (!strcmp(url, "/metrics")) {
        if (get) return handle_metrics(S, c);
    } else if (!strcmp(url, "/slots")) {
        if (get) return handle_slots(S, c);
    } else if (!strcmp(url, "/slots/erase")) {
        if (post) return handle_erase(S, c);
    } else {
        return send_error(S, c, 404, "not_found", "no endpoint %.200s", url);
    }
    return send_error(S, c, 405, "invalid_request_error", "%.200s does not take %.16s", url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode tc) {
    (void)cls;
    (void)c;
    (void)tc;
    conn_state *k = *con_cls;
    if (!k) return;
    srv_buf_free(&k->body);
    srv_free(k);
    *con_cls = NULL;
}

srv_server *srv_http_start(const char *host, uint16_t port, srv_engine **engines, int32_t n_engines,
                           const srv_config *cfg) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "kiln-server: --host %s is not an IPv4 address\n", host);
        return NULL;
    }
    srv_server *S = srv_calloc(1, sizeof *S);
    if (!S) return NULL;
    S->engines = engines;
    S->n_engines = n_engines;
    S->cfg = cfg;
    S->t_start = srv_now();
    S->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                                     MHD_USE_ERROR_LOG,
                                 0, NULL, NULL, on_request, S, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, S, MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned)256, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!S->daemon) {
        fprintf(stderr, "kiln-server: cannot listen on %s:%u\n", host, (unsigned)port);
        srv_free(S);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(S->daemon, MHD_DAEMON_INFO_BIND_PORT);
    S->port = di ? di->port : port;
    return S;
}

uint16_t srv_http_port(const srv_server *s) { return s->port; }

void srv_http_stop(srv_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->daemon);
    srv_free(s);
}
