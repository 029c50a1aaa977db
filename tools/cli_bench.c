/* cli_bench.c - `fathom bench <sub>`: kernels against peers (tools/bench). */
#include "cli.h"
#include "bench/bench.h"

int cmd_bench(int argc, char **argv) { return fm_bench_main(argc, argv); }
