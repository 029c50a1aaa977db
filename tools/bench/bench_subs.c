/* bench_subs.c - subcommands not written yet. */
#include <stdio.h>

#include "bench.h"

static int todo(const bench_opts *o) {
    fprintf(stderr, "fathom bench %s: not implemented yet\n", o->sub);
    return 2;
}
int bench_layer(const bench_opts *o) { return todo(o); }
int bench_model(const bench_opts *o) { return todo(o); }
