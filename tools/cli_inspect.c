/* cli_inspect.c - `fathom inspect`: what a safetensors checkpoint holds, without
 * reading its data (the files are mapped, not copied). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "safetensors.h"

int cmd_inspect(int argc, char **argv) {
    static const char *const known[] = {"--all", "--json", NULL};
    if (cli_check_flags(argc, argv, "inspect", known)) return 2;
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "fathom inspect: expects a .safetensors file, an index .json or a model folder\n");
        return 2;
    }
    char err[1024];
    fm_st *st;
    fm_status s = fm_st_open(argv[1], &st, err, sizeof err);
    if (s != FM_OK) {
        fprintf(stderr, "fathom inspect: %s\n", err);
        return 1;
    }
    int n = fm_st_count(st), all = cli_has_flag(argc, argv, "--all"), json = cli_has_flag(argc, argv, "--json");
    uint64_t bytes[FM_DTYPE_COUNT] = {0}, total = 0;
    int count[FM_DTYPE_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        const fm_st_tensor *t = fm_st_at(st, i);
        bytes[t->dtype] += t->nbytes;
        count[t->dtype]++;
        total += t->nbytes;
    }
    if (json) {
        printf("{\"path\":");
        cli_json_str(stdout, argv[1]);
        printf(",\"tensors\":%d,\"bytes\":%llu,\"dtypes\":{", n, (unsigned long long)total);
        for (int d = 0, first = 1; d < FM_DTYPE_COUNT; d++)
            if (count[d]) {
                printf("%s\"%s\":{\"tensors\":%d,\"bytes\":%llu}", first ? "" : ",", fm_st_dtype_str(d), count[d],
                       (unsigned long long)bytes[d]);
                first = 0;
            }
        printf("}}\n");
    } else {
        printf("%s: %d tensors, %llu bytes (%.3f GiB) of data, mapped read-only\n", argv[1], n,
               (unsigned long long)total, total / 1073741824.0);
        for (int d = 0; d < FM_DTYPE_COUNT; d++)
            if (count[d])
                printf("  %-8s %6d tensors %16llu bytes\n", fm_st_dtype_str(d), count[d], (unsigned long long)bytes[d]);
        for (int i = 0; i < fm_st_metadata_count(st); i++) {
            const char *k, *v;
            fm_st_metadata_at(st, i, &k, &v);
            printf("  metadata %s = %.100s%s\n", k, v, strlen(v) > 100 ? "..." : "");
        }
        int show = all ? n : (n < 20 ? n : 20);
        for (int i = 0; i < show; i++) {
            const fm_st_tensor *t = fm_st_at(st, i);
            printf("  %-60s %-8s [", t->name, fm_st_dtype_str(t->dtype));
            for (int k = 0; k < t->ndim; k++) printf("%s%lld", k ? ", " : "", (long long)t->ne[k]);
            printf("]\n");
        }
        if (show < n) printf("  ... %d more (--all lists every tensor)\n", n - show);
    }
    fm_st_close(st);
    return 0;
}
