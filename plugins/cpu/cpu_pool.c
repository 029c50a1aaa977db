/* cpu_pool.c - a small persistent thread pool.
 *
 * n threads in all: the caller of cpu_pool_run is thread 0, workers 1..n-1 are
 * pthreads bound to one physical core each (hwloc): worker i to the i-th core
 * after the caller's current one, re-bound when a job finds the caller moved
 * (so the caller, which the pool does not bind, never shares a worker's core). A job is published by
 * bumping a generation counter; workers spin on it for a while (a decode step
 * issues many short jobs back to back) and then sleep on it with a futex. The
 * caller runs its own share, then waits (spin, then futex) for the others.
 * Jobs never nest: a task must not call cpu_pool_run.
 * Fork: a child process has none of the parent's workers (a test framework that
 * forks per test, a host that forks after init); the first job in the child
 * starts a new set (pthread_atfork bumps a generation the pool compares).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <hwloc.h>

#include "cpu.h"

#define SPIN_WORKER 4000  /* pause loops before sleeping (~0.1 ms) */
#define SPIN_CALLER 50000 /* the caller waits for a job in progress: longer */

typedef struct worker {
    struct cpu_pool *p;
    int tid;
    pthread_t th;
} worker;

static _Atomic unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { atomic_fetch_add(&fork_gen, 1); }
static void register_fork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

struct cpu_pool {
    int n;
    int pin;
    unsigned fork_gen;        /* fork generation the workers belong to */
    worker *w;
    hwloc_topology_t topo;
    int have_topo;
    int ncores;
    int caller_cpu;           /* OS cpu the workers' binding was computed for */
    _Atomic uint32_t gen;     /* futex word: job generation */
    _Atomic int32_t pending;  /* futex word: workers still running the job */
    _Atomic int sleepers;
    _Atomic int caller_sleeps;
    _Atomic int stop;
    cpu_task fn;
    void *arg;
    /* cpu_pool_for */
    _Atomic int64_t next;
    int64_t n_items;
    cpu_item_fn item_fn;
    void *item_arg;
};

static long futex(void *addr, int op, int val) { return syscall(SYS_futex, addr, op, val, NULL, NULL, 0); }

static inline void relax(void) { __builtin_ia32_pause(); }

static void *worker_main(void *arg) {
    worker *w = arg;
    cpu_pool *p = w->p;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN_WORKER) {
                relax();
                continue;
            }
            atomic_fetch_add(&p->sleepers, 1);
            if (atomic_load(&p->gen) == seen) futex(&p->gen, FUTEX_WAIT_PRIVATE, (int)seen);
            atomic_fetch_sub(&p->sleepers, 1);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        p->fn(p->arg, w->tid, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeps))
            futex(&p->pending, FUTEX_WAKE_PRIVATE, 1);
    }
    return NULL;
}

/* Worker i on the i-th core after the caller's (wrapping when oversubscribed). */
static void bind_workers(cpu_pool *p) {
    if (p->ncores <= 0 || p->n < 2) return;
    int cpu = sched_getcpu();
    if (cpu == p->caller_cpu) return;
    p->caller_cpu = cpu;
    int base = 0;
    hwloc_obj_t pu = cpu >= 0 ? hwloc_get_pu_obj_by_os_index(p->topo, (unsigned)cpu) : NULL;
    hwloc_obj_t core = pu ? hwloc_get_ancestor_obj_by_type(p->topo, HWLOC_OBJ_CORE, pu) : NULL;
    if (core) base = (int)core->logical_index;
    for (int i = 1; i < p->n; i++) {
        hwloc_obj_t c = hwloc_get_obj_by_type(p->topo, HWLOC_OBJ_CORE, (unsigned)((base + i) % p->ncores));
        if (c && c->cpuset) hwloc_set_thread_cpubind(p->topo, p->w[i].th, c->cpuset, 0);
    }
}

/* Starts workers 1..n-1; returns how many threads run (the caller counts). */
static int start_workers(cpu_pool *p, char *why, size_t whyn) {
    atomic_store(&p->gen, 0);
    atomic_store(&p->pending, 0);
    atomic_store(&p->sleepers, 0);
    atomic_store(&p->caller_sleeps, 0);
    atomic_store(&p->stop, 0);
    for (int i = 1; i < p->n; i++) {
        p->w[i].p = p;
        p->w[i].tid = i;
        int rc = pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]);
        if (rc) {
            if (why) snprintf(why, whyn, "pthread_create: %s", strerror(rc));
            return i;
        }
    }
    p->caller_cpu = -1;
    bind_workers(p);
    return p->n;
}

/* In a forked child the workers are gone: start new ones (or run alone). */
static void after_fork(cpu_pool *p) {
    p->fork_gen = atomic_load(&fork_gen);
    int started = start_workers(p, NULL, 0);
    if (started < p->n) {
        atomic_store(&p->stop, 1);
        atomic_fetch_add(&p->gen, 1);
        futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
        for (int i = 1; i < started; i++) pthread_join(p->w[i].th, NULL);
        p->n = 1;
    }
}

int cpu_pool_size(const cpu_pool *p) { return p ? p->n : 1; }

int cpu_pool_create(cpu_pool **out, int n, int pin, char *why, size_t whyn) {
    *out = NULL;
    if (n < 1) n = 1;
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(why, whyn, "out of memory");
        return -1;
    }
    p->n = n;
    p->w = calloc((size_t)n, sizeof *p->w);
    if (!p->w) {
        free(p);
        snprintf(why, whyn, "out of memory");
        return -1;
    }
    pthread_once(&fork_once, register_fork);
    p->fork_gen = atomic_load(&fork_gen);
    p->pin = pin;
    int ncores = 0;
    if (pin && !hwloc_topology_init(&p->topo)) {
        if (!hwloc_topology_load(p->topo)) {
            p->have_topo = 1;
            ncores = hwloc_get_nbobjs_by_type(p->topo, HWLOC_OBJ_CORE);
        } else {
            hwloc_topology_destroy(p->topo);
        }
    }
    p->ncores = ncores;
    int started = start_workers(p, why, whyn);
    if (started < n) {
        p->n = started;
        cpu_pool_destroy(p);
        return -1;
    }
    *out = p;
    return 0;
}

void cpu_pool_destroy(cpu_pool *p) {
    if (!p) return;
    if (p->fork_gen != atomic_load(&fork_gen)) p->n = 1; /* the workers stayed in the parent */
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
    for (int i = 1; i < p->n; i++) pthread_join(p->w[i].th, NULL);
    if (p->have_topo) hwloc_topology_destroy(p->topo);
    free(p->w);
    free(p);
}

void cpu_pool_run(cpu_pool *p, cpu_task fn, void *arg) {
    if (p && p->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed)) after_fork(p);
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    bind_workers(p);
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: pairs with the workers' sleepers++ */
    if (atomic_load(&p->sleepers) > 0) futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
    fn(arg, 0, p->n);
    int spins = 0;
    int32_t left;
    while ((left = atomic_load_explicit(&p->pending, memory_order_acquire)) > 0) {
        if (++spins < SPIN_CALLER) {
            relax();
            continue;
        }
        atomic_store(&p->caller_sleeps, 1);
        left = atomic_load(&p->pending);
        if (left > 0) futex(&p->pending, FUTEX_WAIT_PRIVATE, left);
        atomic_store(&p->caller_sleeps, 0);
    }
}

static void for_task(void *arg, int tid, int nt) {
    (void)nt;
    cpu_pool *p = arg;
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_items) break;
        p->item_fn(p->item_arg, i, tid);
    }
}

void cpu_pool_for(cpu_pool *p, int64_t n_items, cpu_item_fn fn, void *arg) {
    if (n_items <= 0) return;
    if (p && p->fork_gen != atomic_load_explicit(&fork_gen, memory_order_relaxed)) after_fork(p);
    if (!p || p->n == 1 || n_items == 1) {
        for (int64_t i = 0; i < n_items; i++) fn(arg, i, 0);
        return;
    }
    atomic_store(&p->next, 0);
    p->n_items = n_items;
    p->item_fn = fn;
    p->item_arg = arg;
    cpu_pool_run(p, for_task, p);
}
