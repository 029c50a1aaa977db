/* cli_model.c - fathom run / check / demo: the model commands. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "fathom/fathom.h"
#include "internal.h"
#include "golden.h"
#include "safetensors.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *attn_name[] = {"auto", "absorb", "naive"};

static int parse_attn(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, attn_name[i])) return i;
    fprintf(stderr, "fathom: --attn expects naive, absorb or auto, got '%s'\n", s);
    exit(2);
}

static int parse_cache_dtype(const char *s) {
    if (!strcmp(s, "f32")) return FM_F32;
    if (!strcmp(s, "bf16")) return FM_BF16;
    fprintf(stderr, "fathom: --cache-dtype expects f32 or bf16, got '%s'\n", s);
    exit(2);
}

/* ---- shared setup ---- */

/* Flags given on the command line win over attn and max_seq (defaults). */
static fm_model *load_model(fm_ctx *ctx, int argc, char **argv, const char *dir, int capture, uint32_t flags,
                            const char *attn, int32_t max_seq) {
    fm_model_options o = {
        .weights = cli_opt(argc, argv, "--weights", NULL),
        .max_seq = (int32_t)cli_opt_int(argc, argv, "--max-seq", max_seq, 0, 1 << 24),
        .attn = parse_attn(cli_opt(argc, argv, "--attn", attn)),
        .act_quant = -1,
        .capture = capture,
        .backends = cli_opt(argc, argv, "--backend", NULL),
        .place = cli_opt(argc, argv, "--place", NULL),
        .flags = flags | (cli_has_flag(argc, argv, "--strict") ? FM_RUN_STRICT : 0),
        .cache_dtype = parse_cache_dtype(cli_opt(argc, argv, "--cache-dtype", "f32")),
    };
    const char *aq = cli_opt(argc, argv, "--act-quant", NULL);
    if (aq) o.act_quant = atoi(aq) != 0;
    fm_model *m;
    if (fm_model_load(ctx, dir, &o, &m) != FM_OK) {
        fprintf(stderr, "fathom: cannot load model '%s': %s\n", dir, fm_ctx_error(ctx));
        return NULL;
    }
    return m;
}

static void print_op_table(fm_ctx *ctx, fm_model *m, FILE *f) {
    uint64_t total = 0;
    for (int op = 0; op < FM_OP_COUNT; op++)
        for (int b = 0; b < fm_backend_count(ctx); b++) total += fm_model_op_time(m, op, b).time_ns;
    fprintf(f, "%-12s %-10s %8s %12s %7s %14s\n", "op", "backend", "nodes", "time (ms)", "share", "cycles");
    for (int op = 0; op < FM_OP_COUNT; op++)
        for (int b = 0; b < fm_backend_count(ctx); b++) {
            fm_op_time t = fm_model_op_time(m, op, b);
            if (!t.nodes) continue;
            fm_backend_info bi;
            fm_backend_info_get(ctx, b, &bi);
            char cyc[32] = "-";
            if (t.cycles) snprintf(cyc, sizeof cyc, "%llu", (unsigned long long)t.cycles);
            fprintf(f, "%-12s %-10s %8llu %12.3f %6.1f%% %14s\n", fm_op_name(op), bi.name, (unsigned long long)t.nodes,
                    t.time_ns / 1e6, total ? 100.0 * t.time_ns / total : 0, cyc);
        }
}

/* ---- fathom check ---- */

static void print_families(const fm_golden_run *r, FILE *f) {
    fprintf(f, "%-15s %12s %10s  %s\n", "tensor family", "max |err|", "outside", "worst at");
    for (int i = 0; i < FM_GF_COUNT; i++) {
        const fm_golden_family *fa = &r->fam[i];
        if (!fa->compared) continue;
        if (i == FM_GF_RI)
            fprintf(f, "%-15s %12s %10lld  %s (token rows compared as sets: %lld)\n", fa->name, "-",
                    (long long)fa->bad, fa->bad ? fa->worst : "", (long long)fa->compared);
        else
            fprintf(f, "%-15s %12.3g %10lld  %s\n", fa->name, fa->max_err, (long long)fa->bad, fa->worst);
    }
}

int cmd_check(int argc, char **argv) {
    static const char *const known[] = {"--model", "--backend", "--place", "--atol", "--rtol", "--attn",
                                        "--weights", "--max-seq", "--act-quant", "--strict", "--json",
                                        "--cache-dtype", NULL};
    if (cli_check_flags(argc, argv, "check", known)) return 2;
    const char *dir = cli_opt(argc, argv, "--model", NULL);
    if (!dir || !*dir) {
        fprintf(stderr, "fathom check: --model DIR is required\n");
        return 2;
    }
    char gpath[1200], err[1024];
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    fm_st *g;
    if (fm_st_open(gpath, &g, err, sizeof err) != FM_OK) {
        fprintf(stderr, "fathom check: %s\n", err);
        return 2;
    }
    fm_ctx *ctx;
    if (fm_ctx_init(&ctx) != FM_OK) {
        fm_st_close(g);
        return 1;
    }
    int rc = 1;
    fm_model *m = NULL;
    /* the golden's form of attention, and a cache that holds the whole protocol,
     * unless --attn / --max-seq say otherwise */
    const char *gattn = fm_st_metadata(g, "attn_impl");
    if (!gattn || (strcmp(gattn, "absorb") && strcmp(gattn, "naive"))) gattn = "auto";
    const char *attn = cli_opt(argc, argv, "--attn", gattn);
    const fm_st_tensor *tt = fm_st_get(g, "tokens"), *ts = fm_st_get(g, "decode_tokens");
    int32_t max_seq = tt && ts ? (int32_t)(tt->ne[0] + ts->ne[0]) : 0;
    m = load_model(ctx, argc, argv, dir, 1, 0, gattn, max_seq);
    if (!m) goto out;
    const char *gemm = fm_st_metadata(g, "gemm_impl");
    bool fp8 = gemm && !strcmp(gemm, "fp8");
    fm_golden_run r = {.intermediates = true, .prefix = ""};
    const char *aq = cli_opt(argc, argv, "--act-quant", NULL);
    if (fp8 && aq && !atoi(aq)) r.prefix = "dequant.", fp8 = false;
    else if (fp8 && !strcmp(attn, "naive")) r.prefix = "naive.";
    fm_golden_defaults(g, &r);
    if (!fp8) r.atol_logits = r.atol = r.rtol = 1e-4;
    fm_golden_cache_tolerance(fm_model_cache_dtype(m), &r);
    bool bf16_cache = fm_model_cache_dtype(m) == FM_BF16;
    const char *at = cli_opt(argc, argv, "--atol", NULL), *rt = cli_opt(argc, argv, "--rtol", NULL);
    if (at) r.atol = r.atol_logits = atof(at);
    if (rt) r.rtol = atof(rt);
    int json = cli_has_flag(argc, argv, "--json");
    FILE *txt = json ? stderr : stdout;
    fprintf(txt, "model    %s\n         %s\n", dir, fm_model_describe(m));
    fprintf(txt, "golden   %s (%s, gemm %s, attn %s); comparing with '%s*', atol %g (logits %g) + rtol %g x |ref|\n",
            gpath, fm_st_metadata(g, "reference_commit") ? "DeepSeek reference" : "unknown origin",
            gemm ? gemm : "?", fm_st_metadata(g, "attn_impl") ? fm_st_metadata(g, "attn_impl") : "?", r.prefix,
            r.atol, r.atol_logits, r.rtol);
    if (bf16_cache)
        fprintf(txt, "cache    bf16 (the golden's is f32): tolerances at least %g%s\n", FM_GOLDEN_TOL_BF16_CACHE,
                fp8 ? "; with fp8 activations no tolerance holds, compare with --act-quant 0" : "");
    if (fm_golden_run_model(ctx, m, g, &r) != FM_OK) {
        fprintf(stderr, "fathom check: %s\n", fm_ctx_error(ctx));
        goto out;
    }
    int64_t bad = fm_golden_bad(&r);
    if (json) {
        printf("{\"model\":");
        cli_json_str(stdout, dir);
        printf(",\"pass\":%s,\"outside\":%lld,\"atol\":%g,\"atol_logits\":%g,\"rtol\":%g,\"prefix\":\"%s\","
               "\"prefill_tokens\":%d,\"decode_tokens\":%d,\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"families\":[",
               bad ? "false" : "true", (long long)bad, r.atol, r.atol_logits, r.rtol, r.prefix, r.T, r.S,
               r.prefill_tok_s, r.decode_tok_s);
        for (int i = 0, first = 1; i < FM_GF_COUNT; i++) {
            const fm_golden_family *fa = &r.fam[i];
            if (!fa->compared) continue;
            printf("%s{\"name\":\"%s\",\"compared\":%lld,\"outside\":%lld,\"max_abs_err\":%.9g,\"worst\":",
                   first ? "" : ",", fa->name, (long long)fa->compared, (long long)fa->bad,
                   i == FM_GF_RI ? 0.0 : fa->max_err);
            cli_json_str(stdout, fa->worst);
            printf("}");
            first = 0;
        }
        printf("],\"missing\":%d}\n", r.missing);
    } else {
        printf("protocol prefill %d tokens, then %d decode steps (%.1f / %.1f tokens/s)\n\n", r.T, r.S,
               r.prefill_tok_s, r.decode_tok_s);
        print_families(&r, stdout);
        if (r.missing) printf("(%d golden tensors absent for this comparison, skipped)\n", r.missing);
        printf("\n%s: %lld values outside tolerance\n", bad ? "FAIL" : "PASS", (long long)bad);
    }
    rc = bad ? 1 : 0;
out:
    fm_model_free(m);
    fm_ctx_free(ctx);
    fm_st_close(g);
    return rc;
}

/* ---- fathom run ---- */

static int parse_ids(const char *s, int32_t **out) {
    int n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    int32_t *v = malloc((size_t)n * sizeof *v);
    if (!v) return -1;
    int k = 0;
    for (const char *p = s; *p;) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',')) {
            fprintf(stderr, "fathom run: --prompt expects comma-separated token ids, got '%s'\n", s);
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    return k;
}

int cmd_run(int argc, char **argv) {
    static const char *const known[] = {"--model", "--backend", "--place", "--prompt", "--prompt-len", "--decode",
                                        "--trace", "--json", "--attn", "--weights", "--max-seq", "--act-quant",
                                        "--strict", "--cache-dtype", NULL};
    if (cli_check_flags(argc, argv, "run", known)) return 2;
    const char *dir = cli_opt(argc, argv, "--model", NULL);
    if (!dir || !*dir) {
        fprintf(stderr, "fathom run: --model DIR is required\n");
        return 2;
    }
    int json = cli_has_flag(argc, argv, "--json");
    const char *trace = cli_opt(argc, argv, "--trace", NULL);
    int decode = (int)cli_opt_int(argc, argv, "--decode", 16, 0, 1 << 20);
    fm_ctx *ctx;
    if (fm_ctx_init(&ctx) != FM_OK) return 1;
    int rc = 1;
    int32_t *prompt = NULL, *gen = NULL;
    float *logits = NULL;
    fm_model *m = load_model(ctx, argc, argv, dir, 0, trace ? FM_RUN_TRACE : 0, "auto", 0);
    if (!m) goto out;
    int V = fm_model_vocab(m), n;
    const char *ps = cli_opt(argc, argv, "--prompt", NULL);
    if (ps) {
        if ((n = parse_ids(ps, &prompt)) < 0) goto out;
    } else {
        n = (int)cli_opt_int(argc, argv, "--prompt-len", 8, 1, 1 << 20);
        if (!(prompt = malloc((size_t)n * sizeof *prompt))) goto out;
        for (int i = 0; i < n; i++) prompt[i] = (int32_t)((i * 7919 + 1) % V);
    }
    logits = malloc((size_t)n * (size_t)V * sizeof *logits);
    gen = malloc(((size_t)decode + 1) * sizeof *gen);
    if (!logits || !gen) goto out;
    double t0 = now_s();
    if (fm_model_forward(m, prompt, n, 0, logits) != FM_OK) {
        fprintf(stderr, "fathom run: prefill: %s\n", fm_ctx_error(ctx));
        goto out;
    }
    double t_prefill = now_s() - t0, t_decode = 0;
    const float *last = logits + (size_t)(n - 1) * (size_t)V;
    for (int i = 0; i <= decode; i++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (last[v] > last[best]) best = v;
        gen[i] = best;
        if (i == decode) break;
        double a = now_s();
        if (fm_model_forward(m, &gen[i], 1, n + i, logits) != FM_OK) {
            fprintf(stderr, "fathom run: decode step %d: %s\n", i, fm_ctx_error(ctx));
            goto out;
        }
        t_decode += now_s() - a;
        last = logits;
    }
    int64_t kvb = fm_model_kv_bytes_per_token(m, 0), kvb16 = fm_model_kv_bytes_per_token(m, 1);
    if (json) {
        printf("{\"model\":");
        cli_json_str(stdout, dir);
        printf(",\"prompt_tokens\":%d,\"decode_tokens\":%d,\"generated\":[", n, decode);
        for (int i = 0; i < decode; i++) printf("%s%d", i ? "," : "", gen[i]);
        printf("],\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,\"cache_dtype\":\"%s\",\"kv_bytes_per_token\":%lld,"
               "\"kv_bytes_per_token_bf16\":%lld,\"kv_bytes\":%lld,\"ops\":[",
               n / t_prefill, decode ? decode / t_decode : 0.0, fm_dtype_name(fm_model_cache_dtype(m)),
               (long long)kvb, (long long)kvb16, (long long)(kvb * (n + decode)));
        int first = 1;
        for (int op = 0; op < FM_OP_COUNT; op++)
            for (int b = 0; b < fm_backend_count(ctx); b++) {
                fm_op_time t = fm_model_op_time(m, op, b);
                if (!t.nodes) continue;
                fm_backend_info bi;
                fm_backend_info_get(ctx, b, &bi);
                printf("%s{\"op\":\"%s\",\"backend\":\"%s\",\"nodes\":%llu,\"time_ms\":%.4f,\"cycles\":%llu}",
                       first ? "" : ",", fm_op_name(op), bi.name, (unsigned long long)t.nodes, t.time_ns / 1e6,
                       (unsigned long long)t.cycles);
                first = 0;
            }
        printf("]}\n");
    } else {
        printf("model      %s\n           %s\n", dir, fm_model_describe(m));
        printf("prompt     %d tokens; generated (greedy):", n);
        for (int i = 0; i < decode; i++) printf(" %d", gen[i]);
        printf("\n\n");
        print_op_table(ctx, m, stdout);
        printf("\nprefill    %10.1f tokens/s (%d tokens, %.3f ms)\n", n / t_prefill, n, t_prefill * 1e3);
        if (decode) printf("decode     %10.1f tokens/s (%d tokens, %.3f ms)\n", decode / t_decode, decode, t_decode * 1e3);
        printf("KV cache   %lld bytes/token as stored (%s), %lld bytes/token in bf16; %lld bytes for %d tokens\n",
               (long long)kvb, fm_dtype_name(fm_model_cache_dtype(m)), (long long)kvb16,
               (long long)(kvb * (n + decode)), n + decode);
    }
    if (trace) {
        if (fm_ctx_write_trace(ctx, trace) != FM_OK) {
            fprintf(stderr, "fathom run: %s\n", fm_ctx_error(ctx));
            goto out;
        }
        fprintf(json ? stderr : stdout, "trace      %s (open in Perfetto or chrome://tracing)\n", trace);
    }
    rc = 0;
out:
    free(prompt);
    free(gen);
    free(logits);
    fm_model_free(m);
    fm_ctx_free(ctx);
    return rc;
}

/* ---- fathom demo ---- */

static bool is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The default model ships in the repository: found from the working directory or beside the tool. */
static const char *default_model(char *buf, size_t n) {
    const char *rel = "tests/data/golden/tiny-v3";
    if (is_dir(rel)) return rel;
    char exe[1024];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(buf, n, "%s/../%s", exe, rel);
        if (is_dir(buf)) return buf;
    }
    return rel;
}

typedef struct demo_row {
    char what[96], split[96];
    double err, pre, dec;
    uint64_t cycles;
    int ok;
} demo_row;

static int demo_one(fm_ctx *ctx, fm_model *m, const fm_st *g, const char *backends, const char *place,
                    const fm_golden_run *tol, demo_row *row) {
    snprintf(row->what, sizeof row->what, "%s%s%s", backends, place && *place ? " + " : "", place ? place : "");
    if (fm_model_place(m, backends, place) != FM_OK) {
        fprintf(stderr, "demo: placement %s: %s\n", row->what, fm_ctx_error(ctx));
        return -1;
    }
    fm_golden_run r = {.atol_logits = tol->atol_logits, .atol = tol->atol, .rtol = tol->rtol, .prefix = ""};
    /* two passes, the first warms caches and uploads; the second is timed */
    for (int pass = 0; pass < 2; pass++) {
        fm_model_reset_stats(m);
        if (fm_golden_run_model(ctx, m, g, &r) != FM_OK) {
            fprintf(stderr, "demo: %s: %s\n", row->what, fm_ctx_error(ctx));
            return -1;
        }
    }
    row->err = r.fam[FM_GF_LOGITS].max_err;
    row->ok = r.fam[FM_GF_LOGITS].bad == 0;
    row->pre = r.prefill_tok_s;
    row->dec = r.decode_tok_s;
    row->cycles = 0;
    size_t k = 0;
    row->split[0] = 0;
    for (int b = 0; b < fm_backend_count(ctx); b++) {
        uint64_t nodes = 0;
        for (int op = 0; op < FM_OP_COUNT; op++) {
            fm_op_time t = fm_model_op_time(m, op, b);
            row->cycles += t.cycles;
            nodes += t.nodes;
        }
        fm_backend_info bi;
        fm_backend_info_get(ctx, b, &bi);
        if (nodes && k < sizeof row->split)
            k += (size_t)snprintf(row->split + k, sizeof row->split - k, "%s%s %llu", k ? ", " : "", bi.name,
                                  (unsigned long long)nodes);
    }
    return 0;
}

int cmd_demo(int argc, char **argv) {
    static const char *const known[] = {"--model", "--trace", "--weights", "--cache-dtype", NULL};
    if (cli_check_flags(argc, argv, "demo", known)) return 2;
    char buf[1200], gpath[1300], err[1024];
    const char *dir = cli_opt(argc, argv, "--model", NULL);
    if (!dir) dir = default_model(buf, sizeof buf);
    const char *trace = cli_opt(argc, argv, "--trace", is_dir("build") ? "build/demo-trace.json" : "demo-trace.json");
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    fm_st *g;
    if (fm_st_open(gpath, &g, err, sizeof err) != FM_OK) {
        fprintf(stderr, "fathom demo: %s\n", err);
        return 1;
    }
    fm_ctx *ctx;
    if (fm_ctx_init(&ctx) != FM_OK) {
        fm_st_close(g);
        return 1;
    }
    int rc = 1;
    printf("Fathom demo: every backend against DeepSeek's reference outputs, then re-placement at run time\n\n");
    char ready[16][32], tests[16][32];
    int n_ready = 0, n_tests = 0;
    printf("backends:\n");
    for (int i = 0; i < fm_backend_count(ctx); i++) {
        fm_backend_info b;
        fm_backend_info_get(ctx, i, &b);
        bool test = !strcmp(b.kind, "test");
        if (b.status == FM_BACKEND_READY && !test && n_ready < 16) snprintf(ready[n_ready++], 32, "%s", b.name);
        if (b.status == FM_BACKEND_READY && test && n_tests < 16) snprintf(tests[n_tests++], 32, "%s", b.name);
        printf("  %-8s %-11s %s\n", b.name,
               b.status == FM_BACKEND_READY ? (test ? "test-only" : "ready")
               : b.status == FM_BACKEND_UNAVAILABLE ? "unavailable" : "refused",
               b.status == FM_BACKEND_READY ? b.device : b.reason);
    }
    fm_model *m = load_model(ctx, argc, argv, dir, 0, FM_RUN_TRACE, "auto", 0);
    if (!m) goto out;
    const fm_st_tensor *tt = fm_st_get(g, "tokens"), *ts = fm_st_get(g, "decode_tokens");
    long long T = tt ? tt->ne[0] : 0, S = ts ? ts->ne[0] : 0;
    printf("\nmodel %s\n      %s\n      protocol: prefill %lld tokens, then %lld decode steps with the KV cache\n\n",
           dir, fm_model_describe(m), T, S);
    /* logits within 1e-4 + 1e-4 x |ref|; looser with a bf16 cache (the goldens hold an f32 one) */
    fm_golden_run tol = {.atol_logits = 1e-4, .atol = 1e-4, .rtol = 1e-4};
    fm_golden_cache_tolerance(fm_model_cache_dtype(m), &tol);
    demo_row rows[64];
    int nr = 0;
    for (int i = 0; i < n_ready && nr < 64; i++)
        if (demo_one(ctx, m, g, ready[i], NULL, &tol, &rows[nr]) == 0) nr++;
    /* mixed placements, changed between runs of the same loaded model; with no
     * other backend ready, the test double shows the mechanism */
    if (n_ready == 1)
        for (int i = 0; i < n_tests && n_ready < 16; i++) memcpy(ready[n_ready++], tests[i], 32);
    for (int i = 0; i < n_ready && nr < 60; i++) {
        if (!strcmp(ready[i], "ref")) continue;
        char place[128];
        snprintf(place, sizeof place, "moe_experts=%s,moe_route=%s", ready[i], ready[i]);
        if (demo_one(ctx, m, g, "ref", place, &tol, &rows[nr]) == 0) nr++;
        snprintf(place, sizeof place, "mla_attn=%s,mla_cache=%s", ready[i], ready[i]);
        if (demo_one(ctx, m, g, "ref", place, &tol, &rows[nr]) == 0) nr++;
        snprintf(place, sizeof place, "moe_experts=ref,mla_attn=ref");
        if (demo_one(ctx, m, g, ready[i], place, &tol, &rows[nr]) == 0) nr++;
    }
    printf("%-40s %10s %7s %15s %15s %8s  %s\n", "backend / placement", "max |err|", "golden", "prefill (tok/s)",
           "decode (tok/s)", "cycles", "nodes run per backend");
    bool all_ok = nr > 0;
    for (int i = 0; i < nr; i++) {
        char cyc[24] = "-";
        if (rows[i].cycles) snprintf(cyc, sizeof cyc, "%llu", (unsigned long long)rows[i].cycles);
        printf("%-40s %10.2e %7s %15.1f %15.1f %8s  %s\n", rows[i].what, rows[i].err, rows[i].ok ? "pass" : "FAIL",
               rows[i].pre, rows[i].dec, cyc, rows[i].split);
        all_ok &= rows[i].ok;
    }
    printf("\nmax |err|: largest logit difference from DeepSeek's reference over %s; pass = within %g + %g x |ref|%s.\n",
           "every prefill position and decode step", tol.atol_logits, tol.rtol,
           fm_model_cache_dtype(m) == FM_BF16 ? " (bf16 KV cache)" : "");
    printf("The model was loaded once; placements changed between runs (weights stay cached per backend).\n");
    if (fm_ctx_write_trace(ctx, trace) == FM_OK)
        printf("trace: %s (every node of every run above; open in Perfetto or chrome://tracing)\n", trace);
    else
        printf("trace: not written: %s\n", fm_ctx_error(ctx));
    rc = all_ok ? 0 : 1;
out:
    fm_model_free(m);
    fm_ctx_free(ctx);
    fm_st_close(g);
    return rc;
}
