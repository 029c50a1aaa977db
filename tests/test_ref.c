/* test_ref.c - the reference kernels and scalar conversions, checked against
 * independent recomputations (double precision, brute-force format oracles). */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fathom/fathom.h"
#include "ref.h"

/* ---- helpers -------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }

static uint64_t rng_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Uniform in [-a, a). */
static float frand(float a) { return ((float)(rng_u64() >> 40) * 0x1p-24f * 2.0f - 1.0f) * a; }

static void fill(float *x, int64_t n, float a) {
    for (int64_t i = 0; i < n; i++) x[i] = frand(a);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    ck_assert_ptr_nonnull(p);
    return p;
}

static fm_pl_tensor tens(int dtype, int ndim, int64_t n0, int64_t n1, void *data, const char *name) {
    fm_pl_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.ndim = ndim;
    t.ne[0] = n0;
    t.ne[1] = ndim > 1 ? n1 : 0;
    t.data = data;
    t.name = name;
    return t;
}

static char err_buf[512];

static fm_status run_node(int op, const void *params, int n_src, const fm_pl_tensor **src, int n_dst,
                          const fm_pl_tensor **dst) {
    fm_pl_node n = {.op = op, .index = 0, .n_src = n_src, .n_dst = n_dst, .src = src, .dst = dst,
                    .params = params, .name = "node"};
    err_buf[0] = 0;
    return fm_ref_compute(&n, err_buf, sizeof err_buf);
}

/* Independent e4m3fn: value by the format definition, encode by nearest search. */
static double e4m3_value(int c) {
    int e = (c >> 3) & 15, m = c & 7;
    double v = e == 0 ? ldexp(m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return (c & 0x80) ? -v : v;
}

static uint8_t e4m3_oracle(float x) {
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    double a = fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    int best = 0;
    for (int c = 1; c <= 0x7e; c++) {
        double dc = fabs(a - e4m3_value(c)), db = fabs(a - e4m3_value(best));
        if (dc < db || (dc == db && (c & 1) == 0)) best = c;
    }
    return sign | (uint8_t)best;
}

static void act_quant_oracle(const float *x, int64_t K, uint8_t *codes, float *scales) {
    for (int64_t b = 0; b < K / 128; b++) {
        float amax = 0.0f;
        for (int k = 0; k < 128; k++) amax = fmaxf(amax, fabsf(x[b * 128 + k]));
        float s = fmaxf(amax, 1e-4f) / 448.0f;
        scales[b] = s;
        for (int k = 0; k < 128; k++) codes[b * 128 + k] = e4m3_oracle(x[b * 128 + k] / s);
    }
}

static uint8_t random_code(void) {
    uint8_t c;
    do c = (uint8_t)rng_u64(); while ((c & 0x7f) == 0x7f);
    return c;
}

static float max_abs_diff(const float *a, const float *b, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* ---- names ----------------------------------------------------------------- */

START_TEST(test_names_parse_both_spellings) {
    ck_assert_str_eq(fm_dtype_name(FM_F8_E4M3), "f8_e4m3");
    ck_assert_str_eq(fm_dtype_name(FM_BF16), "bf16");
    ck_assert_int_eq(fm_dtype_size(FM_F32), 4);
    ck_assert_int_eq(fm_dtype_size(FM_BF16), 2);
    ck_assert_int_eq(fm_dtype_size(FM_F16), 2);
    ck_assert_int_eq(fm_dtype_size(FM_F8_E4M3), 1);
    ck_assert_int_eq(fm_dtype_size(FM_I32), 4);
    const char *st[] = {"F32", "BF16", "F16", "F8_E4M3", "I32"};
    for (int i = 0; i < FM_DTYPE_COUNT; i++) {
        ck_assert_int_eq(fm_dtype_parse(fm_dtype_name((fm_dtype)i)), i);
        ck_assert_int_eq(fm_dtype_parse(st[i]), i);
    }
    ck_assert_int_eq(fm_dtype_parse("f64"), -1);
    ck_assert_int_eq(fm_dtype_parse(NULL), -1);
    for (int i = 0; i < FM_OP_COUNT; i++) ck_assert_int_eq(fm_op_parse(fm_op_name((fm_op)i)), i);
    ck_assert_str_eq(fm_op_name(FM_OP_MLA_ATTN), "mla_attn");
    ck_assert_int_eq(fm_op_parse("moe_experts"), FM_OP_MOE_EXPERTS);
    ck_assert_int_eq(fm_op_parse("conv2d"), -1);
    ck_assert_str_ne(fm_status_name(FM_EINVAL), fm_status_name(FM_ENOMEM));
}
END_TEST

/* ---- e4m3 ------------------------------------------------------------------ */

START_TEST(test_e4m3_decode_matches_format_definition) {
    for (int c = 0; c < 256; c++) {
        float v = fm_e4m3_to_f32((uint8_t)c);
        if ((c & 0x7f) == 0x7f)
            ck_assert(isnan(v));
        else
            ck_assert_msg((double)v == e4m3_value(c), "code 0x%02x", c);
    }
    ck_assert(fm_e4m3_to_f32(0x7e) == 448.0f);
    ck_assert(fm_e4m3_to_f32(0x01) == 0x1p-9f);
    ck_assert(fm_e4m3_to_f32(0x08) == 0x1p-6f);
    ck_assert(fm_e4m3_to_f32(0x38) == 1.0f);
    for (int c = 1; c <= 0x7e; c++) ck_assert(fm_e4m3_to_f32((uint8_t)c) > fm_e4m3_to_f32((uint8_t)(c - 1)));
}
END_TEST

START_TEST(test_e4m3_roundtrip_all_codes) {
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;
        ck_assert_msg(fm_f32_to_e4m3(fm_e4m3_to_f32((uint8_t)c)) == c, "code 0x%02x", c);
    }
}
END_TEST

START_TEST(test_e4m3_ties_go_to_even_code) {
    for (int c = 0; c < 0x7e; c++) {
        for (int sign = 0; sign <= 0x80; sign += 0x80) {
            float lo = fm_e4m3_to_f32((uint8_t)(c | sign)), hi = fm_e4m3_to_f32((uint8_t)((c + 1) | sign));
            float mid = (lo + hi) / 2; /* exact: neighbours differ in one low bit */
            uint8_t even = (uint8_t)(((c & 1) ? c + 1 : c) | sign);
            ck_assert_msg(fm_f32_to_e4m3(mid) == even, "tie between 0x%02x and 0x%02x", c | sign, (c + 1) | sign);
            ck_assert(fm_f32_to_e4m3(nextafterf(mid, lo)) == (c | sign));
            ck_assert(fm_f32_to_e4m3(nextafterf(mid, hi)) == ((c + 1) | sign));
        }
    }
    ck_assert_int_eq(fm_f32_to_e4m3(0x1p-10f), 0x00);      /* half the smallest subnormal */
    ck_assert_int_eq(fm_f32_to_e4m3(3 * 0x1p-10f), 0x02);
    ck_assert_int_eq(fm_f32_to_e4m3(1.0625f), 0x38);         /* 1 + 1/16 between 1 and 1.125 */
    ck_assert_int_eq(fm_f32_to_e4m3(1.1875f), 0x3a);
}
END_TEST

START_TEST(test_e4m3_saturates_and_never_makes_nan) {
    float big[] = {448.0f, 448.5f, 463.99f, 464.0f, 480.0f, 1e6f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        ck_assert_int_eq(fm_f32_to_e4m3(big[i]), 0x7e);
        ck_assert_int_eq(fm_f32_to_e4m3(-big[i]), 0xfe);
    }
    ck_assert_int_eq(fm_f32_to_e4m3(NAN), 0x7f);
    ck_assert_int_eq(fm_f32_to_e4m3(1e-30f), 0x00);
    ck_assert_int_eq(fm_f32_to_e4m3(-1e-30f), 0x80);
    ck_assert_int_eq(fm_f32_to_e4m3(-0.0f), 0x80);
    ck_assert_int_eq(fm_f32_to_e4m3(FLT_TRUE_MIN), 0x00);
}
END_TEST

START_TEST(test_e4m3_encode_matches_brute_force_nearest) {
    rng_seed(1);
    for (int i = 0; i < 100000; i++) {
        /* Random sign, exponent in [-14, 9], random mantissa bits. */
        int e = (int)(rng_u64() % 24) - 14;
        float f = ldexpf(1.0f + (float)(rng_u64() >> 41) * 0x1p-23f, e);
        if (rng_u64() & 1) f = -f;
        ck_assert_msg(fm_f32_to_e4m3(f) == e4m3_oracle(f), "%a", (double)f);
    }
}
END_TEST

/* ---- bf16 / f16 ----------------------------------------------------------- */

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

START_TEST(test_bf16_round_to_nearest_even) {
    for (uint32_t h = 0; h < 65536; h++) {
        float v = fm_bf16_to_f32((uint16_t)h);
        if (isnan(v)) {
            ck_assert(isnan(fm_bf16_to_f32(fm_f32_to_bf16(v))));
            continue;
        }
        ck_assert_msg(fm_f32_to_bf16(v) == h, "bf16 0x%04x", h);
    }
    ck_assert_int_eq(fm_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);       /* tie, even below */
    ck_assert_int_eq(fm_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);   /* tie, even above */
    ck_assert_int_eq(fm_f32_to_bf16(nextafterf(1.0f + 0x1p-8f, 2.0f)), 0x3f81);
    ck_assert_int_eq(fm_f32_to_bf16(FLT_MAX), 0x7f80);               /* rounds to inf */
    /* A NaN whose payload sits in the dropped bits must not become infinity. */
    ck_assert(isnan(fm_bf16_to_f32(fm_f32_to_bf16(bits_to_f32(0x7f800001u)))));
    ck_assert(isnan(fm_bf16_to_f32(fm_f32_to_bf16(bits_to_f32(0xff800001u)))));
}
END_TEST

START_TEST(test_f16_round_to_nearest_even_with_subnormals) {
    for (uint32_t h = 0; h < 65536; h++) {
        float v = fm_f16_to_f32((uint16_t)h);
        if (isnan(v)) {
            ck_assert(isnan(fm_f16_to_f32(fm_f32_to_f16(v))));
            continue;
        }
        ck_assert_msg(fm_f32_to_f16(v) == h, "f16 0x%04x", h);
    }
    ck_assert(fm_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(fm_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert_int_eq(fm_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    ck_assert_int_eq(fm_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    ck_assert_int_eq(fm_f32_to_f16(0x1p-25f), 0x0000);       /* subnormal ties */
    ck_assert_int_eq(fm_f32_to_f16(3 * 0x1p-25f), 0x0002);
    ck_assert_int_eq(fm_f32_to_f16(-3 * 0x1p-25f), 0x8002);
    ck_assert_int_eq(fm_f32_to_f16(1023.5f * 0x1p-24f), 0x0400); /* rounds up into the normals */
    ck_assert_int_eq(fm_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_int_eq(fm_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_int_eq(fm_f32_to_f16(-INFINITY), 0xfc00);
    ck_assert(isnan(fm_f16_to_f32(fm_f32_to_f16(bits_to_f32(0x7f800001u)))));
    /* Random values: nothing representable lies closer. */
    rng_seed(2);
    for (int i = 0; i < 50000; i++) {
        float f = ldexpf(1.0f + (float)(rng_u64() >> 41) * 0x1p-23f, (int)(rng_u64() % 42) - 26);
        if (f > 65504.0f) continue; /* overflow is pinned above */
        uint16_t h = fm_f32_to_f16(f);
        double d = fabs((double)fm_f16_to_f32(h) - f);
        for (int dh = -1; dh <= 1; dh += 2) {
            if ((int)h + dh < 0 || h + dh > 0x7bff) continue;
            double dn = fabs((double)fm_f16_to_f32((uint16_t)(h + dh)) - f);
            ck_assert_msg(d < dn || (d == dn && (h & 1) == 0), "%a -> 0x%04x", (double)f, h);
        }
    }
}
END_TEST

/* ---- act_quant and fp8 matmul ----------------------------------------------- */

START_TEST(test_act_quant_crafted_row) {
    float x[384] = {0};
    /* Block 0: amax 448 -> scale exactly 1, codes are e4m3(x). */
    x[0] = 448.0f;
    x[1] = 1.0625f;   /* tie -> 0x38 */
    x[2] = 1.1875f;   /* tie -> 0x3a */
    x[3] = -448.0f;
    x[4] = 0x1p-10f;  /* tie with zero -> 0x00 */
    x[5] = 3 * 0x1p-10f;
    x[6] = -2.0f;
    /* Block 1: all zero -> the 1e-4 floor. Block 2: amax 3.5 -> scale 1/128. */
    x[256] = -3.5f;
    x[257] = 0.5f;
    x[258] = 0.01f;
    uint8_t codes[384];
    float s[3];
    fm_act_quant_row(x, 384, codes, s);
    ck_assert(s[0] == 1.0f);
    ck_assert(s[1] == 1e-4f / 448.0f);
    ck_assert(s[2] == 0x1p-7f);
    uint8_t want0[] = {0x7e, 0x38, 0x3a, 0xfe, 0x00, 0x02, 0xc0};
    for (int i = 0; i < 7; i++) ck_assert_msg(codes[i] == want0[i], "code %d: 0x%02x", i, codes[i]);
    for (int i = 128; i < 256; i++) ck_assert_int_eq(codes[i], 0);
    ck_assert_int_eq(codes[256], 0xfe);               /* -448 */
    ck_assert_int_eq(codes[257], 0x68);               /* 64 = 2^6 */
    ck_assert_int_eq(codes[258], e4m3_oracle(0.01f / 0x1p-7f)); /* 1.28 -> 1.25 */
    ck_assert_int_eq(codes[258], 0x3a);
}
END_TEST

START_TEST(test_fp8_matmul_equals_exact_formula) {
    enum { T = 3, K = 256, N = 200, NB = 2 };
    rng_seed(3);
    float *x = xcalloc(T * K, sizeof *x);
    uint8_t *w = xcalloc(N * K, 1);
    float sc[2 * NB], y[T * N], y0[T * N];
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) x[t * K + k] = frand(k < 128 ? 3.0f : 0.02f) * (float)(t + 1);
    for (int i = 0; i < N * K; i++) w[i] = random_code();
    for (int i = 0; i < 2 * NB; i++) sc[i] = 0.001f * (float)(i + 1) + frand(0.0005f);
    fm_pl_tensor xs = tens(FM_F32, 2, T, K, x, "x"), ss = tens(FM_F32, 2, 2, NB, sc, "w.scale");
    fm_pl_tensor ws = tens(FM_F8_E4M3, 2, N, K, w, "w"), ys = tens(FM_F32, 2, T, N, y, "y");
    ws.scale = &ss;
    const fm_pl_tensor *src[] = {&xs, &ws}, *dst[] = {&ys};
    fm_matmul_params p = {.act_quant = 1};
    ck_assert_int_eq(run_node(FM_OP_MATMUL, &p, 2, src, 1, dst), FM_OK);

    uint8_t codes[T * K], kc[K];
    float xsc[T * NB], ks[NB];
    for (int t = 0; t < T; t++) {
        act_quant_oracle(x + t * K, K, codes + t * K, xsc + t * NB);
        fm_act_quant_row(x + t * K, K, kc, ks);
        ck_assert(memcmp(kc, codes + t * K, K) == 0);
        ck_assert(memcmp(ks, xsc + t * NB, sizeof ks) == 0);
    }
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            /* Exact block sums (the products have 8 significant bits, the sums < 53),
             * then the README's f32 steps; and the whole formula in double. */
            double ref = 0, mag = 0;
            float acc = 0.0f;
            for (int i = 0; i < NB; i++) {
                double d = 0;
                for (int k = i * 128; k < i * 128 + 128; k++) d += e4m3_value(codes[t * K + k]) * e4m3_value(w[n * K + k]);
                float part = (float)d * xsc[t * NB + i];
                part = part * sc[(n / 128) * NB + i];
                acc += part;
                double term = d * xsc[t * NB + i] * sc[(n / 128) * NB + i];
                ref += term;
                mag += fabs(term);
            }
            ck_assert_msg(y[t * N + n] == acc, "y[%d,%d] = %a, formula %a", t, n, (double)y[t * N + n], (double)acc);
            ck_assert_msg(fabs(y[t * N + n] - ref) <= 1e-6 * mag + 1e-30, "y[%d,%d] = %g, want %g", t, n,
                          (double)y[t * N + n], ref);
        }

    /* act_quant = 0: the weights decoded to f32 times the unquantized x. */
    p.act_quant = 0;
    fm_pl_tensor y0s = tens(FM_F32, 2, T, N, y0, "y0");
    dst[0] = &y0s;
    ck_assert_int_eq(run_node(FM_OP_MATMUL, &p, 2, src, 1, dst), FM_OK);
    float diff = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double term = (double)x[t * K + k] * (double)(fm_e4m3_to_f32(w[n * K + k]) * sc[(n / 128) * NB + k / 128]);
                ref += term;
                mag += fabs(term);
            }
            ck_assert(fabs(y0[t * N + n] - ref) <= 1e-6 * mag + 1e-30);
            diff = fmaxf(diff, fabsf(y0[t * N + n] - y[t * N + n]));
        }
    ck_assert_msg(diff > 1e-4f, "activation quantization had no effect");
    free(x);
    free(w);
}
END_TEST

START_TEST(test_weight_row_uses_128x128_block_scales) {
    enum { N = 130, K = 256 };
    uint8_t *w = xcalloc(N * K, 1);
    float sc[4] = {2.0f, 3.0f, 5.0f, 7.0f}, row[K];
    for (int i = 0; i < N * K; i++) w[i] = 0x38; /* 1.0 */
    fm_pl_tensor ss = tens(FM_F32, 2, 2, 2, sc, "s"), ws = tens(FM_F8_E4M3, 2, N, K, w, "w");
    ws.scale = &ss;
    fm_weight_row_f32(&ws, 127, row);
    ck_assert(row[0] == 2.0f && row[127] == 2.0f && row[128] == 3.0f && row[255] == 3.0f);
    fm_weight_row_f32(&ws, 129, row); /* partial row block uses the scale it falls in */
    ck_assert(row[0] == 5.0f && row[200] == 7.0f);
    uint16_t b[3] = {fm_f32_to_bf16(1.5f), fm_f32_to_bf16(-2.0f), fm_f32_to_bf16(0.25f)};
    fm_pl_tensor bs = tens(FM_BF16, 1, 3, 0, b, "b");
    fm_weight_row_f32(&bs, 0, row);
    ck_assert(row[0] == 1.5f && row[1] == -2.0f && row[2] == 0.25f);
    free(w);
}
END_TEST

START_TEST(test_matmul_bf16_f16_weights_equal_decoded_f32) {
    enum { T = 4, K = 40, N = 9 };
    rng_seed(4);
    float x[T * K], wf[N * K], yf[T * N], yb[T * N], yh[T * N];
    uint16_t wb[N * K], wh[N * K];
    fill(x, T * K, 1.0f);
    for (int i = 0; i < N * K; i++) {
        wb[i] = fm_f32_to_bf16(frand(1.0f));
        wf[i] = fm_bf16_to_f32(wb[i]);
        wh[i] = fm_f32_to_f16(wf[i]); /* bf16 values with 8 mantissa bits are f16-exact */
    }
    fm_matmul_params p = {.act_quant = 1}; /* no effect on non-FP8 weights */
    fm_pl_tensor xs = tens(FM_F32, 2, T, K, x, "x");
    fm_pl_tensor w32 = tens(FM_F32, 2, N, K, wf, "w"), w16 = tens(FM_BF16, 2, N, K, wb, "w"),
                 wf16 = tens(FM_F16, 2, N, K, wh, "w");
    fm_pl_tensor ys[3] = {tens(FM_F32, 2, T, N, yf, "y"), tens(FM_F32, 2, T, N, yb, "y"), tens(FM_F32, 2, T, N, yh, "y")};
    const fm_pl_tensor *ws[3] = {&w32, &w16, &wf16};
    for (int i = 0; i < 3; i++) {
        const fm_pl_tensor *src[] = {&xs, ws[i]}, *dst[] = {&ys[i]};
        ck_assert_int_eq(run_node(FM_OP_MATMUL, &p, 2, src, 1, dst), FM_OK);
    }
    ck_assert(memcmp(yf, yb, sizeof yf) == 0);
    ck_assert(memcmp(yf, yh, sizeof yf) == 0);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double ref = 0;
            for (int k = 0; k < K; k++) ref += (double)x[t * K + k] * wf[n * K + k];
            ck_assert(fabs(yf[t * N + n] - ref) < 1e-5);
        }
}
END_TEST

/* ---- rmsnorm, add, swiglu, embed -------------------------------------------- */

START_TEST(test_rmsnorm_matches_formula) {
    enum { T = 3, H = 96 };
    rng_seed(5);
    float x[T * H], y[T * H];
    uint16_t w[H];
    fill(x, T * H, 4.0f);
    for (int i = 0; i < H; i++) x[2 * H + i] *= 1e-3f; /* mean(x^2) ~ eps: eps must count */
    for (int i = 0; i < H; i++) w[i] = fm_f32_to_bf16(1.0f + frand(0.5f));
    fm_rmsnorm_params p = {.eps = 1e-6f};
    fm_pl_tensor xs = tens(FM_F32, 2, T, H, x, "x"), ws = tens(FM_BF16, 1, H, 0, w, "w"),
                 ys = tens(FM_F32, 2, T, H, y, "y");
    const fm_pl_tensor *src[] = {&xs, &ws}, *dst[] = {&ys};
    ck_assert_int_eq(run_node(FM_OP_RMSNORM, &p, 2, src, 1, dst), FM_OK);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) ss += (double)x[t * H + i] * x[t * H + i];
        double r = 1.0 / sqrt(ss / H + 1e-6);
        for (int i = 0; i < H; i++) {
            double want = x[t * H + i] * r * fm_bf16_to_f32(w[i]);
            ck_assert(fabs(y[t * H + i] - want) <= 1e-6 * (1 + fabs(want)));
        }
    }
}
END_TEST

START_TEST(test_add_and_swiglu_elementwise) {
    float a[5] = {1, -2, 0.5f, 30, -30}, b[5] = {2, 3, -1, 0.25f, 4}, y[5];
    fm_noparams np = {0};
    fm_pl_tensor as = tens(FM_F32, 1, 5, 0, a, "a"), bs = tens(FM_F32, 1, 5, 0, b, "b"), ys = tens(FM_F32, 1, 5, 0, y, "y");
    const fm_pl_tensor *src[] = {&as, &bs}, *dst[] = {&ys};
    ck_assert_int_eq(run_node(FM_OP_ADD, &np, 2, src, 1, dst), FM_OK);
    for (int i = 0; i < 5; i++) ck_assert(y[i] == a[i] + b[i]);
    ck_assert_int_eq(run_node(FM_OP_SWIGLU, &np, 2, src, 1, dst), FM_OK);
    for (int i = 0; i < 5; i++) {
        double want = a[i] / (1.0 + exp(-(double)a[i])) * b[i];
        ck_assert(fabs(y[i] - want) <= 1e-6 * (1 + fabs(want)));
    }
}
END_TEST

START_TEST(test_embed_gathers_rows_and_rejects_bad_id) {
    enum { V = 256, H = 4 };
    uint16_t tab[V * H];
    for (int i = 0; i < V * H; i++) tab[i] = fm_f32_to_bf16((float)i);
    int32_t ids[3] = {5, 255, 0};
    float y[3 * H];
    fm_noparams np = {0};
    fm_pl_tensor ts = tens(FM_BF16, 2, V, H, tab, "tok_embed"), is = tens(FM_I32, 1, 3, 0, ids, "ids"),
                 ys = tens(FM_F32, 2, 3, H, y, "y");
    const fm_pl_tensor *src[] = {&ts, &is}, *dst[] = {&ys};
    ck_assert_int_eq(run_node(FM_OP_EMBED, &np, 2, src, 1, dst), FM_OK);
    for (int t = 0; t < 3; t++)
        for (int h = 0; h < H; h++) ck_assert(y[t * H + h] == fm_bf16_to_f32(tab[ids[t] * H + h]));
    ids[2] = 300;
    ck_assert_int_eq(run_node(FM_OP_EMBED, &np, 2, src, 1, dst), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "embed 'node'") && strstr(err_buf, "token id 300 at row 2 >= vocab 256"), "%s",
                  err_buf);
    ids[2] = V;
    ck_assert_int_eq(run_node(FM_OP_EMBED, &np, 2, src, 1, dst), FM_EINVAL);
    ids[2] = -1;
    ck_assert_int_eq(run_node(FM_OP_EMBED, &np, 2, src, 1, dst), FM_EINVAL);
    ck_assert(strstr(err_buf, "-1") != NULL);
}
END_TEST

/* ---- rope ------------------------------------------------------------------- */

START_TEST(test_rope_inverse_restores_input) {
    enum { T = 5, HD = 24, NH = 2, C = NH * HD };
    rng_seed(6);
    float x[T * C], y[T * C], z[T * C];
    int32_t pos[T] = {0, 1, 7, 100, 4000}, neg[T];
    for (int t = 0; t < T; t++) neg[t] = -pos[t];
    fill(x, T * C, 2.0f);
    fm_rope_params p = {.head_dim = HD, .rope_off = 8, .rope_dim = 16, .theta = 10000.0f, .yarn_factor = 4.0f,
                        .yarn_orig_max = 32, .yarn_beta_fast = 32.0f, .yarn_beta_slow = 1.0f};
    fm_pl_tensor xs = tens(FM_F32, 2, T, C, x, "x"), ps = tens(FM_I32, 1, T, 0, pos, "pos"),
                 ys = tens(FM_F32, 2, T, C, y, "y"), ns = tens(FM_I32, 1, T, 0, neg, "neg"),
                 zs = tens(FM_F32, 2, T, C, z, "z");
    const fm_pl_tensor *src[] = {&xs, &ps}, *dst[] = {&ys};
    ck_assert_int_eq(run_node(FM_OP_ROPE, &p, 2, src, 1, dst), FM_OK);
    const fm_pl_tensor *src2[] = {&ys, &ns}, *dst2[] = {&zs};
    ck_assert_int_eq(run_node(FM_OP_ROPE, &p, 2, src2, 1, dst2), FM_OK);
    ck_assert_float_le(max_abs_diff(x, z, T * C), 1e-5f);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            int in = c % HD;
            if (in < 8) ck_assert(y[t * C + c] == x[t * C + c]); /* outside the rope slice: untouched */
        }
    ck_assert(memcmp(x, y, C * sizeof(float)) == 0); /* position 0 */
    ck_assert(max_abs_diff(x + C, y + C, C) > 1e-3f);
}
END_TEST

START_TEST(test_rope_rotates_adjacent_pairs_by_pos_times_inv_freq) {
    enum { D = 8 };
    float x[D], y[D], inv[D / 2];
    int32_t pos = 3;
    rng_seed(7);
    fill(x, D, 1.0f);
    fm_rope_params p = {.head_dim = D, .rope_off = 0, .rope_dim = D, .theta = 10000.0f, .yarn_factor = 1.0f};
    fm_rope_inv_freq(&p, inv);
    fm_pl_tensor xs = tens(FM_F32, 2, 1, D, x, "x"), ps = tens(FM_I32, 1, 1, 0, &pos, "pos"),
                 ys = tens(FM_F32, 2, 1, D, y, "y");
    const fm_pl_tensor *src[] = {&xs, &ps}, *dst[] = {&ys};
    ck_assert_int_eq(run_node(FM_OP_ROPE, &p, 2, src, 1, dst), FM_OK);
    for (int i = 0; i < D / 2; i++) {
        double ang = (double)((float)pos * inv[i]), a = x[2 * i], b = x[2 * i + 1];
        ck_assert(fabs(y[2 * i] - (a * cos(ang) - b * sin(ang))) < 1e-6);
        ck_assert(fabs(y[2 * i + 1] - (a * sin(ang) + b * cos(ang))) < 1e-6);
    }
}
END_TEST

/* inv_freq from the written formula, in double. */
static void inv_freq_double(const fm_rope_params *p, double *out) {
    int dim = p->rope_dim;
    for (int i = 0; i < dim / 2; i++) out[i] = pow((double)p->theta, -2.0 * i / dim);
    if (!(p->yarn_factor > 1.0f)) return;
    double pi = acos(-1.0);
    double df = dim * log(p->yarn_orig_max / (2 * pi * p->yarn_beta_fast)) / (2 * log((double)p->theta));
    double ds = dim * log(p->yarn_orig_max / (2 * pi * p->yarn_beta_slow)) / (2 * log((double)p->theta));
    double low = fmax(floor(df), 0), high = fmin(ceil(ds), dim - 1);
    if (low == high) high += 0.001;
    for (int i = 0; i < dim / 2; i++) {
        double ramp = fmin(fmax((i - low) / (high - low), 0.0), 1.0);
        out[i] = out[i] / p->yarn_factor * ramp + out[i] * (1 - ramp);
    }
}

static void check_inv_freq(const fm_rope_params *p) {
    float got[64];
    double want[64];
    fm_rope_inv_freq(p, got);
    inv_freq_double(p, want);
    for (int i = 0; i < p->rope_dim / 2; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= 2e-6 * want[i], "inv_freq[%d] = %.9g, want %.9g", i, (double)got[i],
                      want[i]);
}

START_TEST(test_rope_inv_freq_plain_matches_double_formula) {
    fm_rope_params p = {.head_dim = 64, .rope_dim = 64, .theta = 10000.0f, .yarn_factor = 1.0f};
    check_inv_freq(&p);
    float f[32];
    fm_rope_inv_freq(&p, f);
    ck_assert(f[0] == 1.0f);
}
END_TEST

START_TEST(test_yarn_inv_freq_matches_double_formula) {
    /* tiny-yarn: low 0, high 2, so ramp[1] = 0.5 is fractional. */
    fm_rope_params p = {.head_dim = 16, .rope_dim = 16, .theta = 10000.0f, .yarn_factor = 4.0f,
                        .yarn_orig_max = 32, .yarn_beta_fast = 32.0f, .yarn_beta_slow = 1.0f};
    check_inv_freq(&p);
    float f[8];
    fm_rope_inv_freq(&p, f);
    double plain1 = pow(10000.0, -2.0 / 16);
    ck_assert(f[0] == 1.0f);
    ck_assert(fabs(f[1] - (plain1 / 4 * 0.5 + plain1 * 0.5)) < 1e-7);
    ck_assert(fabs(f[7] - pow(10000.0, -14.0 / 16) / 4) < 1e-9);
    /* DeepSeek-V3: factor 40, original 4096. */
    fm_rope_params v3 = {.head_dim = 64, .rope_dim = 64, .theta = 10000.0f, .yarn_factor = 40.0f,
                         .yarn_orig_max = 4096, .yarn_beta_fast = 32.0f, .yarn_beta_slow = 1.0f};
    check_inv_freq(&v3);
    /* low == high == 0: high becomes 0.001, a step ramp. */
    fm_rope_params step = p;
    step.yarn_beta_slow = 5.2f;
    check_inv_freq(&step);
    fm_rope_inv_freq(&step, f);
    ck_assert(f[0] == 1.0f);
    ck_assert(fabs(f[1] - plain1 / 4) < 1e-7);
}
END_TEST

/* ---- moe_route -------------------------------------------------------------- */

typedef struct route_case {
    int E, T;
    float logits[16];
    float bias[16];
    int has_bias;
    fm_moe_route_params p;
    int32_t ids[16];
    float w[16];
} route_case;

/* Gate = identity, so the router logits are x itself, exactly. */
static void run_route(route_case *rc) {
    float gate[16 * 16] = {0};
    for (int e = 0; e < rc->E; e++) gate[e * rc->E + e] = 1.0f;
    fm_pl_tensor xs = tens(FM_F32, 2, 1, rc->E, rc->logits, "x"), gs = tens(FM_F32, 2, rc->E, rc->E, gate, "gate"),
                 bs = tens(FM_F32, 1, rc->E, 0, rc->bias, "bias"),
                 is = tens(FM_I32, 2, 1, rc->p.top_k, rc->ids, "ids"),
                 ws = tens(FM_F32, 2, 1, rc->p.top_k, rc->w, "w");
    const fm_pl_tensor *src[] = {&xs, &gs, &bs}, *dst[] = {&is, &ws};
    ck_assert_int_eq(run_node(FM_OP_MOE_ROUTE, &rc->p, rc->has_bias ? 3 : 2, src, 2, dst), FM_OK);
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

START_TEST(test_route_groups_drop_a_higher_scoring_expert) {
    route_case rc = {.E = 8, .logits = {3, -5, 1, 1, 0.8f, 0.8f, -2, -2}};
    rc.p = (fm_moe_route_params){.n_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 2,
                                 .scoring = FM_SCORE_SIGMOID, .method = FM_TOPK_NOAUX_TC, .renorm = 1, .scale = 1.0f};
    /* Expert 0 scores highest, but its group's top-2 sum loses to groups 1 and 2;
     * experts 2 and 3 tie, the lower index comes first. */
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 2);
    ck_assert_int_eq(rc.ids[1], 3);
    ck_assert(fabsf(rc.w[0] - 0.5f) < 1e-7f && fabsf(rc.w[1] - 0.5f) < 1e-7f);
    /* Group-limited greedy ranks groups by their best expert: group 0 stays. */
    rc.p.method = FM_TOPK_GROUP_LIMITED;
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 0);
    ck_assert_int_eq(rc.ids[1], 2);
    /* Without groups the same scores pick 0 and 2 as well. */
    rc.p.method = FM_TOPK_NOAUX_TC;
    rc.p.n_group = 1;
    rc.p.topk_group = 1;
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 0);
    ck_assert_int_eq(rc.ids[1], 2);
}
END_TEST

START_TEST(test_route_bias_changes_selection_not_weights) {
    route_case rc = {.E = 4, .logits = {2, 1, 0.5f, -1}, .bias = {0, 0, 0.5f, 0}, .has_bias = 1};
    rc.p = (fm_moe_route_params){.n_experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1,
                                 .scoring = FM_SCORE_SIGMOID, .method = FM_TOPK_NOAUX_TC, .renorm = 1, .scale = 2.5f};
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 2); /* 0.62 + 0.5 beats 0.88 */
    ck_assert_int_eq(rc.ids[1], 0);
    double s2 = sigm(0.5), s0 = sigm(2);
    ck_assert(fabs(rc.w[0] - s2 / (s0 + s2) * 2.5) < 1e-6);
    ck_assert(fabs(rc.w[1] - s0 / (s0 + s2) * 2.5) < 1e-6);
    rc.has_bias = 0;
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 0);
    ck_assert_int_eq(rc.ids[1], 1);
    /* A bias that reorders but does not change the picked set leaves the weights. */
    rc.has_bias = 1;
    rc.bias[2] = 0;
    rc.bias[1] = 0.3f;
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 1);
    ck_assert_int_eq(rc.ids[1], 0);
    ck_assert(fabs(rc.w[0] - sigm(1) / (sigm(1) + s0) * 2.5) < 1e-6);
}
END_TEST

START_TEST(test_route_softmax_without_renorm) {
    route_case rc = {.E = 6, .logits = {0.3f, -1.2f, 2.0f, 0.9f, 1.7f, -0.4f}};
    rc.p = (fm_moe_route_params){.n_experts = 6, .top_k = 3, .n_group = 1, .topk_group = 1,
                                 .scoring = FM_SCORE_SOFTMAX, .method = FM_TOPK_GREEDY, .renorm = 0, .scale = 1.0f};
    run_route(&rc);
    double sum = 0, pr[6];
    for (int e = 0; e < 6; e++) sum += exp(rc.logits[e]);
    for (int e = 0; e < 6; e++) pr[e] = exp(rc.logits[e]) / sum;
    int want[3] = {2, 4, 3};
    for (int j = 0; j < 3; j++) {
        ck_assert_int_eq(rc.ids[j], want[j]);
        ck_assert(fabs(rc.w[j] - pr[want[j]]) < 1e-6);
    }
    ck_assert(rc.w[0] + rc.w[1] + rc.w[2] < 0.95f);
}
END_TEST

START_TEST(test_route_top1) {
    route_case rc = {.E = 5, .logits = {0.1f, 0.7f, -0.3f, 0.69f, 0.2f}};
    rc.p = (fm_moe_route_params){.n_experts = 5, .top_k = 1, .n_group = 1, .topk_group = 1,
                                 .scoring = FM_SCORE_SIGMOID, .method = FM_TOPK_NOAUX_TC, .renorm = 1, .scale = 2.5f};
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 1);
    ck_assert(rc.w[0] == 2.5f);
    rc.p.renorm = 0;
    rc.p.scoring = FM_SCORE_SOFTMAX;
    rc.p.scale = 1.0f;
    run_route(&rc);
    ck_assert_int_eq(rc.ids[0], 1);
    double sum = 0;
    for (int e = 0; e < 5; e++) sum += exp(rc.logits[e]);
    ck_assert(fabs(rc.w[0] - exp(0.7) / sum) < 1e-6);
}
END_TEST

/* ---- moe_experts ------------------------------------------------------------ */

START_TEST(test_moe_experts_weighted_sum_matches_manual) {
    enum { E = 3, T = 2, K = 2, H = 8, I = 6 };
    rng_seed(8);
    float x[T * H], wts[T * K] = {0.7f, 0.3f, 1.5f, -0.25f}, y[T * H];
    float wg[E][I * H], wu[E][I * H], wd[E][H * I];
    int32_t ids[T * K] = {2, 0, 1, 2};
    fill(x, T * H, 1.0f);
    for (int e = 0; e < E; e++) {
        fill(wg[e], I * H, 0.5f);
        fill(wu[e], I * H, 0.5f);
        fill(wd[e], H * I, 0.5f);
    }
    fm_pl_tensor ts[3 + 3 * E];
    const fm_pl_tensor *src[3 + 3 * E];
    ts[0] = tens(FM_F32, 2, T, H, x, "x");
    ts[1] = tens(FM_I32, 2, T, K, ids, "ids");
    ts[2] = tens(FM_F32, 2, T, K, wts, "w");
    for (int e = 0; e < E; e++) {
        ts[3 + 3 * e] = tens(FM_F32, 2, I, H, wg[e], "gate");
        ts[4 + 3 * e] = tens(FM_F32, 2, I, H, wu[e], "up");
        ts[5 + 3 * e] = tens(FM_F32, 2, H, I, wd[e], "down");
    }
    for (int i = 0; i < 3 + 3 * E; i++) src[i] = &ts[i];
    fm_pl_tensor ys = tens(FM_F32, 2, T, H, y, "y");
    const fm_pl_tensor *dst[] = {&ys};
    fm_moe_experts_params p = {.n_experts = E, .act_quant = 0};
    ck_assert_int_eq(run_node(FM_OP_MOE_EXPERTS, &p, 3 + 3 * E, src, 1, dst), FM_OK);
    for (int t = 0; t < T; t++) {
        double want[H] = {0};
        for (int j = 0; j < K; j++) {
            int e = ids[t * K + j];
            double h[I];
            for (int i = 0; i < I; i++) {
                double g = 0, u = 0;
                for (int k = 0; k < H; k++) {
                    g += (double)wg[e][i * H + k] * x[t * H + k];
                    u += (double)wu[e][i * H + k] * x[t * H + k];
                }
                h[i] = g / (1 + exp(-g)) * u;
            }
            for (int o = 0; o < H; o++) {
                double d = 0;
                for (int i = 0; i < I; i++) d += wd[e][o * I + i] * h[i];
                want[o] += wts[t * K + j] * d;
            }
        }
        for (int o = 0; o < H; o++) ck_assert(fabs(y[t * H + o] - want[o]) < 1e-5);
    }
    ids[3] = 3;
    ck_assert_int_eq(run_node(FM_OP_MOE_EXPERTS, &p, 3 + 3 * E, src, 1, dst), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "moe_experts 'node'") && strstr(err_buf, "expert id 3"), "%s", err_buf);
    ids[3] = -2;
    ck_assert_int_eq(run_node(FM_OP_MOE_EXPERTS, &p, 3 + 3 * E, src, 1, dst), FM_EINVAL);
}
END_TEST

/* FP8 experts with act_quant: each linear quantizes its own input, exactly as a
 * chain of MATMUL(act_quant) nodes. */
START_TEST(test_moe_experts_fp8_quantizes_each_linear_input) {
    enum { E = 2, T = 3, K = 2, H = 128, I = 128 };
    rng_seed(9);
    float x[T * H], wts[T * K] = {0.6f, 0.4f, 1.0f, 0.5f, 0.2f, 0.9f}, y[T * H], want[T * H] = {0};
    int32_t ids[T * K] = {1, 0, 0, 1, 1, 0};
    uint8_t *w = xcalloc(3 * E * H * I, 1);
    float sc[3 * E];
    for (int i = 0; i < 3 * E * H * I; i++) w[i] = random_code();
    for (int i = 0; i < 3 * E; i++) sc[i] = 0.002f + 0.001f * (float)i;
    fill(x, T * H, 1.0f);
    fm_pl_tensor st[3 * E], ts[3 + 3 * E];
    const fm_pl_tensor *src[3 + 3 * E];
    ts[0] = tens(FM_F32, 2, T, H, x, "x");
    ts[1] = tens(FM_I32, 2, T, K, ids, "ids");
    ts[2] = tens(FM_F32, 2, T, K, wts, "w");
    for (int i = 0; i < 3 * E; i++) {
        st[i] = tens(FM_F32, 2, 1, 1, &sc[i], "scale");
        ts[3 + i] = tens(FM_F8_E4M3, 2, 128, 128, w + (size_t)i * H * I, "expert");
        ts[3 + i].scale = &st[i];
    }
    for (int i = 0; i < 3 + 3 * E; i++) src[i] = &ts[i];
    fm_pl_tensor ys = tens(FM_F32, 2, T, H, y, "y");
    const fm_pl_tensor *dst[] = {&ys};
    fm_moe_experts_params p = {.n_experts = E, .act_quant = 1};
    ck_assert_int_eq(run_node(FM_OP_MOE_EXPERTS, &p, 3 + 3 * E, src, 1, dst), FM_OK);

    fm_matmul_params mp = {.act_quant = 1};
    fm_noparams np = {0};
    for (int e = 0; e < E; e++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++) {
                if (ids[t * K + j] != e) continue;
                float g[I], u[I], h[I], o[H];
                fm_pl_tensor xs = tens(FM_F32, 2, 1, H, x + t * H, "x"), gs = tens(FM_F32, 2, 1, I, g, "g"),
                             us = tens(FM_F32, 2, 1, I, u, "u"), hs = tens(FM_F32, 2, 1, I, h, "h"),
                             os = tens(FM_F32, 2, 1, H, o, "o");
                const fm_pl_tensor *s1[] = {&xs, &ts[3 + 3 * e]}, *d1[] = {&gs};
                ck_assert_int_eq(run_node(FM_OP_MATMUL, &mp, 2, s1, 1, d1), FM_OK);
                const fm_pl_tensor *s2[] = {&xs, &ts[4 + 3 * e]}, *d2[] = {&us};
                ck_assert_int_eq(run_node(FM_OP_MATMUL, &mp, 2, s2, 1, d2), FM_OK);
                const fm_pl_tensor *s3[] = {&gs, &us}, *d3[] = {&hs};
                ck_assert_int_eq(run_node(FM_OP_SWIGLU, &np, 2, s3, 1, d3), FM_OK);
                const fm_pl_tensor *s4[] = {&hs, &ts[5 + 3 * e]}, *d4[] = {&os};
                ck_assert_int_eq(run_node(FM_OP_MATMUL, &mp, 2, s4, 1, d4), FM_OK);
                for (int k = 0; k < H; k++) want[t * H + k] += o[k] * wts[t * K + j];
            }
    ck_assert_float_le(max_abs_diff(y, want, T * H), 1e-6f);
    free(w);
}
END_TEST

/* ---- mla -------------------------------------------------------------------- */

START_TEST(test_mla_cache_writes_normed_and_roped_row) {
    enum { L = 8, C = 16, R = 8, D = C + R, T = 2 };
    rng_seed(10);
    float cache[L * D], before[L * D], kv[T * D], w[C], inv[R / 2];
    int32_t pos[T] = {3, 5};
    fill(cache, L * D, 1.0f);
    memcpy(before, cache, sizeof cache);
    fill(kv, T * D, 2.0f);
    for (int i = 0; i < C; i++) w[i] = 1.0f + frand(0.3f);
    fm_mla_cache_params p = {.kv_lora = C, .eps = 1e-6f,
                             .rope = {.head_dim = R, .rope_off = 0, .rope_dim = R, .theta = 10000.0f, .yarn_factor = 1.0f}};
    fm_pl_tensor cs = tens(FM_F32, 2, L, D, cache, "cache"), ks = tens(FM_F32, 2, T, D, kv, "kv"),
                 ws = tens(FM_F32, 1, C, 0, w, "norm"), ps = tens(FM_I32, 1, T, 0, pos, "pos");
    cs.flags = FM_PL_STATE;
    const fm_pl_tensor *src[] = {&cs, &ks, &ws, &ps}, *dst[] = {&cs};
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_OK);
    fm_rope_inv_freq(&p.rope, inv);
    for (int l = 0; l < L; l++) {
        int t = l == 3 ? 0 : l == 5 ? 1 : -1;
        if (t < 0) {
            ck_assert(memcmp(cache + l * D, before + l * D, D * sizeof(float)) == 0);
            continue;
        }
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)kv[t * D + i] * kv[t * D + i];
        for (int i = 0; i < C; i++) {
            double want = kv[t * D + i] / sqrt(ss / C + 1e-6) * w[i];
            ck_assert(fabs(cache[l * D + i] - want) < 1e-5);
        }
        for (int i = 0; i < R / 2; i++) {
            double ang = (double)((float)pos[t] * inv[i]), a = kv[t * D + C + 2 * i], b = kv[t * D + C + 2 * i + 1];
            ck_assert(fabs(cache[l * D + C + 2 * i] - (a * cos(ang) - b * sin(ang))) < 1e-5);
            ck_assert(fabs(cache[l * D + C + 2 * i + 1] - (a * sin(ang) + b * cos(ang))) < 1e-5);
        }
    }
}
END_TEST

START_TEST(test_mla_cache_position_past_cache_is_einval) {
    enum { L = 64, C = 8, R = 4, D = C + R };
    float *cache = xcalloc(L * D, sizeof *cache), kv[2 * D] = {1}, w[C];
    for (int i = 0; i < C; i++) w[i] = 1;
    int32_t pos[2] = {3, 70};
    fm_mla_cache_params p = {.kv_lora = C, .eps = 1e-6f,
                             .rope = {.head_dim = R, .rope_off = 0, .rope_dim = R, .theta = 10000.0f, .yarn_factor = 1.0f}};
    fm_pl_tensor cs = tens(FM_F32, 2, L, D, cache, "cache"), ks = tens(FM_F32, 2, 2, D, kv, "kv"),
                 ws = tens(FM_F32, 1, C, 0, w, "norm"), ps = tens(FM_I32, 1, 2, 0, pos, "pos");
    const fm_pl_tensor *src[] = {&cs, &ks, &ws, &ps}, *dst[] = {&cs};
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "mla_cache 'node': position 70 past the cache size 64"), "%s", err_buf);
    for (int i = 0; i < L * D; i++) ck_assert(cache[i] == 0.0f); /* nothing written */
    pos[1] = -1;
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_EINVAL);
    free(cache);
}
END_TEST

/* A bf16 cache: the row is computed in f32 as for an f32 cache, then rounded to
 * nearest even; other rows keep their bits. At position 0 rope rotates by angle 0
 * (cos 1, sin 0), so k_pe is stored as given: hand-checked ties and near-ties. */
START_TEST(test_mla_cache_bf16_rounds_row_to_nearest_even) {
    enum { L = 8, C = 16, R = 8, D = C + R, T = 2 };
    rng_seed(17);
    float f32c[L * D], kv[T * D], w[C];
    uint16_t bfc[L * D], before[L * D];
    int32_t pos[T] = {0, 5};
    for (int i = 0; i < L * D; i++) bfc[i] = fm_f32_to_bf16(frand(1.0f));
    memcpy(before, bfc, sizeof bfc);
    fill(kv, T * D, 2.0f);
    for (int i = 0; i < C; i++) w[i] = 1.0f + frand(0.3f);
    const float pe[R] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, nextafterf(1.0f + 0x1p-8f, 2.0f), -(1.0f + 0x1p-8f),
                         nextafterf(1.0f + 3 * 0x1p-8f, 0.0f), 0.0f, -0.0f, 3.0f};
    const uint16_t pe_bits[R] = {0x3f80, 0x3f82, 0x3f81, 0xbf80, 0x3f81, 0x0000, 0x8000, 0x4040};
    memcpy(kv + C, pe, sizeof pe); /* row t = 0, position 0 */
    fm_mla_cache_params p = {.kv_lora = C, .eps = 1e-6f,
                             .rope = {.head_dim = R, .rope_off = 0, .rope_dim = R, .theta = 10000.0f, .yarn_factor = 1.0f}};
    fm_pl_tensor bs = tens(FM_BF16, 2, L, D, bfc, "cache"), fs = tens(FM_F32, 2, L, D, f32c, "cache"),
                 ks = tens(FM_F32, 2, T, D, kv, "kv"), ws = tens(FM_F32, 1, C, 0, w, "norm"),
                 ps = tens(FM_I32, 1, T, 0, pos, "pos");
    bs.flags = fs.flags = FM_PL_STATE;
    const fm_pl_tensor *src[] = {&bs, &ks, &ws, &ps}, *dst[] = {&bs};
    ck_assert(fm_ref_supports(&(fm_pl_node){.op = FM_OP_MLA_CACHE, .n_src = 4, .n_dst = 1, .src = src, .dst = dst,
                                           .params = &p, .name = "node"}));
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_OK);
    const fm_pl_tensor *fsrc[] = {&fs, &ks, &ws, &ps}, *fdst[] = {&fs};
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, fsrc, 1, fdst), FM_OK);
    for (int i = 0; i < R; i++)
        ck_assert_msg(bfc[C + i] == pe_bits[i], "k_pe[%d] %a stored 0x%04x, want 0x%04x", i, (double)pe[i],
                      bfc[C + i], pe_bits[i]);
    for (int l = 0; l < L; l++)
        for (int i = 0; i < D; i++) {
            int written = l == pos[0] || l == pos[1];
            uint16_t want = written ? fm_f32_to_bf16(f32c[l * D + i]) : before[l * D + i];
            ck_assert_msg(bfc[l * D + i] == want, "row %d [%d]: 0x%04x, want 0x%04x", l, i, bfc[l * D + i], want);
        }
}
END_TEST

typedef struct mla_case {
    int T, L, H, nope, rope, v, C;
    float *q, *cache, *kvb, *out;
    int32_t *pos;
} mla_case;

static void mla_init(mla_case *m, int T, int L, int C, uint64_t seed) {
    m->T = T;
    m->L = L;
    m->H = 2;
    m->nope = 16;
    m->rope = 8;
    m->v = 12;
    m->C = C;
    rng_seed(seed);
    m->q = xcalloc((size_t)T * m->H * (m->nope + m->rope), sizeof(float));
    m->cache = xcalloc((size_t)L * (m->C + m->rope), sizeof(float));
    m->kvb = xcalloc((size_t)m->H * (m->nope + m->v) * m->C, sizeof(float));
    m->out = xcalloc((size_t)T * m->H * m->v, sizeof(float));
    m->pos = xcalloc((size_t)T, sizeof(int32_t));
    fill(m->q, (int64_t)T * m->H * (m->nope + m->rope), 1.0f);
    fill(m->cache, (int64_t)L * (m->C + m->rope), 1.0f);
    fill(m->kvb, (int64_t)m->H * (m->nope + m->v) * m->C, 0.3f);
}

static void mla_free(mla_case *m) {
    free(m->q);
    free(m->cache);
    free(m->kvb);
    free(m->out);
    free(m->pos);
}

/* cache: NULL for m->cache as F32. */
static fm_status mla_run_cache(mla_case *m, const fm_pl_tensor *cache, const fm_pl_tensor *kvb, int mode,
                               int act_quant) {
    fm_mla_attn_params p = {.n_heads = m->H, .nope = m->nope, .rope = m->rope, .v = m->v, .kv_lora = m->C,
                            .scale = 1.0f / sqrtf((float)(m->nope + m->rope)), .mode = mode, .act_quant = act_quant};
    fm_pl_tensor qs = tens(FM_F32, 2, m->T, m->H * (m->nope + m->rope), m->q, "q"),
                 cs = tens(FM_F32, 2, m->L, m->C + m->rope, m->cache, "cache"),
                 ps = tens(FM_I32, 1, m->T, 0, m->pos, "pos"), os = tens(FM_F32, 2, m->T, m->H * m->v, m->out, "out");
    fm_pl_tensor ks = tens(FM_F32, 2, m->H * (m->nope + m->v), m->C, m->kvb, "kv_b");
    const fm_pl_tensor *src[] = {&qs, cache ? cache : &cs, &ps, kvb ? kvb : &ks}, *dst[] = {&os};
    return run_node(FM_OP_MLA_ATTN, &p, 4, src, 1, dst);
}

static fm_status mla_run(mla_case *m, const fm_pl_tensor *kvb, int mode, int act_quant) {
    return mla_run_cache(m, NULL, kvb, mode, act_quant);
}

/* Attention in double from k_nope / v given per cache row and head: kv [L][H][nope+v]. */
static void mla_double(const mla_case *m, const double *kv, double *out) {
    int D = m->C + m->rope, hs = m->nope + m->v, qs = m->H * (m->nope + m->rope);
    double scale = (double)(1.0f / sqrtf((float)(m->nope + m->rope))); /* the kernel's f32 scale */
    double *sc = malloc(sizeof(double) * (size_t)m->L);
    ck_assert_ptr_nonnull(sc);
    for (int t = 0; t < m->T; t++)
        for (int h = 0; h < m->H; h++) {
            const float *qn = m->q + t * qs + h * (m->nope + m->rope), *qp = qn + m->nope;
            int n = m->pos[t] + 1;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                const double *k = kv + ((size_t)j * m->H + h) * hs;
                double s = 0;
                for (int d = 0; d < m->nope; d++) s += qn[d] * k[d];
                for (int r = 0; r < m->rope; r++) s += qp[r] * (double)m->cache[(size_t)j * D + m->C + r];
                sc[j] = s * scale;
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j < n; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < m->v; d++) {
                double o = 0;
                for (int j = 0; j < n; j++) o += sc[j] / sum * kv[((size_t)j * m->H + h) * hs + m->nope + d];
                out[(t * m->H + h) * m->v + d] = o;
            }
        }
    free(sc);
}

/* k_nope / v of every cache row with the f32 kv_b, in double. */
static double *mla_kv_double(const mla_case *m) {
    int D = m->C + m->rope, hs = m->nope + m->v;
    double *kv = xcalloc((size_t)m->L * m->H * hs, sizeof(double));
    for (int j = 0; j < m->L; j++)
        for (int r = 0; r < m->H * hs; r++) {
            double s = 0;
            for (int c = 0; c < m->C; c++) s += (double)m->kvb[(size_t)r * m->C + c] * m->cache[(size_t)j * D + c];
            kv[(size_t)j * m->H * hs + r] = s;
        }
    return kv;
}

static void check_naive_equals_absorb(int T, int L, const int32_t *pos, uint64_t seed) {
    mla_case m;
    mla_init(&m, T, L, 32, seed);
    memcpy(m.pos, pos, sizeof(int32_t) * (size_t)T);
    int n = T * m.H * m.v;
    float *absorb = xcalloc((size_t)n, sizeof(float));
    ck_assert_int_eq(mla_run(&m, NULL, FM_MLA_ABSORB, 0), FM_OK);
    memcpy(absorb, m.out, sizeof(float) * (size_t)n);
    ck_assert_int_eq(mla_run(&m, NULL, FM_MLA_NAIVE, 0), FM_OK);
    float d = max_abs_diff(absorb, m.out, n);
    ck_assert_msg(d <= 1e-5f, "naive vs absorb %g", (double)d);
    double *kv = mla_kv_double(&m), *want = xcalloc((size_t)n, sizeof(double));
    mla_double(&m, kv, want);
    for (int i = 0; i < n; i++) ck_assert_msg(fabs(absorb[i] - want[i]) <= 1e-5, "out[%d]", i);
    free(kv);
    free(want);
    free(absorb);
    mla_free(&m);
}

START_TEST(test_mla_naive_equals_absorb_single_token) {
    int32_t pos[1] = {0};
    check_naive_equals_absorb(1, 4, pos, 11);
    pos[0] = 9;
    check_naive_equals_absorb(1, 16, pos, 12);
}
END_TEST

START_TEST(test_mla_naive_equals_absorb_prefill) {
    int32_t pos[6] = {0, 1, 2, 3, 4, 5};
    check_naive_equals_absorb(6, 6, pos, 13);
}
END_TEST

START_TEST(test_mla_naive_equals_absorb_long_context) {
    int32_t pos[3] = {2047, 1000, 0};
    check_naive_equals_absorb(3, 2048, pos, 14);
}
END_TEST

/* FP8 kv_b: absorbed decodes the weight and never quantizes; naive with act_quant
 * runs kv_b as an FP8 linear on act-quantized latent rows. */
START_TEST(test_mla_fp8_naive_quantizes_latent_rows) {
    mla_case m;
    mla_init(&m, 2, 10, 128, 15);
    m.pos[0] = 9;
    m.pos[1] = 4;
    int rows = m.H * (m.nope + m.v), D = m.C + m.rope, n = m.T * m.H * m.v;
    uint8_t *codes = xcalloc((size_t)rows * m.C, 1);
    for (int i = 0; i < rows * m.C; i++) codes[i] = random_code();
    float sc = 0.001f;
    fm_pl_tensor ss = tens(FM_F32, 2, 1, 1, &sc, "kv_b.scale"), ks = tens(FM_F8_E4M3, 2, rows, m.C, codes, "kv_b");
    ks.scale = &ss;

    /* Absorbed: the same as f32 weights equal to the decoded FP8 ones. */
    float *absorb = xcalloc((size_t)n, sizeof(float));
    ck_assert_int_eq(mla_run(&m, &ks, FM_MLA_ABSORB, 1), FM_OK);
    memcpy(absorb, m.out, sizeof(float) * (size_t)n);
    for (int r = 0; r < rows; r++) fm_weight_row_f32(&ks, r, m.kvb + (size_t)r * m.C);
    ck_assert_int_eq(mla_run(&m, NULL, FM_MLA_ABSORB, 0), FM_OK);
    ck_assert(memcmp(absorb, m.out, sizeof(float) * (size_t)n) == 0);

    /* Naive with act_quant: k_nope / v = MATMUL(act_quant) of the latent rows. */
    float *lat = xcalloc((size_t)m.L * m.C, sizeof(float)), *kvf = xcalloc((size_t)m.L * rows, sizeof(float));
    for (int j = 0; j < m.L; j++) memcpy(lat + j * m.C, m.cache + j * D, sizeof(float) * (size_t)m.C);
    fm_matmul_params mp = {.act_quant = 1};
    fm_pl_tensor ls = tens(FM_F32, 2, m.L, m.C, lat, "lat"), kvs = tens(FM_F32, 2, m.L, rows, kvf, "kv");
    const fm_pl_tensor *src[] = {&ls, &ks}, *dst[] = {&kvs};
    ck_assert_int_eq(run_node(FM_OP_MATMUL, &mp, 2, src, 1, dst), FM_OK);
    double *kv = xcalloc((size_t)m.L * rows, sizeof(double)), *want = xcalloc((size_t)n, sizeof(double));
    for (int i = 0; i < m.L * rows; i++) kv[i] = kvf[i];
    mla_double(&m, kv, want);
    ck_assert_int_eq(mla_run(&m, &ks, FM_MLA_NAIVE, 1), FM_OK);
    float dq = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(fabs(m.out[i] - want[i]) <= 1e-5, "out[%d] %g want %g", i, (double)m.out[i], want[i]);
        dq = fmaxf(dq, fabsf(m.out[i] - absorb[i]));
    }
    ck_assert_msg(dq > 1e-4f, "quantizing the latent had no effect");
    /* act_quant = 0: naive on decoded weights, equal to absorbed up to rounding. */
    ck_assert_int_eq(mla_run(&m, &ks, FM_MLA_NAIVE, 0), FM_OK);
    ck_assert_float_le(max_abs_diff(m.out, absorb, n), 1e-5f);
    free(codes);
    free(absorb);
    free(lat);
    free(kvf);
    free(kv);
    free(want);
    mla_free(&m);
}
END_TEST

/* A bf16 cache is read widened to f32 exactly: attention over it equals attention
 * over an f32 cache holding the same bf16-rounded values, bit for bit, in both
 * forms, for decode and for a prefill chunk at nonzero positions. */
static void check_bf16_cache_equals_rounded_f32(int T, int L, const int32_t *pos, uint64_t seed) {
    mla_case m;
    mla_init(&m, T, L, 32, seed);
    memcpy(m.pos, pos, sizeof(int32_t) * (size_t)T);
    int D = m.C + m.rope, n = T * m.H * m.v;
    uint16_t *bf = xcalloc((size_t)L * D, sizeof *bf);
    for (int i = 0; i < L * D; i++) {
        bf[i] = fm_f32_to_bf16(m.cache[i]);
        m.cache[i] = fm_bf16_to_f32(bf[i]);
    }
    fm_pl_tensor bs = tens(FM_BF16, 2, L, D, bf, "cache");
    float *want = xcalloc((size_t)n, sizeof(float));
    for (int mode = FM_MLA_ABSORB; mode <= FM_MLA_NAIVE; mode++) {
        ck_assert_int_eq(mla_run(&m, NULL, mode, 0), FM_OK);
        memcpy(want, m.out, sizeof(float) * (size_t)n);
        memset(m.out, 0, sizeof(float) * (size_t)n);
        ck_assert_int_eq(mla_run_cache(&m, &bs, NULL, mode, 0), FM_OK);
        ck_assert_msg(memcmp(want, m.out, sizeof(float) * (size_t)n) == 0, "mode %d, T %d: bf16 cache differs", mode, T);
    }
    free(bf);
    free(want);
    mla_free(&m);
}

START_TEST(test_mla_attn_bf16_cache_equals_f32_cache_of_rounded_values) {
    int32_t dec[1] = {37};
    check_bf16_cache_equals_rounded_f32(1, 64, dec, 21);
    int32_t pre[5] = {9, 10, 11, 12, 13};
    check_bf16_cache_equals_rounded_f32(5, 16, pre, 22);
}
END_TEST

START_TEST(test_mla_attn_position_past_cache_is_einval) {
    mla_case m;
    mla_init(&m, 2, 16, 32, 16);
    m.pos[0] = 3;
    m.pos[1] = 16;
    ck_assert_int_eq(mla_run(&m, NULL, FM_MLA_ABSORB, 0), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "mla_attn 'node': position 16 past the cache size 16"), "%s", err_buf);
    ck_assert_int_eq(mla_run(&m, NULL, FM_MLA_NAIVE, 0), FM_EINVAL);
    mla_free(&m);
}
END_TEST

/* The cache may be f32 or bf16; an f16 one is refused, naming the tensor. */
START_TEST(test_cache_dtype_other_than_f32_bf16_is_refused) {
    enum { L = 4, C = 8, R = 4, D = C + R };
    uint16_t cache[L * D] = {0};
    float kv[D] = {1}, w[C] = {1};
    int32_t pos[1] = {0};
    fm_mla_cache_params p = {.kv_lora = C, .eps = 1e-6f,
                             .rope = {.head_dim = R, .rope_off = 0, .rope_dim = R, .theta = 10000.0f, .yarn_factor = 1.0f}};
    fm_pl_tensor cs = tens(FM_F16, 2, L, D, cache, "kv_state"), ks = tens(FM_F32, 2, 1, D, kv, "kv"),
                 ws = tens(FM_F32, 1, C, 0, w, "norm"), ps = tens(FM_I32, 1, 1, 0, pos, "pos");
    const fm_pl_tensor *src[] = {&cs, &ks, &ws, &ps}, *dst[] = {&cs};
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "'kv_state'") && strstr(err_buf, "f16") && strstr(err_buf, "f32 or bf16"), "%s",
                  err_buf);
    cs.dtype = FM_BF16;
    ck_assert_int_eq(run_node(FM_OP_MLA_CACHE, &p, 4, src, 1, dst), FM_OK);

    mla_case m;
    mla_init(&m, 1, 4, 32, 23);
    fm_pl_tensor bad = tens(FM_F16, 2, m.L, m.C + m.rope, m.cache, "kv_state");
    ck_assert_int_eq(mla_run_cache(&m, &bad, NULL, FM_MLA_ABSORB, 0), FM_EINVAL);
    ck_assert_msg(strstr(err_buf, "mla_attn 'node'") && strstr(err_buf, "'kv_state'") && strstr(err_buf, "f32 or bf16"),
                  "%s", err_buf);
    mla_free(&m);
}
END_TEST

/* ---- supports ----------------------------------------------------------------- */

START_TEST(test_supports_rejects_malformed_nodes) {
    float x[4 * 128] = {0}, y[4 * 2] = {0};
    uint8_t w[2 * 128] = {0};
    float sc[1] = {1};
    fm_matmul_params p = {.act_quant = 1};
    fm_pl_tensor xs = tens(FM_F32, 2, 4, 128, x, "x"), ws = tens(FM_F8_E4M3, 2, 2, 128, w, "w"),
                 ys = tens(FM_F32, 2, 4, 2, y, "y"), ss = tens(FM_F32, 2, 1, 1, sc, "s");
    const fm_pl_tensor *src[] = {&xs, &ws}, *dst[] = {&ys};
    fm_pl_node n = {.op = FM_OP_MATMUL, .n_src = 2, .n_dst = 1, .src = src, .dst = dst, .params = &p, .name = "mm"};
    ck_assert(!fm_ref_supports(&n)); /* F8 without scales */
    ck_assert_int_eq(fm_ref_compute(&n, err_buf, sizeof err_buf), FM_EINVAL);
    ck_assert(strstr(err_buf, "matmul 'mm'") != NULL);
    ws.scale = &ss;
    ck_assert(fm_ref_supports(&n));
    ck_assert_int_eq(fm_ref_compute(&n, err_buf, sizeof err_buf), FM_OK);
    xs.dtype = FM_BF16;
    ck_assert(!fm_ref_supports(&n));
    xs.dtype = FM_F32;
    ys.ne[1] = 3; /* wrong output shape */
    ck_assert(!fm_ref_supports(&n));
    ys.ne[1] = 2;
    n.op = FM_OP_COUNT;
    ck_assert(!fm_ref_supports(&n));
    ck_assert_int_eq(fm_ref_compute(&n, NULL, 0), FM_EINVAL);
}
END_TEST

/* ---- suite -------------------------------------------------------------------- */

static Suite *ref_suite(void) {
    Suite *s = suite_create("ref");
    TCase *tc = tcase_create("formats");
    tcase_add_test(tc, test_names_parse_both_spellings);
    tcase_add_test(tc, test_e4m3_decode_matches_format_definition);
    tcase_add_test(tc, test_e4m3_roundtrip_all_codes);
    tcase_add_test(tc, test_e4m3_ties_go_to_even_code);
    tcase_add_test(tc, test_e4m3_saturates_and_never_makes_nan);
    tcase_add_test(tc, test_e4m3_encode_matches_brute_force_nearest);
    tcase_add_test(tc, test_bf16_round_to_nearest_even);
    tcase_add_test(tc, test_f16_round_to_nearest_even_with_subnormals);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("dense");
    tcase_add_test(tc, test_act_quant_crafted_row);
    tcase_add_test(tc, test_fp8_matmul_equals_exact_formula);
    tcase_add_test(tc, test_weight_row_uses_128x128_block_scales);
    tcase_add_test(tc, test_matmul_bf16_f16_weights_equal_decoded_f32);
    tcase_add_test(tc, test_rmsnorm_matches_formula);
    tcase_add_test(tc, test_add_and_swiglu_elementwise);
    tcase_add_test(tc, test_embed_gathers_rows_and_rejects_bad_id);
    tcase_add_test(tc, test_rope_inverse_restores_input);
    tcase_add_test(tc, test_rope_rotates_adjacent_pairs_by_pos_times_inv_freq);
    tcase_add_test(tc, test_rope_inv_freq_plain_matches_double_formula);
    tcase_add_test(tc, test_yarn_inv_freq_matches_double_formula);
    tcase_add_test(tc, test_supports_rejects_malformed_nodes);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("moe");
    tcase_add_test(tc, test_route_groups_drop_a_higher_scoring_expert);
    tcase_add_test(tc, test_route_bias_changes_selection_not_weights);
    tcase_add_test(tc, test_route_softmax_without_renorm);
    tcase_add_test(tc, test_route_top1);
    tcase_add_test(tc, test_moe_experts_weighted_sum_matches_manual);
    tcase_add_test(tc, test_moe_experts_fp8_quantizes_each_linear_input);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("mla");
    tcase_add_test(tc, test_mla_cache_writes_normed_and_roped_row);
    tcase_add_test(tc, test_mla_cache_position_past_cache_is_einval);
    tcase_add_test(tc, test_mla_naive_equals_absorb_single_token);
    tcase_add_test(tc, test_mla_naive_equals_absorb_prefill);
    tcase_add_test(tc, test_mla_naive_equals_absorb_long_context);
    tcase_add_test(tc, test_mla_fp8_naive_quantizes_latent_rows);
    tcase_add_test(tc, test_mla_attn_position_past_cache_is_einval);
    tcase_add_test(tc, test_mla_cache_bf16_rounds_row_to_nearest_even);
    tcase_add_test(tc, test_mla_attn_bf16_cache_equals_f32_cache_of_rounded_values);
    tcase_add_test(tc, test_cache_dtype_other_than_f32_bf16_is_refused);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ref_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
