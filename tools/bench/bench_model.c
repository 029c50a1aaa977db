/* bench_model.c - `fathom bench model`: a whole DeepSeek-V3-architecture model end
 * to end through the public model API (fm_model_load / fm_model_forward).
 *
 * With --model DIR it uses that checkpoint; without it, it writes a random-weight
 * checkpoint (config.json + model.safetensors, bf16 weights drawn bf16-exact,
 * sigmoid noaux_tc routing with a small correction bias) into a temporary folder,
 * of the shape the flags give, and deletes it afterwards.
 *
 * Ours: the model placed on --backend. Peer: the same checkpoint placed on the
 * `ref` backend (the reference kernels): no external whole-model peer exists here.
 * Each run resets the positions to 0, prefills --prompt-len tokens, then decodes
 * --decode tokens one at a time; prefill and decode are timed separately. The
 * contenders run interleaved (warmup rounds, then --runs rounds, order rotating,
 * 3 ms pause before each run); figures are medians. The ref backend is scalar and
 * single-threaded, so the peer prefills at most PEER_PROMPT tokens and decodes at
 * most PEER_DECODE steps, and the comparison is per token (docs/bench.md, model). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"
#include "fathom/fathom.h"
#include "safetensors.h"

/* ---- the generated checkpoint ---- */

typedef struct mshape {
    int H, L, dense, NH, qlora, kvlora, rope, nope, v, E, I, shared, DI, G, TG, K, V;
} mshape;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-52 - 1.0);
}

typedef struct gen {
    int n, cap;
    fm_st_entry *e;
    char (*names)[96];
    size_t bytes;
} gen;

static int gen_add(gen *g, const char *name, fm_dtype t, int64_t r, int64_t c) {
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 256;
        fm_st_entry *e = realloc(g->e, (size_t)cap * sizeof *e);
        if (!e) return -1;
        g->e = e;
        char(*nm)[96] = realloc(g->names, (size_t)cap * sizeof *nm);
        if (!nm) return -1;
        g->names = nm;
        g->cap = cap;
    }
    snprintf(g->names[g->n], sizeof g->names[g->n], "%s", name);
    fm_st_entry *e = &g->e[g->n++];
    memset(e, 0, sizeof *e);
    e->dtype = t;
    e->ndim = c ? 2 : 1;
    e->ne[0] = r;
    e->ne[1] = c;
    g->bytes += (size_t)(r * (c ? c : 1)) * fm_st_dtype_size(t);
    return 0;
}

static void gen_free(gen *g) {
    free(g->e);
    free(g->names);
}

/* The tensor list of a DeepSeek-V3 checkpoint of shape s (names as Hugging Face). */
static int gen_list(gen *g, const mshape *s) {
    int64_t H = s->H, qk = s->nope + s->rope;
    char n[96], p[48];
    int bad = gen_add(g, "model.embed_tokens.weight", FM_BF16, s->V, H);
    bad |= gen_add(g, "model.norm.weight", FM_BF16, H, 0);
    bad |= gen_add(g, "lm_head.weight", FM_BF16, s->V, H);
#define ADD(suffix, t, r, c) (snprintf(n, sizeof n, "%s.%s", p, suffix), bad |= gen_add(g, n, t, r, c))
    for (int l = 0; l < s->L; l++) {
        snprintf(p, sizeof p, "model.layers.%d", l);
        ADD("input_layernorm.weight", FM_BF16, H, 0);
        ADD("post_attention_layernorm.weight", FM_BF16, H, 0);
        if (s->qlora) {
            ADD("self_attn.q_a_proj.weight", FM_BF16, s->qlora, H);
            ADD("self_attn.q_a_layernorm.weight", FM_BF16, s->qlora, 0);
            ADD("self_attn.q_b_proj.weight", FM_BF16, s->NH * qk, s->qlora);
        } else {
            ADD("self_attn.q_proj.weight", FM_BF16, s->NH * qk, H);
        }
        ADD("self_attn.kv_a_proj_with_mqa.weight", FM_BF16, s->kvlora + s->rope, H);
        ADD("self_attn.kv_a_layernorm.weight", FM_BF16, s->kvlora, 0);
        ADD("self_attn.kv_b_proj.weight", FM_BF16, (int64_t)s->NH * (s->nope + s->v), s->kvlora);
        ADD("self_attn.o_proj.weight", FM_BF16, H, (int64_t)s->NH * s->v);
        if (l >= s->dense) {
            ADD("mlp.gate.weight", FM_BF16, s->E, H);
            ADD("mlp.gate.e_score_correction_bias", FM_F32, s->E, 0);
            for (int e = 0; e < s->E; e++) {
                char q[96];
                snprintf(q, sizeof q, "mlp.experts.%d.gate_proj.weight", e), ADD(q, FM_BF16, s->I, H);
                snprintf(q, sizeof q, "mlp.experts.%d.up_proj.weight", e), ADD(q, FM_BF16, s->I, H);
                snprintf(q, sizeof q, "mlp.experts.%d.down_proj.weight", e), ADD(q, FM_BF16, H, s->I);
            }
            if (s->shared) {
                int64_t SI = (int64_t)s->shared * s->I;
                ADD("mlp.shared_experts.gate_proj.weight", FM_BF16, SI, H);
                ADD("mlp.shared_experts.up_proj.weight", FM_BF16, SI, H);
                ADD("mlp.shared_experts.down_proj.weight", FM_BF16, H, SI);
            }
        } else {
            ADD("mlp.gate_proj.weight", FM_BF16, s->DI, H);
            ADD("mlp.up_proj.weight", FM_BF16, s->DI, H);
            ADD("mlp.down_proj.weight", FM_BF16, H, s->DI);
        }
    }
#undef ADD
    return bad ? -1 : 0;
}

static int write_config(const char *path, const mshape *s) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n"
            "  \"hidden_act\": \"silu\",\n  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n"
            "  \"intermediate_size\": %d,\n  \"moe_intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
            "  \"first_k_dense_replace\": %d,\n  \"moe_layer_freq\": 1,\n  \"num_attention_heads\": %d,\n"
            "  \"num_key_value_heads\": %d,\n  \"q_lora_rank\": %d,\n  \"kv_lora_rank\": %d,\n"
            "  \"qk_nope_head_dim\": %d,\n  \"qk_rope_head_dim\": %d,\n  \"v_head_dim\": %d,\n"
            "  \"n_routed_experts\": %d,\n  \"n_shared_experts\": %d,\n  \"num_experts_per_tok\": %d,\n"
            "  \"n_group\": %d,\n  \"topk_group\": %d,\n  \"topk_method\": \"noaux_tc\",\n"
            "  \"scoring_func\": \"sigmoid\",\n  \"norm_topk_prob\": true,\n  \"routed_scaling_factor\": 2.5,\n"
            "  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n  \"rope_scaling\": null,\n"
            "  \"max_position_embeddings\": 4096,\n  \"tie_word_embeddings\": false,\n"
            "  \"num_nextn_predict_layers\": 0,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
            s->V, s->H, s->DI, s->I, s->L, s->dense, s->NH, s->NH, s->qlora, s->kvlora, s->nope, s->rope, s->v, s->E,
            s->shared, s->K, s->G, s->TG);
    return fclose(f) ? -1 : 0;
}

/* Writes dir/config.json and dir/model.safetensors. Matrices are uniform with unit
 * output variance (amplitude sqrt(3 / fan_in)), the embedding uniform in [-1, 1),
 * norms 1, the routing bias uniform in [-0.01, 0.01); every value bf16-exact. */
static int generate(const char *dir, const mshape *s, size_t *bytes, char *why, size_t whyn) {
    char path[1200], err[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (write_config(path, s)) {
        snprintf(why, whyn, "cannot write %s", path);
        return -1;
    }
    gen g = {0};
    uint8_t *buf = NULL;
    int rc = -1;
    if (gen_list(&g, s)) {
        snprintf(why, whyn, "out of memory");
        goto out;
    }
    if (!(buf = malloc(g.bytes ? g.bytes : 1))) {
        snprintf(why, whyn, "out of memory (%zu bytes of weights)", g.bytes);
        goto out;
    }
    size_t off = 0;
    for (int i = 0; i < g.n; i++) {
        fm_st_entry *e = &g.e[i];
        e->name = g.names[i];
        e->data = buf + off;
        int64_t cnt = e->ne[0] * (e->ndim == 2 ? e->ne[1] : 1);
        off += (size_t)cnt * fm_st_dtype_size(e->dtype);
        if (e->dtype == FM_F32) { /* the routing correction bias */
            float *d = (float *)e->data;
            for (int64_t j = 0; j < cnt; j++) d[j] = fm_bf16_to_f32(fm_f32_to_bf16(0.01f * frand()));
            continue;
        }
        uint16_t *d = (uint16_t *)e->data;
        if (e->ndim == 1) { /* norm weights */
            for (int64_t j = 0; j < cnt; j++) d[j] = 0x3f80;
            continue;
        }
        float amp = strstr(e->name, "embed_tokens") ? 1.0f : sqrtf(3.0f / (float)e->ne[1]);
        for (int64_t j = 0; j < cnt; j++) {
            float v = frand() * amp;
            uint32_t u;
            memcpy(&u, &v, 4);
            d[j] = (uint16_t)(u >> 16); /* truncation: the value is exactly this bf16 */
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt", "generator", "fathom bench model (random weights)"};
    if (fm_st_write(path, g.n, g.e, 2, meta, err, sizeof err) != FM_OK) {
        snprintf(why, whyn, "%s", err);
        goto out;
    }
    *bytes = g.bytes;
    rc = 0;
out:
    free(buf);
    gen_free(&g);
    return rc;
}

static void remove_dir(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

/* ---- the runs ---- */

typedef struct contender {
    fm_model *m;
    int P, D;                  /* prompt tokens, decode steps */
    const int32_t *prompt, *dec;
    double t_pre, t_dec;       /* last run */
    int nb;                    /* backends in the context */
    fm_op_time *snap;          /* [FM_OP_COUNT * nb] scratch */
    double *ops_pre, *ops_dec; /* accumulated ns over timed runs, [FM_OP_COUNT * nb] */
    uint64_t *nodes;           /* accumulated nodes */
    int accumulate;
} contender;

static void snapshot(contender *c, fm_op_time *t) {
    for (int op = 0; op < FM_OP_COUNT; op++)
        for (int b = 0; b < c->nb; b++) t[op * c->nb + b] = fm_model_op_time(c->m, (fm_op)op, b);
}

/* One run: positions back to 0, prefill, then decode; the op table is read
 * between the timed parts. */
static int run_one(contender *c) {
    fm_model_reset_stats(c->m);
    double a = bench_now();
    if (fm_model_forward(c->m, c->prompt, c->P, 0, NULL) != FM_OK) return -1;
    double b = bench_now();
    if (c->accumulate) snapshot(c, c->snap);
    double d0 = bench_now();
    for (int i = 0; i < c->D; i++)
        if (fm_model_forward(c->m, c->dec + i, 1, c->P + i, NULL) != FM_OK) return -1;
    double d1 = bench_now();
    c->t_pre = b - a;
    c->t_dec = d1 - d0;
    if (c->accumulate) {
        for (int op = 0; op < FM_OP_COUNT; op++)
            for (int k = 0; k < c->nb; k++) {
                int i = op * c->nb + k;
                fm_op_time t = fm_model_op_time(c->m, (fm_op)op, k);
                c->ops_pre[i] += (double)c->snap[i].time_ns;
                c->ops_dec[i] += (double)(t.time_ns - c->snap[i].time_ns);
                c->nodes[i] += t.nodes;
            }
    }
    return 0;
}

static double max_rel_diff(const float *a, const float *b, size_t n, int *nonfinite) {
    double d = 0, mx = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            (*nonfinite)++;
            continue;
        }
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return mx > 0 ? d / mx : d;
}

/* Appends to a fixed buffer, never past its end. */
static void cat(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cat(char *buf, size_t n, const char *fmt, ...) {
    size_t l = strlen(buf);
    if (l + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + l, n - l, fmt, ap);
    va_end(ap);
}

#define PEER_PROMPT 16
#define PEER_DECODE 8

static int pick(int v, int def) { return v >= 0 ? v : def; }

int bench_model(const bench_opts *o) {
    mshape s = {.H = pick(o->hidden, 1024), .L = pick(o->layers, 4), .dense = pick(o->dense_layers, 1),
                .NH = o->heads, .qlora = pick(o->q_lora, 384), .kvlora = o->kv_lora, .rope = o->rope,
                .nope = o->nope, .v = o->vdim, .E = pick(o->experts, 32), .I = pick(o->inter, 352),
                .shared = pick(o->shared, 1), .G = pick(o->groups, 4), .TG = pick(o->topk_groups, 2),
                .K = pick(o->active, 6), .V = pick(o->vocab, 8192)};
    s.DI = pick(o->dense_inter, (s.K + s.shared) * s.I);
    int P = pick(o->prompt_len, 128), D = pick(o->decode, 32);
    if (P < 1 || D < 1) {
        fprintf(stderr, "fathom bench model: --prompt-len and --decode must be >= 1\n");
        return 2;
    }
    if (!o->model && (s.H < 1 || s.L < 1 || s.dense < 0 || s.dense > s.L || s.NH < 1 || s.qlora < 0 ||
                      s.kvlora < 1 || s.rope < 2 || s.rope % 2 || s.nope < 1 || s.v < 1 || s.E < 1 || s.I < 1 ||
                      s.shared < 0 || s.DI < 1 || s.G < 1 || s.E % s.G || s.TG < 1 || s.TG > s.G || s.K < 1 ||
                      s.K > s.TG * (s.E / s.G) || s.V < 2)) {
        fprintf(stderr, "fathom bench model: inconsistent shape (--experts divisible by --groups, --topk-groups <= "
                        "--groups, --active <= topk_groups x experts per group, even --rope, --dense-layers <= "
                        "--layers)\n");
        return 2;
    }
    if (o->direct) fprintf(stderr, "fathom bench model: --direct ignored (the model runs through the public API)\n");
    if (o->dtype != FM_F32 || o->act_quant >= 0)
        fprintf(stderr, "fathom bench model: --dtype/--act-quant ignored (the checkpoint's dtype is used; "
                        "the generated one is bf16)\n");

    int rc = 1, nt = bench_threads_effective(o);
    char tmp[1024] = "", why[1024] = "";
    const char *dir = o->model;
    size_t gen_bytes = 0;
    fm_ctx *ctx = NULL;
    fm_model *mo = NULL, *mp = NULL;
    fm_st *st = NULL;
    int32_t *prompt = NULL, *dec = NULL;
    float *lo = NULL, *lp = NULL;
    contender co = {0}, cp = {0};

    if (!dir) {
        const char *td = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/fathom-bench-model-XXXXXX", td && *td ? td : "/tmp");
        if (!mkdtemp(tmp)) {
            fprintf(stderr, "fathom bench model: cannot create a temporary folder %s\n", tmp);
            tmp[0] = 0;
            return 1;
        }
        bench_progress("generating a random-weight checkpoint in %s", tmp);
        double t0 = bench_now();
        if (generate(tmp, &s, &gen_bytes, why, sizeof why)) {
            fprintf(stderr, "fathom bench model: generating the checkpoint: %s\n", why);
            goto out;
        }
        bench_progress("%.0f MiB of bf16 weights written in %.1f s", gen_bytes / 1048576.0, bench_now() - t0);
        dir = tmp;
    }

    /* bytes read per decode token: every weight except the embedding table (one row)
     * and the routed experts (top-k of them per MoE layer, i.e. k / E of their bytes) */
    char cpath[1200];
    fm_model_config cfg;
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    if (fm_config_load(cpath, &cfg, why, sizeof why) != FM_OK) {
        fprintf(stderr, "fathom bench model: %s\n", why);
        goto out;
    }
    if (fm_st_open(dir, &st, why, sizeof why) != FM_OK) {
        fprintf(stderr, "fathom bench model: %s\n", why);
        goto out;
    }
    double w_total = 0, w_experts = 0, w_embed = 0;
    for (int i = 0; i < fm_st_count(st); i++) {
        const fm_st_tensor *t = fm_st_at(st, i);
        w_total += (double)t->nbytes;
        if (strstr(t->name, ".mlp.experts.")) w_experts += (double)t->nbytes;
        if (strstr(t->name, "embed_tokens")) w_embed += (double)t->nbytes;
    }
    fm_st_close(st);
    st = NULL;
    double w_token = w_total - w_experts - w_embed + w_embed / cfg.vocab_size +
                     (cfg.n_routed_experts ? w_experts * cfg.num_experts_per_tok / cfg.n_routed_experts : 0);

    if (fm_ctx_init(&ctx) != FM_OK) {
        fprintf(stderr, "fathom bench model: fm_ctx_init failed\n");
        goto out;
    }
    int bi = fm_backend_find(ctx, o->backend);
    fm_backend_info info;
    if (bi < 0 || fm_backend_info_get(ctx, bi, &info) != FM_OK) {
        fprintf(stderr, "fathom bench model: backend %s not found (FATHOM_PLUGIN_PATH or plugins/ beside the "
                        "executable)\n", o->backend);
        goto out;
    }
    if (info.status != FM_BACKEND_READY) {
        fprintf(stderr, "fathom bench model: backend %s not ready: %s\n", o->backend, info.reason);
        goto out;
    }
    if (o->threads > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", o->threads);
        if (fm_backend_control(ctx, o->backend, "threads", v) != FM_OK)
            fprintf(stderr, "fathom bench model: backend %s: threads=%s: %s\n", o->backend, v, fm_ctx_error(ctx));
    }
    if (o->isa && fm_backend_control(ctx, o->backend, "isa", o->isa) != FM_OK) {
        fprintf(stderr, "fathom bench model: backend %s: isa=%s: %s\n", o->backend, o->isa, fm_ctx_error(ctx));
        goto out;
    }
    fm_backend_info_get(ctx, bi, &info);
    char device[256];
    snprintf(device, sizeof device, "%s", info.device && *info.device ? info.device : info.name);

    /* The peer (scalar, one thread) is slow: it prefills at most PEER_PROMPT tokens and
     * decodes at most PEER_DECODE steps; its figures are per token, like ours. */
    int PP = P < PEER_PROMPT ? P : PEER_PROMPT, PD = D < PEER_DECODE ? D : PEER_DECODE;
    fm_model_options mopt = {.max_seq = P + D, .attn = FM_ATTN_AUTO, .act_quant = -1, .backends = o->backend};
    bench_progress("loading %s on %s and on ref", dir, o->backend);
    if (fm_model_load(ctx, dir, &mopt, &mo) != FM_OK) {
        fprintf(stderr, "fathom bench model: cannot load '%s': %s\n", dir, fm_ctx_error(ctx));
        goto out;
    }
    mopt.backends = "ref";
    if (fm_model_load(ctx, dir, &mopt, &mp) != FM_OK) {
        fprintf(stderr, "fathom bench model: cannot load '%s' for ref: %s\n", dir, fm_ctx_error(ctx));
        goto out;
    }
    int V = fm_model_vocab(mo), nb = fm_backend_count(ctx);
    prompt = malloc((size_t)P * sizeof *prompt);
    dec = malloc((size_t)D * sizeof *dec);
    lo = malloc((size_t)PP * (size_t)V * sizeof *lo);
    lp = malloc((size_t)PP * (size_t)V * sizeof *lp);
    size_t tn = (size_t)FM_OP_COUNT * (size_t)nb;
    co = (contender){.m = mo, .P = P, .D = D, .nb = nb, .snap = calloc(tn, sizeof(fm_op_time)),
                     .ops_pre = calloc(tn, sizeof(double)), .ops_dec = calloc(tn, sizeof(double)),
                     .nodes = calloc(tn, sizeof(uint64_t))};
    cp = (contender){.m = mp, .P = PP, .D = PD, .nb = nb, .snap = calloc(tn, sizeof(fm_op_time)),
                     .ops_pre = calloc(tn, sizeof(double)), .ops_dec = calloc(tn, sizeof(double)),
                     .nodes = calloc(tn, sizeof(uint64_t))};
    if (!prompt || !dec || !lo || !lp || !co.snap || !co.ops_pre || !co.ops_dec || !co.nodes || !cp.snap ||
        !cp.ops_pre || !cp.ops_dec || !cp.nodes) {
        fprintf(stderr, "fathom bench model: out of memory\n");
        goto out;
    }
    for (int i = 0; i < P; i++) prompt[i] = (int32_t)((i * 7919 + 1) % V);
    for (int i = 0; i < D; i++) dec[i] = (int32_t)((i * 104729 + 17) % V);
    co.prompt = cp.prompt = prompt;
    co.dec = cp.dec = dec;

    /* Check (untimed): prefill logits of both on the peer's prompt (causal, so the
     * same rows as within the longer prompt), and where ours ran. */
    bench_progress("check: prefill %d tokens on %s and on ref", PP, o->backend);
    if (fm_model_forward(mo, prompt, PP, 0, lo) != FM_OK) {
        fprintf(stderr, "fathom bench model: %s: prefill: %s\n", o->backend, fm_ctx_error(ctx));
        goto out;
    }
    if (fm_model_forward(mp, prompt, PP, 0, lp) != FM_OK) {
        fprintf(stderr, "fathom bench model: ref: prefill: %s\n", fm_ctx_error(ctx));
        goto out;
    }
    int nonfinite = 0;
    double diff = max_rel_diff(lo, lp, (size_t)PP * (size_t)V, &nonfinite);
    uint64_t elsewhere = 0; /* nodes per run of ours on another backend, counted over the timed runs */

    bench_report r = {.bench = "model", .unit = "tok/s", .threads = nt, .runs = o->runs,
                      .peer_name = "ref backend (reference kernels; no external whole-model peer here)",
                      .mode = "public API, fm_model", .device = device};
    if (o->model)
        snprintf(r.shape, sizeof r.shape, "%s, prompt %d, decode %d", dir, P, D);
    else
        snprintf(r.shape, sizeof r.shape,
                 "generated bf16: hidden=%d layers=%d (%d dense) heads=%d q_lora=%d kv_lora=%d rope=%d nope=%d "
                 "v=%d experts=%dx%d+%d shared top-%d (groups %d, top %d) vocab=%d; prompt %d, decode %d",
                 s.H, s.L, s.dense, s.NH, s.qlora, s.kvlora, s.rope, s.nope, s.v, s.E, s.I, s.shared, s.K, s.G,
                 s.TG, s.V, P, D);
    bench_probes(o, &r);

    /* interleaved runs */
    contender *cs[2] = {&co, &cp};
    double *tp[2], *td[2];
    for (int c = 0; c < 2; c++) {
        tp[c] = calloc((size_t)o->runs, sizeof(double));
        td[c] = calloc((size_t)o->runs, sizeof(double));
    }
    if (!tp[0] || !tp[1] || !td[0] || !td[1]) {
        fprintf(stderr, "fathom bench model: out of memory\n");
        for (int c = 0; c < 2; c++) free(tp[c]), free(td[c]);
        goto out;
    }
    int failed = 0;
    for (int w = 0; w < o->warmup && !failed; w++)
        for (int c = 0; c < 2 && !failed; c++) failed = run_one(cs[c]);
    co.accumulate = cp.accumulate = 1;
    bench_progress("interleaving ours (prefill %d, decode %d) and ref (prefill %d, decode %d), %d runs each", P, D,
                   PP, PD, o->runs);
    double t0 = bench_now(), last = t0;
    for (int k = 0; k < o->runs && !failed; k++) {
        for (int i = 0; i < 2 && !failed; i++) {
            int c = (i + k) % 2;
            struct timespec gap = {0, 3000000};
            nanosleep(&gap, NULL);
            if ((failed = run_one(cs[c])) != 0) break;
            tp[c][k] = cs[c]->t_pre;
            td[c][k] = cs[c]->t_dec;
        }
        if (bench_now() - last > 2.0) {
            last = bench_now();
            bench_progress("round %d of %d (%.0f s)", k + 1, o->runs, last - t0);
        }
    }
    if (failed) {
        fprintf(stderr, "fathom bench model: run failed: %s\n", fm_ctx_error(ctx));
        for (int c = 0; c < 2; c++) free(tp[c]), free(td[c]);
        goto out;
    }
    double pre[2], dcd[2];
    for (int c = 0; c < 2; c++) {
        pre[c] = bench_median(tp[c], o->runs);
        dcd[c] = bench_median(td[c], o->runs);
        free(tp[c]);
        free(td[c]);
    }
    elsewhere = 0;
    for (int op = 0; op < FM_OP_COUNT; op++)
        for (int b = 0; b < nb; b++)
            if (b != bi) elsewhere += co.nodes[(size_t)op * nb + b] / (uint64_t)o->runs;
    if (elsewhere)
        fprintf(stderr, "fathom bench model: warning: %llu node(s) per run of ours ran on another backend than %s "
                        "(see the op table)\n", (unsigned long long)elsewhere, o->backend);
    double pre_o = P / pre[0], pre_p = PP / pre[1], dec_o = D / dcd[0], dec_p = PD / dcd[1];
    r.ours = dec_o;
    r.peer = dec_p;
    r.ratio = dec_p > 0 ? dec_o / dec_p : 0;
    int64_t kv = fm_model_kv_bytes_per_token(mo, 0), kv16 = fm_model_kv_bytes_per_token(mo, 1);
    double wbw = w_token * dec_o / 1e9;

    cat(r.extra_text, sizeof r.extra_text, "  prefill ours %10.2f tok/s  (%d tokens, %.2f ms)\n", pre_o, P,
        pre[0] * 1e3);
    cat(r.extra_text, sizeof r.extra_text, "  prefill peer %10.2f tok/s  (%d tokens, %.2f ms, ref)\n", pre_p, PP,
        pre[1] * 1e3);
    cat(r.extra_text, sizeof r.extra_text, "  prefill ratio%10.3f x   (ours / peer)\n", pre_p > 0 ? pre_o / pre_p : 0);
    cat(r.extra_text, sizeof r.extra_text,
        "  decode       ours %d steps at positions %d..%d, %.3f ms/token; ref %d steps, %.3f ms/token\n", D, P,
        P + D - 1, dcd[0] * 1e3 / D, PD, dcd[1] * 1e3 / PD);
    cat(r.extra_text, sizeof r.extra_text,
        "  weights      %.1f MiB in all, %.1f MiB read per decode token -> %.2f GB/s (%.0f%% of the BW probe)\n",
        w_total / 1048576.0, w_token / 1048576.0, wbw, r.bw > 0 ? 100.0 * wbw / r.bw : 0);
    cat(r.extra_text, sizeof r.extra_text,
        "  KV cache     %lld bytes/token as stored (f32), %lld bytes/token in bf16 (%d layers)\n", (long long)kv,
        (long long)kv16, fm_model_layers(mo));
    cat(r.extra_text, sizeof r.extra_text, "  check        prefill logits max |ours - ref| / max |ref| = %.3g%s\n",
        diff, nonfinite ? " (NON-FINITE VALUES)" : "");
    if (elsewhere)
        cat(r.extra_text, sizeof r.extra_text, "  WARNING      %llu node(s) per run of ours ran elsewhere than %s\n",
            (unsigned long long)elsewhere, o->backend);

    cat(r.extra_json, sizeof r.extra_json,
        ", \"decode_ours_tok_s\": %.6g, \"decode_peer_tok_s\": %.6g, \"prefill_ours_tok_s\": %.6g, "
        "\"prefill_peer_tok_s\": %.6g, \"prefill_ratio\": %.4f, \"prefill_ours_ms\": %.4f, \"prefill_peer_ms\": %.4f, "
        "\"decode_ours_ms_per_token\": %.4f, \"decode_peer_ms_per_token\": %.4f, \"prompt_len\": %d, "
        "\"decode_steps\": %d, \"peer_prompt_len\": %d, \"peer_decode_steps\": %d, \"generated\": %s, "
        "\"weight_bytes\": %.0f, \"decode_weight_bytes_per_token\": %.0f, \"decode_weight_gbs\": %.4g, "
        "\"fraction_of_bw_probe\": %.4f, \"kv_bytes_per_token\": %lld, \"kv_bytes_per_token_bf16\": %lld, "
        "\"max_rel_diff_vs_peer\": %.4g, \"nonfinite_logits\": %d, \"nodes_elsewhere\": %llu",
        dec_o, dec_p, pre_o, pre_p, pre_p > 0 ? pre_o / pre_p : 0, pre[0] * 1e3, pre[1] * 1e3, dcd[0] * 1e3 / D,
        dcd[1] * 1e3 / PD, P, D, PP, PD, o->model ? "false" : "true", w_total, w_token, wbw,
        r.bw > 0 ? wbw / r.bw : 0, (long long)kv, (long long)kv16, diff, nonfinite, (unsigned long long)elsewhere);
    /* per-op table of ours, per run */
    cat(r.extra_json, sizeof r.extra_json, ", \"ops\": [");
    double tot_pre = 0, tot_dec = 0;
    for (size_t i = 0; i < tn; i++) tot_pre += co.ops_pre[i], tot_dec += co.ops_dec[i];
    int first = 1;
    for (int op = 0; op < FM_OP_COUNT; op++)
        for (int b = 0; b < nb; b++) {
            size_t i = (size_t)op * nb + b;
            if (!co.nodes[i]) continue;
            fm_backend_info bo;
            fm_backend_info_get(ctx, b, &bo);
            cat(r.extra_json, sizeof r.extra_json,
                "%s{\"op\": \"%s\", \"backend\": \"%s\", \"nodes\": %llu, \"prefill_ms\": %.4f, \"decode_ms\": %.4f}",
                first ? "" : ", ", fm_op_name((fm_op)op), bo.name, (unsigned long long)(co.nodes[i] / o->runs),
                co.ops_pre[i] / o->runs / 1e6, co.ops_dec[i] / o->runs / 1e6);
            first = 0;
        }
    cat(r.extra_json, sizeof r.extra_json, "]");
    bench_print(o, &r);
    if (!o->json) {
        printf("  per op, ours (mean per run; decode = all %d steps):\n", D);
        printf("    %-12s %-8s %7s %12s %7s %12s %7s\n", "op", "backend", "nodes", "prefill ms", "share", "decode ms",
               "share");
        for (int op = 0; op < FM_OP_COUNT; op++)
            for (int b = 0; b < nb; b++) {
                size_t i = (size_t)op * nb + b;
                if (!co.nodes[i]) continue;
                fm_backend_info bo;
                fm_backend_info_get(ctx, b, &bo);
                printf("    %-12s %-8s %7llu %12.3f %6.1f%% %12.3f %6.1f%%\n", fm_op_name((fm_op)op), bo.name,
                       (unsigned long long)(co.nodes[i] / o->runs), co.ops_pre[i] / o->runs / 1e6,
                       tot_pre > 0 ? 100.0 * co.ops_pre[i] / tot_pre : 0, co.ops_dec[i] / o->runs / 1e6,
                       tot_dec > 0 ? 100.0 * co.ops_dec[i] / tot_dec : 0);
            }
        printf("  peer = the same checkpoint on the ref backend (scalar, one thread): no external whole-model\n"
               "  peer exists here; it decodes %d of the %d steps, and the figures are per token.\n",
               PD, D);
        fflush(stdout);
    }
    rc = 0;
out:
    fm_model_free(mo);
    fm_model_free(mp);
    fm_ctx_free(ctx);
    fm_st_close(st);
    free(prompt), free(dec), free(lo), free(lp);
    free(co.snap), free(co.ops_pre), free(co.ops_dec), free(co.nodes);
    free(cp.snap), free(cp.ops_pre), free(cp.ops_dec), free(cp.nodes);
    if (tmp[0]) remove_dir(tmp);
    return rc;
}
