/* test_cpu.c - the cpu backend plugin against straightforward references.
 *
 * The plugin is driven through its fm_plugin table with hand-built nodes (no
 * core library needed): loaded from $FATHOM_BUILD/plugins/libfathom-cpu.so (or
 * build/...), or linked in when built with -DFM_CPU_TEST_LINKED. Every kernel
 * test runs under each ISA level the machine has (control "isa"); the levels it
 * lacks are reported and skipped. References are written independently of the
 * plugin: double-precision sums, an exhaustive-search e4m3 encoder and integer
 * fp8 block sums.
 */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fathom/plugin.h"

/* ---- host services and plugin ---- */

static void *h_alloc(void *ctx, size_t n) {
    (void)ctx;
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1)) return NULL;
    return p;
}
static void h_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}
static int log_count;
static void h_log(void *ctx, int level, const char *fmt, ...) {
    (void)ctx;
    (void)level;
    (void)fmt;
    log_count++;
}
static fm_status h_ref(const fm_pl_node *n, char *err, size_t errn) {
    (void)n;
    snprintf(err, errn, "the cpu tests provide no reference backend");
    return FM_UNSUPPORTED;
}
static const fm_host_services host = {sizeof(fm_host_services), FM_PLUGIN_ABI_MINOR, h_alloc, h_free, h_log, h_ref, NULL};

#ifdef FM_CPU_TEST_LINKED
const fm_plugin *fm_plugin_entry(void);
static const fm_plugin *get_plugin(void) { return fm_plugin_entry(); }
#else
static const fm_plugin *get_plugin(void) {
    static const fm_plugin *pl;
    if (pl) return pl;
    const char *b = getenv("FATHOM_BUILD");
    char path[1024];
    snprintf(path, sizeof path, "%s/plugins/libfathom-cpu.so", b && *b ? b : "build");
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "test_cpu: cannot load %s: %s\n", path, dlerror());
        return NULL;
    }
    const fm_plugin *(*entry)(void) = (const fm_plugin *(*)(void))dlsym(h, "fm_plugin_entry");
    pl = entry ? entry() : NULL;
    return pl;
}
#endif

static const fm_plugin *P;
static void *S;
static const char *const isas[] = {"scalar", "avx2", "avx512", "avx512bf16"};
static int cur_isa;

static void setup(void) {
    P = get_plugin();
    ck_assert_msg(P != NULL, "plugin not found");
    char why[256] = "";
    ck_assert_int_eq(P->init(&host, &S, why, sizeof why), FM_OK);
}
static void teardown(void) {
    P->destroy(S);
    S = NULL;
}

/* Selects ISA i; returns 0 (and prints a note once) if the machine lacks it. */
static int use_isa(int i) {
    fm_status st = P->control(S, "isa", isas[i]);
    if (st == FM_UNSUPPORTED) {
        static int noted[4];
        if (!noted[i]++) printf("test_cpu: this machine lacks %s; its tests are skipped\n", isas[i]);
        return 0;
    }
    ck_assert_int_eq(st, FM_OK);
    cur_isa = i;
    return 1;
}

/* ---- slots ---- */

START_TEST(t_entry) {
    ck_assert_int_eq(P->abi_major, FM_PLUGIN_ABI_MAJOR);
    ck_assert_uint_ge(P->struct_size, FM_PLUGIN_SIZE_1_0);
    ck_assert_str_eq(P->name, "cpu");
    fm_device_info di;
    ck_assert_int_eq(P->device_info(S, &di), FM_OK);
    ck_assert_str_eq(di.kind, "cpu");
    ck_assert(di.flags & FM_DEV_HOST_MEMORY);
    ck_assert(di.ops & (1ull << FM_OP_MATMUL));
    ck_assert(strstr(di.name, "thread") != NULL);
    ck_assert_str_eq(P->last_error(S), "");
}
END_TEST

START_TEST(t_buffers) {
    void *buf, *hp;
    ck_assert_int_eq(P->buffer_alloc(S, 1000, &buf, &hp), FM_OK);
    ck_assert_ptr_eq(buf, hp);
    ck_assert_uint_eq((uintptr_t)hp % 64, 0);
    char src[100], dst[100];
    for (int i = 0; i < 100; i++) src[i] = (char)i;
    ck_assert_int_eq(P->buffer_upload(S, buf, 900, src, 100), FM_OK);
    ck_assert_int_eq(P->buffer_download(S, buf, 900, dst, 100), FM_OK);
    ck_assert_mem_eq(src, dst, 100);
    P->buffer_free(S, buf);
}
END_TEST

START_TEST(t_control) {
    ck_assert_int_eq(P->control(S, "no-such-key", "1"), FM_ENOTFOUND);
    ck_assert(strlen(P->last_error(S)) > 0);
    ck_assert_int_eq(P->control(S, "isa", "mmx"), FM_EINVAL);
    ck_assert_int_eq(P->control(S, "threads", "-3"), FM_EINVAL);
    ck_assert_int_eq(P->control(S, "threads", "3"), FM_OK);
    fm_device_info di;
    P->device_info(S, &di);
    ck_assert_msg(strstr(di.name, "3 threads") != NULL, "%s", di.name);
    ck_assert_int_eq(P->control(S, "threads", "auto"), FM_OK);
    ck_assert_int_eq(P->control(S, "isa", "scalar"), FM_OK);
    P->device_info(S, &di);
    ck_assert_msg(strstr(di.name, "scalar") != NULL, "%s", di.name);
    ck_assert_int_eq(P->control(S, "isa", "auto"), FM_OK);
}
END_TEST

static TCase *cpu_tcase(const char *name) {
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    return tc;
}

/* ---- data and references ---- */

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-52 - 1.0;
}
static float fbits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t bitsf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static double ref_bf16(uint16_t h) { return fbits((uint32_t)h << 16); }
static double ref_f16(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return h & 0x8000 ? -v : v;
}
static double ref_e4m3(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    double v = e ? ldexp(8 + m, e - 10) : ldexp(m, -9);
    return c & 0x80 ? -v : v;
}
/* e4m3 by exhaustive search: nearest finite code, ties to the even code, saturating. */
static uint8_t ref_to_e4m3(float f) {
    double a = fabs((double)f);
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c <= 0x7e; c++) {
        double d = fabs(a - ref_e4m3((uint8_t)c));
        if (d < bd || (d == bd && !(c & 1))) bd = d, best = c;
    }
    return (uint8_t)(best | (signbit(f) ? 0x80 : 0));
}

typedef struct wt { /* a weight under test */
    int dtype;
    int64_t N, K;
    void *data;
    float *scale;
    fm_pl_tensor t, ts;
} wt;

static void wt_make(wt *w, int dtype, int64_t N, int64_t K, double amp) {
    memset(w, 0, sizeof *w);
    w->dtype = dtype, w->N = N, w->K = K;
    size_t es = dtype == FM_F32 ? 4 : dtype == FM_F8_E4M3 ? 1 : 2;
    w->data = malloc((size_t)(N * K) * es + 64);
    for (int64_t i = 0; i < N * K; i++) {
        float v = (float)(urand() * amp);
        switch (dtype) {
        case FM_F32: ((float *)w->data)[i] = v; break;
        case FM_BF16: ((uint16_t *)w->data)[i] = (uint16_t)(bitsf(v) >> 16); break;
        case FM_F16: ((uint16_t *)w->data)[i] = (uint16_t)((rng >> 20) & 0x7bff); break; /* finite halves */
        default: {
            uint8_t c = (uint8_t)(rng >> 24);
            if ((c & 0x7f) == 0x7f) c ^= 1; /* no NaN codes */
            ((uint8_t *)w->data)[i] = c;
        }
        }
    }
    int64_t sr = (N + 127) / 128, sc = (K + 127) / 128;
    w->t = (fm_pl_tensor){.dtype = dtype, .ndim = 2, .ne = {N, K}, .data = w->data, .name = "w", .flags = FM_PL_WEIGHT};
    if (dtype == FM_F8_E4M3) {
        w->scale = malloc((size_t)(sr * sc) * 4);
        /* every third block's scale past 2^7, where the kernels' fp8 decode cannot fold its
         * 2^120 into the scale (E4M3_FOLDS) */
        for (int64_t i = 0; i < sr * sc; i++) w->scale[i] = (float)(ldexp(1.0, i % 3 == 2 ? 8 : -8) * (1.5 + urand()));
        w->ts = (fm_pl_tensor){.dtype = FM_F32, .ndim = 2, .ne = {sr, sc}, .data = w->scale, .name = "w.scale"};
        w->t.scale = &w->ts;
    }
}
static void wt_free(wt *w) {
    free(w->data);
    free(w->scale);
}
/* Dequantized element (f32 product for fp8, as a dequantized copy would hold). */
static double wt_at(const wt *w, int64_t n, int64_t k) {
    int64_t i = n * w->K + k;
    switch (w->dtype) {
    case FM_F32: return ((float *)w->data)[i];
    case FM_BF16: return ref_bf16(((uint16_t *)w->data)[i]);
    case FM_F16: return ref_f16(((uint16_t *)w->data)[i]);
    default: return (float)((float)ref_e4m3(((uint8_t *)w->data)[i]) * w->scale[(n / 128) * ((w->K + 127) / 128) + k / 128]);
    }
}

static fm_status run_matmul(const float *x, int64_t T, wt *w, int aq, float *y) {
    fm_pl_tensor tx = {.dtype = FM_F32, .ndim = 2, .ne = {T, w->K}, .data = (void *)x, .name = "x"};
    fm_pl_tensor ty = {.dtype = FM_F32, .ndim = 2, .ne = {T, w->N}, .data = y, .name = "y"};
    const fm_pl_tensor *src[2] = {&tx, &w->t}, *dst[1] = {&ty};
    fm_matmul_params p = {.act_quant = aq};
    fm_pl_node nd = {.op = FM_OP_MATMUL, .n_src = 2, .n_dst = 1, .src = src, .dst = dst, .params = &p, .name = "mm"};
    ck_assert_int_eq(P->supports(S, &nd, NULL), 1);
    return P->compute(S, &nd);
}

static float *rand_x(int64_t n, double amp) {
    float *x = malloc((size_t)n * 4 + 64);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(urand() * amp);
    return x;
}

/* ---- matmul, act_quant 0 ---- */

/* T, N, K; T = 1: rows in four streams and the rest alone, K a multiple of 64 or not */
static const int64_t shapes[][3] = {
    {1, 1, 1},     {1, 37, 100},   {1, 70, 256},   {1, 3, 64},    {2, 16, 16},   {3, 65, 257},
    {5, 1, 300},   {8, 128, 128},  {9, 33, 70},    {13, 31, 17},  {14, 32, 256}, {17, 100, 300},
    {29, 64, 513}, {64, 96, 512},  {100, 250, 1000}, {200, 70, 260},
};

static void matmul_case(int dtype) {
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int64_t T = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        wt w;
        wt_make(&w, dtype, N, K, 1.0);
        float *x = rand_x(T * K, 1.0), *y = malloc((size_t)(T * N) * 4);
        ck_assert_int_eq(run_matmul(x, T, &w, 0, y), FM_OK);
        /* bf16-compute rounds activations to bf16 (relative 2^-9 per product) */
        double rel = cur_isa == 3 && dtype == FM_BF16 ? 8e-3 : 2e-6 * sqrt((double)K) + 1e-6;
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) {
                double r = 0, a = 0;
                for (int64_t k = 0; k < K; k++) {
                    double p = (double)x[t * K + k] * wt_at(&w, n, k);
                    r += p, a += fabs(p);
                }
                double e = fabs((double)y[t * N + n] - r);
                ck_assert_msg(e <= rel * a + 1e-30, "%s dtype %d T=%lld N=%lld K=%lld: y[%lld,%lld] = %.9g, want %.9g",
                              isas[cur_isa], dtype, (long long)T, (long long)N, (long long)K, (long long)t,
                              (long long)n, (double)y[t * N + n], r);
            }
        wt_free(&w);
        free(x);
        free(y);
    }
}

START_TEST(t_matmul_f32) { if (use_isa(_i)) matmul_case(FM_F32); }
END_TEST
START_TEST(t_matmul_bf16) { if (use_isa(_i)) matmul_case(FM_BF16); }
END_TEST
START_TEST(t_matmul_f16) { if (use_isa(_i)) matmul_case(FM_F16); }
END_TEST
START_TEST(t_matmul_fp8_dequant) { if (use_isa(_i)) matmul_case(FM_F8_E4M3); }
END_TEST

/* Results must not depend on the thread count (each output has one owner). */
START_TEST(t_matmul_threads) {
    if (!use_isa(_i)) return;
    wt w;
    wt_make(&w, FM_BF16, 300, 700, 1.0);
    for (int64_t T = 1; T <= 70; T += 23) {
        float *x = rand_x(T * 700, 1.0), *y1 = malloc((size_t)T * 300 * 4), *y3 = malloc((size_t)T * 300 * 4);
        ck_assert_int_eq(P->control(S, "threads", "1"), FM_OK);
        ck_assert_int_eq(run_matmul(x, T, &w, 0, y1), FM_OK);
        ck_assert_int_eq(P->control(S, "threads", "3"), FM_OK);
        ck_assert_int_eq(run_matmul(x, T, &w, 0, y3), FM_OK);
        ck_assert_mem_eq(y1, y3, (size_t)T * 300 * 4);
        free(x), free(y1), free(y3);
    }
    wt_free(&w);
}
END_TEST

/* Long products: several K slices and row blocks of x, so the packed-x buffers the
 * threads share (bf16 compute) are reused; an odd K leaves a half pair at the end.
 * Results are checked against the reference and must not depend on the thread count. */
START_TEST(t_matmul_blocks) {
    if (!use_isa(_i)) return;
    const int64_t T = 1100, N = 200, K = 1101;
    wt w;
    wt_make(&w, FM_BF16, N, K, 1.0);
    float *x = rand_x(T * K, 1.0), *y1 = malloc((size_t)(T * N) * 4), *y2 = malloc((size_t)(T * N) * 4),
          *y3 = malloc((size_t)(T * N) * 4);
    ck_assert_int_eq(P->control(S, "threads", "1"), FM_OK);
    ck_assert_int_eq(run_matmul(x, T, &w, 0, y1), FM_OK);
    ck_assert_int_eq(P->control(S, "threads", "2"), FM_OK);
    ck_assert_int_eq(run_matmul(x, T, &w, 0, y2), FM_OK);
    ck_assert_int_eq(P->control(S, "threads", "3"), FM_OK);
    ck_assert_int_eq(run_matmul(x, T, &w, 0, y3), FM_OK);
    ck_assert_int_eq(P->control(S, "threads", "auto"), FM_OK);
    ck_assert_mem_eq(y1, y2, (size_t)(T * N) * 4);
    ck_assert_mem_eq(y1, y3, (size_t)(T * N) * 4);
    double rel = cur_isa == 3 ? 8e-3 : 2e-6 * sqrt((double)K) + 1e-6;
    for (int64_t t = 0; t < T; t += 7)
        for (int64_t n = 0; n < N; n++) {
            double r = 0, a = 0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)x[t * K + k] * wt_at(&w, n, k);
                r += p, a += fabs(p);
            }
            ck_assert_msg(fabs((double)y1[t * N + n] - r) <= rel * a + 1e-30, "%s T=%lld: y[%lld,%lld] = %.9g, want %.9g",
                          isas[cur_isa], (long long)T, (long long)t, (long long)n, (double)y1[t * N + n], r);
        }
    wt_free(&w);
    free(x), free(y1), free(y2), free(y3);
}
END_TEST

/* ---- fp8 act_quant: bit-exact against the README formula ---- */

static void ref_fp8(const float *x, int64_t T, const wt *w, float *y) {
    int64_t K = w->K, N = w->N, nb = (K + 127) / 128;
    uint8_t *cx = malloc((size_t)(T * K));
    float *xs = malloc((size_t)(T * nb) * 4);
    for (int64_t t = 0; t < T; t++)
        for (int64_t b = 0; b < nb; b++) {
            int64_t k0 = b * 128, k1 = k0 + 128 < K ? k0 + 128 : K;
            float amax = 0;
            for (int64_t k = k0; k < k1; k++) amax = fabsf(x[t * K + k]) > amax ? fabsf(x[t * K + k]) : amax;
            float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
            xs[t * nb + b] = s;
            for (int64_t k = k0; k < k1; k++) cx[t * K + k] = ref_to_e4m3(x[t * K + k] / s);
        }
    const uint8_t *cw = w->data;
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int64_t k0 = b * 128, k1 = k0 + 128 < K ? k0 + 128 : K;
                int64_t isum = 0; /* in units of 2^-18 */
                for (int64_t k = k0; k < k1; k++)
                    isum += (int64_t)(ref_e4m3(cx[t * K + k]) * 512) * (int64_t)(ref_e4m3(cw[n * K + k]) * 512);
                float d = (float)ldexp((double)isum, -18);
                float part = d * xs[t * nb + b];
                part = part * w->scale[(n / 128) * nb + b];
                acc = acc + part;
            }
            y[t * N + n] = acc;
        }
    free(cx);
    free(xs);
}

START_TEST(t_matmul_fp8_actquant) {
    if (!use_isa(_i)) return;
    static const int64_t sh[][3] = {{1, 1, 128},   {1, 130, 256},  {1, 7, 4224},  {3, 300, 384}, {5, 64, 200},
                                    {8, 17, 128},  {9, 129, 256},  {20, 256, 128}, {33, 70, 384}, {40, 300, 640}};
    for (size_t si = 0; si < sizeof sh / sizeof *sh; si++) {
        int64_t T = sh[si][0], N = sh[si][1], K = sh[si][2];
        wt w;
        wt_make(&w, FM_F8_E4M3, N, K, 1.0);
        float *x = rand_x(T * K, 3.0), *y = malloc((size_t)(T * N) * 4), *r = malloc((size_t)(T * N) * 4);
        for (int64_t k = 0; k < K && T > 1; k++) x[K + k] = 0.0f;          /* amax 0: scale 1e-4/448 */
        if (T > 2) x[2 * K + 5] = 1e6f, x[2 * K + 6] = -3e-5f;             /* huge and tiny in one block */
        if (T > 3) { /* amax 448 makes s = 1: exact e4m3 rounding ties (nearest even) in every block */
            static const float ties[] = {1.0625f, 1.1875f, -1.3125f, 0x1p-10f, 3 * 0x1p-10f, -5 * 0x1p-10f,
                                         0x1.1p-6f, 0x1.3p-6f, 13.0f, 15.0f, -104.0f, 432.0f, 0x1.1p-3f, 0.5f};
            for (int64_t k = 0; k < K; k++)
                x[3 * K + k] = k % 128 == 0 ? 448.0f : ties[k % (sizeof ties / sizeof *ties)];
        }
        ck_assert_int_eq(run_matmul(x, T, &w, 1, y), FM_OK);
        ref_fp8(x, T, &w, r);
        for (int64_t i = 0; i < T * N; i++)
            ck_assert_msg(y[i] == r[i], "%s fp8 T=%lld N=%lld K=%lld: y[%lld] = %a, want %a", isas[cur_isa], (long long)T,
                          (long long)N, (long long)K, (long long)i, (double)y[i], (double)r[i]);
        wt_free(&w);
        free(x), free(y), free(r);
    }
}
END_TEST

START_TEST(t_supports) {
    wt w;
    wt_make(&w, FM_F32, 4, 8, 1.0);
    float x[16], y[8];
    fm_pl_tensor tx = {.dtype = FM_F32, .ndim = 2, .ne = {2, 8}, .data = x, .name = "x"};
    fm_pl_tensor ty = {.dtype = FM_F32, .ndim = 2, .ne = {2, 4}, .data = y, .name = "y"};
    const fm_pl_tensor *src[2] = {&tx, &w.t}, *dst[1] = {&ty};
    fm_matmul_params p = {0};
    fm_pl_node nd = {.op = FM_OP_MATMUL, .n_src = 2, .n_dst = 1, .src = src, .dst = dst, .params = &p, .name = "mm"};
    ck_assert_int_eq(P->supports(S, &nd, NULL), 1);
    w.t.dtype = FM_I32;
    ck_assert_int_eq(P->supports(S, &nd, NULL), 0);
    ck_assert_int_eq(P->compute(S, &nd), FM_UNSUPPORTED);
    ck_assert(strlen(P->last_error(S)) > 0);
    w.t.dtype = FM_F8_E4M3; /* no scale */
    ck_assert_int_eq(P->supports(S, &nd, NULL), 0);
    w.t.dtype = FM_F32;
    tx.ne[1] = 7; /* K mismatch */
    ck_assert_int_eq(P->supports(S, &nd, NULL), 0);
    wt_free(&w);
}
END_TEST

/* A process that forks after init (Check does, per test) must still compute: the
 * child has none of the parent's pool threads. */
START_TEST(t_fork) {
    ck_assert_int_eq(P->control(S, "threads", "2"), FM_OK);
    wt w;
    wt_make(&w, FM_F32, 256, 300, 1.0);
    float *x = rand_x(40 * 300, 1.0), *y = malloc(40 * 256 * 4), *y2 = malloc(40 * 256 * 4);
    ck_assert_int_eq(run_matmul(x, 40, &w, 0, y), FM_OK);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        alarm(20); /* a hang ends the child with SIGALRM */
        int ok = run_matmul(x, 40, &w, 0, y2) == FM_OK && !memcmp(y, y2, 40 * 256 * 4);
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child after fork: status %d", st);
    ck_assert_int_eq(run_matmul(x, 40, &w, 0, y2), FM_OK); /* and the parent still works */
    ck_assert_mem_eq(y, y2, 40 * 256 * 4);
    wt_free(&w);
    free(x), free(y), free(y2);
}
END_TEST

static void add_matmul_tests(Suite *s) {
    TCase *tc = cpu_tcase("matmul");
    tcase_add_test(tc, t_supports);
    tcase_add_test(tc, t_fork);
    tcase_add_loop_test(tc, t_matmul_f32, 0, 4);
    tcase_add_loop_test(tc, t_matmul_bf16, 0, 4);
    tcase_add_loop_test(tc, t_matmul_f16, 0, 4);
    tcase_add_loop_test(tc, t_matmul_fp8_dequant, 0, 4);
    tcase_add_loop_test(tc, t_matmul_fp8_actquant, 0, 4);
    tcase_add_loop_test(tc, t_matmul_threads, 0, 4);
    tcase_add_loop_test(tc, t_matmul_blocks, 0, 4);
    suite_add_tcase(s, tc);
}
/* ---- the other ops ---- */

static fm_pl_tensor mk(int dtype, int ndim, int64_t a, int64_t b, void *data, const char *name) {
    fm_pl_tensor t = {.dtype = dtype, .ndim = ndim, .ne = {a, b}, .data = data, .name = name};
    return t;
}
static fm_status run_node(int op, const fm_pl_tensor **src, int ns, const fm_pl_tensor **dst, int nd, const void *prm) {
    fm_pl_node n = {.op = op, .n_src = ns, .n_dst = nd, .src = src, .dst = dst, .params = prm, .name = "op"};
    ck_assert_msg(P->supports(S, &n, NULL) == 1, "%s: supports() refused op %d", isas[cur_isa], op);
    return P->compute(S, &n);
}
static void close_to(const float *y, const double *r, const double *scale, int64_t n, double rel, const char *what) {
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(y[i] - r[i]) <= rel * (scale ? scale[i] : fabs(r[i])) + 1e-6, "%s %s: [%lld] = %.9g, want %.9g",
                      isas[cur_isa], what, (long long)i, (double)y[i], r[i]);
}

START_TEST(t_elementwise) {
    if (!use_isa(_i)) return;
    for (int64_t n = 1; n < 3000; n = n * 3 + 7) {
        float *a = rand_x(n, 9.0), *b = rand_x(n, 2.0), *y = malloc((size_t)n * 4);
        double *r = malloc((size_t)n * 8);
        fm_pl_tensor ta = mk(FM_F32, 1, n, 0, a, "a"), tb = mk(FM_F32, 1, n, 0, b, "b"), ty = mk(FM_F32, 1, n, 0, y, "y");
        const fm_pl_tensor *src[2] = {&ta, &tb}, *dst[1] = {&ty};
        ck_assert_int_eq(run_node(FM_OP_ADD, src, 2, dst, 1, NULL), FM_OK);
        for (int64_t i = 0; i < n; i++) r[i] = (double)a[i] + b[i];
        close_to(y, r, NULL, n, 1e-7, "add");
        ck_assert_int_eq(run_node(FM_OP_SWIGLU, src, 2, dst, 1, NULL), FM_OK);
        for (int64_t i = 0; i < n; i++) r[i] = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
        close_to(y, r, NULL, n, 1e-6, "swiglu");
        free(a), free(b), free(y), free(r);
    }
}
END_TEST

START_TEST(t_rmsnorm_embed) {
    if (!use_isa(_i)) return;
    int64_t T = 7, H = 300, V = 50;
    wt w;
    wt_make(&w, FM_BF16, 1, H, 1.0);
    w.t.ndim = 1, w.t.ne[0] = H;
    float *x = rand_x(T * H, 3.0), *y = malloc((size_t)(T * H) * 4);
    double *r = malloc((size_t)(T * H) * 8);
    fm_pl_tensor tx = mk(FM_F32, 2, T, H, x, "x"), ty = mk(FM_F32, 2, T, H, y, "y");
    const fm_pl_tensor *src[2] = {&tx, &w.t}, *dst[1] = {&ty};
    fm_rmsnorm_params p = {.eps = 1e-6f};
    ck_assert_int_eq(run_node(FM_OP_RMSNORM, src, 2, dst, 1, &p), FM_OK);
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        for (int64_t h = 0; h < H; h++) ss += (double)x[t * H + h] * x[t * H + h];
        for (int64_t h = 0; h < H; h++) r[t * H + h] = x[t * H + h] / sqrt(ss / H + 1e-6) * wt_at(&w, 0, h);
    }
    close_to(y, r, NULL, T * H, 2e-6, "rmsnorm");
    wt_free(&w);
    /* embed: bf16 table rows, and an id out of range is refused */
    wt tab;
    wt_make(&tab, FM_BF16, V, H, 1.0);
    int32_t ids[7] = {0, 49, 3, 3, 17, 1, 48};
    fm_pl_tensor ti = mk(FM_I32, 1, T, 0, ids, "ids");
    const fm_pl_tensor *s2[2] = {&tab.t, &ti};
    ck_assert_int_eq(run_node(FM_OP_EMBED, s2, 2, dst, 1, NULL), FM_OK);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) ck_assert(y[t * H + h] == (float)wt_at(&tab, ids[t], h));
    ids[2] = 50;
    ck_assert_int_eq(run_node(FM_OP_EMBED, s2, 2, dst, 1, NULL), FM_EINVAL);
    wt_free(&tab);
    free(x), free(y), free(r);
}
END_TEST

static void ref_inv_freq(const fm_rope_params *p, double *inv) {
    int d = p->rope_dim;
    for (int i = 0; i < d / 2; i++) inv[i] = pow(p->theta, -2.0 * i / d);
    if (!(p->yarn_factor > 1)) return;
    double ln2t = 2 * log(p->theta), tp = 2 * M_PI;
    double lo = floor(d * log(p->yarn_orig_max / (p->yarn_beta_fast * tp)) / ln2t);
    double hi = ceil(d * log(p->yarn_orig_max / (p->yarn_beta_slow * tp)) / ln2t);
    lo = lo < 0 ? 0 : lo, hi = hi > d - 1 ? d - 1 : hi;
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < d / 2; i++) {
        double ramp = (i - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        inv[i] = inv[i] / p->yarn_factor * ramp + inv[i] * (1 - ramp);
    }
}

START_TEST(t_rope_cache) {
    if (!use_isa(_i)) return;
    int64_t T = 5, nh = 3, hd = 24;
    fm_rope_params p = {.head_dim = 24, .rope_off = 8, .rope_dim = 16, .theta = 10000.0f, .yarn_factor = _i % 2 ? 4.0f : 1.0f,
                        .yarn_orig_max = 32, .yarn_beta_fast = 32, .yarn_beta_slow = 1};
    float *x = rand_x(T * nh * hd, 1.0), *y = malloc((size_t)(T * nh * hd) * 4);
    double *r = malloc((size_t)(T * nh * hd) * 8), inv[64];
    int32_t pos[5] = {0, 1, 7, 40, 63};
    fm_pl_tensor tx = mk(FM_F32, 2, T, nh * hd, x, "x"), tp = mk(FM_I32, 1, T, 0, pos, "pos"), ty = mk(FM_F32, 2, T, nh * hd, y, "y");
    const fm_pl_tensor *src[2] = {&tx, &tp}, *dst[1] = {&ty};
    ck_assert_int_eq(run_node(FM_OP_ROPE, src, 2, dst, 1, &p), FM_OK);
    ref_inv_freq(&p, inv);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < nh; h++)
            for (int64_t i = 0; i < hd; i++) {
                const float *xr = x + t * nh * hd + h * hd;
                double v = xr[i];
                if (i >= 8) {
                    int64_t q = (i - 8) / 2;
                    double a = pos[t] * inv[q], c = cos(a), s = sin(a);
                    v = (i - 8) % 2 ? xr[i - 1] * s + xr[i] * c : xr[i] * c - xr[i + 1] * s;
                }
                r[t * nh * hd + h * hd + i] = v;
            }
    close_to(y, r, NULL, T * nh * hd, 3e-5, "rope");
    /* mla_cache: rows at pos get rmsnorm(c_kv) * w | rope(k_pe); other rows keep their content */
    int64_t C = 40, R = 16, L = 70, D = C + R;
    fm_mla_cache_params cp = {.kv_lora = (int32_t)C, .eps = 1e-6f, .rope = p};
    cp.rope.head_dim = 16, cp.rope.rope_off = 0;
    float *cache = rand_x(L * D, 1.0), *before = malloc((size_t)(L * D) * 4), *kv = rand_x(T * D, 2.0);
    memcpy(before, cache, (size_t)(L * D) * 4);
    wt nw;
    wt_make(&nw, FM_F32, 1, C, 1.0);
    nw.t.ndim = 1, nw.t.ne[0] = C;
    fm_pl_tensor tc = mk(FM_F32, 2, L, D, cache, "cache"), tk = mk(FM_F32, 2, T, D, kv, "kv");
    tc.flags = FM_PL_STATE;
    const fm_pl_tensor *s4[4] = {&tc, &tk, &nw.t, &tp}, *d1[1] = {&tc};
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, s4, 4, d1, 1, &cp), FM_OK);
    ref_inv_freq(&cp.rope, inv);
    for (int64_t l = 0, t; l < L; l++) {
        for (t = 0; t < T && pos[t] != l; t++) {}
        if (t == T) {
            ck_assert_mem_eq(cache + l * D, before + l * D, (size_t)D * 4);
            continue;
        }
        const float *k = kv + t * D;
        double ss = 0, rr[64];
        for (int64_t c = 0; c < C; c++) ss += (double)k[c] * k[c];
        for (int64_t c = 0; c < C; c++) rr[c] = k[c] / sqrt(ss / C + 1e-6) * wt_at(&nw, 0, c);
        for (int64_t i = 0; i < R; i += 2) {
            double a = l * inv[i / 2];
            rr[C + i] = k[C + i] * cos(a) - k[C + i + 1] * sin(a);
            rr[C + i + 1] = k[C + i] * sin(a) + k[C + i + 1] * cos(a);
        }
        close_to(cache + l * D, rr, NULL, D, 3e-5, "mla_cache");
    }
    pos[4] = (int32_t)L;
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, s4, 4, d1, 1, &cp), FM_EINVAL);
    wt_free(&nw);
    free(x), free(y), free(r), free(cache), free(before), free(kv);
}
END_TEST

START_TEST(t_moe_route) {
    if (!use_isa(_i)) return;
    for (int cfg = 0; cfg < 2; cfg++) {
        fm_moe_route_params p = cfg == 0 ? (fm_moe_route_params){16, 4, 4, 2, FM_SCORE_SIGMOID, FM_TOPK_NOAUX_TC, 1, 2.5f}
                                         : (fm_moe_route_params){12, 3, 1, 1, FM_SCORE_SOFTMAX, FM_TOPK_GREEDY, 0, 1.0f};
        int64_t T = cfg ? 3 : 40, H = 70, E = p.n_experts, k = p.top_k;
        wt g;
        wt_make(&g, FM_BF16, E, H, 1.0);
        float *x = rand_x(T * H, 1.0), *bias = rand_x(E, 0.1), *w = malloc((size_t)(T * k) * 4);
        int32_t *ids = malloc((size_t)(T * k) * 4);
        fm_pl_tensor tx = mk(FM_F32, 2, T, H, x, "x"), tb = mk(FM_F32, 1, E, 0, bias, "bias");
        fm_pl_tensor ti = mk(FM_I32, 2, T, k, ids, "ids"), tw = mk(FM_F32, 2, T, k, w, "w");
        const fm_pl_tensor *src[3] = {&tx, &g.t, &tb}, *dst[2] = {&ti, &tw};
        ck_assert_int_eq(run_node(FM_OP_MOE_ROUTE, src, cfg ? 2 : 3, dst, 2, &p), FM_OK);
        for (int64_t t = 0; t < T; t++) {
            double sc[16], sel[16], lg[16], mx = -1e300, sum = 0;
            for (int64_t e = 0; e < E; e++) {
                lg[e] = 0;
                for (int64_t h = 0; h < H; h++) lg[e] += (double)x[t * H + h] * wt_at(&g, e, h);
                mx = lg[e] > mx ? lg[e] : mx;
            }
            for (int64_t e = 0; e < E; e++) sum += exp(lg[e] - mx);
            for (int64_t e = 0; e < E; e++) sc[e] = cfg ? exp(lg[e] - mx) / sum : 1 / (1 + exp(-lg[e]));
            for (int64_t e = 0; e < E; e++) sel[e] = cfg ? sc[e] : sc[e] + bias[e];
            if (!cfg) { /* groups of 4: keep the 2 with the largest top-2 sums */
                double gs[4];
                for (int gi = 0; gi < 4; gi++) {
                    double a = -1e300, b = -1e300;
                    for (int i = 0; i < 4; i++) {
                        double v = sel[gi * 4 + i];
                        if (v > a) b = a, a = v;
                        else if (v > b) b = v;
                    }
                    gs[gi] = a + b;
                }
                for (int drop = 0; drop < 2; drop++) {
                    int lo = -1;
                    for (int gi = 0; gi < 4; gi++)
                        if (gs[gi] > -1e299 && (lo < 0 || gs[gi] < gs[lo])) lo = gi;
                    gs[lo] = -1e300;
                    for (int i = 0; i < 4; i++) sel[lo * 4 + i] = -1e300;
                }
            }
            double wsum = 0, ww[8];
            int32_t want[8];
            for (int64_t j = 0; j < k; j++) {
                int64_t b = 0;
                for (int64_t e = 1; e < E; e++) b = sel[e] > sel[b] ? e : b;
                want[j] = (int32_t)b, ww[j] = sc[b], wsum += sc[b], sel[b] = -1e301;
            }
            for (int64_t j = 0; j < k; j++) {
                ck_assert_msg(ids[t * k + j] == want[j], "%s route token %lld slot %lld: expert %d, want %d", isas[cur_isa],
                              (long long)t, (long long)j, ids[t * k + j], want[j]);
                double rw = (p.renorm ? ww[j] / wsum : ww[j]) * p.scale;
                ck_assert_msg(fabs(w[t * k + j] - rw) <= 1e-5 * fabs(rw), "route weight %g, want %g", (double)w[t * k + j], rw);
            }
        }
        wt_free(&g);
        free(x), free(bias), free(w), free(ids);
    }
}
END_TEST

/* The double reference of moe_experts: r (and a, the sum of magnitudes) += per token
 * the weighted SwiGLU experts it routes to (w: gate, up, down per expert); with aq the
 * fp8 path, each product exactly as the README formula (checked above). */
static void moe_ref(const float *x, const float *wts, const int32_t *ids, int64_t T, int K, int64_t H, int64_t I,
                    const wt *w, int aq, double *r, double *a) {
    double *hb = malloc((size_t)I * 8);
    float *hq = malloc((size_t)I * 4), *gq = malloc((size_t)I * 4), *uq = malloc((size_t)I * 4), *oq = malloc((size_t)H * 4);
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            int e = ids[t * K + j];
            if (aq) {
                ref_fp8(x + t * H, 1, &w[3 * e], gq);
                ref_fp8(x + t * H, 1, &w[3 * e + 1], uq);
                for (int64_t i = 0; i < I; i++) hq[i] = gq[i] / (1.0f + expf(-gq[i])) * uq[i];
                ref_fp8(hq, 1, &w[3 * e + 2], oq);
                for (int64_t h = 0; h < H; h++)
                    r[t * H + h] += (double)wts[t * K + j] * oq[h], a[t * H + h] += fabs(wts[t * K + j] * oq[h]);
                continue;
            }
            for (int64_t i = 0; i < I; i++) {
                double g = 0, u = 0;
                for (int64_t h = 0; h < H; h++)
                    g += x[t * H + h] * wt_at(&w[3 * e], i, h), u += x[t * H + h] * wt_at(&w[3 * e + 1], i, h);
                hb[i] = g / (1 + exp(-g)) * u;
            }
            for (int64_t h = 0; h < H; h++) {
                double o = 0, oa = 0;
                for (int64_t i = 0; i < I; i++)
                    o += hb[i] * wt_at(&w[3 * e + 2], h, i), oa += fabs(hb[i] * wt_at(&w[3 * e + 2], h, i));
                r[t * H + h] += wts[t * K + j] * o, a[t * H + h] += fabs(wts[t * K + j]) * oa;
            }
        }
    free(hb), free(hq), free(gq), free(uq), free(oq);
}

/* One MOE_EXPERTS node: x [T, H], ids and wts [T, K], E experts' gate, up, down in w. */
static fm_status moe_run(int64_t T, int64_t H, int K, int E, float *x, int32_t *ids, float *wts, const wt *w, int aq,
                         float *y) {
    const fm_pl_tensor *src[3 + 3 * 64];
    ck_assert(E <= 64);
    fm_pl_tensor tx = mk(FM_F32, 2, T, H, x, "x"), ti = mk(FM_I32, 2, T, K, ids, "ids"), tw = mk(FM_F32, 2, T, K, wts, "w");
    fm_pl_tensor ty = mk(FM_F32, 2, T, H, y, "y");
    src[0] = &tx, src[1] = &ti, src[2] = &tw;
    for (int e = 0; e < 3 * E; e++) src[3 + e] = &w[e].t;
    const fm_pl_tensor *dst[1] = {&ty};
    fm_moe_experts_params p = {.n_experts = E, .act_quant = aq};
    return run_node(FM_OP_MOE_EXPERTS, src, 3 + 3 * E, dst, 1, &p);
}

static void moe_case(int dtype, int64_t T, int64_t H, int64_t I, int aq) {
    enum { E = 6, K = 2 };
    wt w[3 * E];
    for (int e = 0; e < 3 * E; e++) wt_make(&w[e], dtype, e % 3 == 2 ? H : I, e % 3 == 2 ? I : H, 1.0);
    float *x = rand_x(T * H, 1.0), *wts = rand_x(T * K, 1.0), *y = malloc((size_t)(T * H) * 4);
    int32_t *ids = malloc((size_t)(T * K) * 4);
    for (int64_t t = 0; t < T; t++) { /* skewed: expert 1 gets most tokens, expert 5 none */
        ids[t * K] = t % 3 ? 1 : (int32_t)(t % 4);
        ids[t * K + 1] = (int32_t)(2 + t % 2 + (ids[t * K] == 2 || ids[t * K] == 3 ? 0 : (t % 3 == 0)));
        if (ids[t * K + 1] == ids[t * K]) ids[t * K + 1] = 4;
    }
    ck_assert_int_eq(moe_run(T, H, K, E, x, ids, wts, w, aq, y), FM_OK);
    double *r = calloc((size_t)(T * H), 8), *a = calloc((size_t)(T * H), 8);
    moe_ref(x, wts, ids, T, K, H, I, w, aq, r, a);
    /* fp8: a code of the SwiGLU output may round the other way (f32 exp); bf16-compute rounds activations */
    double rel = aq ? 2e-2 : cur_isa == 3 && dtype == FM_BF16 ? 2e-2 : 2e-5;
    close_to(y, r, a, T * H, rel, aq ? "moe_experts fp8 act_quant" : "moe_experts");
    for (int e = 0; e < 3 * E; e++) wt_free(&w[e]);
    free(x), free(wts), free(y), free(ids), free(r), free(a);
}

START_TEST(t_moe_experts) {
    if (!use_isa(_i)) return;
    moe_case(FM_F32, 1, 100, 72, 0);
    moe_case(FM_BF16, 5, 64, 40, 0);
    moe_case(FM_BF16, 40, 100, 300, 0);
    moe_case(FM_F8_E4M3, 30, 130, 72, 0);
    moe_case(FM_F8_E4M3, 3, 256, 128, 1);
    moe_case(FM_F8_E4M3, 33, 256, 128, 1);
}
END_TEST

static int mla_bf16_on; /* the test set control mla_bf16=1 (tests fork: one test's setting) */

/* cdt: the cache's dtype (a bf16 cache holds the bf16 rounding of the same values, which
 * the reference reads); C, R, L: latent and rope lengths, cache rows; NH heads of NOPE
 * and V rows of kv_b each. */
static void mla_case_hd(int dtype, int64_t T, const int32_t *pos, int cdt, int C, int R, int64_t L, int NH, int NOPE,
                        int V) {
    enum { CMAX = 512, VMAX = 128 };
    const int64_t D = C + R;
    wt kvb;
    wt_make(&kvb, dtype, NH * (NOPE + V), C, 0.5);
    float *q = rand_x(T * NH * (NOPE + R), 1.0), *cache = rand_x(L * D, 1.0), *y = malloc((size_t)(T * NH * V) * 4);
    uint16_t *c16 = malloc((size_t)(L * D) * 2);
    for (int64_t i = 0; i < L * D && cdt == FM_BF16; i++) {
        uint32_t u = bitsf(cache[i]);
        c16[i] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); /* nearest even */
        cache[i] = fbits((uint32_t)c16[i] << 16);
    }
    fm_mla_attn_params p = {.n_heads = NH, .nope = NOPE, .rope = R, .v = V, .kv_lora = C, .scale = 0.3f, .mode = FM_MLA_ABSORB};
    fm_pl_tensor tq = mk(FM_F32, 2, T, NH * (NOPE + R), q, "q");
    fm_pl_tensor tc = cdt == FM_BF16 ? mk(FM_BF16, 2, L, D, c16, "cache") : mk(FM_F32, 2, L, D, cache, "cache");
    fm_pl_tensor tp = mk(FM_I32, 1, T, 0, (void *)pos, "pos"), ty = mk(FM_F32, 2, T, NH * V, y, "y");
    const fm_pl_tensor *src[4] = {&tq, &tc, &tp, &kvb.t}, *dst[1] = {&ty};
    ck_assert_int_eq(run_node(FM_OP_MLA_ATTN, src, 4, dst, 1, &p), FM_OK);
    double *sc = malloc((size_t)L * 8), qa[CMAX], ol[CMAX], r[VMAX], a[VMAX];
    ck_assert(C <= CMAX && V <= VMAX);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            const float *qn = q + t * NH * (NOPE + R) + h * (NOPE + R);
            for (int c = 0; c < C; c++) {
                qa[c] = 0;
                for (int d = 0; d < NOPE; d++) qa[c] += qn[d] * wt_at(&kvb, h * (NOPE + V) + d, c);
            }
            double mx = -1e300, sum = 0;
            for (int64_t j = 0; j <= pos[t]; j++) {
                double s = 0;
                for (int c = 0; c < C; c++) s += qa[c] * cache[j * D + c];
                for (int i = 0; i < R; i++) s += qn[NOPE + i] * cache[j * D + C + i];
                sc[j] = s * 0.3f;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int64_t j = 0; j <= pos[t]; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int c = 0; c < C; c++) {
                ol[c] = 0;
                for (int64_t j = 0; j <= pos[t]; j++) ol[c] += sc[j] / sum * cache[j * D + c];
            }
            for (int d = 0; d < V; d++) {
                r[d] = 0, a[d] = 0;
                for (int c = 0; c < C; c++) {
                    double v = wt_at(&kvb, h * (NOPE + V) + NOPE + d, c) * ol[c];
                    r[d] += v, a[d] += fabs(v);
                }
            }
            /* bf16-compute rounds bf16 weights' activations; the opt-in bf16 kernel any kv_b's */
            int bf16 = cur_isa == 3 && (dtype == FM_BF16 || (mla_bf16_on && dtype != FM_F32));
            close_to(y + t * NH * V + h * V, r, a, V, bf16 ? 2e-2 : 2e-5, "mla_attn");
        }
    wt_free(&kvb);
    free(q), free(cache), free(c16), free(y), free(sc);
}
static void mla_case_at(int dtype, int64_t T, const int32_t *pos, int cdt, int C, int R, int64_t L) {
    mla_case_hd(dtype, T, pos, cdt, C, R, L, 3, 16, 12);
}
static void mla_case(int dtype, int64_t T, const int32_t *pos) { mla_case_at(dtype, T, pos, FM_F32, 40, 8, 1100); }

START_TEST(t_mla_attn) {
    if (!use_isa(_i)) return;
    int32_t p1[1] = {1050}, p2[2] = {5, 600}, *p3 = malloc(100 * 4);
    for (int i = 0; i < 100; i++) p3[i] = 1000 + i;
    mla_case(FM_F32, 1, p1);
    mla_case(FM_BF16, 2, p2);
    mla_case(FM_F8_E4M3, 1, p2);
    mla_case(FM_BF16, 100, p3);
    free(p3);
}
END_TEST

/* Decode-sized blocks with several vectors of lanes (token x head rows: 24, 63, 126),
 * per-token causal limits from 0 to the last row, odd live lengths. */
START_TEST(t_mla_decode_lanes) {
    if (!use_isa(_i)) return;
    if (cur_isa == 3) ck_assert_int_eq(P->control(S, "mla_bf16", "1"), FM_OK); /* the opt-in bf16 kernel (tests fork) */
    int32_t p8[8] = {0, 1, 63, 64, 65, 333, 1098, 1099}, p21[21];
    for (int i = 0; i < 21; i++) p21[i] = (int32_t)((i * 577 + 13) % 1100);
    mla_case(FM_BF16, 8, p8);
    mla_case(FM_F32, 21, p21);
    mla_case(FM_BF16, 21, p21);
    int32_t p42[42]; /* 126 rows: eight vectors of lanes, the last one partial */
    for (int i = 0; i < 42; i++) p42[i] = (int32_t)((i * 263 + 5) % 1100);
    mla_case(FM_F32, 42, p42);
    mla_case(FM_BF16, 42, p42);
    /* 3300 rows (six chunks): the first token's lanes have keys in the first chunk only,
     * so chunks without keys for a lane are combined with each other and with live ones */
    int32_t pfar[2] = {3, 3299};
    mla_case_at(FM_BF16, 2, pfar, FM_F32, 40, 8, 3300);
}
END_TEST

/* Decode results must not depend on the thread count or on which thread took which
 * head or chunk of cache rows (the chunks' partial results are combined in a fixed
 * tree): 1, 2 and 3 threads give the same bits, with 6 chunks of rows and 16 heads. */
START_TEST(t_mla_threads) {
    if (!use_isa(_i)) return;
    if (cur_isa == 3) ck_assert_int_eq(P->control(S, "mla_bf16", "1"), FM_OK);
    enum { NH = 16, NOPE = 128, V = 128, C = 512, R = 64, L = 3300 };
    const int64_t D = C + R;
    wt kvb;
    wt_make(&kvb, FM_BF16, NH * (NOPE + V), C, 0.5);
    float *q = rand_x(NH * (NOPE + R), 1.0), *cache = rand_x(L * D, 1.0), *y[3];
    uint16_t *c16 = malloc((size_t)(L * D) * 2);
    for (int64_t i = 0; i < L * D; i++) c16[i] = (uint16_t)(bitsf(cache[i]) >> 16);
    int32_t pos[1] = {L - 1};
    fm_mla_attn_params p = {.n_heads = NH, .nope = NOPE, .rope = R, .v = V, .kv_lora = C, .scale = 0.1f, .mode = FM_MLA_ABSORB};
    fm_pl_tensor tq = mk(FM_F32, 2, 1, NH * (NOPE + R), q, "q"), tc = mk(FM_BF16, 2, L, D, c16, "cache");
    fm_pl_tensor tp = mk(FM_I32, 1, 1, 0, pos, "pos");
    for (int t = 0; t < 3; t++) {
        char n[4] = {(char)('1' + t), 0};
        ck_assert_int_eq(P->control(S, "threads", n), FM_OK);
        y[t] = malloc((size_t)(NH * V) * 4);
        fm_pl_tensor ty = mk(FM_F32, 2, 1, NH * V, y[t], "y");
        const fm_pl_tensor *src[4] = {&tq, &tc, &tp, &kvb.t}, *dst[1] = {&ty};
        ck_assert_int_eq(run_node(FM_OP_MLA_ATTN, src, 4, dst, 1, &p), FM_OK);
    }
    ck_assert_mem_eq(y[0], y[1], (size_t)(NH * V) * 4);
    ck_assert_mem_eq(y[0], y[2], (size_t)(NH * V) * 4);
    wt_free(&kvb);
    free(q), free(cache), free(c16), free(y[0]), free(y[1]), free(y[2]);
}
END_TEST

/* A bf16 latent cache: read in place by the decode kernels (even row length), copied
 * (odd), widened for the prefill and generic paths; and DeepSeek's row length (512 +
 * 64), which the bf16 kernel's fast score tiles take. */
START_TEST(t_mla_bf16_cache) {
    if (!use_isa(_i)) return;
    if (cur_isa == 3) {
        ck_assert_int_eq(P->control(S, "mla_bf16", "1"), FM_OK);
        mla_bf16_on = 1;
    }
    int32_t p1[1] = {1099}, p3[3] = {0, 700, 1099}, *p50 = malloc(50 * 4);
    for (int i = 0; i < 50; i++) p50[i] = 1000 + 2 * i;
    mla_case_at(FM_BF16, 1, p1, FM_BF16, 40, 8, 1100);  /* decode, even rows */
    mla_case_at(FM_BF16, 3, p3, FM_BF16, 41, 8, 1100);  /* odd rows: copied */
    mla_case_at(FM_BF16, 42, p50, FM_BF16, 40, 8, 1100); /* 126 query rows: the decode kernels' 8 vectors of lanes */
    mla_case_at(FM_BF16, 50, p50, FM_BF16, 40, 8, 1100); /* 150 rows, past the decode kernels: widened */
    mla_case_at(FM_F32, 1, p1, FM_BF16, 40, 8, 1100);
    int32_t q1[1] = {1200};
    mla_case_at(FM_BF16, 1, q1, FM_BF16, 512, 64, 1300);
    mla_case_at(FM_BF16, 1, q1, FM_F32, 512, 64, 1300);
    mla_case_at(FM_F8_E4M3, 1, q1, FM_BF16, 512, 64, 1300); /* fp8 kv_b: q_abs's 256-column fp8 path */
    /* fp8 kv_b decoded to bf16 (bf16 level): 75 nope rows (odd), heads 125 rows apart, so
     * q_abs and W_UV rows cross 128-row blocks of scales; C = 192: a column pass of three
     * groups of 64 and a last block of scales 64 columns wide */
    mla_case_hd(FM_F8_E4M3, 1, q1, FM_BF16, 512, 64, 1300, 5, 75, 50);
    mla_case_hd(FM_F8_E4M3, 1, q1, FM_F32, 192, 64, 1300, 4, 128, 128);
    int32_t q2[2] = {3299, 2500}; /* six chunks: every thread's run holds three */
    mla_case_at(FM_BF16, 2, q2, FM_BF16, 512, 64, 3300);
    free(p50);
}
END_TEST

/* Every finite fp8 code of kv_b reaches the output exactly: with each cache row the
 * one-hot latent row e_c, the attention gives e_c whatever the scores, so head h's
 * output d is W_UV[h][d][c] times its block scale, one f32 product. 16 heads of 16
 * W_UV rows hold the 256 codes (NaN codes as their neighbours) at column c; four
 * columns, in both halves of a 64-column group and in two groups. */
START_TEST(t_mla_fp8_codes) {
    if (!use_isa(_i)) return;
    if (cur_isa == 3) ck_assert_int_eq(P->control(S, "mla_bf16", "1"), FM_OK);
    enum { NH = 16, NOPE = 16, V = 16, C = 512, R = 64, L = 40, D = C + R };
    static const int cols[] = {0, 13, 40, 511};
    wt kvb;
    wt_make(&kvb, FM_F8_E4M3, NH * (NOPE + V), C, 1.0);
    float *q = rand_x(NH * (NOPE + R), 1.0), *y = malloc(NH * V * 4);
    uint16_t *c16 = malloc((size_t)(L * D) * 2);
    int32_t pos[1] = {L - 1};
    fm_mla_attn_params p = {.n_heads = NH, .nope = NOPE, .rope = R, .v = V, .kv_lora = C, .scale = 0.3f, .mode = FM_MLA_ABSORB};
    fm_pl_tensor tq = mk(FM_F32, 2, 1, NH * (NOPE + R), q, "q"), tc = mk(FM_BF16, 2, L, D, c16, "cache");
    fm_pl_tensor tp = mk(FM_I32, 1, 1, 0, pos, "pos"), ty = mk(FM_F32, 2, 1, NH * V, y, "y");
    const fm_pl_tensor *src[4] = {&tq, &tc, &tp, &kvb.t}, *dst[1] = {&ty};
    for (int ci = 0; ci < 4; ci++) {
        const int c = cols[ci];
        memset(c16, 0, (size_t)(L * D) * 2);
        for (int64_t j = 0; j < L; j++) c16[j * D + c] = 0x3f80; /* 1.0 */
        for (int i = 0; i < NH * V; i++) {
            uint8_t code = (uint8_t)(i + ci);
            if ((code & 0x7f) == 0x7f) code ^= 1;
            ((uint8_t *)kvb.data)[((i / V) * (NOPE + V) + NOPE + i % V) * C + c] = code;
        }
        ck_assert_int_eq(run_node(FM_OP_MLA_ATTN, src, 4, dst, 1, &p), FM_OK);
        for (int i = 0; i < NH * V; i++) {
            double want = wt_at(&kvb, (i / V) * (NOPE + V) + NOPE + i % V, c);
            ck_assert_msg(fabs(y[i] - want) <= 1e-6 * fabs(want), "%s fp8 code 0x%02x at column %d: %.9g, want %.9g",
                          isas[cur_isa], (unsigned)(uint8_t)(i + ci), c, (double)y[i], want);
        }
    }
    wt_free(&kvb);
    free(q), free(y), free(c16);
}
END_TEST

/* MoE decode (T <= 8): the whole layer split by rows across threads. Many experts,
 * several per token, group sizes 1..T, I not a multiple of 16 or 128 (fp8 blocks
 * partial): against the double reference, and bit-identical at 1, 2, 3 and 5 threads. */
static void moe_decode_case(int dtype, int64_t T, int64_t H, int64_t I, int aq) {
    enum { E = 12, K = 4 };
    wt w[3 * E];
    for (int e = 0; e < 3 * E; e++) wt_make(&w[e], dtype, e % 3 == 2 ? H : I, e % 3 == 2 ? I : H, 1.0);
    float *x = rand_x(T * H, 1.0), *wts = rand_x(T * K, 1.0), *y = malloc((size_t)(T * H) * 4),
          *y1 = malloc((size_t)(T * H) * 4);
    int32_t *ids = malloc((size_t)(T * K) * 4);
    for (int64_t t = 0; t < T; t++) /* expert 0 in every token (groups up to T rows), 3 more, distinct */
        for (int j = 0; j < K; j++) ids[t * K + j] = j == 0 ? 0 : (int32_t)(1 + (t * 5 + j * 3) % (E - 1));
    for (int64_t t = 0; t < T; t++)
        for (int j = 1; j < K; j++)
            for (int a = 0; a < j; a++)
                if (ids[t * K + a] == ids[t * K + j]) ids[t * K + j] = (ids[t * K + j] % (E - 1)) + 1, a = -1;
    static const char *const thr[] = {"1", "2", "3", "5"};
    for (int q = 0; q < 4; q++) {
        ck_assert_int_eq(P->control(S, "threads", thr[q]), FM_OK);
        ck_assert_int_eq(moe_run(T, H, K, E, x, ids, wts, w, aq, y), FM_OK);
        if (q == 0) memcpy(y1, y, (size_t)(T * H) * 4);
        else ck_assert_msg(!memcmp(y1, y, (size_t)(T * H) * 4), "%s moe decode T=%lld: %s threads differ from 1",
                           isas[cur_isa], (long long)T, thr[q]);
    }
    double *r = calloc((size_t)(T * H), 8), *a = calloc((size_t)(T * H), 8);
    moe_ref(x, wts, ids, T, K, H, I, w, aq, r, a);
    close_to(y, r, a, T * H, aq ? 2e-2 : 2e-5, aq ? "moe decode fp8 act_quant" : "moe decode");
    P->control(S, "threads", "auto");
    for (int e = 0; e < 3 * E; e++) wt_free(&w[e]);
    free(x), free(wts), free(y), free(y1), free(ids), free(r), free(a);
}

START_TEST(t_moe_decode) {
    if (!use_isa(_i)) return;
    moe_decode_case(FM_BF16, 1, 200, 300, 0);
    moe_decode_case(FM_BF16, 1, 131, 200, 0); /* odd H: a down row left over by the two-stream kernel */
    moe_decode_case(FM_F32, 2, 72, 40, 0);
    moe_decode_case(FM_BF16, 5, 130, 72, 0);
    moe_decode_case(FM_F8_E4M3, 8, 256, 300, 0);
    moe_decode_case(FM_F8_E4M3, 1, 256, 300, 1);
    moe_decode_case(FM_F8_E4M3, 7, 130, 400, 1);
}
END_TEST

/* The naive form (k_nope | v expanded per head through kv_b) against the absorbed
 * form on the same data: equal up to rounding; with fp8 act_quant up to the
 * activation quantization (the bit-level check against the reference is in
 * test_conformance). */
static void mla_naive_case(int dtype, int act_quant, int64_t T, const int32_t *pos, double tol) {
    enum { NH = 3, NOPE = 16, R = 32, V = 12, C = 320, L = 300, D = C + R }; /* C, D: multiples of 32 */
    wt kvb;
    wt_make(&kvb, dtype, NH * (NOPE + V), C, 0.5);
    float *q = rand_x(T * NH * (NOPE + R), 1.0), *cache = rand_x(L * D, 1.0);
    float *y = malloc((size_t)(T * NH * V) * 4), *ya = malloc((size_t)(T * NH * V) * 4);
    fm_mla_attn_params p = {.n_heads = NH, .nope = NOPE, .rope = R, .v = V, .kv_lora = C, .scale = 0.3f,
                            .mode = FM_MLA_NAIVE, .act_quant = act_quant};
    fm_pl_tensor tq = mk(FM_F32, 2, T, NH * (NOPE + R), q, "q"), tc = mk(FM_F32, 2, L, D, cache, "cache");
    fm_pl_tensor tp = mk(FM_I32, 1, T, 0, (void *)pos, "pos"), ty = mk(FM_F32, 2, T, NH * V, y, "y");
    fm_pl_tensor ta = mk(FM_F32, 2, T, NH * V, ya, "ya");
    const fm_pl_tensor *src[4] = {&tq, &tc, &tp, &kvb.t}, *dst[1] = {&ty}, *dsta[1] = {&ta};
    ck_assert_int_eq(run_node(FM_OP_MLA_ATTN, src, 4, dst, 1, &p), FM_OK);
    p.mode = FM_MLA_ABSORB;
    ck_assert_int_eq(run_node(FM_OP_MLA_ATTN, src, 4, dsta, 1, &p), FM_OK);
    double mx = 0, md = 0;
    for (int64_t i = 0; i < T * NH * V; i++) mx = fmax(mx, fabs(ya[i])), md = fmax(md, fabs((double)y[i] - ya[i]));
    ck_assert_msg(md <= tol * mx, "%s mla naive dtype %d act_quant %d T=%lld: max diff %g vs max %g", isas[cur_isa], dtype,
                  act_quant, (long long)T, md, mx);
    wt_free(&kvb);
    free(q), free(cache), free(y), free(ya);
}

START_TEST(t_mla_naive) {
    if (!use_isa(_i)) return;
    if (cur_isa == 3) ck_assert_int_eq(P->control(S, "mla_bf16", "1"), FM_OK); /* absorbed side: the bf16 kernel's fast layouts */
    int32_t p1[1] = {299}, p3[3] = {0, 130, 257};
    mla_naive_case(FM_F32, 0, 1, p1, 1e-5);
    mla_naive_case(FM_BF16, 0, 3, p3, cur_isa == 3 ? 3e-2 : 1e-5);
    mla_naive_case(FM_BF16, 0, 1, p1, cur_isa == 3 ? 3e-2 : 1e-5);
    mla_naive_case(FM_F8_E4M3, 0, 3, p3, cur_isa == 3 ? 3e-2 : 1e-5); /* fp8 kv_b: the bf16 kernel too */
    mla_naive_case(FM_F8_E4M3, 1, 3, p3, 0.15);
}
END_TEST

static void add_ops_tests(Suite *s) {
    TCase *tc = cpu_tcase("ops");
    tcase_add_loop_test(tc, t_elementwise, 0, 4);
    tcase_add_loop_test(tc, t_rmsnorm_embed, 0, 4);
    tcase_add_loop_test(tc, t_rope_cache, 0, 4);
    tcase_add_loop_test(tc, t_moe_route, 0, 4);
    tcase_add_loop_test(tc, t_moe_experts, 0, 4);
    tcase_add_loop_test(tc, t_mla_attn, 0, 4);
    tcase_add_loop_test(tc, t_mla_decode_lanes, 0, 4);
    tcase_add_loop_test(tc, t_mla_bf16_cache, 0, 4);
    tcase_add_loop_test(tc, t_mla_fp8_codes, 0, 4);
    tcase_add_loop_test(tc, t_mla_threads, 0, 4);
    tcase_add_loop_test(tc, t_mla_naive, 0, 4);
    tcase_add_loop_test(tc, t_moe_decode, 0, 4);
    suite_add_tcase(s, tc);
}

static Suite *cpu_suite(void) {
    Suite *s = suite_create("cpu");
    TCase *tc = cpu_tcase("plugin");
    tcase_add_test(tc, t_entry);
    tcase_add_test(tc, t_buffers);
    tcase_add_test(tc, t_control);
    suite_add_tcase(s, tc);
    add_matmul_tests(s);
    add_ops_tests(s);
    return s;
}


int main(void) {
    SRunner *sr = srunner_create(cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
