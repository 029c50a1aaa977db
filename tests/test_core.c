/* test_core.c - loader, graph builders, executor: placement, fallback, copies,
 * memory planning, guard bytes, allocation failures, re-placement, trace. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fathom/fathom.h"
#include "fathom/plugin.h"
#include "internal.h"

static char plugin_path[1024];

/* Loads the built plugins plus the deliberately broken ones from tests/plugins. */
static fm_ctx *ctx_with_test_plugins(void) {
    const char *b = getenv("FATHOM_BUILD");
    static char extra_buf[512];
    static const char *extra;
    static int once;
    if (!once++ && getenv("FATHOM_PLUGIN_PATH")) extra = strncpy(extra_buf, getenv("FATHOM_PLUGIN_PATH"), 511);
    snprintf(plugin_path, sizeof plugin_path, "%s%s%s/plugins:%s/tests/plugins", extra ? extra : "", extra ? ":" : "",
             b ? b : "build", b ? b : "build");
    setenv("FATHOM_PLUGIN_PATH", plugin_path, 1);
    setenv("FATHOM_LOG", "0", 1);
    fm_ctx *ctx = NULL;
    ck_assert_int_eq(fm_ctx_init(&ctx), FM_OK);
    return ctx;
}

static const fm_backend_info *info_of(fm_ctx *ctx, const char *name, fm_backend_info *out) {
    int i = fm_backend_find(ctx, name);
    if (i < 0) return NULL;
    fm_backend_info_get(ctx, i, out);
    return out;
}

START_TEST(loader_lists_ref_and_stub_ready) {
    fm_ctx *ctx = ctx_with_test_plugins();
    fm_backend_info b;
    ck_assert_ptr_nonnull(info_of(ctx, "ref", &b));
    ck_assert_int_eq(b.status, FM_BACKEND_READY);
    ck_assert_ptr_nonnull(info_of(ctx, "stub", &b));
    ck_assert_int_eq(b.status, FM_BACKEND_READY);
    ck_assert(b.ops & (1ull << FM_OP_MATMUL));
    fm_ctx_free(ctx);
}
END_TEST

/* Each broken plugin is refused with the file and the reason; the rest still load. */
START_TEST(loader_refuses_broken_plugins_with_reason) {
    fm_ctx *ctx = ctx_with_test_plugins();
    struct { const char *name, *needle; fm_backend_status st; } want[] = {
        {"badabi", "major must match", FM_BACKEND_REFUSED},
        {"badsize", "struct_size 40", FM_BACKEND_REFUSED},
        {"noentry", "missing entry symbol fm_plugin_entry", FM_BACKEND_REFUSED},
        {"initfail", "injected init failure", FM_BACKEND_REFUSED},
        {"unavail", "no device present", FM_BACKEND_UNAVAILABLE},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        fm_backend_info b;
        ck_assert_msg(info_of(ctx, want[i].name, &b), "plugin %s not listed", want[i].name);
        ck_assert_int_eq(b.status, want[i].st);
        ck_assert_msg(strstr(b.reason, want[i].needle), "%s: reason '%s'", want[i].name, b.reason);
        if (want[i].st == FM_BACKEND_REFUSED)
            ck_assert_msg(strstr(b.reason, "libfathom-"), "%s: reason names no file: '%s'", want[i].name, b.reason);
    }
    fm_backend_info b;
    ck_assert_int_eq(info_of(ctx, "stub", &b)->status, FM_BACKEND_READY);
    ck_assert_int_eq(info_of(ctx, "devmem", &b)->status, FM_BACKEND_READY);
    fm_ctx_free(ctx);
}
END_TEST

START_TEST(builder_mismatch_names_op_and_shapes) {
    fm_ctx *ctx = ctx_with_test_plugins();
    fm_graph *g;
    ck_assert_int_eq(fm_graph_init(ctx, &g), FM_OK);
    static float w[12];
    fm_tensor *x = fm_input(g, "x", FM_F32, 2, (int64_t[]){2, 3});
    fm_tensor *wt = fm_weight(g, "w", FM_F32, 2, (int64_t[]){4, 4}, w, NULL);
    ck_assert_ptr_null(fm_matmul(g, x, wt, 0));
    ck_assert_int_eq(fm_graph_status(g), FM_EINVAL);
    const char *e = fm_ctx_error(ctx);
    ck_assert_msg(strstr(e, "matmul") && strstr(e, "[2, 3]") && strstr(e, "[4, 4]"), "message: %s", e);
    /* later builders propagate NULL without replacing the first error */
    ck_assert_ptr_null(fm_add(g, NULL, x));
    ck_assert_msg(strstr(fm_ctx_error(ctx), "matmul"), "first error kept: %s", fm_ctx_error(ctx));
    fm_session *s;
    ck_assert_int_ne(fm_session_init(ctx, g, "ref", NULL, 0, &s), FM_OK);
    fm_graph_free(g);
    fm_ctx_free(ctx);
}
END_TEST

START_TEST(builder_checks_fp8_scales_and_route_params) {
    fm_ctx *ctx = ctx_with_test_plugins();
    fm_graph *g;
    static uint8_t w8[200 * 256];
    static float sc[4];
    fm_graph_init(ctx, &g);
    fm_tensor *bad = fm_weight(g, "s", FM_F32, 2, (int64_t[]){1, 2}, sc, NULL);
    ck_assert_ptr_null(fm_weight(g, "w8", FM_F8_E4M3, 2, (int64_t[]){200, 256}, w8, bad));
    ck_assert_msg(strstr(fm_ctx_error(ctx), "[2, 2]"), "%s", fm_ctx_error(ctx));
    fm_graph_free(g);

    fm_graph_init(ctx, &g);
    static float gw[10 * 8];
    fm_tensor *x = fm_input(g, "x", FM_F32, 2, (int64_t[]){3, 8});
    fm_tensor *gate = fm_weight(g, "gate", FM_F32, 2, (int64_t[]){10, 8}, gw, NULL);
    fm_moe_route_params p = {.n_experts = 10, .top_k = 2, .n_group = 4, .topk_group = 2, .scale = 1};
    fm_tensor *ids, *wts;
    ck_assert_int_eq(fm_moe_route(g, x, gate, NULL, &p, &ids, &wts), FM_EINVAL);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "moe_route"), "%s", fm_ctx_error(ctx));
    fm_graph_free(g);
    fm_ctx_free(ctx);
}
END_TEST

/* The latent cache flows from mla_cache to mla_attn as f32 or bf16; another dtype is
 * an error naming the tensor and the dtypes allowed. */
START_TEST(builder_cache_is_f32_or_bf16) {
    fm_ctx *ctx = ctx_with_test_plugins();
    static uint16_t cache16[8 * 40];
    static float w[32], kvb[4 * 32 * 32];
    fm_mla_cache_params cp = {.kv_lora = 32, .eps = 1e-6f, .rope = {.head_dim = 8, .rope_dim = 8, .theta = 10000}};
    fm_mla_attn_params ap = {.n_heads = 4, .nope = 16, .rope = 8, .v = 16, .kv_lora = 32, .scale = 0.2f};
    for (int bf = 0; bf < 2; bf++) {
        fm_graph *g;
        ck_assert_int_eq(fm_graph_init(ctx, &g), FM_OK);
        fm_tensor *st = fm_state(g, "kv_state", bf ? FM_BF16 : FM_F16, 2, (int64_t[]){8, 40}, cache16);
        fm_tensor *kv = fm_input(g, "kv", FM_F32, 2, (int64_t[]){2, 40});
        fm_tensor *pos = fm_input(g, "pos", FM_I32, 1, (int64_t[]){2});
        fm_tensor *q = fm_input(g, "q", FM_F32, 2, (int64_t[]){2, 4 * 24});
        fm_tensor *nw = fm_weight(g, "norm", FM_F32, 1, (int64_t[]){32}, w, NULL);
        fm_tensor *kb = fm_weight(g, "kv_b", FM_F32, 2, (int64_t[]){4 * 32, 32}, kvb, NULL);
        fm_tensor *c = fm_mla_cache(g, st, kv, nw, pos, &cp);
        if (!bf) {
            ck_assert_ptr_null(c);
            ck_assert_int_eq(fm_graph_status(g), FM_EINVAL);
            const char *e = fm_ctx_error(ctx);
            ck_assert_msg(strstr(e, "mla_cache") && strstr(e, "'kv_state'") && strstr(e, "f16") &&
                              strstr(e, "f32 or bf16"), "message: %s", e);
            fm_graph_free(g);
            /* mla_attn checks its cache source too */
            ck_assert_int_eq(fm_graph_init(ctx, &g), FM_OK);
            st = fm_state(g, "kv_state", FM_F16, 2, (int64_t[]){8, 40}, cache16);
            q = fm_input(g, "q", FM_F32, 2, (int64_t[]){2, 4 * 24});
            pos = fm_input(g, "pos", FM_I32, 1, (int64_t[]){2});
            kb = fm_weight(g, "kv_b", FM_F32, 2, (int64_t[]){4 * 32, 32}, kvb, NULL);
            ck_assert_ptr_null(fm_mla_attn(g, q, st, pos, kb, &ap));
            e = fm_ctx_error(ctx);
            ck_assert_msg(strstr(e, "mla_attn") && strstr(e, "'kv_state'") && strstr(e, "f32 or bf16"), "message: %s", e);
            fm_graph_free(g);
            continue;
        }
        ck_assert_ptr_nonnull(c);
        ck_assert_int_eq(fm_tensor_dtype(c), FM_BF16); /* same storage, same dtype */
        ck_assert_ptr_nonnull(fm_mla_attn(g, q, c, pos, kb, &ap));
        ck_assert_int_eq(fm_graph_status(g), FM_OK);
        fm_graph_free(g);
    }
    fm_ctx_free(ctx);
}
END_TEST

/* A small graph touching several ops: y = swiglu(x W1^T, x W2^T) W3^T + x. */
typedef struct mlp {
    fm_graph *g;
    fm_tensor *x, *y;
    float xv[4 * 8], w1[16 * 8], w2[16 * 8], w3[8 * 16];
} mlp;

static void mlp_build(fm_ctx *ctx, mlp *m) {
    unsigned r = 7;
    float *all[] = {m->xv, m->w1, m->w2, m->w3};
    size_t len[] = {32, 128, 128, 128};
    for (int a = 0; a < 4; a++)
        for (size_t i = 0; i < len[a]; i++) all[a][i] = (float)((r = r * 1103515245u + 12345u) >> 9 & 1023) / 512.0f - 1.0f;
    ck_assert_int_eq(fm_graph_init(ctx, &m->g), FM_OK);
    fm_graph *g = m->g;
    m->x = fm_input(g, "x", FM_F32, 2, (int64_t[]){4, 8});
    fm_tensor *w1 = fm_weight(g, "w1", FM_F32, 2, (int64_t[]){16, 8}, m->w1, NULL);
    fm_tensor *w2 = fm_weight(g, "w2", FM_F32, 2, (int64_t[]){16, 8}, m->w2, NULL);
    fm_tensor *w3 = fm_weight(g, "w3", FM_F32, 2, (int64_t[]){8, 16}, m->w3, NULL);
    fm_tensor *h = fm_swiglu(g, fm_matmul(g, m->x, w1, 0), fm_matmul(g, m->x, w2, 0));
    m->y = fm_add(g, fm_matmul(g, h, w3, 0), m->x);
    fm_graph_output(g, m->y);
    ck_assert_int_eq(fm_graph_status(g), FM_OK);
}

static void mlp_run(fm_ctx *ctx, mlp *m, const char *backends, const char *place, uint32_t flags, float *out,
                    fm_status want) {
    fm_session *s = NULL;
    ck_assert_int_eq(fm_session_init(ctx, m->g, backends, place, flags, &s), FM_OK);
    ck_assert_int_eq(fm_session_set_input(s, m->x, m->xv, sizeof m->xv), FM_OK);
    fm_status st = fm_session_run(s);
    ck_assert_msg(st == want, "run: %d (%s)", st, fm_ctx_error(ctx));
    if (st == FM_OK) ck_assert_int_eq(fm_session_read(s, m->y, out, 32 * sizeof(float)), FM_OK);
    fm_session_free(s);
}

START_TEST(placement_follows_priority_and_overrides) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    fm_session *s;
    ck_assert_int_eq(fm_session_init(ctx, m.g, "stub", "matmul=ref", 0, &s), FM_OK);
    for (int i = 0; i < fm_session_node_count(s); i++) {
        fm_node_stat st;
        fm_session_node_stat(s, i, &st);
        ck_assert_str_eq(st.planned, st.op == FM_OP_MATMUL ? "ref" : "stub");
    }
    /* re-placement without rebuilding the graph */
    ck_assert_int_eq(fm_session_place(s, "ref", "swiglu=stub"), FM_OK);
    for (int i = 0; i < fm_session_node_count(s); i++) {
        fm_node_stat st;
        fm_session_node_stat(s, i, &st);
        ck_assert_str_eq(st.planned, st.op == FM_OP_SWIGLU ? "stub" : "ref");
    }
    ck_assert_int_eq(fm_session_place(s, "nosuch", NULL), FM_ENOTFOUND);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "nosuch"), "%s", fm_ctx_error(ctx));
    ck_assert_int_eq(fm_session_place(s, "ref", "frobnicate=ref"), FM_EINVAL);
    fm_session_free(s);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

/* Fault injection: refused ops, a node failing at run time, each falls back and
 * the results are identical to the reference's. */
START_TEST(stub_faults_fall_back_to_identical_results) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    float want[32], got[32];
    mlp_run(ctx, &m, "ref", NULL, 0, want, FM_OK);
    mlp_run(ctx, &m, "stub", NULL, FM_RUN_GUARD, got, FM_OK);
    ck_assert_mem_eq(want, got, sizeof want);

    ck_assert_int_eq(fm_backend_control(ctx, "stub", "refuse", "matmul,add"), FM_OK);
    mlp_run(ctx, &m, "stub", NULL, 0, got, FM_OK);
    ck_assert_mem_eq(want, got, sizeof want);

    for (int node = 0; node < 5; node++) {
        char v[8];
        snprintf(v, sizeof v, "%d", node);
        fm_backend_control(ctx, "stub", "reset", "1");
        ck_assert_int_eq(fm_backend_control(ctx, "stub", "fail_at", v), FM_OK);
        fm_session *s;
        ck_assert_int_eq(fm_session_init(ctx, m.g, "stub", NULL, 0, &s), FM_OK);
        fm_session_set_input(s, m.x, m.xv, sizeof m.xv);
        ck_assert_int_eq(fm_session_run(s), FM_OK);
        fm_node_stat st;
        fm_session_node_stat(s, node, &st);
        ck_assert_int_eq(st.fallbacks, 1);
        ck_assert_str_eq(st.planned, "stub");
        ck_assert_str_eq(st.backend, "ref");
        fm_session_read(s, m.y, got, sizeof got);
        ck_assert_mem_eq(want, got, sizeof want);
        /* strict: the same failure fails the run and names the node */
        fm_session_set_flags(s, FM_RUN_STRICT);
        ck_assert_int_eq(fm_session_run(s), FM_FAILED);
        ck_assert_msg(strstr(fm_ctx_error(ctx), "injected failure"), "%s", fm_ctx_error(ctx));
        fm_session_free(s);
    }
    ck_assert_int_eq(fm_backend_control(ctx, "stub", "nonsense", "1"), FM_ENOTFOUND);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

/* A backend with private memory: the executor copies across spaces, uploads
 * weights once into the context's cache, and results match. */
START_TEST(private_memory_backend_gets_copies) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    float want[32], got[32];
    mlp_run(ctx, &m, "ref", NULL, 0, want, FM_OK);
    fm_session *s;
    ck_assert_int_eq(fm_session_init(ctx, m.g, "devmem", "swiglu=ref", 0, &s), FM_OK);
    fm_session_set_input(s, m.x, m.xv, sizeof m.xv);
    ck_assert_int_eq(fm_session_run(s), FM_OK);
    ck_assert_int_gt(fm_session_copy_count(s), 2);
    fm_session_read(s, m.y, got, sizeof got);
    ck_assert_mem_eq(want, got, sizeof want);
    /* a failing node on the private-memory backend is staged through host memory */
    fm_backend_control(ctx, "devmem", "fail_at", "4");
    ck_assert_int_eq(fm_session_run(s), FM_OK);
    fm_session_read(s, m.y, got, sizeof got);
    ck_assert_mem_eq(want, got, sizeof want);
    fm_backend_control(ctx, "devmem", "reset", "1");
    fm_session_free(s);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

/* Allocation failures anywhere in session setup return ENOMEM and leak nothing
 * (the ASan build checks the leaks). */
START_TEST(allocation_failures_return_enomem) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    fm_backend_control(ctx, "stub", "fail_alloc", "1");
    fm_session *s = NULL;
    ck_assert_int_eq(fm_session_init(ctx, m.g, "stub", NULL, 0, &s), FM_ENOMEM);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "stub"), "%s", fm_ctx_error(ctx));
    fm_backend_control(ctx, "stub", "reset", "1");
    int failures = 0;
    for (int n = 1; n < 40; n++) {
        fm_ctx_fail_alloc_after(ctx, n);
        fm_status st = fm_session_init(ctx, m.g, "devmem,stub", NULL, 0, &s);
        if (st == FM_OK) {
            st = fm_session_set_input(s, m.x, m.xv, sizeof m.xv);
            if (st == FM_OK) st = fm_session_run(s);
            fm_session_free(s);
        }
        ck_assert(st == FM_OK || st == FM_ENOMEM || st == FM_FAILED);
        failures += st != FM_OK;
    }
    fm_ctx_fail_alloc_after(ctx, 0);
    ck_assert_int_gt(failures, 0);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

/* Liveness: a chain of 64 adds needs two live intermediates, not 64. */
/* smaps' THPeligible of the mapping that holds p: 1 when the kernel may back it with
 * huge pages (in THP mode "madvise": marked with MADV_HUGEPAGE), 0, or -1: not found */
static int thp_eligible(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, r = -1;
    while (r < 0 && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perm[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perm) == 3) /* a mapping's first line */
            in = (uintptr_t)p >= a && (uintptr_t)p < b;
        else if (in && !strncmp(line, "THPeligible:", 12))
            r = atoi(line + 12);
    }
    fclose(f);
    return r;
}

/* fm_alloc_stream (a model's KV cache): zeroed and 64-byte aligned like fm_alloc; from
 * 2 MiB on 2 MiB aligned and marked for transparent huge pages to its last byte (the
 * last partial 2 MiB span too) */
START_TEST(alloc_asks_huge_pages_for_large_buffers) {
    const size_t n = ((size_t)5 << 20) + 100;
    unsigned char *small = fm_alloc_stream(NULL, 1000), *big = fm_alloc_stream(NULL, n);
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(big);
    ck_assert_uint_eq((uintptr_t)small % 64, 0);
    ck_assert_uint_eq((uintptr_t)big % ((size_t)2 << 20), 0);
    for (size_t i = 0; i < n; i += 4093) ck_assert_uint_eq(big[i], 0);
    ck_assert_uint_eq(big[n - 1], 0);
    char mode[256] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(mode, sizeof mode, f)) mode[0] = 0;
        mode[strcspn(mode, "\n")] = 0;
        fclose(f);
    }
    if (strstr(mode, "[madvise]") || strstr(mode, "[always]")) {
        ck_assert_msg(thp_eligible(big) == 1, "a 5 MiB buffer is not marked for huge pages (THP mode %s)", mode);
        ck_assert_msg(thp_eligible(big + n - 1) == 1,
                      "the last partial 2 MiB span of a 5 MiB buffer is not marked for huge pages (THP mode %s)", mode);
    } else {
        fprintf(stderr, "alloc_asks_huge_pages_for_large_buffers: the huge-page check skipped: this kernel offers "
                        "no transparent huge pages (%s)\n", mode[0] ? mode : "no THP settings");
    }
    fm_free(small);
    fm_free(big);
}
END_TEST

START_TEST(memory_plan_reuses_dead_tensors) {
    fm_ctx *ctx = ctx_with_test_plugins();
    fm_graph *g;
    fm_graph_init(ctx, &g);
    static float c[1024];
    int64_t ne[2] = {1, 1024};
    fm_tensor *x = fm_input(g, "x", FM_F32, 2, ne), *w = fm_weight(g, "c", FM_F32, 2, ne, c, NULL), *y = x;
    for (int i = 0; i < 64; i++) y = fm_add(g, y, w);
    fm_graph_output(g, y);
    fm_session *s;
    ck_assert_int_eq(fm_session_init(ctx, g, "ref", NULL, 0, &s), FM_OK);
    uint64_t bytes = fm_session_arena_bytes(s, "ref");
    ck_assert_uint_le(bytes, 2 * 4096);
    ck_assert_uint_ge(bytes, 4096);
    fm_session_free(s);
    fm_graph_free(g);
    fm_ctx_free(ctx);
}
END_TEST

START_TEST(run_reports_unset_input_and_bad_sizes) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    fm_session *s;
    ck_assert_int_eq(fm_session_init(ctx, m.g, NULL, NULL, 0, &s), FM_OK);
    ck_assert_int_eq(fm_session_run(s), FM_EINVAL);
    ck_assert_msg(strstr(fm_ctx_error(ctx), "'x'"), "%s", fm_ctx_error(ctx));
    ck_assert_int_eq(fm_session_set_input(s, m.x, m.xv, 3), FM_EINVAL);
    float out[32];
    ck_assert_int_eq(fm_session_read(s, m.y, out, 4), FM_EINVAL);
    fm_session_free(s);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

START_TEST(trace_is_chrome_json_with_every_node) {
    fm_ctx *ctx = ctx_with_test_plugins();
    mlp m;
    mlp_build(ctx, &m);
    float out[32];
    mlp_run(ctx, &m, "stub", "matmul=ref", FM_RUN_TRACE, out, FM_OK);
    char path[] = "/tmp/fathom-trace-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fm_ctx_write_trace(ctx, path), FM_OK);
    FILE *f = fopen(path, "r");
    char buf[8192] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    remove(path);
    ck_assert_uint_gt(n, 0);
    ck_assert_ptr_nonnull(strstr(buf, "\"traceEvents\""));
    int events = 0;
    for (const char *p = buf; (p = strstr(p, "\"ph\":\"X\"")); p++) events++;
    ck_assert_int_eq(events, fm_graph_node_count(m.g));
    ck_assert_ptr_nonnull(strstr(buf, "\"cat\":\"swiglu\""));
    ck_assert_int_eq(fm_ctx_write_trace(ctx, "/nonexistent-dir/x.json"), FM_EIO);
    fm_graph_free(m.g);
    fm_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, loader_lists_ref_and_stub_ready);
    tcase_add_test(tc, loader_refuses_broken_plugins_with_reason);
    tcase_add_test(tc, builder_mismatch_names_op_and_shapes);
    tcase_add_test(tc, builder_checks_fp8_scales_and_route_params);
    tcase_add_test(tc, builder_cache_is_f32_or_bf16);
    tcase_add_test(tc, placement_follows_priority_and_overrides);
    tcase_add_test(tc, stub_faults_fall_back_to_identical_results);
    tcase_add_test(tc, private_memory_backend_gets_copies);
    tcase_add_test(tc, allocation_failures_return_enomem);
    tcase_add_test(tc, memory_plan_reuses_dead_tensors);
    tcase_add_test(tc, alloc_asks_huge_pages_for_large_buffers);
    tcase_add_test(tc, run_reports_unset_input_and_bad_sizes);
    tcase_add_test(tc, trace_is_chrome_json_with_every_node);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
