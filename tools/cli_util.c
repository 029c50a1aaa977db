/* cli_util.c - flag parsing and JSON output for the fathom tool. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "internal.h"

static const char *find(int argc, char **argv, const char *name) {
    size_t n = strlen(name);
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], name, n) != 0) continue;
        if (argv[i][n] == '=') return argv[i] + n + 1;
        if (argv[i][n] == 0) return i + 1 < argc ? argv[i + 1] : "";
    }
    return NULL;
}

int cli_has_flag(int argc, char **argv, const char *flag) { return find(argc, argv, flag) != NULL; }

const char *cli_opt(int argc, char **argv, const char *name, const char *def) {
    const char *v = find(argc, argv, name);
    return v ? v : def;
}

long cli_opt_int(int argc, char **argv, const char *name, long def, long lo, long hi) {
    const char *v = find(argc, argv, name);
    if (!v) return def;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "fathom: %s expects an integer in [%ld, %ld], got '%s'\n", name, lo, hi, v);
        exit(2);
    }
    return x;
}

void cli_json_str(FILE *f, const char *s) { fm_json_str(f, s); }

int cli_check_flags(int argc, char **argv, const char *cmd, const char *const *known) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) continue;
        size_t len = strcspn(argv[i], "=");
        int ok = 0;
        for (const char *const *k = known; *k && !ok; k++) ok = strlen(*k) == len && !strncmp(*k, argv[i], len);
        if (!ok) {
            fprintf(stderr, "fathom %s: unknown option '%.*s' (see `fathom help`)\n", cmd, (int)len, argv[i]);
            return 1;
        }
    }
    return 0;
}
