/*
 * status.c - status strings, the thread-local last error, the version, and
 * logging sinks.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char tls_last_error[512];

const char *kiln_status_str(kiln_status status) {
    switch (status) {
    case KILN_OK: return "ok";
    case KILN_E_INVALID_ARG: return "invalid argument";
    case KILN_E_IO: return "I/O error";
    case KILN_E_FORMAT: return "malformed input";
    case KILN_E_UNSUPPORTED: return "unsupported";
    case KILN_E_OOM_HOST: return "out of host memory";
    case KILN_E_OOM_DEVICE: return "out of device memory";
    case KILN_E_BACKEND: return "backend error";
    case KILN_E_CONTEXT_FULL: return "context full";
    case KILN_E_BUSY: return "busy";
    case KILN_E_CANCELLED: return "cancelled";
    case KILN_E_NOT_FOUND: return "not found";
    case KILN_E_BUFFER_TOO_SMALL: return "buffer too small";
    case KILN_E_INCOMPATIBLE: return "incompatible";
    case KILN_E_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}

const char *kiln_last_error(void) { return tls_last_error; }

#define KILN_STR2(x) #x
#define KILN_STR(x) KILN_STR2(x)
const char *kiln_version(void) {
    return KILN_STR(KILN_VERSION_MAJOR) "." KILN_STR(KILN_VERSION_MINOR) "." KILN_STR(KILN_VERSION_PATCH);
}
uint32_t kiln_version_number(void) { return KILN_VERSION_NUMBER; }

kiln_status kiln_verror(kiln_status status, const char *fmt, va_list ap) {
    vsnprintf(tls_last_error, sizeof tls_last_error, fmt, ap);
    return status;
}

kiln_status kiln_error(kiln_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kiln_verror(status, fmt, ap);
    va_end(ap);
    return status;
}

void kiln_error_clear(void) { tls_last_error[0] = '\0'; }

/* ---- logging ---- */

#include <stdatomic.h>

/* The process default sink. Guarded by a spinlock-free snapshot: the three
 * fields are written together under a tiny mutex-free sequence (a handle
 * copies them at create time; kiln_log reads them at log time). */
static _Atomic(kiln_log_fn) default_fn; /* NULL (static); clang rejects "= NULL" here */
static _Atomic(void *) default_user = NULL;
static _Atomic int32_t default_level = KILN_LOG_ERROR;

void kiln_log_set_default(kiln_log_fn fn, void *user, int32_t max_level) {
    atomic_store(&default_user, user);
    atomic_store(&default_level, max_level);
    atomic_store(&default_fn, fn);
}

void kiln_logger_init(kiln_logger *lg, kiln_log_fn fn, void *user, int32_t level) {
    lg->fn = fn;
    lg->user = user;
    lg->level = level;
}

static void log_to_stderr(int32_t level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"error", "warn", "info", "debug"};
    const char *name = (level >= 0 && level <= 3) ? names[level] : "log";
    fprintf(stderr, "kiln %s: %s\n", name, msg);
}

void kiln_log(const kiln_logger *lg, int32_t level, const char *fmt, ...) {
    kiln_log_fn fn;
    void *user;
    int32_t max;
    if (lg && lg->fn) {
        fn = lg->fn;
        user = lg->user;
        max = lg->level;
    } else {
        fn = atomic_load(&default_fn);
        user = atomic_load(&default_user);
        max = atomic_load(&default_level);
        if (lg && lg->level > max) max = lg->level;
        if (!fn) fn = log_to_stderr;
    }
    if (level > max) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') msg[--n] = '\0';
    fn(level, msg, user);
}

/* A kiln_log_fn for backend plugins: `user` is the handle's kiln_logger, so
 * a plugin's messages go where the handle's own go (its sink, or the
 * process default, with the same level filter). */
void kiln_log_sink(int32_t level, const char *msg, void *user) {
    kiln_log((const kiln_logger *)user, level, "%s", msg ? msg : "");
}
