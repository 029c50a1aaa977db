/* cpu_mla.c - MLA_ATTN, absorbed form (DeepSeek model.py attn_impl="absorb") and
 * naive form (mla_naive, below).
 *
 * Queries are processed in blocks of QB tokens (rows = token x head). For each
 * block: q_abs = W_UK^T q_nope per head (few tokens: kv_b rows streamed once and
 * accumulated; more: W_UK decoded once per call and a GEMM), the row [q_abs |
 * q_pe] against the latent cache in blocks of KB rows as GEMMs - scores S =
 * Q K^T, an online softmax (running max and sum per row, causal mask from pos),
 * O += P C - and finally out = W_UV o_lat per head. Memory is O(rows x (KB +
 * kv_lora)), independent of the context length; the cache is read once per
 * query block. Decode-sized blocks on the AVX-512 levels run the kernels of
 * kern_mla_*.c (mla_decode_vec): cache rows split across threads in chunks
 * (dec_plan), each with its own partial result, combined in a fixed tree as the
 * chunks finish (chunk_tree); the thread that projects a head normalises that
 * head's rows (out_head), with W_UV requested during the attention. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

#define KB 512

int cpu_mla_supports(const fm_pl_node *nd) {
    const fm_mla_attn_params *p = nd->params;
    if (!p || nd->n_src != 4 || nd->n_dst != 1 || (p->mode != FM_MLA_ABSORB && p->mode != FM_MLA_NAIVE)) return 0;
    const fm_pl_tensor *q = nd->src[0], *c = nd->src[1], *pos = nd->src[2], *y = nd->dst[0];
    int64_t H = p->n_heads, D = (int64_t)p->kv_lora + p->rope;
    if (H < 1 || p->nope < 1 || p->rope < 1 || p->v < 1 || p->kv_lora < 1 || !(p->scale > 0) || H > 4096) return 0;
    if (!q || q->dtype != FM_F32 || q->ndim != 2 || q->ne[1] != H * (p->nope + p->rope)) return 0;
    if (!c || (c->dtype != FM_F32 && c->dtype != FM_BF16) || c->ndim != 2 || c->ne[1] != D) return 0;
    if (!pos || pos->dtype != FM_I32 || pos->ndim != 1 || pos->ne[0] != q->ne[0]) return 0;
    cpu_wmat w;
    if (!cpu_wmat_from(nd->src[3], &w) || w.N != H * (p->nope + p->v) || w.K != p->kv_lora) return 0;
    return y && y->dtype == FM_F32 && fm_pl_nelem(y) == q->ne[0] * H * p->v;
}

typedef struct mla_job {
    cpu_state *s;
    const fm_mla_attn_params *p;
    cpu_wmat w;
    const float *q, *cache;   /* cache: f32 rows (a bf16 cache widened, or NULL: cache16 read in place) */
    const uint16_t *cache16;  /* a bf16 cache, for the decode kernels that read it in place */
    const int32_t *pos;
    float *out;
    int64_t H, nope, R, v, C, D, qs;
    int64_t t0, qn;           /* the query block */
    float *qc;                /* [rows][D]: q_abs | q_pe */
    float *S;                 /* [rows][KB] */
    float *O;                 /* [rows][C] */
    float *m, *l;             /* [rows] running max and sum */
    float *wuk;               /* decoded W_UK [H][nope][C], or NULL */
    char *tscr;
    size_t per_thread;
    int64_t kb0, kn;          /* the key block */
    cpu_wq *wq;               /* [threads] the work queues of a decode block's phases, one phase at a time */
    const float *part;        /* a decode block's attention, unnormalised (chunk_tree), or NULL */
    int64_t part_nl;
    int part_perm;            /* part's columns in the bf16 kernel's order (cpu_mla_o_row_avx512bf16) */
    int f8b;                  /* one token of fp8 kv_b on the bf16 attention: q_abs and W_UV on vdpbf16ps too */
} mla_job;

/* q_abs of every token of the block for head h, streaming its nope kv_b rows. */
static void qabs_head(void *arg, int64_t h, int tid) {
    const mla_job *j = arg;
    float *row = (float *)(j->tscr + (size_t)tid * j->per_thread);
    for (int64_t t = 0; t < j->qn; t++) memset(j->qc + (t * j->H + h) * j->D, 0, (size_t)j->C * 4);
    for (int64_t d = 0; d < j->nope; d++) {
        int64_t wr = h * (j->nope + j->v) + d;
        if (j->qn == 1) { /* decode: the row is decoded inside the axpy */
            j->s->k->axpy_w(j->q[j->t0 * j->qs + h * (j->nope + j->R) + d], &j->w, wr, j->qc + h * j->D);
            continue;
        }
        memset(row, 0, (size_t)j->C * 4);
        j->s->k->axpy_w(1.0f, &j->w, wr, row);
        for (int64_t t = 0; t < j->qn; t++) {
            float qd = j->q[(j->t0 + t) * j->qs + h * (j->nope + j->R) + d];
            j->s->k->axpy(qd, row, j->qc + (t * j->H + h) * j->D, j->C);
        }
    }
}

/* n units split evenly into the threads' runs (cpu_wq) */
static void wq_split(cpu_wq *q, int nt, int64_t n) {
    for (int t = 0; t < nt; t++) cpu_wq_init(&q[t], n * t / nt, n * (t + 1) / nt);
}

/* One token on the AVX-512 levels: heads split evenly, each thread's run in order, so
 * the first rows of its next head are requested during the last ones of the current;
 * a thread done with its run takes heads from the end of the others'. */
static void qabs_task(void *arg, int tid, int nt) {
    const mla_job *j = arg;
    int owner;
    for (int64_t h; (h = cpu_wq_next(j->wq, tid, nt, &owner)) >= 0;) {
        int64_t hn = owner == tid ? cpu_wq_peek(&j->wq[tid]) : -1;
        const float *q = j->q + j->t0 * j->qs + h * (j->nope + j->R);
        int64_t r0 = h * (j->nope + j->v), rn = hn >= 0 ? hn * (j->nope + j->v) : -1;
        if (j->f8b) cpu_mla_qabs_fp8_avx512bf16(q, j->nope, &j->w, r0, j->qc + h * j->D, rn);
        else cpu_mla_qabs_avx512(q, j->nope, &j->w, r0, j->qc + h * j->D, rn);
    }
}

static void wuk_head(void *arg, int64_t h, int tid) {
    (void)tid;
    const mla_job *j = arg;
    for (int64_t d = 0; d < j->nope; d++)
        cpu_w_row(&j->w, h * (j->nope + j->v) + d, 0, (int)j->C, j->wuk + (h * j->nope + d) * j->C);
}

/* Online softmax over one key block for row r = (token, head). */
static void softmax_row(void *arg, int64_t r, int tid) {
    (void)tid;
    const mla_job *j = arg;
    int64_t t = j->t0 + r / j->H;
    int64_t n = (int64_t)j->pos[t] + 1 - j->kb0; /* live keys of this row in the block */
    if (n > j->kn) n = j->kn;
    float *s = j->S + r * KB;
    if (n <= 0) {
        memset(s, 0, (size_t)j->kn * 4);
        return;
    }
    float sc = j->p->scale, bm = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        s[i] *= sc;
        bm = s[i] > bm ? s[i] : bm;
    }
    for (int64_t i = n; i < j->kn; i++) s[i] = -INFINITY;
    float m0 = j->m[r], m1 = m0 > bm ? m0 : bm;
    float corr = m0 == -INFINITY ? 0.0f : expf(m0 - m1);
    float sum = j->s->k->expsum(s, m1, j->kn);
    j->l[r] = j->l[r] * corr + sum;
    j->m[r] = m1;
    if (corr != 1.0f) {
        float *o = j->O + r * j->C;
        for (int64_t c = 0; c < j->C; c++) o[c] *= corr;
    }
}

/* ---- decode: few rows, the keys split across threads in chunks (each a running max,
 * sum and output per row over its key range; combined afterwards) ---- */

#define KB2 128

/* The chunks of a decode block's cache rows [0, n): halves at the middle, each cut
 * from its outer end toward the middle into chunks of half what is left, down to
 * CHUNK_MIN rows (4096 rows: 1024 512 256 256 | 256 256 512 1024). The threads' runs
 * (cpu_wq) are over positions in `order`, which walks each half toward the middle,
 * so the chunks another thread takes from the end of a run are the small ones: when
 * one core runs slower (a shared machine's do, by 20% for minutes at a time) the
 * other takes over its last few hundred rows, not a quarter of the work. The chunks
 * depend on the context alone, so the result does not depend on the thread count. */
#define CHUNK_MIN 256
#define CHUNKS_MAX 64

typedef struct dec_plan {
    int n;
    int64_t lo[CHUNKS_MAX + 1]; /* chunk i: rows [lo[i], lo[i + 1]) */
    int order[CHUNKS_MAX];
} dec_plan;

/* n rows cut from one end: sizes from that end */
static int cut_half(int64_t n, int64_t *sz) {
    int k = 0;
    while (n >= 2 * CHUNK_MIN && k < CHUNKS_MAX / 2 - 1) {
        int64_t a = (n / 2 + 127) & ~(int64_t)127;
        sz[k++] = a, n -= a;
    }
    if (n > 0) sz[k++] = n;
    return k;
}

static void plan_make(dec_plan *p, int64_t maxn) {
    int64_t a[CHUNKS_MAX / 2], b[CHUNKS_MAX / 2];
    int64_t mid = maxn < 2 * CHUNK_MIN ? maxn : (maxn / 2 + 127) & ~(int64_t)127;
    int na = cut_half(mid, a), nb = maxn > mid ? cut_half(maxn - mid, b) : 0;
    p->n = na + nb;
    p->lo[0] = 0;
    for (int i = 0; i < na; i++) p->lo[i + 1] = p->lo[i] + a[i], p->order[i] = i;
    for (int i = 0; i < nb; i++) p->lo[na + i + 1] = p->lo[na + i] + b[nb - 1 - i], p->order[na + i] = p->n - 1 - i;
}

static int64_t plan_rows(const dec_plan *p, int pos) { return p->lo[p->order[pos] + 1] - p->lo[p->order[pos]]; }

/* thread t's run: the positions [*s, *e) whose rows' middles fall in its share */
static void plan_run(const dec_plan *p, int t, int nt, int *s, int *e) {
    int pos = 0;
    int64_t acc = 0, maxn = p->lo[p->n];
    for (int u = 0; u <= t; u++) {
        *s = pos;
        for (; pos < p->n; pos++) {
            int64_t r = plan_rows(p, pos);
            if (u < nt - 1 && (2 * acc + r) * nt >= 2 * (u + 1) * maxn) break;
            acc += r;
        }
    }
    *e = pos;
}

static void plan_split(const dec_plan *p, cpu_wq *q, int nt) {
    for (int t = 0; t < nt; t++) {
        int s, e;
        plan_run(p, t, nt, &s, &e);
        cpu_wq_init(&q[t], s, e);
    }
}

/* A decode block's chunks each give a partial attention - per lane (query row) its
 * running max m, sum l and unnormalised output O: m[nl], l[nl], O[nl][C] in one part
 * of pf floats - combined pairwise in a fixed binary tree over the chunks: node (k, i)
 * covers chunks [i 2^k, (i + 1) 2^k) and is kept in the part of its first chunk. The
 * thread that completes a node's second child combines the two, so the combining runs
 * while chunks are still being computed, mostly on the thread that holds both in its
 * cache; the root ends in part 0. The arithmetic depends on the tree alone, not on
 * which thread did what. */
typedef struct chunk_tree {
    float *part;
    size_t pf;
    int64_t nl, nr, C, n;     /* lanes per part, lanes in use, columns, chunks */
    _Atomic int *done;        /* [levels][n]: children of node (k + 1, i) done */
    const cpu_kern *k;
} chunk_tree;

static size_t tree_levels(int64_t n) {
    size_t k = 0;
    while (((int64_t)1 << k) < n) k++;
    return k;
}

/* part a = a (+) b, lane by lane: O = O_a e^(m_a - M) + O_b e^(m_b - M) and so l, M =
 * max(m_a, m_b); the factor of the larger is 1, so one scaled add (b is used up) */
static void tree_combine(const chunk_tree *t, float *a, float *b) {
    const int64_t nl = t->nl, C = t->C;
    for (int64_t r = 0; r < t->nr; r++) {
        float *oa = a + 2 * nl + r * C, *ob = b + 2 * nl + r * C;
        if (b[r] == -INFINITY) continue; /* b has no keys for this lane */
        if (a[r] >= b[r]) {
            float e = expf(b[r] - a[r]);
            t->k->axpy(e, ob, oa, C);
            a[nl + r] += b[nl + r] * e;
        } else {
            float e = a[r] == -INFINITY ? 0.0f : expf(a[r] - b[r]);
            if (e != 0.0f) t->k->axpy(e, oa, ob, C);
            memcpy(oa, ob, (size_t)C * 4);
            a[nl + r] = a[nl + r] * e + b[nl + r];
            a[r] = b[r];
        }
    }
}

/* chunk c is done: combine up the tree while this thread completes nodes */
static void tree_done(const chunk_tree *t, int64_t c) {
    for (size_t k = 0; ((int64_t)1 << k) < t->n; k++) {
        int64_t i = c >> k;
        if ((i ^ 1) << k >= t->n) continue; /* no sibling: the node moves up as it is */
        if (atomic_fetch_add_explicit(&t->done[(int64_t)k * t->n + (i >> 1)], 1, memory_order_acq_rel) == 0) return;
        tree_combine(t, t->part + (size_t)((i & ~(int64_t)1) << k) * t->pf, t->part + (size_t)((i | 1) << k) * t->pf);
    }
}

/* the tree's scratch for n chunks of pf floats: the parts, then the counters (zeroed) */
static chunk_tree tree_init(const mla_job *j, char *buf, size_t pf, int64_t nl, int64_t nr, int64_t n) {
    chunk_tree t = {.part = (float *)buf, .pf = pf, .nl = nl, .nr = nr, .C = j->C, .n = n, .k = j->s->k};
    t.done = (_Atomic int *)(buf + pf * (size_t)n * 4);
    for (size_t i = 0; i < tree_levels(n) * (size_t)n; i++) atomic_init(&t.done[i], 0);
    return t;
}
static size_t tree_bytes(size_t pf, int64_t n) {
    return (pf * (size_t)n * 4 + tree_levels(n) * (size_t)n * sizeof(int) + 63) & ~(size_t)63;
}

/* chunk c's part, cleared for its chunk: m = -inf, l = 0, O = 0 */
static float *tree_part(const chunk_tree *t, int64_t c) {
    float *m = t->part + (size_t)c * t->pf;
    for (int64_t r = 0; r < t->nl; r++) m[r] = -INFINITY, m[t->nl + r] = 0.0f;
    memset(m + 2 * t->nl, 0, (size_t)(t->nl * t->C) * 4);
    return m;
}

/* A decode block's chunks (plan), the threads' runs over them (j->wq) and the tree of
 * their parts (nl lanes each, nr in use), with extra bytes of scratch after the tree:
 * returns those, or NULL */
static char *dec_setup(mla_job *j, int64_t nl, int64_t nr, int64_t maxn, size_t extra, dec_plan *plan,
                       chunk_tree *tree) {
    plan_make(plan, maxn);
    size_t pf = ((size_t)(nl * (2 + j->C)) + 15) & ~(size_t)15, tb = tree_bytes(pf, plan->n);
    char *buf = cpu_scratch(j->s, tb + extra);
    if (!buf) return NULL;
    *tree = tree_init(j, buf, pf, nl, nr, plan->n);
    plan_split(plan, j->wq, cpu_pool_size(j->s->pool));
    return buf + tb;
}

typedef struct dec_job {
    const mla_job *j;
    int64_t nr;
    dec_plan plan;
    chunk_tree tree;          /* per chunk: m[nr], l[nr], O[nr][C] */
    float *S;                 /* per thread: S[nr][KB2] */
} dec_job;

static void dec_task(void *arg, int tid, int nt) {
    const dec_job *d = arg;
    const mla_job *j = d->j;
    int64_t nr = d->nr, C = j->C, D = j->D;
    float *S = d->S + (size_t)tid * (size_t)(nr * KB2);
    int owner;
    for (int64_t u; (u = cpu_wq_next(j->wq, tid, nt, &owner)) >= 0;) {
        int ch = d->plan.order[u];
        float *m = tree_part(&d->tree, ch), *l = m + nr, *O = l + nr;
        int64_t k0 = d->plan.lo[ch], k1 = d->plan.lo[ch + 1];
        for (int64_t kb = k0; kb < k1; kb += KB2) {
            int kn = (int)(k1 - kb < KB2 ? k1 - kb : KB2);
            const float *cb = j->cache + kb * D;
            j->s->k->scores(j->qc, D, (int)nr, cb, D, kn, (int)D, S, KB2);
            for (int64_t r = 0; r < nr; r++) {
                float *s = S + r * KB2;
                int64_t n = (int64_t)j->pos[j->t0 + r / j->H] + 1 - kb;
                if (n > kn) n = kn;
                if (n <= 0) {
                    memset(s, 0, (size_t)kn * 4);
                    continue;
                }
                float bm = -INFINITY;
                for (int64_t i = 0; i < n; i++) s[i] *= j->p->scale, bm = s[i] > bm ? s[i] : bm;
                for (int64_t i = n; i < kn; i++) s[i] = -INFINITY;
                float m1 = m[r] > bm ? m[r] : bm, corr = m[r] == -INFINITY ? 0.0f : expf(m[r] - m1);
                float sum = j->s->k->expsum(s, m1, kn);
                l[r] = l[r] * corr + sum;
                m[r] = m1;
                if (corr != 1.0f)
                    for (int64_t c = 0; c < C; c++) O[r * C + c] *= corr;
            }
            j->s->k->pv(S, KB2, (int)nr, cb, D, kn, (int)C, O, C);
        }
        tree_done(&d->tree, ch);
    }
}

/* AVX-512 levels: the blocked kernels of kern_mla_*.c (lanes = rows in vectors of 16).
 * The chunks of cache rows are split evenly into the threads' runs (cpu_wq): a thread
 * walks its own run in order, so it knows its next chunk and requests that chunk's
 * first rows in time, and when its run is done it takes chunks from the end of the
 * others', so a thread that starts late (a worker waking up), is preempted or runs
 * on a slower core does fewer. Each chunk has its own running max, sum and output,
 * combined in a fixed tree (chunk_tree): the result does not depend on which thread
 * took which chunk. */
typedef struct vdec_job {
    const mla_job *j;
    cpu_mla_dec d;
    int bf16;
    int64_t nl;
    dec_plan plan;
    chunk_tree tree;          /* per chunk: m[nl], l[nl], O[nl][C] */
    char *scr;                /* per thread: kernel scratch */
    size_t scr_bytes;
} vdec_job;

static void vdec_task(void *arg, int tid, int nt) {
    vdec_job *v = arg;
    const mla_job *j = v->j;
    int64_t nl = v->nl;
    void *scr = v->scr + (size_t)tid * v->scr_bytes;
    /* the W_UV rows of the heads this thread projects afterwards (its run of out_task),
     * a share with each chunk of its own run, by rows */
    int s0, e0;
    plan_run(&v->plan, tid, nt, &s0, &e0);
    int64_t run = 0, done = 0;
    for (int p = s0; p < e0; p++) run += plan_rows(&v->plan, p);
    const int64_t h0 = tid * j->H / nt, hn = (tid + 1) * j->H / nt - h0;
    const int64_t es = j->w.dtype == FM_F8_E4M3 ? 1 : 2, pitch = (j->nope + j->v) * j->C * es;
    int owner;
    for (int64_t u, i = 0; (u = cpu_wq_next(j->wq, tid, nt, &owner)) >= 0; i++) {
        int64_t un = owner == tid ? cpu_wq_peek(&j->wq[tid]) : -1; /* this thread's next chunk, likely */
        int c = v->plan.order[u];
        int64_t k0 = v->plan.lo[c], k1 = v->plan.lo[c + 1];
        float *m = tree_part(&v->tree, c), *l = m + nl, *O = l + nl;
        if (v->bf16) {
            int64_t a = owner == tid ? hn * done / run : hn, b = owner == tid ? hn * (done + k1 - k0) / run : hn;
            if (owner == tid) done += k1 - k0;
            const int cn = un >= 0 ? v->plan.order[un] : 0;
            cpu_mla_pf pf = {.knext = un >= 0 ? v->plan.lo[cn] : -1, .knext_n = v->plan.lo[cn + 1] - v->plan.lo[cn],
                             .side_n = (int)(b - a),
                             .side_pitch = pitch, .side_bytes = j->v * j->C * es,
                             .side = (const char *)j->w.data + ((h0 + a) * (j->nope + j->v) + j->nope) * j->C * es};
            cpu_mla_dec_avx512bf16(&v->d, k0, k1, m, l, O, scr, i == 0, &pf);
        } else {
            cpu_mla_dec_avx512(&v->d, k0, k1, m, l, O, scr, i == 0);
        }
        tree_done(&v->tree, c);
    }
}

/* Row r of a decode block's attention into O: the tree's root, normalised (and back in
 * column order from the bf16 kernel's). */
static void finish_row(const mla_job *j, int64_t r) {
    const int64_t nl = j->part_nl, C = j->C;
    const float *O = j->part + 2 * nl + r * C;
    float inv = 1.0f / j->part[nl + r], *o = j->O + r * C;
    if (j->part_perm) {
        cpu_mla_o_row_avx512bf16(O, inv, C, o);
        return;
    }
    memset(o, 0, (size_t)C * 4);
    j->s->k->axpy(inv, O, o, C);
}

static fm_status mla_decode_vec(mla_job *j, int64_t nr, int64_t maxn) {
    cpu_state *s = j->s;
    int nt = cpu_pool_size(s->pool);
    /* bf16 attention is opt-in on top of bf16-compute: the conformance suite holds every
     * level to NMSE 1e-9, which bf16 rounding of the cache does not meet (about 3e-6). */
    vdec_job v = {.j = j, .bf16 = s->bf16_compute && s->mla_bf16 && j->w.dtype != FM_F32};
    v.d = (cpu_mla_dec){.nq = (int)nr, .nqv = (int)((nr + 15) / 16), .C = j->C, .D = j->D, .q = j->qc,
                        .cache = j->cache, .cache16 = j->cache16, .scale = j->p->scale};
    v.nl = (int64_t)v.d.nqv * 16;
    int32_t lim[CPU_MLA_DEC_ROWS];
    for (int64_t r = 0; r < v.nl; r++) lim[r] = r < nr ? j->pos[j->t0 + r / j->H] : -1;
    v.d.lim = lim;
    size_t ks = v.bf16 ? cpu_mla_dec_scratch_avx512bf16(&v.d) : cpu_mla_dec_scratch_avx512(&v.d);
    v.scr_bytes = (ks + 127) & ~(size_t)63;
    if (!(v.scr = dec_setup(j, v.nl, nr, maxn, v.scr_bytes * (size_t)nt + 64, &v.plan, &v.tree)))
        return cpu_fail(s, FM_ENOMEM, "mla_attn: out of memory");
    cpu_pool_run(s->pool, vdec_task, &v);
    j->part = v.tree.part, j->part_nl = v.nl, j->part_perm = v.bf16;
    return FM_OK;
}

static fm_status mla_decode(mla_job *j, int64_t nr, int64_t maxn) {
    cpu_state *s = j->s;
    if ((s->isa == CPU_ISA_AVX512 || s->isa == CPU_ISA_AVX512BF16) && nr <= CPU_MLA_DEC_ROWS) return mla_decode_vec(j, nr, maxn);
    int nt = cpu_pool_size(s->pool);
    dec_job d = {.j = j, .nr = nr};
    if (!(d.S = (float *)dec_setup(j, nr, nr, maxn, (size_t)(nr * KB2) * (size_t)nt * 4, &d.plan, &d.tree)))
        return cpu_fail(s, FM_ENOMEM, "mla_attn: out of memory");
    cpu_pool_run(s->pool, dec_task, &d);
    j->part = d.tree.part, j->part_nl = nr, j->part_perm = 0;
    return FM_OK;
}

/* out = W_UV o_lat for head h (a decode block: its rows of o_lat normalised first) */
static void out_head(void *arg, int64_t h, int tid) {
    const mla_job *j = arg;
    for (int64_t t = 0; t < j->qn && j->part; t++) finish_row(j, t * j->H + h);
    int64_t n0 = h * (j->nope + j->v) + j->nope;
    if (j->f8b) { /* one token */
        uint16_t *o16 = (uint16_t *)(j->tscr + (size_t)tid * j->per_thread);
        cpu_mla_o16_avx512bf16(j->O + h * j->C, j->C, o16);
        cpu_mla_wuv_fp8_avx512bf16(o16, &j->w, n0, j->v, j->out + j->t0 * j->H * j->v + h * j->v);
        return;
    }
    cpu_matmul_serial(j->s, j->O + h * j->C, j->qn, j->H * j->C, &j->w, n0, n0 + j->v, 0, NULL, NULL,
                      j->out + j->t0 * j->H * j->v + h * j->v, j->H * j->v, j->tscr + (size_t)tid * j->per_thread);
}

/* A decode block's output: heads split evenly into the threads' runs (the attention
 * requested each run's W_UV rows beforehand), the rest taken from the ends of others'. */
static void out_task(void *arg, int tid, int nt) {
    const mla_job *j = arg;
    int owner;
    for (int64_t h; (h = cpu_wq_next(j->wq, tid, nt, &owner)) >= 0;) out_head(arg, h, tid);
}

/* ---- naive form: per head, k_nope | v of every cache row in use through kv_b as a
 * linear layer (DeepSeek act_quant for fp8 kv_b when asked: the latent rows are
 * quantized once for all heads), then ordinary attention with the shared k_pe.
 * Heads are split across threads; each thread holds one head's k | v. ---- */
typedef struct naive_job {
    cpu_state *s;
    const fm_mla_attn_params *p;
    cpu_wmat w;
    const float *q, *cache, *xv, *xs;
    const int32_t *pos;
    float *out;
    int64_t T, H, nope, R, v, C, D, hs, qs, rows;
    int act_quant;
    char *tscr;
    size_t per_thread, gemm_bytes;
} naive_job;

static void naive_head(void *arg, int64_t h, int tid) {
    const naive_job *j = arg;
    const cpu_kern *k = j->s->k;
    char *b = j->tscr + (size_t)tid * j->per_thread;
    float *kvh = (float *)b, *sc = kvh + ((j->rows * j->hs + 15) & ~(int64_t)15);
    void *g = (char *)(sc + ((j->rows + 15) & ~(int64_t)15));
    cpu_matmul_serial(j->s, j->cache, j->rows, j->D, &j->w, h * j->hs, (h + 1) * j->hs, j->act_quant, j->xv, j->xs,
                      kvh, j->hs, g);
    for (int64_t t = 0; t < j->T; t++) {
        const float *qn = j->q + t * j->qs + h * (j->nope + j->R), *qp = qn + j->nope;
        int64_t n = (int64_t)j->pos[t] + 1;
        float mx = -INFINITY;
        for (int64_t r = 0; r < n; r++) {
            sc[r] = (k->dot(qn, kvh + r * j->hs, j->nope) + k->dot(qp, j->cache + r * j->D + j->C, j->R)) * j->p->scale;
            mx = sc[r] > mx ? sc[r] : mx;
        }
        float inv = 1.0f / k->expsum(sc, mx, n);
        float *o = j->out + t * j->H * j->v + h * j->v;
        memset(o, 0, (size_t)j->v * 4);
        for (int64_t r = 0; r < n; r++) k->axpy(sc[r], kvh + r * j->hs + j->nope, o, j->v);
        for (int64_t d = 0; d < j->v; d++) o[d] *= inv;
    }
}

static fm_status mla_naive(cpu_state *s, const fm_pl_node *nd, const mla_job *a, int64_t T) {
    const fm_mla_attn_params *p = nd->params;
    naive_job j = {.s = s, .p = p, .q = nd->src[0]->data, .cache = a->cache, .pos = nd->src[2]->data,
                   .out = nd->dst[0]->data, .T = T, .H = p->n_heads, .nope = p->nope, .R = p->rope, .v = p->v,
                   .C = p->kv_lora};
    cpu_wmat_from(nd->src[3], &j.w);
    j.D = j.C + j.R;
    j.hs = j.nope + j.v;
    j.qs = j.H * (j.nope + j.R);
    j.act_quant = p->act_quant && j.w.dtype == FM_F8_E4M3;
    for (int64_t t = 0; t < T; t++) j.rows = j.pos[t] + 1 > j.rows ? j.pos[t] + 1 : j.rows;
    int nt = cpu_pool_size(s->pool);
    int64_t nb = (j.C + CPU_QB - 1) / CPU_QB;
    size_t qbytes = j.act_quant ? (size_t)(j.rows * (j.C + nb)) * 4 + 128 : 0;
    j.gemm_bytes = cpu_matmul_scratch_bytes(s, j.rows, &j.w, j.act_quant);
    j.per_thread = ((size_t)(((j.rows * j.hs + 15) & ~(int64_t)15) + ((j.rows + 15) & ~(int64_t)15)) * 4 +
                    j.gemm_bytes + 127) & ~(size_t)63;
    size_t bytes = j.per_thread * (size_t)nt + qbytes + 128;
    char *buf = cpu_scratch_slot(s, 3, bytes);
    if (!buf) return cpu_fail(s, FM_ENOMEM, "mla_attn '%s': out of memory (%zu bytes)", nd->name, bytes);
    j.tscr = buf;
    if (j.act_quant) { /* the latent rows quantized once, shared by every head */
        float *xv = (float *)(buf + j.per_thread * (size_t)nt);
        float *xs = xv + ((j.rows * j.C + 15) & ~(int64_t)15);
        cpu_act_quant_rows(j.cache, j.rows, j.D, j.C, xv, xs);
        j.xv = xv, j.xs = xs;
    }
    cpu_pool_for(s->pool, j.H, naive_head, &j);
    return FM_OK;
}

fm_status cpu_mla_node(cpu_state *s, const fm_pl_node *nd) {
    const fm_mla_attn_params *p = nd->params;
    const fm_pl_tensor *q = nd->src[0], *cache = nd->src[1];
    mla_job j = {.s = s, .p = p, .q = q->data, .cache = cache->data, .pos = nd->src[2]->data, .out = nd->dst[0]->data,
                 .H = p->n_heads, .nope = p->nope, .R = p->rope, .v = p->v, .C = p->kv_lora};
    cpu_wmat_from(nd->src[3], &j.w);
    j.D = j.C + j.R;
    /* one token on the bf16 attention (mla_decode_vec) with fp8 kv_b: its products on vdpbf16ps too */
    j.f8b = q->ne[0] == 1 && s->bf16_compute && s->mla_bf16 && s->vbmi && j.w.dtype == FM_F8_E4M3 && j.C % 64 == 0 &&
            p->mode == FM_MLA_ABSORB && j.H <= CPU_MLA_DEC_ROWS;
    j.qs = j.H * (j.nope + j.R);
    int64_t T = q->ne[0], L = cache->ne[0];
    for (int64_t t = 0; t < T; t++)
        if (j.pos[t] < 0 || j.pos[t] >= L)
            return cpu_fail(s, FM_EINVAL, "mla_attn '%s': position %d at row %lld outside the cache [0, %lld)", nd->name,
                            j.pos[t], (long long)t, (long long)L);
    if (T == 0) return FM_OK;
    if (cache->dtype == FM_BF16) {
        /* the AVX-512 decode kernels read a bf16 cache in place; every other path gets the
         * rows in use widened to f32 once per call */
        int64_t rows = 0;
        for (int64_t t = 0; t < T; t++) rows = j.pos[t] + 1 > rows ? j.pos[t] + 1 : rows;
        if (p->mode == FM_MLA_ABSORB && (s->isa == CPU_ISA_AVX512 || s->isa == CPU_ISA_AVX512BF16) &&
            T * j.H <= CPU_MLA_DEC_ROWS) {
            j.cache16 = cache->data;
            j.cache = NULL;
        } else {
            float *wide = cpu_scratch_slot(s, 2, (size_t)(rows * j.D) * 4);
            if (!wide) return cpu_fail(s, FM_ENOMEM, "mla_attn '%s': out of memory (bf16 cache widened)", nd->name);
            cpu_wmat cw;
            cpu_wmat_from(cache, &cw); /* the cache's rows decoded as a weight's (exact for bf16) */
            for (int64_t r = 0; r < rows; r++) cpu_w_row(&cw, r, 0, (int)j.D, wide + r * j.D);
            j.cache = wide;
        }
    }
    if (p->mode == FM_MLA_NAIVE) return mla_naive(s, nd, &j, T);
    int64_t QB = 256 / j.H > 1 ? 256 / j.H : 1;
    if (QB > T) QB = T;
    int64_t rows = QB * j.H;
    int nt = cpu_pool_size(s->pool);
    cpu_wmat wv = j.w;
    wv.N = j.v;
    size_t g = cpu_matmul_scratch_bytes(s, QB, &wv, 0);
    j.per_thread = ((g > (size_t)j.C * 4 ? g : (size_t)j.C * 4) + 127) & ~(size_t)63;
    int need_wuk = T > 8;
    size_t bytes = (size_t)(rows * (j.D + KB + j.C + 2)) * 4 + (need_wuk ? (size_t)(j.H * j.nope * j.C) * 4 : 0) +
                   j.per_thread * (size_t)nt + sizeof(cpu_wq) * (size_t)nt + 256;
    char *buf = cpu_scratch_slot(s, 3, bytes);
    if (!buf) return cpu_fail(s, FM_ENOMEM, "mla_attn '%s': out of memory (%zu bytes)", nd->name, bytes);
    j.tscr = buf;
    j.qc = (float *)(buf + j.per_thread * (size_t)nt);
    j.S = j.qc + rows * j.D;
    j.O = j.S + rows * KB;
    j.m = j.O + rows * j.C;
    j.l = j.m + rows;
    j.wuk = need_wuk ? j.l + rows : NULL;
    j.wq = (cpu_wq *)(((uintptr_t)(j.l + rows + (need_wuk ? j.H * j.nope * j.C : 0)) + 63) & ~(uintptr_t)63);
    if (need_wuk) cpu_pool_for(s->pool, j.H, wuk_head, &j);

    for (j.t0 = 0; j.t0 < T; j.t0 += QB) {
        j.qn = T - j.t0 < QB ? T - j.t0 : QB;
        int64_t nr = j.qn * j.H;
        /* q_abs | q_pe */
        if (j.qn == 1 && (s->isa == CPU_ISA_AVX512 || s->isa == CPU_ISA_AVX512BF16)) {
            wq_split(j.wq, nt, j.H);
            cpu_pool_run(s->pool, qabs_task, &j);
        } else if (j.qn <= 8 || !need_wuk) {
            cpu_pool_for(s->pool, j.H, qabs_head, &j);
        } else {
            for (int64_t h = 0; h < j.H; h++) {
                fm_status st = cpu_sgemm(s, j.qn, j.C, j.nope, j.q + j.t0 * j.qs + h * (j.nope + j.R), j.qs,
                                         j.wuk + h * j.nope * j.C, j.C, 1, j.qc + h * j.D, j.H * j.D, 0);
                if (st != FM_OK) return st;
            }
        }
        for (int64_t t = 0; t < j.qn; t++)
            for (int64_t h = 0; h < j.H; h++)
                memcpy(j.qc + (t * j.H + h) * j.D + j.C, j.q + (j.t0 + t) * j.qs + h * (j.nope + j.R) + j.nope,
                       (size_t)j.R * 4);
        int64_t maxn = 0;
        for (int64_t t = 0; t < j.qn; t++) maxn = j.pos[j.t0 + t] + 1 > maxn ? j.pos[j.t0 + t] + 1 : maxn;
        if (nr <= CPU_MLA_DEC_ROWS) { /* decode-sized block */
            fm_status st = mla_decode(&j, nr, maxn);
            if (st != FM_OK) return st;
            wq_split(j.wq, nt, j.H);
            cpu_pool_run(s->pool, out_task, &j); /* normalise and project */
            continue;
        }
        j.part = NULL;
        for (int64_t r = 0; r < nr; r++) j.m[r] = -INFINITY, j.l[r] = 0.0f;
        memset(j.O, 0, (size_t)(nr * j.C) * 4);
        for (j.kb0 = 0; j.kb0 < maxn; j.kb0 += KB) {
            j.kn = maxn - j.kb0 < KB ? maxn - j.kb0 : KB;
            const float *kb = j.cache + j.kb0 * j.D;
            fm_status st = cpu_sgemm(s, nr, j.kn, j.D, j.qc, j.D, kb, j.D, 0, j.S, KB, 0);
            if (st != FM_OK) return st;
            cpu_pool_for(nr >= 64 ? s->pool : NULL, nr, softmax_row, &j);
            st = cpu_sgemm(s, nr, j.C, j.kn, j.S, KB, kb, j.D, 1, j.O, j.C, 1);
            if (st != FM_OK) return st;
        }
        for (int64_t r = 0; r < nr; r++) {
            float inv = 1.0f / j.l[r];
            float *o = j.O + r * j.C;
            for (int64_t c = 0; c < j.C; c++) o[c] *= inv;
        }
        cpu_pool_for(s->pool, j.H, out_head, &j);
    }
    return FM_OK;
}
