/*
 * backend.h - the registry of backends: the built-in CPU backend and
 * plugins loaded on demand with dlopen (libkiln-<name>.so).
 */
#ifndef KILN_BACKEND_REGISTRY_H
#define KILN_BACKEND_REGISTRY_H

#include "kiln_backend.h"

/* Finds (loading if needed) the backend called `name` ("cpu" when NULL or
 * ""). Plugins are searched in $KILN_BACKEND_PATH, next to libkiln.so, and
 * in the install's plugin directory; once loaded a plugin stays loaded for
 * the life of the process (unloading driver libraries is unsafe).
 * KILN_E_NOT_FOUND if no such backend, KILN_E_BACKEND if it is incompatible
 * (message says why). Thread-safe. */
kiln_status kiln_backend_find(const char *name, const kiln_backend_iface **out);

/* Reads an optional iface entry: NULL when the plugin's struct is too
 * short to contain it. */
#define KILN_BK_HAS(iface, field)                                                     \
    ((iface)->struct_size >= offsetof(kiln_backend_iface, field) + sizeof((iface)->field) && \
     (iface)->field != NULL)

#endif
