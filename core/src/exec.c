/* exec.c - the executor: placement, copies between memory spaces, liveness-based
 * memory planning per backend, run with fallback, per-node counters and trace.
 *
 * Memory spaces: every backend with FM_DEV_HOST_MEMORY shares the host space and
 * reads any host address; every other backend is a space of its own. A tensor
 * lives where its producer ran ("home"); a consumer in another space gets a
 * mirror, filled by a copy step placed just before it. Mirrors in the host space
 * of device results live in the reference backend's arena. Weights and states
 * used on a device live in the context's per-backend cache (uploaded lazily, kept
 * across sessions and re-placements); states written on a device are copied back
 * to host memory before a host reader and at the end of every run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GUARD_BYTES 64
#define GUARD_BYTE 0xA5
#define OWNER_NONE (-1)  /* host leaf memory (input staging, weight or state data) */
#define OWNER_CACHE (-2) /* the context's weight/state cache of a device backend */
#define SPACE_HOST (-1)

enum { STEP_NODE, STEP_COPY };

typedef struct loc {
    int32_t tensor;
    int32_t space;       /* SPACE_HOST or a device backend index */
    int32_t owner;       /* arena owner backend, OWNER_NONE or OWNER_CACHE */
    int32_t first, last; /* live steps */
    uint64_t size, off;  /* bytes; offset in the owner's arena (guard excluded) */
    void *host;          /* resolved host address or NULL */
    void *buffer;        /* resolved backend buffer or NULL */
    uint64_t boff;       /* offset in buffer */
} loc;

typedef struct step {
    int32_t kind, node, from, to;
} step;

typedef struct snode {
    int32_t planned, ran, fallbacks, n_cand;
    int32_t cand[16];        /* backends that accept the node, in placement order */
    uint64_t time_ns, cycles;
    fm_pl_node pn;
    fm_pl_tensor *pt;        /* n_src + n_dst descriptors, then one scale descriptor per src */
    const fm_pl_tensor **pp; /* pointers: src then dst */
    int32_t *sloc;           /* loc of each src, then each dst, in the node's space */
} snode;

typedef struct arena {
    void *buffer, *host;
    uint64_t size;
} arena;

struct fm_session {
    fm_ctx *ctx;
    fm_graph *g;
    uint32_t flags;
    int prio[64], n_prio;
    int place[FM_OP_COUNT];
    snode *sn;
    loc *locs;
    int n_locs;
    size_t cap_locs;
    int32_t *home;           /* per tensor: home loc */
    step *steps;
    int n_steps;
    size_t cap_steps;
    arena *ar;               /* per backend */
    void **input;            /* per tensor: host staging for inputs */
    bool *input_set;
    int32_t *state_dirty;    /* per tensor: backend holding newer state data, -1 if host is current */
    bool bound;
    int64_t copies;
};

static fm_backend *BE(fm_session *s, int b) { return &s->ctx->be[b]; }
static bool host_mem(const fm_backend *b) { return (b->info.flags & FM_DEV_HOST_MEMORY) != 0; }
static int space_of(fm_session *s, int b) { return host_mem(BE(s, b)) ? SPACE_HOST : b; }
static const fm_tensor *storage(const fm_session *s, const fm_tensor *t) { return t->alias >= 0 ? s->g->t[t->alias] : t; }

/* ---- placement strings ---- */

static fm_status parse_backends(fm_session *s, const char *list) {
    fm_ctx *ctx = s->ctx;
    s->n_prio = 0;
    if (!list || !*list) {
        for (int i = 1; i < ctx->n_be && s->n_prio < 63; i++)
            if (ctx->be[i].status == FM_BACKEND_READY && strcmp(ctx->be[i].info.kind, "test") != 0)
                s->prio[s->n_prio++] = i;
    } else {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", list);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int i = fm_backend_find(ctx, tok);
            if (i < 0) return fm_err(ctx, FM_ENOTFOUND, "backend '%s' not found (see `fathom plugins`)", tok);
            if (ctx->be[i].status != FM_BACKEND_READY) {
                fm_log(2, "backend '%s' skipped: %s", tok, ctx->be[i].reason);
                continue;
            }
            if (s->n_prio < 63) s->prio[s->n_prio++] = i;
        }
    }
    bool has_ref = false;
    for (int i = 0; i < s->n_prio; i++) has_ref |= s->prio[i] == 0;
    if (!has_ref) s->prio[s->n_prio++] = 0;
    return FM_OK;
}

static fm_status parse_place(fm_session *s, const char *place) {
    for (int i = 0; i < FM_OP_COUNT; i++) s->place[i] = -1;
    if (!place || !*place) return FM_OK;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", place);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) return fm_err(s->ctx, FM_EINVAL, "placement '%s': expected OP=BACKEND", tok);
        *eq = 0;
        int op = fm_op_parse(tok);
        if (op < 0) return fm_err(s->ctx, FM_EINVAL, "placement: unknown op '%s'", tok);
        int b = fm_backend_find(s->ctx, eq + 1);
        if (b < 0) return fm_err(s->ctx, FM_ENOTFOUND, "placement %s=%s: backend not found", tok, eq + 1);
        if (s->ctx->be[b].status != FM_BACKEND_READY) {
            fm_log(2, "placement %s=%s skipped: %s", tok, eq + 1, s->ctx->be[b].reason);
            continue;
        }
        s->place[op] = b;
    }
    return FM_OK;
}

/* ---- plan ---- */

static void free_plan(fm_session *s) {
    if (s->ar) {
        for (int b = 0; b < s->ctx->n_be; b++)
            if (s->ar[b].buffer) BE(s, b)->pl->buffer_free(BE(s, b)->state, s->ar[b].buffer);
        free(s->ar);
        s->ar = NULL;
    }
    if (s->sn) {
        for (int i = 0; i < s->g->n_nodes; i++) {
            free(s->sn[i].pt);
            free(s->sn[i].pp);
            free(s->sn[i].sloc);
        }
        free(s->sn);
        s->sn = NULL;
    }
    free(s->locs);
    free(s->home);
    free(s->steps);
    s->locs = NULL, s->home = NULL, s->steps = NULL;
    s->n_locs = s->n_steps = 0;
    s->cap_locs = s->cap_steps = 0;
    s->bound = false;
}

static void fill_desc(fm_session *s, fm_pl_tensor *d, fm_pl_tensor *scale_slot, const fm_tensor *t) {
    *d = (fm_pl_tensor){.dtype = t->dtype, .ndim = t->ndim, .name = t->name};
    memcpy(d->ne, t->ne, sizeof d->ne);
    const fm_tensor *st = storage(s, t);
    if (st->kind == FM_T_WEIGHT) d->flags |= FM_PL_WEIGHT;
    if (st->kind == FM_T_STATE) d->flags |= FM_PL_STATE;
    if (t->scale) {
        fill_desc(s, scale_slot, NULL, t->scale);
        scale_slot->flags |= FM_PL_WEIGHT;
        d->scale = scale_slot;
    }
}

static int add_loc(fm_session *s, int tensor, int space, int owner, int first) {
    loc *l = fm_realloc_array(s->ctx, s->locs, &s->cap_locs, (size_t)s->n_locs + 1, sizeof *l);
    if (!l) return -1;
    s->locs = l;
    const fm_tensor *t = s->g->t[tensor];
    l[s->n_locs] = (loc){.tensor = tensor, .space = space, .owner = owner, .first = first, .last = first,
                         .size = fm_tensor_bytes(t)};
    return s->n_locs++;
}

static int add_step(fm_session *s, int kind, int node, int from, int to) {
    step *st = fm_realloc_array(s->ctx, s->steps, &s->cap_steps, (size_t)s->n_steps + 1, sizeof *st);
    if (!st) return -1;
    s->steps = st;
    st[s->n_steps] = (step){kind, node, from, to};
    return s->n_steps++;
}

static int find_loc(fm_session *s, int tensor, int space) {
    for (int i = s->n_locs - 1; i >= 0; i--)
        if (s->locs[i].tensor == tensor && s->locs[i].space == space) return i;
    return -1;
}

/* The loc of tensor in space, creating mirrors and copy steps as needed. -1 on ENOMEM. */
static int need_loc(fm_session *s, int tensor, int space) {
    const fm_tensor *t = storage(s, s->g->t[tensor]);
    tensor = t->id;
    int l = find_loc(s, tensor, space);
    if (l >= 0) return l;
    if ((t->kind == FM_T_WEIGHT || t->kind == FM_T_STATE) && space != SPACE_HOST)
        return add_loc(s, tensor, space, OWNER_CACHE, 0);
    int h = s->home[tensor];
    if (space != SPACE_HOST && s->locs[h].space != SPACE_HOST) h = need_loc(s, tensor, SPACE_HOST);
    if (h < 0) return -1;
    int owner = space == SPACE_HOST ? 0 : space; /* host mirrors live in the ref arena */
    int m = add_loc(s, tensor, space, owner, s->n_steps);
    if (m < 0 || add_step(s, STEP_COPY, -1, h, m) < 0) return -1;
    s->locs[h].last = s->n_steps - 1;
    return m;
}

static fm_status choose_backends(fm_session *s, int i) {
    snode *n = &s->sn[i];
    const fm_node *gn = &s->g->nodes[i];
    int order[80], k = 0;
    if (s->place[gn->op] >= 0) order[k++] = s->place[gn->op];
    for (int j = 0; j < s->n_prio; j++) order[k++] = s->prio[j];
    n->n_cand = 0;
    for (int j = 0; j < k && n->n_cand < 16; j++) {
        int b = order[j];
        bool dup = false;
        for (int c = 0; c < n->n_cand; c++) dup |= n->cand[c] == b;
        if (dup) continue;
        if (BE(s, b)->pl->supports(BE(s, b)->state, &n->pn, NULL)) n->cand[n->n_cand++] = b;
    }
    if (n->n_cand == 0)
        return fm_err(s->ctx, FM_UNSUPPORTED, "node '%s' (%s): no backend supports it", n->pn.name,
                      fm_op_name(gn->op));
    n->planned = n->ran = n->cand[0];
    return FM_OK;
}

typedef struct span { uint64_t off, size; int first, last; } span;

/* Greedy offset assignment: biggest first, lowest offset that overlaps no live span. */
static int cmp_size_desc(const void *a, const void *b) {
    const loc *x = *(const loc *const *)a, *y = *(const loc *const *)b;
    return x->size < y->size ? 1 : x->size > y->size ? -1 : x->first - y->first;
}

static fm_status plan_arena(fm_session *s, int owner, uint64_t *total) {
    int n = 0;
    for (int i = 0; i < s->n_locs; i++) n += s->locs[i].owner == owner;
    *total = 0;
    if (!n) return FM_OK;
    loc **v = malloc((size_t)n * sizeof *v);
    if (!v) return fm_err(s->ctx, FM_ENOMEM, "memory plan: out of memory");
    n = 0;
    for (int i = 0; i < s->n_locs; i++)
        if (s->locs[i].owner == owner) v[n++] = &s->locs[i];
    qsort(v, (size_t)n, sizeof *v, cmp_size_desc);
    uint64_t guard = (s->flags & FM_RUN_GUARD) ? GUARD_BYTES : 0;
    for (int i = 0; i < n; i++) {
        uint64_t need = ((v[i]->size + 63) & ~(uint64_t)63) + 2 * guard, off = 0;
        for (bool moved = true; moved;) {
            moved = false;
            for (int j = 0; j < i; j++) {
                const loc *o = v[j];
                uint64_t oend = o->off - guard + ((o->size + 63) & ~(uint64_t)63) + 2 * guard;
                bool live = !(o->last < v[i]->first || v[i]->last < o->first);
                if (live && off < oend && o->off - guard < off + need) {
                    off = oend;
                    moved = true;
                }
            }
        }
        v[i]->off = off + guard;
        if (off + need > *total) *total = off + need;
    }
    free(v);
    return FM_OK;
}

static void resolve_loc(fm_session *s, loc *l) {
    const fm_tensor *t = s->g->t[l->tensor];
    if (l->owner == OWNER_NONE) {
        l->host = t->kind == FM_T_INPUT ? s->input[t->id] : t->data;
        l->buffer = NULL;
        l->boff = 0;
    } else if (l->owner >= 0) {
        arena *a = &s->ar[l->owner];
        l->host = a->host ? (char *)a->host + l->off : NULL;
        l->buffer = a->buffer;
        l->boff = l->off;
    }
}

static void bind_desc(fm_pl_tensor *d, const loc *l) {
    d->data = l->host;
    d->buffer = l->buffer;
    d->offset = l->boff;
}

static fm_status build_plan(fm_session *s) {
    fm_graph *g = s->g;
    fm_ctx *ctx = s->ctx;
    s->sn = calloc((size_t)g->n_nodes + 1, sizeof *s->sn);
    s->home = malloc(((size_t)g->n_t + 1) * sizeof *s->home);
    s->ar = calloc((size_t)ctx->n_be, sizeof *s->ar);
    if (!s->sn || !s->home || !s->ar) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
    /* descriptors and backend choice */
    for (int i = 0; i < g->n_nodes; i++) {
        const fm_node *gn = &g->nodes[i];
        snode *n = &s->sn[i];
        int nd = gn->n_src + gn->n_dst;
        n->pt = calloc((size_t)(nd + gn->n_src), sizeof *n->pt);
        n->pp = calloc((size_t)nd, sizeof *n->pp);
        n->sloc = calloc((size_t)nd, sizeof *n->sloc);
        if (!n->pt || !n->pp || !n->sloc) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
        for (int j = 0; j < gn->n_src; j++) fill_desc(s, &n->pt[j], &n->pt[nd + j], g->t[gn->src[j]]);
        for (int j = 0; j < gn->n_dst; j++) fill_desc(s, &n->pt[gn->n_src + j], NULL, g->t[gn->dst[j]]);
        for (int j = 0; j < nd; j++) n->pp[j] = &n->pt[j];
        n->pn = (fm_pl_node){.op = gn->op, .index = i, .n_src = gn->n_src, .n_dst = gn->n_dst, .src = n->pp,
                             .dst = n->pp + gn->n_src, .params = &gn->params, .name = g->t[gn->dst[0]]->name};
        fm_status st = choose_backends(s, i);
        if (st != FM_OK) return st;
    }
    /* homes of leaves */
    for (int t = 0; t < g->n_t; t++) {
        s->home[t] = -1;
        if (g->t[t]->kind == FM_T_NODE) continue;
        if (add_loc(s, t, SPACE_HOST, OWNER_NONE, 0) < 0) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
        s->home[t] = s->n_locs - 1;
    }
    /* steps, mirrors and liveness */
    for (int i = 0; i < g->n_nodes; i++) {
        const fm_node *gn = &g->nodes[i];
        snode *n = &s->sn[i];
        int sp = space_of(s, n->planned);
        for (int j = 0; j < gn->n_src; j++) {
            int l = need_loc(s, gn->src[j], sp);
            if (l < 0) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
            n->sloc[j] = l;
        }
        if (add_step(s, STEP_NODE, i, -1, -1) < 0) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
        for (int j = 0; j < gn->n_src; j++) s->locs[n->sloc[j]].last = s->n_steps - 1;
        for (int j = 0; j < gn->n_dst; j++) {
            const fm_tensor *t = g->t[gn->dst[j]];
            int l;
            if (t->alias >= 0) {
                l = need_loc(s, t->alias, sp);
                s->home[t->id] = s->home[t->alias];
            } else {
                l = add_loc(s, t->id, sp, sp == SPACE_HOST ? n->planned : sp, s->n_steps - 1);
                s->home[t->id] = l;
            }
            if (l < 0) return fm_err(ctx, FM_ENOMEM, "session: out of memory planning");
            n->sloc[gn->n_src + j] = l;
        }
    }
    for (int l = 0; l < s->n_locs; l++) {
        const fm_tensor *t = g->t[s->locs[l].tensor];
        if (t->output) s->locs[l].last = s->n_steps;
    }
    /* arenas */
    for (int b = 0; b < ctx->n_be; b++) {
        uint64_t total;
        fm_status st = plan_arena(s, b, &total);
        if (st != FM_OK) return st;
        if (!total) continue;
        fm_backend *be = BE(s, b);
        st = be->pl->buffer_alloc(be->state, total, &s->ar[b].buffer, &s->ar[b].host);
        if (st != FM_OK) {
            s->ar[b].buffer = NULL;
            return fm_err(ctx, st == FM_ENOMEM ? FM_ENOMEM : FM_FAILED,
                          "backend '%s': cannot allocate its %llu-byte arena: %s", be->name,
                          (unsigned long long)total, be->pl->last_error(be->state));
        }
        s->ar[b].size = total;
    }
    for (int l = 0; l < s->n_locs; l++) resolve_loc(s, &s->locs[l]);
    for (int i = 0; i < g->n_nodes; i++) {
        snode *n = &s->sn[i];
        for (int j = 0; j < n->pn.n_src + n->pn.n_dst; j++) bind_desc(&n->pt[j], &s->locs[n->sloc[j]]);
        for (int j = 0; j < n->pn.n_src; j++)
            if (n->pt[j].scale) n->pt[n->pn.n_src + n->pn.n_dst + j].data = g->t[g->nodes[i].src[j]]->scale->data;
    }
    return FM_OK;
}

/* ---- device cache for weights and states ---- */

static fm_wcache_ent *cache_get(fm_session *s, int b, const fm_tensor *t, bool *fresh) {
    fm_backend *be = BE(s, b);
    *fresh = false;
    uint64_t size = fm_tensor_bytes(t);
    for (int i = 0; i < be->n_wc; i++)
        if (be->wc[i].key == t->data && be->wc[i].size == size) return &be->wc[i];
    if (be->n_wc == be->cap_wc) {
        int cap = be->cap_wc ? be->cap_wc * 2 : 64;
        fm_wcache_ent *w = realloc(be->wc, (size_t)cap * sizeof *w);
        if (!w) return NULL;
        be->wc = w;
        be->cap_wc = cap;
    }
    fm_wcache_ent *e = &be->wc[be->n_wc];
    void *host = NULL;
    if (be->pl->buffer_alloc(be->state, size, &e->buffer, &host) != FM_OK) return NULL;
    if (be->pl->buffer_upload(be->state, e->buffer, 0, t->data, size) != FM_OK) {
        be->pl->buffer_free(be->state, e->buffer);
        return NULL;
    }
    e->key = t->data;
    e->size = size;
    be->n_wc++;
    *fresh = true;
    return e;
}

void fm_ctx_release(fm_ctx *ctx, const void *data, size_t bytes) {
    const char *lo = data, *hi = lo + bytes;
    for (int b = 0; b < ctx->n_be; b++) {
        fm_backend *be = &ctx->be[b];
        for (int i = 0; i < be->n_wc;) {
            const char *k = be->wc[i].key;
            if (k >= lo && k < hi) {
                be->pl->buffer_free(be->state, be->wc[i].buffer);
                be->wc[i] = be->wc[--be->n_wc];
            } else {
                i++;
            }
        }
    }
}

/* Uploads (lazily, once per context) every weight that device nodes read, and binds states. */
static fm_status bind_device(fm_session *s) {
    fm_graph *g = s->g;
    for (int i = 0; i < g->n_nodes; i++) {
        snode *n = &s->sn[i];
        if (space_of(s, n->planned) == SPACE_HOST) continue;
        int nd = n->pn.n_src + n->pn.n_dst;
        for (int j = 0; j < nd; j++) {
            const fm_tensor *gt = j < n->pn.n_src ? g->t[g->nodes[i].src[j]] : g->t[g->nodes[i].dst[j - n->pn.n_src]];
            const fm_tensor *t = storage(s, gt);
            if (t->kind != FM_T_WEIGHT && t->kind != FM_T_STATE) continue;
            bool fresh;
            fm_wcache_ent *e = cache_get(s, n->planned, t, &fresh);
            if (!e) return fm_err(s->ctx, FM_ENOMEM, "backend '%s': cannot upload '%s' (%zu bytes)",
                                  BE(s, n->planned)->name, t->name, fm_tensor_bytes(t));
            n->pt[j].buffer = e->buffer;
            n->pt[j].offset = 0;
            n->pt[j].data = NULL;
            if (gt->scale) {
                fm_wcache_ent *se = cache_get(s, n->planned, gt->scale, &fresh);
                if (!se) return fm_err(s->ctx, FM_ENOMEM, "backend '%s': cannot upload '%s'",
                                       BE(s, n->planned)->name, gt->scale->name);
                fm_pl_tensor *sd = &n->pt[nd + j];
                sd->buffer = se->buffer;
                sd->offset = 0;
                sd->data = NULL;
            }
        }
    }
    s->bound = true;
    return FM_OK;
}

/* ---- session API ---- */

fm_status fm_session_place(fm_session *s, const char *backends, const char *place) {
    free_plan(s);
    fm_status st = parse_backends(s, backends);
    if (st == FM_OK) st = parse_place(s, place);
    if (st == FM_OK) st = build_plan(s);
    if (st != FM_OK) free_plan(s);
    return st;
}

fm_status fm_session_init(fm_ctx *ctx, fm_graph *g, const char *backends, const char *place, uint32_t flags,
                          fm_session **out) {
    *out = NULL;
    if (g->status != FM_OK) { /* the graph's first error is already the context's message */
        char why[sizeof ctx->err];
        snprintf(why, sizeof why, "%s", ctx->err);
        return fm_err(ctx, g->status, "session: the graph has an error: %s", why);
    }
    fm_session *s = calloc(1, sizeof *s);
    if (!s) return fm_err(ctx, FM_ENOMEM, "session: out of memory");
    s->ctx = ctx;
    s->g = g;
    s->flags = flags;
    s->input = calloc((size_t)g->n_t + 1, sizeof *s->input);
    s->input_set = calloc((size_t)g->n_t + 1, sizeof *s->input_set);
    s->state_dirty = malloc(((size_t)g->n_t + 1) * sizeof *s->state_dirty);
    if (!s->input || !s->input_set || !s->state_dirty) {
        fm_session_free(s);
        return fm_err(ctx, FM_ENOMEM, "session: out of memory");
    }
    for (int t = 0; t < g->n_t; t++) {
        s->state_dirty[t] = -1;
        if (g->t[t]->kind == FM_T_INPUT && !(s->input[t] = fm_alloc(ctx, fm_tensor_bytes(g->t[t])))) {
            fm_session_free(s);
            return fm_err(ctx, FM_ENOMEM, "session: out of memory for input '%s'", g->t[t]->name);
        }
    }
    fm_status st = fm_session_place(s, backends, place);
    if (st != FM_OK) {
        fm_session_free(s);
        return st;
    }
    *out = s;
    return FM_OK;
}

void fm_session_free(fm_session *s) {
    if (!s) return;
    free_plan(s);
    if (s->input)
        for (int t = 0; t < s->g->n_t; t++) fm_free(s->input[t]);
    free(s->input);
    free(s->input_set);
    free(s->state_dirty);
    free(s);
}

void fm_session_set_flags(fm_session *s, uint32_t flags) {
    bool replan = ((s->flags ^ flags) & FM_RUN_GUARD) != 0;
    s->flags = flags;
    if (replan) {
        int prio[64], n = s->n_prio, place[FM_OP_COUNT];
        memcpy(prio, s->prio, sizeof prio);
        memcpy(place, s->place, sizeof place);
        free_plan(s);
        memcpy(s->prio, prio, sizeof prio);
        memcpy(s->place, place, sizeof place);
        s->n_prio = n;
        if (build_plan(s) != FM_OK) free_plan(s);
    }
}

fm_status fm_session_set_input(fm_session *s, const fm_tensor *t, const void *data, size_t bytes) {
    if (!t || t->g != s->g || t->kind != FM_T_INPUT)
        return fm_err(s->ctx, FM_EINVAL, "set_input: '%s' is not an input of this graph", t ? t->name : "(null)");
    if (bytes != fm_tensor_bytes(t))
        return fm_err(s->ctx, FM_EINVAL, "set_input '%s': %zu bytes given, %zu expected", t->name, bytes,
                      fm_tensor_bytes(t));
    memcpy(s->input[t->id], data, bytes);
    s->input_set[t->id] = true;
    return FM_OK;
}

/* ---- run ---- */

static fm_status copy_loc(fm_session *s, const loc *from, const loc *to) {
    fm_backend *fb = from->owner >= 0 ? BE(s, from->owner) : NULL, *tb = to->owner >= 0 ? BE(s, to->owner) : NULL;
    uint64_t n = from->size;
    s->copies++;
    if (from->host && to->host) {
        memcpy(to->host, from->host, n);
        return FM_OK;
    }
    if (from->host) return tb->pl->buffer_upload(tb->state, to->buffer, to->boff, from->host, n);
    if (to->host) return fb->pl->buffer_download(fb->state, from->buffer, from->boff, to->host, n);
    return FM_FAILED; /* device to device goes through a host mirror (see need_loc) */
}

/* States written on a device are brought back to host memory. */
static fm_status sync_state(fm_session *s, int tensor) {
    int b = s->state_dirty[tensor];
    if (b < 0) return FM_OK;
    const fm_tensor *t = s->g->t[tensor];
    bool fresh;
    fm_wcache_ent *e = cache_get(s, b, t, &fresh);
    fm_backend *be = BE(s, b);
    if (!e || be->pl->buffer_download(be->state, e->buffer, 0, t->data, e->size) != FM_OK)
        return fm_err(s->ctx, FM_FAILED, "backend '%s': cannot read back state '%s'", be->name, t->name);
    s->state_dirty[tensor] = -1;
    return FM_OK;
}

static fm_status prepare_states(fm_session *s, int i, int b) {
    const fm_node *gn = &s->g->nodes[i];
    bool device = space_of(s, b) != SPACE_HOST;
    for (int j = 0; j < gn->n_src; j++) {
        const fm_tensor *t = storage(s, s->g->t[gn->src[j]]);
        if (t->kind != FM_T_STATE || s->state_dirty[t->id] == b) continue;
        fm_status st = sync_state(s, t->id);
        if (st != FM_OK) return st;
        if (device) { /* the host copy is current: refresh the device copy */
            bool fresh;
            fm_wcache_ent *e = cache_get(s, b, t, &fresh);
            fm_backend *be = BE(s, b);
            if (!e || (!fresh && be->pl->buffer_upload(be->state, e->buffer, 0, t->data, e->size) != FM_OK))
                return fm_err(s->ctx, FM_FAILED, "backend '%s': cannot upload state '%s'", be->name, t->name);
        }
    }
    for (int j = 0; j < gn->n_dst; j++) {
        const fm_tensor *t = s->g->t[gn->dst[j]];
        if (t->alias >= 0) s->state_dirty[t->alias] = device ? b : -1;
    }
    return FM_OK;
}

static bool guard_ok(const loc *l) {
    const uint8_t *p = l->host;
    uint64_t padded = (l->size + 63) & ~(uint64_t)63;
    for (uint64_t k = 1; k <= GUARD_BYTES; k++)
        if (p[-(int64_t)k] != GUARD_BYTE) return false;
    for (uint64_t k = l->size; k < padded + GUARD_BYTES; k++)
        if (p[k] != GUARD_BYTE) return false;
    return true;
}

static void guard_fill(const loc *l) {
    uint64_t padded = (l->size + 63) & ~(uint64_t)63;
    memset((char *)l->host - GUARD_BYTES, GUARD_BYTE, GUARD_BYTES);
    memset((char *)l->host + l->size, GUARD_BYTE, padded - l->size + GUARD_BYTES);
}

/* Re-runs node i on host backend b, staging device-resident tensors through host memory. */
static fm_status run_on_host(fm_session *s, int i, int b, char *why, size_t why_size) {
    snode *n = &s->sn[i];
    fm_backend *be = BE(s, b);
    int nd = n->pn.n_src + n->pn.n_dst;
    if (space_of(s, n->planned) == SPACE_HOST) {
        fm_status st = be->pl->compute(be->state, &n->pn);
        if (st != FM_OK) snprintf(why, why_size, "%s", be->pl->last_error(be->state));
        return st;
    }
    /* planned on a device: download sources, compute on host, upload results */
    fm_pl_tensor *tmp = calloc((size_t)nd * 2, sizeof *tmp);
    const fm_pl_tensor **pp = calloc((size_t)nd, sizeof *pp);
    void **mem = calloc((size_t)nd * 2, sizeof *mem);
    fm_status st = tmp && pp && mem ? FM_OK : FM_ENOMEM;
    const fm_graph *g = s->g;
    for (int j = 0; j < nd && st == FM_OK; j++) {
        const fm_tensor *t = j < n->pn.n_src ? g->t[g->nodes[i].src[j]] : g->t[g->nodes[i].dst[j - n->pn.n_src]];
        const fm_tensor *stt = storage(s, t);
        tmp[j] = n->pt[j];
        pp[j] = &tmp[j];
        if (stt->kind == FM_T_WEIGHT || stt->kind == FM_T_STATE) {
            tmp[j].data = stt->data;
            if (t->scale) {
                tmp[nd + j] = *n->pt[j].scale;
                tmp[nd + j].data = t->scale->data;
                tmp[j].scale = &tmp[nd + j];
            }
            continue;
        }
        const loc *l = &s->locs[n->sloc[j]];
        if (!(mem[j] = fm_alloc(s->ctx, l->size))) { st = FM_ENOMEM; break; }
        tmp[j].data = mem[j];
        if (j < n->pn.n_src) st = copy_loc(s, l, &(loc){.host = mem[j], .size = l->size, .owner = -1});
    }
    if (st == FM_OK) {
        fm_pl_node node = n->pn;
        node.src = pp;
        node.dst = pp + n->pn.n_src;
        st = be->pl->compute(be->state, &node);
        if (st != FM_OK) snprintf(why, why_size, "%s", be->pl->last_error(be->state));
    } else {
        snprintf(why, why_size, "out of memory staging node '%s' through host memory", n->pn.name);
    }
    for (int j = n->pn.n_src; j < nd && st == FM_OK; j++) {
        const fm_tensor *t = g->t[g->nodes[i].dst[j - n->pn.n_src]];
        if (t->alias >= 0) continue; /* state written on host: the host copy is now current */
        st = copy_loc(s, &(loc){.host = mem[j], .size = s->locs[n->sloc[j]].size, .owner = -1}, &s->locs[n->sloc[j]]);
    }
    for (int j = 0; mem && j < nd; j++) fm_free(mem[j]);
    free(mem);
    free(pp);
    free(tmp);
    return st;
}

void fm_trace_add(fm_ctx *ctx, const char *name, const char *cat, int tid, uint64_t t0, uint64_t dur);

static fm_status run_node(fm_session *s, int i) {
    snode *n = &s->sn[i];
    fm_backend *be = BE(s, n->planned);
    fm_status st = prepare_states(s, i, n->planned);
    if (st != FM_OK) return st;
    if (s->flags & FM_RUN_GUARD) /* filled just before: dead neighbours may have reused the bytes */
        for (int j = 0; j < n->pn.n_dst; j++) {
            const loc *l = &s->locs[n->sloc[n->pn.n_src + j]];
            if (l->owner >= 0 && l->host) guard_fill(l);
        }
    fm_counters c0 = {0}, c1 = {0};
    bool cycles = be->pl->counters && (be->info.flags & FM_DEV_REPORTS_CYCLES);
    if (cycles) be->pl->counters(be->state, &c0);
    uint64_t t0 = fm_now_ns();
    st = be->pl->compute(be->state, &n->pn);
    if (cycles) {
        be->pl->counters(be->state, &c1);
        n->cycles = c1.cycles - c0.cycles;
    }
    n->ran = n->planned;
    n->fallbacks = 0;
    if (st != FM_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", be->pl->last_error(be->state));
        if (st == FM_EINVAL || (s->flags & FM_RUN_STRICT))
            return fm_err(s->ctx, st == FM_EINVAL ? FM_EINVAL : FM_FAILED, "node '%s' (%s) on backend '%s': %s",
                          n->pn.name, fm_op_name(n->pn.op), be->name, why);
        for (int c = 1; c < n->n_cand && st != FM_OK; c++) {
            int b = n->cand[c];
            if (!host_mem(BE(s, b))) continue;
            fm_log(1, "node '%s' (%s) failed on '%s' (%s); re-running on '%s'", n->pn.name, fm_op_name(n->pn.op),
                   BE(s, n->ran)->name, why, BE(s, b)->name);
            n->fallbacks++;
            n->ran = b;
            if (prepare_states(s, i, b) != FM_OK) continue;
            st = run_on_host(s, i, b, why, sizeof why);
        }
        if (st != FM_OK)
            return fm_err(s->ctx, st == FM_EINVAL ? FM_EINVAL : FM_FAILED, "node '%s' (%s) failed on every backend: %s",
                          n->pn.name, fm_op_name(n->pn.op), why);
    }
    uint64_t t1 = fm_now_ns();
    n->time_ns = t1 - t0;
    if (s->flags & FM_RUN_TRACE) fm_trace_add(s->ctx, n->pn.name, fm_op_name(n->pn.op), n->ran, t0, t1 - t0);
    if (s->flags & FM_RUN_GUARD) {
        for (int j = 0; j < n->pn.n_dst; j++) {
            const loc *l = &s->locs[n->sloc[n->pn.n_src + j]];
            if (l->owner >= 0 && l->host && !guard_ok(l))
                return fm_err(s->ctx, FM_FAILED, "node '%s' (%s) on backend '%s' wrote outside its output '%s'",
                              n->pn.name, fm_op_name(n->pn.op), BE(s, n->ran)->name, n->pt[n->pn.n_src + j].name);
        }
    }
    return FM_OK;
}

fm_status fm_session_run(fm_session *s) {
    if (!s->sn) return fm_err(s->ctx, FM_EINVAL, "session: no valid placement (an earlier re-placement failed)");
    for (int t = 0; t < s->g->n_t; t++)
        if (s->g->t[t]->kind == FM_T_INPUT && !s->input_set[t])
            return fm_err(s->ctx, FM_EINVAL, "run: input '%s' was not set", s->g->t[t]->name);
    if (!s->bound) {
        fm_status st = bind_device(s);
        if (st != FM_OK) return st;
    }
    s->copies = 0;
    fm_status st = FM_OK;
    for (int k = 0; k < s->n_steps && st == FM_OK; k++) {
        const step *p = &s->steps[k];
        if (p->kind == STEP_NODE) st = run_node(s, p->node);
        else if ((st = copy_loc(s, &s->locs[p->from], &s->locs[p->to])) != FM_OK)
            fm_err(s->ctx, st, "copy of '%s' between backends failed", s->g->t[s->locs[p->from].tensor]->name);
    }
    for (int t = 0; t < s->g->n_t; t++) {
        fm_status ss = sync_state(s, t);
        if (st == FM_OK) st = ss;
    }
    for (int b = 0; b < s->ctx->n_be; b++) {
        fm_backend *be = BE(s, b);
        if (be->status == FM_BACKEND_READY && be->pl->synchronize && s->ar[b].buffer) be->pl->synchronize(be->state);
    }
    return st;
}

fm_status fm_session_read(fm_session *s, const fm_tensor *t, void *dst, size_t bytes) {
    if (!t || t->g != s->g) return fm_err(s->ctx, FM_EINVAL, "read: tensor is not in this session's graph");
    if (bytes != fm_tensor_bytes(t))
        return fm_err(s->ctx, FM_EINVAL, "read '%s': %zu bytes asked, tensor has %zu", t->name, bytes,
                      fm_tensor_bytes(t));
    const fm_tensor *st = storage(s, t);
    if (st->kind == FM_T_WEIGHT || st->kind == FM_T_STATE) {
        memcpy(dst, st->data, bytes);
        return FM_OK;
    }
    if (!s->sn) return fm_err(s->ctx, FM_EINVAL, "read '%s': session has no valid placement", t->name);
    if (st->kind == FM_T_NODE && !st->output)
        return fm_err(s->ctx, FM_EINVAL, "read '%s': not marked as a graph output (fm_graph_output)", t->name);
    const loc *l = &s->locs[s->home[st->id]];
    return copy_loc(s, l, &(loc){.host = dst, .size = bytes, .owner = -1});
}

int fm_session_node_count(const fm_session *s) { return s->g->n_nodes; }

fm_status fm_session_node_stat(const fm_session *s, int i, fm_node_stat *out) {
    if (i < 0 || i >= s->g->n_nodes || !s->sn) return FM_ENOTFOUND;
    const snode *n = &s->sn[i];
    *out = (fm_node_stat){.name = n->pn.name, .op = (fm_op)n->pn.op, .backend = s->ctx->be[n->ran].name,
                          .backend_index = n->ran,
                          .planned = s->ctx->be[n->planned].name, .time_ns = n->time_ns, .cycles = n->cycles,
                          .fallbacks = n->fallbacks};
    return FM_OK;
}

uint64_t fm_session_arena_bytes(const fm_session *s, const char *backend) {
    int b = fm_backend_find(s->ctx, backend);
    return b >= 0 && s->ar ? s->ar[b].size : 0;
}

int64_t fm_session_copy_count(const fm_session *s) { return s->copies; }
