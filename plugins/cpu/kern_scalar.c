/* kern_scalar.c - portable kernels: number formats, the scalar GEMM micro-kernel,
 * packing, few-row products, fp8 exact block sums and row helpers. Compiled for
 * baseline x86-64; every ISA table falls back to these slots.
 *
 * The fp8 arithmetic is specified step by step (README "FP8 case"); GCC keeps ISO
 * C mode free of fused multiply-adds, so each line below rounds as written. */
#include <math.h>
#include <string.h>

#include "cpu.h"

static inline uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- number formats ---- */

float cpu_bf16_value(uint16_t h) { return bitsf((uint32_t)h << 16); }

uint16_t cpu_bf16_from_f32(float f) {
    uint32_t u = fbits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cpu_f16_value(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0x1f) return bitsf(s | 0x7f800000u | (m << 13));
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return s ? -v : v;
    }
    return bitsf(s | ((e + 112) << 23) | (m << 13));
}

float cpu_e4m3_value(uint8_t c) {
    uint32_t s = (uint32_t)(c & 0x80u) << 24, e = (c >> 3) & 0xf, m = c & 7u;
    if ((c & 0x7f) == 0x7f) return bitsf(0x7fc00000u | s);
    if (e == 0) {
        float v = (float)m * 0x1p-9f;
        return s ? -v : v;
    }
    return bitsf(s | ((e + 120) << 23) | (m << 20));
}

uint8_t cpu_e4m3_from_f32(float f) {
    uint32_t u = fbits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7f;            /* NaN stays NaN */
    if (a >= 0x43e00000u) return sign | 0x7e;           /* >= 448 (and inf): saturate */
    if (a < 0x3c800000u) {                              /* < 2^-6: multiples of 2^-9 */
        float t = bitsf(a) + 16384.0f;                  /* ulp(2^14) = 2^-9: rounds to nearest even */
        return sign | (uint8_t)(fbits(t) - 0x46800000u);
    }
    uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20; /* keep 3 mantissa bits, nearest even */
    uint32_t code = r - (120u << 3);
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

void cpu_act_quant_row(const float *x, int64_t K, uint8_t *codes, float *scales) {
    for (int64_t b = 0; b * CPU_QB < K; b++) {
        int64_t k0 = b * CPU_QB, k1 = k0 + CPU_QB < K ? k0 + CPU_QB : K;
        float amax = 0.0f;
        for (int64_t k = k0; k < k1; k++) {
            float a = fabsf(x[k]);
            amax = a > amax ? a : amax;
        }
        float s = fmaxf(amax, 1e-4f) / 448.0f;
        scales[b] = s;
        for (int64_t k = k0; k < k1; k++) codes[k] = cpu_e4m3_from_f32(x[k] / s);
    }
}

float cpu_w_at(const cpu_wmat *w, int64_t n, int64_t k) {
    int64_t i = n * w->K + k;
    switch (w->dtype) {
    case FM_F32:  return ((const float *)w->data)[i];
    case FM_BF16: return cpu_bf16_value(((const uint16_t *)w->data)[i]);
    case FM_F16:  return cpu_f16_value(((const uint16_t *)w->data)[i]);
    case FM_F8_E4M3:
        return cpu_e4m3_value(((const uint8_t *)w->data)[i]) * w->scale[(n / CPU_QB) * w->scale_ld + k / CPU_QB];
    default: return NAN;
    }
}

/* Row n, columns k0..k0+kc, decoded to f32. */
void cpu_w_row(const cpu_wmat *w, int64_t n, int64_t k0, int kc, float *out) {
    int64_t i = n * w->K + k0;
    switch (w->dtype) {
    case FM_F32: memcpy(out, (const float *)w->data + i, (size_t)kc * 4); break;
    case FM_BF16: {
        const uint16_t *p = (const uint16_t *)w->data + i;
        for (int k = 0; k < kc; k++) out[k] = bitsf((uint32_t)p[k] << 16);
        break;
    }
    case FM_F16: {
        const uint16_t *p = (const uint16_t *)w->data + i;
        for (int k = 0; k < kc; k++) out[k] = cpu_f16_value(p[k]);
        break;
    }
    case FM_F8_E4M3: {
        const uint8_t *p = (const uint8_t *)w->data + i;
        const float *sr = w->scale + (n / CPU_QB) * w->scale_ld;
        for (int k = 0; k < kc; k++) out[k] = cpu_e4m3_value(p[k]) * sr[(k0 + k) / CPU_QB];
        break;
    }
    default:
        for (int k = 0; k < kc; k++) out[k] = NAN;
        break;
    }
}

/* ---- f32 GEMM ---- */

void cpu_pack_a_scalar(const float *x, int64_t ldx, int rows, int kc, int mr, float *dst) {
    for (int r0 = 0; r0 < rows; r0 += mr) {
        int h = rows - r0 < mr ? rows - r0 : mr;
        for (int i = 0; i < h; i++) {
            const float *src = x + (int64_t)(r0 + i) * ldx;
            for (int k = 0; k < kc; k++) dst[(int64_t)k * mr + i] = src[k];
        }
        for (int i = h; i < mr; i++)
            for (int k = 0; k < kc; k++) dst[(int64_t)k * mr + i] = 0.0f;
        dst += (int64_t)kc * mr;
    }
}

void cpu_pack_b_scalar(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst) {
    float row[256];
    for (int j0 = 0; j0 < nn; j0 += nr) {
        int wd = nn - j0 < nr ? nn - j0 : nr;
        for (int j = 0; j < nr; j++) {
            if (j >= wd) {
                for (int k = 0; k < kc; k++) dst[(int64_t)k * nr + j] = 0.0f;
                continue;
            }
            for (int kb = 0; kb < kc; kb += 256) {
                int l = kc - kb < 256 ? kc - kb : 256;
                cpu_w_row(w, n0 + j0 + j, k0 + kb, l, row);
                for (int k = 0; k < l; k++) dst[(int64_t)(kb + k) * nr + j] = row[k];
            }
        }
        dst += (int64_t)kc * nr;
    }
}

void cpu_pack_b_kn_scalar(const float *b, int64_t ldb, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst) {
    for (int j0 = 0; j0 < nn; j0 += nr) {
        int wd = nn - j0 < nr ? nn - j0 : nr;
        for (int k = 0; k < kc; k++) {
            const float *src = b + (k0 + k) * ldb + n0 + j0;
            float *d = dst + (int64_t)k * nr;
            for (int j = 0; j < wd; j++) d[j] = src[j];
            for (int j = wd; j < nr; j++) d[j] = 0.0f;
        }
        dst += (int64_t)kc * nr;
    }
}

#define SMR 4
#define SNR 16
static void ukr_scalar(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr, int add) {
    float acc[SMR][SNR] = {{0}};
    for (int k = 0; k < kc; k++)
        for (int i = 0; i < SMR; i++)
            for (int j = 0; j < SNR; j++) acc[i][j] += a[k * SMR + i] * b[k * SNR + j];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[i * ldc + j] = add ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

void cpu_gemv_scalar(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1, float *y,
                     int64_t ldy) {
    float row[256];
    double acc[8];
    for (int64_t n = n0; n < n1; n++) {
        for (int t = 0; t < T; t++) acc[t] = 0;
        for (int64_t k0 = 0; k0 < w->K; k0 += 256) {
            int l = w->K - k0 < 256 ? (int)(w->K - k0) : 256;
            cpu_w_row(w, n, k0, l, row);
            for (int t = 0; t < T; t++) {
                const float *xr = x + t * ldx + k0;
                float s = 0.0f;
                for (int k = 0; k < l; k++) s += xr[k] * row[k];
                acc[t] += s;
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + (n - n0)] = (float)acc[t];
    }
}

/* ---- fp8 with activation quantization (exact block sums) ---- */

void cpu_ukr_fp8_scalar(int kc, const double *a, const double *b, float *c, int64_t ldc, int mr, int nr,
                        const float *as, float ws) {
    enum { M = 4, N = 4 };
    double acc[M][N] = {{0}};
    for (int k = 0; k < kc; k++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) acc[i][j] += a[k * M + i] * b[k * N + j];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float part = (float)acc[i][j] * as[i];
            part = part * ws;
            c[i * ldc + j] = c[i * ldc + j] + part;
        }
}

void cpu_gemv_fp8_scalar(const float *xv, const float *xs, int T, int64_t K, const cpu_wmat *w, int64_t n0,
                         int64_t n1, float *y, int64_t ldy) {
    int64_t nb = (K + CPU_QB - 1) / CPU_QB;
    float wv[CPU_QB];
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wc = (const uint8_t *)w->data + n * K;
        const float *ws = w->scale + (n / CPU_QB) * w->scale_ld;
        float acc[8] = {0};
        for (int64_t i = 0; i < nb; i++) {
            int64_t k0 = i * CPU_QB;
            int l = K - k0 < CPU_QB ? (int)(K - k0) : CPU_QB;
            for (int k = 0; k < l; k++) wv[k] = cpu_e4m3_value(wc[k0 + k]);
            for (int t = 0; t < T; t++) {
                const float *xr = xv + t * K + k0;
                double d = 0;
                for (int k = 0; k < l; k++) d += (double)(xr[k] * wv[k]); /* product exact in f32 */
                float part = (float)d * xs[t * nb + i];
                part = part * ws[i];
                acc[t] = acc[t] + part;
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + (n - n0)] = acc[t];
    }
}

/* ---- bf16 packing (for the vdpbf16ps kernels) ---- */

void cpu_pack_a_bf16_scalar(const float *x, int64_t ldx, int rows, int kc, int mr, uint32_t *dst) {
    int kc2 = (kc + 1) / 2;
    for (int r0 = 0; r0 < rows; r0 += mr) {
        for (int i = 0; i < mr; i++) {
            const float *src = x + (int64_t)(r0 + i) * ldx;
            for (int k2 = 0; k2 < kc2; k2++) {
                uint32_t v = 0;
                if (r0 + i < rows) {
                    uint32_t lo = cpu_bf16_from_f32(src[2 * k2]);
                    uint32_t hi = 2 * k2 + 1 < kc ? cpu_bf16_from_f32(src[2 * k2 + 1]) : 0;
                    v = lo | hi << 16;
                }
                dst[(int64_t)k2 * mr + i] = v;
            }
        }
        dst += (int64_t)kc2 * mr;
    }
}

void cpu_pack_b_bf16_scalar(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, uint16_t *dst) {
    int kc2 = (kc + 1) / 2;
    for (int j0 = 0; j0 < nn; j0 += nr) {
        for (int j = 0; j < nr; j++) {
            int64_t n = n0 + j0 + j;
            for (int k = 0; k < 2 * kc2; k++) {
                uint16_t v = 0;
                if (j0 + j < nn && k < kc)
                    v = w->dtype == FM_BF16 ? ((const uint16_t *)w->data)[n * w->K + k0 + k]
                                            : cpu_bf16_from_f32(cpu_w_at(w, n, k0 + k));
                dst[((int64_t)(k / 2) * nr + j) * 2 + (k & 1)] = v;
            }
        }
        dst += (int64_t)kc2 * nr * 2;
    }
}

/* ---- row helpers ---- */

float cpu_dot_scalar(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float r = 0;
    for (; i < n; i++) r += a[i] * b[i];
    return r + ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

void cpu_axpy_scalar(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void cpu_rmsnorm_row_scalar(const float *x, const cpu_wmat *w, float eps, float *y, int64_t n) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * r) * cpu_w_at(w, 0, i);
}

void cpu_swiglu_row_scalar(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_add_row_scalar(const float *a, const float *b, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

float cpu_expsum_scalar(float *x, float sub, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - sub);
        sum += x[i];
    }
    return sum;
}

void cpu_scores_scalar(const float *q, int64_t ldq, int nq, const float *c, int64_t ldc, int nk, int K, float *s,
                       int64_t lds) {
    for (int i = 0; i < nq; i++)
        for (int j = 0; j < nk; j++) s[i * lds + j] = cpu_dot_scalar(q + i * ldq, c + j * ldc, K);
}

void cpu_pv_scalar(const float *p, int64_t ldp, int nq, const float *c, int64_t ldc, int nk, int n, float *o,
                   int64_t ldo) {
    for (int i = 0; i < nq; i++)
        for (int j = 0; j < nk; j++) {
            float a = p[i * ldp + j];
            if (a != 0.0f) cpu_axpy_scalar(a, c + j * ldc, o + i * ldo, n);
        }
}

void cpu_axpy_w_scalar(float a, const cpu_wmat *w, int64_t r, float *y) {
    float row[256];
    for (int64_t k = 0; k < w->K; k += 256) {
        int l = w->K - k < 256 ? (int)(w->K - k) : 256;
        cpu_w_row(w, r, k, l, row);
        cpu_axpy_scalar(a, row, y + k, l);
    }
}

const cpu_kern cpu_kern_scalar = {
    .name = "scalar",
    .mr = SMR,
    .nr = SNR,
    .kc = 256,
    .mc = 64,
    .pack_a = cpu_pack_a_scalar,
    .pack_b = cpu_pack_b_scalar,
    .pack_b_kn = cpu_pack_b_kn_scalar,
    .ukr = ukr_scalar,
    .gemv = cpu_gemv_scalar,
    .fmr = 4,
    .fnr = 4,
    .ukr_fp8 = cpu_ukr_fp8_scalar,
    .gemv_fp8 = cpu_gemv_fp8_scalar,
    .bmr = 0,
    .bnr = 0,
    .pack_a_bf16 = NULL,
    .pack_b_bf16 = NULL,
    .ukr_bf16 = NULL,
    .dot = cpu_dot_scalar,
    .axpy = cpu_axpy_scalar,
    .rmsnorm_row = cpu_rmsnorm_row_scalar,
    .swiglu_row = cpu_swiglu_row_scalar,
    .add_row = cpu_add_row_scalar,
    .expsum = cpu_expsum_scalar,
    .scores = cpu_scores_scalar,
    .pv = cpu_pv_scalar,
    .axpy_w = cpu_axpy_w_scalar,
};
