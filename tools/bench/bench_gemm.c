/* bench_gemm.c - `fathom bench gemm`: y[m, n] = x[m, k] w[n, k]^T, ours (MATMUL
 * with f32, bf16, f16 or fp8 weights) against the better of OpenBLAS and BLIS
 * SGEMM on the same shape (the peers get the weights as f32: they have no bf16
 * or fp8 GEMM). Unit: GFLOP/s of 2 m n k. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-52 - 1.0);
}

/* Random weights of dtype dt plus their f32 values (what the peer multiplies). */
static int make_weights(int dt, int64_t n, int64_t k, void **data, float **scale, float **f32) {
    size_t es = dt == FM_F32 ? 4 : dt == FM_F8_E4M3 ? 1 : 2;
    int64_t sr = (n + 127) / 128, sc = (k + 127) / 128;
    *data = malloc((size_t)(n * k) * es);
    *f32 = malloc((size_t)(n * k) * 4);
    *scale = dt == FM_F8_E4M3 ? malloc((size_t)(sr * sc) * 4) : NULL;
    if (!*data || !*f32 || (dt == FM_F8_E4M3 && !*scale)) return -1;
    if (*scale)
        for (int64_t i = 0; i < sr * sc; i++) (*scale)[i] = 0x1p-8f * (1.5f + frand());
    for (int64_t i = 0; i < n * k; i++) {
        float v = frand();
        switch (dt) {
        case FM_F32: ((float *)*data)[i] = v, (*f32)[i] = v; break;
        case FM_BF16: {
            uint32_t u;
            memcpy(&u, &v, 4);
            ((uint16_t *)*data)[i] = (uint16_t)(u >> 16);
            u &= 0xffff0000u;
            memcpy(&(*f32)[i], &u, 4);
            break;
        }
        case FM_F16: { /* values exactly representable in f16: multiples of 2^-10 in [-1, 1) */
            float q = roundf(v * 1024.0f) / 1024.0f;
            (*f32)[i] = q;
            int neg = q < 0;
            float a = fabsf(q);
            uint16_t h = 0;
            if (a > 0) {
                int e;
                float m = frexpf(a, &e); /* a = m 2^e, m in [0.5, 1) */
                int E = e - 1 + 15;
                h = E > 0 ? (uint16_t)(E << 10 | ((int)(m * 2048.0f) - 1024))
                          : (uint16_t)(a * 16777216.0f); /* subnormal: a / 2^-24 */
            }
            ((uint16_t *)*data)[i] = (uint16_t)(h | (neg ? 0x8000 : 0));
            break;
        }
        default: {
            uint8_t c = (uint8_t)(rng >> 24);
            if ((c & 0x7f) == 0x7f) c ^= 1;
            ((uint8_t *)*data)[i] = c;
            (*f32)[i] = bench_e4m3(c) * (*scale)[(i / k / 128) * sc + (i % k) / 128];
            break;
        }
        }
    }
    return 0;
}

typedef struct gemm_ctx {
    bench_ours *ours;
    const bench_peer *peer;
    int64_t m, n, k;
    const float *x, *w;
    float *y;
} gemm_ctx;

static int run_ours(void *c) { return bench_ours_run(((gemm_ctx *)c)->ours); }
static int run_peer(void *c) {
    gemm_ctx *g = c;
    bench_peer_gemm(g->peer, g->m, g->n, g->k, g->x, g->k, g->w, g->y, g->n);
    return 0;
}

static const char *dt_name(int dt) {
    static const char *const n[] = {"f32", "bf16", "f16", "fp8", "i32"};
    return dt >= 0 && dt < 5 ? n[dt] : "?";
}

int bench_gemm(const bench_opts *o) {
    int64_t M = o->m, N = o->n, K = o->k;
    int aq = o->dtype == FM_F8_E4M3 ? (o->act_quant < 0 ? 1 : o->act_quant) : 0;
    int nt = bench_threads_effective(o);
    bench_report r = {.bench = "gemm", .unit = "GFLOP/s", .threads = nt, .runs = o->runs};
    snprintf(r.shape, sizeof r.shape, "m=%lld n=%lld k=%lld dtype=%s%s", (long long)M, (long long)N, (long long)K,
             dt_name(o->dtype), o->dtype == FM_F8_E4M3 ? (aq ? " act_quant=1" : " act_quant=0") : "");
    bench_progress("gemm %s: preparing data", r.shape);
    float *x = malloc((size_t)(M * K) * 4), *y = calloc((size_t)(M * N), 4), *yp = calloc((size_t)(M * N), 4);
    void *wd = NULL;
    float *ws = NULL, *wf = NULL;
    if (!x || !y || !yp || make_weights(o->dtype, N, K, &wd, &ws, &wf)) {
        fprintf(stderr, "fathom bench gemm: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < M * K; i++) x[i] = frand();

    bench_tensor tscale = {.name = "w.scale", .dtype = FM_F32, .ndim = 2, .ne = {(N + 127) / 128, (K + 127) / 128},
                           .data = ws, .kind = 1};
    bench_tensor tx = {.name = "x", .dtype = FM_F32, .ndim = 2, .ne = {M, K}, .data = x, .kind = 0};
    bench_tensor tw = {.name = "w", .dtype = o->dtype, .ndim = 2, .ne = {N, K}, .data = wd,
                       .scale = ws ? &tscale : NULL, .kind = 1};
    bench_tensor ty = {.name = "y", .dtype = FM_F32, .ndim = 2, .ne = {M, N}, .data = y, .kind = 3};
    bench_tensor *src[2] = {&tx, &tw}, *dst[1] = {&ty};
    fm_matmul_params mp = {.act_quant = aq};
    bench_ours *ours = NULL;
    char why[512];
    if (bench_ours_init(&ours, o, FM_OP_MATMUL, src, 2, dst, 1, &mp, sizeof mp, why, sizeof why)) {
        fprintf(stderr, "fathom bench gemm: ours unavailable: %s\n", why);
        return 1;
    }
    r.mode = bench_ours_mode(ours);
    r.device = bench_ours_device(ours);

    /* peers */
    bench_peer peers[2];
    int np = bench_peers_load(o->peer, nt, peers);
    bench_probes(o, &r);

    gemm_ctx cx[3];
    bench_fn fn[4];
    void *ctx[4];
    cx[0] = (gemm_ctx){.ours = ours, .m = M, .n = N, .k = K, .x = x, .w = wf, .y = y};
    fn[0] = run_ours, ctx[0] = &cx[0];
    for (int i = 0; i < np; i++) {
        cx[1 + i] = (gemm_ctx){.peer = &peers[i], .m = M, .n = N, .k = K, .x = x, .w = wf, .y = yp};
        fn[1 + i] = run_peer, ctx[1 + i] = &cx[1 + i];
    }
    /* bf16 weights: the bf16 FMA probe runs among the contenders too (a long run of
     * ours may meet a busier machine than the probe did before the runs) */
    bench_live live;
    int nc = 1 + np;
    const char *lp = bench_live_add(&live, o, &r, o->dtype == FM_BF16, 0, fn, ctx, &nc);
    bench_progress("interleaving ours and %d peer%s%s, %d runs each", np, np == 1 ? "" : "s", lp, o->runs);
    double med[4];
    int rc = bench_interleave(nc, fn, ctx, o->runs, o->warmup, o->burst, med, NULL);
    bench_live_done(&live, &r, rc ? NULL : med);
    if (rc) {
        fprintf(stderr, "fathom bench gemm: ours failed: %s\n", bench_ours_error(ours));
        return 1;
    }
    double flop = 2.0 * (double)M * (double)N * (double)K;
    r.ours = flop / med[0] * 1e-9;
    int best = -1;
    char pj[512] = "", pt[512] = "";
    size_t lj = 0, lt = 0;
    for (int i = 0; i < np; i++) {
        double g = flop / med[1 + i] * 1e-9;
        if (best < 0 || g > r.peer) best = i, r.peer = g;
        lj += (size_t)snprintf(pj + lj, sizeof pj - lj, ", \"%s_gflops\": %.6g", peers[i].name, g);
        lt += (size_t)snprintf(pt + lt, sizeof pt - lt, "  %-12s %10.2f GFLOP/s  (%s)\n", peers[i].name, g, peers[i].lib);
    }
    r.peer_name = best >= 0 ? peers[best].name : "none available";
    r.ratio = r.peer > 0 ? r.ours / r.peer : 0;
    /* the weights once (the peers: their f32 copies), x and y once */
    const double wes = o->dtype == FM_F32 ? 4 : o->dtype == FM_F8_E4M3 ? 1 : 2, xy = 4.0 * (double)M * (double)(K + N);
    r.flop = flop, r.bytes = wes * (double)N * (double)K + xy, r.t_ours = med[0];
    if (best >= 0) r.bytes_peer = 4.0 * (double)N * (double)K + xy, r.t_peer = med[1 + best];

    /* agreement with the peer (same f32 weights; bf16-compute and fp8 act_quant differ by design) */
    double maxd = 0, maxp = 0;
    if (best >= 0) {
        cx[1 + best].y = yp;
        run_peer(&cx[1 + best]);
        bench_ours_read(ours);
        for (int64_t i = 0; i < M * N; i++) {
            maxd = fmax(maxd, fabs((double)y[i] - yp[i]));
            maxp = fmax(maxp, fabs((double)yp[i]));
        }
    }
    double probe = o->dtype == FM_BF16 && r.fma_bf16 > 0 ? r.fma_bf16 : r.fma_f32;
    snprintf(r.extra_json, sizeof r.extra_json,
             "%s, \"m\": %lld, \"n\": %lld, \"k\": %lld, \"dtype\": \"%s\", \"act_quant\": %d, \"ours_ms\": %.4f, "
             "\"peer_ms\": %.4f, \"fraction_of_fma_probe\": %.4f, \"max_rel_diff_vs_peer\": %.3g",
             pj, (long long)M, (long long)N, (long long)K, dt_name(o->dtype), aq, med[0] * 1e3,
             best >= 0 ? med[1 + best] * 1e3 : 0.0, probe > 0 ? r.ours / probe : 0.0, maxp > 0 ? maxd / maxp : 0.0);
    snprintf(r.extra_text, sizeof r.extra_text,
             "%s  ours         %10.3f ms per product, %.1f%% of the %s FMA probe\n"
             "  check        max |ours - peer| / max |peer| = %.3g\n",
             pt, med[0] * 1e3, probe > 0 ? 100.0 * r.ours / probe : 0.0,
             o->dtype == FM_BF16 && r.fma_bf16 > 0 ? "bf16" : "f32", maxp > 0 ? maxd / maxp : 0.0);
    bench_print(o, &r);
    bench_ours_free(ours);
    for (int i = 0; i < np; i++) bench_peer_unload(&peers[i]);
    free(x), free(y), free(yp), free(wd), free(ws), free(wf);
    return 0;
}
