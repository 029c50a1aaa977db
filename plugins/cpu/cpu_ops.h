/* cpu_ops.h - op dispatch of the cpu backend (cpu_ops.c) and the op kernels'
 * entry points in cpu_ops.c, cpu_moe.c and cpu_mla.c. */
#ifndef FM_CPU_OPS_H
#define FM_CPU_OPS_H

#include "cpu.h"

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
