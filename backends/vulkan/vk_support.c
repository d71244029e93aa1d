/*
 * vk_support.c - the plugin's own copies of the core helpers of
 * lib/internal.h (errors, logging, host allocation). libkiln keeps its
 * helpers hidden, so the plugin cannot call them; these have the same names
 * and contracts, hidden inside libkiln-vulkan.so.
 *
 * Errors: the message is kept in this thread's buffer and, once the core
 * has passed its services (the iface's set_host, kiln_bk_host), forwarded
 * to its set_error, so the caller's kiln_last_error() names what failed in
 * the plugin. Host memory stays the plugin's own (malloc): the process-wide
 * state it keeps (the VkInstance, a CPU device kept open) must not count as
 * live bytes of any handle.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

static _Thread_local char tls_error[512];
typedef kiln_status (*host_error_fn)(kiln_status status, const char *message);
static _Atomic(host_error_fn) host_error;

void kiln_vk_set_host(const kiln_bk_host *host) {
    host_error_fn fn = NULL;
    if (host && host->struct_size >= offsetof(kiln_bk_host, set_error) + sizeof host->set_error) fn = host->set_error;
    atomic_store(&host_error, fn);
}

kiln_status kiln_verror(kiln_status status, const char *fmt, va_list ap) {
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    host_error_fn fn = atomic_load(&host_error);
    if (fn) fn(status, tls_error);
    return status;
}

kiln_status kiln_error(kiln_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kiln_verror(status, fmt, ap);
    va_end(ap);
    return status;
}

void kiln_error_clear(void) { tls_error[0] = '\0'; }

void kiln_logger_init(kiln_logger *lg, kiln_log_fn fn, void *user, int32_t level) {
    lg->fn = fn;
    lg->user = user;
    lg->level = level;
}

void kiln_log(const kiln_logger *lg, int32_t level, const char *fmt, ...) {
    /* the core always passes a sink (kiln_bk_open_params.log_fn) */
    if (!lg || !lg->fn || level > lg->level) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lg->fn(level, msg, lg->user);
}

void *kiln_malloc(size_t size) { return malloc(size ? size : 1); }
void *kiln_calloc(size_t n, size_t size) { return calloc(n ? n : 1, size ? size : 1); }
void *kiln_realloc(void *p, size_t size) { return realloc(p, size ? size : 1); }
void kiln_free(void *p) { free(p); }

kiln_status kiln_vk_result(VkResult r, const char *what) {
    switch (r) {
    case VK_SUCCESS: return KILN_OK;
    case VK_ERROR_OUT_OF_HOST_MEMORY:
        return kiln_error(KILN_E_OOM_HOST, "vulkan: %s: out of host memory", what);
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
        return kiln_error(KILN_E_OOM_DEVICE, "vulkan: %s: out of device memory", what);
    case VK_ERROR_DEVICE_LOST: return kiln_error(KILN_E_BACKEND, "vulkan: %s: device lost", what);
    default: return kiln_error(KILN_E_BACKEND, "vulkan: %s failed (VkResult %d)", what, (int)r);
    }
}

bool kiln_vk_type_geometry(int32_t type, uint32_t *block_elems, uint32_t *block_bytes) {
    static const struct { int32_t type; uint32_t elems, bytes; } g[] = {
        {KILN_VK_T_F32, 1, 4},    {KILN_VK_T_F16, 1, 2},    {KILN_VK_T_BF16, 1, 2},   {KILN_VK_T_Q4_0, 32, 18},
        {KILN_VK_T_Q4_1, 32, 20}, {KILN_VK_T_Q5_0, 32, 22}, {KILN_VK_T_Q5_1, 32, 24}, {KILN_VK_T_Q8_0, 32, 34},
        {KILN_VK_T_Q4_K, 256, 144}, {KILN_VK_T_Q5_K, 256, 176}, {KILN_VK_T_Q6_K, 256, 210},
    };
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
        if (g[i].type == type) {
            *block_elems = g[i].elems;
            *block_bytes = g[i].bytes;
            return true;
        }
    return false;
}

/* Same order as the mm_ / mmsg_ / getrows_ pipeline groups (vk_pipeline.c). */
static const int32_t slot_types[11] = {KILN_VK_T_F32,  KILN_VK_T_F16,  KILN_VK_T_BF16, KILN_VK_T_Q4_0,
                                       KILN_VK_T_Q4_1, KILN_VK_T_Q5_0, KILN_VK_T_Q5_1, KILN_VK_T_Q8_0,
                                       KILN_VK_T_Q4_K, KILN_VK_T_Q5_K, KILN_VK_T_Q6_K};
static const char *const slot_names[11] = {"f32",  "f16",  "bf16", "q4_0", "q4_1", "q5_0",
                                           "q5_1", "q8_0", "q4_K", "q5_K", "q6_K"};

int kiln_vk_type_slot(int32_t type) {
    for (int i = 0; i < 11; i++)
        if (slot_types[i] == type) return i;
    return -1;
}

const char *kiln_vk_type_name(int32_t type) {
    int s = kiln_vk_type_slot(type);
    return s < 0 ? "unsupported type" : slot_names[s];
}
