/* bench_layer.c - `fathom bench layer`: one DeepSeek MoE layer (the FFN half of a
 * decoder layer) through the public API on --backend, against the better of
 * OpenBLAS and BLIS doing the same layer.
 *
 * The layer: router MOE_ROUTE (softmax scores, greedy top-k, DeepSeek-V2-Lite
 * style; grouped selection with --groups / --topk-groups), routed experts
 * MOE_EXPERTS, the shared expert as MATMUL (gate), MATMUL (up), SWIGLU, MATMUL
 * (down), and ADD of the routed and shared outputs. Default shape: DeepSeek-V2-Lite
 * (H 2048, 64 experts, 6 active, I 1408, 2 shared experts = a shared MLP of
 * 2816), 1 token, bf16 weights (1.1 GiB in all; the bytes one token touches,
 * about 140 MB, are four times the 32 MiB L3).
 *
 * Ours: one graph, fm_session_init on --backend, fm_session_set_input then
 * fm_session_run per timed run (executor included). Peer: the same layer with f32
 * copies of the same weights (the peers have no bf16 or fp8 GEMM): router logits
 * by SGEMM, softmax and top-k in C, per expert gather / gate and up SGEMMs /
 * SwiGLU / down SGEMM / weighted scatter-add, the shared MLP by SGEMMs, the add.
 * Each run (ours and peers) takes the next of 16 inputs prepared beforehand, so
 * the routing, hence the experts read, changes from run to run and the weights
 * come from memory, not from the cache. Bytes touched per run = the router
 * weight + the shared MLP + the distinct routed experts of that input (counted
 * from the bench's own routing of the 16 inputs, averaged). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "fathom/fathom.h"

#define NX 16 /* inputs rotated through */
#define NT_MAX 4096

static uint64_t rng = 0x6a09e667f3bcc909ull;
static double urand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}
static float frand(void) { return (float)(2 * urand() - 1); }

/* Whether --dtype is on the command line (bench_opts defaults it to f32 for every
 * subcommand; this one defaults to bf16). */
static int dtype_given(void) {
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return 1;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (!strcmp(buf + i, "--dtype")) return 1;
    return 0;
}

static size_t dsize(int dt) { return dt == FM_F32 ? 4 : dt == FM_F8_E4M3 ? 1 : 2; }

/* A weight [n, k] in dtype dt (fp8 with 128x128 block scales) and its exact f32 values. */
typedef struct lw {
    int dt;
    int64_t n, k;
    void *data;
    float *scale, *f;
    fm_tensor *t;
} lw;

static int lw_make(lw *w, int dt, int64_t n, int64_t k, float amp) {
    memset(w, 0, sizeof *w);
    w->dt = dt, w->n = n, w->k = k;
    int64_t sr = (n + 127) / 128, sc = (k + 127) / 128;
    w->data = malloc((size_t)(n * k) * dsize(dt));
    w->f = malloc((size_t)(n * k) * 4);
    if (!w->data || !w->f) return -1;
    memset(w->data, 0, (size_t)(n * k) * dsize(dt)); /* pages faulted in one sweep (see bench_moe.c) */
    if (dt == FM_F8_E4M3) {
        if (!(w->scale = malloc((size_t)(sr * sc) * 4))) return -1;
        for (int64_t i = 0; i < sr * sc; i++) w->scale[i] = amp / 64;
    }
    for (int64_t i = 0; i < n * k; i++) {
        float v = frand() * amp;
        uint32_t u;
        memcpy(&u, &v, 4);
        switch (dt) {
        case FM_F32: ((float *)w->data)[i] = v, w->f[i] = v; break;
        case FM_F8_E4M3: {
            uint8_t c = (uint8_t)(rng >> 24);
            if ((c & 0x7f) == 0x7f) c ^= 1;
            ((uint8_t *)w->data)[i] = c;
            w->f[i] = bench_e4m3(c) * w->scale[(i / k / 128) * sc + (i % k) / 128];
            break;
        }
        default: /* bf16 (f16 is not offered: bf16 bits) */
            ((uint16_t *)w->data)[i] = (uint16_t)(u >> 16), u &= 0xffff0000u;
            memcpy(&w->f[i], &u, 4);
        }
    }
    return 0;
}

static void lw_free(lw *w) { free(w->data), free(w->scale), free(w->f); }

static fm_tensor *lw_leaf(fm_graph *g, lw *w, const char *name) {
    int64_t ne[2] = {w->n, w->k};
    fm_tensor *sc = NULL;
    if (w->dt == FM_F8_E4M3) {
        int64_t sne[2] = {(w->n + 127) / 128, (w->k + 127) / 128};
        sc = fm_weight(g, "scale", FM_F32, 2, sne, w->scale, NULL);
    }
    return w->t = fm_weight(g, name, w->dt, 2, ne, w->data, sc);
}

typedef struct layer {
    int64_t T, H, I, IS, E, k;
    int dt, aq;
    fm_moe_route_params rp;
    lw gate, sg, su, sd, *ex;  /* ex: 3E (gate, up, down per expert) */
    float *x[NX];              /* the rotating inputs [T, H] */
    int xi;                    /* next input */
    float *y;                  /* output [T, H] */
    /* ours */
    fm_ctx *ctx;
    fm_graph *g;
    fm_session *s;
    fm_tensor *tx, *ty;
    char err[512];
    double *nt_ms;             /* [NT_MAX][16] per-node times of ours' runs */
    int nrec;
    /* peer */
    const bench_peer *peer;
    float *logits, *wts, *xg, *pg, *pu, *po, *sh;
    int32_t *ids;
} layer;

/* softmax, selection as MOE_ROUTE (greedy or group-limited top-k, lower index wins ties) */
static void route_c(const layer *L, const float *logits, int32_t *ids, float *wts) {
    int64_t E = L->E, G = L->rp.n_group, gs = E / G;
    float *sc = malloc((size_t)E * 4), *sel = malloc((size_t)E * 4);
    if (!sc || !sel) abort();
    float m = logits[0], sum = 0.0f;
    for (int64_t e = 1; e < E; e++) m = logits[e] > m ? logits[e] : m;
    for (int64_t e = 0; e < E; e++) sc[e] = expf(logits[e] - m), sum += sc[e];
    for (int64_t e = 0; e < E; e++) sc[e] /= sum, sel[e] = sc[e];
    if (G > 1 && L->rp.topk_group < G) { /* group score = its best expert; keep topk_group groups */
        float *gsc = malloc((size_t)G * 4);
        unsigned char *kept = calloc((size_t)G, 1);
        if (!gsc || !kept) abort();
        for (int64_t g = 0; g < G; g++) {
            gsc[g] = sel[g * gs];
            for (int64_t i = 1; i < gs; i++) gsc[g] = sel[g * gs + i] > gsc[g] ? sel[g * gs + i] : gsc[g];
        }
        for (int32_t r = 0; r < L->rp.topk_group; r++) {
            int64_t b = -1;
            for (int64_t g = 0; g < G; g++)
                if (!kept[g] && (b < 0 || gsc[g] > gsc[b])) b = g;
            kept[b] = 1;
        }
        for (int64_t e = 0; e < E; e++)
            if (!kept[e / gs]) sel[e] = -INFINITY;
        free(gsc), free(kept);
    }
    for (int64_t j = 0; j < L->k; j++) {
        int64_t b = -1;
        for (int64_t e = 0; e < E; e++)
            if (sel[e] > -INFINITY && (b < 0 || sel[e] > sel[b])) b = e;
        ids[j] = (int32_t)b, wts[j] = sc[b] * L->rp.scale, sel[b] = -INFINITY;
    }
    free(sc), free(sel);
}

static int run_ours(void *p) {
    layer *L = p;
    const float *x = L->x[L->xi++ % NX];
    if (fm_session_set_input(L->s, L->tx, x, (size_t)(L->T * L->H) * 4) != FM_OK || fm_session_run(L->s) != FM_OK) {
        snprintf(L->err, sizeof L->err, "%s", fm_ctx_error(L->ctx));
        return -1;
    }
    if (L->nt_ms && L->nrec < NT_MAX) { /* the executor's per-node wall times, for the breakdown */
        for (int i = 0; i < fm_session_node_count(L->s) && i < 16; i++) {
            fm_node_stat ns;
            L->nt_ms[L->nrec * 16 + i] = fm_session_node_stat(L->s, i, &ns) == FM_OK ? ns.time_ns * 1e-6 : 0;
        }
        L->nrec++;
    }
    return 0;
}

static void peer_layer(layer *L, const float *x, float *y) {
    const bench_peer *P = L->peer;
    int64_t T = L->T, H = L->H, I = L->I, k = L->k, E = L->E;
    bench_peer_gemm(P, T, E, H, x, H, L->gate.f, L->logits, E);
    for (int64_t t = 0; t < T; t++) route_c(L, L->logits + t * E, L->ids + t * k, L->wts + t * k);
    /* shared expert first: y = shared(x) */
    bench_peer_gemm(P, T, L->IS, H, x, H, L->sg.f, L->pg, L->IS);
    bench_peer_gemm(P, T, L->IS, H, x, H, L->su.f, L->pu, L->IS);
    for (int64_t i = 0; i < T * L->IS; i++) L->pg[i] = L->pg[i] / (1.0f + expf(-L->pg[i])) * L->pu[i];
    bench_peer_gemm(P, T, H, L->IS, L->pg, L->IS, L->sd.f, L->sh, H);
    memset(y, 0, (size_t)(T * H) * 4);
    for (int64_t e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t i = 0; i < T * k; i++)
            if (L->ids[i] == e) memcpy(L->xg + n++ * H, x + (i / k) * H, (size_t)H * 4);
        if (!n) continue;
        bench_peer_gemm(P, n, I, H, L->xg, H, L->ex[3 * e].f, L->pg, I);
        bench_peer_gemm(P, n, I, H, L->xg, H, L->ex[3 * e + 1].f, L->pu, I);
        for (int64_t i = 0; i < n * I; i++) L->pg[i] = L->pg[i] / (1.0f + expf(-L->pg[i])) * L->pu[i];
        bench_peer_gemm(P, n, H, I, L->pg, I, L->ex[3 * e + 2].f, L->po, H);
        for (int64_t i = 0, r = 0; i < T * k; i++)
            if (L->ids[i] == e) {
                float wt = L->wts[i], *yr = y + (i / k) * H, *orow = L->po + r++ * H;
                for (int64_t h = 0; h < H; h++) yr[h] += wt * orow[h];
            }
    }
    for (int64_t i = 0; i < T * H; i++) y[i] += L->sh[i];
}

static int run_peer(void *p) {
    layer *L = p;
    peer_layer(L, L->x[L->xi++ % NX], L->y);
    return 0;
}

static int build_ours(layer *L, const bench_opts *o, const char **device, int *nodes) {
    if (fm_ctx_init(&L->ctx) != FM_OK) return snprintf(L->err, sizeof L->err, "fm_ctx_init failed"), -1;
    int bi = fm_backend_find(L->ctx, o->backend);
    fm_backend_info info;
    if (bi < 0 || fm_backend_info_get(L->ctx, bi, &info) != FM_OK)
        return snprintf(L->err, sizeof L->err, "backend %s not found", o->backend), -1;
    if (info.status != FM_BACKEND_READY)
        return snprintf(L->err, sizeof L->err, "backend %s not ready: %s", o->backend, info.reason), -1;
    char v[16];
    snprintf(v, sizeof v, "%d", o->threads);
    if (o->threads > 0 && fm_backend_control(L->ctx, o->backend, "threads", v) != FM_OK)
        return snprintf(L->err, sizeof L->err, "threads=%s: %s", v, fm_ctx_error(L->ctx)), -1;
    if (o->isa && fm_backend_control(L->ctx, o->backend, "isa", o->isa) != FM_OK)
        return snprintf(L->err, sizeof L->err, "isa=%s: %s", o->isa, fm_ctx_error(L->ctx)), -1;
    fm_backend_info_get(L->ctx, bi, &info);
    static char dev[160];
    snprintf(dev, sizeof dev, "%s", info.device);
    *device = dev;
    if (fm_graph_init(L->ctx, &L->g) != FM_OK) return snprintf(L->err, sizeof L->err, "fm_graph_init failed"), -1;
    fm_graph *g = L->g;
    int64_t xne[2] = {L->T, L->H};
    L->tx = fm_input(g, "x", FM_F32, 2, xne);
    fm_tensor *ids = NULL, *wts = NULL;
    fm_moe_route(g, L->tx, lw_leaf(g, &L->gate, "gate"), NULL, &L->rp, &ids, &wts);
    fm_tensor **gt = malloc((size_t)(3 * L->E) * sizeof *gt);
    if (!gt) return snprintf(L->err, sizeof L->err, "out of memory"), -1;
    for (int64_t e = 0; e < L->E; e++) {
        char nm[3][48];
        snprintf(nm[0], 48, "experts.%lld.gate", (long long)e);
        snprintf(nm[1], 48, "experts.%lld.up", (long long)e);
        snprintf(nm[2], 48, "experts.%lld.down", (long long)e);
        gt[e] = lw_leaf(g, &L->ex[3 * e], nm[0]);
        gt[L->E + e] = lw_leaf(g, &L->ex[3 * e + 1], nm[1]);
        gt[2 * L->E + e] = lw_leaf(g, &L->ex[3 * e + 2], nm[2]);
    }
    fm_tensor *routed = fm_moe_experts(g, L->tx, ids, wts, (int)L->E, gt, gt + L->E, gt + 2 * L->E, L->aq);
    free(gt);
    fm_tensor *sg = fm_matmul(g, L->tx, lw_leaf(g, &L->sg, "shared.gate"), L->aq);
    fm_tensor *su = fm_matmul(g, L->tx, lw_leaf(g, &L->su, "shared.up"), L->aq);
    fm_tensor *sd = fm_matmul(g, fm_swiglu(g, sg, su), lw_leaf(g, &L->sd, "shared.down"), L->aq);
    L->ty = fm_add(g, routed, sd);
    if (fm_graph_status(g) != FM_OK) return snprintf(L->err, sizeof L->err, "graph: %s", fm_ctx_error(L->ctx)), -1;
    fm_graph_output(g, L->ty);
    if (fm_session_init(L->ctx, g, o->backend, NULL, 0, &L->s) != FM_OK)
        return snprintf(L->err, sizeof L->err, "fm_session_init: %s", fm_ctx_error(L->ctx)), -1;
    if (run_ours(L)) return -1;
    *nodes = fm_session_node_count(L->s);
    for (int i = 0; i < *nodes; i++) {
        fm_node_stat ns;
        if (fm_session_node_stat(L->s, i, &ns) == FM_OK && ns.backend && strcmp(ns.backend, o->backend))
            return snprintf(L->err, sizeof L->err, "node %s ran on %s, not %s", ns.name, ns.backend, o->backend), -1;
    }
    return 0;
}

int bench_layer(const bench_opts *o) {
    layer L = {0};
    L.E = o->experts > 0 ? o->experts : 64, L.k = o->active > 0 ? o->active : 6;
    L.T = o->tokens > 0 ? o->tokens : 1, L.H = o->hidden > 0 ? o->hidden : 2048, L.I = o->inter > 0 ? o->inter : 1408;
    int nshared = o->shared >= 0 ? o->shared : 2;
    L.IS = nshared * L.I;
    L.dt = o->dtype == FM_F32 ? FM_F32 : o->dtype == FM_F8_E4M3 ? FM_F8_E4M3 : FM_BF16;
    if (L.dt == FM_F32 && !dtype_given()) L.dt = FM_BF16; /* the layer's default is bf16 weights */
    L.aq = L.dt == FM_F8_E4M3 ? (o->act_quant < 0 ? 1 : o->act_quant) : 0;
    if (L.k > L.E) L.k = L.E;
    int G = o->groups > 0 ? o->groups : 1, TG = o->topk_groups > 0 ? o->topk_groups : G;
    if (L.E % G || TG > G || L.k > TG * (L.E / G) || L.IS < 1) {
        fprintf(stderr, "fathom bench layer: need experts %% groups == 0, topk-groups <= groups, "
                        "active <= topk-groups x experts/groups, --shared >= 1\n");
        return 2;
    }
    L.rp = (fm_moe_route_params){(int32_t)L.E, (int32_t)L.k, G, TG, FM_SCORE_SOFTMAX,
                                 G > 1 ? FM_TOPK_GROUP_LIMITED : FM_TOPK_GREEDY, 0, 1.0f};
    int nt = bench_threads_effective(o);
    int gdt = L.dt == FM_F32 ? FM_F32 : FM_BF16; /* router weight: f32 or bf16 (never fp8) */
    static const char *const dn[] = {"f32", "bf16", "f16", "fp8"};
    bench_report r = {.bench = "layer", .unit = "tokens/s", .threads = nt, .runs = o->runs};
    snprintf(r.shape, sizeof r.shape,
             "tokens=%lld hidden=%lld experts=%lld active=%lld inter=%lld shared=%d (%lld) groups=%d/%d dtype=%s%s",
             (long long)L.T, (long long)L.H, (long long)L.E, (long long)L.k, (long long)L.I, nshared, (long long)L.IS, TG,
             G, dn[L.dt & 3], L.dt == FM_F8_E4M3 ? (L.aq ? " act_quant=1" : " act_quant=0") : "");
    double wbytes_all = (double)L.E * L.H * dsize(gdt) + 3.0 * L.H * L.IS * dsize(L.dt) + 3.0 * L.E * L.H * L.I * dsize(L.dt);
    bench_progress("layer %s: preparing %.0f MiB of weights (+ f32 copies for the peers)", r.shape, wbytes_all / 1048576.0);
    L.ex = calloc((size_t)(3 * L.E), sizeof *L.ex);
    if (!L.ex) goto oom;
    if (lw_make(&L.gate, gdt, L.E, L.H, 0.05f) || lw_make(&L.sg, L.dt, L.IS, L.H, 0.03f) ||
        lw_make(&L.su, L.dt, L.IS, L.H, 0.03f) || lw_make(&L.sd, L.dt, L.H, L.IS, 0.03f))
        goto oom;
    for (int64_t e = 0; e < 3 * L.E; e++)
        if (lw_make(&L.ex[e], L.dt, e % 3 == 2 ? L.H : L.I, e % 3 == 2 ? L.I : L.H, e % 3 == 2 ? 0.05f : 0.03f)) goto oom;
    for (int i = 0; i < NX; i++) {
        if (!(L.x[i] = malloc((size_t)(L.T * L.H) * 4))) goto oom;
        for (int64_t j = 0; j < L.T * L.H; j++) L.x[i][j] = frand();
    }
    int64_t maxr = L.T, wide = L.IS > L.I ? L.IS : L.I;
    L.y = malloc((size_t)(L.T * L.H) * 4);
    L.logits = malloc((size_t)(L.T * L.E) * 4);
    L.wts = malloc((size_t)(L.T * L.k) * 4);
    L.ids = malloc((size_t)(L.T * L.k) * 4);
    L.xg = malloc((size_t)(maxr * L.H) * 4);
    L.pg = malloc((size_t)(maxr * wide) * 4);
    L.pu = malloc((size_t)(maxr * wide) * 4);
    L.po = malloc((size_t)(maxr * L.H) * 4);
    L.sh = malloc((size_t)(L.T * L.H) * 4);
    float *yo = malloc((size_t)(L.T * L.H) * 4), *yp = malloc((size_t)(L.T * L.H) * 4);
    if (!L.y || !L.logits || !L.wts || !L.ids || !L.xg || !L.pg || !L.pu || !L.po || !L.sh || !yo || !yp) goto oom;

    /* bytes one run touches: router + shared MLP + the distinct experts of its input
     * (routing by the bench's own router, as the peer does; averaged over the inputs) */
    double act_mean = 0;
    {
        unsigned char *used = malloc((size_t)L.E);
        if (!used) goto oom;
        for (int i = 0; i < NX; i++) {
            memset(used, 0, (size_t)L.E);
            for (int64_t t = 0; t < L.T; t++) {
                const float *xr = L.x[i] + t * L.H;
                for (int64_t e = 0; e < L.E; e++) {
                    double acc = 0;
                    for (int64_t h = 0; h < L.H; h++) acc += (double)xr[h] * L.gate.f[e * L.H + h];
                    L.logits[e] = (float)acc;
                }
                route_c(&L, L.logits, L.ids, L.wts);
                for (int64_t j = 0; j < L.k; j++) used[L.ids[j]] = 1;
            }
            for (int64_t e = 0; e < L.E; e++) act_mean += used[e];
        }
        free(used);
        act_mean /= NX;
    }
    double fixed = (double)L.E * L.H * dsize(gdt) + 3.0 * L.H * L.IS * dsize(L.dt);
    double per_expert = 3.0 * L.H * L.I * dsize(L.dt);
    double b_ours = fixed + act_mean * per_expert;
    double b_peer = (double)L.E * L.H * 4 + 3.0 * L.H * L.IS * 4 + act_mean * 3.0 * L.H * L.I * 4;

    int nodes = 0;
    if (build_ours(&L, o, &r.device, &nodes)) {
        fprintf(stderr, "fathom bench layer: ours unavailable: %s\n", L.err);
        return 1;
    }
    r.mode = "public API";
    bench_peer peers[2];
    int np = bench_peers_load(o->peer, nt, peers);
    /* check: ours and each peer on input 0 */
    double maxd = 0, maxp = 0;
    L.xi = 0;
    if (run_ours(&L) || fm_session_read(L.s, L.ty, yo, (size_t)(L.T * L.H) * 4) != FM_OK) {
        fprintf(stderr, "fathom bench layer: ours failed: %s %s\n", L.err, fm_ctx_error(L.ctx));
        return 1;
    }
    for (int i = 0; i < np; i++) {
        L.peer = &peers[i];
        peer_layer(&L, L.x[0], yp);
        for (int64_t j = 0; j < L.T * L.H; j++) {
            double d = fabs((double)yo[j] - yp[j]);
            maxd = d > maxd ? d : maxd, maxp = fabs(yp[j]) > maxp ? fabs(yp[j]) : maxp;
        }
    }
    bench_probes(o, &r);
    L.nt_ms = calloc((size_t)NT_MAX * 16, sizeof *L.nt_ms);
    L.nrec = 0;
    layer cx[3];
    bench_fn fn[4];
    void *ctx[4];
    cx[0] = L, fn[0] = run_ours, ctx[0] = &cx[0];
    for (int i = 0; i < np; i++) cx[1 + i] = L, cx[1 + i].peer = &peers[i], fn[1 + i] = run_peer, ctx[1 + i] = &cx[1 + i];
    /* the bandwidth probe runs among the contenders too (the layer is judged against it) */
    bench_live live;
    int nc = 1 + np;
    const char *lp = bench_live_add(&live, o, &r, 0, 1, fn, ctx, &nc);
    bench_progress("interleaving ours, %d peer%s%s, %d runs each", np, np == 1 ? "" : "s", lp, o->runs);
    double med[4];
    /* warm-up: every input twice, so every expert it routes to has been read since the weights
     * were written (first reads of fresh memory are slow on virtual machines; see bench_moe.c) */
    int warm = o->warmup > 2 * NX ? o->warmup : 2 * NX;
    bench_progress("%d warm-up rounds (every input twice)", warm);
    int rc = bench_interleave(nc, fn, ctx, o->runs, warm, o->burst, med, NULL);
    bench_live_done(&live, &r, rc ? NULL : med);
    if (rc) {
        fprintf(stderr, "fathom bench layer: ours failed: %s\n", cx[0].err);
        return 1;
    }
    double flop = 2.0 * L.T * L.H * (L.E + 3.0 * L.IS + 3.0 * L.k * L.I);
    r.ours = (double)L.T / med[0];
    int best = -1;
    char pj[512] = "", pt[512] = "";
    size_t lj = 0, lt = 0;
    for (int i = 0; i < np; i++) {
        double v = (double)L.T / med[1 + i];
        if (best < 0 || v > r.peer) best = i, r.peer = v;
        lj += (size_t)snprintf(pj + lj, sizeof pj - lj, ", \"%s\": %.6g", peers[i].name, v);
        lt += (size_t)snprintf(pt + lt, sizeof pt - lt, "  %-12s %10.2f tokens/s (%.3f ms, f32 weights read at %.2f GB/s)\n",
                               peers[i].name, v, med[1 + i] * 1e3, b_peer / med[1 + i] * 1e-9);
    }
    r.peer_name = best >= 0 ? peers[best].name : "none available";
    r.ratio = r.peer > 0 ? r.ours / r.peer : 0;
    r.flop = flop, r.bytes = b_ours, r.t_ours = med[0]; /* the weights one run touches (the peers: f32 copies) */
    if (best >= 0) r.bytes_peer = b_peer, r.t_peer = med[1 + best];
    double gbs = b_ours / med[0] * 1e-9;
    /* per-node medians of ours' runs (warmup excluded) */
    char nj[1024] = "", ntx[1024] = "";
    size_t lnj = 0, lnt = 0;
    for (int i = 0; i < nodes && i < 16 && cx[0].nt_ms; i++) {
        int w = o->warmup < cx[0].nrec ? o->warmup : 0, n = cx[0].nrec - w;
        double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
        if (!v) break;
        for (int q = 0; q < n; q++) v[q] = cx[0].nt_ms[(w + q) * 16 + i];
        fm_node_stat ns;
        fm_session_node_stat(L.s, i, &ns);
        double m = bench_median(v, n);
        free(v);
        lnj += (size_t)snprintf(nj + lnj, sizeof nj - lnj, "%s\"%s\": %.4f", i ? ", " : "", ns.name ? ns.name : "?", m);
        lnt += (size_t)snprintf(ntx + lnt, sizeof ntx - lnt, "%s%s %.3f", i ? ", " : "", ns.name ? ns.name : "?", m);
    }
    snprintf(r.extra_json, sizeof r.extra_json,
             "%s, \"ours_ms\": %.4f, \"peer_ms\": %.4f, \"tokens\": %lld, \"weight_gbs\": %.6g, \"weight_bytes_per_run\": %.6g, "
             "\"fraction_of_bw_probe\": %.4f, \"gflops\": %.6g, \"active_experts_mean\": %.3f, \"nodes\": %d, "
             "\"peer_weights\": \"f32\", \"peer_weight_gbs\": %.6g, \"max_rel_diff_vs_peer\": %.3g, \"node_ms\": {%s}, \"warmup_rounds\": %d",
             pj, med[0] * 1e3, best >= 0 ? med[1 + best] * 1e3 : 0.0, (long long)L.T, gbs, b_ours,
             r.bw > 0 ? gbs / r.bw : 0.0, flop / med[0] * 1e-9, act_mean, nodes,
             best >= 0 ? b_peer / med[1 + best] * 1e-9 : 0.0, maxp > 0 ? maxd / maxp : 0.0, nj, warm);
    snprintf(r.extra_text, sizeof r.extra_text,
             "%s  ours         %10.3f ms per layer (%d nodes), %.2f GFLOP/s\n"
             "  weights      %10.2f GB/s read by ours = %.0f%% of the BW probe (%.1f MB per run: router, shared MLP,\n"
             "               %.2f distinct experts, of %.0f MiB in all; inputs rotate over %d: the experts change every run)\n"
             "  nodes (ms)   %s\n"
             "  check        max |ours - peer| / max |peer| = %.3g (peers: f32 copies of the weights)\n",
             pt, med[0] * 1e3, nodes, flop / med[0] * 1e-9, gbs, r.bw > 0 ? 100 * gbs / r.bw : 0.0, b_ours * 1e-6,
             act_mean, wbytes_all / 1048576.0, NX, ntx,
             maxp > 0 ? maxd / maxp : 0.0);
    bench_print(o, &r);
    fm_session_free(L.s);
    fm_graph_free(L.g);
    fm_ctx_free(L.ctx);
    lw_free(&L.gate), lw_free(&L.sg), lw_free(&L.su), lw_free(&L.sd);
    for (int64_t e = 0; e < 3 * L.E; e++) lw_free(&L.ex[e]);
    for (int i = 0; i < NX; i++) free(L.x[i]);
    free(L.ex), free(L.y), free(L.logits), free(L.wts), free(L.ids), free(L.xg), free(L.pg), free(L.pu), free(L.po);
    free(L.sh), free(yo), free(yp), free(L.nt_ms);
    return 0;
oom:
    fprintf(stderr, "fathom bench layer: out of memory\n");
    return 1;
}
