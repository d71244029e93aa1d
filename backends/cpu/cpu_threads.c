/*
 * cpu_threads.c - the CPU backend's thread pool (see cpu_threads.h).
 *
 * Protocol. The caller publishes a loop (fn, ctx, n, grain; the claim
 * counter `next` at 0), resets the join word to (gen, open, 0 joined) and
 * bumps `gen`. A worker that sees the new generation joins by a CAS on the
 * join word, which fails once the caller has closed it or when the loop
 * already has its n_use threads; a joined worker claims chunks until none
 * are left, then counts itself done. The caller claims chunks too, closes
 * the join word when they run out, and waits only for the workers that had
 * joined. The join word carries the generation, so a worker can never join
 * a loop other than the one whose generation it saw.
 *
 * Waiting is spin-then-sleep on both sides. The sleeping side announces
 * itself (n_sleeping / caller_sleeping) with a sequentially consistent
 * store before re-checking the condition under the mutex; the waking side
 * changes the condition with a sequentially consistent read-modify-write
 * and then reads the announcement. One of the two always sees the other,
 * and the mutex closes the window between the check and the wait, so no
 * wake-up is lost and the fast path takes no lock at all.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KILN_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define KILN_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define KILN_CPU_RELAX() ((void)0)
#endif

#include "cpu_threads.h"
#include "internal.h"

/* How long a thread spins before sleeping. Long enough to bridge the gap
 * between two operations of a decode step, short enough not to burn a core
 * while the application does something else. After the first
 * KILN_CPU_SPIN_PURE_NS the spinning thread yields between checks, so that
 * on an oversubscribed machine it hands its core to a thread with work
 * (often the very thread it waits for). */
#define KILN_CPU_SPIN_NS 200000ull
#define KILN_CPU_SPIN_PURE_NS 20000ull

typedef struct kiln_cpu_worker {
    kiln_cpu_threads *tp;
} kiln_cpu_worker;

#define KILN_JOIN_CLOSED (1ull << 31)
#define KILN_JOIN_COUNT 0x7fffffffull

struct kiln_cpu_threads {
    int n;                       /* threads including the caller */
    int n_started;               /* workers actually running */
    pthread_t *threads;          /* [n - 1] */
    kiln_cpu_worker *workers;    /* [n - 1] */
    pthread_mutex_t mu;
    pthread_cond_t cv_work;      /* workers sleep here */
    pthread_cond_t cv_done;      /* the caller sleeps here */
    bool mu_ok, cv_work_ok, cv_done_ok;

    /* the current loop: written by the caller only while no worker is
     * joined (every joined worker of the previous loop has counted itself
     * done) */
    kiln_cpu_range_fn fn;
    void *ctx;
    int64_t n_items, grain;
    _Atomic int nth;             /* read by workers before they join */

    /* separate cache lines for what the caller and the workers write */
    char pad0[64];
    _Atomic uint32_t gen;
    _Atomic int stop;
    _Atomic int n_sleeping;
    char pad1[64];
    _Atomic uint64_t join;       /* gen << 32 | closed | workers joined */
    char pad2[64];
    _Atomic int64_t next;        /* next item to claim */
    char pad3[64];
    _Atomic int n_done;          /* joined workers that finished */
    _Atomic int caller_sleeping;
    char pad4[64];
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Waits until gen differs from `seen`; returns the new value. */
static uint32_t worker_wait(kiln_cpu_threads *tp, uint32_t seen) {
    uint32_t g = atomic_load_explicit(&tp->gen, memory_order_acquire);
    if (g != seen) return g;
    uint64_t t0 = now_ns();
    bool yield = false;
    for (unsigned it = 1;; it++) {
        if (yield) sched_yield();
        else KILN_CPU_RELAX();
        g = atomic_load_explicit(&tp->gen, memory_order_acquire);
        if (g != seen) return g;
        if (yield || (it & 63u) == 0) {
            uint64_t dt = now_ns() - t0;
            if (dt > KILN_CPU_SPIN_NS) break;
            yield = dt > KILN_CPU_SPIN_PURE_NS;
        }
    }
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add(&tp->n_sleeping, 1);
    while ((g = atomic_load(&tp->gen)) == seen) pthread_cond_wait(&tp->cv_work, &tp->mu);
    atomic_fetch_sub(&tp->n_sleeping, 1);
    pthread_mutex_unlock(&tp->mu);
    return g;
}

/* Claims and runs chunks until the loop has none left. */
static void run_chunks(kiln_cpu_threads *tp, int slot) {
    const int64_t n = tp->n_items, grain = tp->grain;
    for (;;) {
        int64_t b = atomic_fetch_add_explicit(&tp->next, grain, memory_order_relaxed);
        if (b >= n) break;
        tp->fn(tp->ctx, slot, b, b + grain < n ? b + grain : n);
    }
}

static void *worker_main(void *arg) {
    kiln_cpu_worker *w = arg;
    kiln_cpu_threads *tp = w->tp;
    uint32_t seen = 0;
    for (;;) {
        seen = worker_wait(tp, seen);
        if (atomic_load_explicit(&tp->stop, memory_order_acquire)) break;
        /* join loop `seen` unless it is closed, full, or already replaced */
        uint64_t j = atomic_load_explicit(&tp->join, memory_order_acquire);
        int slot = -1;
        while ((uint32_t)(j >> 32) == seen && !(j & KILN_JOIN_CLOSED)) {
            uint64_t count = j & KILN_JOIN_COUNT;
            if ((int64_t)count + 1 >= atomic_load_explicit(&tp->nth, memory_order_relaxed)) break;
            if (atomic_compare_exchange_weak_explicit(&tp->join, &j, j + 1, memory_order_acq_rel,
                                                      memory_order_acquire)) {
                slot = (int)count + 1;
                break;
            }
        }
        if (slot < 0) continue;
        run_chunks(tp, slot);
        atomic_fetch_add(&tp->n_done, 1);
        if (atomic_load(&tp->caller_sleeping)) {
            pthread_mutex_lock(&tp->mu);
            pthread_cond_signal(&tp->cv_done);
            pthread_mutex_unlock(&tp->mu);
        }
    }
    return NULL;
}

static void wake_workers(kiln_cpu_threads *tp) {
    if (atomic_load(&tp->n_sleeping) > 0) {
        pthread_mutex_lock(&tp->mu);
        pthread_cond_broadcast(&tp->cv_work);
        pthread_mutex_unlock(&tp->mu);
    }
}

/* Waits until `joined` workers have counted themselves done. */
static void wait_done(kiln_cpu_threads *tp, int joined) {
    if (atomic_load_explicit(&tp->n_done, memory_order_acquire) == joined) return;
    uint64_t t0 = now_ns();
    bool yield = false;
    for (unsigned it = 1;; it++) {
        if (yield) sched_yield();
        else KILN_CPU_RELAX();
        if (atomic_load_explicit(&tp->n_done, memory_order_acquire) == joined) return;
        if (yield || (it & 63u) == 0) {
            uint64_t dt = now_ns() - t0;
            if (dt > KILN_CPU_SPIN_NS) break;
            yield = dt > KILN_CPU_SPIN_PURE_NS;
        }
    }
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->caller_sleeping, 1);
    while (atomic_load(&tp->n_done) != joined) pthread_cond_wait(&tp->cv_done, &tp->mu);
    atomic_store(&tp->caller_sleeping, 0);
    pthread_mutex_unlock(&tp->mu);
}

static void stop_workers(kiln_cpu_threads *tp) {
    if (tp->n_started == 0) return;
    atomic_store(&tp->stop, 1);
    atomic_fetch_add(&tp->gen, 1); /* workers wake, see stop, exit */
    pthread_mutex_lock(&tp->mu);
    pthread_cond_broadcast(&tp->cv_work);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 0; i < tp->n_started; i++) pthread_join(tp->threads[i], NULL);
    tp->n_started = 0;
}

void kiln_cpu_threads_free(kiln_cpu_threads *tp) {
    if (!tp) return;
    stop_workers(tp);
    if (tp->cv_done_ok) pthread_cond_destroy(&tp->cv_done);
    if (tp->cv_work_ok) pthread_cond_destroy(&tp->cv_work);
    if (tp->mu_ok) pthread_mutex_destroy(&tp->mu);
    kiln_free(tp->workers);
    kiln_free(tp->threads);
    kiln_free(tp);
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    return n > 1024 ? 1024 : (int)n;
}

kiln_status kiln_cpu_threads_create(int32_t n_threads, kiln_cpu_threads **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "cpu threads: out is NULL");
    *out = NULL;
    int n = n_threads > 0 ? n_threads : online_cpus();
    if (n > 1024) n = 1024;

    kiln_cpu_threads *tp = kiln_calloc(1, sizeof *tp);
    if (!tp) return kiln_error(KILN_E_OOM_HOST, "cpu threads: out of memory for the pool");
    tp->n = n;
    if (n > 1) {
        tp->threads = kiln_calloc((size_t)(n - 1), sizeof *tp->threads);
        tp->workers = kiln_calloc((size_t)(n - 1), sizeof *tp->workers);
        if (!tp->threads || !tp->workers) {
            kiln_cpu_threads_free(tp);
            return kiln_error(KILN_E_OOM_HOST, "cpu threads: out of memory for %d workers", n - 1);
        }
    }
    tp->mu_ok = pthread_mutex_init(&tp->mu, NULL) == 0;
    tp->cv_work_ok = tp->mu_ok && pthread_cond_init(&tp->cv_work, NULL) == 0;
    tp->cv_done_ok = tp->cv_work_ok && pthread_cond_init(&tp->cv_done, NULL) == 0;
    if (!tp->cv_done_ok) {
        kiln_cpu_threads_free(tp);
        return kiln_error(KILN_E_BACKEND, "cpu threads: cannot create a mutex or condition variable");
    }

    /* Workers block every signal: the host application's handlers must run
     * on its own threads, never on ours. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    for (int i = 0; i < n - 1; i++) {
        tp->workers[i].tp = tp;
        err = pthread_create(&tp->threads[i], NULL, worker_main, &tp->workers[i]);
        if (err != 0) break;
        tp->n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        kiln_cpu_threads_free(tp);
        return kiln_error(err == EAGAIN ? KILN_E_OOM_HOST : KILN_E_BACKEND,
                          "cpu threads: cannot start worker thread (error %d)", err);
    }
    *out = tp;
    return KILN_OK;
}

int kiln_cpu_threads_count(const kiln_cpu_threads *tp) { return tp ? tp->n : 1; }

void kiln_cpu_threads_for(kiln_cpu_threads *tp, int n_use, int64_t n, int64_t grain, kiln_cpu_range_fn fn,
                          void *ctx) {
    if (n <= 0) return;
    int nth = n_use <= 0 || n_use > tp->n ? tp->n : n_use;
    if (grain < 1) grain = 1;
    if (nth <= 1 || n <= grain) {
        fn(ctx, 0, 0, n);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    tp->n_items = n;
    tp->grain = grain;
    atomic_store_explicit(&tp->nth, nth, memory_order_relaxed);
    atomic_store_explicit(&tp->next, 0, memory_order_relaxed);
    atomic_store_explicit(&tp->n_done, 0, memory_order_relaxed);
    uint32_t g = atomic_load_explicit(&tp->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&tp->join, (uint64_t)g << 32, memory_order_release);
    atomic_store(&tp->gen, g); /* seq_cst: publishes the loop */
    wake_workers(tp);
    run_chunks(tp, 0);
    /* no chunk is left: close the loop to latecomers, wait for the rest */
    uint64_t j = atomic_fetch_or(&tp->join, KILN_JOIN_CLOSED);
    wait_done(tp, (int)(j & KILN_JOIN_COUNT));
}
