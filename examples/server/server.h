/*
 * server.h - the parts of kiln-server shared by its files:
 *   util.c    counting allocator, growable byte buffer, clock
 *   chat.c    chat templates (detection from the GGUF template, rendering)
 *   engine.c  one loaded model: its context, slots, request queue and the
 *             decode thread doing continuous batching
 *   http.c    the HTTP endpoints (libmicrohttpd) and their JSON (cJSON)
 *   main.c    options, start-up, signal handling, shutdown
 *
 * Threads: libmicrohttpd runs one thread per connection; each engine runs
 * one decode thread, the only thread that touches that engine's kiln
 * context. They meet in srv_request (guarded by its mutex) and in the
 * engine's queue and statistics (guarded by the engine's mutex).
 *
 * Ownership: a srv_request is reference counted (the HTTP thread and the
 * engine each hold one reference while they use it); srv_request_release
 * frees it with the last reference.
 */
#ifndef KILN_SERVER_H
#define KILN_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* ---- util.c ---------------------------------------------------------------- */

/* Every server allocation (and cJSON's, through its hooks) goes through
 * these, so /metrics can show the bytes the server itself holds: after a
 * burst of requests it must come back to where it was. Thread-safe. */
void *srv_malloc(size_t n);
void *srv_calloc(size_t n, size_t size);
void *srv_realloc(void *p, size_t n);
void srv_free(void *p);
char *srv_strdup(const char *s);
char *srv_strndup(const char *s, size_t n);
uint64_t srv_live_bytes(void);  /* bytes allocated and not freed */
uint64_t srv_live_blocks(void); /* blocks allocated and not freed */

double srv_now(void); /* monotonic seconds */

/* A growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct srv_buf {
    char *data;
    size_t len, cap;
} srv_buf;
/* 0 on success, -1 out of memory (the buffer is unchanged). */
int srv_buf_append(srv_buf *b, const char *s, size_t n);
int srv_buf_puts(srv_buf *b, const char *s);
int srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_free(srv_buf *b);

/* ---- chat.c -------------------------------------------------------------------- */

typedef enum srv_chat_kind {
    SRV_CHAT_UNKNOWN = 0, /* a template we cannot render */
    SRV_CHAT_CHATML,      /* <|im_start|>role\n...<|im_end|> (Qwen, many others) */
    SRV_CHAT_LLAMA3,      /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    SRV_CHAT_MISTRAL,     /* [INST] ... [/INST] answer</s> */
    SRV_CHAT_PLAIN,       /* "role: text" lines, for models without a template */
} srv_chat_kind;

typedef struct srv_chat_msg {
    const char *role;
    const char *content;
} srv_chat_msg;

/* The kind of a GGUF tokenizer.chat_template (NULL or "": PLAIN), found by
 * signature substrings. */
srv_chat_kind srv_chat_detect(const char *tmpl);
/* "chatml", "llama3", "mistral", "plain" -> kind; else SRV_CHAT_UNKNOWN. */
srv_chat_kind srv_chat_from_name(const char *name);
const char *srv_chat_name(srv_chat_kind k);
/* Renders messages plus the opening of the assistant's turn into *out
 * (appended). The BOS token is not written: the caller tokenizes with
 * KILN_TOKENIZE_ADD_BOS. Returns 0, -1 out of memory, or -2 with a message
 * in err (a role the template cannot express, an unknown kind). */
int srv_chat_render(srv_chat_kind k, const srv_chat_msg *msgs, size_t n, srv_buf *out, char *err,
                    size_t err_cap);

/* ---- engine.c ------------------------------------------------------------------ */

typedef struct srv_config {
    int32_t n_slots;          /* --slots */
    uint32_t n_ctx;           /* -c: KV capacity of each model's context */
    uint32_t n_batch;         /* max prompt tokens per decode step (all slots) */
    int32_t n_threads;        /* -t */
    double sleep_idle;        /* --sleep-idle seconds; <= 0: never */
    int32_t sleep_level;      /* --sleep-level 1 or 2 */
    double offload_idle;      /* --offload-idle seconds; < 0: never */
    uint64_t kv_device_budget; /* --kv-device-budget bytes (0: context default) */
    int32_t n_draft;          /* --draft-n */
    const char *chat_template; /* --chat-template NAME or NULL */
    int32_t default_max_tokens; /* completions without max_tokens */
    int verbose;
} srv_config;

typedef struct srv_engine srv_engine;

typedef enum srv_req_kind { SRV_REQ_COMPLETION, SRV_REQ_CHAT } srv_req_kind;

/* One generation request. The HTTP thread fills the immutable part, then
 * srv_engine_submit hands it to the engine. The engine appends text and
 * finally sets done; the HTTP thread reads under mu. */
typedef struct srv_request {
    /* immutable after submission */
    srv_req_kind kind;
    int stream;
    int include_usage;         /* stream_options.include_usage */
    int32_t *prompt;           /* tokens (srv_malloc'd, owned) */
    size_t n_prompt;
    int32_t max_tokens;        /* < 0: until end of text or the slot's context */
    kiln_sampler_params sp;
    char **stop;               /* stop strings (owned) */
    size_t n_stop;
    char id[64];
    int64_t created;
    const char *model_name;    /* the engine's (lives as long as the server) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    /* guarded by mu */
    srv_buf text;              /* generated text, stop strings cut off */
    size_t n_ready;            /* bytes of text that are final (may be sent) */
    int done;
    int cancelled;             /* the client went away: stop generating */
    const char *finish_reason; /* "stop" / "length" once done without error */
    int err_status;            /* nonzero: failed with this HTTP status */
    char err_type[48];
    char err_msg[256];
    uint32_t n_cached;         /* prompt tokens found in the slot's KV */
    uint32_t n_completion;     /* tokens generated */
    int32_t slot;

    /* the HTTP thread's streaming cursor (no lock: one thread) */
    size_t sent;
    int sent_head;
    int sent_tail;
    srv_buf out;               /* SSE bytes built but not yet written */
    size_t out_pos;

    struct srv_request *next;  /* the engine's queue (engine mutex) */
} srv_request;

/* A request with refs = 1 (the caller's), or NULL. */
srv_request *srv_request_new(void);
void srv_request_release(srv_request *r); /* frees with the last reference */
/* Marks r failed (engine side): status, type, message; sets done. r->mu held
 * by the caller. */
void srv_request_fail_locked(srv_request *r, int status, const char *type, const char *msg);

/* Statistics an engine publishes after every step (engine mutex). */
typedef struct srv_engine_stats {
    uint64_t n_requests, n_requests_failed;
    uint64_t n_prompt_tokens;     /* prompt tokens of finished requests */
    uint64_t n_cached_tokens;     /* of those, found in the slot's KV (not decoded) */
    uint64_t n_evaluated_tokens;  /* prompt tokens decoded */
    uint64_t n_generated_tokens;
    uint64_t n_decodes;
    double t_prompt, t_generate;  /* seconds in decode steps with prompt / only generation */
    uint64_t n_gen_in_generate;   /* tokens decoded in generation-only steps */
    uint64_t n_suspends, n_resumes;
    uint64_t n_offloads, n_restores; /* explicit (idle) offloads, slots brought back */
    uint64_t n_erases;
    uint64_t n_shared_prefixes;   /* prompts that took another slot's prefix (kiln_kv_seq_cp) */
    int suspended;                /* the context's suspend level */
    int n_busy, n_queued;
    kiln_kv_stats kv;
    kiln_pool_stats pool;
    kiln_draft_stats draft;
    int has_draft;
} srv_engine_stats;

typedef struct srv_slot_info {
    int32_t id;
    int busy;
    int offloaded;
    uint32_t n_cached;            /* tokens held in the slot's KV sequence */
    double idle_s;                /* seconds since its last request ended */
    uint64_t n_requests;
} srv_slot_info;

typedef struct srv_model_spec {
    const char *path;
    const char *backend;          /* NULL: cpu */
    int32_t device;
    const char *alias;            /* NULL: the file's basename */
    const char *draft;            /* NULL: none */
} srv_model_spec;

/* Loads the model (and draft), creates its context and starts the decode
 * thread. On failure prints why (stderr) and returns NULL. */
srv_engine *srv_engine_create(const srv_model_spec *spec, const srv_config *cfg);
/* Fails every queued and running request (503), stops the thread and
 * frees everything. NULL is a no-op. */
void srv_engine_free(srv_engine *e);
/* Stops accepting and fails every request (503); the thread keeps
 * running until srv_engine_free. */
void srv_engine_shutdown(srv_engine *e);

const char *srv_engine_name(const srv_engine *e);
const char *srv_engine_path(const srv_engine *e);
/* 1 if name is the engine's alias, its file's basename, or the basename
 * without ".gguf". */
int srv_engine_matches(const srv_engine *e, const char *name);
kiln_model *srv_engine_model(srv_engine *e);
uint32_t srv_engine_slot_ctx(const srv_engine *e); /* max tokens of one slot */
int32_t srv_engine_n_slots(const srv_engine *e);
/* The chat template kind, or SRV_CHAT_UNKNOWN with a message in
 * srv_engine_chat_error. */
srv_chat_kind srv_engine_chat_kind(const srv_engine *e);
const char *srv_engine_chat_error(const srv_engine *e);

/* Queues r (taking a reference). 0, or -1 if the engine is shutting down
 * (r untouched). */
int srv_engine_submit(srv_engine *e, srv_request *r);
void srv_engine_get_stats(srv_engine *e, srv_engine_stats *out);
/* Fills up to cap slot descriptions, returns the count. */
int32_t srv_engine_get_slots(srv_engine *e, srv_slot_info *out, int32_t cap);
/* Erases the KV of every idle slot and purges the pool, on the decode
 * thread; waits for it. Returns the number of slots erased. */
int32_t srv_engine_erase_idle(srv_engine *e);

/* ---- http.c -------------------------------------------------------------------- */

typedef struct srv_server srv_server;
/* Starts listening on host:port (port 0: any free port) with the engines
 * (borrowed; engines[0] is the default model). NULL on failure (printed). */
srv_server *srv_http_start(const char *host, uint16_t port, srv_engine **engines, int32_t n_engines,
                           const srv_config *cfg);
uint16_t srv_http_port(const srv_server *s);
/* Closes every connection and frees the server. NULL is a no-op. */
void srv_http_stop(srv_server *s);

#endif /* KILN_SERVER_H */
