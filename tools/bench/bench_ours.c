/* bench_ours.c - runs one op of ours, either through the public API (a graph of
 * one node on a session placed on --backend: what a user gets, executor
 * included) or, with --direct, by loading the backend plugin and calling its
 * compute slot on a hand-built node (no core library involved). */
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "fathom/fathom.h"

struct bench_ours {
    int plugin;
    int borrowed;               /* ctx (api) or plugin instance (direct) belongs to another bench_ours */
    char err[512];
    char device[128];
    bench_tensor *const *dst;
    int n_dst;
    /* api */
    fm_ctx *ctx;
    fm_graph *g;
    fm_session *s;
    fm_tensor *out[4];
    /* plugin */
    void *dl;
    const fm_plugin *pl;
    void *st;
    fm_pl_tensor *pt;           /* src then dst then scales */
    const fm_pl_tensor **psrc, **pdst;
    fm_pl_node node;
    void *params;
};

static int fail(bench_ours *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return -1;
}

static size_t tbytes(const bench_tensor *t) {
    static const size_t es[] = {4, 2, 2, 1, 4};
    size_t n = es[t->dtype];
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->ne[i];
    return n;
}

/* ---- public API ---- */

static fm_tensor *leaf(bench_ours *b, bench_tensor *t) {
    if (!t) return NULL;
    switch (t->kind) {
    case 0: return fm_input(b->g, t->name, t->dtype, t->ndim, t->ne);
    case 2: return fm_state(b->g, t->name, t->dtype, t->ndim, t->ne, t->data);
    default: return fm_weight(b->g, t->name, t->dtype, t->ndim, t->ne, t->data, t->scale ? leaf(b, t->scale) : NULL);
    }
}

static int init_api(bench_ours *b, const bench_opts *o, int op, bench_tensor *const *src, int n_src, const void *params) {
    if (!b->ctx && fm_ctx_init(&b->ctx) != FM_OK) return fail(b, "fm_ctx_init failed");
    int bi = fm_backend_find(b->ctx, o->backend);
    fm_backend_info info;
    if (bi < 0 || fm_backend_info_get(b->ctx, bi, &info) != FM_OK)
        return fail(b, "backend %s not found (FATHOM_PLUGIN_PATH or plugins/ beside the executable)", o->backend);
    if (info.status != FM_BACKEND_READY) return fail(b, "backend %s not ready: %s", o->backend, info.reason);
    if (o->threads > 0 && !b->borrowed) {
        char v[16];
        snprintf(v, sizeof v, "%d", o->threads);
        if (fm_backend_control(b->ctx, o->backend, "threads", v) != FM_OK)
            return fail(b, "backend %s: threads=%s: %s", o->backend, v, fm_ctx_error(b->ctx));
        fm_backend_info_get(b->ctx, bi, &info);
    }
    if (o->isa && !b->borrowed && fm_backend_control(b->ctx, o->backend, "isa", o->isa) != FM_OK)
        return fail(b, "backend %s: isa=%s: %s", o->backend, o->isa, fm_ctx_error(b->ctx));
    if (o->isa) fm_backend_info_get(b->ctx, bi, &info);
    if (fm_graph_init(b->ctx, &b->g) != FM_OK) return fail(b, "fm_graph_init: %s", fm_ctx_error(b->ctx));
    fm_tensor *s[4 + 3 * 512] = {0};
    if (n_src > (int)(sizeof s / sizeof *s)) return fail(b, "too many sources");
    for (int i = 0; i < n_src; i++) s[i] = leaf(b, src[i]);
    switch (op) {
    case FM_OP_MATMUL: b->out[0] = fm_matmul(b->g, s[0], s[1], ((const fm_matmul_params *)params)->act_quant); break;
    case FM_OP_MOE_EXPERTS: {
        const fm_moe_experts_params *p = params;
        int E = p->n_experts;
        fm_tensor **gt = malloc((size_t)E * 3 * sizeof *gt);
        if (!gt) return fail(b, "out of memory");
        for (int e = 0; e < E; e++) gt[e] = s[3 + 3 * e], gt[E + e] = s[4 + 3 * e], gt[2 * E + e] = s[5 + 3 * e];
        b->out[0] = fm_moe_experts(b->g, s[0], s[1], s[2], E, gt, gt + E, gt + 2 * E, p->act_quant);
        free(gt);
        break;
    }
    case FM_OP_MOE_ROUTE:
        fm_moe_route(b->g, s[0], s[1], n_src > 2 ? s[2] : NULL, params, &b->out[0], &b->out[1]);
        break;
    case FM_OP_MLA_ATTN: b->out[0] = fm_mla_attn(b->g, s[0], s[1], s[2], s[3], params); break;
    case FM_OP_RMSNORM: b->out[0] = fm_rmsnorm(b->g, s[0], s[1], ((const fm_rmsnorm_params *)params)->eps); break;
    default: return fail(b, "op %d not wired into the bench's API path", op);
    }
    if (fm_graph_status(b->g) != FM_OK) return fail(b, "graph: %s", fm_ctx_error(b->ctx));
    for (int i = 0; i < b->n_dst; i++) fm_graph_output(b->g, b->out[i]);
    if (fm_session_init(b->ctx, b->g, o->backend, NULL, 0, &b->s) != FM_OK)
        return fail(b, "fm_session_init: %s", fm_ctx_error(b->ctx));
    for (int i = 0; i < n_src; i++)
        if (src[i] && src[i]->kind == 0 && fm_session_set_input(b->s, s[i], src[i]->data, tbytes(src[i])) != FM_OK)
            return fail(b, "set input %s: %s", src[i]->name, fm_ctx_error(b->ctx));
    snprintf(b->device, sizeof b->device, "%s", info.device);
    /* one run: the node must have run on the backend under test, not a fallback */
    if (fm_session_run(b->s) != FM_OK) return fail(b, "run: %s", fm_ctx_error(b->ctx));
    for (int i = 0; i < fm_session_node_count(b->s); i++) {
        fm_node_stat ns;
        if (fm_session_node_stat(b->s, i, &ns) == FM_OK && ns.backend && strcmp(ns.backend, o->backend))
            return fail(b, "node %s ran on %s, not %s (unsupported there?)", ns.name, ns.backend, o->backend);
    }
    return 0;
}

/* ---- plugin direct ---- */

static void *h_alloc(void *c, size_t n) {
    (void)c;
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 1) ? NULL : p;
}
static void h_free(void *c, void *p) {
    (void)c;
    free(p);
}
static void h_log(void *c, int level, const char *fmt, ...) {
    (void)c;
    if (level > 1) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: plugin: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
static fm_status h_ref(const fm_pl_node *n, char *err, size_t errn) {
    (void)n;
    snprintf(err, errn, "no reference backend in --direct mode");
    return FM_UNSUPPORTED;
}
static const fm_host_services host = {sizeof(fm_host_services), FM_PLUGIN_ABI_MINOR, h_alloc, h_free, h_log, h_ref, NULL};

static void *open_plugin(const char *backend, char *path, size_t pathn) {
    char dirs[4][PATH_MAX];
    int nd = 0;
    const char *env = getenv("FATHOM_PLUGIN_PATH");
    if (env && *env) snprintf(dirs[nd++], PATH_MAX, "%.*s", (int)strcspn(env, ":"), env);
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l > 0) {
        exe[l] = 0;
        char *sl = strrchr(exe, '/');
        if (sl) *sl = 0;
        snprintf(dirs[nd++], PATH_MAX, "%.*s/plugins", PATH_MAX - 16, exe);
    }
    snprintf(dirs[nd++], PATH_MAX, "build/plugins");
    for (int i = 0; i < nd; i++) {
        snprintf(path, pathn, "%.*s/libfathom-%s.so", PATH_MAX - 64, dirs[i], backend);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
    }
    return NULL;
}

static void pl_tensor(fm_pl_tensor *d, const bench_tensor *t, const fm_pl_tensor *scale) {
    memset(d, 0, sizeof *d);
    d->dtype = t->dtype;
    d->ndim = t->ndim;
    memcpy(d->ne, t->ne, sizeof d->ne);
    d->data = t->data;
    d->scale = scale;
    d->name = t->name;
    d->flags = t->kind == 1 ? FM_PL_WEIGHT : t->kind == 2 ? FM_PL_STATE : 0;
}

static int init_plugin(bench_ours *b, const bench_opts *o, int op, bench_tensor *const *src, int n_src,
                       bench_tensor *const *dst, int n_dst, const void *params, size_t params_size) {
    char path[PATH_MAX + 64] = "";
    if (!b->borrowed) {
        b->dl = open_plugin(o->backend, path, sizeof path);
        if (!b->dl)
            return fail(b, "cannot load libfathom-%s.so (FATHOM_PLUGIN_PATH, plugins/ beside the executable)", o->backend);
        const fm_plugin *(*entry)(void);
        *(void **)&entry = dlsym(b->dl, "fm_plugin_entry");
        if (!entry || !(b->pl = entry())) return fail(b, "%s: no fm_plugin_entry", path);
        char why[512] = "";
        if (b->pl->init(&host, &b->st, why, sizeof why) != FM_OK) return fail(b, "%s: init: %s", path, why);
    }
    if (o->threads > 0 && b->pl->control && !b->borrowed) {
        char v[16];
        snprintf(v, sizeof v, "%d", o->threads);
        if (b->pl->control(b->st, "threads", v) != FM_OK) return fail(b, "threads=%s: %s", v, b->pl->last_error(b->st));
    }
    if (o->isa && !b->borrowed && (!b->pl->control || b->pl->control(b->st, "isa", o->isa) != FM_OK))
        return fail(b, "isa=%s: %s", o->isa, b->pl->control ? b->pl->last_error(b->st) : "no control slot");
    fm_device_info di;
    if (b->pl->device_info(b->st, &di) == FM_OK) snprintf(b->device, sizeof b->device, "%s", di.name);
    b->pt = calloc((size_t)(2 * n_src + n_dst), sizeof *b->pt);
    b->psrc = calloc((size_t)n_src, sizeof *b->psrc);
    b->pdst = calloc((size_t)n_dst, sizeof *b->pdst);
    b->params = malloc(params_size ? params_size : 1);
    if (!b->pt || !b->psrc || !b->pdst || !b->params) return fail(b, "out of memory");
    memcpy(b->params, params, params_size);
    fm_pl_tensor *sc = b->pt + n_src + n_dst;
    for (int i = 0; i < n_src; i++) {
        if (!src[i]) continue;
        if (src[i]->scale) pl_tensor(&sc[i], src[i]->scale, NULL);
        pl_tensor(&b->pt[i], src[i], src[i]->scale ? &sc[i] : NULL);
        b->psrc[i] = &b->pt[i];
    }
    for (int i = 0; i < n_dst; i++) {
        pl_tensor(&b->pt[n_src + i], dst[i], NULL);
        b->pdst[i] = &b->pt[n_src + i];
    }
    b->node = (fm_pl_node){.op = op, .n_src = n_src, .n_dst = n_dst, .src = b->psrc, .dst = b->pdst,
                           .params = b->params, .name = "bench"};
    if (!b->pl->supports(b->st, &b->node, NULL)) return fail(b, "%s does not support this node", o->backend);
    return 0;
}

int bench_ours_init(bench_ours **out, const bench_opts *o, int op, bench_tensor *const *src, int n_src,
                    bench_tensor *const *dst, int n_dst, const void *params, size_t params_size, char *why,
                    size_t whyn) {
    return bench_ours_init_shared(out, NULL, o, op, src, n_src, dst, n_dst, params, params_size, why, whyn);
}

int bench_ours_init_shared(bench_ours **out, bench_ours *share, const bench_opts *o, int op, bench_tensor *const *src,
                           int n_src, bench_tensor *const *dst, int n_dst, const void *params, size_t params_size,
                           char *why, size_t whyn) {
    *out = NULL;
    bench_ours *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(why, whyn, "out of memory");
        return -1;
    }
    b->dst = dst;
    b->n_dst = n_dst;
    int rc = -1;
    if (share) { /* the same context (or plugin instance): one set of threads, as in a model */
        b->borrowed = 1;
        if (share->plugin) b->dl = share->dl, b->pl = share->pl, b->st = share->st;
        else b->ctx = share->ctx;
        rc = share->plugin ? init_plugin(b, o, op, src, n_src, dst, n_dst, params, params_size)
                           : init_api(b, o, op, src, n_src, params);
        b->plugin = share->plugin;
        if (rc) {
            snprintf(why, whyn, "%s", b->err);
            bench_ours_free(b);
            return -1;
        }
        *out = b;
        return 0;
    }
    if (!o->direct) {
        rc = init_api(b, o, op, src, n_src, params);
        if (rc) {
            bench_progress("public API path unavailable (%s); driving the plugin directly", b->err);
            if (b->s) fm_session_free(b->s);
            if (b->g) fm_graph_free(b->g);
            if (b->ctx) fm_ctx_free(b->ctx);
            b->s = NULL, b->g = NULL, b->ctx = NULL;
        }
    }
    if (rc) {
        b->plugin = 1;
        rc = init_plugin(b, o, op, src, n_src, dst, n_dst, params, params_size);
    }
    if (rc) {
        snprintf(why, whyn, "%s", b->err);
        bench_ours_free(b);
        return -1;
    }
    *out = b;
    return 0;
}

int bench_ours_run(bench_ours *b) {
    if (b->plugin) {
        fm_status st = b->pl->compute(b->st, &b->node);
        return st == FM_OK ? 0 : fail(b, "compute: %s", b->pl->last_error(b->st));
    }
    return fm_session_run(b->s) == FM_OK ? 0 : fail(b, "run: %s", fm_ctx_error(b->ctx));
}

int bench_ours_read(bench_ours *b) {
    if (b->plugin) return 0; /* outputs were written in place */
    for (int i = 0; i < b->n_dst; i++)
        if (fm_session_read(b->s, b->out[i], b->dst[i]->data, tbytes(b->dst[i])) != FM_OK)
            return fail(b, "read: %s", fm_ctx_error(b->ctx));
    return 0;
}

const char *bench_ours_mode(const bench_ours *b) { return b->plugin ? "plugin direct" : "public API"; }
const char *bench_ours_device(const bench_ours *b) { return b->device; }
const char *bench_ours_error(const bench_ours *b) { return b->err; }

void bench_ours_free(bench_ours *b) {
    if (!b) return;
    if (b->s) fm_session_free(b->s);
    if (b->g) fm_graph_free(b->g);
    if (b->ctx && !b->borrowed) fm_ctx_free(b->ctx);
    if (b->pl && b->st && !b->borrowed) b->pl->destroy(b->st);
    free(b->pt);
    free(b->psrc);
    free(b->pdst);
    free(b->params);
    free(b);
}

/* ---- a bare plugin instance for per-op compositions ---- */

struct bench_plugin {
    bench_ours b;
};

int bench_plugin_open(bench_plugin **out, const bench_opts *o, char *why, size_t whyn) {
    *out = NULL;
    bench_plugin *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(why, whyn, "out of memory");
        return -1;
    }
    bench_ours *b = &p->b;
    b->plugin = 1;
    char path[PATH_MAX + 64];
    b->dl = open_plugin(o->backend, path, sizeof path);
    const fm_plugin *(*entry)(void) = NULL;
    if (b->dl) *(void **)&entry = dlsym(b->dl, "fm_plugin_entry");
    char w[512] = "";
    if (!entry || !(b->pl = entry()) || b->pl->init(&host, &b->st, w, sizeof w) != FM_OK) {
        snprintf(why, whyn, "cannot load or start libfathom-%s.so %s", o->backend, w);
        free(p);
        return -1;
    }
    if (o->threads > 0 && b->pl->control) {
        char v[16];
        snprintf(v, sizeof v, "%d", o->threads);
        b->pl->control(b->st, "threads", v);
    }
    if (o->isa && b->pl->control) b->pl->control(b->st, "isa", o->isa);
    *out = p;
    return 0;
}

int bench_plugin_run(bench_plugin *p, int op, bench_tensor *const *src, int n_src, bench_tensor *const *dst, int n_dst,
                     const void *params) {
    bench_ours *b = &p->b;
    fm_pl_tensor t[16], sc[8];
    const fm_pl_tensor *ps[8], *pd[4];
    if (n_src > 8 || n_dst > 4) return fail(b, "too many tensors");
    for (int i = 0; i < n_src; i++) {
        if (src[i]->scale) pl_tensor(&sc[i], src[i]->scale, NULL);
        pl_tensor(&t[i], src[i], src[i]->scale ? &sc[i] : NULL);
        ps[i] = &t[i];
    }
    for (int i = 0; i < n_dst; i++) pl_tensor(&t[8 + i], dst[i], NULL), pd[i] = &t[8 + i];
    fm_pl_node nd = {.op = op, .n_src = n_src, .n_dst = n_dst, .src = ps, .dst = pd, .params = params, .name = "peer"};
    fm_status st = b->pl->compute(b->st, &nd);
    return st == FM_OK ? 0 : fail(b, "compute: %s", b->pl->last_error(b->st));
}

const char *bench_plugin_error(const bench_plugin *p) { return p->b.err; }

void bench_plugin_close(bench_plugin *p) {
    if (!p) return;
    if (p->b.pl && p->b.st) p->b.pl->destroy(p->b.st);
    free(p);
}
