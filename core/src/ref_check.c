/* ref_check.c - what the reference kernels accept: source and destination
 * counts, dtypes, shapes and params of every op. fm_ref_supports answers with
 * it; fm_ref_compute runs it first so a malformed node is an error, never an
 * out-of-bounds access. */
#include <stdarg.h>
#include <stdio.h>

#include "ref.h"

static fm_status bad(const fm_pl_node *node, char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static fm_status bad(const fm_pl_node *node, char *err, size_t errsz, const char *fmt, ...) {
    if (err && errsz) {
        int n = snprintf(err, errsz, "%s '%s': ", fm_op_name((fm_op)node->op), node->name ? node->name : "?");
        if (n >= 0 && (size_t)n < errsz) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errsz - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return FM_EINVAL;
}

#define REQUIRE(cond, ...)                                       \
    do {                                                         \
        if (!(cond)) return bad(node, err, errsz, __VA_ARGS__); \
    } while (0)

static int64_t ceil128(int64_t n) { return (n + 127) / 128; }

static int is_float(int32_t dt) { return dt == FM_F32 || dt == FM_BF16 || dt == FM_F16 || dt == FM_F8_E4M3; }
/* The latent KV cache: f32, or bf16 (rows stored rounded to nearest even, read widened). */
static int is_cache(int32_t dt) { return dt == FM_F32 || dt == FM_BF16; }

/* A weight the kernels can decode row by row: a float dtype, and for F8_E4M3 an
 * F32 scale grid of one entry per 128x128 block. */
static fm_status check_weight(const fm_pl_node *node, const fm_pl_tensor *w, const char *role, int need_data,
                              char *err, size_t errsz) {
    REQUIRE(is_float(w->dtype), "%s '%s' has dtype %s, expected f32, bf16, f16 or f8_e4m3", role, w->name,
            fm_dtype_name((fm_dtype)w->dtype));
    if (w->dtype != FM_F8_E4M3) return FM_OK;
    const fm_pl_tensor *s = w->scale;
    REQUIRE(s, "%s '%s' is f8_e4m3 without block scales", role, w->name);
    REQUIRE(s->dtype == FM_F32, "scales of %s '%s' have dtype %s, expected f32", role, w->name,
            fm_dtype_name((fm_dtype)s->dtype));
    int64_t sr = ceil128(fm_pl_rows(w)), sc = ceil128(fm_pl_cols(w));
    REQUIRE(fm_pl_cols(s) == sc && fm_pl_nelem(s) == sr * sc, "scales of %s '%s' must be [%lld, %lld]", role,
            w->name, (long long)sr, (long long)sc);
    REQUIRE(!need_data || s->data, "scales of %s '%s' are not in host memory", role, w->name);
    return FM_OK;
}

#define CHECK_WEIGHT(w, role)                                                  \
    do {                                                                       \
        fm_status st_ = check_weight(node, (w), (role), need_data, err, errsz); \
        if (st_ != FM_OK) return st_;                                          \
    } while (0)

static fm_status check_rope(const fm_pl_node *node, const fm_rope_params *p, int64_t C, char *err, size_t errsz) {
    REQUIRE(p->head_dim > 0 && C % p->head_dim == 0, "row of %lld is not a whole number of heads of %d",
            (long long)C, p->head_dim);
    REQUIRE(p->rope_off >= 0 && p->rope_dim >= 0 && p->rope_dim % 2 == 0 && p->rope_off + p->rope_dim <= p->head_dim,
            "rope slice [%d, %d) must be even-sized and inside the head of %d", p->rope_off,
            p->rope_off + p->rope_dim, p->head_dim);
    REQUIRE(p->theta > 0.0f, "rope theta %g must be positive", (double)p->theta);
    REQUIRE(!(p->yarn_factor > 1.0f) || (p->yarn_orig_max > 0 && p->yarn_beta_fast > 0.0f && p->yarn_beta_slow > 0.0f),
            "yarn factor %g needs positive original length and betas", (double)p->yarn_factor);
    return FM_OK;
}

static fm_status check_op(const fm_pl_node *node, int need_data, char *err, size_t errsz) {
    const fm_pl_tensor *const *s = node->src;
    const fm_pl_tensor *d0 = node->dst[0];
    switch ((fm_op)node->op) {
    case FM_OP_EMBED: {
        CHECK_WEIGHT(s[0], "table");
        REQUIRE(s[0]->ndim == 2, "table '%s' must be [V, H]", s[0]->name);
        REQUIRE(s[1]->dtype == FM_I32, "ids '%s' must be i32", s[1]->name);
        REQUIRE(fm_pl_nelem(d0) == fm_pl_nelem(s[1]) * s[0]->ne[1], "output '%s' must be [%lld, %lld]", d0->name,
                (long long)fm_pl_nelem(s[1]), (long long)s[0]->ne[1]);
        return FM_OK;
    }
    case FM_OP_MATMUL: {
        REQUIRE(s[0]->dtype == FM_F32, "x '%s' must be f32", s[0]->name);
        CHECK_WEIGHT(s[1], "weight");
        REQUIRE(s[1]->ndim == 2 && s[1]->ne[1] == fm_pl_cols(s[0]), "weight '%s' must be [N, %lld]", s[1]->name,
                (long long)fm_pl_cols(s[0]));
        REQUIRE(fm_pl_nelem(d0) == fm_pl_rows(s[0]) * s[1]->ne[0], "output '%s' must be [%lld, %lld]", d0->name,
                (long long)fm_pl_rows(s[0]), (long long)s[1]->ne[0]);
        return FM_OK;
    }
    case FM_OP_RMSNORM:
        REQUIRE(s[0]->dtype == FM_F32, "x '%s' must be f32", s[0]->name);
        CHECK_WEIGHT(s[1], "weight");
        REQUIRE(fm_pl_nelem(s[1]) == fm_pl_cols(s[0]) && fm_pl_rows(s[1]) == 1, "weight '%s' must be [%lld]",
                s[1]->name, (long long)fm_pl_cols(s[0]));
        REQUIRE(fm_pl_nelem(d0) == fm_pl_nelem(s[0]), "output '%s' must match x", d0->name);
        return FM_OK;
    case FM_OP_ROPE:
        REQUIRE(s[0]->dtype == FM_F32, "x '%s' must be f32", s[0]->name);
        REQUIRE(s[1]->dtype == FM_I32 && fm_pl_nelem(s[1]) == fm_pl_rows(s[0]), "pos '%s' must be i32 [%lld]",
                s[1]->name, (long long)fm_pl_rows(s[0]));
        REQUIRE(fm_pl_nelem(d0) == fm_pl_nelem(s[0]), "output '%s' must match x", d0->name);
        return check_rope(node, node->params, fm_pl_cols(s[0]), err, errsz);
    case FM_OP_ADD:
    case FM_OP_SWIGLU:
        REQUIRE(s[0]->dtype == FM_F32 && s[1]->dtype == FM_F32, "sources must be f32");
        REQUIRE(fm_pl_nelem(s[0]) == fm_pl_nelem(s[1]) && fm_pl_nelem(d0) == fm_pl_nelem(s[0]),
                "sources and output must have the same size");
        return FM_OK;
    case FM_OP_MOE_ROUTE: {
        const fm_moe_route_params *p = node->params;
        int64_t E = p->n_experts, T = fm_pl_rows(s[0]);
        REQUIRE(s[0]->dtype == FM_F32, "x '%s' must be f32", s[0]->name);
        CHECK_WEIGHT(s[1], "gate");
        REQUIRE(E > 0 && s[1]->ndim == 2 && s[1]->ne[0] == E && s[1]->ne[1] == fm_pl_cols(s[0]),
                "gate '%s' must be [%lld, %lld]", s[1]->name, (long long)E, (long long)fm_pl_cols(s[0]));
        REQUIRE(node->n_src == 2 || (s[2]->dtype == FM_F32 && fm_pl_nelem(s[2]) == E), "bias '%s' must be f32 [%lld]",
                s[2]->name, (long long)E);
        REQUIRE(p->top_k >= 1 && p->top_k <= E, "top_k %d outside [1, %lld]", p->top_k, (long long)E);
        REQUIRE(p->n_group >= 1 && E % p->n_group == 0, "%lld experts do not form %d groups", (long long)E, p->n_group);
        REQUIRE(p->scoring == FM_SCORE_SOFTMAX || p->scoring == FM_SCORE_SIGMOID, "unknown scoring %d", p->scoring);
        REQUIRE(p->method >= FM_TOPK_GREEDY && p->method <= FM_TOPK_NOAUX_TC, "unknown method %d", p->method);
        if (p->n_group > 1 && p->method != FM_TOPK_GREEDY)
            REQUIRE(p->topk_group >= 1 && p->topk_group <= p->n_group &&
                        (int64_t)p->top_k <= p->topk_group * (E / p->n_group),
                    "top_k %d does not fit in %d kept groups of %lld", p->top_k, p->topk_group,
                    (long long)(E / p->n_group));
        REQUIRE(d0->dtype == FM_I32 && fm_pl_nelem(d0) == T * p->top_k, "ids '%s' must be i32 [%lld, %d]", d0->name,
                (long long)T, p->top_k);
        REQUIRE(node->dst[1]->dtype == FM_F32 && fm_pl_nelem(node->dst[1]) == T * p->top_k,
                "weights '%s' must be f32 [%lld, %d]", node->dst[1]->name, (long long)T, p->top_k);
        return FM_OK;
    }
    case FM_OP_MOE_EXPERTS: {
        const fm_moe_experts_params *p = node->params;
        int64_t H = fm_pl_cols(s[0]), T = fm_pl_rows(s[0]);
        REQUIRE(p->n_experts >= 1 && node->n_src == 3 + 3 * p->n_experts, "%d sources for %d experts, expected %d",
                node->n_src, p->n_experts, 3 + 3 * p->n_experts);
        REQUIRE(s[0]->dtype == FM_F32, "x '%s' must be f32", s[0]->name);
        REQUIRE(s[1]->dtype == FM_I32 && fm_pl_rows(s[1]) == T, "ids '%s' must be i32 [%lld, k]", s[1]->name,
                (long long)T);
        REQUIRE(s[2]->dtype == FM_F32 && fm_pl_nelem(s[2]) == fm_pl_nelem(s[1]), "weights '%s' must be f32 like ids",
                s[2]->name);
        for (int e = 0; e < p->n_experts; e++) {
            const fm_pl_tensor *g = s[3 + 3 * e], *u = s[4 + 3 * e], *dn = s[5 + 3 * e];
            CHECK_WEIGHT(g, "gate");
            CHECK_WEIGHT(u, "up");
            CHECK_WEIGHT(dn, "down");
            int64_t I = g->ne[0];
            REQUIRE(g->ndim == 2 && g->ne[1] == H && u->ndim == 2 && u->ne[0] == I && u->ne[1] == H,
                    "expert %d: gate '%s' and up '%s' must be [I, %lld]", e, g->name, u->name, (long long)H);
            REQUIRE(dn->ndim == 2 && dn->ne[0] == H && dn->ne[1] == I, "expert %d: down '%s' must be [%lld, %lld]", e,
                    dn->name, (long long)H, (long long)I);
        }
        REQUIRE(fm_pl_nelem(d0) == T * H, "output '%s' must be [%lld, %lld]", d0->name, (long long)T, (long long)H);
        return FM_OK;
    }
    case FM_OP_MLA_CACHE: {
        const fm_mla_cache_params *p = node->params;
        int64_t D = fm_pl_cols(s[0]);
        REQUIRE(is_cache(s[0]->dtype), "cache '%s' has dtype %s, expected f32 or bf16", s[0]->name,
                fm_dtype_name((fm_dtype)s[0]->dtype));
        REQUIRE(s[1]->dtype == FM_F32, "kv '%s' must be f32", s[1]->name);
        REQUIRE(p->kv_lora > 0 && p->kv_lora < D, "kv_lora %d must be inside the cache row of %lld", p->kv_lora,
                (long long)D);
        REQUIRE(fm_pl_cols(s[1]) == D, "kv '%s' rows of %lld, cache rows of %lld", s[1]->name,
                (long long)fm_pl_cols(s[1]), (long long)D);
        CHECK_WEIGHT(s[2], "norm weight");
        REQUIRE(fm_pl_nelem(s[2]) == p->kv_lora, "norm weight '%s' must be [%d]", s[2]->name, p->kv_lora);
        REQUIRE(s[3]->dtype == FM_I32 && fm_pl_nelem(s[3]) == fm_pl_rows(s[1]), "pos '%s' must be i32 [%lld]",
                s[3]->name, (long long)fm_pl_rows(s[1]));
        REQUIRE(d0->dtype == s[0]->dtype && fm_pl_nelem(d0) == fm_pl_nelem(s[0]), "output '%s' must be the cache",
                d0->name);
        return check_rope(node, &p->rope, D - p->kv_lora, err, errsz);
    }
    case FM_OP_MLA_ATTN: {
        const fm_mla_attn_params *p = node->params;
        int64_t T = fm_pl_rows(s[0]), H = p->n_heads;
        REQUIRE(H > 0 && p->nope >= 0 && p->rope >= 0 && p->v > 0 && p->kv_lora > 0,
                "bad head sizes (heads %d, nope %d, rope %d, v %d, kv_lora %d)", p->n_heads, p->nope, p->rope, p->v,
                p->kv_lora);
        REQUIRE(p->mode == FM_MLA_ABSORB || p->mode == FM_MLA_NAIVE, "unknown mode %d", p->mode);
        REQUIRE(s[0]->dtype == FM_F32 && fm_pl_cols(s[0]) == H * (p->nope + p->rope), "q '%s' must be f32 [T, %lld]",
                s[0]->name, (long long)(H * (p->nope + p->rope)));
        REQUIRE(is_cache(s[1]->dtype), "cache '%s' has dtype %s, expected f32 or bf16", s[1]->name,
                fm_dtype_name((fm_dtype)s[1]->dtype));
        REQUIRE(fm_pl_cols(s[1]) == (int64_t)p->kv_lora + p->rope, "cache '%s' must be [L, %d]", s[1]->name,
                p->kv_lora + p->rope);
        REQUIRE(s[2]->dtype == FM_I32 && fm_pl_nelem(s[2]) == T, "pos '%s' must be i32 [%lld]", s[2]->name,
                (long long)T);
        CHECK_WEIGHT(s[3], "kv_b");
        REQUIRE(s[3]->ndim == 2 && s[3]->ne[0] == H * (p->nope + p->v) && s[3]->ne[1] == p->kv_lora,
                "kv_b '%s' must be [%lld, %d]", s[3]->name, (long long)(H * (p->nope + p->v)), p->kv_lora);
        REQUIRE(fm_pl_nelem(d0) == T * H * p->v, "output '%s' must be [%lld, %lld]", d0->name, (long long)T,
                (long long)(H * p->v));
        return FM_OK;
    }
    case FM_OP_COUNT:
        break;
    }
    return bad(node, err, errsz, "unknown op %d", node->op);
}

/* Source and destination counts from ops.def; -1 means variable (checked per op). */
static const int op_nsrc[FM_OP_COUNT] = {
#define X(id, name, nsrc, ndst, params) nsrc,
#include "fathom/ops.def"
#undef X
};
static const int op_ndst[FM_OP_COUNT] = {
#define X(id, name, nsrc, ndst, params) ndst,
#include "fathom/ops.def"
#undef X
};

fm_status fm_ref_check(const fm_pl_node *node, int need_data, char *err, size_t errsz) {
    if (node->op < 0 || node->op >= FM_OP_COUNT) return bad(node, err, errsz, "unknown op %d", node->op);
    int ns = op_nsrc[node->op], nd = op_ndst[node->op];
    int min_src = ns >= 0 ? ns : node->op == FM_OP_MOE_ROUTE ? 2 : node->op == FM_OP_MLA_ATTN ? 4 : 2;
    int max_src = ns >= 0 ? ns : node->op == FM_OP_MOE_ROUTE ? 3 : 1 << 20;
    REQUIRE(node->n_src >= min_src && node->n_src <= max_src && node->src, "%d sources", node->n_src);
    REQUIRE(node->n_dst == nd && node->dst, "%d destinations, expected %d", node->n_dst, nd);
    REQUIRE(node->params || node->op == FM_OP_EMBED || node->op == FM_OP_ADD || node->op == FM_OP_SWIGLU,
            "no params");
    for (int i = 0; i < node->n_src; i++) {
        REQUIRE(node->src[i], "source %d missing", i);
        REQUIRE(node->src[i]->ndim >= 1 && node->src[i]->ndim <= FM_MAX_DIMS, "source %d has %d dims", i,
                node->src[i]->ndim);
        REQUIRE(!need_data || node->src[i]->data, "source %d '%s' is not in host memory", i, node->src[i]->name);
    }
    for (int i = 0; i < node->n_dst; i++) {
        REQUIRE(node->dst[i], "destination %d missing", i);
        REQUIRE(node->dst[i]->ndim >= 1 && node->dst[i]->ndim <= FM_MAX_DIMS, "destination %d has %d dims", i,
                node->dst[i]->ndim);
        REQUIRE(!need_data || node->dst[i]->data, "destination %d '%s' is not in host memory", i,
                node->dst[i]->name);
    }
    if (node->op != FM_OP_MOE_ROUTE && node->op != FM_OP_MLA_CACHE)
        REQUIRE(node->dst[0]->dtype == FM_F32, "output '%s' must be f32", node->dst[0]->name);
    return check_op(node, need_data, err, errsz);
}

int fm_ref_supports(const fm_pl_node *node) { return node && fm_ref_check(node, 0, NULL, 0) == FM_OK; }
