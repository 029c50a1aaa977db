/* bench.h - `fathom bench <sub>`: Fathom's kernels against a peer (docs/bench.md).
 *
 * fm_bench_main(argc, argv): argv[0] is "bench", argv[1] the subcommand (gemm,
 * experts, route, mla, layer, model). Returns a process exit status. */
#ifndef FM_BENCH_H
#define FM_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "fathom/plugin.h"

int fm_bench_main(int argc, char **argv);

/* ---- internal to tools/bench ---- */

typedef struct bench_opts {
    const char *sub;
    int64_t m, n, k;          /* gemm shape: y[m, n] = x[m, k] w[n, k]^T */
    int dtype;                /* fm_dtype of the weights */
    int threads;              /* 0 = the backend's default (one per core) */
    const char *backend;      /* "cpu" */
    const char *isa;          /* cpu control "isa" (e.g. avx512bf16 = bf16 compute), NULL = default */
    int runs, warmup;
    int burst;                /* calls per timed run, back to back (0: the subcommand's default) */
    int json;
    int direct;               /* drive the plugin directly instead of the public API */
    const char *peer;         /* "auto", "openblas", "blis", "none" */
    int act_quant;            /* fp8: DeepSeek activation quantization */
    /* experts / route / mla / layer / model */
    int experts, active, tokens, hidden, inter, groups, topk_groups;
    int heads, kv_lora, rope, nope, vdim, ctx_len;
    int cache_dtype;          /* mla: the latent cache's fm_dtype (f32 or bf16) */
    int sets;                 /* mla: data sets rotated through (0: enough to leave the caches cold) */
    int bw_mib;               /* bandwidth probe buffer */
    /* model: --model DIR (NULL: a generated random-weight checkpoint), its shape otherwise */
    const char *model;
    int prompt_len, decode, layers, dense_layers, q_lora, vocab, shared, dense_inter;
} bench_opts;

/* The value of an e4m3 code (no NaN handling: the benches never write 0x7f or 0xff). */
float bench_e4m3(uint8_t c);
/* Monotonic time in seconds. */
double bench_now(void);
/* Median of n values (sorts a copy). */
double bench_median(const double *v, int n);
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Probes (bench_probe*.c), at `threads` threads: register-only FMA loops and a
 * streaming read of a buffer far larger than the last-level cache. 0 = unavailable. */
double bench_probe_fma_f32(int threads);   /* GFLOP/s */
double bench_probe_fma_bf16(int threads);  /* GFLOP/s, vdpbf16ps (2 FLOP per product) */
double bench_probe_bw(int threads, size_t bytes); /* GB/s */
/* The bandwidth probe as a contender of bench_interleave (one streaming pass of
 * n floats on nt threads per call): GB/s = n * 4 / median time. */
typedef struct bench_bw {
    float *buf;
    size_t n;
    int nt;
} bench_bw;
int  bench_bw_open(bench_bw *b, int threads, size_t bytes);
int  bench_bw_run(void *ctx);
void bench_bw_close(bench_bw *b);
/* The bf16 FMA probe as a contender (one pass of iters x 12 vdpbf16ps per thread, on nt
 * threads, per call): GFLOP/s = bench_fma_gflops(f, median time). */
typedef struct bench_fma {
    int nt;
    int64_t iters;
} bench_fma;
void   bench_fma_open(bench_fma *f, int threads, double seconds, double gflops_hint);
int    bench_fma_run(void *ctx);
double bench_fma_gflops(const bench_fma *f, double seconds);
/* ISA-specific bodies, called only when cpuid says the ISA is there. */
double bench_fma_loop_avx512(int64_t iters);    /* seconds for iters x 12 zmm FMAs */
double bench_bf16_loop_avx512bf16(int64_t iters);
double bench_fma_loop_avx2(int64_t iters);      /* iters x 12 ymm FMAs */
double bench_read_avx2(const float *p, size_t n); /* sum of n floats (keeps the loads live) */
int bench_cpu_has(const char *what);            /* "avx2", "avx512", "avx512bf16" */

/* BLAS peers, loaded with dlopen (bench_peer.c). */
typedef struct bench_peer {
    const char *name;         /* "openblas", "blis" */
    char lib[256];            /* the file loaded, or "" */
    char why[256];            /* why unavailable */
    void *h;
    void (*sgemm)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
    int ok;
} bench_peer;
int  bench_peer_load(bench_peer *p, const char *name, int threads);
/* The BLAS peers `which` names ("auto": OpenBLAS and BLIS) into peers[0..1]; returns how
 * many loaded (each one that did not is reported with why). */
int  bench_peers_load(const char *which, int threads, bench_peer peers[2]);
void bench_peer_unload(bench_peer *p);
/* y[m, n] = x[m, k] w[n, k]^T */
void bench_peer_gemm(const bench_peer *p, int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx,
                     const float *w, float *y, int64_t ldy);

/* "Ours": one graph (public API) or one node (plugin direct), see bench_ours.c. */
typedef struct bench_tensor {  /* a leaf or output, host data owned by the caller */
    const char *name;
    int dtype, ndim;
    int64_t ne[4];
    void *data;
    struct bench_tensor *scale; /* fp8 block scales */
    int kind;                   /* 0 input, 1 weight, 2 state, 3 output */
} bench_tensor;

typedef struct bench_ours bench_ours;
/* The op with its sources (in ops.def order; moe_experts: x, ids, weights, then
 * gate/up/down per expert), outputs and params. */
int  bench_ours_init(bench_ours **out, const bench_opts *o, int op, bench_tensor *const *src, int n_src,
                     bench_tensor *const *dst, int n_dst, const void *params, size_t params_size, char *why,
                     size_t whyn);
/* The same, on the context (or, direct, the plugin instance) of share: free it after
 * every instance sharing it. */
int  bench_ours_init_shared(bench_ours **out, bench_ours *share, const bench_opts *o, int op, bench_tensor *const *src,
                            int n_src, bench_tensor *const *dst, int n_dst, const void *params, size_t params_size,
                            char *why, size_t whyn);
int  bench_ours_run(bench_ours *b);     /* one timed unit: the node (or graph) once; 0 = ok */
int  bench_ours_read(bench_ours *b);    /* copy outputs into their bench_tensor data */
const char *bench_ours_mode(const bench_ours *b); /* "api" or "plugin" */
const char *bench_ours_device(const bench_ours *b);
const char *bench_ours_error(const bench_ours *b);
void bench_ours_free(bench_ours *b);

/* One plugin instance running arbitrary single nodes (the per-op compositions that
 * serve as peers for route and mla). Outputs are written in place. */
typedef struct bench_plugin bench_plugin;
int  bench_plugin_open(bench_plugin **out, const bench_opts *o, char *why, size_t whyn);
int  bench_plugin_run(bench_plugin *p, int op, bench_tensor *const *src, int n_src, bench_tensor *const *dst,
                      int n_dst, const void *params);
const char *bench_plugin_error(const bench_plugin *p);
void bench_plugin_close(bench_plugin *p);

/* Subcommands (bench_gemm.c, bench_moe.c, bench_mla.c, bench_layer.c, bench_model.c). */
int bench_gemm(const bench_opts *o);
int bench_experts(const bench_opts *o);
int bench_route(const bench_opts *o);
int bench_mla(const bench_opts *o);
int bench_layer(const bench_opts *o);
int bench_model(const bench_opts *o);

/* Reporting (bench.c). A result line set: printed as text or one JSON object. */
typedef struct bench_report {
    const char *bench;
    char shape[256];          /* "m=512 n=2048 k=7168 dtype=f32" */
    const char *unit;         /* "GFLOP/s", "GB/s", "tokens/s" */
    double ours, peer;
    const char *peer_name;
    double ratio;
    double fma_f32, fma_bf16, bw;
    int bw_interleaved;       /* bw: the probe ran among the contenders' runs (median), not before them */
    int bf16_interleaved;     /* fma_bf16: likewise */
    double fma_bf16_before;   /* with bf16_interleaved: the probe's figure before the runs (best of 3) */
    double bw_before;         /* with bw_interleaved: likewise */
    int threads, runs;
    const char *mode;         /* api / plugin */
    const char *device;
    /* the roofline (docs/bench.md): per call the op's FLOPs, the bytes it must read
     * at least (weights, cache, activations; the peer's when it reads other copies, 0:
     * not shown) and the median seconds of ours and of the peer; flop 0: none */
    double flop, bytes, bytes_peer, t_ours, t_peer;
    char extra_json[2048];    /* ", \"key\": value" pairs */
    char extra_text[2048];    /* additional lines */
} bench_report;
void bench_print(const bench_opts *o, const bench_report *r);
/* Runs the probes at o->threads and stores them in r. */
void bench_probes(const bench_opts *o, bench_report *r);
/* Interleaved protocol: rounds of (each contender once, order rotating); medians
 * of seconds per run into med[]. fn(ctx) returns 0 on success. */
typedef int (*bench_fn)(void *ctx);
/* Interleaved runs (docs/bench.md): warmup untimed rounds, then runs rounds of one
 * timed run per contender (order rotating, 3 ms pause before each); a timed run is
 * burst calls back to back, each timed: med[c] is the median of contender c's
 * runs x burst call times (all: n x runs x burst of them, or NULL). */
int bench_interleave(int n, bench_fn const *fn, void *const *ctx, int runs, int warmup, int burst, double *med,
                     double *all);
/* Probes run as contenders of bench_interleave, so a fraction of one compares two
 * medians taken under the same conditions (a shared machine's FMA rate and bandwidth
 * move from minute to minute). */
typedef struct bench_live {
    bench_fma f;
    bench_bw bw;
    int i_fma, i_bw;          /* their places among the contenders, or -1 */
} bench_live;
/* Appends the probes asked for to fn/ctx at *n: fma, the bf16 FMA probe (when r has
 * one); bw, the bandwidth probe (when its buffer can be had). Returns the phrase that
 * names them for a progress line ("" for none). */
const char *bench_live_add(bench_live *p, const bench_opts *o, const bench_report *r, int fma, int bw,
                           bench_fn *fn, void **ctx, int *n);
/* After the runs (med: their medians, or NULL when they failed): r's probe figures
 * become the interleaved ones, those from before the runs kept; frees the buffer. */
void bench_live_done(bench_live *p, bench_report *r, const double *med);

int bench_threads_effective(const bench_opts *o);

#endif
