/* cpu_ops.h - op dispatch of the cpu backend (cpu_ops.c) and the op kernels'
 * entry points in cpu_ops.c, cpu_moe.c and cpu_mla.c. */
#ifndef FM_CPU_OPS_H
#define FM_CPU_OPS_H

#include <stdatomic.h>

#include "cpu.h"

/* A thread's run of work units [head, tail), packed head | tail << 32: the owner takes
 * from the front, the others from the back (cpu_wq_next), so a thread preempted by
 * other work on the machine, still waking up or on a slower core delays a job by one
 * unit, not by its whole share. */
typedef struct cpu_wq {
    _Alignas(64) _Atomic uint64_t ht;
} cpu_wq;

static inline void cpu_wq_init(cpu_wq *q, int64_t head, int64_t tail) {
    atomic_init(&q->ht, (uint64_t)(uint32_t)head | (uint64_t)(uint32_t)tail << 32);
}

/* the front unit (back: the last), or -1 when the run is empty */
static inline int64_t cpu_wq_take(cpu_wq *q, int back) {
    uint64_t v = atomic_load_explicit(&q->ht, memory_order_relaxed);
    for (;;) {
        uint32_t h = (uint32_t)v, t = (uint32_t)(v >> 32);
        if (h >= t) return -1;
        uint64_t nv = back ? (uint64_t)h | (uint64_t)(t - 1) << 32 : (uint64_t)(h + 1) | (uint64_t)t << 32;
        if (atomic_compare_exchange_weak_explicit(&q->ht, &v, nv, memory_order_acq_rel, memory_order_relaxed))
            return back ? (int64_t)t - 1 : (int64_t)h;
    }
}

/* the next unit for thread tid: its own, else one from the back of another's run;
 * *owner = whose run it came from; -1 when every run is empty */
static inline int64_t cpu_wq_next(cpu_wq *q, int tid, int nt, int *owner) {
    int64_t u = cpu_wq_take(&q[tid], 0);
    if (u >= 0) return *owner = tid, u;
    for (int d = 1; d < nt; d++) {
        int v = (tid + d) % nt;
        if ((u = cpu_wq_take(&q[v], 1)) >= 0) return *owner = v, u;
    }
    return -1;
}

/* the unit the owner would take next, or -1 (a guess: another thread may take it) */
static inline int64_t cpu_wq_peek(cpu_wq *q) {
    uint64_t v = atomic_load_explicit(&q->ht, memory_order_relaxed);
    return (uint32_t)v < (uint32_t)(v >> 32) ? (int64_t)(uint32_t)v : -1;
}

CPU_HIDDEN uint64_t cpu_ops_mask(void);
CPU_HIDDEN int cpu_ops_supports(cpu_state *s, const fm_pl_node *node);
CPU_HIDDEN fm_status cpu_ops_compute(cpu_state *s, const fm_pl_node *node);
CPU_HIDDEN const char *fm_op_name_cpu(int op);

/* cpu_ops.c */
CPU_HIDDEN void cpu_rope_inv_freq(const fm_rope_params *p, float *inv_freq);
CPU_HIDDEN void cpu_rope_row(float *x, int64_t C, const fm_rope_params *p, const float *inv, int32_t pos);
/* cpu_route.c */
CPU_HIDDEN int cpu_route_supports(const fm_pl_node *nd);
CPU_HIDDEN fm_status cpu_route_node(cpu_state *s, const fm_pl_node *nd);
/* cpu_moe.c */
CPU_HIDDEN int cpu_moe_supports(const fm_pl_node *nd);
CPU_HIDDEN fm_status cpu_moe_node(cpu_state *s, const fm_pl_node *nd);
/* cpu_mla.c */
CPU_HIDDEN int cpu_mla_supports(const fm_pl_node *nd);
CPU_HIDDEN fm_status cpu_mla_node(cpu_state *s, const fm_pl_node *nd);

#endif
