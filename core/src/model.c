/* model.c - DeepSeek-V3/V2 from a Hugging Face checkpoint: weights mapped, a
 * graph per token count (prefill chunk or decode step), the MLA latent cache as
 * state, per-op statistics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "internal.h"
#include "ref.h"
#include "safetensors.h"

#define N_SESS 2 /* graphs kept: the last prefill length and decode (T = 1) */

typedef struct msess {
    int T;
    fm_graph *g;
    fm_session *s;
    fm_tensor *ids, *pos, *logits;
} msess;

struct fm_model {
    fm_ctx *ctx;
    fm_model_config cfg;
    fm_st *st;
    char dir[1024];
    fm_model_options opt;
    char backends[256], place[512];
    int act_quant;
    int32_t max_seq;
    fm_dtype cache_dtype;   /* FM_F32 or FM_BF16 */
    void **cache;           /* per layer [max_seq, kv_lora + rope] of cache_dtype */
    int32_t filled;         /* positions written so far (max over forwards) */
    msess sess[N_SESS];
    int last;               /* index of the session of the last forward */
    fm_op_time *stats;      /* [FM_OP_COUNT * n_be] */
    char desc[512];
    char err[1024];
};

/* ---- loading ---- */

static fm_status merr(fm_model *m, fm_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static fm_status merr(fm_model *m, fm_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->ctx->err, sizeof m->ctx->err, fmt, ap);
    va_end(ap);
    return s;
}

/* Checks one weight: exists, 2-D [r, c] (c = 0: 1-D [r]), a float dtype; fp8 needs its scales. */
static fm_status check_w(fm_model *m, const char *name, int64_t r, int64_t c) {
    const fm_st_tensor *t;
    char err[600];
    int64_t ne[2] = {r, c};
    fm_status s = fm_st_expect(m->st, name, -1, c ? 2 : 1, ne, &t, err, sizeof err);
    if (s != FM_OK) return merr(m, s, "%s", err);
    if (t->dtype == FM_I32) return merr(m, FM_EINVAL, "%s: tensor '%s' is i32, expected a float dtype", t->path, name);
    if (t->dtype == FM_F8_E4M3) {
        char sn[300];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        int64_t sne[2] = {(r + 127) / 128, (c + 127) / 128};
        if (!c || (s = fm_st_expect(m->st, sn, FM_F32, 2, sne, &t, err, sizeof err)) != FM_OK)
            return merr(m, c ? s : FM_EINVAL, "%s", c ? err : "f8_e4m3 vector weight");
    }
    return FM_OK;
}

static fm_status check_mlp(fm_model *m, const char *pre, int64_t H, int64_t I) {
    char n[300];
    fm_status s;
    snprintf(n, sizeof n, "%s.gate_proj.weight", pre);
    if ((s = check_w(m, n, I, H)) != FM_OK) return s;
    snprintf(n, sizeof n, "%s.up_proj.weight", pre);
    if ((s = check_w(m, n, I, H)) != FM_OK) return s;
    snprintf(n, sizeof n, "%s.down_proj.weight", pre);
    return check_w(m, n, H, I);
}

static fm_status check_weights(fm_model *m) {
    const fm_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, NH = c->num_attention_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    fm_status s;
    if ((s = check_w(m, "model.embed_tokens.weight", c->vocab_size, H)) != FM_OK) return s;
    if ((s = check_w(m, "model.norm.weight", H, 0)) != FM_OK) return s;
    if ((s = check_w(m, "lm_head.weight", c->vocab_size, H)) != FM_OK) return s;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        char n[300], p[64];
        snprintf(p, sizeof p, "model.layers.%d", l);
#define W(suffix, r, cc)                                                                                         \
    do {                                                                                                         \
        snprintf(n, sizeof n, "%s.%s", p, suffix);                                                               \
        if ((s = check_w(m, n, r, cc)) != FM_OK) return s;                                                       \
    } while (0)
        W("input_layernorm.weight", H, 0);
        W("post_attention_layernorm.weight", H, 0);
        if (c->q_lora_rank) {
            W("self_attn.q_a_proj.weight", c->q_lora_rank, H);
            W("self_attn.q_a_layernorm.weight", c->q_lora_rank, 0);
            W("self_attn.q_b_proj.weight", NH * qk, c->q_lora_rank);
        } else {
            W("self_attn.q_proj.weight", NH * qk, H);
        }
        W("self_attn.kv_a_proj_with_mqa.weight", c->kv_lora_rank + c->qk_rope_head_dim, H);
        W("self_attn.kv_a_layernorm.weight", c->kv_lora_rank, 0);
        W("self_attn.kv_b_proj.weight", NH * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank);
        W("self_attn.o_proj.weight", H, NH * c->v_head_dim);
        if (fm_config_is_moe_layer(c, l)) {
            W("mlp.gate.weight", c->n_routed_experts, H);
            if (c->topk_method == FM_TOPK_NOAUX_TC) {
                snprintf(n, sizeof n, "%s.mlp.gate.e_score_correction_bias", p);
                const fm_st_tensor *t;
                char err[600];
                if ((s = fm_st_expect(m->st, n, FM_F32, 1, (int64_t[]){c->n_routed_experts}, &t, err, sizeof err)))
                    return merr(m, s, "%s", err);
            }
            for (int e = 0; e < c->n_routed_experts; e++) {
                char pre[300];
                snprintf(pre, sizeof pre, "%s.mlp.experts.%d", p, e);
                if ((s = check_mlp(m, pre, H, c->moe_intermediate_size)) != FM_OK) return s;
            }
            if (c->n_shared_experts) {
                snprintf(n, sizeof n, "%s.mlp.shared_experts", p);
                if ((s = check_mlp(m, n, H, (int64_t)c->n_shared_experts * c->moe_intermediate_size)) != FM_OK)
                    return s;
            }
        } else {
            snprintf(n, sizeof n, "%s.mlp", p);
            if ((s = check_mlp(m, n, H, c->intermediate_size)) != FM_OK) return s;
        }
#undef W
    }
    return FM_OK;
}

static bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

fm_status fm_model_load(fm_ctx *ctx, const char *dir, const fm_model_options *opt, fm_model **out) {
    *out = NULL;
    fm_model *m = calloc(1, sizeof *m);
    if (!m) return fm_err(ctx, FM_ENOMEM, "model: out of memory");
    m->ctx = ctx;
    m->opt = opt ? *opt : (fm_model_options){.act_quant = -1};
    if (m->opt.cache_dtype != FM_F32 && m->opt.cache_dtype != FM_BF16) {
        int dt = m->opt.cache_dtype;
        free(m);
        return fm_err(ctx, FM_EINVAL, "model: cache_dtype %d (%s): the KV cache must be FM_F32 (f32) or FM_BF16 (bf16)",
                      dt, fm_dtype_name((fm_dtype)dt));
    }
    m->cache_dtype = (fm_dtype)m->opt.cache_dtype;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    snprintf(m->backends, sizeof m->backends, "%s", m->opt.backends ? m->opt.backends : "");
    snprintf(m->place, sizeof m->place, "%s", m->opt.place ? m->opt.place : "");
    char path[1400], err[1024];
    fm_status s;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((s = fm_config_load(path, &m->cfg, err, sizeof err)) != FM_OK) {
        fm_model_free(m);
        return fm_err(ctx, s, "%s", err);
    }
    if (m->opt.weights) snprintf(path, sizeof path, "%s/%s", dir, m->opt.weights);
    else {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (!exists(path)) snprintf(path, sizeof path, "%s/model.safetensors", dir);
    }
    if ((s = fm_st_open(path, &m->st, err, sizeof err)) != FM_OK) {
        fm_model_free(m);
        return fm_err(ctx, s, "%s", err);
    }
    if ((s = check_weights(m)) != FM_OK) {
        fm_model_free(m);
        return s;
    }
    const fm_model_config *c = &m->cfg;
    m->act_quant = m->opt.act_quant < 0 ? c->quant.fp8 : m->opt.act_quant;
    m->max_seq = m->opt.max_seq > 0 ? m->opt.max_seq
                                    : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    int64_t row = (int64_t)c->kv_lora_rank + c->qk_rope_head_dim;
    m->cache = calloc((size_t)c->num_hidden_layers, sizeof *m->cache);
    m->stats = calloc((size_t)FM_OP_COUNT * (size_t)ctx->n_be, sizeof *m->stats);
    if (!m->cache || !m->stats) {
        fm_model_free(m);
        return fm_err(ctx, FM_ENOMEM, "model: out of memory");
    }
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (!(m->cache[l] = fm_alloc_stream(ctx, (size_t)(m->max_seq * row) * fm_dtype_size(m->cache_dtype)))) {
            fm_model_free(m);
            return fm_err(ctx, FM_ENOMEM, "model: cannot allocate the KV cache (%lld tokens)", (long long)m->max_seq);
        }
    static const char *scoring[] = {"softmax", "sigmoid"}, *method[] = {"greedy", "group_limited_greedy", "noaux_tc"};
    snprintf(m->desc, sizeof m->desc,
             "%s: %d layers (%d dense), hidden %d, %d heads, q_lora %d, kv_lora %d, rope %d%s, %d routed experts "
             "(%s, %s, top-%d of %d groups, top-%d) + %d shared, vocab %d, weights %s%s",
             c->model_type[0] ? c->model_type : "deepseek", c->num_hidden_layers, c->first_k_dense_replace,
             c->hidden_size, c->num_attention_heads, c->q_lora_rank, c->kv_lora_rank, c->qk_rope_head_dim,
             c->rope_scaling.enabled ? " (yarn)" : "", c->n_routed_experts, scoring[c->scoring_func & 1],
             method[c->topk_method % 3], c->topk_group, c->n_group, c->num_experts_per_tok, c->n_shared_experts,
             c->vocab_size, fm_dtype_name(fm_st_get(m->st, "model.layers.0.self_attn.o_proj.weight")->dtype),
             m->act_quant ? " with fp8 activations" : "");
    *out = m;
    return FM_OK;
}

static void sess_free(msess *q) {
    fm_session_free(q->s);
    fm_graph_free(q->g);
    memset(q, 0, sizeof *q);
}

void fm_model_free(fm_model *m) {
    if (!m) return;
    for (int i = 0; i < N_SESS; i++) sess_free(&m->sess[i]);
    if (m->st) {
        /* backend copies of mapped weights go before the mapping does */
        for (int i = 0; i < fm_st_count(m->st); i++) {
            const fm_st_tensor *t = fm_st_at(m->st, i);
            fm_ctx_release(m->ctx, t->data, t->nbytes ? t->nbytes : 1);
        }
        fm_st_close(m->st);
    }
    if (m->cache) {
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
            if (m->cache[l]) fm_ctx_release(m->ctx, m->cache[l], 1);
            fm_free(m->cache[l]);
        }
        free(m->cache);
    }
    free(m->stats);
    free(m);
}

/* ---- graph ---- */

static fm_tensor *W(fm_graph *g, fm_model *m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static fm_tensor *W(fm_graph *g, fm_model *m, const char *fmt, ...) {
    char name[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const fm_st_tensor *t = fm_st_get(m->st, name);
    if (!t) return NULL; /* checked at load */
    fm_tensor *scale = NULL;
    if (t->dtype == FM_F8_E4M3) {
        char sn[320];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        const fm_st_tensor *s = fm_st_get(m->st, sn);
        scale = fm_weight(g, sn, FM_F32, s->ndim, s->ne, s->data, NULL);
    }
    return fm_weight(g, name, t->dtype, t->ndim, t->ne, t->data, scale);
}

static fm_tensor *named(fm_graph *g, fm_tensor *t, bool capture, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static fm_tensor *named(fm_graph *g, fm_tensor *t, bool capture, const char *fmt, ...) {
    if (!t) return NULL;
    char name[FM_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    fm_tensor_set_name(t, name);
    if (capture) fm_graph_output(g, t);
    return t;
}

static fm_tensor *mlp(fm_graph *g, fm_model *m, fm_tensor *x, const char *pre, int aq) {
    fm_tensor *gt = fm_matmul(g, x, W(g, m, "%s.gate_proj.weight", pre), aq);
    fm_tensor *up = fm_matmul(g, x, W(g, m, "%s.up_proj.weight", pre), aq);
    return fm_matmul(g, fm_swiglu(g, gt, up), W(g, m, "%s.down_proj.weight", pre), aq);
}

static fm_status build(fm_model *m, msess *q, int T) {
    fm_ctx *ctx = m->ctx;
    const fm_model_config *c = &m->cfg;
    fm_status s = fm_graph_init(ctx, &q->g);
    if (s != FM_OK) return s;
    fm_graph *g = q->g;
    bool cap = m->opt.capture != 0;
    int aq = m->act_quant;
    /* model.py always uses 1e-6 whatever rms_norm_eps says (tests/data/golden/README.md) */
    const float eps = 1e-6f;
    int64_t ne1[1] = {T};
    q->T = T;
    q->ids = fm_input(g, "tokens", FM_I32, 1, ne1);
    q->pos = fm_input(g, "positions", FM_I32, 1, ne1);
    fm_rope_params rope;
    fm_config_rope_params(c, &rope);
    fm_mla_cache_params cp = {.kv_lora = c->kv_lora_rank, .eps = eps, .rope = rope};
    cp.rope.head_dim = cp.rope.rope_dim = c->qk_rope_head_dim;
    cp.rope.rope_off = 0;
    int mode = m->opt.attn == FM_ATTN_NAIVE ? FM_MLA_NAIVE
             : m->opt.attn == FM_ATTN_ABSORB ? FM_MLA_ABSORB
             : T > 1 ? FM_MLA_NAIVE : FM_MLA_ABSORB;
    fm_mla_attn_params ap = {.n_heads = c->num_attention_heads, .nope = c->qk_nope_head_dim,
                             .rope = c->qk_rope_head_dim, .v = c->v_head_dim, .kv_lora = c->kv_lora_rank,
                             .scale = (float)fm_config_softmax_scale(c), .mode = mode,
                             .act_quant = aq && m->opt.attn == FM_ATTN_NAIVE};
    fm_moe_route_params rp;
    fm_config_route_params(c, &rp);
    int64_t crow[2] = {m->max_seq, (int64_t)c->kv_lora_rank + c->qk_rope_head_dim};

    fm_tensor *h = named(g, fm_embed(g, W(g, m, "model.embed_tokens.weight"), q->ids), cap, "embed");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        char p[64];
        snprintf(p, sizeof p, "model.layers.%d", l);
        fm_tensor *x = fm_rmsnorm(g, h, W(g, m, "%s.input_layernorm.weight", p), eps), *qv;
        if (c->q_lora_rank) {
            fm_tensor *qa = fm_matmul(g, x, W(g, m, "%s.self_attn.q_a_proj.weight", p), aq);
            qa = fm_rmsnorm(g, qa, W(g, m, "%s.self_attn.q_a_layernorm.weight", p), eps);
            qv = fm_matmul(g, qa, W(g, m, "%s.self_attn.q_b_proj.weight", p), aq);
        } else {
            qv = fm_matmul(g, x, W(g, m, "%s.self_attn.q_proj.weight", p), aq);
        }
        qv = fm_rope(g, qv, q->pos, &rope);
        fm_tensor *kv = fm_matmul(g, x, W(g, m, "%s.self_attn.kv_a_proj_with_mqa.weight", p), aq);
        char cn[64];
        snprintf(cn, sizeof cn, "layers.%d.kv_state", l);
        fm_tensor *cache = fm_state(g, cn, m->cache_dtype, 2, crow, m->cache[l]);
        cache = named(g, fm_mla_cache(g, cache, kv, W(g, m, "%s.self_attn.kv_a_layernorm.weight", p), q->pos, &cp),
                      false, "layers.%d.mla_cache", l);
        fm_tensor *a = fm_mla_attn(g, qv, cache, q->pos, W(g, m, "%s.self_attn.kv_b_proj.weight", p), &ap);
        named(g, a, false, "layers.%d.mla_attn", l);
        fm_tensor *ao = named(g, fm_matmul(g, a, W(g, m, "%s.self_attn.o_proj.weight", p), aq), cap,
                              "layers.%d.attn_out", l);
        h = fm_add(g, h, ao);
        x = fm_rmsnorm(g, h, W(g, m, "%s.post_attention_layernorm.weight", p), eps);
        fm_tensor *ffn;
        char pre[128];
        if (fm_config_is_moe_layer(c, l)) {
            fm_tensor *ids, *wts, **ew = malloc((size_t)c->n_routed_experts * 3 * sizeof *ew);
            if (!ew) return fm_err(ctx, FM_ENOMEM, "model: out of memory");
            fm_tensor *bias = c->topk_method == FM_TOPK_NOAUX_TC ? W(g, m, "%s.mlp.gate.e_score_correction_bias", p) : NULL;
            fm_moe_route(g, x, W(g, m, "%s.mlp.gate.weight", p), bias, &rp, &ids, &wts);
            named(g, ids, cap, "layers.%d.router_indices", l);
            named(g, wts, cap, "layers.%d.router_weights", l);
            int E = c->n_routed_experts;
            for (int e = 0; e < E; e++) {
                ew[e] = W(g, m, "%s.mlp.experts.%d.gate_proj.weight", p, e);
                ew[E + e] = W(g, m, "%s.mlp.experts.%d.up_proj.weight", p, e);
                ew[2 * E + e] = W(g, m, "%s.mlp.experts.%d.down_proj.weight", p, e);
            }
            ffn = named(g, fm_moe_experts(g, x, ids, wts, E, ew, ew + E, ew + 2 * E, aq), false,
                        "layers.%d.moe_experts", l);
            free(ew);
            if (c->n_shared_experts) {
                snprintf(pre, sizeof pre, "%s.mlp.shared_experts", p);
                ffn = fm_add(g, ffn, mlp(g, m, x, pre, aq));
            }
        } else {
            snprintf(pre, sizeof pre, "%s.mlp", p);
            ffn = mlp(g, m, x, pre, aq);
        }
        named(g, ffn, cap, "layers.%d.ffn_out", l);
        h = named(g, fm_add(g, h, ffn), cap, "layers.%d.out", l);
    }
    fm_tensor *fin = named(g, fm_rmsnorm(g, h, W(g, m, "model.norm.weight"), eps), cap, "final_hidden");
    q->logits = named(g, fm_matmul(g, fin, W(g, m, "lm_head.weight"), 0), true, "logits");
    if ((s = fm_graph_status(g)) != FM_OK) return s;
    return fm_session_init(ctx, g, m->backends, m->place, m->opt.flags, &q->s);
}

static fm_status session_for(fm_model *m, int T, msess **out) {
    int slot = T == 1 ? 0 : 1;
    msess *q = &m->sess[slot];
    if (q->g && q->T != T) sess_free(q);
    if (!q->g) {
        fm_status s = build(m, q, T);
        if (s != FM_OK) {
            sess_free(q);
            return s;
        }
    }
    *out = q;
    m->last = slot;
    return FM_OK;
}

fm_status fm_model_place(fm_model *m, const char *backends, const char *place) {
    snprintf(m->backends, sizeof m->backends, "%s", backends ? backends : "");
    snprintf(m->place, sizeof m->place, "%s", place ? place : "");
    for (int i = 0; i < N_SESS; i++)
        if (m->sess[i].s) {
            fm_status s = fm_session_place(m->sess[i].s, m->backends, m->place);
            if (s != FM_OK) {
                sess_free(&m->sess[i]);
                return s;
            }
        }
    return FM_OK;
}

fm_status fm_model_forward(fm_model *m, const int32_t *tokens, int n, int32_t pos0, float *logits) {
    const fm_model_config *c = &m->cfg;
    if (n < 1) return fm_err(m->ctx, FM_EINVAL, "forward: %d tokens, expected at least 1", n);
    if (pos0 < 0 || (int64_t)pos0 + n > m->max_seq)
        return fm_err(m->ctx, FM_EINVAL,
                      "forward: positions %d..%lld are past the KV cache size (%d tokens; --max-seq sets it)", pos0,
                      (long long)pos0 + n - 1, m->max_seq);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return fm_err(m->ctx, FM_EINVAL, "forward: token %d (index %d) is outside the vocabulary [0, %d)",
                          tokens[i], i, c->vocab_size);
    msess *q;
    fm_status s = session_for(m, n, &q);
    if (s != FM_OK) return s;
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    if (!pos) return fm_err(m->ctx, FM_ENOMEM, "forward: out of memory");
    for (int i = 0; i < n; i++) pos[i] = pos0 + i;
    s = fm_session_set_input(q->s, q->ids, tokens, (size_t)n * 4);
    if (s == FM_OK) s = fm_session_set_input(q->s, q->pos, pos, (size_t)n * 4);
    free(pos);
    if (s == FM_OK) s = fm_session_run(q->s);
    if (s != FM_OK) return s;
    if (pos0 + n > m->filled) m->filled = pos0 + n;
    for (int i = 0; i < fm_session_node_count(q->s); i++) {
        fm_node_stat st;
        fm_session_node_stat(q->s, i, &st);
        fm_op_time *o = &m->stats[(size_t)st.op * (size_t)m->ctx->n_be + (size_t)st.backend_index];
        o->time_ns += st.time_ns;
        o->cycles += st.cycles;
        o->nodes++;
    }
    if (logits) return fm_session_read(q->s, q->logits, logits, (size_t)n * (size_t)c->vocab_size * sizeof(float));
    return FM_OK;
}

fm_status fm_model_read(fm_model *m, const char *name, void *dst, int64_t count) {
    const fm_model_config *c = &m->cfg;
    int l, k = 0;
    char what[32];
    if (sscanf(name, "layers.%d.%31s%n", &l, what, &k) == 2 && (!strcmp(what, "kv_cache") || !strcmp(what, "pe_cache"))) {
        if (l < 0 || l >= c->num_hidden_layers) return fm_err(m->ctx, FM_ENOTFOUND, "model: no layer %d", l);
        int64_t row = (int64_t)c->kv_lora_rank + c->qk_rope_head_dim, w = what[0] == 'k' ? c->kv_lora_rank : c->qk_rope_head_dim;
        int64_t off = what[0] == 'k' ? 0 : c->kv_lora_rank;
        if (count != m->filled * w)
            return fm_err(m->ctx, FM_EINVAL, "model: '%s' holds %lld values, %lld asked", name,
                          (long long)(m->filled * w), (long long)count);
        /* the cache's rows as f32: a bf16 cache widened exactly */
        const fm_pl_tensor ct = {.dtype = m->cache_dtype, .ndim = 2, .ne = {m->max_seq, row}, .data = m->cache[l]};
        float *buf = malloc((size_t)row * sizeof *buf);
        if (!buf) return fm_err(m->ctx, FM_ENOMEM, "model: out of memory");
        for (int64_t t = 0; t < m->filled; t++) {
            fm_weight_row_f32(&ct, t, buf);
            memcpy((float *)dst + t * w, buf + off, (size_t)w * sizeof *buf);
        }
        free(buf);
        return FM_OK;
    }
    msess *q = &m->sess[m->last];
    if (!q->g) return fm_err(m->ctx, FM_EINVAL, "model: nothing to read before a forward");
    for (int i = 0; i < q->g->n_t; i++) {
        const fm_tensor *t = q->g->t[i];
        if (strcmp(t->name, name) != 0) continue;
        if (!t->output) return fm_err(m->ctx, FM_EINVAL, "model: '%s' is kept only with capture on", name);
        if (count != fm_tensor_nelem(t))
            return fm_err(m->ctx, FM_EINVAL, "model: '%s' holds %lld values, %lld asked", name,
                          (long long)fm_tensor_nelem(t), (long long)count);
        return fm_session_read(q->s, t, dst, fm_tensor_bytes(t));
    }
    return fm_err(m->ctx, FM_ENOTFOUND, "model: no intermediate named '%s'", name);
}

int fm_model_vocab(const fm_model *m) { return m->cfg.vocab_size; }
int fm_model_layers(const fm_model *m) { return m->cfg.num_hidden_layers; }
int32_t fm_model_max_seq(const fm_model *m) { return m->max_seq; }
const char *fm_model_describe(const fm_model *m) { return m->desc; }

int64_t fm_model_kv_bytes_per_token(const fm_model *m, int bf16) {
    return fm_config_kv_bytes_per_token(&m->cfg, bf16 ? fm_dtype_size(FM_BF16) : fm_dtype_size(m->cache_dtype));
}

fm_dtype fm_model_cache_dtype(const fm_model *m) { return m->cache_dtype; }

fm_op_time fm_model_op_time(const fm_model *m, fm_op op, int backend) {
    if ((unsigned)op >= FM_OP_COUNT || backend < 0 || backend >= m->ctx->n_be) return (fm_op_time){0};
    return m->stats[(size_t)op * (size_t)m->ctx->n_be + (size_t)backend];
}

void fm_model_reset_stats(fm_model *m) {
    memset(m->stats, 0, (size_t)FM_OP_COUNT * (size_t)m->ctx->n_be * sizeof *m->stats);
}
