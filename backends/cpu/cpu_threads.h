/*
 * cpu_threads.h - the CPU backend's thread pool: persistent workers that run
 * one parallel task at a time with low dispatch latency.
 *
 * A decode step is about a hundred operations of a few microseconds each, so
 * dispatch must cost well under a microsecond when the workers are awake:
 * workers spin on a generation counter for a while after each task, then
 * sleep on a condition variable; the caller spins for completion, then
 * sleeps too. A dispatch allocates nothing.
 *
 * Ownership: kiln_cpu_threads_create() returns a pool that the caller frees
 * with kiln_cpu_threads_free() (NULL-safe), which joins every worker. A pool
 * is driven by one thread at a time (the device handle's user); distinct
 * pools are independent, there is no global state.
 */
#ifndef KILN_CPU_THREADS_H
#define KILN_CPU_THREADS_H

#include <stdint.h>

#include "kiln.h"

typedef struct kiln_cpu_threads kiln_cpu_threads;

/* The body of a parallel task: called once on every participating thread,
 * ith in [0, nth). The calling thread is ith 0. */
typedef void (*kiln_cpu_task_fn)(void *ctx, int ith, int nth);

/* Creates a pool of n_threads threads in all (the caller counts as one, so
 * n_threads - 1 workers are started); n_threads <= 0 means the number of
 * online CPUs. Returns KILN_E_OOM_HOST or KILN_E_BACKEND (thread creation
 * failed); on error nothing is left behind. */
kiln_status kiln_cpu_threads_create(int32_t n_threads, kiln_cpu_threads **out);

/* Stops and joins the workers, frees the pool. NULL-safe. */
void kiln_cpu_threads_free(kiln_cpu_threads *tp);

/* Threads of the pool, caller included (>= 1). */
int kiln_cpu_threads_count(const kiln_cpu_threads *tp);

/* Runs fn(ctx, ith, nth) on nth = min(n_use, count) threads (n_use <= 0:
 * all of them) and returns when every call has returned. With nth == 1 it
 * is a plain call on the calling thread. */
void kiln_cpu_threads_run(kiln_cpu_threads *tp, int n_use, kiln_cpu_task_fn fn, void *ctx);

#endif /* KILN_CPU_THREADS_H */
