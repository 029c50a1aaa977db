/* test_config.c - Hugging Face config.json parsing, validation and the derived
 * quantities (KV bytes, softmax scale, RoPE and router parameters). */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#ifndef FM_TEST_DATA
#define FM_TEST_DATA "tests/data"
#endif
#define GOLDEN FM_TEST_DATA "/golden"

static char err[512];

static fm_model_config load_ok(const char *path)
{
    fm_model_config c;
    fm_status s = fm_config_load(path, &c, err, sizeof err);
    ck_assert_msg(s == FM_OK, "%s", err);
    return c;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

/* tiny-v3's config.json with the text `from` replaced by `to` (which must occur). */
static char *v3_with(const char *from, const char *to)
{
    char *src = read_text(GOLDEN "/tiny-v3/config.json");
    char *at = strstr(src, from);
    ck_assert_msg(at != NULL, "'%s' not in tiny-v3 config", from);
    size_t a = (size_t)(at - src), fl = strlen(from), tl = strlen(to);
    char *out = malloc(strlen(src) - fl + tl + 1);
    memcpy(out, src, a);
    memcpy(out + a, to, tl);
    strcpy(out + a + tl, at + fl);
    free(src);
    return out;
}

/* Parses a mutated tiny-v3 config that must fail, naming each fragment. */
static void expect_reject(const char *from, const char *to, ...)
{
    char *json = v3_with(from, to);
    fm_model_config c;
    c.hidden_size = 7;
    fm_status s = fm_config_parse(json, "case.json", &c, err, sizeof err);
    free(json);
    ck_assert_msg(s == FM_EINVAL, "accepted %s -> %s", from, to);
    ck_assert_int_eq(c.hidden_size, 0); /* zeroed on failure */
    ck_assert_msg(strncmp(err, "case.json: ", 11) == 0, "message does not name the file: %s", err);
    va_list ap;
    va_start(ap, to);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL; )
        ck_assert_msg(strstr(err, frag) != NULL, "message lacks '%s': %s", frag, err);
    va_end(ap);
}

/* ---- golden configs --------------------------------------------------------------- */

START_TEST(golden_v3_config_values)
{
    fm_model_config c = load_ok(GOLDEN "/tiny-v3/config.json");
    ck_assert_str_eq(c.model_type, "deepseek_v3");
    ck_assert_int_eq(c.vocab_size, 256);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.intermediate_size, 128);
    ck_assert_int_eq(c.moe_intermediate_size, 32);
    ck_assert_int_eq(c.num_hidden_layers, 3);
    ck_assert_int_eq(c.first_k_dense_replace, 1);
    ck_assert_int_eq(c.moe_layer_freq, 1);
    ck_assert_int_eq(c.num_attention_heads, 4);
    ck_assert_int_eq(c.q_lora_rank, 48);
    ck_assert_int_eq(c.kv_lora_rank, 32);
    ck_assert_int_eq(c.qk_nope_head_dim, 16);
    ck_assert_int_eq(c.qk_rope_head_dim, 8);
    ck_assert_int_eq(c.v_head_dim, 16);
    ck_assert_int_eq(c.n_routed_experts, 16);
    ck_assert_int_eq(c.n_shared_experts, 1);
    ck_assert_int_eq(c.num_experts_per_tok, 4);
    ck_assert_int_eq(c.n_group, 4);
    ck_assert_int_eq(c.topk_group, 2);
    ck_assert_int_eq(c.topk_method, FM_TOPK_NOAUX_TC);
    ck_assert_int_eq(c.scoring_func, FM_SCORE_SIGMOID);
    ck_assert_int_eq(c.norm_topk_prob, 1);
    ck_assert(c.routed_scaling_factor == 2.5);
    ck_assert(c.rms_norm_eps == 1e-6);
    ck_assert(c.rope_theta == 10000.0);
    ck_assert_int_eq(c.max_position_embeddings, 64);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_int_eq(c.rope_scaling.enabled, 0);
    ck_assert_int_eq(c.quant.fp8, 0);
    /* README: softmax scale 0.2041241452319315 */
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.2041241452319315, 1e-15);
    ck_assert_int_eq(fm_config_is_moe_layer(&c, 0), 0);
    ck_assert_int_eq(fm_config_is_moe_layer(&c, 1), 1);
    ck_assert_int_eq(fm_config_is_moe_layer(&c, 2), 1);

    fm_rope_params r;
    fm_config_rope_params(&c, &r);
    ck_assert_int_eq(r.head_dim, 24);
    ck_assert_int_eq(r.rope_off, 16);
    ck_assert_int_eq(r.rope_dim, 8);
    ck_assert(r.theta == 10000.0f);
    ck_assert(r.yarn_factor == 1.0f);

    fm_moe_route_params m;
    fm_config_route_params(&c, &m);
    ck_assert_int_eq(m.n_experts, 16);
    ck_assert_int_eq(m.top_k, 4);
    ck_assert_int_eq(m.n_group, 4);
    ck_assert_int_eq(m.topk_group, 2);
    ck_assert_int_eq(m.scoring, FM_SCORE_SIGMOID);
    ck_assert_int_eq(m.method, FM_TOPK_NOAUX_TC);
    ck_assert_int_eq(m.renorm, 1);
    ck_assert(m.scale == 2.5f);
}
END_TEST

START_TEST(golden_v2style_config_values)
{
    fm_model_config c = load_ok(GOLDEN "/tiny-v2style/config.json");
    ck_assert_int_eq(c.q_lora_rank, 0); /* null: plain q_proj */
    ck_assert_int_eq(c.scoring_func, FM_SCORE_SOFTMAX);
    ck_assert_int_eq(c.topk_method, FM_TOPK_GREEDY);
    ck_assert_int_eq(c.norm_topk_prob, 0);
    ck_assert_int_eq(c.n_group, 1);
    ck_assert_int_eq(c.topk_group, 1);
    ck_assert_int_eq(c.n_routed_experts, 12);
    ck_assert_int_eq(c.num_experts_per_tok, 3);
    ck_assert_int_eq(c.n_shared_experts, 2);
    ck_assert_int_eq(c.vocab_size, 300);
    ck_assert_int_eq(c.num_attention_heads, 3);
    ck_assert(c.routed_scaling_factor == 1.0);
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.2041241452319315, 1e-15);
}
END_TEST

START_TEST(golden_yarn_config_values)
{
    fm_model_config c = load_ok(GOLDEN "/tiny-yarn/config.json");
    ck_assert_int_eq(c.rope_scaling.enabled, 1);
    ck_assert(c.rope_scaling.factor == 4.0);
    ck_assert_int_eq(c.rope_scaling.original_max_position_embeddings, 32);
    ck_assert(c.rope_scaling.beta_fast == 32.0);
    ck_assert(c.rope_scaling.beta_slow == 1.0);
    ck_assert(c.rope_scaling.mscale == 1.0);
    ck_assert(c.rope_scaling.mscale_all_dim == 1.0);
    ck_assert_int_eq(c.max_position_embeddings, 128);
    ck_assert_int_eq(c.qk_rope_head_dim, 16);
    /* README: 0.22918691831189503 = 32^-0.5 * (0.1 ln 4 + 1)^2 */
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.22918691831189503, 1e-15);

    fm_rope_params r;
    fm_config_rope_params(&c, &r);
    ck_assert_int_eq(r.head_dim, 32);
    ck_assert_int_eq(r.rope_off, 16);
    ck_assert_int_eq(r.rope_dim, 16);
    ck_assert(r.yarn_factor == 4.0f);
    ck_assert_int_eq(r.yarn_orig_max, 32);
    ck_assert(r.yarn_beta_fast == 32.0f);
    ck_assert(r.yarn_beta_slow == 1.0f);
}
END_TEST

START_TEST(golden_fp8_config_values)
{
    fm_model_config c = load_ok(GOLDEN "/tiny-fp8/config.json");
    ck_assert_int_eq(c.quant.fp8, 1);
    ck_assert_int_eq(c.quant.weight_block[0], 128);
    ck_assert_int_eq(c.quant.weight_block[1], 128);
    ck_assert_int_eq(c.hidden_size, 256);
    ck_assert_int_eq(c.q_lora_rank, 256);
    ck_assert_int_eq(c.kv_lora_rank, 128);
    ck_assert_int_eq(c.num_hidden_layers, 2);
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.14433756729740643, 1e-15);
    ck_assert_int_eq(fm_config_kv_bytes_per_token(&c, 4), 2 * (128 + 16) * 4);
}
END_TEST

/* The released DeepSeek-V3 config (abridged to the fields Fathom reads). */
static const char *deepseek_v3 =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 129280, \"hidden_size\": 7168,"
    " \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048,"
    " \"num_hidden_layers\": 61, \"first_k_dense_replace\": 3, \"moe_layer_freq\": 1,"
    " \"num_attention_heads\": 128, \"num_key_value_heads\": 128, \"q_lora_rank\": 1536,"
    " \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64,"
    " \"v_head_dim\": 128, \"n_routed_experts\": 256, \"n_shared_experts\": 1,"
    " \"num_experts_per_tok\": 8, \"n_group\": 8, \"topk_group\": 4,"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"norm_topk_prob\": true,"
    " \"routed_scaling_factor\": 2.5, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,"
    " \"max_position_embeddings\": 163840, \"num_nextn_predict_layers\": 1,"
    " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40,"
    "   \"mscale\": 1.0, \"mscale_all_dim\": 1.0,"
    "   \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},"
    " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\","
    "   \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]},"
    " \"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}";

START_TEST(deepseek_v3_derived_quantities)
{
    fm_model_config c;
    ck_assert_int_eq(fm_config_parse(deepseek_v3, NULL, &c, err, sizeof err), FM_OK);
    ck_assert_int_eq(fm_config_kv_bytes_per_token(&c, 2), 70272); /* 61 * 576 * 2 */
    /* 192^-0.5 * (0.1 ln 40 + 1)^2 */
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.1352337788608801, 1e-15);
    ck_assert_int_eq(c.num_nextn_predict_layers, 1);
    ck_assert_int_eq(fm_config_is_moe_layer(&c, 2), 0);
    ck_assert_int_eq(fm_config_is_moe_layer(&c, 3), 1);
    fm_rope_params r;
    fm_config_rope_params(&c, &r);
    ck_assert_int_eq(r.head_dim, 192);
    ck_assert_int_eq(r.rope_off, 128);
    ck_assert_int_eq(r.rope_dim, 64);
    ck_assert(r.yarn_factor == 40.0f);
    ck_assert_int_eq(r.yarn_orig_max, 4096);
}
END_TEST

/* DeepSeek-V2-Lite: q_lora_rank null, greedy softmax routing, YaRN mscale 0.707. */
START_TEST(deepseek_v2_lite_parses)
{
    static const char *v2lite =
        "{\"model_type\": \"deepseek_v2\", \"vocab_size\": 102400, \"hidden_size\": 2048,"
        " \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408,"
        " \"num_hidden_layers\": 27, \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1,"
        " \"num_attention_heads\": 16, \"q_lora_rank\": null, \"kv_lora_rank\": 512,"
        " \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128,"
        " \"n_routed_experts\": 64, \"n_shared_experts\": 2, \"num_experts_per_tok\": 6,"
        " \"n_group\": 1, \"topk_group\": 1, \"topk_method\": \"greedy\","
        " \"scoring_func\": \"softmax\", \"norm_topk_prob\": false,"
        " \"routed_scaling_factor\": 1.0, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,"
        " \"max_position_embeddings\": 163840,"
        " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40,"
        "   \"mscale\": 0.707, \"mscale_all_dim\": 0.707,"
        "   \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}}";
    fm_model_config c;
    ck_assert_int_eq(fm_config_parse(v2lite, NULL, &c, err, sizeof err), FM_OK);
    ck_assert_int_eq(c.q_lora_rank, 0);
    ck_assert_int_eq(c.topk_method, FM_TOPK_GREEDY);
    ck_assert_int_eq(c.scoring_func, FM_SCORE_SOFTMAX);
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.1147213867929261, 1e-15);
}
END_TEST

/* ---- invalid configs ------------------------------------------------------------- */

START_TEST(missing_required_field_is_named)
{
    expect_reject("\"hidden_size\": 64,", "", "'hidden_size'", "missing", NULL);
    expect_reject("\"kv_lora_rank\": 32,", "", "'kv_lora_rank'", "missing", NULL);
}
END_TEST

START_TEST(wrong_type_is_named)
{
    expect_reject("\"hidden_size\": 64", "\"hidden_size\": \"64\"", "'hidden_size'", "string",
                  NULL);
    expect_reject("\"num_attention_heads\": 4", "\"num_attention_heads\": 4.5",
                  "'num_attention_heads'", NULL);
    expect_reject("\"norm_topk_prob\": true", "\"norm_topk_prob\": 1", "'norm_topk_prob'", NULL);
    expect_reject("\"rope_scaling\": null", "\"rope_scaling\": 4", "'rope_scaling'", NULL);
}
END_TEST

START_TEST(non_positive_size_is_named)
{
    expect_reject("\"vocab_size\": 256", "\"vocab_size\": 0", "'vocab_size'", "> 0", NULL);
    expect_reject("\"v_head_dim\": 16", "\"v_head_dim\": -16", "'v_head_dim'", NULL);
    expect_reject("\"q_lora_rank\": 48", "\"q_lora_rank\": -1", "'q_lora_rank'", NULL);
}
END_TEST

START_TEST(experts_not_divisible_by_groups_fails)
{
    expect_reject("\"n_group\": 4", "\"n_group\": 3", "'n_group'", "n_routed_experts 16",
                  "not divisible", NULL);
}
END_TEST

START_TEST(topk_group_beyond_n_group_fails)
{
    expect_reject("\"topk_group\": 2", "\"topk_group\": 5", "'topk_group'", "n_group 4", NULL);
}
END_TEST

START_TEST(too_many_experts_per_token_fails)
{
    expect_reject("\"num_experts_per_tok\": 4", "\"num_experts_per_tok\": 17",
                  "'num_experts_per_tok'", "n_routed_experts", NULL);
    /* 2 groups of 4 experts hold only 8 */
    expect_reject("\"num_experts_per_tok\": 4", "\"num_experts_per_tok\": 9",
                  "'num_experts_per_tok'", "topk_group", NULL);
}
END_TEST

START_TEST(unknown_router_strings_fail)
{
    expect_reject("\"noaux_tc\"", "\"aux_free\"", "'topk_method'", "'aux_free'", NULL);
    expect_reject("\"sigmoid\"", "\"tanh\"", "'scoring_func'", "'tanh'", NULL);
    expect_reject("\"silu\"", "\"gelu\"", "'hidden_act'", NULL);
}
END_TEST

START_TEST(layer_and_rope_relations_fail)
{
    expect_reject("\"first_k_dense_replace\": 1", "\"first_k_dense_replace\": 4",
                  "'first_k_dense_replace'", "num_hidden_layers 3", NULL);
    expect_reject("\"qk_rope_head_dim\": 8", "\"qk_rope_head_dim\": 7", "'qk_rope_head_dim'",
                  "odd", NULL);
}
END_TEST

START_TEST(unsupported_rope_scaling_fails)
{
    expect_reject("\"rope_scaling\": null",
                  "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}",
                  "'rope_scaling.type'", "'linear'", NULL);
    expect_reject("\"rope_scaling\": null",
                  "\"rope_scaling\": {\"type\": \"yarn\", \"original_max_position_embeddings\": 32}",
                  "'rope_scaling.factor'", "missing", NULL);
    expect_reject("\"rope_scaling\": null",
                  "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4,"
                  " \"original_max_position_embeddings\": 32, \"mscale\": 1, \"mscale_all_dim\": 0.5}",
                  "'rope_scaling.mscale'", NULL);
}
END_TEST

START_TEST(yarn_defaults_apply)
{
    char *json = v3_with("\"rope_scaling\": null",
                         "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 2,"
                         " \"original_max_position_embeddings\": 32, \"mscale\": 0}");
    fm_model_config c;
    fm_status s = fm_config_parse(json, NULL, &c, err, sizeof err);
    free(json);
    ck_assert_msg(s == FM_OK, "%s", err);
    ck_assert(c.rope_scaling.beta_fast == 32.0);
    ck_assert(c.rope_scaling.beta_slow == 1.0);
    ck_assert(c.rope_scaling.mscale_all_dim == 0.0);
    /* mscale_all_dim 0: no softmax correction */
    ck_assert_double_eq_tol(fm_config_softmax_scale(&c), 0.2041241452319315, 1e-15);
}
END_TEST

START_TEST(unsupported_quantization_fails)
{
    static const char *fp8 =
        "\"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\","
        " \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}, \"rms_norm_eps\"";
    static const struct {
        const char *from, *to, *field;
    } cases[] = {
        {"\"e4m3\"", "\"e5m2\"", "'quantization_config.fmt'"},
        {"[128, 128]", "[64, 64]", "'quantization_config.weight_block_size'"},
        {"\"quant_method\": \"fp8\"", "\"quant_method\": \"gptq\"",
         "'quantization_config.quant_method'"},
        {"\"dynamic\"", "\"static\"", "'quantization_config.activation_scheme'"},
        {"\"fmt\"", "\"scale_fmt\": \"ue8m0\", \"fmt\"", "'quantization_config.scale_fmt'"},
        {", \"weight_block_size\": [128, 128]", "", "'quantization_config.weight_block_size'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *base = v3_with("\"rms_norm_eps\"", fp8);
        char *at = strstr(base, cases[i].from);
        ck_assert_ptr_nonnull(at);
        char json[4096];
        snprintf(json, sizeof json, "%.*s%s%s", (int)(at - base), base, cases[i].to,
                 at + strlen(cases[i].from));
        free(base);
        fm_model_config c;
        ck_assert_int_eq(fm_config_parse(json, "q.json", &c, err, sizeof err), FM_EINVAL);
        ck_assert_msg(strstr(err, cases[i].field) != NULL, "case %zu: %s", i, err);
    }
}
END_TEST

START_TEST(invalid_json_fails)
{
    fm_model_config c;
    ck_assert_int_eq(fm_config_parse("{\"hidden_size\": 64,", "x.json", &c, err, sizeof err),
                     FM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "x.json"));
    ck_assert_ptr_nonnull(strstr(err, "JSON"));
    ck_assert_int_eq(fm_config_parse("[1]", "x.json", &c, err, sizeof err), FM_EINVAL);
}
END_TEST

START_TEST(load_names_the_file)
{
    char dir[] = "/tmp/fathom-cfg-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = v3_with("\"n_group\": 4", "\"n_group\": 3");
    FILE *f = fopen(path, "wb");
    fputs(json, f);
    fclose(f);
    free(json);
    fm_model_config c;
    fm_status s = fm_config_load(path, &c, err, sizeof err);
    unlink(path);
    ck_assert_int_eq(s, FM_EINVAL);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0, "%s", err);
    ck_assert_ptr_nonnull(strstr(err, "'n_group'"));

    ck_assert_int_eq(fm_config_load(path, &c, err, sizeof err), FM_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, path));
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *ok = tcase_create("valid");
    tcase_add_test(ok, golden_v3_config_values);
    tcase_add_test(ok, golden_v2style_config_values);
    tcase_add_test(ok, golden_yarn_config_values);
    tcase_add_test(ok, golden_fp8_config_values);
    tcase_add_test(ok, deepseek_v3_derived_quantities);
    tcase_add_test(ok, deepseek_v2_lite_parses);
    tcase_add_test(ok, yarn_defaults_apply);
    suite_add_tcase(s, ok);

    TCase *bad = tcase_create("invalid");
    tcase_add_test(bad, missing_required_field_is_named);
    tcase_add_test(bad, wrong_type_is_named);
    tcase_add_test(bad, non_positive_size_is_named);
    tcase_add_test(bad, experts_not_divisible_by_groups_fails);
    tcase_add_test(bad, topk_group_beyond_n_group_fails);
    tcase_add_test(bad, too_many_experts_per_token_fails);
    tcase_add_test(bad, unknown_router_strings_fail);
    tcase_add_test(bad, layer_and_rope_relations_fail);
    tcase_add_test(bad, unsupported_rope_scaling_fails);
    tcase_add_test(bad, unsupported_quantization_fails);
    tcase_add_test(bad, invalid_json_fails);
    tcase_add_test(bad, load_names_the_file);
    suite_add_tcase(s, bad);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
