/* bench_mla.c - `fathom bench route` and `fathom bench mla`: a fused op of ours
 * against our own per-op composition of the same computation (the peers the
 * issue names: no BLAS has these ops). The compositions run on one instance of
 * the same backend plugin: MATMUL nodes for the products, plain C passes for the
 * rest, each step a separate pass over memory, as a graph of simple ops would do.
 *   route: MOE_ROUTE  vs  MATMUL (logits) + scoring, group and top-k passes.
 *   mla:   MLA_ATTN (absorbed)  vs  MATMUL per head for q_abs, one MATMUL for the
 *          scores against the cache, a softmax pass, one MATMUL against the
 *          transposed cache (prepared outside the timing) and MATMUL per head for
 *          the output projection. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "internal.h"

static uint64_t rng = 0x853c49e6748fea9bull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-52 - 1.0);
}
/* Laid out as the model's memory (fm_alloc_stream, which allocates its KV cache):
 * 64-byte aligned (rows of 64-byte multiples then start on cache lines), and from
 * 2 MiB on in 2 MiB pages where the system grants them - kv_b too, as the kernel maps
 * a checkpoint file (page-cache large folios, mapped 2 MiB at a time). */
static void *xmalloc(size_t n) {
    void *p = fm_alloc_stream(NULL, n ? n : 1);
    if (!p) {
        fprintf(stderr, "fathom bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}
static void bf16_fill(uint16_t *d, int64_t n, float amp) {
    for (int64_t i = 0; i < n; i++) {
        float v = frand() * amp;
        uint32_t u;
        memcpy(&u, &v, 4);
        d[i] = (uint16_t)(u >> 16);
    }
}
static float bf16v(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define NCOPY 16 /* data sets rotated through (mla: copies of the cache and kv_b) */

/* ours[i] and ctx[i] work on data set i; each call takes the next set, so within a
 * burst (--burst) every call reads data the previous calls did not. */
typedef struct two {
    bench_ours *ours[NCOPY];
    void *ctx[NCOPY];
    int n, io, ip;
    bench_plugin *pl;
    int (*peer)(void *);
} two;
static int run_ours(void *c) {
    two *t = c;
    return bench_ours_run(t->ours[t->io++ % t->n]);
}
static int run_peer(void *c) {
    two *t = c;
    return t->peer(t->ctx[t->ip++ % t->n]);
}

static int run_ours_hot(void *c) { return bench_ours_run(((two *)c)->ours[0]); }

/* Runs ours and the composition interleaved; fills r (unit per second = work / time).
 * With several data sets, ours also runs on set 0 alone as a third contender: med[2]
 * is the time with the data in cache. */
static int compare(const bench_opts *o, bench_report *r, two *t, double work, double *med) {
    two a = *t, b = *t, h = *t;
    bench_fn fn[5] = {run_ours, run_peer, run_ours_hot};
    void *ctx[5] = {&a, &b, &h};
    int n = t->n > 1 ? 3 : 2;
    /* mla: both probes run among the contenders too: the fraction of the bf16 FMA probe
     * compares medians taken under the same conditions, and the roofline's memory roof
     * is the bandwidth of those minutes (other tenants move it) */
    bench_live live;
    int mla = !strcmp(o->sub, "mla"), nc = n;
    const char *lp = bench_live_add(&live, o, r, mla, mla, fn, ctx, &nc);
    bench_progress("interleaving ours%s, the per-op composition%s, %d runs each", n == 3 ? " (cold and cached)" : "", lp,
                   o->runs);
    double m[5];
    int rc = bench_interleave(nc, fn, ctx, o->runs, o->warmup, o->burst, m, NULL);
    bench_live_done(&live, r, rc ? NULL : m);
    if (rc) {
        fprintf(stderr, "fathom bench %s: failed: %s %s\n", o->sub, bench_ours_error(t->ours[0]), bench_plugin_error(t->pl));
        return -1;
    }
    for (int i = 0; i < n; i++) med[i] = m[i];
    r->ours = work / med[0];
    r->peer = work / med[1];
    r->ratio = r->ours / r->peer;
    r->peer_name = "per-op composition (ours)";
    return 0;
}

/* ---- route ---- */

typedef struct route_ctx {
    bench_plugin *pl;
    bench_tensor *x, *g, *logits;
    const fm_moe_route_params *p;
    const float *bias;
    float *scores, *sel, *gsc, *w;
    int32_t *ids;
    int64_t T;
} route_ctx;

static int route_peer(void *c) {
    route_ctx *r = c;
    fm_matmul_params mp = {0};
    bench_tensor *src[2] = {r->x, r->g}, *dst[1] = {r->logits};
    if (bench_plugin_run(r->pl, FM_OP_MATMUL, src, 2, dst, 1, &mp)) return -1;
    const float *lg = r->logits->data;
    int64_t T = r->T, E = r->p->n_experts, G = r->p->n_group, gs = E / G, k = r->p->top_k;
    for (int64_t i = 0; i < T * E; i++) r->scores[i] = 1.0f / (1.0f + expf(-lg[i])); /* pass: scores */
    for (int64_t i = 0; i < T * E; i++) r->sel[i] = r->scores[i] + r->bias[i % E];   /* pass: selection */
    for (int64_t t = 0; t < T; t++)                                                   /* pass: group scores */
        for (int64_t g = 0; g < G; g++) {
            float a = -INFINITY, b = -INFINITY;
            for (int64_t i = 0; i < gs; i++) {
                float v = r->sel[t * E + g * gs + i];
                if (v > a) b = a, a = v;
                else if (v > b) b = v;
            }
            r->gsc[t * G + g] = a + b;
        }
    for (int64_t t = 0; t < T; t++)                                                   /* pass: group mask */
        for (int64_t d = 0; d < G - r->p->topk_group; d++) {
            int64_t lo = -1;
            for (int64_t g = 0; g < G; g++)
                if (r->gsc[t * G + g] > -INFINITY && (lo < 0 || r->gsc[t * G + g] < r->gsc[t * G + lo])) lo = g;
            r->gsc[t * G + lo] = -INFINITY;
            for (int64_t i = 0; i < gs; i++) r->sel[t * E + lo * gs + i] = -INFINITY;
        }
    for (int64_t t = 0; t < T; t++) {                                                 /* pass: top-k, weights */
        float sum = 0;
        for (int64_t j = 0; j < k; j++) {
            int64_t b = 0;
            for (int64_t e = 1; e < E; e++) b = r->sel[t * E + e] > r->sel[t * E + b] ? e : b;
            r->ids[t * k + j] = (int32_t)b, r->w[t * k + j] = r->scores[t * E + b], sum += r->scores[t * E + b];
            r->sel[t * E + b] = -INFINITY;
        }
        for (int64_t j = 0; j < k; j++) r->w[t * k + j] = r->w[t * k + j] / sum * r->p->scale;
    }
    return 0;
}

int bench_route(const bench_opts *o) {
    int64_t E = o->experts > 0 ? o->experts : 256, k = o->active > 0 ? o->active : 8;
    int64_t G = o->groups > 0 ? o->groups : 8, TG = o->topk_groups > 0 ? o->topk_groups : 4;
    int64_t T = o->tokens > 0 ? o->tokens : 1, H = o->hidden > 0 ? o->hidden : 7168;
    if (E % G || TG > G || k > TG * (E / G) || E / G < 2) {
        fprintf(stderr, "fathom bench route: inconsistent --experts/--groups/--topk-groups/--active\n");
        return 2;
    }
    int nt = bench_threads_effective(o);
    bench_report r = {.bench = "route", .unit = "tokens/s", .threads = nt, .runs = o->runs};
    snprintf(r.shape, sizeof r.shape, "experts=%lld top_k=%lld groups=%lld topk_groups=%lld tokens=%lld hidden=%lld gate=bf16 "
             "sigmoid noaux_tc", (long long)E, (long long)k, (long long)G, (long long)TG, (long long)T, (long long)H);
    fm_moe_route_params p = {(int32_t)E, (int32_t)k, (int32_t)G, (int32_t)TG, FM_SCORE_SIGMOID, FM_TOPK_NOAUX_TC, 1, 2.5f};
    float *x = xmalloc((size_t)(T * H) * 4), *bias = xmalloc((size_t)E * 4), *w = xmalloc((size_t)(T * k) * 4);
    uint16_t *gw = xmalloc((size_t)(E * H) * 2);
    int32_t *ids = xmalloc((size_t)(T * k) * 4);
    for (int64_t i = 0; i < T * H; i++) x[i] = frand();
    for (int64_t i = 0; i < E; i++) bias[i] = frand() * 0.01f;
    bf16_fill(gw, E * H, 0.05f);
    bench_tensor tx = {.name = "x", .dtype = FM_F32, .ndim = 2, .ne = {T, H}, .data = x, .kind = 0};
    bench_tensor tg = {.name = "gate", .dtype = FM_BF16, .ndim = 2, .ne = {E, H}, .data = gw, .kind = 1};
    bench_tensor tb = {.name = "bias", .dtype = FM_F32, .ndim = 1, .ne = {E}, .data = bias, .kind = 1};
    bench_tensor ti = {.name = "ids", .dtype = FM_I32, .ndim = 2, .ne = {T, k}, .data = ids, .kind = 3};
    bench_tensor tw = {.name = "w", .dtype = FM_F32, .ndim = 2, .ne = {T, k}, .data = w, .kind = 3};
    bench_tensor *src[3] = {&tx, &tg, &tb}, *dst[2] = {&ti, &tw};
    two t = {.n = 1};
    char why[512];
    if (bench_ours_init(&t.ours[0], o, FM_OP_MOE_ROUTE, src, 3, dst, 2, &p, sizeof p, why, sizeof why) ||
        bench_plugin_open(&t.pl, o, why, sizeof why)) {
        fprintf(stderr, "fathom bench route: %s\n", why);
        return 1;
    }
    route_ctx rc = {.pl = t.pl, .x = &tx, .g = &tg, .p = &p, .bias = bias, .T = T};
    bench_tensor tl = {.name = "logits", .dtype = FM_F32, .ndim = 2, .ne = {T, E}, .data = xmalloc((size_t)(T * E) * 4), .kind = 3};
    rc.logits = &tl;
    rc.scores = xmalloc((size_t)(T * E) * 4), rc.sel = xmalloc((size_t)(T * E) * 4), rc.gsc = xmalloc((size_t)(T * G) * 4);
    rc.w = xmalloc((size_t)(T * k) * 4), rc.ids = xmalloc((size_t)(T * k) * 4);
    t.ctx[0] = &rc, t.peer = route_peer;
    r.mode = bench_ours_mode(t.ours[0]);
    r.device = bench_ours_device(t.ours[0]);
    bench_probes(o, &r);
    double med[3];
    if (compare(o, &r, &t, (double)T, med)) return 1;
    bench_ours_read(t.ours[0]);
    int64_t diff = 0; /* ids compared as sets per token */
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < k; j++) {
            int hit = 0;
            for (int64_t a = 0; a < k; a++) hit |= ids[i * k + j] == rc.ids[i * k + a];
            diff += !hit;
        }
    double gb = (double)(E * H) * 2 / med[0] * 1e-9;
    /* the gate GEMM's FLOPs; the bf16 gate and x once (the composition reads the same) */
    r.flop = 2.0 * (double)(T * E * H), r.bytes = r.bytes_peer = (double)(E * H) * 2 + (double)(T * H) * 4;
    r.t_ours = med[0], r.t_peer = med[1];
    snprintf(r.extra_json, sizeof r.extra_json, ", \"ours_us\": %.3f, \"peer_us\": %.3f, \"gate_gbs\": %.6g, \"ids_differing\": %lld",
             med[0] * 1e6, med[1] * 1e6, gb, (long long)diff);
    snprintf(r.extra_text, sizeof r.extra_text,
             "  ours         %10.1f us per call (gate weight read at %.2f GB/s, %.0f%% of the BW probe)\n"
             "  peer         %10.1f us per call\n  check        %lld expert ids differ from the composition's\n",
             med[0] * 1e6, gb, r.bw > 0 ? 100 * gb / r.bw : 0.0, med[1] * 1e6, (long long)diff);
    bench_print(o, &r);
    bench_ours_free(t.ours[0]);
    bench_plugin_close(t.pl);
    free(x), free(bias), free(w), free(gw), free(ids), free(tl.data);
    free(rc.scores), free(rc.sel), free(rc.gsc), free(rc.w), free(rc.ids);
    return 0;
}

/* ---- mla ---- */

typedef struct mla_ctx {
    bench_plugin *pl;
    int64_t T, H, nope, R, v, C, D, L;
    float scale;
    const int32_t *pos;
    const float *q;
    float *qn, *qa, *qcat, *s, *ol, *olh, *oh, *out;
    bench_tensor *wuk, *cache, *cacheT, *wuv; /* wuk/wuv: H of each */
} mla_ctx;

static int mla_peer(void *c) {
    mla_ctx *m = c;
    int64_t T = m->T, H = m->H, qs = H * (m->nope + m->R);
    fm_matmul_params mp = {0};
    for (int64_t h = 0; h < H; h++) { /* q_abs per head */
        for (int64_t t = 0; t < T; t++) memcpy(m->qn + t * m->nope, m->q + t * qs + h * (m->nope + m->R), (size_t)m->nope * 4);
        bench_tensor a = {.name = "qn", .dtype = FM_F32, .ndim = 2, .ne = {T, m->nope}, .data = m->qn};
        bench_tensor y = {.name = "qa", .dtype = FM_F32, .ndim = 2, .ne = {T, m->C}, .data = m->qa};
        bench_tensor *src[2] = {&a, &m->wuk[h]}, *dst[1] = {&y};
        if (bench_plugin_run(m->pl, FM_OP_MATMUL, src, 2, dst, 1, &mp)) return -1;
        for (int64_t t = 0; t < T; t++) {
            float *row = m->qcat + (t * H + h) * m->D;
            memcpy(row, m->qa + t * m->C, (size_t)m->C * 4);
            memcpy(row + m->C, m->q + t * qs + h * (m->nope + m->R) + m->nope, (size_t)m->R * 4);
        }
    }
    bench_tensor qc = {.name = "qcat", .dtype = FM_F32, .ndim = 2, .ne = {T * H, m->D}, .data = m->qcat};
    bench_tensor sc = {.name = "s", .dtype = FM_F32, .ndim = 2, .ne = {T * H, m->L}, .data = m->s};
    bench_tensor *s1[2] = {&qc, m->cache}, *d1[1] = {&sc};
    if (bench_plugin_run(m->pl, FM_OP_MATMUL, s1, 2, d1, 1, &mp)) return -1;
    for (int64_t r = 0; r < T * H; r++) { /* softmax pass, causal */
        float *s = m->s + r * m->L, mx = -INFINITY, sum = 0;
        int64_t n = m->pos[r / H] + 1;
        for (int64_t j = 0; j < n; j++) s[j] *= m->scale, mx = s[j] > mx ? s[j] : mx;
        for (int64_t j = 0; j < n; j++) sum += (s[j] = expf(s[j] - mx));
        for (int64_t j = 0; j < n; j++) s[j] /= sum;
        for (int64_t j = n; j < m->L; j++) s[j] = 0;
    }
    bench_tensor ol = {.name = "olat", .dtype = FM_F32, .ndim = 2, .ne = {T * H, m->C}, .data = m->ol};
    bench_tensor *s2[2] = {&sc, m->cacheT}, *d2[1] = {&ol};
    if (bench_plugin_run(m->pl, FM_OP_MATMUL, s2, 2, d2, 1, &mp)) return -1;
    for (int64_t h = 0; h < H; h++) { /* output projection per head */
        for (int64_t t = 0; t < T; t++) memcpy(m->olh + t * m->C, m->ol + (t * H + h) * m->C, (size_t)m->C * 4);
        bench_tensor a = {.name = "olh", .dtype = FM_F32, .ndim = 2, .ne = {T, m->C}, .data = m->olh};
        bench_tensor y = {.name = "oh", .dtype = FM_F32, .ndim = 2, .ne = {T, m->v}, .data = m->oh};
        bench_tensor *src[2] = {&a, &m->wuv[h]}, *dst[1] = {&y};
        if (bench_plugin_run(m->pl, FM_OP_MATMUL, src, 2, dst, 1, &mp)) return -1;
        for (int64_t t = 0; t < T; t++) memcpy(m->out + t * H * m->v + h * m->v, m->oh + t * m->v, (size_t)m->v * 4);
    }
    return 0;
}

int bench_mla(const bench_opts *o) {
    int64_t H = o->heads, C = o->kv_lora, R = o->rope, nope = o->nope, v = o->vdim, L = o->ctx_len;
    int64_t T = o->tokens > 0 ? o->tokens : 1, D = C + R, qs = H * (nope + R);
    if (H < 1 || C < 1 || R < 2 || nope < 1 || v < 1 || L < T) {
        fprintf(stderr, "fathom bench mla: bad shape (need --ctx >= --tokens)\n");
        return 2;
    }
    if ((double)(T * H) * (double)L * 4 > 2e9) {
        fprintf(stderr, "fathom bench mla: the per-op composition would need %.1f GB of scores; use fewer tokens\n",
                (double)(T * H) * (double)L * 4e-9);
        return 2;
    }
    int nt = bench_threads_effective(o);
    bench_report r = {.bench = "mla", .unit = "GFLOP/s", .threads = nt, .runs = o->runs};
    snprintf(r.shape, sizeof r.shape, "heads=%lld kv_lora=%lld rope=%lld nope=%lld v=%lld ctx=%lld tokens=%lld kv_b=%s cache=%s absorb",
             (long long)H, (long long)C, (long long)R, (long long)nope, (long long)v, (long long)L, (long long)T,
             o->dtype == FM_F8_E4M3 ? "fp8" : "bf16", o->cache_dtype == FM_BF16 ? "bf16" : "f32");
    /* data sets: the cache and kv_b (and the composition's copies of them) per set, enough
     * sets that a burst reads from memory, not from the last-level cache */
    const int cdt = o->cache_dtype == FM_BF16 ? FM_BF16 : FM_F32, c16 = cdt == FM_BF16;
    const int kdt = o->dtype == FM_F8_E4M3 ? FM_F8_E4M3 : FM_BF16, f8 = kdt == FM_F8_E4M3;
    const int64_t sr = (H * (nope + v) + 127) / 128, sc = (C + 127) / 128;
    if (f8 && (nope % 128 || v % 128)) {
        fprintf(stderr, "fathom bench mla: --dtype fp8 needs --nope and --v multiples of 128 (the composition takes each "
                        "head's W_UV rows with their own rows of 128 x 128 block scales)\n");
        return 2;
    }
    const size_t ce = c16 ? 2 : 4;
    double per_set = (double)(L * D) * 2 * ce + (double)(H * (nope + v) * C) * (f8 ? 1 : 2) + (double)(H * C * nope) * 4;
    int nc = (int)((256.0 * 1048576 + per_set - 1) / per_set);
    nc = nc < 1 ? 1 : nc > o->burst ? o->burst : nc > NCOPY ? NCOPY : nc;
    if (o->sets > 0) nc = o->sets < NCOPY ? o->sets : NCOPY; /* --sets 1: every call on the same (cached) data */
    bench_progress("mla %s: preparing %d data set%s (%.0f MiB each)", r.shape, nc, nc == 1 ? "" : "s", per_set / 1048576);
    float *q = xmalloc((size_t)(T * qs) * 4), *out = xmalloc((size_t)(T * H * v) * 4);
    int32_t *pos = xmalloc((size_t)T * 4);
    for (int64_t i = 0; i < T * qs; i++) q[i] = frand();
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(L - T + t);
    fm_mla_attn_params p = {.n_heads = (int32_t)H, .nope = (int32_t)nope, .rope = (int32_t)R, .v = (int32_t)v,
                            .kv_lora = (int32_t)C, .scale = 1.0f / sqrtf((float)(nope + R)), .mode = FM_MLA_ABSORB};
    bench_tensor tq = {.name = "q", .dtype = FM_F32, .ndim = 2, .ne = {T, qs}, .data = q, .kind = 0};
    bench_tensor tp = {.name = "pos", .dtype = FM_I32, .ndim = 1, .ne = {T}, .data = pos, .kind = 0};
    bench_tensor ty = {.name = "out", .dtype = FM_F32, .ndim = 2, .ne = {T, H * v}, .data = out, .kind = 3};
    /* the composition's scratch, shared by the sets (they run one at a time) */
    mla_ctx m0 = {.T = T, .H = H, .nope = nope, .R = R, .v = v, .C = C, .D = D, .L = L, .scale = p.scale, .pos = pos,
                  .q = q, .out = xmalloc((size_t)(T * H * v) * 4)};
    m0.qn = xmalloc((size_t)(T * nope) * 4), m0.qa = xmalloc((size_t)(T * C) * 4), m0.qcat = xmalloc((size_t)(T * H * D) * 4);
    m0.s = xmalloc((size_t)(T * H * L) * 4), m0.ol = xmalloc((size_t)(T * H * C) * 4), m0.olh = xmalloc((size_t)(T * C) * 4);
    m0.oh = xmalloc((size_t)(T * v) * 4);
    mla_ctx *ms = xmalloc((size_t)nc * sizeof *ms);
    bench_tensor *tcs = xmalloc((size_t)nc * 3 * sizeof *tcs); /* per set: cache, kv_b, cacheT */
    bench_tensor *kscale = xmalloc((size_t)nc * sizeof *kscale); /* per set: kv_b's block scales (fp8) */
    two t = {.n = nc};
    char why[512];
    bench_tensor *dst[1] = {&ty}; /* kept by every instance (bench_ours_read) */
    if (bench_plugin_open(&t.pl, o, why, sizeof why)) {
        fprintf(stderr, "fathom bench mla: %s\n", why);
        return 1;
    }
    for (int c = 0; c < nc; c++) {
        /* the cache (and its transpose for the composition) at --cache-dtype */
        void *cache = xmalloc((size_t)(L * D) * ce), *cT = xmalloc((size_t)(C * L) * ce);
        /* kv_b at --dtype: bf16, or fp8 e4m3 with 128 x 128 block scales (DeepSeek-V3's) */
        void *kvb = xmalloc((size_t)(H * (nope + v) * C) * (f8 ? 1 : 2));
        float *kvs = f8 ? xmalloc((size_t)(sr * sc) * 4) : NULL;
        if (c16) {
            bf16_fill(cache, L * D, 1.0f);
            for (int64_t j = 0; j < L; j++)
                for (int64_t k = 0; k < C; k++) ((uint16_t *)cT)[k * L + j] = ((uint16_t *)cache)[j * D + k];
        } else {
            for (int64_t i = 0; i < L * D; i++) ((float *)cache)[i] = frand();
            for (int64_t j = 0; j < L; j++)
                for (int64_t k = 0; k < C; k++) ((float *)cT)[k * L + j] = ((float *)cache)[j * D + k];
        }
        if (f8) {
            for (int64_t i = 0; i < sr * sc; i++) kvs[i] = 0x1p-8f * (1.5f + frand());
            for (int64_t i = 0; i < H * (nope + v) * C; i++) {
                uint8_t b = (uint8_t)(rng >> 24);
                (void)frand();
                ((uint8_t *)kvb)[i] = (b & 0x7f) == 0x7f ? b ^ 1 : b; /* no NaN codes */
            }
        } else {
            bf16_fill(kvb, H * (nope + v) * C, 0.05f);
        }
        bench_tensor *tc = tcs + 3 * c, *tk = tc + 1, *tcT = tc + 2, *tks = kscale + c;
        *tc = (bench_tensor){.name = "cache", .dtype = cdt, .ndim = 2, .ne = {L, D}, .data = cache, .kind = 2};
        *tks = (bench_tensor){.name = "kv_b.scale", .dtype = FM_F32, .ndim = 2, .ne = {sr, sc}, .data = kvs, .kind = 1};
        *tk = (bench_tensor){.name = "kv_b", .dtype = kdt, .ndim = 2, .ne = {H * (nope + v), C}, .data = kvb,
                             .scale = f8 ? tks : NULL, .kind = 1};
        *tcT = (bench_tensor){.name = "cacheT", .dtype = cdt, .ndim = 2, .ne = {C, L}, .data = cT, .kind = 1};
        bench_tensor *src[4] = {&tq, tc, &tp, tk};
        if (bench_ours_init_shared(&t.ours[c], c ? t.ours[0] : NULL, o, FM_OP_MLA_ATTN, src, 4, dst, 1, &p, sizeof p, why,
                                   sizeof why)) {
            fprintf(stderr, "fathom bench mla: %s\n", why);
            return 1;
        }
        /* the composition's weights: W_UK^T per head as [C, nope] f32, W_UV per head as rows of
         * kv_b (fp8: with its rows of block scales) */
        mla_ctx *m = ms + c;
        *m = m0;
        m->pl = t.pl;
        m->wuk = xmalloc((size_t)H * sizeof *m->wuk), m->wuv = xmalloc((size_t)(2 * H) * sizeof *m->wuv);
        float *wukT = xmalloc((size_t)(H * C * nope) * 4);
        for (int64_t h = 0; h < H; h++) {
            for (int64_t d = 0; d < nope; d++)
                for (int64_t k = 0; k < C; k++) {
                    int64_t row = h * (nope + v) + d, i = row * C + k;
                    wukT[(h * C + k) * nope + d] = f8 ? bench_e4m3(((uint8_t *)kvb)[i]) * kvs[(row / 128) * sc + k / 128]
                                                      : bf16v(((uint16_t *)kvb)[i]);
                }
            m->wuk[h] = (bench_tensor){.name = "wuk", .dtype = FM_F32, .ndim = 2, .ne = {C, nope}, .data = wukT + h * C * nope, .kind = 1};
            int64_t r0 = h * (nope + v) + nope;
            m->wuv[H + h] = (bench_tensor){.name = "wuv.scale", .dtype = FM_F32, .ndim = 2, .ne = {v / 128, sc},
                                           .data = f8 ? kvs + (r0 / 128) * sc : NULL, .kind = 1};
            m->wuv[h] = (bench_tensor){.name = "wuv", .dtype = kdt, .ndim = 2, .ne = {v, C},
                                       .data = (char *)kvb + r0 * C * (f8 ? 1 : 2), .scale = f8 ? &m->wuv[H + h] : NULL,
                                       .kind = 1};
        }
        m->cache = tc, m->cacheT = tcT;
        t.ctx[c] = m;
    }
    t.peer = mla_peer;
    r.mode = bench_ours_mode(t.ours[0]);
    r.device = bench_ours_device(t.ours[0]);
    bench_probes(o, &r);
    double keys = 0;
    for (int64_t i = 0; i < T; i++) keys += pos[i] + 1;
    double flop = 2.0 * (double)H * ((double)T * (double)(nope * C + v * C) + keys * (double)(D + C));
    double med[3] = {0, 0, 0};
    if (compare(o, &r, &t, flop * 1e-9, med)) return 1;
    double hot = med[2] > 0 ? flop * 1e-9 / med[2] : 0; /* GFLOP/s, set 0 only (nc > 1) */
    /* the cache rows in use, kv_b, q and out once (the composition's own copies and
     * intermediates differ: not shown) */
    r.flop = flop, r.t_ours = med[0];
    r.bytes = (double)(keys * D) * (double)ce + (double)(H * (nope + v) * C) * (f8 ? 1 : 2) + 4.0 * (double)(T * (qs + H * v));
    /* check: ours and the composition on set 0 */
    if (bench_ours_run(t.ours[0]) || bench_ours_read(t.ours[0]) || mla_peer(ms)) {
        fprintf(stderr, "fathom bench mla: check run failed: %s %s\n", bench_ours_error(t.ours[0]), bench_plugin_error(t.pl));
        return 1;
    }
    double md = 0, mx = 0;
    for (int64_t i = 0; i < T * H * v; i++)
        md = fmax(md, fabs((double)out[i] - m0.out[i])), mx = fmax(mx, fabs((double)m0.out[i]));
    double cache_gb = (double)(L * D) * (double)ce / med[0] * 1e-9;
    snprintf(r.extra_json, sizeof r.extra_json,
             ", \"ours_us\": %.3f, \"peer_us\": %.3f, \"fraction_of_bf16_probe\": %.4f, \"fraction_of_f32_probe\": %.4f, "
             "\"cache_gbs\": %.6g, \"max_rel_diff_vs_peer\": %.3g, \"sets\": %d",
             med[0] * 1e6, med[1] * 1e6, r.fma_bf16 > 0 ? r.ours / r.fma_bf16 : 0.0, r.fma_f32 > 0 ? r.ours / r.fma_f32 : 0.0,
             cache_gb, mx > 0 ? md / mx : 0.0, nc);
    if (hot > 0) {
        size_t l = strlen(r.extra_json);
        snprintf(r.extra_json + l, sizeof r.extra_json - l,
                 ", \"ours_cached_gflops\": %.6g, \"ours_cached_us\": %.3f, \"fraction_of_bf16_probe_cached\": %.4f", hot,
                 med[2] * 1e6, r.fma_bf16 > 0 ? hot / r.fma_bf16 : 0.0);
    }
    char hl[160] = "";
    if (hot > 0)
        snprintf(hl, sizeof hl, "  cached       %10.1f us per call (set 0 every call): %.0f%% of the bf16 probe\n", med[2] * 1e6,
                 r.fma_bf16 > 0 ? 100 * hot / r.fma_bf16 : 0.0);
    snprintf(r.extra_text, sizeof r.extra_text,
             "  ours         %10.1f us per call, %d data sets rotated: %.0f%% of the f32 FMA probe, %.0f%% of the bf16 probe;\n"
             "               cache read at %.1f GB/s\n%s"
             "  peer         %10.1f us per call\n  check        max |ours - peer| / max |peer| = %.3g\n",
             med[0] * 1e6, nc, r.fma_f32 > 0 ? 100 * r.ours / r.fma_f32 : 0.0, r.fma_bf16 > 0 ? 100 * r.ours / r.fma_bf16 : 0.0,
             cache_gb, hl, med[1] * 1e6, mx > 0 ? md / mx : 0.0);
    bench_print(o, &r);
    for (int c = nc - 1; c >= 0; c--) { /* set 0 owns the context the others share */
        bench_ours_free(t.ours[c]);
        free(tcs[3 * c].data), free(tcs[3 * c + 1].data), free(tcs[3 * c + 2].data), free(kscale[c].data);
        free(ms[c].wuk[0].data), free(ms[c].wuk), free(ms[c].wuv);
    }
    bench_plugin_close(t.pl);
    free(q), free(out), free(pos), free(m0.out), free(m0.qn), free(m0.qa), free(m0.qcat), free(m0.s), free(m0.ol);
    free(m0.olh), free(m0.oh), free(ms), free(tcs), free(kscale);
    return 0;
}
