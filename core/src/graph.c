/* graph.c - tensors and op builders: validate shapes, record nodes, compute nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

fm_status fm_graph_init(fm_ctx *ctx, fm_graph **out) {
    *out = NULL;
    fm_graph *g = calloc(1, sizeof *g);
    if (!g) return fm_err(ctx, FM_ENOMEM, "graph: out of memory");
    g->ctx = ctx;
    *out = g;
    return FM_OK;
}

void fm_graph_free(fm_graph *g) {
    if (!g) return;
    for (int i = 0; i < g->n_t; i++) free(g->t[i]);
    for (int i = 0; i < g->n_nodes; i++) free(g->nodes[i].src);
    free(g->t);
    free(g->nodes);
    free(g);
}

fm_status fm_graph_status(const fm_graph *g) { return g->status; }
int fm_graph_node_count(const fm_graph *g) { return g->n_nodes; }

/* Records the graph's first error; later ones are consequences of it. */
__attribute__((format(printf, 3, 4))) static void *gerr(fm_graph *g, fm_status s, const char *fmt, ...) {
    if (g->status == FM_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->ctx->err, sizeof g->ctx->err, fmt, ap);
        va_end(ap);
        g->status = s;
    }
    return NULL;
}

static const char *shape(const fm_tensor *t, char *buf, size_t n) {
    int k = snprintf(buf, n, "'%s' [", t->name);
    for (int i = 0; i < t->ndim && k < (int)n; i++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
    if (k < (int)n) snprintf(buf + k, n - (size_t)k, "] %s", fm_dtype_name(t->dtype));
    return buf;
}
#define SHAPE(t) shape((t), (char[160]){0}, 160)

static fm_tensor *new_tensor(fm_graph *g, int kind, const char *name, fm_dtype dt, int ndim, const int64_t *ne) {
    if (g->status != FM_OK) return NULL;
    if ((unsigned)dt >= FM_DTYPE_COUNT) return gerr(g, FM_EINVAL, "tensor '%s': unknown dtype %d", name, (int)dt);
    if (ndim < 1 || ndim > FM_MAX_DIMS)
        return gerr(g, FM_EINVAL, "tensor '%s': %d dims, expected 1..%d", name, ndim, FM_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (ne[i] <= 0)
            return gerr(g, FM_EINVAL, "tensor '%s': dim %d is %lld, expected > 0", name, i, (long long)ne[i]);
    fm_tensor **nt = fm_realloc_array(g->ctx, g->t, &g->cap_t, (size_t)g->n_t + 1, sizeof *nt);
    if (!nt) return gerr(g, FM_ENOMEM, "graph: out of memory adding tensor '%s'", name);
    g->t = nt;
    fm_tensor *t = calloc(1, sizeof *t);
    if (!t) return gerr(g, FM_ENOMEM, "graph: out of memory adding tensor '%s'", name);
    *t = (fm_tensor){.g = g, .id = g->n_t, .kind = kind, .dtype = dt, .ndim = ndim, .node = -1, .alias = -1};
    memcpy(t->ne, ne, (size_t)ndim * sizeof *ne);
    snprintf(t->name, sizeof t->name, "%s", name ? name : "");
    g->t[g->n_t++] = t;
    return t;
}

fm_tensor *fm_input(fm_graph *g, const char *name, fm_dtype t, int ndim, const int64_t *ne) {
    return new_tensor(g, FM_T_INPUT, name, t, ndim, ne);
}

fm_tensor *fm_weight(fm_graph *g, const char *name, fm_dtype dt, int ndim, const int64_t *ne, const void *data,
                     fm_tensor *scale) {
    if (g->status != FM_OK) return NULL;
    if (!data) return gerr(g, FM_EINVAL, "weight '%s': no data", name);
    if (dt == FM_F8_E4M3) {
        if (ndim != 2) return gerr(g, FM_EINVAL, "weight '%s': f8_e4m3 weights are 2-D, got %d dims", name, ndim);
        int64_t r = (ne[0] + 127) / 128, c = (ne[1] + 127) / 128;
        if (!scale || scale->dtype != FM_F32 || scale->ndim != 2 || scale->ne[0] != r || scale->ne[1] != c)
            return gerr(g, FM_EINVAL, "weight '%s': f8_e4m3 needs f32 block scales [%lld, %lld], got %s", name,
                        (long long)r, (long long)c, scale ? SHAPE(scale) : "none");
    } else if (scale) {
        return gerr(g, FM_EINVAL, "weight '%s': block scales given for a %s weight", name, fm_dtype_name(dt));
    }
    fm_tensor *t = new_tensor(g, FM_T_WEIGHT, name, dt, ndim, ne);
    if (!t) return NULL;
    t->data = (void *)data;
    t->scale = scale;
    return t;
}

fm_tensor *fm_state(fm_graph *g, const char *name, fm_dtype dt, int ndim, const int64_t *ne, void *data) {
    if (g->status != FM_OK) return NULL;
    if (!data) return gerr(g, FM_EINVAL, "state '%s': no data", name);
    fm_tensor *t = new_tensor(g, FM_T_STATE, name, dt, ndim, ne);
    if (t) t->data = data;
    return t;
}

/* Records a node whose first output has shape (dt, ndim, ne). */
static fm_tensor *new_node(fm_graph *g, fm_op op, fm_tensor *const *src, int n_src, const void *params,
                           size_t params_size, fm_dtype dt, int ndim, const int64_t *ne) {
    if (g->status != FM_OK) return NULL;
    fm_node *nn = fm_realloc_array(g->ctx, g->nodes, &g->cap_nodes, (size_t)g->n_nodes + 1, sizeof *nn);
    if (!nn) return gerr(g, FM_ENOMEM, "graph: out of memory adding %s", fm_op_name(op));
    g->nodes = nn;
    char name[FM_NAME_MAX];
    snprintf(name, sizeof name, "%s.%d", fm_op_name(op), g->n_nodes);
    fm_tensor *out = new_tensor(g, FM_T_NODE, name, dt, ndim, ne);
    if (!out) return NULL;
    int32_t *ids = malloc((size_t)n_src * sizeof *ids);
    if (!ids) return gerr(g, FM_ENOMEM, "graph: out of memory adding %s", fm_op_name(op));
    for (int i = 0; i < n_src; i++) ids[i] = src[i] ? src[i]->id : -1;
    fm_node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->n_src = n_src;
    n->src = ids;
    n->n_dst = 1;
    n->dst[0] = out->id;
    n->dst[1] = -1;
    if (params) memcpy(&n->params, params, params_size);
    out->node = g->n_nodes++;
    return out;
}

static bool belongs(fm_graph *g, const fm_tensor *t) { return t && t->g == g && g->t[t->id] == t; }

/* NULL inputs propagate an earlier error; a foreign tensor is misuse reported as EINVAL. */
static bool check_srcs(fm_graph *g, const char *op, fm_tensor *const *src, int n) {
    if (g->status != FM_OK) return false;
    for (int i = 0; i < n; i++) {
        if (!src[i]) {
            gerr(g, FM_EINVAL, "%s: input %d is NULL", op, i);
            return false;
        }
        if (!belongs(g, src[i])) {
            gerr(g, FM_EINVAL, "%s: input %d ('%s') belongs to another graph", op, i, src[i]->name);
            return false;
        }
    }
    return true;
}

static bool is_float(fm_dtype t) { return t == FM_F32 || t == FM_BF16 || t == FM_F16 || t == FM_F8_E4M3; }
static bool is_mat(const fm_tensor *t, fm_dtype dt) { return t->ndim == 2 && t->dtype == dt; }
static bool is_vec(const fm_tensor *t, fm_dtype dt, int64_t n) { return t->ndim == 1 && t->dtype == dt && t->ne[0] == n; }
/* The latent KV cache (mla_cache's state, mla_attn's source): f32, or bf16 as DeepSeek serves it. */
static bool is_cache_dtype(fm_dtype t) { return t == FM_F32 || t == FM_BF16; }

fm_tensor *fm_embed(fm_graph *g, fm_tensor *table, fm_tensor *ids) {
    fm_tensor *s[] = {table, ids};
    if (!check_srcs(g, "embed", s, 2)) return NULL;
    if (table->ndim != 2 || !is_float(table->dtype) || table->dtype == FM_F8_E4M3 || ids->ndim != 1 ||
        ids->dtype != FM_I32)
        return gerr(g, FM_EINVAL, "embed: expected table [V, H] f32/bf16/f16 and ids [T] i32, got %s and %s",
                    SHAPE(table), SHAPE(ids));
    return new_node(g, FM_OP_EMBED, s, 2, NULL, 0, FM_F32, 2, (int64_t[]){ids->ne[0], table->ne[1]});
}

fm_tensor *fm_matmul(fm_graph *g, fm_tensor *x, fm_tensor *w, int act_quant) {
    fm_tensor *s[] = {x, w};
    if (!check_srcs(g, "matmul", s, 2)) return NULL;
    if (!is_mat(x, FM_F32) || w->ndim != 2 || !is_float(w->dtype) || x->ne[1] != w->ne[1])
        return gerr(g, FM_EINVAL, "matmul: expected x [T, K] f32 and w [N, K], got %s and %s", SHAPE(x), SHAPE(w));
    if (act_quant && w->dtype == FM_F8_E4M3 && x->ne[1] % 128)
        return gerr(g, FM_EINVAL, "matmul: fp8 activation quantization needs K %% 128 == 0, got %s and %s",
                    SHAPE(x), SHAPE(w));
    fm_matmul_params p = {.act_quant = act_quant && w->dtype == FM_F8_E4M3};
    return new_node(g, FM_OP_MATMUL, s, 2, &p, sizeof p, FM_F32, 2, (int64_t[]){x->ne[0], w->ne[0]});
}

fm_tensor *fm_rmsnorm(fm_graph *g, fm_tensor *x, fm_tensor *w, float eps) {
    fm_tensor *s[] = {x, w};
    if (!check_srcs(g, "rmsnorm", s, 2)) return NULL;
    if (!is_mat(x, FM_F32) || w->ndim != 1 || !is_float(w->dtype) || w->dtype == FM_F8_E4M3 || w->ne[0] != x->ne[1])
        return gerr(g, FM_EINVAL, "rmsnorm: expected x [T, H] f32 and w [H], got %s and %s", SHAPE(x), SHAPE(w));
    if (!(eps > 0)) return gerr(g, FM_EINVAL, "rmsnorm: eps %g, expected > 0", (double)eps);
    fm_rmsnorm_params p = {.eps = eps};
    return new_node(g, FM_OP_RMSNORM, s, 2, &p, sizeof p, FM_F32, 2, x->ne);
}

static bool rope_ok(fm_graph *g, const char *op, const fm_rope_params *p, int64_t row) {
    if (p->head_dim <= 0 || row % p->head_dim || p->rope_off < 0 || p->rope_dim <= 0 || p->rope_dim % 2 ||
        p->rope_off + p->rope_dim > p->head_dim || !(p->theta > 1)) {
        gerr(g, FM_EINVAL, "%s: rope params head_dim %d, rope_off %d, rope_dim %d, theta %g do not fit rows of %lld",
             op, p->head_dim, p->rope_off, p->rope_dim, (double)p->theta, (long long)row);
        return false;
    }
    if (p->yarn_factor > 1 && (p->yarn_orig_max <= 0 || !(p->yarn_beta_fast > 0) || !(p->yarn_beta_slow > 0))) {
        gerr(g, FM_EINVAL, "%s: yarn factor %g needs original_max_position_embeddings and betas > 0", op,
             (double)p->yarn_factor);
        return false;
    }
    return true;
}

fm_tensor *fm_rope(fm_graph *g, fm_tensor *x, fm_tensor *pos, const fm_rope_params *p) {
    fm_tensor *s[] = {x, pos};
    if (!check_srcs(g, "rope", s, 2)) return NULL;
    if (!is_mat(x, FM_F32) || !is_vec(pos, FM_I32, x->ne[0]))
        return gerr(g, FM_EINVAL, "rope: expected x [T, C] f32 and pos [T] i32, got %s and %s", SHAPE(x), SHAPE(pos));
    if (!rope_ok(g, "rope", p, x->ne[1])) return NULL;
    return new_node(g, FM_OP_ROPE, s, 2, p, sizeof *p, FM_F32, 2, x->ne);
}

static fm_tensor *binary(fm_graph *g, fm_op op, fm_tensor *a, fm_tensor *b) {
    fm_tensor *s[] = {a, b};
    if (!check_srcs(g, fm_op_name(op), s, 2)) return NULL;
    if (a->dtype != FM_F32 || b->dtype != FM_F32 || a->ndim != b->ndim ||
        memcmp(a->ne, b->ne, (size_t)a->ndim * sizeof *a->ne))
        return gerr(g, FM_EINVAL, "%s: expected two f32 tensors of one shape, got %s and %s", fm_op_name(op),
                    SHAPE(a), SHAPE(b));
    return new_node(g, op, s, 2, NULL, 0, FM_F32, a->ndim, a->ne);
}

fm_tensor *fm_add(fm_graph *g, fm_tensor *a, fm_tensor *b) { return binary(g, FM_OP_ADD, a, b); }
fm_tensor *fm_swiglu(fm_graph *g, fm_tensor *gate, fm_tensor *up) { return binary(g, FM_OP_SWIGLU, gate, up); }

fm_status fm_moe_route(fm_graph *g, fm_tensor *x, fm_tensor *gate_w, fm_tensor *bias, const fm_moe_route_params *p,
                       fm_tensor **ids, fm_tensor **weights) {
    *ids = *weights = NULL;
    fm_tensor *s[] = {x, gate_w, bias};
    int n = bias ? 3 : 2;
    if (!check_srcs(g, "moe_route", s, n)) return g->status;
    int64_t E = p->n_experts;
    if (!is_mat(x, FM_F32) || gate_w->ndim != 2 || gate_w->ne[0] != E || gate_w->ne[1] != x->ne[1] ||
        !is_float(gate_w->dtype) || gate_w->dtype == FM_F8_E4M3 || (bias && !is_vec(bias, FM_F32, E))) {
        gerr(g, FM_EINVAL, "moe_route: expected x [T, H] f32, gate [%lld, H], bias [%lld] f32; got %s, %s, %s",
             (long long)E, (long long)E, SHAPE(x), SHAPE(gate_w), bias ? SHAPE(bias) : "no bias");
        return g->status;
    }
    if (p->n_group < 1 || E % p->n_group || p->topk_group < 1 || p->topk_group > p->n_group || p->top_k < 1 ||
        p->top_k > p->topk_group * (E / p->n_group) || p->scoring < 0 || p->scoring > 1 || p->method < 0 ||
        p->method > 2 || (p->method == FM_TOPK_NOAUX_TC && !bias) || (p->method == FM_TOPK_NOAUX_TC && E / p->n_group < 2)) {
        gerr(g, FM_EINVAL,
             "moe_route: inconsistent params: %lld experts, %d groups, topk_group %d, top_k %d, scoring %d, "
             "method %d, bias %s",
             (long long)E, p->n_group, p->topk_group, p->top_k, p->scoring, p->method, bias ? "yes" : "no");
        return g->status;
    }
    int64_t ne[2] = {x->ne[0], p->top_k};
    fm_tensor *id = new_node(g, FM_OP_MOE_ROUTE, s, n, p, sizeof *p, FM_I32, 2, ne);
    if (!id) return g->status;
    fm_tensor *w = new_tensor(g, FM_T_NODE, "", FM_F32, 2, ne);
    if (!w) return g->status;
    snprintf(w->name, sizeof w->name, "%s.weights", id->name);
    w->node = id->node;
    g->nodes[id->node].dst[1] = w->id;
    g->nodes[id->node].n_dst = 2;
    *ids = id;
    *weights = w;
    return FM_OK;
}

fm_tensor *fm_moe_experts(fm_graph *g, fm_tensor *x, fm_tensor *ids, fm_tensor *weights, int n_experts,
                          fm_tensor *const *gate, fm_tensor *const *up, fm_tensor *const *down, int act_quant) {
    if (g->status != FM_OK) return NULL;
    if (n_experts < 1) return gerr(g, FM_EINVAL, "moe_experts: %d experts, expected >= 1", n_experts);
    int n = 3 + 3 * n_experts;
    fm_tensor **s = malloc((size_t)n * sizeof *s);
    if (!s) return gerr(g, FM_ENOMEM, "moe_experts: out of memory");
    s[0] = x, s[1] = ids, s[2] = weights;
    for (int e = 0; e < n_experts; e++) s[3 + 3 * e] = gate[e], s[4 + 3 * e] = up[e], s[5 + 3 * e] = down[e];
    fm_tensor *out = NULL;
    if (!check_srcs(g, "moe_experts", s, n)) goto done;
    if (!is_mat(x, FM_F32) || !is_mat(ids, FM_I32) || !is_mat(weights, FM_F32) || ids->ne[0] != x->ne[0] ||
        weights->ne[0] != x->ne[0] || weights->ne[1] != ids->ne[1]) {
        gerr(g, FM_EINVAL, "moe_experts: expected x [T, H] f32, ids [T, k] i32, weights [T, k] f32; got %s, %s, %s",
             SHAPE(x), SHAPE(ids), SHAPE(weights));
        goto done;
    }
    int64_t H = x->ne[1], I = gate[0]->ne[0];
    for (int e = 0; e < n_experts; e++) {
        const fm_tensor *gt = gate[e], *u = up[e], *d = down[e];
        bool ok = gt->ndim == 2 && u->ndim == 2 && d->ndim == 2 && gt->ne[0] == I && gt->ne[1] == H &&
                  u->ne[0] == I && u->ne[1] == H && d->ne[0] == H && d->ne[1] == I && is_float(gt->dtype) &&
                  is_float(u->dtype) && is_float(d->dtype);
        if (!ok) {
            gerr(g, FM_EINVAL, "moe_experts: expert %d: expected gate/up [%lld, %lld] and down [%lld, %lld], got %s, %s, %s",
                 e, (long long)I, (long long)H, (long long)H, (long long)I, SHAPE(gt), SHAPE(u), SHAPE(d));
            goto done;
        }
    }
    int aq = act_quant && gate[0]->dtype == FM_F8_E4M3;
    if (aq && (H % 128 || I % 128)) {
        gerr(g, FM_EINVAL, "moe_experts: fp8 activation quantization needs H and I multiples of 128, got %lld and %lld",
             (long long)H, (long long)I);
        goto done;
    }
    fm_moe_experts_params p = {.n_experts = n_experts, .act_quant = aq};
    out = new_node(g, FM_OP_MOE_EXPERTS, s, n, &p, sizeof p, FM_F32, 2, x->ne);
done:
    free(s);
    return out;
}

static const fm_tensor *storage(const fm_tensor *t) { return t->alias >= 0 ? t->g->t[t->alias] : t; }

fm_tensor *fm_mla_cache(fm_graph *g, fm_tensor *cache, fm_tensor *kv, fm_tensor *norm_w, fm_tensor *pos,
                        const fm_mla_cache_params *p) {
    fm_tensor *s[] = {cache, kv, norm_w, pos};
    if (!check_srcs(g, "mla_cache", s, 4)) return NULL;
    const fm_tensor *st = storage(cache);
    int64_t C = (int64_t)p->kv_lora + p->rope.rope_dim;
    if (st->kind != FM_T_STATE)
        return gerr(g, FM_EINVAL, "mla_cache: cache %s must be a state tensor (fm_state)", SHAPE(cache));
    if (!is_cache_dtype(cache->dtype))
        return gerr(g, FM_EINVAL, "mla_cache: cache %s must be f32 or bf16", SHAPE(cache));
    if (cache->ndim != 2 || cache->ne[1] != C || !is_mat(kv, FM_F32) || kv->ne[1] != C ||
        norm_w->ndim != 1 || norm_w->ne[0] != p->kv_lora || !is_float(norm_w->dtype) ||
        norm_w->dtype == FM_F8_E4M3 || !is_vec(pos, FM_I32, kv->ne[0]) || p->kv_lora <= 0)
        return gerr(g, FM_EINVAL,
                    "mla_cache: expected cache [L, %lld] f32/bf16, kv [T, %lld] f32, norm [%d], pos [T] i32; got %s, %s, %s, %s",
                    (long long)C, (long long)C, p->kv_lora, SHAPE(cache), SHAPE(kv), SHAPE(norm_w), SHAPE(pos));
    if (!rope_ok(g, "mla_cache", &p->rope, p->rope.rope_dim) || p->rope.rope_off != 0 ||
        p->rope.head_dim != p->rope.rope_dim)
        return gerr(g, FM_EINVAL, "mla_cache: rope must cover the whole k_pe slice (head_dim == rope_dim, rope_off 0)");
    if (!(p->eps > 0)) return gerr(g, FM_EINVAL, "mla_cache: eps %g, expected > 0", (double)p->eps);
    fm_tensor *out = new_node(g, FM_OP_MLA_CACHE, s, 4, p, sizeof *p, cache->dtype, 2, cache->ne);
    if (out) out->alias = st->id;
    return out;
}

fm_tensor *fm_mla_attn(fm_graph *g, fm_tensor *q, fm_tensor *cache, fm_tensor *pos, fm_tensor *kv_b,
                       const fm_mla_attn_params *p) {
    fm_tensor *s[] = {q, cache, pos, kv_b};
    if (!check_srcs(g, "mla_attn", s, 4)) return NULL;
    if (p->n_heads < 1 || p->nope < 1 || p->rope < 2 || p->v < 1 || p->kv_lora < 1 || !(p->scale > 0) ||
        (p->mode != FM_MLA_ABSORB && p->mode != FM_MLA_NAIVE))
        return gerr(g, FM_EINVAL, "mla_attn: bad params: heads %d, nope %d, rope %d, v %d, kv_lora %d, scale %g, mode %d",
                    p->n_heads, p->nope, p->rope, p->v, p->kv_lora, (double)p->scale, p->mode);
    int64_t H = p->n_heads;
    if (!is_cache_dtype(cache->dtype))
        return gerr(g, FM_EINVAL, "mla_attn: cache %s must be f32 or bf16", SHAPE(cache));
    if (!is_mat(q, FM_F32) || q->ne[1] != H * (p->nope + p->rope) || cache->ndim != 2 ||
        cache->ne[1] != p->kv_lora + p->rope || !is_vec(pos, FM_I32, q->ne[0]) || kv_b->ndim != 2 ||
        !is_float(kv_b->dtype) || kv_b->ne[0] != H * (p->nope + p->v) || kv_b->ne[1] != p->kv_lora)
        return gerr(g, FM_EINVAL,
                    "mla_attn: expected q [T, %lld] f32, cache [L, %d] f32/bf16, pos [T] i32, kv_b [%lld, %d]; got %s, %s, %s, %s",
                    (long long)(H * (p->nope + p->rope)), p->kv_lora + p->rope, (long long)(H * (p->nope + p->v)),
                    p->kv_lora, SHAPE(q), SHAPE(cache), SHAPE(pos), SHAPE(kv_b));
    fm_mla_attn_params pp = *p;
    pp.act_quant = p->act_quant && p->mode == FM_MLA_NAIVE && kv_b->dtype == FM_F8_E4M3;
    if (pp.act_quant && p->kv_lora % 128)
        return gerr(g, FM_EINVAL, "mla_attn: fp8 activation quantization needs kv_lora %% 128 == 0, got %d", p->kv_lora);
    return new_node(g, FM_OP_MLA_ATTN, s, 4, &pp, sizeof pp, FM_F32, 2, (int64_t[]){q->ne[0], H * p->v});
}

void fm_graph_output(fm_graph *g, fm_tensor *t) {
    if (t && belongs(g, t)) t->output = true;
}

const char *fm_tensor_name(const fm_tensor *t) { return t->name; }
fm_dtype fm_tensor_dtype(const fm_tensor *t) { return t->dtype; }
int fm_tensor_ndim(const fm_tensor *t) { return t->ndim; }
int64_t fm_tensor_ne(const fm_tensor *t, int dim) { return dim >= 0 && dim < t->ndim ? t->ne[dim] : 1; }
int64_t fm_tensor_nelem(const fm_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}
size_t fm_tensor_bytes(const fm_tensor *t) { return (size_t)fm_tensor_nelem(t) * fm_dtype_size(t->dtype); }
void fm_tensor_set_name(fm_tensor *t, const char *name) {
    if (t) snprintf(t->name, sizeof t->name, "%s", name);
}
