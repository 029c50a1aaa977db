/* test_safetensors.c - the safetensors reader on the golden files, the writer,
 * sharded indexes, and one test per kind of malformed input. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"

#ifndef FM_TEST_DATA
#define FM_TEST_DATA "tests/data"
#endif
#define GOLDEN FM_TEST_DATA "/golden"

static char tmpdir[64];
static char err[512];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/fathom-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    err[0] = '\0';
}

static void teardown(void)
{
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(tmpdir);
}

static const char *tmp(const char *name)
{
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

/* Writes a raw safetensors file: length field hlen (or strlen(header) if
 * hlen == UINT64_MAX), the header text, then data_len bytes of a ramp. */
static const char *write_raw(const char *name, uint64_t hlen, const char *header, size_t data_len)
{
    const char *path = tmp(name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t n = hlen == UINT64_MAX ? strlen(header) : hlen;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(n >> (8 * i));
    ck_assert_uint_eq(fwrite(len8, 1, 8, f), 8);
    ck_assert_uint_eq(fwrite(header, 1, strlen(header), f), strlen(header));
    for (size_t i = 0; i < data_len; i++)
        fputc((int)(i & 0xff), f);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

/* Opens a file that must be rejected with status s and a message holding each
 * of the given fragments (NULL-terminated). */
static void expect_reject(const char *path, fm_status s, ...)
{
    fm_st *st = (fm_st *)0x1;
    fm_status got = fm_st_open(path, &st, err, sizeof err);
    ck_assert_msg(got == s, "status %d, expected %d (%s)", got, s, err);
    ck_assert_ptr_null(st);
    const char *at = strstr(err, path);
    ck_assert_msg(at != NULL, "message does not name the file: %s", err);
    const char *rest = at + strlen(path); /* so a file name can't satisfy a fragment */
    va_list ap;
    va_start(ap, s);
    for (const char *frag; (frag = va_arg(ap, const char *)) != NULL; )
        ck_assert_msg(strstr(rest, frag) != NULL, "message lacks '%s': %s", frag, err);
    va_end(ap);
}

static fm_st *open_ok(const char *path)
{
    fm_st *st = NULL;
    fm_status s = fm_st_open(path, &st, err, sizeof err);
    ck_assert_msg(s == FM_OK, "open %s: %s", path, err);
    ck_assert_ptr_nonnull(st);
    return st;
}

static void check_tensor(const fm_st *st, const char *name, fm_dtype dt, int ndim,
                         int64_t n0, int64_t n1)
{
    const fm_st_tensor *t = fm_st_get(st, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    ck_assert_str_eq(t->name, name);
    ck_assert_int_eq(t->dtype, dt);
    ck_assert_int_eq(t->ndim, ndim);
    ck_assert_int_eq(t->ne[0], n0);
    if (ndim > 1)
        ck_assert_int_eq(t->ne[1], n1);
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->ne[i];
    ck_assert_uint_eq(t->nbytes, (size_t)n * fm_st_dtype_size(dt));
}

static int32_t i32_at(const fm_st_tensor *t, int64_t i)
{
    int32_t v;
    ck_assert_uint_le((size_t)(i + 1) * 4, t->nbytes);
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

static float f32_at(const fm_st_tensor *t, int64_t i)
{
    float v;
    ck_assert_uint_le((size_t)(i + 1) * 4, t->nbytes);
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

/* ---- golden files ------------------------------------------------------------- */

/* Tensor counts follow from each case's config: embed + norm + lm_head, then per
 * layer 2 norms, attention (q LoRA: q_a_proj, q_a_layernorm, q_b_proj; else
 * q_proj; plus kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), a dense
 * MLP (3) or MoE (gate, e_score_correction_bias if noaux_tc, 3 per expert, 3
 * shared); tiny-fp8 adds a weight_scale_inv per FP8 matrix. */
START_TEST(golden_models_have_expected_tensors)
{
    static const struct {
        const char *file;
        int count;
    } cases[] = {
        {GOLDEN "/tiny-v3/model.safetensors", 139},
        {GOLDEN "/tiny-v3/model.bf16.safetensors", 139},
        {GOLDEN "/tiny-yarn/model.safetensors", 139},
        {GOLDEN "/tiny-yarn/model.bf16.safetensors", 139},
        {GOLDEN "/tiny-v2style/model.safetensors", 107},
        {GOLDEN "/tiny-v2style/model.bf16.safetensors", 107},
        {GOLDEN "/tiny-fp8/model.safetensors", 141},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fm_st *st = open_ok(cases[i].file);
        ck_assert_msg(fm_st_count(st) == cases[i].count, "%s: %d tensors", cases[i].file,
                      fm_st_count(st));
        for (int k = 1; k < fm_st_count(st); k++)
            ck_assert_int_lt(strcmp(fm_st_at(st, k - 1)->name, fm_st_at(st, k)->name), 0);
        ck_assert_ptr_null(fm_st_at(st, fm_st_count(st)));
        ck_assert_str_eq(fm_st_at(st, 0)->path, cases[i].file);
        ck_assert_str_eq(fm_st_metadata(st, "format"), "pt");
        fm_st_close(st);
    }
}
END_TEST

START_TEST(golden_v3_shapes_and_dtypes)
{
    fm_st *st = open_ok(GOLDEN "/tiny-v3/model.safetensors");
    check_tensor(st, "model.embed_tokens.weight", FM_F32, 2, 256, 64);
    check_tensor(st, "lm_head.weight", FM_F32, 2, 256, 64);
    /* q_b_proj: [H * (nope + rope), q_lora] = [4 * 24, 48] */
    check_tensor(st, "model.layers.0.self_attn.q_b_proj.weight", FM_F32, 2, 96, 48);
    /* kv_a_proj_with_mqa: [kv_lora + rope, hidden] */
    check_tensor(st, "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", FM_F32, 2, 40, 64);
    check_tensor(st, "model.layers.2.mlp.experts.15.down_proj.weight", FM_F32, 2, 64, 32);
    check_tensor(st, "model.layers.1.mlp.gate.e_score_correction_bias", FM_F32, 1, 16, 0);
    ck_assert_ptr_null(fm_st_get(st, "model.layers.0.mlp.gate.weight")); /* layer 0 is dense */
    fm_st_close(st);

    st = open_ok(GOLDEN "/tiny-v3/model.bf16.safetensors");
    check_tensor(st, "model.embed_tokens.weight", FM_BF16, 2, 256, 64);
    check_tensor(st, "model.layers.1.mlp.gate.e_score_correction_bias", FM_F32, 1, 16, 0);
    fm_st_close(st);
}
END_TEST

START_TEST(golden_v2style_has_plain_q_proj)
{
    fm_st *st = open_ok(GOLDEN "/tiny-v2style/model.safetensors");
    check_tensor(st, "model.layers.0.self_attn.q_proj.weight", FM_F32, 2, 72, 48);
    ck_assert_ptr_null(fm_st_get(st, "model.layers.0.self_attn.q_a_proj.weight"));
    /* two shared experts of 24: one MLP of width 48 */
    check_tensor(st, "model.layers.1.mlp.shared_experts.gate_proj.weight", FM_F32, 2, 48, 48);
    ck_assert_ptr_null(fm_st_get(st, "model.layers.1.mlp.gate.e_score_correction_bias"));
    fm_st_close(st);
}
END_TEST

START_TEST(golden_fp8_weights_and_scales)
{
    fm_st *st = open_ok(GOLDEN "/tiny-fp8/model.safetensors");
    check_tensor(st, "model.layers.0.self_attn.q_b_proj.weight", FM_F8_E4M3, 2, 192, 256);
    check_tensor(st, "model.layers.0.self_attn.q_b_proj.weight_scale_inv", FM_F32, 2, 2, 2);
    check_tensor(st, "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", FM_F8_E4M3, 2, 144, 256);
    check_tensor(st, "model.layers.0.mlp.down_proj.weight_scale_inv", FM_F32, 2, 2, 4);
    check_tensor(st, "model.embed_tokens.weight", FM_BF16, 2, 256, 256);
    check_tensor(st, "model.layers.1.mlp.gate.weight", FM_BF16, 2, 16, 256);
    check_tensor(st, "model.layers.1.mlp.gate.e_score_correction_bias", FM_F32, 1, 16, 0);

    /* weight_scale_inv = amax / 448 of a nonzero block: positive and finite */
    const fm_st_tensor *t = fm_st_get(st, "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
    ck_assert_ptr_nonnull(t);
    for (int i = 0; i < 4; i++) {
        float v = f32_at(t, i);
        ck_assert_msg(v > 0.0f && v < 1.0f, "scale %d = %g", i, (double)v);
    }
    /* no code is the NaN pattern 0x7f/0xff (README: never stored) */
    t = fm_st_get(st, "model.layers.0.self_attn.q_b_proj.weight");
    const unsigned char *c = t->data;
    for (size_t i = 0; i < t->nbytes; i++)
        ck_assert_int_ne(c[i] & 0x7f, 0x7f);
    fm_st_close(st);
}
END_TEST

/* T, S and seed from each case README; decode positions are T, T+1, ... */
START_TEST(golden_outputs_match_readme)
{
    static const struct {
        const char *file, *seed;
        int T, S, count;
    } cases[] = {
        {GOLDEN "/tiny-v3/golden.safetensors", "1", 12, 6, 49},
        {GOLDEN "/tiny-v2style/golden.safetensors", "2", 9, 5, 49},
        {GOLDEN "/tiny-yarn/golden.safetensors", "3", 40, 8, 49},
        {GOLDEN "/tiny-fp8/golden.safetensors", "63", 12, 5, 68},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fm_st *st = open_ok(cases[i].file);
        int T = cases[i].T, S = cases[i].S;
        ck_assert_int_eq(fm_st_count(st), cases[i].count);
        ck_assert_str_eq(fm_st_metadata(st, "reference_commit"),
                         "9b4e9788e4a3a731f7567338ed15d3ec549ce03b");
        ck_assert_str_eq(fm_st_metadata(st, "seed"), cases[i].seed);
        ck_assert_ptr_null(fm_st_metadata(st, "no-such-key"));

        const fm_st_tensor *t;
        int64_t ne1[1] = {T};
        ck_assert_int_eq(fm_st_expect(st, "tokens", FM_I32, 1, ne1, &t, err, sizeof err), FM_OK);
        for (int k = 0; k < T; k++)
            ck_assert(i32_at(t, k) >= 0 && i32_at(t, k) < 300);

        int64_t ne2[1] = {S};
        ck_assert_int_eq(fm_st_expect(st, "decode_positions", FM_I32, 1, ne2, &t, err, sizeof err),
                         FM_OK);
        for (int k = 0; k < S; k++)
            ck_assert_int_eq(i32_at(t, k), T + k);

        /* position 0: angle 0 for every frequency */
        const fm_st_tensor *cs = fm_st_get(st, "rope.cos"), *sn = fm_st_get(st, "rope.sin");
        ck_assert_ptr_nonnull(cs);
        ck_assert_ptr_nonnull(sn);
        ck_assert_int_eq(cs->ne[0], T + S);
        for (int k = 0; k < cs->ne[1]; k++) {
            ck_assert(f32_at(cs, k) == 1.0f);
            ck_assert(f32_at(sn, k) == 0.0f);
        }
        fm_st_close(st);
    }
    fm_st *st = open_ok(GOLDEN "/tiny-fp8/golden.safetensors");
    check_tensor(st, "unit.x_fp8", FM_F8_E4M3, 2, 12, 256);
    check_tensor(st, "unit.x_scale", FM_F32, 2, 12, 2);
    fm_st_close(st);
}
END_TEST

START_TEST(directory_opens_model_safetensors)
{
    fm_st *st = open_ok(GOLDEN "/tiny-v3");
    ck_assert_int_eq(fm_st_count(st), 139);
    ck_assert_str_eq(fm_st_at(st, 0)->path, GOLDEN "/tiny-v3/model.safetensors");
    ck_assert_str_eq(fm_st_path(st), GOLDEN "/tiny-v3");
    fm_st_close(st);
    fm_st_close(NULL);
}
END_TEST

START_TEST(missing_tensor_is_not_found)
{
    fm_st *st = open_ok(GOLDEN "/tiny-v3/golden.safetensors");
    const fm_st_tensor *t = (const fm_st_tensor *)0x1;
    ck_assert_int_eq(fm_st_find(st, "no.such.tensor", &t, err, sizeof err), FM_ENOTFOUND);
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(err, "'no.such.tensor'"));
    ck_assert_ptr_nonnull(strstr(err, "golden.safetensors"));
    ck_assert_ptr_null(fm_st_get(st, "no.such.tensor"));
    ck_assert_int_eq(fm_st_expect(st, "no.such.tensor", -1, 1, NULL, &t, err, sizeof err),
                     FM_ENOTFOUND);
    ck_assert_int_eq(fm_st_find(st, "tokens", &t, err, sizeof err), FM_OK);
    ck_assert_str_eq(t->name, "tokens");
    fm_st_close(st);
}
END_TEST

START_TEST(expect_reports_shape_and_dtype_mismatch)
{
    fm_st *st = open_ok(GOLDEN "/tiny-v3/model.safetensors");
    const fm_st_tensor *t;
    int64_t want[2] = {64, -1};
    ck_assert_int_eq(fm_st_expect(st, "model.embed_tokens.weight", FM_BF16, 2, want, &t,
                                  err, sizeof err), FM_EINVAL);
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(err, "model.embed_tokens.weight"));
    ck_assert_ptr_nonnull(strstr(err, "expected [64, -1] bf16, found [256, 64] f32"));
    int64_t ok[2] = {256, -1};
    ck_assert_int_eq(fm_st_expect(st, "model.embed_tokens.weight", -1, 2, ok, &t, err, sizeof err),
                     FM_OK);
    ck_assert_ptr_nonnull(t);
    fm_st_close(st);
}
END_TEST

/* ---- writer ------------------------------------------------------------------------ */

START_TEST(write_then_read_round_trips)
{
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040};
    int32_t c = 42;
    fm_st_entry e[4] = {
        {"a", FM_F32, 2, {2, 3}, a},
        {"b.bf16", FM_BF16, 1, {3}, b},
        {"scalar", FM_I32, 0, {0}, &c},
        {"empty", FM_F8_E4M3, 2, {0, 5}, NULL},
    };
    const char *meta[] = {"format", "pt", "note", "round trip"};
    const char *path = tmp("rt.safetensors");
    ck_assert_int_eq(fm_st_write(path, 4, e, 2, meta, err, sizeof err), FM_OK);

    /* header length is a multiple of 8, so data starts 8-byte aligned */
    FILE *f = fopen(path, "rb");
    unsigned char len8[8];
    ck_assert_uint_eq(fread(len8, 1, 8, f), 8);
    fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | len8[i];
    ck_assert_uint_eq(hlen % 8, 0);

    fm_st *st = open_ok(path);
    ck_assert_int_eq(fm_st_count(st), 4);
    const fm_st_tensor *t = fm_st_get(st, "a");
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->ne[0], 2);
    ck_assert_int_eq(t->ne[1], 3);
    ck_assert_uint_eq(t->nbytes, sizeof a);
    ck_assert_int_eq(memcmp(t->data, a, sizeof a), 0);
    ck_assert_uint_eq((uintptr_t)t->data % 8, 0);
    t = fm_st_get(st, "b.bf16");
    ck_assert_int_eq(t->dtype, FM_BF16);
    ck_assert_int_eq(memcmp(t->data, b, sizeof b), 0);
    t = fm_st_get(st, "scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->nbytes, 4);
    int32_t got;
    memcpy(&got, t->data, 4); /* data is only as aligned as the file's offsets */
    ck_assert_int_eq(got, 42);
    t = fm_st_get(st, "empty");
    ck_assert_uint_eq(t->nbytes, 0);
    ck_assert_int_eq(t->ne[0], 0);
    ck_assert_str_eq(fm_st_metadata(st, "note"), "round trip");
    ck_assert_int_eq(fm_st_metadata_count(st), 2);
    const char *k, *v;
    fm_st_metadata_at(st, 0, &k, &v);
    ck_assert_str_eq(k, "format");
    ck_assert_str_eq(v, "pt");
    fm_st_close(st);
}
END_TEST

START_TEST(writer_rejects_duplicate_and_bad_entries)
{
    float a[2] = {0, 0};
    fm_st_entry dup[2] = {{"w", FM_F32, 1, {2}, a}, {"w", FM_F32, 1, {2}, a}};
    const char *path = tmp("dup.safetensors");
    ck_assert_int_eq(fm_st_write(path, 2, dup, 0, NULL, err, sizeof err), FM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "'w'"));
    ck_assert_int_ne(access(path, F_OK), 0);

    fm_st_entry neg = {"n", FM_F32, 1, {-1}, a};
    ck_assert_int_eq(fm_st_write(path, 1, &neg, 0, NULL, err, sizeof err), FM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "'n'"));
    fm_st_entry nodata = {"x", FM_F32, 1, {2}, NULL};
    ck_assert_int_eq(fm_st_write(path, 1, &nodata, 0, NULL, err, sizeof err), FM_EINVAL);
    ck_assert_int_ne(access(path, F_OK), 0);
}
END_TEST

/* ---- sharded checkpoints ----------------------------------------------------------- */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static float sh_a[4] = {1, 2, 3, 4}, sh_b[2] = {5, 6}, sh_c[3] = {7, 8, 9};

static void write_shards(void)
{
    fm_st_entry s1[2] = {{"a", FM_F32, 2, {2, 2}, sh_a}, {"b", FM_F32, 1, {2}, sh_b}};
    fm_st_entry s2[1] = {{"c", FM_F32, 1, {3}, sh_c}};
    const char *m1[] = {"shard", "1"};
    ck_assert_int_eq(fm_st_write(tmp("model-00001-of-00002.safetensors"), 2, s1, 1, m1,
                                 err, sizeof err), FM_OK);
    ck_assert_int_eq(fm_st_write(tmp("model-00002-of-00002.safetensors"), 1, s2, 0, NULL,
                                 err, sizeof err), FM_OK);
}

START_TEST(sharded_index_reads_every_shard)
{
    write_shards();
    write_text(tmp("model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 36},\n"
               " \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\",\n"
               "                \"c\": \"model-00002-of-00002.safetensors\",\n"
               "                \"b\": \"model-00001-of-00002.safetensors\"}}\n");
    for (int via_dir = 0; via_dir < 2; via_dir++) {
        fm_st *st = open_ok(via_dir ? tmpdir : tmp("model.safetensors.index.json"));
        ck_assert_int_eq(fm_st_count(st), 3);
        const fm_st_tensor *a = fm_st_get(st, "a"), *c = fm_st_get(st, "c");
        ck_assert_ptr_nonnull(strstr(a->path, "model-00001-of-00002.safetensors"));
        ck_assert_ptr_nonnull(strstr(c->path, "model-00002-of-00002.safetensors"));
        ck_assert_int_eq(memcmp(a->data, sh_a, sizeof sh_a), 0);
        ck_assert_int_eq(memcmp(fm_st_get(st, "b")->data, sh_b, sizeof sh_b), 0);
        ck_assert_int_eq(memcmp(c->data, sh_c, sizeof sh_c), 0);
        ck_assert_str_eq(fm_st_metadata(st, "total_size"), "36");
        ck_assert_str_eq(fm_st_metadata(st, "shard"), "1");
        fm_st_close(st);
    }
}
END_TEST

START_TEST(index_naming_missing_shard_fails)
{
    write_shards();
    write_text(tmp("model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
               " \"b\": \"model-00001-of-00002.safetensors\","
               " \"c\": \"model-00003-of-00003.safetensors\"}}");
    expect_reject(tmp("model.safetensors.index.json"), FM_ENOTFOUND,
                  "model-00003-of-00003.safetensors", NULL);
}
END_TEST

START_TEST(index_mapping_tensor_to_wrong_shard_fails)
{
    write_shards();
    write_text(tmp("model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"model-00002-of-00002.safetensors\","
               " \"b\": \"model-00001-of-00002.safetensors\","
               " \"c\": \"model-00002-of-00002.safetensors\"}}");
    expect_reject(tmp("model.safetensors.index.json"), FM_EINVAL, "'a'", NULL);
}
END_TEST

START_TEST(index_missing_a_shard_tensor_fails)
{
    write_shards();
    write_text(tmp("model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
               " \"c\": \"model-00002-of-00002.safetensors\"}}");
    expect_reject(tmp("model.safetensors.index.json"), FM_EINVAL, "'b'", "weight_map", NULL);
}
END_TEST

START_TEST(index_without_weight_map_fails)
{
    write_text(tmp("model.safetensors.index.json"), "{\"metadata\": {}}");
    expect_reject(tmp("model.safetensors.index.json"), FM_EINVAL, "weight_map", NULL);
    write_text(tmp("model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"../elsewhere.safetensors\"}}");
    expect_reject(tmp("model.safetensors.index.json"), FM_EINVAL, "'a'", NULL);
}
END_TEST

/* ---- malformed files ---------------------------------------------------------------- */

START_TEST(missing_file_is_not_found)
{
    expect_reject(tmp("absent.safetensors"), FM_ENOTFOUND, NULL);
    expect_reject(tmpdir, FM_ENOTFOUND, "model.safetensors", NULL);
}
END_TEST

START_TEST(file_shorter_than_length_field_fails)
{
    const char *path = tmp("short.safetensors");
    write_text(path, "\x10\x01\x02");
    expect_reject(path, FM_EINVAL, "too short", NULL);
}
END_TEST

START_TEST(truncated_data_fails)
{
    float a[8] = {0};
    fm_st_entry e[2] = {{"first", FM_F32, 1, {4}, a}, {"second", FM_F32, 1, {4}, a + 4}};
    const char *path = tmp("trunc.safetensors");
    ck_assert_int_eq(fm_st_write(path, 2, e, 0, NULL, err, sizeof err), FM_OK);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    ck_assert_int_eq(truncate(path, size - 4), 0);
    expect_reject(path, FM_EINVAL, "'second'", "data_offsets [16, 32]", "past", NULL);
}
END_TEST

START_TEST(header_length_past_eof_fails)
{
    const char *path = write_raw("hlen.safetensors", 1000, "{}", 0);
    expect_reject(path, FM_EINVAL, "header length 1000", "past the end", NULL);
}
END_TEST

START_TEST(absurd_header_length_fails)
{
    const char *path = write_raw("absurd.safetensors", (uint64_t)1 << 62, "{}", 0);
    expect_reject(path, FM_EINVAL, "header length 4611686018427387904 is absurd", NULL);
}
END_TEST

START_TEST(invalid_json_fails)
{
    const char *path = write_raw("json.safetensors", UINT64_MAX,
                                 "{\"w\": {\"dtype\": \"F32\", \"shape\": [1],}", 4);
    expect_reject(path, FM_EINVAL, "not valid JSON", NULL);
    path = write_raw("array.safetensors", UINT64_MAX, "[1, 2]  ", 0);
    expect_reject(path, FM_EINVAL, "not a JSON object", NULL);
    path = write_raw("stray.safetensors", UINT64_MAX, "{}  x   ", 0);
    expect_reject(path, FM_EINVAL, "stray", NULL);
}
END_TEST

START_TEST(offsets_past_end_fail)
{
    const char *path = write_raw("past.safetensors", UINT64_MAX,
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}", 32);
    expect_reject(path, FM_EINVAL, "'w'", "data_offsets [0, 64]", "32 bytes", NULL);
}
END_TEST

START_TEST(offsets_size_mismatch_fails)
{
    const char *path = write_raw("size.safetensors", UINT64_MAX,
        "{\"model.layers.0.mlp.gate_proj.weight\":"
        "{\"dtype\":\"F32\",\"shape\":[64,32],\"data_offsets\":[0,4096]}}", 4096);
    expect_reject(path, FM_EINVAL,
                  "tensor 'model.layers.0.mlp.gate_proj.weight': data_offsets [0, 4096] hold "
                  "4096 bytes but shape [64, 32] f32 needs 8192", NULL);
}
END_TEST

START_TEST(offsets_backwards_fail)
{
    const char *path = write_raw("back.safetensors", UINT64_MAX,
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16);
    expect_reject(path, FM_EINVAL, "'w'", "backwards", NULL);
}
END_TEST

START_TEST(overlapping_offsets_fail)
{
    const char *path = write_raw("overlap.safetensors", UINT64_MAX,
        "{\"p\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
        "\"q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[32,40]},"
        "\"r\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 40);
    expect_reject(path, FM_EINVAL, "'p'", "'r'", "overlap", NULL);
}
END_TEST

START_TEST(unknown_dtype_fails)
{
    const char *path = write_raw("f64.safetensors", UINT64_MAX,
        "{\"wide\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
    expect_reject(path, FM_EINVAL, "'wide'", "'F64'", NULL);
}
END_TEST

START_TEST(malformed_entries_fail)
{
    const char *path = write_raw("dims.safetensors", UINT64_MAX,
        "{\"t5\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4);
    expect_reject(path, FM_EINVAL, "'t5'", "5 dims", NULL);
    path = write_raw("noshape.safetensors", UINT64_MAX,
        "{\"ns\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4);
    expect_reject(path, FM_EINVAL, "'ns'", "shape", NULL);
    path = write_raw("fracdim.safetensors", UINT64_MAX,
        "{\"fd\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4);
    expect_reject(path, FM_EINVAL, "'fd'", "shape[0]", NULL);
    path = write_raw("dupname.safetensors", UINT64_MAX,
        "{\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    expect_reject(path, FM_EINVAL, "'d'", "twice", NULL);
    path = write_raw("meta.safetensors", UINT64_MAX, "{\"__metadata__\":{\"k\":1}}", 0);
    expect_reject(path, FM_EINVAL, "__metadata__", "'k'", NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *golden = tcase_create("golden");
    tcase_add_test(golden, golden_models_have_expected_tensors);
    tcase_add_test(golden, golden_v3_shapes_and_dtypes);
    tcase_add_test(golden, golden_v2style_has_plain_q_proj);
    tcase_add_test(golden, golden_fp8_weights_and_scales);
    tcase_add_test(golden, golden_outputs_match_readme);
    tcase_add_test(golden, directory_opens_model_safetensors);
    tcase_add_test(golden, missing_tensor_is_not_found);
    tcase_add_test(golden, expect_reports_shape_and_dtype_mismatch);
    suite_add_tcase(s, golden);

    TCase *files = tcase_create("files");
    tcase_add_checked_fixture(files, setup, teardown);
    tcase_add_test(files, write_then_read_round_trips);
    tcase_add_test(files, writer_rejects_duplicate_and_bad_entries);
    tcase_add_test(files, sharded_index_reads_every_shard);
    tcase_add_test(files, index_naming_missing_shard_fails);
    tcase_add_test(files, index_mapping_tensor_to_wrong_shard_fails);
    tcase_add_test(files, index_missing_a_shard_tensor_fails);
    tcase_add_test(files, index_without_weight_map_fails);
    tcase_add_test(files, missing_file_is_not_found);
    tcase_add_test(files, file_shorter_than_length_field_fails);
    tcase_add_test(files, truncated_data_fails);
    tcase_add_test(files, header_length_past_eof_fails);
    tcase_add_test(files, absurd_header_length_fails);
    tcase_add_test(files, invalid_json_fails);
    tcase_add_test(files, offsets_past_end_fail);
    tcase_add_test(files, offsets_size_mismatch_fails);
    tcase_add_test(files, offsets_backwards_fail);
    tcase_add_test(files, overlapping_offsets_fail);
    tcase_add_test(files, unknown_dtype_fails);
    tcase_add_test(files, malformed_entries_fail);
    suite_add_tcase(s, files);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
