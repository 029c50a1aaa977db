/* bench.c - `fathom bench`: options, the interleaved protocol, probes and the report. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

double bench_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(const double *v, int n) {
    if (n <= 0) return 0;
    double *c = malloc((size_t)n * sizeof *c);
    if (!c) return v[0];
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmpd);
    double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return m;
}

void bench_progress(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

float bench_e4m3(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    float v = e ? ldexpf((float)(8 + m), e - 10) : ldexpf((float)m, -9);
    return c & 0x80 ? -v : v;
}

int bench_threads_effective(const bench_opts *o) {
    if (o->threads > 0) return o->threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    /* the cpu backend's default is one thread per physical core; without hwloc here,
     * count logical CPUs and halve when SMT siblings are listed */
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list", "r");
    if (f) {
        char buf[64] = "";
        if (fgets(buf, sizeof buf, f) && (strchr(buf, ',') || strchr(buf, '-')) && n > 1) n /= 2;
        fclose(f);
    }
    return n > 0 ? (int)n : 1;
}

int bench_interleave(int n, bench_fn const *fn, void *const *ctx, int runs, int warmup, int burst, double *med,
                     double *all) {
    if (burst < 1) burst = 1;
    int per = runs * burst; /* calls timed per contender */
    double *t = calloc((size_t)(n * per), sizeof *t);
    if (!t) return -1;
    for (int w = 0; w < warmup; w++)
        for (int c = 0; c < n; c++)
            if (fn[c](ctx[c])) {
                free(t);
                return -1;
            }
    double t0 = bench_now(), last = t0;
    for (int r = 0; r < runs; r++) {
        for (int i = 0; i < n; i++) {
            int c = (i + r) % n; /* rotate who goes first */
            /* let the previous contender's idle threads stop spinning (ours ~0.1 ms, the
             * peers' are capped in fm_bench_main) before the clock starts */
            struct timespec gap = {0, 3000000};
            nanosleep(&gap, NULL);
            double a = bench_now();
            for (int b = 0; b < burst; b++) { /* back to back: the contender's threads stay awake */
                if (fn[c](ctx[c])) {
                    free(t);
                    return -1;
                }
                double e = bench_now();
                t[c * per + r * burst + b] = e - a;
                a = e;
            }
        }
        if (bench_now() - last > 2.0) {
            last = bench_now();
            bench_progress("round %d of %d (%.0f s)", r + 1, runs, last - t0);
        }
    }
    for (int c = 0; c < n; c++) med[c] = bench_median(t + c * per, per);
    if (all) memcpy(all, t, (size_t)(n * per) * sizeof *t);
    free(t);
    return 0;
}

void bench_probes(const bench_opts *o, bench_report *r) {
    int nt = bench_threads_effective(o);
    bench_progress("probes at %d thread%s: FMA f32, FMA bf16, bandwidth (%d MiB)", nt, nt == 1 ? "" : "s", o->bw_mib);
    r->fma_f32 = bench_probe_fma_f32(nt);
    r->fma_bf16 = bench_probe_fma_bf16(nt);
    r->bw = bench_probe_bw(nt, (size_t)o->bw_mib << 20);
}

static void json_str(const char *s) {
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 32) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

const char *bench_live_add(bench_live *p, const bench_opts *o, const bench_report *r, int fma, int bw,
                           bench_fn *fn, void **ctx, int *n) {
    p->i_fma = p->i_bw = -1;
    if (fma && r->fma_bf16 > 0) { /* passes of about 20 ms */
        bench_fma_open(&p->f, r->threads, 0.02, r->fma_bf16);
        p->i_fma = *n, fn[*n] = bench_fma_run, ctx[(*n)++] = &p->f;
    }
    if (bw && bench_bw_open(&p->bw, r->threads, (size_t)o->bw_mib << 20) == 0) /* a pass over the buffer */
        p->i_bw = *n, fn[*n] = bench_bw_run, ctx[(*n)++] = &p->bw;
    return p->i_fma >= 0 && p->i_bw >= 0 ? ", the bf16 FMA probe and the bandwidth probe"
           : p->i_fma >= 0               ? " and the bf16 FMA probe"
           : p->i_bw >= 0                ? " and the bandwidth probe"
                                         : "";
}

void bench_live_done(bench_live *p, bench_report *r, const double *med) {
    if (med && p->i_fma >= 0) {
        r->fma_bf16_before = r->fma_bf16;
        r->fma_bf16 = bench_fma_gflops(&p->f, med[p->i_fma]);
        r->bf16_interleaved = 1;
    }
    if (p->i_bw >= 0) {
        if (med) {
            r->bw_before = r->bw;
            r->bw = (double)(p->bw.n * sizeof(float)) / med[p->i_bw] * 1e-9;
            r->bw_interleaved = 1;
        }
        bench_bw_close(&p->bw);
    }
}

void bench_print(const bench_opts *o, const bench_report *r) {
    if (o->json) {
        printf("{\"bench\": ");
        json_str(r->bench);
        printf(", \"shape\": ");
        json_str(r->shape);
        printf(", \"ours\": %.6g, \"peer\": %.6g, \"peer_name\": ", r->ours, r->peer);
        json_str(r->peer_name);
        printf(", \"ratio\": %.4f, \"unit\": ", r->ratio);
        json_str(r->unit);
        printf(", \"fma_probe_gflops\": %.6g, \"bf16_probe_gflops\": %.6g, \"bw_probe_gbs\": %.6g, \"bw_probe_interleaved\": %s",
               r->fma_f32, r->fma_bf16, r->bw, r->bw_interleaved ? "true" : "false");
        printf(", \"bf16_probe_interleaved\": %s", r->bf16_interleaved ? "true" : "false");
        if (r->bf16_interleaved) printf(", \"bf16_probe_before_gflops\": %.6g", r->fma_bf16_before);
        if (r->bw_interleaved) printf(", \"bw_probe_before_gbs\": %.6g", r->bw_before);
        printf(", \"threads\": %d, \"runs\": %d, \"burst\": %d, \"backend\": ", r->threads, r->runs, o->burst);
        json_str(o->backend);
        printf(", \"mode\": ");
        json_str(r->mode ? r->mode : "");
        printf(", \"device\": ");
        json_str(r->device ? r->device : "");
        if (r->flop > 0 && r->bytes > 0 && r->t_ours > 0) {
            printf(", \"flop_per_call\": %.6g, \"bytes_per_call\": %.6g, \"flop_per_byte\": %.6g, \"ours_gflops\": %.6g",
                   r->flop, r->bytes, r->flop / r->bytes, r->flop / r->t_ours * 1e-9);
            if (r->bytes_peer > 0 && r->t_peer > 0)
                printf(", \"peer_bytes_per_call\": %.6g, \"peer_flop_per_byte\": %.6g, \"peer_gflops\": %.6g", r->bytes_peer,
                       r->flop / r->bytes_peer, r->flop / r->t_peer * 1e-9);
        }
        printf("%s}\n", r->extra_json);
        fflush(stdout);
        return;
    }
    printf("bench %s: %s, %d thread%s, %d runs each (medians", r->bench, r->shape, r->threads,
           r->threads == 1 ? "" : "s", r->runs);
    if (o->burst > 1) printf("; a run = %d calls back to back, per call", o->burst);
    printf(")\n");
    printf("  device       %s (%s)\n", r->device ? r->device : "?", r->mode ? r->mode : "?");
    printf("  ours         %10.2f %s\n", r->ours, r->unit);
    if (r->peer > 0) {
        printf("  peer         %10.2f %s  (%s)\n", r->peer, r->unit, r->peer_name);
        printf("  ratio        %10.3f x   (ours / peer)\n", r->ratio);
    } else {
        printf("  peer         unavailable (%s)\n", r->peer_name);
    }
    if (r->extra_text[0]) fputs(r->extra_text, stdout);
    if (r->flop > 0 && r->bytes > 0 && r->t_ours > 0) { /* where ours sits under the probes' roofs */
        double ai = r->flop / r->bytes, roof = r->bw * ai;
        printf("  roofline     %.3g FLOP/byte (%.4g MFLOP, %.4g MB a call): ours %.1f GFLOP/s; the roof there %.0f GFLOP/s "
               "f32, %.0f bf16\n               (the FMA probe, or the BW probe x FLOP/byte where lower)\n",
               ai, r->flop * 1e-6, r->bytes * 1e-6, r->flop / r->t_ours * 1e-9, roof < r->fma_f32 ? roof : r->fma_f32,
               roof < r->fma_bf16 ? roof : r->fma_bf16);
    }
    printf("  probe FMA    %10.2f GFLOP/s f32, %.2f GFLOP/s bf16 (vdpbf16ps)%s\n", r->fma_f32, r->fma_bf16,
           r->fma_bf16 <= 0 ? " [unavailable]" : r->bf16_interleaved ? " (bf16: a contender of the interleaved runs)" : "");
    if (r->bf16_interleaved)
        printf("               bf16 before the runs: %.2f GFLOP/s (best of 3)\n", r->fma_bf16_before);
    printf("  probe BW     %10.2f GB/s streaming read%s\n", r->bw,
           r->bw_interleaved ? " (a contender of the interleaved runs: median of its passes)" : "");
    if (r->bw_interleaved) printf("               before the runs: %.2f GB/s (best of 4)\n", r->bw_before);
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: fathom bench <gemm|experts|route|mla|layer|model> [options]\n"
            "  common:  --threads N  --backend NAME (cpu)  --runs N (>= 5, default 7)  --warmup N (1)\n"
            "           --burst N (calls per timed run, back to back, each timed; default 8 for mla and route,\n"
            "           16 for layer, 3 otherwise)\n"
            "           --json  --direct (drive the plugin without the core library)  --bw-mib N (512)\n"
            "           --isa scalar|avx2|avx512|avx512bf16 (cpu kernels; avx512bf16 = bf16 compute)\n"
            "  gemm:    --m M --n N --k K (512 2048 7168)  --dtype f32|bf16|fp8  --act-quant 0|1\n"
            "           --peer auto|openblas|blis|none\n"
            "  experts: --experts E (64) --active k (6) --tokens T (512) --hidden H (2048) --inter I (768) --dtype\n"
            "  route:   --experts E (256) --active k (8) --groups G (8) --topk-groups (4) --tokens T --hidden H\n"
            "  mla:     --heads (16) --kv-lora (512) --rope (64) --nope (128) --v (128) --ctx (4096) --tokens T (1)\n"
            "           --cache-dtype f32|bf16 (f32)  --sets N (data sets rotated; default: enough for 256 MiB)\n"
            "           --dtype bf16|fp8 (kv_b; bf16)\n"
            "  model:   --model DIR, or a generated checkpoint: --hidden (1024) --layers (4) --dense-layers (1)\n"
            "           --heads (16) --q-lora (384) --kv-lora (256) --rope (32) --nope (64) --v (64) --experts (32)\n"
            "           --inter (352) --shared (1) --dense-inter (2464) --groups (4) --topk-groups (2) --active (6)\n"
            "           --vocab (8192); --prompt-len (128) --decode (32)\n"
            "  layer:   (docs/bench.md)\n");
}

static int dtype_of(const char *s) {
    if (!strcmp(s, "f32")) return FM_F32;
    if (!strcmp(s, "bf16")) return FM_BF16;
    if (!strcmp(s, "f16")) return FM_F16;
    if (!strcmp(s, "fp8") || !strcmp(s, "f8_e4m3")) return FM_F8_E4M3;
    return -1;
}

int fm_bench_main(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "bench")) argc--, argv++;
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        usage();
        return argc < 1 ? 2 : 0;
    }
    bench_opts o = {.sub = argv[0], .m = 512, .n = 2048, .k = 7168, .dtype = FM_F32, .threads = 0,
                    .backend = "cpu", .runs = 7, .warmup = 1, .peer = "auto", .experts = -1, .active = -1,
                    .tokens = -1, .hidden = -1, .inter = -1, .groups = -1, .topk_groups = -1, .heads = 16,
                    .kv_lora = 512, .rope = 64, .nope = 128, .vdim = 128, .ctx_len = 4096, .bw_mib = 512,
                    .act_quant = -1, .prompt_len = -1, .decode = -1, .layers = -1, .dense_layers = -1,
                    .q_lora = -1, .vocab = -1, .shared = -1, .dense_inter = -1};
    if (!strcmp(o.sub, "model")) /* a small DeepSeek-like model (docs/bench.md, model) */
        o.kv_lora = 256, o.rope = 32, o.nope = 64, o.vdim = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name, field, conv)                                                        \
    if (!strcmp(a, name)) {                                                           \
        if (!v) {                                                                     \
            fprintf(stderr, "fathom bench: %s needs a value\n", name);                \
            return 2;                                                                 \
        }                                                                             \
        o.field = conv(v);                                                            \
        i++;                                                                          \
        continue;                                                                     \
    }
        OPT("--m", m, atoll)
        OPT("--n", n, atoll)
        OPT("--k", k, atoll)
        OPT("--threads", threads, atoi)
        OPT("--runs", runs, atoi)
        OPT("--warmup", warmup, atoi)
        OPT("--burst", burst, atoi)
        OPT("--sets", sets, atoi)
        OPT("--experts", experts, atoi)
        OPT("--active", active, atoi)
        OPT("--tokens", tokens, atoi)
        OPT("--hidden", hidden, atoi)
        OPT("--inter", inter, atoi)
        OPT("--groups", groups, atoi)
        OPT("--topk-groups", topk_groups, atoi)
        OPT("--heads", heads, atoi)
        OPT("--kv-lora", kv_lora, atoi)
        OPT("--rope", rope, atoi)
        OPT("--nope", nope, atoi)
        OPT("--v", vdim, atoi)
        OPT("--ctx", ctx_len, atoi)
        OPT("--bw-mib", bw_mib, atoi)
        OPT("--act-quant", act_quant, atoi)
        OPT("--prompt-len", prompt_len, atoi)
        OPT("--decode", decode, atoi)
        OPT("--layers", layers, atoi)
        OPT("--dense-layers", dense_layers, atoi)
        OPT("--q-lora", q_lora, atoi)
        OPT("--vocab", vocab, atoi)
        OPT("--shared", shared, atoi)
        OPT("--dense-inter", dense_inter, atoi)
#undef OPT
        if (!strcmp(a, "--backend") && v) {
            o.backend = v;
            i++;
        } else if (!strcmp(a, "--model") && v) {
            o.model = v;
            i++;
        } else if (!strcmp(a, "--isa") && v) {
            o.isa = v;
            i++;
        } else if (!strcmp(a, "--peer") && v) {
            o.peer = v;
            i++;
        } else if (!strcmp(a, "--dtype") && v) {
            o.dtype = dtype_of(v);
            if (o.dtype < 0) {
                fprintf(stderr, "fathom bench: --dtype %s: expected f32, bf16, f16 or fp8\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--cache-dtype") && v) {
            o.cache_dtype = dtype_of(v);
            if (o.cache_dtype != FM_F32 && o.cache_dtype != FM_BF16) {
                fprintf(stderr, "fathom bench: --cache-dtype %s: expected f32 or bf16\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--json")) {
            o.json = 1;
        } else if (!strcmp(a, "--direct")) {
            o.direct = 1;
        } else {
            fprintf(stderr, "fathom bench: unknown option %s\n", a);
            usage();
            return 2;
        }
    }
    if (o.runs < 5) {
        fprintf(stderr, "fathom bench: --runs %d raised to 5 (the protocol's minimum)\n", o.runs);
        o.runs = 5;
    }
    if (o.m < 1 || o.n < 1 || o.k < 1 || o.threads < 0 || o.bw_mib < 64 || o.burst < 0 || o.burst > 64) {
        fprintf(stderr, "fathom bench: sizes must be >= 1, threads >= 0, --bw-mib >= 64, --burst 1..64\n");
        return 2;
    }
    /* Idle BLAS threads spin after each call (OpenBLAS for 2^28 cycles, libgomp under
     * BLIS for GOMP_SPINCOUNT) and would slow whichever contender runs next; cap the
     * spinning near a millisecond unless the caller chose otherwise (docs/bench.md). */
    setenv("OPENBLAS_THREAD_TIMEOUT", "21", 0);
    setenv("GOMP_SPINCOUNT", "300000", 0);
    if (!o.burst) /* docs/bench.md, Bursts */
        o.burst = !strcmp(o.sub, "mla") || !strcmp(o.sub, "route") ? 8 : !strcmp(o.sub, "layer") ? 16 : 3;
    if (!strcmp(o.sub, "gemm")) return bench_gemm(&o);
    if (!strcmp(o.sub, "experts")) return bench_experts(&o);
    if (!strcmp(o.sub, "route")) return bench_route(&o);
    if (!strcmp(o.sub, "mla")) return bench_mla(&o);
    if (!strcmp(o.sub, "layer")) return bench_layer(&o);
    if (!strcmp(o.sub, "model")) return bench_model(&o);
    fprintf(stderr, "fathom bench: unknown subcommand %s\n", o.sub);
    usage();
    return 2;
}
