/*
 * cpu_threads.h - the CPU backend's thread pool: persistent workers that run
 * one parallel loop at a time with low dispatch latency.
 *
 * A decode step is about a hundred operations of a few microseconds each, so
 * dispatch must cost well under a microsecond when the workers are awake:
 * workers spin on a generation counter for a while after each loop, then
 * sleep on a condition variable; the caller spins for completion, then
 * sleeps too. A dispatch allocates nothing.
 *
 * Work is handed out dynamically: the range [0, n) is claimed in chunks of
 * `grain` from an atomic counter by whichever threads are running. The
 * calling thread always takes part; a worker that has not joined by the
 * time the caller runs out of chunks is left out of that loop, so a worker
 * the OS has descheduled (a busy machine) never delays the caller.
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

/* Processes items [begin, end). `slot` identifies the calling thread
 * within this loop: unique among the threads running it at the same time,
 * in [0, n_use); the calling thread is slot 0. Per-thread scratch is
 * indexed by slot. */
typedef void (*kiln_cpu_range_fn)(void *ctx, int slot, int64_t begin, int64_t end);

/* Creates a pool of n_threads threads in all (the caller counts as one, so
 * n_threads - 1 workers are started); n_threads <= 0 means the number of
 * online CPUs. Returns KILN_E_OOM_HOST or KILN_E_BACKEND (thread creation
 * failed); on error nothing is left behind. */
kiln_status kiln_cpu_threads_create(int32_t n_threads, kiln_cpu_threads **out);

/* Stops and joins the workers, frees the pool. NULL-safe. */
void kiln_cpu_threads_free(kiln_cpu_threads *tp);

/* Threads of the pool, caller included (>= 1). */
int kiln_cpu_threads_count(const kiln_cpu_threads *tp);

/* Calls fn over [0, n) in chunks of `grain` (>= 1) on up to n_use threads
 * (n_use <= 0 or > count: all), returning when every item is done. With
 * n_use == 1 it is a plain call fn(ctx, 0, 0, n) on the calling thread. */
void kiln_cpu_threads_for(kiln_cpu_threads *tp, int n_use, int64_t n, int64_t grain, kiln_cpu_range_fn fn,
                          void *ctx);

#endif /* KILN_CPU_THREADS_H */
