/* cpu_moe.c - MOE_EXPERTS as one grouped GEMM.
 *
 * Tokens are bucketed by expert (each (token, slot) pair becomes a row of its
 * expert's group, rows gathered once). Phase 1 runs work items (expert, tile
 * of I): gate and up products of the group on that tile, SwiGLU applied while
 * the tile is in cache. Phase 2 runs items (expert, tile of H) of the down
 * projection. Items go largest group first to an atomic work counter, so
 * threads split work by expert and by output tiles alike. The combine adds, per
 * token, its experts' outputs times their weights in ascending expert order (the
 * reference's order). Groups of <= 8 rows (decode) take the few-row kernels,
 * which stream each weight tile once with the decode in registers. With fp8
 * act_quant, each token is quantized once (DeepSeek's act_quant) before gate/up
 * and each SwiGLU row once before down. Long inputs run in token chunks so the
 * buffers stay bounded. Decode (T <= 8) takes its own path, moe_decode below:
 * the whole layer's rows split across threads, one barrier. */
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu_ops.h"

#define TILE 256 /* output tile of an item when groups are large (cache blocking) */
#define CHUNK_BYTES ((int64_t)96 << 20)

int cpu_moe_supports(const fm_pl_node *nd) {
    const fm_moe_experts_params *p = nd->params;
    if (!p || p->n_experts < 1 || nd->n_src != 3 + 3 * p->n_experts || nd->n_dst != 1) return 0;
    const fm_pl_tensor *x = nd->src[0], *ids = nd->src[1], *w = nd->src[2], *y = nd->dst[0];
    if (!x || x->dtype != FM_F32 || x->ndim != 2 || !ids || ids->dtype != FM_I32 || ids->ndim != 2 || !w ||
        w->dtype != FM_F32 || w->ndim != 2 || ids->ne[0] != x->ne[0] || w->ne[0] != x->ne[0] || w->ne[1] != ids->ne[1])
        return 0;
    if (!y || y->dtype != FM_F32 || fm_pl_nelem(y) != fm_pl_nelem(x) || ids->ne[1] > 64) return 0;
    int64_t H = x->ne[1], I = -1;
    for (int e = 0; e < p->n_experts; e++) {
        cpu_wmat g, u, d;
        if (!cpu_wmat_from(nd->src[3 + 3 * e], &g) || !cpu_wmat_from(nd->src[4 + 3 * e], &u) ||
            !cpu_wmat_from(nd->src[5 + 3 * e], &d))
            return 0;
        if (I < 0) I = g.N;
        if (g.N != I || g.K != H || u.N != I || u.K != H || d.N != H || d.K != I) return 0;
    }
    return 1;
}

typedef struct moe_item { int32_t e; int32_t phase; int64_t a, b; } moe_item;

typedef struct moe_job {
    cpu_state *s;
    const fm_pl_node *nd;
    int64_t H, I, k, nbH, nbI;
    int aq;
    const int64_t *off;       /* [E + 1] first row of each expert's group */
    const int32_t *rows;      /* [slots] flat (token, slot) index of each group row */
    const int64_t *rowof;     /* [slots] group row of each flat (token, slot) index */
    float *xg, *xgs;          /* gathered x (or its act_quant values) [slots][H], scales [slots][nbH] */
    float *h, *hv, *hs;       /* SwiGLU output [slots][I]; its act_quant values and scales */
    float *o;                 /* expert outputs [slots][H] */
    const moe_item *items;
    char *tscr;               /* per-thread scratch */
    size_t per_thread;
    int64_t t0;               /* first token of the chunk */
    const float *x;
    float *y;
    const float *wts;
    const int32_t *ids;
} moe_job;

static void w_of(const fm_pl_node *nd, int which, int e, cpu_wmat *w) { cpu_wmat_from(nd->src[3 + which + 3 * e], w); }

static void gather_item(void *arg, int64_t r, int tid) {
    (void)tid;
    const moe_job *j = arg;
    int64_t t = j->rows[r] / j->k; /* within the chunk */
    const float *src = j->x + (j->t0 + t) * j->H;
    if (j->aq) cpu_act_quant_rows(src, 1, j->H, j->H, j->xg + r * j->H, j->xgs + r * j->nbH);
    else memcpy(j->xg + r * j->H, src, (size_t)j->H * 4);
}

static void quant_h_item(void *arg, int64_t r, int tid) {
    (void)tid;
    const moe_job *j = arg;
    cpu_act_quant_rows(j->h + r * j->I, 1, j->I, j->I, j->hv + r * j->I, j->hs + r * j->nbI);
}

static void work_item(void *arg, int64_t i, int tid) {
    const moe_job *j = arg;
    const moe_item *it = &j->items[i];
    const cpu_state *s = j->s;
    int64_t r0 = j->off[it->e], n = j->off[it->e + 1] - r0;
    char *scr = j->tscr + (size_t)tid * j->per_thread;
    if (it->phase == 1) {
        int64_t nn = it->b - it->a;
        float *g = (float *)scr, *u = g + n * nn;
        char *gs = (char *)(u + n * nn);
        gs += (64 - (uintptr_t)gs % 64) % 64;
        cpu_wmat wg, wu;
        w_of(j->nd, 0, it->e, &wg);
        w_of(j->nd, 1, it->e, &wu);
        const float *xv = j->aq ? j->xg + r0 * j->H : NULL, *xs = j->aq ? j->xgs + r0 * j->nbH : NULL;
        cpu_matmul_serial(s, j->xg + r0 * j->H, n, j->H, &wg, it->a, it->b, j->aq, xv, xs, g, nn, gs);
        cpu_matmul_serial(s, j->xg + r0 * j->H, n, j->H, &wu, it->a, it->b, j->aq, xv, xs, u, nn, gs);
        for (int64_t r = 0; r < n; r++) s->k->swiglu_row(g + r * nn, u + r * nn, j->h + (r0 + r) * j->I + it->a, nn);
    } else {
        cpu_wmat wd;
        w_of(j->nd, 2, it->e, &wd);
        const float *xv = j->aq ? j->hv + r0 * j->I : NULL, *xs = j->aq ? j->hs + r0 * j->nbI : NULL;
        cpu_matmul_serial(s, j->h + r0 * j->I, n, j->I, &wd, it->a, it->b, j->aq, xv, xs, j->o + r0 * j->H + it->a,
                          j->H, scr);
    }
}

/* y[t] = sum over the token's slots, in ascending expert order, of weight x output. */
static void combine_item(void *arg, int64_t t, int tid) {
    (void)tid;
    const moe_job *j = arg;
    int64_t k = j->k, T0 = j->t0;
    int32_t order[64];
    for (int64_t a = 0; a < k; a++) order[a] = (int32_t)a;
    const int32_t *id = j->ids + (T0 + t) * k;
    for (int64_t a = 1; a < k; a++) { /* insertion sort by expert id, stable */
        int32_t v = order[a];
        int64_t b = a - 1;
        while (b >= 0 && id[order[b]] > id[v]) order[b + 1] = order[b], b--;
        order[b + 1] = v;
    }
    float *yr = j->y + (T0 + t) * j->H;
    memset(yr, 0, (size_t)j->H * 4);
    for (int64_t a = 0; a < k; a++) {
        int64_t r = j->rowof[t * k + order[a]];
        j->s->k->axpy(j->wts[(T0 + t) * k + order[a]], j->o + r * j->H, yr, j->H);
    }
}

static int cmp_items(const void *a, const void *b, void *ctx) {
    const moe_item *x = a, *y = b;
    const int64_t *off = ctx;
    int64_t nx = off[x->e + 1] - off[x->e], ny = off[y->e + 1] - off[y->e];
    if (x->phase != y->phase) return x->phase - y->phase;
    if (nx != ny) return nx > ny ? -1 : 1;
    if (x->e != y->e) return x->e - y->e;
    return x->a < y->a ? -1 : x->a > y->a;
}

/* insertion sort: a few hundred items at most */
static void sort_items(moe_item *v, int64_t n, const int64_t *off) {
    for (int64_t i = 1; i < n; i++) {
        moe_item x = v[i];
        int64_t j = i - 1;
        while (j >= 0 && cmp_items(&v[j], &x, (void *)off) > 0) v[j + 1] = v[j], j--;
        v[j + 1] = x;
    }
}

/* ---- decode (T <= 8): the whole layer's weights streamed once, split by rows ----
 *
 * One pool job, two phases, one barrier. Phase A (gate, up, SwiGLU): I is cut
 * into chunks, each thread owns one contiguous run of chunks and walks it expert
 * by expert, so it streams 2 x act long row runs (the same rows in every active
 * expert: bytes balance whatever the group sizes); a work unit is (expert, chunk).
 * With fp8 act_quant the chunks are 128-aligned and h's codes are made in place.
 * Phase B (down and combine): the same over H; the thread that finishes the last
 * expert of a chunk of H combines those columns of y (a counter per chunk), so no
 * second barrier. A thread whose own run is done takes units from the far end of
 * the others' runs (one CAS on a packed head/tail word), so a thread preempted by
 * other work on the machine (or still waking up) delays the call by one unit, not
 * by its share; the barrier counts finished units, not arrived threads.
 * Each output element comes from one kernel call of the same shape as in the
 * grouped path, so results do not depend on the thread count or on who ran what. */

#define DEC_MAXT 8
#define DEC_MAXTH 256

typedef struct dec_job {
    const cpu_state *s;
    const fm_pl_node *nd;
    int64_t T, H, I, k, nbI, nact;
    int aq;
    const int32_t *act;        /* [nact] active experts, ascending */
    const int64_t *goff;       /* [nact + 1] first group row of each active expert */
    const float *const *xp;    /* [nact] x rows of the group (or their act_quant values) */
    const float *const *xsp;   /* [nact] act_quant scales of those rows */
    float *h, *hv, *hs;        /* [S][I] SwiGLU rows; act_quant values and scales */
    float *o;                  /* [S][H] expert outputs */
    const int64_t *crow;       /* [T][k] group row of each slot, in ascending expert order */
    const float *cwt;          /* [T][k] weights in the same order */
    float *y;
    char *tscr;
    size_t per_thread;
    int64_t ca, cb, nca, ncb;  /* chunk rows and chunk counts of phases A and B */
    int64_t c0a[DEC_MAXTH + 1], c0b[DEC_MAXTH + 1]; /* first chunk of each thread's run */
    cpu_wq *qa, *qb;           /* [nt] */
    _Atomic int32_t *done;     /* [ncb] experts finished per chunk of H */
    _Atomic int64_t done_a;    /* phase A units finished */
} dec_job;

/* the first lines of a weight run, so its stream starts warm */
static void dec_prefetch(const cpu_wmat *w, int64_t row) {
    const char *p = (const char *)w->data + row * w->K * (w->dtype == FM_F32 ? 4 : w->dtype == FM_F8_E4M3 ? 1 : 2);
    for (int l = 0; l < 16; l++) __builtin_prefetch(p + 64 * l, 0, 2);
}

static void dec_unit_a(const dec_job *j, int64_t a, int64_t c, float *g) {
    const cpu_kern *kk = j->s->k;
    int64_t I = j->I, i0 = c * j->ca, i1 = i0 + j->ca < I ? i0 + j->ca : I, nn = i1 - i0;
    int64_t r0 = j->goff[a], n = j->goff[a + 1] - r0;
    float *u = g + DEC_MAXT * j->ca;
    cpu_wmat wg, wu;
    w_of(j->nd, 0, j->act[a], &wg);
    w_of(j->nd, 1, j->act[a], &wu);
    dec_prefetch(&wu, i0);
    if (j->aq && wg.dtype == FM_F8_E4M3) kk->gemv_fp8(j->xp[a], j->xsp[a], (int)n, wg.K, &wg, i0, i1, g, nn);
    else kk->gemv(j->xp[a], j->H, (int)n, &wg, i0, i1, g, nn);
    if (j->aq && wu.dtype == FM_F8_E4M3) kk->gemv_fp8(j->xp[a], j->xsp[a], (int)n, wu.K, &wu, i0, i1, u, nn);
    else kk->gemv(j->xp[a], j->H, (int)n, &wu, i0, i1, u, nn);
    for (int64_t r = 0; r < n; r++) {
        float *hr = j->h + (r0 + r) * I + i0;
        kk->swiglu_row(g + r * nn, u + r * nn, hr, nn);
        if (j->aq) cpu_act_quant_rows(hr, 1, I, nn, j->hv + (r0 + r) * I + i0, j->hs + (r0 + r) * j->nbI + i0 / CPU_QB);
    }
}

static void dec_unit_b(dec_job *j, int64_t a, int64_t c) {
    const cpu_kern *kk = j->s->k;
    int64_t H = j->H, I = j->I, h0 = c * j->cb, h1 = h0 + j->cb < H ? h0 + j->cb : H;
    int64_t r0 = j->goff[a], n = j->goff[a + 1] - r0;
    cpu_wmat wd;
    w_of(j->nd, 2, j->act[a], &wd);
    if (j->aq && wd.dtype == FM_F8_E4M3)
        kk->gemv_fp8(j->hv + r0 * I, j->hs + r0 * j->nbI, (int)n, I, &wd, h0, h1, j->o + r0 * H + h0, H);
    else
        kk->gemv(j->h + r0 * I, I, (int)n, &wd, h0, h1, j->o + r0 * H + h0, H);
    /* the last expert of this chunk combines its columns (acq_rel: the others' o rows are visible) */
    if (atomic_fetch_add_explicit(&j->done[c], 1, memory_order_acq_rel) != j->nact - 1) return;
    for (int64_t t = 0; t < j->T; t++) {
        float *yr = j->y + t * H + h0;
        memset(yr, 0, (size_t)(h1 - h0) * 4);
        for (int64_t q = 0; q < j->k; q++) kk->axpy(j->cwt[t * j->k + q], j->o + j->crow[t * j->k + q] * H + h0, yr, h1 - h0);
    }
}

/* unit u of thread v's run: expert-major, so the owner streams each expert's rows in one go */
static void dec_unit_of(const int64_t *c0, int v, int64_t u, int64_t *a, int64_t *c) {
    int64_t nc = c0[v + 1] - c0[v];
    *a = u / nc, *c = c0[v] + u % nc;
}

static void dec_task(void *arg, int tid, int nt) {
    dec_job *j = arg;
    float *g = (float *)(void *)(j->tscr + (size_t)tid * j->per_thread);
    int v;
    int64_t u, a, c;
    while ((u = cpu_wq_next(j->qa, tid, nt, &v)) >= 0) {
        dec_unit_of(j->c0a, v, u, &a, &c);
        dec_unit_a(j, a, c, g);
        atomic_fetch_add_explicit(&j->done_a, 1, memory_order_release);
    }
    /* the only barrier: every h row complete. It counts finished units, not threads, so
     * a worker that wakes late (its share taken by the others) holds nobody up. */
    for (int spins = 0; atomic_load_explicit(&j->done_a, memory_order_acquire) < j->nact * j->nca; spins++) {
        if (spins < 20000) __builtin_ia32_pause();
        else sched_yield();
    }
    while ((u = cpu_wq_next(j->qb, tid, nt, &v)) >= 0) {
        dec_unit_of(j->c0b, v, u, &a, &c);
        dec_unit_b(j, a, c);
    }
}

static fm_status moe_decode(cpu_state *s, const fm_pl_node *nd, int64_t T, int64_t H, int64_t I, int64_t k, int64_t E,
                            int aq) {
    const int32_t *ids = nd->src[1]->data;
    const float *x = nd->src[0]->data, *wts = nd->src[2]->data;
    int64_t S = T * k, nbH = (H + CPU_QB - 1) / CPU_QB, nbI = (I + CPU_QB - 1) / CPU_QB;
    int nt = cpu_pool_size(s->pool);
    if (nt > DEC_MAXTH) nt = DEC_MAXTH;
    /* chunks: about four per thread and phase (units are (expert, chunk)) */
    int64_t alignA = aq ? CPU_QB : 16;
    int64_t ca = ((I + 4 * nt - 1) / (4 * nt) + alignA - 1) / alignA * alignA;
    int64_t cb = ((H + 4 * nt - 1) / (4 * nt) + 15) / 16 * 16;
    int64_t nca = (I + ca - 1) / ca, ncb = (H + cb - 1) / cb;
    /* shared buffers (slot 1), grown once and kept */
    size_t need = (size_t)(E + 1) * 8 * 2 + (size_t)S * (8 * 4 + 4 * 3 + 8 * 2) + (size_t)nt * 2 * 64 +
                  (size_t)ncb * 4 + (size_t)(S * (H + nbH + (aq ? 2 : 1) * I + nbI + H)) * 4 +
                  (size_t)(T * (H + nbH)) * 4 + sizeof(dec_job) + 2048;
    char *buf = cpu_scratch_slot(s, 1, need);
    if (!buf) return cpu_fail(s, FM_ENOMEM, "moe_experts '%s': out of memory (%zu bytes)", nd->name, need);
#define TAKE(ptr, type, count)                                                  \
    do {                                                                        \
        buf = (char *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);                 \
        ptr = (type *)(void *)buf;                                              \
        buf += (size_t)(count) * sizeof(type);                                  \
    } while (0)
    int64_t *cnt, *goff, *pos, *crow, *slotrow;
    int32_t *act, *slot;
    float *cwt, *xg, *xgs, *h, *hv = NULL, *hs = NULL, *o, *xq = NULL, *xqs = NULL;
    const float **xp, **xsp;
    cpu_wq *qa, *qb;
    _Atomic int32_t *done;
    dec_job *j;
    TAKE(j, dec_job, 1);
    TAKE(qa, cpu_wq, nt);
    TAKE(qb, cpu_wq, nt);
    TAKE(done, _Atomic int32_t, ncb);
    TAKE(cnt, int64_t, E + 1);
    TAKE(pos, int64_t, E + 1);
    TAKE(goff, int64_t, S + 1);
    TAKE(crow, int64_t, S);
    TAKE(slotrow, int64_t, S);
    TAKE(act, int32_t, S);
    TAKE(slot, int32_t, S);
    TAKE(xp, const float *, S);
    TAKE(xsp, const float *, S);
    TAKE(cwt, float, S);
    TAKE(xg, float, S * H);
    TAKE(xgs, float, S * nbH);
    TAKE(h, float, S * I);
    if (aq) TAKE(hv, float, S * I);
    TAKE(hs, float, S * nbI);
    TAKE(o, float, S * H);
    if (aq) {
        TAKE(xq, float, T * H);
        TAKE(xqs, float, T * nbH);
    }
#undef TAKE
    /* groups: active experts ascending, rows of each in token order */
    memset(cnt, 0, (size_t)(E + 1) * 8);
    for (int64_t i = 0; i < S; i++) cnt[ids[i]]++;
    int64_t nact = 0;
    goff[0] = 0;
    for (int64_t e = 0; e < E; e++) {
        pos[e] = goff[nact];
        if (cnt[e]) act[nact] = (int32_t)e, goff[nact + 1] = goff[nact] + cnt[e], nact++;
    }
    for (int64_t i = 0; i < S; i++) slotrow[i] = pos[ids[i]]++, slot[slotrow[i]] = (int32_t)i;
    if (aq) cpu_act_quant_rows(x, T, H, H, xq, xqs); /* each token once */
    const float *xsrc = aq ? xq : x;
    for (int64_t a = 0; a < nact; a++) {
        int64_t r0 = goff[a], n = goff[a + 1] - r0;
        if (n == 1) { /* a single row: read it in place */
            int64_t t = slot[r0] / k;
            xp[a] = xsrc + t * H, xsp[a] = aq ? xqs + t * nbH : NULL;
            continue;
        }
        for (int64_t r = 0; r < n; r++) {
            int64_t t = slot[r0 + r] / k;
            memcpy(xg + (r0 + r) * H, xsrc + t * H, (size_t)H * 4);
            if (aq) memcpy(xgs + (r0 + r) * nbH, xqs + t * nbH, (size_t)nbH * 4);
        }
        xp[a] = xg + r0 * H, xsp[a] = aq ? xgs + r0 * nbH : NULL;
    }
    /* combine order: per token, its slots by ascending expert (the reference's order) */
    for (int64_t t = 0; t < T; t++) {
        int32_t ord[64];
        const int32_t *id = ids + t * k;
        for (int64_t a = 0; a < k; a++) {
            int32_t v = (int32_t)a;
            int64_t b = a - 1;
            while (b >= 0 && id[ord[b]] > id[v]) ord[b + 1] = ord[b], b--;
            ord[b + 1] = v;
        }
        for (int64_t a = 0; a < k; a++) crow[t * k + a] = slotrow[t * k + ord[a]], cwt[t * k + a] = wts[t * k + ord[a]];
    }
    /* per-thread gate and up rows of one unit */
    size_t per = ((size_t)(2 * DEC_MAXT * ca) * 4 + 63) & ~(size_t)63;
    char *tscr = cpu_scratch_slot(s, 2, per * (size_t)nt);
    if (!tscr) return cpu_fail(s, FM_ENOMEM, "moe_experts '%s': out of memory (%zu bytes)", nd->name, per * (size_t)nt);
    memset(j, 0, sizeof *j);
    *j = (dec_job){.s = s, .nd = nd, .T = T, .H = H, .I = I, .k = k, .nbI = nbI, .nact = nact, .aq = aq, .act = act,
                   .goff = goff, .xp = xp, .xsp = xsp, .h = h, .hv = hv, .hs = hs, .o = o, .crow = crow, .cwt = cwt,
                   .y = nd->dst[0]->data, .tscr = tscr, .per_thread = per, .ca = ca, .cb = cb, .nca = nca,
                   .ncb = ncb, .qa = qa, .qb = qb, .done = done};
    for (int v = 0; v <= nt; v++) j->c0a[v] = nca * v / nt, j->c0b[v] = ncb * v / nt;
    for (int v = 0; v < nt; v++) {
        cpu_wq_init(&qa[v], 0, nact * (j->c0a[v + 1] - j->c0a[v]));
        cpu_wq_init(&qb[v], 0, nact * (j->c0b[v + 1] - j->c0b[v]));
    }
    for (int64_t c = 0; c < ncb; c++) atomic_init(&done[c], 0);
    atomic_init(&j->done_a, 0);
    if (nt < cpu_pool_size(s->pool)) return cpu_fail(s, FM_FAILED, "moe_experts: more than %d threads", DEC_MAXTH);
    cpu_pool_run(s->pool, dec_task, j);
    return FM_OK;
}

fm_status cpu_moe_node(cpu_state *s, const fm_pl_node *nd) {
    const fm_moe_experts_params *p = nd->params;
    const fm_pl_tensor *x = nd->src[0];
    int64_t T = x->ne[0], H = x->ne[1], k = nd->src[1]->ne[1], E = p->n_experts;
    cpu_wmat w0;
    cpu_wmat_from(nd->src[3], &w0);
    int64_t I = w0.N;
    const int32_t *ids = nd->src[1]->data;
    for (int64_t i = 0; i < T * k; i++)
        if (ids[i] < 0 || ids[i] >= E)
            return cpu_fail(s, FM_EINVAL, "moe_experts '%s': expert id %d at row %lld, slot %lld outside [0, %lld)",
                            nd->name, ids[i], (long long)(i / k), (long long)(i % k), (long long)E);
    int aq = p->act_quant != 0;
    if (T <= DEC_MAXT) return moe_decode(s, nd, T, H, I, k, E, aq);
    int64_t nbH = (H + CPU_QB - 1) / CPU_QB, nbI = (I + CPU_QB - 1) / CPU_QB;
    int64_t per_tok = k * (2 * H + (aq ? 2 : 1) * I + nbH + nbI) * 4 + k * 16;
    int64_t TC = CHUNK_BYTES / per_tok;
    if (TC < 1) TC = 1;
    if (TC > T) TC = T;
    int64_t S = TC * k; /* rows per chunk at most */
    /* decode (every group <= 8 rows, weights streamed once): few, long items, so each
     * weight stream runs long; about three items per thread and phase */
    int nt = cpu_pool_size(s->pool);
    int64_t maxg = 0;
    {
        int64_t *cnt = (int64_t *)cpu_scratch_slot(s, 3, (size_t)E * 8);
        if (!cnt) return cpu_fail(s, FM_ENOMEM, "moe_experts '%s': out of memory", nd->name);
        memset(cnt, 0, (size_t)E * 8);
        for (int64_t i = 0; i < T * k; i++) maxg = ++cnt[ids[i]] > maxg ? cnt[ids[i]] : maxg;
    }
    int64_t act = T * k < E ? T * k : E, tile1 = TILE, tile2 = TILE;
    if (maxg <= 8) {
        int64_t pieces = (3 * nt + act - 1) / act;
        tile1 = ((I + pieces - 1) / pieces + 127) / 128 * 128;
        tile2 = ((H + pieces - 1) / pieces + 127) / 128 * 128;
        if (tile1 < TILE) tile1 = TILE;
        if (tile2 < TILE) tile2 = TILE;
    }
    int64_t ntile = (I + tile1 - 1) / tile1 + (H + tile2 - 1) / tile2;
    size_t nitems_max = (size_t)(E < S ? E : S) * (size_t)ntile;
    size_t bytes = (size_t)(S * (2 * H + (aq ? 2 : 1) * I + nbH + nbI)) * 4 + (size_t)(E + 1) * 8 + (size_t)S * 4 +
                   (size_t)S * 8 + nitems_max * sizeof(moe_item) + 1024;
    char *buf = cpu_scratch_slot(s, 1, bytes);
    if (!buf) return cpu_fail(s, FM_ENOMEM, "moe_experts '%s': out of memory (%zu bytes)", nd->name, bytes);
    float *xg = (float *)buf, *o = xg + S * H, *h = o + S * H, *hv = aq ? h + S * I : NULL;
    float *xgs = (aq ? hv : h) + S * I, *hs = xgs + S * nbH;
    int64_t *off = (int64_t *)(void *)(((uintptr_t)(hs + S * nbI) + 63) & ~(uintptr_t)63);
    int64_t *rowof = off + E + 1;             /* [S] group row of flat slot (rows of the chunk) */
    moe_item *items = (moe_item *)(rowof + S);
    int32_t *rows = (int32_t *)(items + nitems_max);

    /* per-thread scratch: gate and up tiles plus the GEMM's own */
    cpu_wmat tile = w0;
    tile.N = tile1;
    int64_t maxn = S;
    size_t g1 = cpu_matmul_scratch_bytes(s, maxn, &tile, aq), g2;
    cpu_wmat d0;
    cpu_wmat_from(nd->src[5], &d0);
    d0.N = tile2;
    g2 = cpu_matmul_scratch_bytes(s, maxn, &d0, aq);
    size_t per = (size_t)(2 * maxn * tile1) * 4 + 128 + (g1 > g2 ? g1 : g2);
    per = (per + 63) & ~(size_t)63;
    char *tscr = cpu_scratch_slot(s, 2, per * (size_t)nt);
    if (!tscr) return cpu_fail(s, FM_ENOMEM, "moe_experts '%s': out of memory (%zu bytes)", nd->name, per * (size_t)nt);

    for (int64_t t0 = 0; t0 < T; t0 += TC) {
        int64_t tn = T - t0 < TC ? T - t0 : TC, ns = tn * k;
        const int32_t *cid = ids + t0 * k;
        memset(off, 0, (size_t)(E + 1) * 8);
        for (int64_t i = 0; i < ns; i++) off[cid[i] + 1]++;
        for (int64_t e = 0; e < E; e++) off[e + 1] += off[e];
        /* stable bucketing: rows of expert e in token order */
        for (int64_t e = 0, r = 0; e < E; e++)
            for (int64_t i = 0; i < ns && r < off[e + 1]; i++)
                if (cid[i] == e) rows[r] = (int32_t)i, rowof[i] = r, r++;
        int64_t ni = 0;
        for (int64_t e = 0; e < E; e++) {
            if (off[e + 1] == off[e]) continue;
            for (int64_t a = 0; a < I; a += tile1) items[ni++] = (moe_item){(int32_t)e, 1, a, a + tile1 < I ? a + tile1 : I};
        }
        int64_t n1 = ni;
        for (int64_t e = 0; e < E; e++) {
            if (off[e + 1] == off[e]) continue;
            for (int64_t a = 0; a < H; a += tile2) items[ni++] = (moe_item){(int32_t)e, 2, a, a + tile2 < H ? a + tile2 : H};
        }
        sort_items(items, ni, off);
        moe_job j = {.s = s, .nd = nd, .H = H, .I = I, .k = k, .nbH = nbH, .nbI = nbI, .aq = aq, .off = off,
                     .rows = rows, .rowof = rowof, .xg = xg, .xgs = xgs, .h = h, .hv = hv, .hs = hs, .o = o, .items = items,
                     .tscr = tscr, .per_thread = per, .t0 = t0, .x = x->data, .y = nd->dst[0]->data,
                     .wts = nd->src[2]->data, .ids = ids};
        cpu_pool_for(ns > 1 ? s->pool : NULL, ns, gather_item, &j);
        cpu_pool_for(s->pool, n1, work_item, &j);
        if (aq) cpu_pool_for(ns > 1 ? s->pool : NULL, ns, quant_h_item, &j);
        j.items = items + n1;
        cpu_pool_for(s->pool, ni - n1, work_item, &j);
        cpu_pool_for(tn > 1 ? s->pool : NULL, tn, combine_item, &j);
    }
    return FM_OK;
}
