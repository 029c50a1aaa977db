/* cpu_ops.c - op dispatch of the cpu backend, and the smaller ops: embed,
 * rmsnorm, rope, add, swiglu, the fused MoE router and the latent KV-cache
 * append. Rows are spread over the pool in chunks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

static const char *const op_names[] = {
#define X(id, name, nsrc, ndst, params) name,
#include "fathom/ops.def"
#undef X
};

const char *fm_op_name_cpu(int op) {
    return op >= 0 && op < (int)(sizeof op_names / sizeof *op_names) ? op_names[op] : "?";
}

static int is_wfloat(int dt) { return dt == FM_F32 || dt == FM_BF16 || dt == FM_F16; }
static int is_mat(const fm_pl_tensor *t, int dt) { return t && t->dtype == dt && t->ndim == 2; }
static int is_vec(const fm_pl_tensor *t, int dt, int64_t n) { return t && t->dtype == dt && t->ndim == 1 && t->ne[0] == n; }
static int same_shape(const fm_pl_tensor *a, const fm_pl_tensor *b) {
    if (!a || !b || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->ne[i] != b->ne[i]) return 0;
    return 1;
}
static cpu_wmat vec_w(const fm_pl_tensor *t) { /* a 1-D weight as a [1, n] matrix */
    cpu_wmat w = {.dtype = t->dtype, .data = t->data, .N = 1, .K = t->ne[t->ndim - 1], .scale = NULL, .scale_ld = 1};
    return w;
}

/* ---- row-parallel helper ---- */

typedef void (*row_fn)(const void *ctx, int64_t r0, int64_t r1);
typedef struct rows_job {
    row_fn fn;
    const void *ctx;
    int64_t n, chunk;
} rows_job;
static void rows_item(void *arg, int64_t i, int tid) {
    (void)tid;
    const rows_job *j = arg;
    int64_t r0 = i * j->chunk, r1 = r0 + j->chunk < j->n ? r0 + j->chunk : j->n;
    j->fn(j->ctx, r0, r1);
}
/* fn over rows [0, n) in chunks of about `work` elements each */
static void par_rows(cpu_state *s, int64_t n, int64_t row_elems, row_fn fn, const void *ctx) {
    int64_t chunk = (1 << 15) / (row_elems > 0 ? row_elems : 1);
    if (chunk < 1) chunk = 1;
    if (chunk > (n + 1) / 2 && n > 1) chunk = (n + 1) / 2;
    rows_job j = {fn, ctx, n, chunk};
    cpu_pool_for(n * row_elems < 4096 ? NULL : s->pool, (n + chunk - 1) / chunk, rows_item, &j);
}

/* ---- add, swiglu (flat) ---- */

typedef struct ew_ctx { const cpu_kern *k; const float *a, *b; float *y; int op; } ew_ctx;
static void ew_rows(const void *c, int64_t r0, int64_t r1) {
    const ew_ctx *e = c;
    int64_t o = r0 * 1024, n = (r1 - r0) * 1024;
    if (e->op == FM_OP_ADD) e->k->add_row(e->a + o, e->b + o, e->y + o, n);
    else e->k->swiglu_row(e->a + o, e->b + o, e->y + o, n);
}
static fm_status op_elementwise(cpu_state *s, const fm_pl_node *nd) {
    int64_t n = fm_pl_nelem(nd->src[0]), full = n / 1024 * 1024;
    ew_ctx e = {s->k, nd->src[0]->data, nd->src[1]->data, nd->dst[0]->data, nd->op};
    par_rows(s, n / 1024, 1024, ew_rows, &e);
    if (full < n) {
        if (nd->op == FM_OP_ADD) s->k->add_row(e.a + full, e.b + full, e.y + full, n - full);
        else s->k->swiglu_row(e.a + full, e.b + full, e.y + full, n - full);
    }
    return FM_OK;
}

/* ---- embed ---- */

typedef struct embed_ctx { cpu_wmat w; const int32_t *ids; float *y; } embed_ctx;
static void embed_rows(const void *c, int64_t r0, int64_t r1) {
    const embed_ctx *e = c;
    for (int64_t t = r0; t < r1; t++)
        for (int64_t k = 0; k < e->w.K; k += 4096)
            cpu_w_row(&e->w, e->ids[t], k, (int)(e->w.K - k < 4096 ? e->w.K - k : 4096), e->y + t * e->w.K + k);
}
static fm_status op_embed(cpu_state *s, const fm_pl_node *nd) {
    const fm_pl_tensor *tab = nd->src[0], *idt = nd->src[1];
    embed_ctx e = {.w = {.dtype = tab->dtype, .data = tab->data, .N = tab->ne[0], .K = tab->ne[1]},
                   .ids = idt->data, .y = nd->dst[0]->data};
    int64_t T = fm_pl_nelem(idt);
    for (int64_t t = 0; t < T; t++)
        if (e.ids[t] < 0 || e.ids[t] >= e.w.N)
            return cpu_fail(s, FM_EINVAL, "embed '%s': token id %d at row %lld outside [0, %lld)", nd->name, e.ids[t],
                            (long long)t, (long long)e.w.N);
    par_rows(s, T, e.w.K, embed_rows, &e);
    return FM_OK;
}

/* ---- rmsnorm ---- */

typedef struct norm_ctx { const cpu_kern *k; cpu_wmat w; const float *x; float *y; float eps; int64_t H; } norm_ctx;
static void norm_rows(const void *c, int64_t r0, int64_t r1) {
    const norm_ctx *n = c;
    for (int64_t t = r0; t < r1; t++) n->k->rmsnorm_row(n->x + t * n->H, &n->w, n->eps, n->y + t * n->H, n->H);
}
static fm_status op_rmsnorm(cpu_state *s, const fm_pl_node *nd) {
    const fm_rmsnorm_params *p = nd->params;
    norm_ctx n = {s->k, vec_w(nd->src[1]), nd->src[0]->data, nd->dst[0]->data, p->eps, nd->src[0]->ne[1]};
    par_rows(s, nd->src[0]->ne[0], n.H, norm_rows, &n);
    return FM_OK;
}

/* ---- rope ---- */

/* inv_freq as DeepSeek's model.py computes it (float32 per frequency, the YaRN
 * correction range in double), operation for operation like the reference. */
void cpu_rope_inv_freq(const fm_rope_params *p, float *inv_freq) {
    int32_t dim = p->rope_dim, half = dim / 2;
    for (int32_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)dim;
        inv_freq[i] = 1.0f / powf(p->theta, e);
    }
    if (!(p->yarn_factor > 1.0f)) return;
    const double two_pi = 6.283185307179586;
    double ln_theta2 = 2.0 * log((double)p->theta);
    double d_fast = (double)dim * log((double)p->yarn_orig_max / ((double)p->yarn_beta_fast * two_pi)) / ln_theta2;
    double d_slow = (double)dim * log((double)p->yarn_orig_max / ((double)p->yarn_beta_slow * two_pi)) / ln_theta2;
    double low = floor(d_fast), high = ceil(d_slow);
    if (low < 0.0) low = 0.0;
    if (high > (double)(dim - 1)) high = (double)(dim - 1);
    if (low == high) high += 0.001;
    float span = (float)(high - low), flow = (float)low, factor = p->yarn_factor;
    for (int32_t i = 0; i < half; i++) {
        float ramp = ((float)i - flow) / span;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float smooth = 1.0f - ramp;
        float f = inv_freq[i];
        inv_freq[i] = f / factor * (1.0f - smooth) + f * smooth;
    }
}

/* Rotates the rope slice of every head of one row in place. */
void cpu_rope_row(float *x, int64_t C, const fm_rope_params *p, const float *inv, int32_t pos) {
    float cs[512], sn[512]; /* rope_dim / 2 <= 512 (checked in supports) */
    for (int32_t i = 0; i < p->rope_dim / 2; i++) {
        float ang = (float)pos * inv[i];
        cs[i] = cosf(ang), sn[i] = sinf(ang);
    }
    for (int64_t h = 0; h + p->head_dim <= C; h += p->head_dim) {
        float *r = x + h + p->rope_off;
        for (int32_t i = 0; i < p->rope_dim / 2; i++) {
            float a = r[2 * i], b = r[2 * i + 1];
            r[2 * i] = a * cs[i] - b * sn[i];
            r[2 * i + 1] = a * sn[i] + b * cs[i];
        }
    }
}

typedef struct rope_ctx { const fm_rope_params *p; const float *inv, *x; float *y; const int32_t *pos; int64_t C; } rope_ctx;
static void rope_rows(const void *c, int64_t r0, int64_t r1) {
    const rope_ctx *r = c;
    for (int64_t t = r0; t < r1; t++) {
        if (r->y != r->x) memcpy(r->y + t * r->C, r->x + t * r->C, (size_t)r->C * 4);
        cpu_rope_row(r->y + t * r->C, r->C, r->p, r->inv, r->pos[t]);
    }
}
static fm_status op_rope(cpu_state *s, const fm_pl_node *nd) {
    const fm_rope_params *p = nd->params;
    float inv[512];
    cpu_rope_inv_freq(p, inv);
    rope_ctx r = {p, inv, nd->src[0]->data, nd->dst[0]->data, nd->src[1]->data, nd->src[0]->ne[1]};
    par_rows(s, nd->src[0]->ne[0], r.C, rope_rows, &r);
    return FM_OK;
}

static int rope_ok(const fm_rope_params *p, int64_t row) {
    return p->head_dim > 0 && row % p->head_dim == 0 && p->rope_off >= 0 && p->rope_dim > 0 && p->rope_dim % 2 == 0 &&
           p->rope_dim <= 1024 && p->rope_off + p->rope_dim <= p->head_dim && p->theta > 1;
}

/* ---- mla_cache ---- */

typedef struct cache_ctx {
    const cpu_kern *k;
    cpu_wmat w;
    const fm_mla_cache_params *p;
    const float *inv, *kv;
    void *out;
    int bf16;                 /* the cache is bf16: rows computed in f32, stored rounded */
    const int32_t *pos;
    int64_t D;
} cache_ctx;
#define CACHE_BF16_MAX_ROW 8192
static void cache_rows(const void *c, int64_t r0, int64_t r1) {
    const cache_ctx *m = c;
    int64_t C = m->p->kv_lora;
    float tmp[CACHE_BF16_MAX_ROW];
    for (int64_t t = r0; t < r1; t++) {
        float *row = m->bf16 ? tmp : (float *)m->out + (int64_t)m->pos[t] * m->D;
        const float *src = m->kv + t * m->D;
        m->k->rmsnorm_row(src, &m->w, m->p->eps, row, C);
        memcpy(row + C, src + C, (size_t)(m->D - C) * 4);
        cpu_rope_row(row + C, m->D - C, &m->p->rope, m->inv, m->pos[t]);
        if (m->bf16) {
            uint16_t *o = (uint16_t *)m->out + (int64_t)m->pos[t] * m->D;
            for (int64_t i = 0; i < m->D; i++) o[i] = cpu_bf16_from_f32(row[i]);
        }
    }
}
static fm_status op_mla_cache(cpu_state *s, const fm_pl_node *nd) {
    const fm_mla_cache_params *p = nd->params;
    const fm_pl_tensor *cache = nd->src[0], *kv = nd->src[1];
    int64_t L = cache->ne[0], D = cache->ne[1], T = kv->ne[0];
    const int32_t *pos = nd->src[3]->data;
    for (int64_t t = 0; t < T; t++)
        if (pos[t] < 0 || pos[t] >= L)
            return cpu_fail(s, FM_EINVAL, "mla_cache '%s': position %d at row %lld outside the cache [0, %lld)", nd->name,
                            pos[t], (long long)t, (long long)L);
    float inv[512];
    cpu_rope_inv_freq(&p->rope, inv);
    void *out = nd->dst[0]->data;
    int bf16 = cache->dtype == FM_BF16;
    if (out != cache->data) memcpy(out, cache->data, (size_t)(L * D) * (bf16 ? 2 : 4));
    cache_ctx m = {s->k, vec_w(nd->src[2]), p, inv, kv->data, out, bf16, pos, D};
    /* rows with the same position: the last one wins, as in the reference's order */
    if (T > 1) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t u = t + 1; u < T; u++)
                if (pos[u] == pos[t]) {
                    cache_rows(&m, 0, T);
                    return FM_OK;
                }
    }
    par_rows(s, T, D, cache_rows, &m);
    return FM_OK;
}

/* ---- dispatch ---- */

uint64_t cpu_ops_mask(void) {
    return 1ull << FM_OP_MATMUL | 1ull << FM_OP_EMBED | 1ull << FM_OP_RMSNORM | 1ull << FM_OP_ROPE | 1ull << FM_OP_ADD |
           1ull << FM_OP_SWIGLU | 1ull << FM_OP_MOE_ROUTE | 1ull << FM_OP_MOE_EXPERTS | 1ull << FM_OP_MLA_CACHE |
           1ull << FM_OP_MLA_ATTN;
}

int cpu_ops_supports(cpu_state *s, const fm_pl_node *nd) {
    (void)s;
    if (!nd || nd->n_dst < 1 || !nd->dst[0]) return 0;
    for (int i = 0; i < nd->n_src; i++)
        if (!nd->src[i] && !(nd->op == FM_OP_MOE_ROUTE && i == 2)) return 0;
    const fm_pl_tensor *a = nd->n_src > 0 ? nd->src[0] : NULL, *b = nd->n_src > 1 ? nd->src[1] : NULL, *y = nd->dst[0];
    switch (nd->op) {
    case FM_OP_MATMUL: return cpu_matmul_supports(nd);
    case FM_OP_ADD:
    case FM_OP_SWIGLU:
        return nd->n_src == 2 && a->dtype == FM_F32 && b->dtype == FM_F32 && y->dtype == FM_F32 && same_shape(a, b) &&
               fm_pl_nelem(y) == fm_pl_nelem(a);
    case FM_OP_EMBED:
        return nd->n_src == 2 && a->ndim == 2 && is_wfloat(a->dtype) && b->ndim == 1 && b->dtype == FM_I32 &&
               is_mat(y, FM_F32) && y->ne[0] == b->ne[0] && y->ne[1] == a->ne[1];
    case FM_OP_RMSNORM:
        return nd->n_src == 2 && nd->params && is_mat(a, FM_F32) && b->ndim == 1 && is_wfloat(b->dtype) &&
               b->ne[0] == a->ne[1] && same_shape(a, y) && y->dtype == FM_F32;
    case FM_OP_ROPE:
        return nd->n_src == 2 && nd->params && is_mat(a, FM_F32) && is_vec(b, FM_I32, a->ne[0]) && same_shape(a, y) &&
               y->dtype == FM_F32 && rope_ok(nd->params, a->ne[1]);
    case FM_OP_MLA_CACHE: {
        const fm_mla_cache_params *p = nd->params;
        if (nd->n_src != 4 || !p || !(is_mat(a, FM_F32) || is_mat(a, FM_BF16)) || !is_mat(b, FM_F32)) return 0;
        int64_t D = (int64_t)p->kv_lora + p->rope.rope_dim;
        if (a->dtype == FM_BF16 && D > CACHE_BF16_MAX_ROW) return 0;
        return a->ne[1] == D && b->ne[1] == D && p->kv_lora > 0 && is_vec(nd->src[2], nd->src[2]->dtype, p->kv_lora) &&
               is_wfloat(nd->src[2]->dtype) && is_vec(nd->src[3], FM_I32, b->ne[0]) && same_shape(a, y) &&
               y->dtype == a->dtype && rope_ok(&p->rope, p->rope.rope_dim) && p->rope.rope_off == 0 &&
               p->rope.head_dim == p->rope.rope_dim && p->eps > 0;
    }
    case FM_OP_MOE_ROUTE: return cpu_route_supports(nd);
    case FM_OP_MOE_EXPERTS: return cpu_moe_supports(nd);
    case FM_OP_MLA_ATTN: return cpu_mla_supports(nd);
    default: return 0;
    }
}

fm_status cpu_ops_compute(cpu_state *s, const fm_pl_node *nd) {
    switch (nd->op) {
    case FM_OP_MATMUL:      return cpu_matmul_node(s, nd);
    case FM_OP_ADD:
    case FM_OP_SWIGLU:      return op_elementwise(s, nd);
    case FM_OP_EMBED:       return op_embed(s, nd);
    case FM_OP_RMSNORM:     return op_rmsnorm(s, nd);
    case FM_OP_ROPE:        return op_rope(s, nd);
    case FM_OP_MLA_CACHE:   return op_mla_cache(s, nd);
    case FM_OP_MOE_ROUTE:   return cpu_route_node(s, nd);
    case FM_OP_MOE_EXPERTS: return cpu_moe_node(s, nd);
    case FM_OP_MLA_ATTN:    return cpu_mla_node(s, nd);
    default:                return cpu_fail(s, FM_UNSUPPORTED, "cpu: op %s not implemented", fm_op_name_cpu(nd->op));
    }
}
