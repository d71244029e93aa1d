/*
 * kiln-server - an OpenAI-compatible HTTP server over kiln's public API.
 *
 *   kiln-server -m FILE[@BACKEND:DEVICE] [--alias NAME] [--draft FILE] [-m ...]
 *               [--host ADDR] [--port N] [--slots N] [-c N_CTX] [-t THREADS]
 *               [--sleep-idle SECONDS] [--sleep-level 1|2] [--offload-idle SECONDS]
 *               [--kv-device-budget BYTES] [--chat-template NAME] [-v]
 *
 * Prints "kiln-server: listening on http://HOST:PORT" on stderr once it
 * serves; SIGINT or SIGTERM stops it cleanly (every request in flight gets
 * a 503, everything is freed) with exit status 0. Exit status 1: a model
 * failed to load or the port could not be opened; 2: bad usage.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server.h"

#define MAX_MODELS 16

static void usage(FILE *f) {
    fprintf(f,
        "usage: kiln-server -m FILE[@BACKEND:DEVICE] [options]\n"
        "  -m FILE[@B:D]          a model (repeatable; the first is the default), optionally pinned to\n"
        "                         backend B, device D (e.g. model.gguf@cuda:1)\n"
        "  --alias NAME           the name of the last -m in requests' \"model\" (default: its file name)\n"
        "  --draft FILE           speculative decoding for the last -m with this draft model (slot 0)\n"
        "  --draft-n N            draft tokens per proposal (default 8)\n"
        "  --host ADDR            IPv4 address to listen on (default 127.0.0.1)\n"
        "  --port N               TCP port, 0 = any free one (default 8080)\n"
        "  --slots N              concurrent conversations per model (default 4)\n"
        "  -c N_CTX               KV cache tokens per model, shared by its slots (default 4096)\n"
        "  -b N                   prompt tokens per decode step (default 512)\n"
        "  -t THREADS             CPU threads per model (default: number of cores)\n"
        "  -n N                   max_tokens of completions that give none (default 16)\n"
        "  --sleep-idle SECONDS   suspend a model's context after this long without requests (default: never)\n"
        "  --sleep-level L        1: KV cache to host memory, 2: weights too (default 1)\n"
        "  --offload-idle SECONDS move an idle slot's KV to host memory after this long (default: never)\n"
        "  --kv-device-budget B   device bytes of KV blocks; past it kiln offloads idle slots itself\n"
        "                         (default: all of the cache, offloading only when it is full)\n"
        "  --chat-template NAME   chatml, llama3, mistral or plain, instead of the model's own\n"
        "  -v                     log requests and lifecycle events on stderr\n"
        "  --help                 this text\n");
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "kiln-server: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

static void on_signal(int sig) { (void)sig; }

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

/* "path@backend:device" -> spec (modifies s). */
static int parse_model(char *s, srv_model_spec *m) {
    memset(m, 0, sizeof *m);
    m->path = s;
    char *at = strrchr(s, '@');
    if (!at) return 1;
    *at = '\0';
    char *b = at + 1, *colon = strchr(b, ':');
    if (colon) {
        *colon = '\0';
        double d;
        if (!parse_num("-m", colon + 1, 0, 1024, &d) || d != (int)d) return 0;
        m->device = (int32_t)d;
    }
    if (!*b) {
        fprintf(stderr, "kiln-server: -m %s@: the backend name is missing\n", s);
        return 0;
    }
    m->backend = b;
    return 1;
}

int main(int argc, char **argv) {
    static cJSON_Hooks hooks = {srv_malloc, srv_free};
    cJSON_InitHooks(&hooks);

    srv_config cfg = {
        .n_slots = 4, .n_ctx = 4096, .n_batch = 512, .n_threads = 0, .sleep_idle = 0, .sleep_level = 1,
        .offload_idle = -1, .kv_device_budget = UINT64_MAX, .n_draft = 8, .default_max_tokens = 16,
    };
    srv_model_spec specs[MAX_MODELS];
    char *model_args[MAX_MODELS];
    int n_models = 0;
    const char *host = "127.0.0.1";
    double port = 8080, d;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(o, "-v")) {
            cfg.verbose = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kiln-server: %s needs a value (or is unknown)\n", o);
            usage(stderr);
            goto out;
        }
        const char *v = argv[++i];
        if (!strcmp(o, "-m")) {
            if (n_models == MAX_MODELS) {
                fprintf(stderr, "kiln-server: at most %d models\n", MAX_MODELS);
                goto out;
            }
            model_args[n_models] = strdup(v);
            if (!model_args[n_models] || !parse_model(model_args[n_models], &specs[n_models])) {
                free(model_args[n_models]);
                goto out;
            }
            n_models++;
        } else if (!strcmp(o, "--alias") || !strcmp(o, "--draft")) {
            if (!n_models) {
                fprintf(stderr, "kiln-server: %s applies to the -m before it\n", o);
                goto out;
            }
            if (!strcmp(o, "--alias")) specs[n_models - 1].alias = v;
            else specs[n_models - 1].draft = v;
        } else if (!strcmp(o, "--draft-n")) {
            if (!parse_num(o, v, 1, 256, &d)) goto out;
            cfg.n_draft = (int32_t)d;
        } else if (!strcmp(o, "--host")) {
            host = v;
        } else if (!strcmp(o, "--port")) {
            if (!parse_num(o, v, 0, 65535, &port)) goto out;
        } else if (!strcmp(o, "--slots")) {
            if (!parse_num(o, v, 1, 256, &d)) goto out;
            cfg.n_slots = (int32_t)d;
        } else if (!strcmp(o, "-c")) {
            if (!parse_num(o, v, 16, 1 << 24, &d)) goto out;
            cfg.n_ctx = (uint32_t)d;
        } else if (!strcmp(o, "-b")) {
            if (!parse_num(o, v, 1, 1 << 16, &d)) goto out;
            cfg.n_batch = (uint32_t)d;
        } else if (!strcmp(o, "-t")) {
            if (!parse_num(o, v, 0, 1024, &d)) goto out;
            cfg.n_threads = (int32_t)d;
        } else if (!strcmp(o, "-n")) {
            if (!parse_num(o, v, 0, 1 << 24, &d)) goto out;
            cfg.default_max_tokens = (int32_t)d;
        } else if (!strcmp(o, "--sleep-idle")) {
            if (!parse_num(o, v, 0, 1e9, &cfg.sleep_idle)) goto out;
        } else if (!strcmp(o, "--sleep-level")) {
            if (!parse_num(o, v, 1, 2, &d) || d != (int)d) goto out;
            cfg.sleep_level = (int32_t)d;
        } else if (!strcmp(o, "--offload-idle")) {
            if (!parse_num(o, v, 0, 1e9, &cfg.offload_idle)) goto out;
        } else if (!strcmp(o, "--kv-device-budget")) {
            if (!parse_num(o, v, 1, 1.8e19, &d)) goto out;
            cfg.kv_device_budget = (uint64_t)d;
        } else if (!strcmp(o, "--chat-template")) {
            if (srv_chat_from_name(v) == SRV_CHAT_UNKNOWN) {
                fprintf(stderr, "kiln-server: --chat-template %s: not chatml, llama3, mistral or plain\n", v);
                goto out;
            }
            cfg.chat_template = v;
        } else {
            fprintf(stderr, "kiln-server: unknown option %s\n", o);
            usage(stderr);
            goto out;
        }
    }
    if (!n_models) {
        usage(stderr);
        goto out;
    }
    for (int i = 0; i < n_models; i++)
        for (int j = 0; j < i; j++) {
            const char *a = specs[i].alias ? specs[i].alias : base_name(specs[i].path);
            const char *b = specs[j].alias ? specs[j].alias : base_name(specs[j].path);
            if (!strcmp(a, b)) {
                fprintf(stderr, "kiln-server: two models are named '%s': give one an --alias\n", a);
                goto out;
            }
        }

    /* Signals are taken by sigwait in this thread only: block them before
     * any thread starts (threads inherit the mask). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* not SIG_IGN (a background job's SIGINT): sigwait must see it */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = 1;
    srv_engine *engines[MAX_MODELS] = {0};
    srv_server *http = NULL;
    for (int i = 0; i < n_models; i++) {
        engines[i] = srv_engine_create(&specs[i], &cfg);
        if (!engines[i]) goto stop;
        fprintf(stderr, "kiln-server: model '%s' (%s): %d slots of %u tokens, chat template %s\n",
                srv_engine_name(engines[i]), specs[i].path, (int)cfg.n_slots, srv_engine_slot_ctx(engines[i]),
                srv_chat_name(srv_engine_chat_kind(engines[i])));
    }
    http = srv_http_start(host, (uint16_t)port, engines, n_models, &cfg);
    if (!http) goto stop;
    fprintf(stderr, "kiln-server: listening on http://%s:%u\n", host, (unsigned)srv_http_port(http));
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "kiln-server: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
stop:
    /* fail what is queued and running (waiting handlers answer 503), then
     * close the connections, then free the models */
    for (int i = 0; i < n_models; i++) srv_engine_shutdown(engines[i]);
    srv_http_stop(http);
    for (int i = 0; i < n_models; i++) srv_engine_free(engines[i]);
    if (cfg.verbose) fprintf(stderr, "kiln-server: %llu bytes left allocated\n", (unsigned long long)srv_live_bytes());
out:
    for (int i = 0; i < n_models; i++) free(model_args[i]);
    return rc;
}
