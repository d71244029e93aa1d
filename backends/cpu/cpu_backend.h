/*
 * cpu_backend.h - the built-in CPU backend, as the core's backend registry
 * sees it: one kiln_backend_iface (see kiln_backend.h for the contract).
 *
 * The CPU backend is the reference every other backend is tested against:
 * one device ("cpu", host memory), a thread pool per device handle, F32
 * activations, F16 KV cells, operations that run synchronously on the
 * calling thread plus the handle's workers.
 */
#ifndef KILN_CPU_BACKEND_H
#define KILN_CPU_BACKEND_H

#include "kiln_backend.h"

/* The CPU backend's iface: a static table, valid for the process's life. */
const kiln_backend_iface *kiln_cpu_backend_iface(void);

#endif /* KILN_CPU_BACKEND_H */
