/* fathom.c - the command-line tool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fathom/fathom.h"
#include "fathom/plugin.h"
#include "cli.h"

static const char *status_word(fm_backend_status s) {
    return s == FM_BACKEND_READY ? "ready" : s == FM_BACKEND_UNAVAILABLE ? "unavailable" : "refused";
}

static void ops_list(uint64_t ops, char *buf, size_t n) {
    size_t k = 0;
    buf[0] = 0;
    for (int op = 0; op < FM_OP_COUNT; op++)
        if (ops >> op & 1) k += (size_t)snprintf(buf + k, k < n ? n - k : 0, "%s%s", k ? "," : "", fm_op_name(op));
}

static int cmd_plugins(int argc, char **argv) {
    int json = cli_has_flag(argc, argv, "--json");
    fm_ctx *ctx;
    if (fm_ctx_init(&ctx) != FM_OK) {
        fprintf(stderr, "fathom: cannot start: %s\n", ctx ? fm_ctx_error(ctx) : "out of memory");
        return 1;
    }
    int n = fm_backend_count(ctx);
    if (json) printf("{\"plugins\":[");
    for (int i = 0; i < n; i++) {
        fm_backend_info b;
        fm_backend_info_get(ctx, i, &b);
        char ops[512];
        ops_list(b.ops, ops, sizeof ops);
        if (json) {
            printf("%s{\"name\":", i ? "," : "");
            cli_json_str(stdout, b.name);
            printf(",\"version\":");
            cli_json_str(stdout, b.version);
            printf(",\"status\":\"%s\",\"reason\":", status_word(b.status));
            cli_json_str(stdout, b.reason);
            printf(",\"path\":");
            cli_json_str(stdout, b.path);
            printf(",\"device\":");
            cli_json_str(stdout, b.device);
            printf(",\"ops\":");
            cli_json_str(stdout, ops);
            printf("}");
            continue;
        }
        printf("%-10s %-8s %-11s", b.name, b.version[0] ? b.version : "-", status_word(b.status));
        if (b.status == FM_BACKEND_READY)
            printf(" %s\n%10s from %s\n%10s ops: %s\n", b.device, "", b.path, "", ops);
        else
            printf(" %s\n", b.reason);
    }
    if (json) printf("]}\n");
    fm_ctx_free(ctx);
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: fathom <command> [options]\n"
            "\n"
            "commands:\n"
            "  plugins [--json]            list every backend plugin found: name, version, status\n"
            "                              (ready / unavailable / refused, with the reason), device, ops\n"
            "  run --model DIR ...         greedy decoding with a DeepSeek-V3/V2 checkpoint (docs/cli.md)\n"
            "  check --model DIR ...       compare a model against DIR/golden.safetensors\n"
            "  demo                        every backend against the golden model, then re-placement\n"
            "  inspect FILE|DIR [--all] [--json]\n"
            "                              tensors, dtypes and metadata of a safetensors checkpoint\n"
            "  bench overhead [--nodes N] [--backend B] [--json]\n"
            "                              executor cost per node on a graph of trivial ops\n"
            "  bench gemm|experts|route|mla|layer|model ...\n"
            "                              kernels against a peer (docs/bench.md)\n"
            "  version                     print the version\n"
            "  help                        this text\n"
            "\n"
            "environment: FATHOM_PLUGIN_PATH (colon list of plugin folders, searched before the\n"
            "built-in one), FATHOM_LOG (0 errors .. 3 debug).\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("fathom %s (plugin ABI %d.%d)\n", FM_VERSION_STRING, FM_PLUGIN_ABI_MAJOR, FM_PLUGIN_ABI_MINOR);
        return 0;
    }
    if (!strcmp(cmd, "plugins")) return cmd_plugins(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) {
        if (argc >= 3 && !strcmp(argv[2], "overhead")) return cmd_bench_overhead(argc - 2, argv + 2);
        return cmd_bench(argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "run")) return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "check")) return cmd_check(argc - 1, argv + 1);
    if (!strcmp(cmd, "demo")) return cmd_demo(argc - 1, argv + 1);
    fprintf(stderr, "fathom: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
