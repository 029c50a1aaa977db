/* config.c - Hugging Face DeepSeek-V2/V3 config.json: parse, validate, derive. */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cfg_ctx {
    const char *origin;
    char       *err;
    size_t      err_size;
} cfg_ctx;

__attribute__((format(printf, 3, 4)))
static fm_status cfg_fail(const cfg_ctx *c, const char *field, const char *fmt, ...)
{
    if (c->err && c->err_size) {
        int n = snprintf(c->err, c->err_size, "%s: field '%s': ", c->origin, field);
        if (n >= 0 && (size_t)n < c->err_size) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + n, c->err_size - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return FM_EINVAL;
}

static const char *cfg_type_name(const cJSON *j)
{
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsNull(j)) return "null";
    return "an invalid value";
}

/* Field lookup. Returns NULL when absent or (if null_is_absent) null. */
static const cJSON *cfg_item(const cJSON *obj, const char *key, int null_is_absent)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (j && null_is_absent && cJSON_IsNull(j))
        return NULL;
    return j;
}

/* An integer field. required: absent (or null, if nullable) is an error; else
 * *out = def. label names the field in messages. */
static fm_status cfg_int(const cfg_ctx *c, const cJSON *obj, const char *key, const char *label,
                         int required, int nullable, int32_t def, int32_t *out)
{
    const cJSON *j = cfg_item(obj, key, nullable);
    if (!j) {
        if (required)
            return cfg_fail(c, label, "missing (required)");
        *out = def;
        return FM_OK;
    }
    if (!cJSON_IsNumber(j))
        return cfg_fail(c, label, "must be an integer, found %s", cfg_type_name(j));
    double v = j->valuedouble;
    if (!(v >= (double)INT32_MIN && v <= (double)INT32_MAX) || v != floor(v))
        return cfg_fail(c, label, "must be a 32-bit integer, found %g", v);
    *out = (int32_t)v;
    return FM_OK;
}

static fm_status cfg_num(const cfg_ctx *c, const cJSON *obj, const char *key, const char *label,
                         int required, double def, double *out)
{
    const cJSON *j = cfg_item(obj, key, 0);
    if (!j) {
        if (required)
            return cfg_fail(c, label, "missing (required)");
        *out = def;
        return FM_OK;
    }
    if (!cJSON_IsNumber(j))
        return cfg_fail(c, label, "must be a number, found %s", cfg_type_name(j));
    if (!isfinite(j->valuedouble))
        return cfg_fail(c, label, "must be finite");
    *out = j->valuedouble;
    return FM_OK;
}

static fm_status cfg_bool(const cfg_ctx *c, const cJSON *obj, const char *key, int def,
                          int32_t *out)
{
    const cJSON *j = cfg_item(obj, key, 0);
    if (!j) {
        *out = def;
        return FM_OK;
    }
    if (!cJSON_IsBool(j))
        return cfg_fail(c, key, "must be true or false, found %s", cfg_type_name(j));
    *out = cJSON_IsTrue(j) ? 1 : 0;
    return FM_OK;
}

/* A string field; *out is borrowed from the JSON tree (def when absent or null). */
static fm_status cfg_str(const cfg_ctx *c, const cJSON *obj, const char *key, const char *label,
                         const char *def, const char **out)
{
    const cJSON *j = cfg_item(obj, key, 1);
    if (!j) {
        *out = def;
        return FM_OK;
    }
    if (!cJSON_IsString(j))
        return cfg_fail(c, label, "must be a string, found %s", cfg_type_name(j));
    *out = j->valuestring;
    return FM_OK;
}

#define TRY(x)                \
    do {                      \
        fm_status s_ = (x);   \
        if (s_ != FM_OK)      \
            return s_;        \
    } while (0)

static fm_status cfg_parse_yarn(const cfg_ctx *c, const cJSON *root, fm_yarn_config *y)
{
    const cJSON *rs = cfg_item(root, "rope_scaling", 1);
    memset(y, 0, sizeof *y);
    if (!rs)
        return FM_OK;
    if (!cJSON_IsObject(rs))
        return cfg_fail(c, "rope_scaling", "must be an object or null, found %s",
                        cfg_type_name(rs));
    const char *type = NULL;
    const char *type_key = cfg_item(rs, "type", 1) ? "type" : "rope_type";
    char label[64];
    snprintf(label, sizeof label, "rope_scaling.%s", type_key);
    TRY(cfg_str(c, rs, type_key, label, NULL, &type));
    if (!type)
        return cfg_fail(c, "rope_scaling.type", "missing (required)");
    if (strcmp(type, "yarn") != 0)
        return cfg_fail(c, label, "'%s' is not supported (only \"yarn\")", type);

    y->enabled = 1;
    TRY(cfg_num(c, rs, "factor", "rope_scaling.factor", 1, 0, &y->factor));
    TRY(cfg_int(c, rs, "original_max_position_embeddings",
                "rope_scaling.original_max_position_embeddings", 1, 0, 0,
                &y->original_max_position_embeddings));
    TRY(cfg_num(c, rs, "beta_fast", "rope_scaling.beta_fast", 0, 32.0, &y->beta_fast));
    TRY(cfg_num(c, rs, "beta_slow", "rope_scaling.beta_slow", 0, 1.0, &y->beta_slow));
    TRY(cfg_num(c, rs, "mscale", "rope_scaling.mscale", 0, 1.0, &y->mscale));
    TRY(cfg_num(c, rs, "mscale_all_dim", "rope_scaling.mscale_all_dim", 0, 0.0,
                &y->mscale_all_dim));

    if (!(y->factor > 0))
        return cfg_fail(c, "rope_scaling.factor", "must be > 0, found %g", y->factor);
    if (y->original_max_position_embeddings <= 0)
        return cfg_fail(c, "rope_scaling.original_max_position_embeddings",
                        "must be > 0, found %d", (int)y->original_max_position_embeddings);
    if (!(y->beta_fast > 0) || !(y->beta_slow > 0))
        return cfg_fail(c, y->beta_fast > 0 ? "rope_scaling.beta_slow" : "rope_scaling.beta_fast",
                        "must be > 0, found %g",
                        y->beta_fast > 0 ? y->beta_slow : y->beta_fast);
    if (y->factor > 1 && y->mscale != y->mscale_all_dim)
        return cfg_fail(c, "rope_scaling.mscale",
                        "%g differs from mscale_all_dim %g: the cos/sin scaling this implies "
                        "is not supported", y->mscale, y->mscale_all_dim);
    return FM_OK;
}

static fm_status cfg_parse_quant(const cfg_ctx *c, const cJSON *root, fm_quant_config *q)
{
    const cJSON *qc = cfg_item(root, "quantization_config", 1);
    memset(q, 0, sizeof *q);
    if (!qc)
        return FM_OK;
    if (!cJSON_IsObject(qc))
        return cfg_fail(c, "quantization_config", "must be an object, found %s",
                        cfg_type_name(qc));
    const char *method = NULL, *fmt = NULL, *act = NULL, *scale_fmt = NULL;
    TRY(cfg_str(c, qc, "quant_method", "quantization_config.quant_method", NULL, &method));
    if (!method)
        return cfg_fail(c, "quantization_config.quant_method", "missing (required)");
    if (strcmp(method, "fp8") != 0)
        return cfg_fail(c, "quantization_config.quant_method",
                        "'%s' is not supported (only \"fp8\")", method);
    TRY(cfg_str(c, qc, "fmt", "quantization_config.fmt", "e4m3", &fmt));
    if (strcmp(fmt, "e4m3") != 0)
        return cfg_fail(c, "quantization_config.fmt", "'%s' is not supported (only \"e4m3\")",
                        fmt);
    TRY(cfg_str(c, qc, "activation_scheme", "quantization_config.activation_scheme", "dynamic",
                &act));
    if (strcmp(act, "dynamic") != 0)
        return cfg_fail(c, "quantization_config.activation_scheme",
                        "'%s' is not supported (only \"dynamic\")", act);
    TRY(cfg_str(c, qc, "scale_fmt", "quantization_config.scale_fmt", NULL, &scale_fmt));
    if (scale_fmt)
        return cfg_fail(c, "quantization_config.scale_fmt",
                        "'%s' is not supported (plain float32 scales only)", scale_fmt);

    const cJSON *bs = cfg_item(qc, "weight_block_size", 1);
    if (!bs)
        return cfg_fail(c, "quantization_config.weight_block_size",
                        "missing (per-tensor FP8 is not supported; expected [128, 128])");
    const cJSON *b0 = cJSON_IsArray(bs) ? cJSON_GetArrayItem(bs, 0) : NULL;
    const cJSON *b1 = cJSON_IsArray(bs) ? cJSON_GetArrayItem(bs, 1) : NULL;
    if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(b0) ||
        !cJSON_IsNumber(b1) || b0->valuedouble != 128 || b1->valuedouble != 128)
        return cfg_fail(c, "quantization_config.weight_block_size",
                        "only [128, 128] is supported");
    q->fp8 = 1;
    q->weight_block[0] = 128;
    q->weight_block[1] = 128;
    return FM_OK;
}

static fm_status cfg_read(const cfg_ctx *c, const cJSON *root, fm_model_config *m)
{
    /* Sizes without a safe default are required. */
    static const struct {
        const char *key;
        size_t off;
    } required[] = {
#define R(f) {#f, offsetof(fm_model_config, f)}
        R(vocab_size), R(hidden_size), R(intermediate_size), R(moe_intermediate_size),
        R(num_hidden_layers), R(num_attention_heads), R(kv_lora_rank), R(qk_nope_head_dim),
        R(qk_rope_head_dim), R(v_head_dim), R(n_routed_experts), R(num_experts_per_tok),
        R(max_position_embeddings),
#undef R
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        int32_t *f = (int32_t *)((char *)m + required[i].off);
        TRY(cfg_int(c, root, required[i].key, required[i].key, 1, 0, 0, f));
        if (*f <= 0)
            return cfg_fail(c, required[i].key, "must be > 0, found %d", (int)*f);
    }

    TRY(cfg_int(c, root, "q_lora_rank", "q_lora_rank", 0, 1, 0, &m->q_lora_rank));
    TRY(cfg_int(c, root, "n_shared_experts", "n_shared_experts", 0, 1, 0, &m->n_shared_experts));
    TRY(cfg_int(c, root, "first_k_dense_replace", "first_k_dense_replace", 0, 0, 0,
                &m->first_k_dense_replace));
    TRY(cfg_int(c, root, "num_nextn_predict_layers", "num_nextn_predict_layers", 0, 1, 0,
                &m->num_nextn_predict_layers));
    static const struct {
        const char *key;
        size_t off;
    } nonneg[] = {
        {"q_lora_rank", offsetof(fm_model_config, q_lora_rank)},
        {"n_shared_experts", offsetof(fm_model_config, n_shared_experts)},
        {"first_k_dense_replace", offsetof(fm_model_config, first_k_dense_replace)},
        {"num_nextn_predict_layers", offsetof(fm_model_config, num_nextn_predict_layers)},
    };
    for (size_t i = 0; i < sizeof nonneg / sizeof nonneg[0]; i++) {
        int32_t v = *(const int32_t *)((const char *)m + nonneg[i].off);
        if (v < 0)
            return cfg_fail(c, nonneg[i].key, "must be >= 0, found %d", (int)v);
    }
    TRY(cfg_int(c, root, "moe_layer_freq", "moe_layer_freq", 0, 0, 1, &m->moe_layer_freq));
    if (m->moe_layer_freq <= 0)
        return cfg_fail(c, "moe_layer_freq", "must be > 0, found %d", (int)m->moe_layer_freq);
    TRY(cfg_int(c, root, "n_group", "n_group", 0, 1, 1, &m->n_group));
    if (m->n_group <= 0)
        return cfg_fail(c, "n_group", "must be > 0, found %d", (int)m->n_group);
    TRY(cfg_int(c, root, "topk_group", "topk_group", 0, 1, 1, &m->topk_group));
    if (m->topk_group <= 0)
        return cfg_fail(c, "topk_group", "must be > 0, found %d", (int)m->topk_group);

    const char *s = NULL;
    TRY(cfg_str(c, root, "topk_method", "topk_method", "greedy", &s));
    if (strcmp(s, "greedy") == 0)
        m->topk_method = FM_TOPK_GREEDY;
    else if (strcmp(s, "group_limited_greedy") == 0)
        m->topk_method = FM_TOPK_GROUP_LIMITED;
    else if (strcmp(s, "noaux_tc") == 0)
        m->topk_method = FM_TOPK_NOAUX_TC;
    else
        return cfg_fail(c, "topk_method",
                        "'%s' is unknown (greedy, group_limited_greedy, noaux_tc)", s);
    TRY(cfg_str(c, root, "scoring_func", "scoring_func", "softmax", &s));
    if (strcmp(s, "softmax") == 0)
        m->scoring_func = FM_SCORE_SOFTMAX;
    else if (strcmp(s, "sigmoid") == 0)
        m->scoring_func = FM_SCORE_SIGMOID;
    else
        return cfg_fail(c, "scoring_func", "'%s' is unknown (softmax, sigmoid)", s);
    TRY(cfg_str(c, root, "hidden_act", "hidden_act", "silu", &s));
    if (strcmp(s, "silu") != 0)
        return cfg_fail(c, "hidden_act", "'%s' is not supported (only \"silu\")", s);
    TRY(cfg_str(c, root, "model_type", "model_type", "", &s));
    snprintf(m->model_type, sizeof m->model_type, "%s", s);

    TRY(cfg_bool(c, root, "norm_topk_prob", 0, &m->norm_topk_prob));
    TRY(cfg_bool(c, root, "tie_word_embeddings", 0, &m->tie_word_embeddings));

    TRY(cfg_num(c, root, "routed_scaling_factor", "routed_scaling_factor", 0, 1.0,
                &m->routed_scaling_factor));
    if (!(m->routed_scaling_factor > 0))
        return cfg_fail(c, "routed_scaling_factor", "must be > 0, found %g",
                        m->routed_scaling_factor);
    TRY(cfg_num(c, root, "rms_norm_eps", "rms_norm_eps", 0, 1e-6, &m->rms_norm_eps));
    if (!(m->rms_norm_eps > 0))
        return cfg_fail(c, "rms_norm_eps", "must be > 0, found %g", m->rms_norm_eps);
    TRY(cfg_num(c, root, "rope_theta", "rope_theta", 0, 10000.0, &m->rope_theta));
    if (!(m->rope_theta > 0))
        return cfg_fail(c, "rope_theta", "must be > 0, found %g", m->rope_theta);

    TRY(cfg_parse_yarn(c, root, &m->rope_scaling));
    TRY(cfg_parse_quant(c, root, &m->quant));
    return FM_OK;
}

/* Relations between fields, each reported on the field that would fix it. */
static fm_status cfg_check(const cfg_ctx *c, const fm_model_config *m)
{
    if (m->first_k_dense_replace > m->num_hidden_layers)
        return cfg_fail(c, "first_k_dense_replace", "%d exceeds num_hidden_layers %d",
                        (int)m->first_k_dense_replace, (int)m->num_hidden_layers);
    if (m->qk_rope_head_dim % 2 != 0)
        return cfg_fail(c, "qk_rope_head_dim", "%d is odd; RoPE rotates pairs",
                        (int)m->qk_rope_head_dim);
    if (m->n_routed_experts % m->n_group != 0)
        return cfg_fail(c, "n_group", "n_routed_experts %d is not divisible by n_group %d",
                        (int)m->n_routed_experts, (int)m->n_group);
    if (m->topk_group > m->n_group)
        return cfg_fail(c, "topk_group", "%d exceeds n_group %d", (int)m->topk_group,
                        (int)m->n_group);
    int32_t per_group = m->n_routed_experts / m->n_group;
    if (m->num_experts_per_tok > m->n_routed_experts)
        return cfg_fail(c, "num_experts_per_tok", "%d exceeds n_routed_experts %d",
                        (int)m->num_experts_per_tok, (int)m->n_routed_experts);
    if ((int64_t)m->num_experts_per_tok > (int64_t)m->topk_group * per_group)
        return cfg_fail(c, "num_experts_per_tok",
                        "%d exceeds the %d experts held by topk_group %d groups of %d",
                        (int)m->num_experts_per_tok, (int)(m->topk_group * per_group),
                        (int)m->topk_group, (int)per_group);
    /* noaux_tc scores a group by the sum of its two best experts. */
    if (m->topk_method == FM_TOPK_NOAUX_TC && m->n_group > 1 && per_group < 2)
        return cfg_fail(c, "n_group",
                        "noaux_tc needs at least 2 experts per group, n_group %d leaves %d",
                        (int)m->n_group, (int)per_group);
    return FM_OK;
}

fm_status fm_config_parse(const char *json, const char *origin, fm_model_config *cfg,
                          char *err, size_t err_size)
{
    cfg_ctx c = {origin ? origin : "config", err, err_size};
    if (err && err_size)
        err[0] = '\0';
    if (!cfg)
        return FM_EINVAL;
    memset(cfg, 0, sizeof *cfg);
    if (!json) {
        if (err && err_size)
            snprintf(err, err_size, "%s: no JSON text", c.origin);
        return FM_EINVAL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        if (err && err_size)
            snprintf(err, err_size, "%s: not valid JSON (error at byte %zu)", c.origin,
                     end ? (size_t)(end - json) : (size_t)0);
        return FM_EINVAL;
    }
    fm_status s;
    if (!cJSON_IsObject(root)) {
        if (err && err_size)
            snprintf(err, err_size, "%s: not a JSON object", c.origin);
        s = FM_EINVAL;
    } else {
        s = cfg_read(&c, root, cfg);
        if (s == FM_OK)
            s = cfg_check(&c, cfg);
    }
    cJSON_Delete(root);
    if (s != FM_OK)
        memset(cfg, 0, sizeof *cfg);
    return s;
}

fm_status fm_config_load(const char *path, fm_model_config *cfg, char *err, size_t err_size)
{
    if (cfg)
        memset(cfg, 0, sizeof *cfg);
    if (!path || !cfg) {
        if (err && err_size)
            snprintf(err, err_size, "fm_config_load: NULL argument");
        return FM_EINVAL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        if (err && err_size)
            snprintf(err, err_size, "%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? FM_ENOTFOUND : FM_EIO;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    fm_status s = FM_OK;
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= ((size_t)64 << 20)) {
                s = FM_EINVAL;
                if (err && err_size)
                    snprintf(err, err_size, "%s: too large for a config", path);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                s = FM_EIO;
                if (err && err_size)
                    snprintf(err, err_size, "%s: read failed", path);
            }
            break;
        }
    }
    fclose(f);
    if (!buf) {
        if (err && err_size)
            snprintf(err, err_size, "%s: out of memory", path);
        return FM_ENOMEM;
    }
    if (s == FM_OK) {
        buf[n] = '\0';
        if (strlen(buf) != n) {
            s = FM_EINVAL;
            if (err && err_size)
                snprintf(err, err_size, "%s: contains a NUL byte", path);
        } else {
            s = fm_config_parse(buf, path, cfg, err, err_size);
        }
    }
    free(buf);
    return s;
}

int64_t fm_config_kv_bytes_per_token(const fm_model_config *cfg, size_t dtype_size)
{
    return (int64_t)cfg->num_hidden_layers * (cfg->kv_lora_rank + cfg->qk_rope_head_dim) *
           (int64_t)dtype_size;
}

static int cfg_yarn_active(const fm_model_config *cfg)
{
    return cfg->rope_scaling.enabled && cfg->rope_scaling.factor > 1.0;
}

double fm_config_softmax_scale(const fm_model_config *cfg)
{
    double scale = 1.0 / sqrt((double)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim));
    if (cfg_yarn_active(cfg)) {
        double ms = 0.1 * cfg->rope_scaling.mscale_all_dim * log(cfg->rope_scaling.factor) + 1.0;
        scale *= ms * ms;
    }
    return scale;
}

void fm_config_rope_params(const fm_model_config *cfg, fm_rope_params *p)
{
    memset(p, 0, sizeof *p);
    p->head_dim = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    p->rope_off = cfg->qk_nope_head_dim;
    p->rope_dim = cfg->qk_rope_head_dim;
    p->theta = (float)cfg->rope_theta;
    p->yarn_factor = 1.0f;
    if (cfg_yarn_active(cfg)) {
        p->yarn_factor = (float)cfg->rope_scaling.factor;
        p->yarn_orig_max = cfg->rope_scaling.original_max_position_embeddings;
        p->yarn_beta_fast = (float)cfg->rope_scaling.beta_fast;
        p->yarn_beta_slow = (float)cfg->rope_scaling.beta_slow;
    }
}

void fm_config_route_params(const fm_model_config *cfg, fm_moe_route_params *p)
{
    memset(p, 0, sizeof *p);
    p->n_experts = cfg->n_routed_experts;
    p->top_k = cfg->num_experts_per_tok;
    p->n_group = cfg->n_group;
    p->topk_group = cfg->topk_group;
    p->scoring = cfg->scoring_func;
    p->method = cfg->topk_method;
    p->renorm = cfg->norm_topk_prob;
    p->scale = (float)cfg->routed_scaling_factor;
}

int fm_config_is_moe_layer(const fm_model_config *cfg, int layer)
{
    return layer >= cfg->first_k_dense_replace && layer % cfg->moe_layer_freq == 0;
}
