/* test_conformance.c - every op case on every loaded backend against ref.
 *
 * Each case builds a one-op graph with seeded random inputs, runs it on ref and
 * on the backend under test (strict, guard bytes on), and compares: NaN/Inf,
 * NMSE or max-abs per case, router ids exactly as sets. A case whose node the
 * backend does not accept is skipped and counted as such, never as passed.
 * Backends with ISA variants (cpu: control key "isa") run once per variant the
 * machine has. The support matrix (op x backend) is printed first. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fathom/fathom.h"

#define MAX_MEM 512

typedef struct cc {
    fm_graph *g;
    unsigned seed;
    void *mem[MAX_MEM];
    int n_mem;
    fm_tensor *in[8];
    void *in_data[8];
    int n_in;
    fm_tensor *out[4];
    int out_set[4]; /* 1: I32 rows compared as sets */
    int n_out;
} cc;

static size_t mem_size[MAX_MEM];

static void *keep(cc *c, size_t bytes) {
    if (c->n_mem >= MAX_MEM) abort();
    mem_size[c->n_mem] = bytes;
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) abort();
    return c->mem[c->n_mem++] = p;
}

static float frand(cc *c) {
    c->seed = c->seed * 1664525u + 1013904223u;
    return (float)(c->seed >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static fm_tensor *in_f32(cc *c, const char *name, int64_t r, int64_t k, float scale) {
    float *d = keep(c, (size_t)(r * k) * 4);
    for (int64_t i = 0; i < r * k; i++) d[i] = frand(c) * scale;
    fm_tensor *t = fm_input(c->g, name, FM_F32, 2, (int64_t[]){r, k});
    c->in[c->n_in] = t;
    c->in_data[c->n_in++] = d;
    return t;
}

static fm_tensor *in_i32(cc *c, const char *name, int64_t n, const int32_t *v) {
    int32_t *d = keep(c, (size_t)n * 4);
    memcpy(d, v, (size_t)n * 4);
    fm_tensor *t = fm_input(c->g, name, FM_I32, 1, (int64_t[]){n});
    c->in[c->n_in] = t;
    c->in_data[c->n_in++] = d;
    return t;
}

static fm_tensor *positions(cc *c, int64_t T, int32_t start) {
    int32_t p[4096];
    for (int64_t i = 0; i < T; i++) p[i] = start + (int32_t)i;
    return in_i32(c, "pos", T, p);
}

/* A weight [r, k] (or [k] when r == 0) of random values in dtype dt; fp8 gets block scales. */
static fm_tensor *weight(cc *c, const char *name, fm_dtype dt, int64_t r, int64_t k, float scale) {
    int64_t rows = r ? r : 1, n = rows * k;
    int ndim = r ? 2 : 1;
    int64_t ne[2] = {r ? r : k, k};
    void *d = keep(c, (size_t)n * fm_dtype_size(dt));
    fm_tensor *sc = NULL;
    if (dt == FM_F8_E4M3) {
        int64_t br = (rows + 127) / 128, bk = (k + 127) / 128;
        float *s = keep(c, (size_t)(br * bk) * 4);
        for (int64_t i = 0; i < br * bk; i++) s[i] = scale * (0.5f + 0.5f * fabsf(frand(c))) / 448.0f * 4.0f;
        char sn[64];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        sc = fm_weight(c->g, sn, FM_F32, 2, (int64_t[]){br, bk}, s, NULL);
    }
    for (int64_t i = 0; i < n; i++) {
        float v = frand(c) * scale;
        switch (dt) {
        case FM_F32: ((float *)d)[i] = v; break;
        case FM_BF16: ((uint16_t *)d)[i] = fm_f32_to_bf16(v); break;
        case FM_F16: ((uint16_t *)d)[i] = fm_f32_to_f16(v); break;
        case FM_F8_E4M3: ((uint8_t *)d)[i] = fm_f32_to_e4m3(frand(c) * 200.0f); break;
        default: abort();
        }
    }
    return fm_weight(c->g, name, dt, ndim, ne, d, sc);
}

/* A state [r, k] of random values, f32 or bf16 (the KV cache's dtypes). */
static fm_tensor *state(cc *c, const char *name, fm_dtype dt, int64_t r, int64_t k) {
    void *d = keep(c, (size_t)(r * k) * fm_dtype_size(dt));
    for (int64_t i = 0; i < r * k; i++) {
        float v = frand(c);
        if (dt == FM_BF16) ((uint16_t *)d)[i] = fm_f32_to_bf16(v);
        else ((float *)d)[i] = v;
    }
    return fm_state(c->g, name, dt, 2, (int64_t[]){r, k}, d);
}

static void out(cc *c, fm_tensor *t, int as_set) {
    fm_graph_output(c->g, t);
    c->out_set[c->n_out] = as_set;
    c->out[c->n_out++] = t;
}

/* ---- cases ---- */

typedef struct kase {
    const char *name;
    fm_op op;
    double nmse;   /* max normalised mean squared error vs ref */
    void (*build)(cc *c, const struct kase *k);
    int a, b, d, e; /* case parameters */
    fm_dtype dt;
} kase;

static void b_embed(cc *c, const kase *k) {
    int32_t ids[64];
    for (int i = 0; i < k->a; i++) ids[i] = (int32_t)((unsigned)(frand(c) + 1.0f) * 1000u % 256u);
    out(c, fm_embed(c->g, weight(c, "embed", k->dt, 256, k->b, 1), in_i32(c, "ids", k->a, ids)), 0);
}

static void b_matmul(cc *c, const kase *k) {
    fm_tensor *x = in_f32(c, "x", k->a, k->d, 1);
    out(c, fm_matmul(c->g, x, weight(c, "w", k->dt, k->b, k->d, 0.1f), k->e), 0);
}

static void b_rmsnorm(cc *c, const kase *k) {
    out(c, fm_rmsnorm(c->g, in_f32(c, "x", k->a, k->b, 3), weight(c, "w", k->dt, 0, k->b, 1), 1e-6f), 0);
}

static void b_rope(cc *c, const kase *k) {
    fm_rope_params p = {.head_dim = 24, .rope_off = 16, .rope_dim = 8, .theta = 10000};
    if (k->e) p = (fm_rope_params){.head_dim = 24, .rope_off = 8, .rope_dim = 16, .theta = 10000, .yarn_factor = 4,
                                   .yarn_orig_max = 32, .yarn_beta_fast = 32, .yarn_beta_slow = 1};
    out(c, fm_rope(c->g, in_f32(c, "x", k->a, 24 * k->b, 1), positions(c, k->a, k->d), &p), 0);
}

static void b_add(cc *c, const kase *k) {
    fm_tensor *x = in_f32(c, "a", k->a, k->b, 1), *y = in_f32(c, "b", k->a, k->b, 1);
    out(c, k->e ? fm_swiglu(c->g, x, y) : fm_add(c->g, x, y), 0);
}

/* a = T, b = E, d = n_group (topk_group d/2), e = method; k: V3 uses 8 */
static void b_route(cc *c, const kase *k) {
    int H = 64;
    fm_moe_route_params p = {.n_experts = k->b, .n_group = k->d, .topk_group = k->d > 1 ? k->d / 2 : 1,
                             .method = k->e, .scoring = k->e == FM_TOPK_NOAUX_TC ? FM_SCORE_SIGMOID : FM_SCORE_SOFTMAX,
                             .renorm = k->e == FM_TOPK_NOAUX_TC, .scale = 2.5f};
    p.top_k = k->dt == FM_I32 ? 1 : (k->b >= 64 ? 8 : 4);
    if (p.top_k > p.topk_group * (k->b / p.n_group)) p.top_k = p.topk_group * (k->b / p.n_group);
    fm_tensor *bias = NULL;
    if (k->e == FM_TOPK_NOAUX_TC) {
        float *bv = keep(c, (size_t)k->b * 4);
        for (int i = 0; i < k->b; i++) bv[i] = frand(c) * 0.25f;
        bias = fm_weight(c->g, "bias", FM_F32, 1, (int64_t[]){k->b}, bv, NULL);
    }
    fm_tensor *ids, *w;
    fm_moe_route(c->g, in_f32(c, "x", k->a, H, 1), weight(c, "gate", k->dt == FM_I32 ? FM_F32 : k->dt, k->b, H, 0.3f),
                 bias, &p, &ids, &w);
    out(c, ids, 1);
    out(c, w, 0);
}

/* a = T, b = E, d = H, e = I; ids drawn from the first half of the experts only */
static void b_experts(cc *c, const kase *k) {
    int T = k->a, E = k->b, K = 4;
    fm_tensor *gate[64], *up[64], *down[64];
    for (int e = 0; e < E; e++) {
        char n[32];
        snprintf(n, sizeof n, "gate.%d", e);
        gate[e] = weight(c, n, k->dt, k->e, k->d, 0.2f);
        snprintf(n, sizeof n, "up.%d", e);
        up[e] = weight(c, n, k->dt, k->e, k->d, 0.2f);
        snprintf(n, sizeof n, "down.%d", e);
        down[e] = weight(c, n, k->dt, k->d, k->e, 0.2f);
    }
    int32_t *ids = keep(c, (size_t)(T * K) * 4);
    float *w = keep(c, (size_t)(T * K) * 4);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            ids[t * K + j] = (t + j * 3) % (E / 2 > K ? E / 2 : E);
            w[t * K + j] = 0.25f + 0.1f * frand(c);
        }
    fm_tensor *it = fm_input(c->g, "ids", FM_I32, 2, (int64_t[]){T, K});
    fm_tensor *wt = fm_input(c->g, "w", FM_F32, 2, (int64_t[]){T, K});
    c->in[c->n_in] = it, c->in_data[c->n_in++] = ids;
    c->in[c->n_in] = wt, c->in_data[c->n_in++] = w;
    out(c, fm_moe_experts(c->g, in_f32(c, "x", T, k->d, 1), it, wt, E, gate, up, down, k->dt == FM_F8_E4M3), 0);
}

/* a = T, b = L, d = first position; the cache in dtype cdt */
static void cache_case(cc *c, const kase *k, fm_dtype cdt) {
    fm_mla_cache_params p = {.kv_lora = 32, .eps = 1e-6f,
                             .rope = {.head_dim = 8, .rope_dim = 8, .theta = 10000}};
    fm_tensor *cache = state(c, "cache", cdt, k->b, 40);
    out(c, fm_mla_cache(c->g, cache, in_f32(c, "kv", k->a, 40, 2), weight(c, "norm", FM_F32, 0, 32, 1),
                        positions(c, k->a, k->d), &p), 0);
}

static void b_cache(cc *c, const kase *k) { cache_case(c, k, FM_F32); }
static void b_cache_bf16(cc *c, const kase *k) { cache_case(c, k, FM_BF16); }

/* a = T, b = L, d = kv_lora, e = mode, dt = kv_b's dtype; queries sit at the last T
 * positions; the cache in dtype cdt */
static void attn_case(cc *c, const kase *k, fm_dtype cdt) {
    fm_mla_attn_params p = {.n_heads = 4, .nope = 16, .rope = 8, .v = 16, .kv_lora = k->d, .scale = 0.2f,
                            .mode = k->e, .act_quant = k->dt == FM_F8_E4M3};
    fm_tensor *cache = state(c, "cache", cdt, k->b, k->d + 8);
    fm_tensor *q = in_f32(c, "q", k->a, 4 * 24, 1);
    fm_tensor *kvb = weight(c, "kv_b", k->dt, 4 * 32, k->d, 0.3f);
    out(c, fm_mla_attn(c->g, q, cache, positions(c, k->a, k->b - k->a), kvb, &p), 0);
}

static void b_attn(cc *c, const kase *k) { attn_case(c, k, FM_F32); }
static void b_attn_bf16(cc *c, const kase *k) { attn_case(c, k, FM_BF16); }

static const kase cases[] = {
    {"embed/f32 T=12", FM_OP_EMBED, 0, b_embed, 12, 64, 0, 0, FM_F32},
    {"embed/bf16 T=1", FM_OP_EMBED, 0, b_embed, 1, 7168, 0, 0, FM_BF16},
    {"matmul/f32 4x2048x7168", FM_OP_MATMUL, 1e-9, b_matmul, 4, 2048, 7168, 0, FM_F32},
    {"matmul/f32 T=1 odd 1x100x70", FM_OP_MATMUL, 1e-9, b_matmul, 1, 100, 70, 0, FM_F32},
    {"matmul/f32 33x65x129", FM_OP_MATMUL, 1e-9, b_matmul, 33, 65, 129, 0, FM_F32},
    {"matmul/bf16 5x576x7168", FM_OP_MATMUL, 1e-9, b_matmul, 5, 576, 7168, 0, FM_BF16},
    {"matmul/f16 3x48x64", FM_OP_MATMUL, 1e-9, b_matmul, 3, 48, 64, 0, FM_F16},
    {"matmul/fp8 dequant 3x144x256", FM_OP_MATMUL, 1e-9, b_matmul, 3, 144, 256, 0, FM_F8_E4M3},
    {"matmul/fp8 act_quant 12x192x256", FM_OP_MATMUL, 1e-10, b_matmul, 12, 192, 256, 1, FM_F8_E4M3},
    {"matmul/fp8 act_quant T=1 1x576x7168", FM_OP_MATMUL, 1e-10, b_matmul, 1, 576, 7168, 1, FM_F8_E4M3},
    {"rmsnorm/f32 2x7168", FM_OP_RMSNORM, 1e-10, b_rmsnorm, 2, 7168, 0, 0, FM_F32},
    {"rmsnorm/bf16 T=1 1x48", FM_OP_RMSNORM, 1e-10, b_rmsnorm, 1, 48, 0, 0, FM_BF16},
    {"rope/plain 5x4 heads", FM_OP_ROPE, 1e-10, b_rope, 5, 4, 3, 0, FM_F32},
    {"rope/yarn T=1 pos 100", FM_OP_ROPE, 1e-10, b_rope, 1, 2, 100, 1, FM_F32},
    {"add/7x300", FM_OP_ADD, 0, b_add, 7, 300, 0, 0, FM_F32},
    {"swiglu/7x300", FM_OP_SWIGLU, 1e-12, b_add, 7, 300, 0, 1, FM_F32},
    {"moe_route/v3 noaux_tc E=256 g=8 k=8", FM_OP_MOE_ROUTE, 1e-10, b_route, 4, 256, 8, FM_TOPK_NOAUX_TC, FM_BF16},
    {"moe_route/v3 noaux_tc E=16 g=4", FM_OP_MOE_ROUTE, 1e-10, b_route, 12, 16, 4, FM_TOPK_NOAUX_TC, FM_F32},
    {"moe_route/group_limited E=64 g=8", FM_OP_MOE_ROUTE, 1e-10, b_route, 5, 64, 8, FM_TOPK_GROUP_LIMITED, FM_F32},
    {"moe_route/greedy softmax E=12", FM_OP_MOE_ROUTE, 1e-10, b_route, 9, 12, 1, FM_TOPK_GREEDY, FM_F32},
    {"moe_route/greedy k=1 T=1", FM_OP_MOE_ROUTE, 1e-10, b_route, 1, 12, 1, FM_TOPK_GREEDY, FM_I32},
    {"moe_experts/f32 16 experts, half idle", FM_OP_MOE_EXPERTS, 1e-9, b_experts, 12, 16, 64, 32, FM_F32},
    {"moe_experts/bf16 T=1", FM_OP_MOE_EXPERTS, 1e-9, b_experts, 1, 8, 64, 48, FM_BF16},
    {"moe_experts/fp8 act_quant", FM_OP_MOE_EXPERTS, 1e-8, b_experts, 5, 4, 256, 256, FM_F8_E4M3},
    {"mla_cache/5 rows at 3..7", FM_OP_MLA_CACHE, 1e-10, b_cache, 5, 64, 3, 0, FM_F32},
    {"mla_cache/T=1 last row", FM_OP_MLA_CACHE, 1e-10, b_cache, 1, 64, 63, 0, FM_F32},
    {"mla_attn/absorb prefill 6 of 12", FM_OP_MLA_ATTN, 1e-9, b_attn, 6, 12, 32, FM_MLA_ABSORB, FM_F32},
    {"mla_attn/naive prefill 6 of 12", FM_OP_MLA_ATTN, 1e-9, b_attn, 6, 12, 32, FM_MLA_NAIVE, FM_F32},
    {"mla_attn/absorb decode ctx 4096", FM_OP_MLA_ATTN, 1e-9, b_attn, 1, 4096, 64, FM_MLA_ABSORB, FM_BF16},
    {"mla_attn/naive fp8 act_quant", FM_OP_MLA_ATTN, 1e-8, b_attn, 3, 20, 128, FM_MLA_NAIVE, FM_F8_E4M3},
    /* a bf16 cache (DeepSeek's serving form): rows rounded to nearest even on write, widened on read */
    {"mla_cache/bf16 cache 5 rows at 3..7", FM_OP_MLA_CACHE, 1e-6, b_cache_bf16, 5, 64, 3, 0, FM_F32},
    {"mla_cache/bf16 cache T=1 row 40", FM_OP_MLA_CACHE, 1e-6, b_cache_bf16, 1, 64, 40, 0, FM_F32},
    {"mla_attn/absorb bf16 cache prefill 6 of 12", FM_OP_MLA_ATTN, 1e-9, b_attn_bf16, 6, 12, 32, FM_MLA_ABSORB, FM_F32},
    {"mla_attn/naive bf16 cache prefill 6 of 12", FM_OP_MLA_ATTN, 1e-9, b_attn_bf16, 6, 12, 32, FM_MLA_NAIVE, FM_F32},
    {"mla_attn/absorb bf16 cache decode ctx 300", FM_OP_MLA_ATTN, 1e-9, b_attn_bf16, 1, 300, 64, FM_MLA_ABSORB, FM_BF16},
    {"mla_attn/naive bf16 cache decode ctx 300", FM_OP_MLA_ATTN, 1e-9, b_attn_bf16, 1, 300, 64, FM_MLA_NAIVE, FM_BF16},
};
#define N_CASES ((int)(sizeof cases / sizeof *cases))

/* ---- runner ---- */

static fm_ctx *g_ctx;

static void cc_free(cc *c) {
    fm_graph_free(c->g);
    for (int i = 0; i < c->n_mem; i++) {
        fm_ctx_release(g_ctx, c->mem[i], mem_size[i]);
        free(c->mem[i]);
    }
}

static void cc_build(cc *c, int i) {
    memset(c, 0, sizeof *c);
    c->seed = 1234567u + (unsigned)i * 7919u;
    if (fm_graph_init(g_ctx, &c->g) != FM_OK) abort();
    cases[i].build(c, &cases[i]);
    if (fm_graph_status(c->g) != FM_OK) {
        fprintf(stderr, "case %s: %s\n", cases[i].name, fm_ctx_error(g_ctx));
        abort(); /* a broken case table is a bug of this file */
    }
}

/* Runs case i on backend; returns 1 done, 0 skipped (node not accepted). Outputs copied to res. */
static int run_case(int i, const char *backend, float **res) {
    cc c;
    cc_build(&c, i);
    fm_session *s;
    fm_status st = fm_session_init(g_ctx, c.g, backend, NULL, FM_RUN_STRICT | FM_RUN_GUARD, &s);
    ck_assert_msg(st == FM_OK, "%s on %s: %s", cases[i].name, backend, fm_ctx_error(g_ctx));
    fm_node_stat ns;
    fm_session_node_stat(s, 0, &ns);
    if (strcmp(ns.planned, backend) != 0) {
        fm_session_free(s);
        cc_free(&c);
        return 0;
    }
    for (int j = 0; j < c.n_in; j++)
        ck_assert_int_eq(fm_session_set_input(s, c.in[j], c.in_data[j], fm_tensor_bytes(c.in[j])), FM_OK);
    st = fm_session_run(s);
    ck_assert_msg(st == FM_OK, "%s on %s: %s", cases[i].name, backend, fm_ctx_error(g_ctx));
    for (int j = 0; j < c.n_out; j++) {
        size_t n = fm_tensor_bytes(c.out[j]);
        res[j] = malloc(n);
        ck_assert_int_eq(fm_session_read(s, c.out[j], res[j], n), FM_OK);
    }
    fm_session_free(s);
    cc_free(&c);
    return 1;
}

static int cmp_i32(const void *a, const void *b) { return *(const int32_t *)a - *(const int32_t *)b; }

/* A bf16 output (the cache) widened to f32 (exact), for the NMSE below. */
static float *widen_bf16(const void *res, int64_t n) {
    float *f = malloc((size_t)n * sizeof *f);
    ck_assert_ptr_nonnull(f);
    for (int64_t k = 0; k < n; k++) f[k] = fm_bf16_to_f32(((const uint16_t *)res)[k]);
    return f;
}

static void compare(int i, const char *backend, float **want, float **got) {
    cc c; /* rebuilt only to know the outputs' shapes and kinds */
    cc_build(&c, i);
    for (int j = 0; j < c.n_out; j++) {
        int64_t n = fm_tensor_nelem(c.out[j]);
        if (fm_tensor_dtype(c.out[j]) == FM_I32) {
            int32_t *a = (int32_t *)want[j], *b = (int32_t *)got[j];
            int64_t row = fm_tensor_ne(c.out[j], 1);
            if (c.out_set[j])
                for (int64_t r = 0; r < n / row; r++) {
                    qsort(a + r * row, (size_t)row, 4, cmp_i32);
                    qsort(b + r * row, (size_t)row, 4, cmp_i32);
                }
            for (int64_t k = 0; k < n; k++)
                ck_assert_msg(a[k] == b[k], "%s on %s: output %d element %lld: %d, ref %d", cases[i].name, backend,
                              j, (long long)k, b[k], a[k]);
            continue;
        }
        const float *w = want[j], *gv = got[j];
        float *wide[2] = {NULL, NULL};
        if (fm_tensor_dtype(c.out[j]) == FM_BF16) {
            w = wide[0] = widen_bf16(want[j], n);
            gv = wide[1] = widen_bf16(got[j], n);
        }
        double err = 0, norm = 0;
        for (int64_t k = 0; k < n; k++) {
            ck_assert_msg(isfinite(gv[k]), "%s on %s: output %d element %lld is %f", cases[i].name, backend, j,
                          (long long)k, (double)gv[k]);
            double d = (double)gv[k] - w[k];
            err += d * d;
            norm += (double)w[k] * w[k];
        }
        free(wide[0]);
        free(wide[1]);
        double nmse = norm > 0 ? err / norm : err;
        ck_assert_msg(nmse <= cases[i].nmse, "%s on %s: output %d NMSE %.3g > %.3g", cases[i].name, backend, j, nmse,
                      cases[i].nmse);
    }
    cc_free(&c);
}

/* Backends under test, with variants: "cpu@avx2" means cpu with isa=avx2. */
static char targets[32][48];
static int n_targets;

static void find_targets(void) {
    static const char *isas[] = {"scalar", "avx2", "avx512", "avx512bf16"};
    for (int b = 0; b < fm_backend_count(g_ctx); b++) {
        fm_backend_info info;
        fm_backend_info_get(g_ctx, b, &info);
        if (info.status != FM_BACKEND_READY || !strcmp(info.name, "ref")) continue;
        int variants = 0;
        for (int v = 0; v < 4 && n_targets < 32; v++)
            if (fm_backend_control(g_ctx, info.name, "isa", isas[v]) == FM_OK) {
                snprintf(targets[n_targets++], sizeof targets[0], "%s@%s", info.name, isas[v]);
                variants++;
            }
        if (variants) fm_backend_control(g_ctx, info.name, "isa", "auto");
        if (!variants && n_targets < 32) snprintf(targets[n_targets++], sizeof targets[0], "%s", info.name);
    }
}

static const char *select_target(int t) {
    static char name[48];
    snprintf(name, sizeof name, "%s", targets[t]);
    char *at = strchr(name, '@');
    if (at) {
        *at = 0;
        if (fm_backend_control(g_ctx, name, "isa", at + 1) != FM_OK) abort();
    }
    return name;
}

START_TEST(case_matches_ref_on_every_backend) {
    float *want[4] = {0};
    ck_assert_int_eq(run_case(_i, "ref", want), 1);
    char line[1024];
    int k = snprintf(line, sizeof line, "%-40s", cases[_i].name);
    for (int t = 0; t < n_targets; t++) {
        float *got[4] = {0};
        const char *be = select_target(t);
        int done = run_case(_i, be, got);
        if (done) compare(_i, targets[t], want, got);
        k += snprintf(line + k, sizeof line - (size_t)k, " %s:%s", targets[t], done ? "ok" : "skipped");
        for (int j = 0; j < 4; j++) free(got[j]);
    }
    printf("%s\n", line);
    for (int j = 0; j < 4; j++) free(want[j]);
}
END_TEST

static void print_matrix(void) {
    int skipped = 0;
    printf("support matrix (cases accepted / cases), ref is the oracle:\n%-12s", "op");
    for (int t = 0; t < n_targets; t++) printf(" %14s", targets[t]);
    printf("\n");
    for (int op = 0; op < FM_OP_COUNT; op++) {
        printf("%-12s", fm_op_name(op));
        for (int t = 0; t < n_targets; t++) {
            const char *be = select_target(t);
            int n = 0, yes = 0;
            for (int i = 0; i < N_CASES; i++) {
                if (cases[i].op != (fm_op)op) continue;
                cc c;
                cc_build(&c, i);
                fm_session *s;
                if (fm_session_init(g_ctx, c.g, be, NULL, FM_RUN_STRICT, &s) == FM_OK) {
                    fm_node_stat ns;
                    fm_session_node_stat(s, 0, &ns);
                    yes += !strcmp(ns.planned, be);
                    fm_session_free(s);
                }
                n++;
                cc_free(&c);
            }
            char cell[32];
            skipped += n - yes;
            snprintf(cell, sizeof cell, "%d/%d", yes, n);
            printf(" %14s", cell);
        }
        printf("\n");
    }
    printf("%d cases x %d backends: %d skipped as unsupported (not counted as passed)\n\n", N_CASES, n_targets, skipped);
}

int main(void) {
    const char *b = getenv("FATHOM_BUILD");
    char path[1024];
    const char *extra = getenv("FATHOM_PLUGIN_PATH");
    snprintf(path, sizeof path, "%s%s%s/plugins:%s/tests/plugins", extra ? extra : "", extra ? ":" : "", b ? b : "build",
             b ? b : "build");
    setenv("FATHOM_PLUGIN_PATH", path, 1);
    if (fm_ctx_init(&g_ctx) != FM_OK) return 1;
    find_targets();
    print_matrix();
    Suite *s = suite_create("conformance");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, case_matches_ref_on_every_backend, 0, N_CASES);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    fm_ctx_free(g_ctx);
    return failed ? 1 : 0;
}
