/* cli_overhead.c - `fathom bench overhead`: the executor's cost per node.
 * A chain of N trivial nodes (ADD of two 16-float rows) runs through one
 * session; we report the whole run per node, the time inside the backend's
 * compute call (as the executor times it), and the difference. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "fathom/fathom.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int cmd_bench_overhead(int argc, char **argv) {
    static const char *const known[] = {"--nodes", "--backend", "--json", "--runs", NULL};
    if (cli_check_flags(argc, argv, "bench overhead", known)) return 2;
    int nodes = (int)cli_opt_int(argc, argv, "--nodes", 1000, 1, 1000000);
    int runs = (int)cli_opt_int(argc, argv, "--runs", 15, 5, 100000);
    const char *backend = cli_opt(argc, argv, "--backend", "ref");
    int json = cli_has_flag(argc, argv, "--json");

    fm_ctx *ctx;
    if (fm_ctx_init(&ctx) != FM_OK) {
        fprintf(stderr, "fathom: cannot start\n");
        return 1;
    }
    int rc = 1;
    fm_graph *g = NULL;
    fm_session *s = NULL;
    static float zeros[16], one[16];
    for (int i = 0; i < 16; i++) one[i] = 1.0f;
    fm_graph_init(ctx, &g);
    int64_t ne[2] = {1, 16};
    fm_tensor *x = fm_input(g, "x", FM_F32, 2, ne);
    fm_tensor *c = fm_weight(g, "zeros", FM_F32, 2, ne, zeros, NULL);
    fm_tensor *y = x;
    for (int i = 0; i < nodes; i++) y = fm_add(g, y, c);
    fm_graph_output(g, y);
    if (fm_graph_status(g) != FM_OK || fm_session_init(ctx, g, backend, NULL, 0, &s) != FM_OK ||
        fm_session_set_input(s, x, one, sizeof one) != FM_OK) {
        fprintf(stderr, "fathom bench overhead: %s\n", fm_ctx_error(ctx));
        goto out;
    }
    uint64_t *t = calloc((size_t)runs, sizeof *t);
    if (!t) goto out;
    for (int r = -2; r < runs; r++) { /* two warm-up runs */
        uint64_t t0 = now_ns();
        if (fm_session_run(s) != FM_OK) {
            fprintf(stderr, "fathom bench overhead: %s\n", fm_ctx_error(ctx));
            free(t);
            goto out;
        }
        if (r >= 0) t[r] = now_ns() - t0;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_u64);
    double med = (double)t[runs / 2], per = med / nodes;
    uint64_t kernel = 0;
    const char *ran = "?";
    for (int i = 0; i < nodes; i++) {
        fm_node_stat st;
        fm_session_node_stat(s, i, &st);
        kernel += st.time_ns;
        ran = st.backend;
    }
    double per_kernel = (double)kernel / nodes;
    if (json)
        printf("{\"bench\":\"overhead\",\"backend\":\"%s\",\"ran_on\":\"%s\",\"nodes\":%d,\"runs\":%d,\"run_us\":%.3f,"
               "\"per_node_us\":%.4f,\"kernel_per_node_us\":%.4f,\"executor_per_node_us\":%.4f,"
               "\"target_per_node_us\":2.0,\"unit\":\"us/node\"}\n",
               backend, ran, nodes, runs, med / 1e3, per / 1e3, per_kernel / 1e3, (per - per_kernel) / 1e3);
    else
        printf("executor overhead, placement '%s', nodes ran on '%s': %d nodes (add of 16 floats), median of %d runs\n"
               "  whole run          %10.3f us\n"
               "  per node           %10.4f us/node  (target <= 2 us/node)\n"
               "  in the kernel call %10.4f us/node  (timed around compute)\n"
               "  executor's share   %10.4f us/node\n",
               backend, ran, nodes, runs, med / 1e3, per / 1e3, per_kernel / 1e3, (per - per_kernel) / 1e3);
    free(t);
    rc = 0;
out:
    fm_session_free(s);
    fm_graph_free(g);
    fm_ctx_free(ctx);
    return rc;
}
