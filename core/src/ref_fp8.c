/* ref_fp8.c - weight decoding, DeepSeek's act_quant, and the reference linear
 * layer (plain f32 dot, or act_quant + fp8_gemm for F8_E4M3 weights). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"

/* The fp8 arithmetic below is specified operation by operation; a fused
 * multiply-add would change the rounding. GCC keeps ISO C mode uncontracted. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif


#define FM_QBLOCK 128

/* Writes ceil(K/128) scales; a partial last block is quantized on its own. */
void fm_act_quant_row(const float *x, int64_t K, uint8_t *codes, float *scales) {
    for (int64_t b = 0; b * FM_QBLOCK < K; b++) {
        int64_t k0 = b * FM_QBLOCK, k1 = k0 + FM_QBLOCK < K ? k0 + FM_QBLOCK : K;
        float amax = 0.0f;
        for (int64_t k = k0; k < k1; k++) {
            float a = fabsf(x[k]);
            if (a > amax) amax = a;
        }
        float s = fmaxf(amax, 1e-4f) / 448.0f;
        scales[b] = s;
        for (int64_t k = k0; k < k1; k++) codes[k] = fm_f32_to_e4m3(x[k] / s);
    }
}

void fm_weight_row_f32(const fm_pl_tensor *w, int64_t r, float *out) {
    int64_t K = fm_pl_cols(w);
    switch (w->dtype) {
    case FM_F32:
        memcpy(out, (const float *)w->data + r * K, (size_t)K * sizeof(float));
        break;
    case FM_BF16: {
        const uint16_t *p = (const uint16_t *)w->data + r * K;
        for (int64_t k = 0; k < K; k++) out[k] = fm_bf16_to_f32(p[k]);
        break;
    }
    case FM_F16: {
        const uint16_t *p = (const uint16_t *)w->data + r * K;
        for (int64_t k = 0; k < K; k++) out[k] = fm_f16_to_f32(p[k]);
        break;
    }
    case FM_F8_E4M3: {
        const uint8_t *p = (const uint8_t *)w->data + r * K;
        const float *s = (const float *)w->scale->data + (r / FM_QBLOCK) * fm_pl_cols(w->scale);
        for (int64_t k = 0; k < K; k++) out[k] = fm_e4m3_to_f32(p[k]) * s[k / FM_QBLOCK];
        break;
    }
    default:
        for (int64_t k = 0; k < K; k++) out[k] = NAN;
        break;
    }
}

static fm_status linear_f32(const float *x, int64_t T, int64_t K, const fm_pl_tensor *w, int64_t n0,
                            int64_t n1, float *y, const char *what, char *err, size_t errsz) {
    float *wr = malloc((size_t)K * sizeof *wr);
    if (!wr) return fm_ref_fail(err, errsz, FM_ENOMEM, "%s: out of memory (%lld floats)", what, (long long)K);
    int64_t N = n1 - n0;
    for (int64_t n = n0; n < n1; n++) {
        fm_weight_row_f32(w, n, wr);
        for (int64_t t = 0; t < T; t++) {
            const float *xr = x + t * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) acc += xr[k] * wr[k];
            y[t * N + (n - n0)] = acc;
        }
    }
    free(wr);
    return FM_OK;
}

/* fp8_gemm: per 128-block the exact sum of e4m3 products (at most 43 significant
 * bits, so a double holds it exactly), rounded once to f32, then scaled in f32. */
static fm_status linear_fp8(const float *x, int64_t T, int64_t K, const fm_pl_tensor *w, int64_t n0,
                            int64_t n1, float *y, const char *what, char *err, size_t errsz) {
    int64_t nb = (K + FM_QBLOCK - 1) / FM_QBLOCK, N = n1 - n0;
    float *xv = malloc((size_t)(T * K) * sizeof *xv);
    float *xs = malloc((size_t)(T * nb) * sizeof *xs);
    float *wv = malloc((size_t)K * sizeof *wv);
    uint8_t *codes = malloc((size_t)K);
    fm_status st = FM_OK;
    if (!xv || !xs || !wv || !codes) {
        st = fm_ref_fail(err, errsz, FM_ENOMEM, "%s: out of memory (fp8 scratch of %lld x %lld)", what,
                         (long long)T, (long long)K);
        goto out;
    }
    for (int64_t t = 0; t < T; t++) {
        fm_act_quant_row(x + t * K, K, codes, xs + t * nb);
        for (int64_t k = 0; k < K; k++) xv[t * K + k] = fm_e4m3_to_f32(codes[k]);
    }
    const float *scale = w->scale->data;
    int64_t scols = fm_pl_cols(w->scale);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wc = (const uint8_t *)w->data + n * K;
        for (int64_t k = 0; k < K; k++) wv[k] = fm_e4m3_to_f32(wc[k]);
        const float *srow = scale + (n / FM_QBLOCK) * scols;
        for (int64_t t = 0; t < T; t++) {
            const float *xr = xv + t * K;
            float acc = 0.0f;
            for (int64_t i = 0; i < nb; i++) {
                int64_t k0 = i * FM_QBLOCK, k1 = k0 + FM_QBLOCK < K ? k0 + FM_QBLOCK : K;
                double d = 0.0;
                for (int64_t k = k0; k < k1; k++) d += (double)xr[k] * (double)wv[k];
                float part = (float)d * xs[t * nb + i];
                part = part * srow[i];
                acc += part;
            }
            y[t * N + (n - n0)] = acc;
        }
    }
out:
    free(xv);
    free(xs);
    free(wv);
    free(codes);
    return st;
}

/* y[T, n1-n0] = x[T, K] * rows n0..n1-1 of w^T. act_quant applies to F8_E4M3 weights only. */
fm_status fm_ref_linear(const float *x, int64_t T, int64_t K, const fm_pl_tensor *w, int64_t n0,
                        int64_t n1, int act_quant, float *y, const char *what, char *err, size_t errsz) {
    if (T <= 0 || n1 <= n0) return FM_OK;
    if (act_quant && w->dtype == FM_F8_E4M3) return linear_fp8(x, T, K, w, n0, n1, y, what, err, errsz);
    return linear_f32(x, T, K, w, n0, n1, y, what, err, errsz);
}
