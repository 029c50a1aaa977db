/* test_model.c - the DeepSeek-V3/V2 model against DeepSeek's reference outputs
 * (tests/data/golden), with an f32 or a bf16 KV cache, chunked prefill, naive vs
 * absorbed attention, the FP8 kernels alone, re-placement, and bad checkpoints
 * and options. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fathom/fathom.h"
#include "golden.h"
#include "ref.h"
#include "safetensors.h"

#ifndef FM_TEST_DATA
#define FM_TEST_DATA "tests/data"
#endif

static const char *const cases[] = {"tiny-v3", "tiny-v2style", "tiny-yarn", "tiny-fp8"};
static fm_ctx *ctx;

static void setup(void) {
    const char *b = getenv("FATHOM_BUILD");
    char path[512];
    snprintf(path, sizeof path, "%s/plugins", b ? b : "build");
    setenv("FATHOM_PLUGIN_PATH", path, 1);
    setenv("FATHOM_LOG", "0", 1);
    ck_assert_int_eq(fm_ctx_init(&ctx), FM_OK);
}
static void teardown(void) { fm_ctx_free(ctx); }

static void case_dir(char *buf, size_t n, const char *c) { snprintf(buf, n, "%s/golden/%s", FM_TEST_DATA, c); }

static fm_model *load(const char *dir, const char *weights, int attn, const char *backends) {
    fm_model_options o = {.weights = weights, .attn = attn, .act_quant = -1, .capture = 1, .backends = backends};
    fm_model *m = NULL;
    fm_status s = fm_model_load(ctx, dir, &o, &m);
    ck_assert_msg(s == FM_OK, "load %s: %s", dir, fm_ctx_error(ctx));
    return m;
}

static fm_st *golden(const char *dir) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    fm_st *g;
    ck_assert_msg(fm_st_open(path, &g, err, sizeof err) == FM_OK, "%s", err);
    return g;
}

static void expect_golden(const char *c, const char *weights, int attn, const char *backends) {
    char dir[512];
    case_dir(dir, sizeof dir, c);
    fm_model *m = load(dir, weights, attn, backends);
    fm_st *g = golden(dir);
    fm_golden_run r = {.intermediates = true, .prefix = ""};
    fm_golden_defaults(g, &r);
    ck_assert_msg(fm_golden_run_model(ctx, m, g, &r) == FM_OK, "%s: %s", c, fm_ctx_error(ctx));
    for (int f = 0; f < FM_GF_COUNT; f++) {
        const fm_golden_family *fa = &r.fam[f];
        ck_assert_msg(fa->bad == 0, "%s on %s: %s: %lld outside, max err %g at %s", c, backends ? backends : "default",
                      fa->name, (long long)fa->bad, fa->max_err, fa->worst);
        ck_assert_msg(fa->compared > 0, "%s: %s: nothing compared", c, fa->name);
    }
    ck_assert_int_eq(r.missing, 0);
    fm_st_close(g);
    fm_model_free(m);
}

START_TEST(golden_case_matches_reference_on_ref) { expect_golden(cases[_i], NULL, FM_ATTN_ABSORB, "ref"); }
END_TEST

/* fp8 keeps the golden's absorbed form: the naive form's different f32 rounding
 * moves activations across e4m3 rounding boundaries (see the case's README). */
START_TEST(golden_case_matches_reference_on_default_backends) {
    expect_golden(cases[_i], NULL, strcmp(cases[_i], "tiny-fp8") ? FM_ATTN_AUTO : FM_ATTN_ABSORB, NULL);
}
END_TEST

START_TEST(bf16_weights_match_the_same_golden) {
    expect_golden(cases[_i], "model.bf16.safetensors", FM_ATTN_AUTO, "ref");
}
END_TEST

/* A bf16 latent cache (DeepSeek's serving form) against the goldens, made with an f32
 * cache, at FM_GOLDEN_TOL_BF16_CACHE; naive prefill and absorbed decode. The FP8 case
 * compares its dequant.* outputs: with FP8 activation quantization the cache's
 * rounding moves e4m3 steps and no elementwise tolerance holds (golden.h). */
static void bf16_cache_case(const char *c, const char *backends) {
    bool fp8 = !strcmp(c, "tiny-fp8");
    char dir[512];
    case_dir(dir, sizeof dir, c);
    fm_model_options o = {.attn = FM_ATTN_AUTO, .act_quant = fp8 ? 0 : -1, .capture = 1, .backends = backends,
                          .cache_dtype = FM_BF16};
    fm_model *m = NULL;
    ck_assert_msg(fm_model_load(ctx, dir, &o, &m) == FM_OK, "load %s: %s", dir, fm_ctx_error(ctx));
    ck_assert_int_eq(fm_model_cache_dtype(m), FM_BF16);
    ck_assert_int_eq(fm_model_kv_bytes_per_token(m, 0), fm_model_kv_bytes_per_token(m, 1));
    fm_st *g = golden(dir);
    fm_golden_run r = {.intermediates = true, .prefix = fp8 ? "dequant." : "", .atol_logits = 1e-4, .atol = 1e-4,
                       .rtol = 1e-4};
    fm_golden_cache_tolerance(FM_BF16, &r);
    ck_assert(r.atol_logits == FM_GOLDEN_TOL_BF16_CACHE && r.atol == FM_GOLDEN_TOL_BF16_CACHE &&
              r.rtol == FM_GOLDEN_TOL_BF16_CACHE);
    ck_assert_msg(fm_golden_run_model(ctx, m, g, &r) == FM_OK, "%s: %s", c, fm_ctx_error(ctx));
    for (int f = 0; f < FM_GF_COUNT; f++) {
        const fm_golden_family *fa = &r.fam[f];
        ck_assert_msg(fa->bad == 0, "%s, bf16 cache: %s: %lld outside, max err %g at %s", c, fa->name,
                      (long long)fa->bad, fa->max_err, fa->worst);
        ck_assert_msg(fa->compared > 0, "%s: %s: nothing compared", c, fa->name);
    }
    ck_assert_int_eq(r.missing, 0);
    if (!backends) { /* placed on the cpu backend, not a fallback */
        int cpu = fm_backend_find(ctx, "cpu");
        ck_assert_int_ge(cpu, 0);
        ck_assert_msg(fm_model_op_time(m, FM_OP_MLA_CACHE, cpu).nodes > 0 && fm_model_op_time(m, FM_OP_MLA_ATTN, cpu).nodes > 0,
                      "%s: the bf16-cache MLA nodes did not run on cpu", c);
    }
    /* the cache really is bf16: read back bf16-exact, and off the f32 golden by more than f32 noise */
    ck_assert_msg(r.fam[FM_GF_KV].max_err > 1e-4 && r.fam[FM_GF_LOGITS].max_err > 1e-4, "%s: kv %g, logits %g", c,
                  r.fam[FM_GF_KV].max_err, r.fam[FM_GF_LOGITS].max_err);
    const fm_st_tensor *kv0 = fm_st_get(g, fp8 ? "dequant.prefill.layers.0.kv_cache" : "prefill.layers.0.kv_cache");
    ck_assert_ptr_nonnull(kv0);
    int64_t n = kv0->ne[1] * (r.T + r.S); /* every position written */
    float *buf = malloc((size_t)n * sizeof *buf);
    ck_assert_int_eq(fm_model_read(m, "layers.0.kv_cache", buf, n), FM_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(buf[i] == fm_bf16_to_f32(fm_f32_to_bf16(buf[i])), "%s: kv_cache[%lld] = %a is not bf16", c,
                      (long long)i, (double)buf[i]);
    free(buf);
    fm_st_close(g);
    fm_model_free(m);
}
START_TEST(golden_case_with_bf16_cache_on_ref) { bf16_cache_case(cases[_i], "ref"); }
END_TEST
/* the default placement: the cpu backend's mla_cache and mla_attn on a bf16 cache */
START_TEST(golden_case_with_bf16_cache_on_default_backends) { bf16_cache_case(cases[_i], NULL); }
END_TEST

START_TEST(bad_cache_dtype_is_named) {
    char dir[512];
    case_dir(dir, sizeof dir, "tiny-v3");
    static const int bad[] = {FM_F16, FM_F8_E4M3, FM_I32, 99, -1};
    for (int i = 0; i < 5; i++) {
        fm_model_options o = {.act_quant = -1, .cache_dtype = bad[i]};
        fm_model *m = NULL;
        ck_assert_int_eq(fm_model_load(ctx, dir, &o, &m), FM_EINVAL);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(fm_ctx_error(ctx), "cache_dtype"), "%s", fm_ctx_error(ctx));
    }
    fm_model_options o = {.act_quant = -1, .backends = "ref"};
    fm_model *m = NULL;
    ck_assert_int_eq(fm_model_load(ctx, dir, &o, &m), FM_OK); /* zeroed options: f32 */
    ck_assert_int_eq(fm_model_cache_dtype(m), FM_F32);
    ck_assert_int_eq(fm_model_kv_bytes_per_token(m, 0), 2 * fm_model_kv_bytes_per_token(m, 1));
    fm_model_free(m);
}
END_TEST

static float *forward_all(fm_model *m, const int32_t *tok, int n, int chunk) {
    int V = fm_model_vocab(m);
    float *out = malloc((size_t)n * (size_t)V * 4);
    for (int p = 0; p < n; p += chunk) {
        int k = n - p < chunk ? n - p : chunk;
        ck_assert_msg(fm_model_forward(m, tok + p, k, p, out + (size_t)p * (size_t)V) == FM_OK, "%s",
                      fm_ctx_error(ctx));
    }
    return out;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* _i = 0: f32 cache; 1: bf16 cache (rows rounded on write either way) */
START_TEST(chunked_prefill_equals_one_prefill) {
    char dir[512];
    case_dir(dir, sizeof dir, "tiny-yarn");
    fm_model_options o = {.attn = FM_ATTN_AUTO, .act_quant = -1, .backends = "ref", .cache_dtype = _i ? FM_BF16 : FM_F32};
    fm_model *m = NULL;
    ck_assert_msg(fm_model_load(ctx, dir, &o, &m) == FM_OK, "%s", fm_ctx_error(ctx));
    int V = fm_model_vocab(m), n = 40;
    int32_t tok[40];
    for (int i = 0; i < n; i++) tok[i] = (i * 37 + 5) % V;
    float *one = forward_all(m, tok, n, n), *two = forward_all(m, tok, n, 17), *step = forward_all(m, tok, n, 1);
    ck_assert_double_le(max_diff(one, two, (size_t)n * V), 1e-5);
    ck_assert_double_le(max_diff(one, step, (size_t)n * V), 1e-5);
    free(one), free(two), free(step);
    fm_model_free(m);
}
END_TEST

START_TEST(naive_attention_equals_absorbed) {
    char dir[512];
    case_dir(dir, sizeof dir, cases[_i]);
    /* fp8 activation quantization off: with it, naive quantizes kv_b's input and differs by design */
    fm_model_options on = {.attn = FM_ATTN_NAIVE, .act_quant = 0, .backends = "ref"};
    fm_model_options oa = {.attn = FM_ATTN_ABSORB, .act_quant = 0, .backends = "ref"};
    fm_model *a, *b;
    ck_assert_int_eq(fm_model_load(ctx, dir, &oa, &a), FM_OK);
    ck_assert_int_eq(fm_model_load(ctx, dir, &on, &b), FM_OK);
    int V = fm_model_vocab(a);
    int32_t tok[9];
    for (int i = 0; i < 9; i++) tok[i] = (i * 11 + 3) % V;
    float *x = forward_all(a, tok, 9, 4), *y = forward_all(b, tok, 9, 4);
    ck_assert_double_le(max_diff(x, y, (size_t)9 * V), 2e-5);
    free(x), free(y);
    fm_model_free(a);
    fm_model_free(b);
}
END_TEST

/* FP8: act_quant bit-exact and fp8_gemm to 1e-6 relative against unit.* of tiny-fp8. */
START_TEST(fp8_units_match_reference_kernels) {
    char dir[512], path[600], err[512];
    case_dir(dir, sizeof dir, "tiny-fp8");
    fm_st *g = golden(dir), *w;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(fm_st_open(path, &w, err, sizeof err), FM_OK);
    const fm_st_tensor *x = fm_st_get(g, "unit.x"), *codes = fm_st_get(g, "unit.x_fp8"),
                       *scales = fm_st_get(g, "unit.x_scale");
    ck_assert_ptr_nonnull(x);
    int64_t T = x->ne[0], K = x->ne[1];
    uint8_t *c = malloc((size_t)K);
    float *s = malloc((size_t)(K / 128) * 4), *xr = malloc((size_t)K * 4);
    for (int64_t t = 0; t < T; t++) {
        memcpy(xr, (const float *)x->data + t * K, (size_t)K * 4);
        fm_act_quant_row(xr, K, c, s);
        ck_assert_mem_eq(c, (const uint8_t *)codes->data + t * K, (size_t)K);
        ck_assert_mem_eq(s, (const char *)scales->data + t * (K / 128) * 4, (size_t)(K / 128) * 4);
    }
    free(c), free(s), free(xr);
    static const char *const units[] = {"q_a_proj", "kv_a_proj_with_mqa"};
    for (int u = 0; u < 2; u++) {
        char wn[128], sn[160], un[64];
        snprintf(wn, sizeof wn, "model.layers.0.self_attn.%s.weight", units[u]);
        snprintf(sn, sizeof sn, "%s_scale_inv", wn);
        snprintf(un, sizeof un, "unit.%s", units[u]);
        const fm_st_tensor *wt = fm_st_get(w, wn), *st = fm_st_get(w, sn), *want = fm_st_get(g, un);
        for (int b = 0; b < fm_backend_count(ctx); b++) {
            fm_backend_info bi;
            fm_backend_info_get(ctx, b, &bi);
            if (bi.status != FM_BACKEND_READY) continue;
            fm_graph *gr;
            fm_graph_init(ctx, &gr);
            fm_tensor *xi = fm_input(gr, "x", FM_F32, 2, x->ne);
            fm_tensor *sc = fm_weight(gr, sn, FM_F32, 2, st->ne, st->data, NULL);
            fm_tensor *y = fm_matmul(gr, xi, fm_weight(gr, wn, FM_F8_E4M3, 2, wt->ne, wt->data, sc), 1);
            fm_graph_output(gr, y);
            fm_session *se;
            ck_assert_int_eq(fm_session_init(ctx, gr, bi.name, NULL, FM_RUN_STRICT, &se), FM_OK);
            fm_node_stat ns;
            fm_session_node_stat(se, 0, &ns);
            if (!strcmp(ns.planned, bi.name)) {
                float *out = malloc(fm_tensor_bytes(y));
                fm_session_set_input(se, xi, x->data, x->nbytes);
                ck_assert_int_eq(fm_session_run(se), FM_OK);
                fm_session_read(se, y, out, fm_tensor_bytes(y));
                for (int64_t i = 0; i < fm_tensor_nelem(y); i++) {
                    float ref = ((const float *)want->data)[i];
                    ck_assert_msg(fabsf(out[i] - ref) <= 1e-6f * fmaxf(fabsf(ref), 1e-3f),
                                  "%s on %s: [%lld] %g vs %g", un, bi.name, (long long)i, out[i], ref);
                }
                free(out);
            }
            fm_session_free(se);
            fm_graph_free(gr);
        }
    }
    fm_st_close(w);
    fm_st_close(g);
}
END_TEST

START_TEST(replacement_between_runs_keeps_results) {
    char dir[512];
    case_dir(dir, sizeof dir, "tiny-v3");
    fm_model *m = load(dir, NULL, FM_ATTN_AUTO, "ref");
    int V = fm_model_vocab(m);
    int32_t tok[6] = {1, 2, 3, 4, 5, 6};
    float *a = forward_all(m, tok, 6, 3);
    ck_assert_int_eq(fm_model_place(m, "stub", "mla_attn=ref"), FM_OK);
    float *b = forward_all(m, tok, 6, 3);
    ck_assert_double_eq(max_diff(a, b, (size_t)6 * V), 0);
    fm_op_time t = fm_model_op_time(m, FM_OP_MATMUL, fm_backend_find(ctx, "stub"));
    ck_assert_uint_gt(t.nodes, 0);
    ck_assert_int_eq(fm_model_place(m, "nosuch", NULL), FM_ENOTFOUND);
    free(a), free(b);
    fm_model_free(m);
}
END_TEST

START_TEST(bad_tokens_and_positions_are_errors) {
    char dir[512];
    case_dir(dir, sizeof dir, "tiny-v3");
    fm_model_options o = {.max_seq = 16, .act_quant = -1, .backends = "ref"};
    fm_model *m;
    ck_assert_int_eq(fm_model_load(ctx, dir, &o, &m), FM_OK);
    int32_t bad = 256, ok = 3;
    ck_assert_int_eq(fm_model_forward(m, &bad, 1, 0, NULL), FM_EINVAL);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "256") && strstr(fm_ctx_error(ctx), "vocabulary"), "%s",
                  fm_ctx_error(ctx));
    ck_assert_int_eq(fm_model_forward(m, &ok, 1, 16, NULL), FM_EINVAL);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "cache"), "%s", fm_ctx_error(ctx));
    ck_assert_int_eq(fm_model_forward(m, &ok, 1, 15, NULL), FM_OK);
    fm_model_free(m);
}
END_TEST

/* A copy of tiny-v3 in a temp dir, with its config or weights changed. */
static char tmpdir[256];

static void make_case(const char *config_sed_from, const char *config_sed_to, const char *drop, const int64_t *reshape) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fathom-model-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    char src[512], path[600], err[512];
    case_dir(src, sizeof src, "tiny-v3");
    /* config, optionally with one text substitution */
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *f = fopen(path, "rb");
    char cfg[8192] = {0};
    size_t n = fread(cfg, 1, sizeof cfg - 1, f);
    fclose(f);
    cfg[n] = 0;
    if (config_sed_from) {
        char *p = strstr(cfg, config_sed_from), out[8192];
        ck_assert_ptr_nonnull(p);
        snprintf(out, sizeof out, "%.*s%s%s", (int)(p - cfg), cfg, config_sed_to, p + strlen(config_sed_from));
        strcpy(cfg, out);
    }
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    f = fopen(path, "wb");
    fputs(cfg, f);
    fclose(f);
    /* weights, optionally without one tensor or with one reshaped */
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    fm_st *st;
    ck_assert_int_eq(fm_st_open(path, &st, err, sizeof err), FM_OK);
    int k = 0, cnt = fm_st_count(st);
    fm_st_entry *e = calloc((size_t)cnt, sizeof *e);
    for (int i = 0; i < cnt; i++) {
        const fm_st_tensor *t = fm_st_at(st, i);
        if (drop && !strcmp(t->name, drop)) {
            if (!reshape) continue;
            e[k] = (fm_st_entry){.name = t->name, .dtype = t->dtype, .ndim = 2, .ne = {reshape[0], reshape[1]}, .data = t->data};
            k++;
            continue;
        }
        e[k++] = (fm_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                               .ne = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]}, .data = t->data};
    }
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    ck_assert_msg(fm_st_write(path, k, e, 0, NULL, err, sizeof err) == FM_OK, "%s", err);
    free(e);
    fm_st_close(st);
}

static void rm_case(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    unlink(path);
    rmdir(tmpdir);
}

static void expect_load_error(fm_status want, const char *needle) {
    fm_model *m = NULL;
    fm_model_options o = {.act_quant = -1};
    fm_status s = fm_model_load(ctx, tmpdir, &o, &m);
    ck_assert_msg(s == want, "status %d, want %d: %s", s, want, fm_ctx_error(ctx));
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(fm_ctx_error(ctx), needle), "message '%s' lacks '%s'", fm_ctx_error(ctx), needle);
    rm_case();
}

START_TEST(missing_tensor_is_named) {
    make_case(NULL, NULL, "model.layers.2.mlp.experts.7.up_proj.weight", NULL);
    expect_load_error(FM_ENOTFOUND, "model.layers.2.mlp.experts.7.up_proj.weight");
}
END_TEST

START_TEST(wrong_shape_is_named) {
    int64_t ne[2] = {40, 32};
    make_case(NULL, NULL, "model.layers.1.self_attn.q_a_proj.weight", ne);
    expect_load_error(FM_EINVAL, "q_a_proj");
}
END_TEST

START_TEST(contradictory_config_is_named) {
    make_case("\"n_group\": 4", "\"n_group\": 3", NULL, NULL);
    expect_load_error(FM_EINVAL, "n_group");
}
END_TEST

START_TEST(truncated_weights_are_refused) {
    make_case(NULL, NULL, NULL, NULL);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    ck_assert_int_eq(truncate(path, 100000), 0);
    expect_load_error(FM_EINVAL, "model.safetensors");
}
END_TEST

START_TEST(missing_model_dir_is_reported) {
    fm_model *m = NULL;
    ck_assert_int_ne(fm_model_load(ctx, "/nonexistent/model", NULL, &m), FM_OK);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "/nonexistent/model"), "%s", fm_ctx_error(ctx));
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, golden_case_matches_reference_on_ref, 0, 4);
    tcase_add_loop_test(tc, golden_case_matches_reference_on_default_backends, 0, 4);
    tcase_add_loop_test(tc, bf16_weights_match_the_same_golden, 0, 3);
    tcase_add_loop_test(tc, golden_case_with_bf16_cache_on_ref, 0, 4);
    tcase_add_loop_test(tc, golden_case_with_bf16_cache_on_default_backends, 0, 4);
    tcase_add_test(tc, bad_cache_dtype_is_named);
    tcase_add_loop_test(tc, chunked_prefill_equals_one_prefill, 0, 2);
    tcase_add_loop_test(tc, naive_attention_equals_absorbed, 0, 4);
    tcase_add_test(tc, fp8_units_match_reference_kernels);
    tcase_add_test(tc, replacement_between_runs_keeps_results);
    tcase_add_test(tc, bad_tokens_and_positions_are_errors);
    tcase_add_test(tc, missing_tensor_is_named);
    tcase_add_test(tc, wrong_shape_is_named);
    tcase_add_test(tc, contradictory_config_is_named);
    tcase_add_test(tc, truncated_weights_are_refused);
    tcase_add_test(tc, missing_model_dir_is_reported);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
