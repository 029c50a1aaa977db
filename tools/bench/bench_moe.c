/* bench_moe.c - `fathom bench experts` and `fathom bench route`.
 *
 * experts: MOE_EXPERTS (ours, one grouped op) against the better of OpenBLAS and
 * BLIS called once per expert on the same token groups (gather, gate and up
 * SGEMMs, SwiGLU, down SGEMM, weighted scatter-add; f32 weights, the peers have
 * no other). Prefill reports GFLOP/s of 6 x slots x H x I; with --tokens <= 8
 * (decode) tokens/s, plus the bandwidth at which our expert weights were read
 * against the bandwidth probe; the routing is then drawn anew every run so the
 * experts come from memory, not from cache.
 * route: MOE_ROUTE (ours, fused) against our own per-op composition: our MATMUL
 * for the logits, then scoring, group selection and top-k as separate passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double urand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}
static float frand(void) { return (float)(2 * urand() - 1); }

/* One weight [n, k] of dtype dt plus its f32 values; fp8 gets scales. */
typedef struct bw { bench_tensor t, s; float *f; } bw;
static int make_w(bw *w, int dt, int64_t n, int64_t k, const char *name, float amp) {
    size_t es = dt == FM_F32 ? 4 : dt == FM_F8_E4M3 ? 1 : 2;
    int64_t sr = (n + 127) / 128, sc = (k + 127) / 128;
    memset(w, 0, sizeof *w);
    w->t = (bench_tensor){.name = name, .dtype = dt, .ndim = 2, .ne = {n, k}, .data = malloc((size_t)(n * k) * es), .kind = 1};
    w->f = malloc((size_t)(n * k) * 4);
    if (!w->t.data || !w->f) return -1;
    /* fault the weight's pages in one sweep (as loading a checkpoint does), not interleaved
     * with the f32 copy's: scattered physical pages read measurably slower */
    memset(w->t.data, 0, (size_t)(n * k) * es);
    if (dt == FM_F8_E4M3) {
        w->s = (bench_tensor){.name = "scale", .dtype = FM_F32, .ndim = 2, .ne = {sr, sc}, .data = malloc((size_t)(sr * sc) * 4), .kind = 1};
        if (!w->s.data) return -1;
        for (int64_t i = 0; i < sr * sc; i++) ((float *)w->s.data)[i] = amp / 64;
        w->t.scale = &w->s;
    }
    for (int64_t i = 0; i < n * k; i++) {
        float v = frand() * amp;
        uint32_t u;
        memcpy(&u, &v, 4);
        switch (dt) {
        case FM_F32: ((float *)w->t.data)[i] = v, w->f[i] = v; break;
        case FM_BF16:
            ((uint16_t *)w->t.data)[i] = (uint16_t)(u >> 16), u &= 0xffff0000u;
            memcpy(&w->f[i], &u, 4);
            break;
        default: {
            uint8_t c = (uint8_t)(rng >> 24);
            if ((c & 0x7f) == 0x7f) c ^= 1;
            if (dt == FM_F16) { /* f16 not offered for experts: fall back to bf16 bits */
                ((uint16_t *)w->t.data)[i] = (uint16_t)(u >> 16);
                u &= 0xffff0000u;
                memcpy(&w->f[i], &u, 4);
            } else {
                ((uint8_t *)w->t.data)[i] = c, w->f[i] = bench_e4m3(c) * (amp / 64);
            }
        }
        }
    }
    return 0;
}
static void free_w(bw *w) {
    free(w->t.data);
    free(w->s.data);
    free(w->f);
}

/* ---- experts ---- */

typedef struct ex_ctx {
    bench_ours *ours;
    const bench_peer *peer;
    int64_t T, H, I, k, E;
    int32_t *ids;
    float *wts, *x, *y;
    bw *w;                     /* 3E */
    float *xg, *g, *u, *o;     /* peer scratch */
    int rotate;                /* decode: new experts every run */
    int64_t bytes_ours, bytes_peer; /* weight bytes read by the last run */
    size_t wbytes;             /* bytes per expert weight (dtype) */
} ex_ctx;

static void route_random(ex_ctx *c) {
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t j = 0; j < c->k; j++) {
            int32_t e;
            int dup;
            do {
                e = (int32_t)(urand() * (double)c->E);
                dup = 0;
                for (int64_t a = 0; a < j; a++) dup |= c->ids[t * c->k + a] == e;
            } while (dup);
            c->ids[t * c->k + j] = e;
        }
}

static int64_t active_experts(const ex_ctx *c) {
    int64_t n = 0;
    for (int64_t e = 0; e < c->E; e++)
        for (int64_t i = 0; i < c->T * c->k; i++)
            if (c->ids[i] == e) {
                n++;
                break;
            }
    return n;
}

static int run_ours(void *p) {
    ex_ctx *c = p;
    if (c->rotate) route_random(c);
    c->bytes_ours = active_experts(c) * 3 * (int64_t)c->wbytes;
    return bench_ours_run(c->ours);
}

static int run_peer(void *p) {
    ex_ctx *c = p;
    if (c->rotate) route_random(c);
    int64_t H = c->H, I = c->I, k = c->k;
    memset(c->y, 0, (size_t)(c->T * H) * 4);
    c->bytes_peer = 0;
    for (int64_t e = 0; e < c->E; e++) {
        int64_t n = 0;
        for (int64_t i = 0; i < c->T * k; i++)
            if (c->ids[i] == e) memcpy(c->xg + n++ * H, c->x + (i / k) * H, (size_t)H * 4);
        if (!n) continue;
        c->bytes_peer += 3 * H * I * 4;
        bench_peer_gemm(c->peer, n, I, H, c->xg, H, c->w[3 * e].f, c->g, I);
        bench_peer_gemm(c->peer, n, I, H, c->xg, H, c->w[3 * e + 1].f, c->u, I);
        for (int64_t i = 0; i < n * I; i++) c->g[i] = c->g[i] / (1.0f + expf(-c->g[i])) * c->u[i];
        bench_peer_gemm(c->peer, n, H, I, c->g, I, c->w[3 * e + 2].f, c->o, H);
        for (int64_t i = 0, r = 0; i < c->T * k; i++)
            if (c->ids[i] == e) {
                float wt = c->wts[i], *yr = c->y + (i / k) * H, *orow = c->o + r++ * H;
                for (int64_t h = 0; h < H; h++) yr[h] += wt * orow[h];
            }
    }
    return 0;
}

int bench_experts(const bench_opts *o) {
    int64_t E = o->experts > 0 ? o->experts : 64, k = o->active > 0 ? o->active : 6;
    int64_t T = o->tokens > 0 ? o->tokens : 512, H = o->hidden > 0 ? o->hidden : 2048, I = o->inter > 0 ? o->inter : 768;
    int aq = o->dtype == FM_F8_E4M3 ? (o->act_quant < 0 ? 1 : o->act_quant) : 0;
    int decode = T <= 8, nt = bench_threads_effective(o);
    if (k > E) k = E;
    bench_report r = {.bench = "experts", .unit = decode ? "tokens/s" : "GFLOP/s", .threads = nt, .runs = o->runs};
    static const char *const dn[] = {"f32", "bf16", "f16", "fp8"};
    snprintf(r.shape, sizeof r.shape, "experts=%lld active=%lld tokens=%lld hidden=%lld inter=%lld dtype=%s%s",
             (long long)E, (long long)k, (long long)T, (long long)H, (long long)I, dn[o->dtype & 3],
             o->dtype == FM_F8_E4M3 ? (aq ? " act_quant=1" : " act_quant=0") : "");
    bench_progress("experts %s: preparing %.0f MiB of weights", r.shape,
                   (double)(3 * E * H * I) * (o->dtype == FM_F32 ? 8 : o->dtype == FM_F8_E4M3 ? 5 : 6) / 1048576.0);
    ex_ctx c = {.T = T, .H = H, .I = I, .k = k, .E = E, .rotate = decode};
    c.wbytes = (size_t)(H * I) * (o->dtype == FM_F32 ? 4 : o->dtype == FM_F8_E4M3 ? 1 : 2);
    c.ids = malloc((size_t)(T * k) * 4);
    c.wts = malloc((size_t)(T * k) * 4);
    c.x = malloc((size_t)(T * H) * 4);
    c.y = malloc((size_t)(T * H) * 4);
    c.w = calloc((size_t)(3 * E), sizeof *c.w);
    int64_t maxn = T; /* rows of one expert at most */
    c.xg = malloc((size_t)(maxn * H) * 4);
    c.g = malloc((size_t)(maxn * I) * 4);
    c.u = malloc((size_t)(maxn * I) * 4);
    c.o = malloc((size_t)(maxn * H) * 4);
    float *yo = malloc((size_t)(T * H) * 4);
    if (!c.ids || !c.wts || !c.x || !c.y || !c.w || !c.xg || !c.g || !c.u || !c.o || !yo) goto oom;
    for (int64_t e = 0; e < 3 * E; e++)
        if (make_w(&c.w[e], o->dtype, e % 3 == 2 ? H : I, e % 3 == 2 ? I : H, "w", e % 3 == 2 ? 0.05f : 0.03f)) goto oom;
    for (int64_t i = 0; i < T * H; i++) c.x[i] = frand();
    for (int64_t i = 0; i < T * k; i++) c.wts[i] = (float)(0.1 + urand());
    route_random(&c);

    bench_tensor tx = {.name = "x", .dtype = FM_F32, .ndim = 2, .ne = {T, H}, .data = c.x, .kind = 0};
    bench_tensor ti = {.name = "ids", .dtype = FM_I32, .ndim = 2, .ne = {T, k}, .data = c.ids, .kind = decode ? 0 : 0};
    bench_tensor tw = {.name = "weights", .dtype = FM_F32, .ndim = 2, .ne = {T, k}, .data = c.wts, .kind = 0};
    bench_tensor ty = {.name = "y", .dtype = FM_F32, .ndim = 2, .ne = {T, H}, .data = yo, .kind = 3};
    bench_tensor **src = malloc((size_t)(3 + 3 * E) * sizeof *src);
    if (!src) goto oom;
    src[0] = &tx, src[1] = &ti, src[2] = &tw;
    for (int64_t e = 0; e < 3 * E; e++) src[3 + e] = &c.w[e].t;
    bench_tensor *dst[1] = {&ty};
    fm_moe_experts_params mp = {.n_experts = (int32_t)E, .act_quant = aq};
    char why[512];
    bench_opts od = *o;
    if (decode) od.direct = 1; /* the ids change every run: the plugin reads them in place */
    if (bench_ours_init(&c.ours, &od, FM_OP_MOE_EXPERTS, src, (int)(3 + 3 * E), dst, 1, &mp, sizeof mp, why, sizeof why)) {
        fprintf(stderr, "fathom bench experts: ours unavailable: %s\n", why);
        return 1;
    }
    r.mode = bench_ours_mode(c.ours);
    r.device = bench_ours_device(c.ours);
    bench_peer peers[2];
    int np = bench_peers_load(o->peer, nt, peers);
    bench_probes(o, &r);
    ex_ctx cx[3];
    bench_fn fn[3];
    void *ctx[3];
    cx[0] = c, fn[0] = run_ours, ctx[0] = &cx[0];
    for (int i = 0; i < np; i++) cx[1 + i] = c, cx[1 + i].peer = &peers[i], fn[1 + i] = run_peer, ctx[1 + i] = &cx[1 + i];
    bench_progress("interleaving ours and %d peer%s, %d runs each", np, np == 1 ? "" : "s", o->runs);
    double med[3];
    /* decode: warm up until every expert has been read about twice since the weights were
     * written (first reads of freshly written memory run at a fraction of the bandwidth on
     * virtual machines; a running model has read its experts many times) */
    int warm = o->warmup;
    if (decode && warm < (int)((2 * E + T * k - 1) / (T * k))) warm = (int)((2 * E + T * k - 1) / (T * k));
    if (warm != o->warmup) bench_progress("decode: %d warm-up rounds (every expert read about twice)", warm);
    if (bench_interleave(1 + np, fn, ctx, o->runs, warm, o->burst, med, NULL)) {
        fprintf(stderr, "fathom bench experts: ours failed: %s\n", bench_ours_error(c.ours));
        return 1;
    }
    double flop = 6.0 * (double)(T * k) * (double)H * (double)I;
    /* decode: bytes read per run (active experts differ per run; use the expected count) */
    double act = (double)E * (1.0 - pow(1.0 - 1.0 / (double)E, (double)(T * k)));
    double b_ours = act * 3 * (double)c.wbytes, b_peer = act * 3 * (double)(H * I * 4);
    r.ours = decode ? (double)T / med[0] : flop / med[0] * 1e-9;
    int best = -1;
    char pj[512] = "", pt[512] = "";
    size_t lj = 0, lt = 0;
    for (int i = 0; i < np; i++) {
        double v = decode ? (double)T / med[1 + i] : flop / med[1 + i] * 1e-9;
        if (best < 0 || v > r.peer) best = i, r.peer = v;
        lj += (size_t)snprintf(pj + lj, sizeof pj - lj, ", \"%s\": %.6g", peers[i].name, v);
        lt += (size_t)snprintf(pt + lt, sizeof pt - lt, "  %-12s %10.2f %s, called per expert (%.3f ms)\n", peers[i].name,
                               v, r.unit, med[1 + i] * 1e3);
    }
    r.peer_name = best >= 0 ? peers[best].name : "none available";
    r.ratio = r.peer > 0 ? r.ours / r.peer : 0;
    /* the active experts' weights once (the peers: f32 copies), x and y once */
    r.flop = flop, r.bytes = b_ours + 8.0 * (double)(T * H), r.t_ours = med[0];
    if (best >= 0) r.bytes_peer = b_peer + 8.0 * (double)(T * H), r.t_peer = med[1 + best];
    double speed = best >= 0 ? med[1 + best] / med[0] : 0; /* time ratio: same work */
    /* decode: say whether the weights can come from the cache */
    double all_w = 3.0 * (double)E * (double)c.wbytes;
    char cache_note[256] = "";
    if (decode)
        snprintf(cache_note, sizeof cache_note,
                 "  weights      %10.1f MiB of active experts per call, of %.0f MiB in all; routing redrawn before "
                 "every run;\n               %d warm-up rounds\n",
                 b_ours / 1048576.0, all_w / 1048576.0, warm);
    snprintf(r.extra_json, sizeof r.extra_json,
             "%s, \"ours_ms\": %.4f, \"peer_ms\": %.4f, \"time_ratio\": %.4f, \"gflops\": %.6g, \"weight_gbs\": %.6g, "
             "\"fraction_of_bw_probe\": %.4f, \"tokens\": %lld, \"peer_weight_gbs\": %.6g, \"weight_bytes_per_run\": %.6g, "
             "\"expert_weight_bytes\": %.6g, \"routing_redrawn_per_run\": %s, \"warmup_rounds\": %d",
             pj, med[0] * 1e3, best >= 0 ? med[1 + best] * 1e3 : 0.0, speed, flop / med[0] * 1e-9, b_ours / med[0] * 1e-9,
             r.bw > 0 ? b_ours / med[0] * 1e-9 / r.bw : 0.0, (long long)T,
             best >= 0 ? b_peer / med[1 + best] * 1e-9 : 0.0, decode ? b_ours : 0.0, all_w, decode ? "true" : "false", warm);
    snprintf(r.extra_text, sizeof r.extra_text,
             "%s  ours         %10.3f ms per call, %.2f GFLOP/s, weights read at %.2f GB/s (%.0f%% of the BW probe)\n"
             "  speed-up     %10.3f x   (peer time / our time, same routing)\n%s",
             pt, med[0] * 1e3, flop / med[0] * 1e-9, b_ours / med[0] * 1e-9,
             r.bw > 0 ? 100 * b_ours / med[0] * 1e-9 / r.bw : 0.0, speed, cache_note);
    bench_print(o, &r);
    bench_ours_free(c.ours);
    for (int64_t e = 0; e < 3 * E; e++) free_w(&c.w[e]);
    free(src), free(c.ids), free(c.wts), free(c.x), free(c.y), free(c.w), free(c.xg), free(c.g), free(c.u), free(c.o), free(yo);
    return 0;
oom:
    fprintf(stderr, "fathom bench experts: out of memory\n");
    return 1;
}
