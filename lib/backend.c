/*
 * backend.c - finds backends by name. The CPU backend is compiled in; the
 * others are shared objects exporting kiln_backend_entry(), loaded only
 * when a caller names them so libkiln never depends on CUDA or Vulkan.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_backend.h"
#include "internal.h"

#ifndef KILN_PLUGIN_DIR
#define KILN_PLUGIN_DIR "/usr/local/lib/kiln"
#endif

#define MAX_PLUGINS 8

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[32];
    const kiln_backend_iface *iface;
} plugins[MAX_PLUGINS];
static int n_plugins;

/* Every entry the core calls unconditionally. */
static kiln_status check_iface(const char *name, const kiln_backend_iface *b) {
    if (b->abi_version != KILN_BACKEND_ABI_VERSION)
        return kiln_error(KILN_E_BACKEND, "backend '%s': ABI version %u, expected %u", name,
                          b->abi_version, KILN_BACKEND_ABI_VERSION);
#define REQUIRE(f)                                                                          \
    if (!KILN_BK_HAS(b, f))                                                                 \
        return kiln_error(KILN_E_BACKEND, "backend '%s': required entry '%s' missing", name, #f);
    REQUIRE(device_count) REQUIRE(device_info) REQUIRE(supports_type) REQUIRE(device_open)
    REQUIRE(device_close) REQUIRE(buffer_alloc) REQUIRE(buffer_free) REQUIRE(buffer_upload)
    REQUIRE(buffer_download) REQUIRE(buffer_copy) REQUIRE(synchronize) REQUIRE(pool_stats)
    REQUIRE(pool_set_cap) REQUIRE(pool_purge) REQUIRE(set_ubatch) REQUIRE(get_rows)
    REQUIRE(rms_norm) REQUIRE(matmul) REQUIRE(add) REQUIRE(rope) REQUIRE(swiglu)
    REQUIRE(kv_store) REQUIRE(attention)
#undef REQUIRE
    return KILN_OK;
}

static kiln_status host_set_error(kiln_status status, const char *message) {
    return kiln_error(status, "%s", message ? message : "backend error");
}

/* What plugins may call back into (they cannot link libkiln's hidden
 * functions, and a statically linked libkiln exports nothing). */
static void *host_malloc(size_t n) { return kiln_malloc(n); }
static void host_free(void *p) { kiln_free(p); }

static const kiln_bk_host host_services = {sizeof(kiln_bk_host), host_set_error, host_malloc, host_free};

/* Directory containing libkiln itself, for plugins built beside it. */
static void self_dir(char *out, size_t n) {
    Dl_info info;
    out[0] = '\0';
    if (dladdr((void *)&kiln_backend_find, &info) && info.dli_fname) {
        snprintf(out, n, "%s", info.dli_fname);
        char *slash = strrchr(out, '/');
        if (slash) *slash = '\0';
        else out[0] = '\0';
    }
}

static kiln_status load_plugin(const char *name, const kiln_backend_iface **out) {
    char dirs[3][1024];
    const char *env = getenv("KILN_BACKEND_PATH");
    snprintf(dirs[0], sizeof dirs[0], "%s", env ? env : "");
    self_dir(dirs[1], sizeof dirs[1]);
    snprintf(dirs[2], sizeof dirs[2], "%s", KILN_PLUGIN_DIR);
    char path[3200];
    char last_err[256] = "not found";
    for (int i = 0; i < 3; i++) {
        if (!dirs[i][0]) continue;
        snprintf(path, sizeof path, "%s/libkiln-%s.so", dirs[i], name);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            if (e) snprintf(last_err, sizeof last_err, "%s", e);
            continue;
        }
        kiln_backend_entry_fn entry = (kiln_backend_entry_fn)dlsym(h, "kiln_backend_entry");
        const kiln_backend_iface *b = entry ? entry(KILN_BACKEND_ABI_VERSION) : NULL;
        if (!b) {
            dlclose(h);
            return kiln_error(KILN_E_BACKEND, "backend '%s': %s has no compatible kiln_backend_entry",
                              name, path);
        }
        kiln_status st = check_iface(name, b);
        if (st != KILN_OK) {
            dlclose(h);
            return st;
        }
        if (KILN_BK_HAS(b, set_host)) b->set_host(&host_services);
        *out = b; /* the handle stays open for the life of the process */
        return KILN_OK;
    }
    return kiln_error(KILN_E_NOT_FOUND, "backend '%s' not available (%s)", name, last_err);
}

kiln_status kiln_backend_find(const char *name, const kiln_backend_iface **out) {
    *out = NULL;
    if (!name || !*name || strcmp(name, "cpu") == 0) {
        *out = kiln_cpu_backend_iface();
        return KILN_OK;
    }
    if (strlen(name) >= sizeof plugins[0].name || strchr(name, '/'))
        return kiln_error(KILN_E_INVALID_ARG, "invalid backend name '%s'", name);
    pthread_mutex_lock(&registry_lock);
    kiln_status st = KILN_OK;
    for (int i = 0; i < n_plugins; i++) {
        if (strcmp(plugins[i].name, name) == 0) {
            *out = plugins[i].iface;
            goto done;
        }
    }
    if (n_plugins == MAX_PLUGINS) {
        st = kiln_error(KILN_E_BACKEND, "too many backends loaded");
        goto done;
    }
    st = load_plugin(name, out);
    if (st == KILN_OK) {
        snprintf(plugins[n_plugins].name, sizeof plugins[0].name, "%s", name);
        plugins[n_plugins].iface = *out;
        n_plugins++;
    }
done:
    pthread_mutex_unlock(&registry_lock);
    return st;
}
