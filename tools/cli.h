/* cli.h - shared pieces of the fathom command-line tool. */
#ifndef FM_CLI_H
#define FM_CLI_H

#include <stdio.h>

int         cli_has_flag(int argc, char **argv, const char *flag);
/* Value of "--name VALUE" or "--name=VALUE", else def. */
const char *cli_opt(int argc, char **argv, const char *name, const char *def);
/* Exits with a message naming the flag unless value is an integer in [lo, hi]. */
long        cli_opt_int(int argc, char **argv, const char *name, long def, long lo, long hi);
void        cli_json_str(FILE *f, const char *s);
/* Rejects any "--flag" not in the NULL-terminated list known; returns 0 if all known. */
int         cli_check_flags(int argc, char **argv, const char *cmd, const char *const *known);

int cmd_bench_overhead(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

#endif
