/* config.h - the Hugging Face config.json of a DeepSeek-V2/V3 model, parsed and
 * validated. Internal to core (and used by tools and tests).
 *
 * Errors: every fallible call returns fm_status and, unless err is NULL or
 * err_size is 0, writes one line into err naming the file (or the origin given
 * to fm_config_parse) and the field, e.g.
 * "config.json: field 'n_group': n_routed_experts 16 is not divisible by n_group 3".
 */
#ifndef FM_CONFIG_H
#define FM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "fathom/fathom.h"

/* rope_scaling of type "yarn" (the only type supported). With factor > 1,
 * mscale must equal mscale_all_dim: otherwise Hugging Face scales cos/sin by
 * their ratio while DeepSeek's reference does not, and fm_rope_params cannot
 * express it. */
typedef struct fm_yarn_config {
    int32_t enabled;                          /* 0: rope_scaling null or absent */
    double  factor;                           /* required */
    int32_t original_max_position_embeddings; /* required */
    double  beta_fast;                        /* default 32 */
    double  beta_slow;                        /* default 1 */
    double  mscale;                           /* default 1 */
    double  mscale_all_dim;                   /* default 0 */
} fm_yarn_config;

/* quantization_config: only the released DeepSeek-V3 FP8 scheme is accepted
 * (quant_method "fp8", fmt "e4m3", weight_block_size [128, 128], activation_scheme
 * "dynamic"); anything else is an error rather than silently ignored. */
typedef struct fm_quant_config {
    int32_t fp8;               /* 1: linear weights are F8_E4M3 with *_scale_inv */
    int32_t weight_block[2];   /* [128, 128] when fp8, else [0, 0] */
} fm_quant_config;

/* Every field that DeepSeek-V2/V3 configs use. Absent optional fields get the
 * default in brackets; every other field is required.
 *   q_lora_rank [0 = plain q_proj; also for null], n_shared_experts [0; null],
 *   first_k_dense_replace [0], moe_layer_freq [1], n_group [1; null],
 *   topk_group [1; null], topk_method ["greedy"], scoring_func ["softmax"],
 *   norm_topk_prob [false], routed_scaling_factor [1.0], rms_norm_eps [1e-6],
 *   rope_theta [10000], rope_scaling [none], tie_word_embeddings [false],
 *   num_nextn_predict_layers [0], quantization_config [none], model_type [""],
 *   hidden_act ["silu", the only one accepted]. */
typedef struct fm_model_config {
    char    model_type[32];
    int32_t vocab_size;
    int32_t hidden_size;
    int32_t intermediate_size;      /* dense MLP width */
    int32_t moe_intermediate_size;  /* per routed / shared expert */
    int32_t num_hidden_layers;
    int32_t first_k_dense_replace;  /* layers [0, k) are dense */
    int32_t moe_layer_freq;
    int32_t num_attention_heads;
    int32_t q_lora_rank;            /* 0: q_proj, else q_a_proj/q_a_layernorm/q_b_proj */
    int32_t kv_lora_rank;
    int32_t qk_nope_head_dim;
    int32_t qk_rope_head_dim;
    int32_t v_head_dim;
    int32_t n_routed_experts;
    int32_t n_shared_experts;
    int32_t num_experts_per_tok;
    int32_t n_group;
    int32_t topk_group;
    int32_t topk_method;            /* FM_TOPK_* */
    int32_t scoring_func;           /* FM_SCORE_* */
    int32_t norm_topk_prob;
    double  routed_scaling_factor;
    double  rms_norm_eps;
    double  rope_theta;
    int32_t max_position_embeddings;
    int32_t tie_word_embeddings;
    int32_t num_nextn_predict_layers;
    fm_yarn_config  rope_scaling;
    fm_quant_config quant;
} fm_model_config;

/* Reads and validates a config.json. On failure *cfg is zeroed. */
fm_status fm_config_load(const char *path, fm_model_config *cfg, char *err, size_t err_size);

/* Same from a NUL-terminated JSON text; origin names it in messages (NULL: "config"). */
fm_status fm_config_parse(const char *json, const char *origin, fm_model_config *cfg,
                          char *err, size_t err_size);

/* Bytes of MLA latent cache per token over all layers:
 * num_hidden_layers * (kv_lora_rank + qk_rope_head_dim) * dtype_size
 * (DeepSeek-V3 in bf16: 61 * 576 * 2 = 70,272). */
int64_t fm_config_kv_bytes_per_token(const fm_model_config *cfg, size_t dtype_size);

/* Attention softmax scale: (qk_nope_head_dim + qk_rope_head_dim)^-0.5, times
 * mscale^2 with YaRN factor > 1, mscale = 0.1 * mscale_all_dim * ln(factor) + 1. */
double fm_config_softmax_scale(const fm_model_config *cfg);

/* RoPE of q/k_pe: head_dim nope+rope, rope_off nope, rope_dim rope, theta, and the
 * YaRN fields (yarn_factor 1 and the others 0 without rope_scaling or with
 * factor <= 1). */
void fm_config_rope_params(const fm_model_config *cfg, fm_rope_params *p);

/* Router parameters of a MoE layer (renorm = norm_topk_prob). */
void fm_config_route_params(const fm_model_config *cfg, fm_moe_route_params *p);

/* 1 if layer (0-based) has a MoE FFN: layer >= first_k_dense_replace and
 * layer % moe_layer_freq == 0; 0 if dense. */
int fm_config_is_moe_layer(const fm_model_config *cfg, int layer);

#endif
