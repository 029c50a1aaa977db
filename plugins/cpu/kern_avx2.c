/* kern_avx2.c - AVX2 + FMA kernels: a 6x16 f32 micro-kernel (12 ymm
 * accumulators), few-row products with the weight decode in registers, and the
 * exact fp8 block-sum kernel in double. Packing uses the portable code. */
#include <immintrin.h>
#include <string.h>

#include "cpu.h"

#define MR 6
#define NR 16

static inline __m256i tailmask(int n) {
    static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_loadu_si256((const __m256i *)ramp));
}

/* 8 elements of row n from column k (n_valid of them), decoded to f32. */
static inline __m256 wload8(const cpu_wmat *w, int64_t n, int64_t k, int nv, float sc) {
    int64_t i = n * w->K + k;
    if (nv < 8) {
        float tmp[8] = {0};
        for (int j = 0; j < nv; j++) tmp[j] = cpu_w_at(w, n, k + j);
        return _mm256_loadu_ps(tmp);
    }
    switch (w->dtype) {
    case FM_F32: return _mm256_loadu_ps((const float *)w->data + i);
    case FM_BF16: {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w->data + i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
    case FM_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w->data + i)));
    default: {
        int64_t c8;
        memcpy(&c8, (const uint8_t *)w->data + i, 8);
        __m256i v = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(c8));
        v = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32((int)0x87f00000u));
        __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(v), _mm256_set1_ps(0x1p120f));
        return _mm256_mul_ps(f, _mm256_set1_ps(sc));
    }
    }
}

#define REP6(M) M(0) M(1) M(2) M(3) M(4) M(5)

static void ukr(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr, int add) {
#define DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
    REP6(DECL)
#undef DECL
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#define STEP(i)                                     \
    {                                               \
        __m256 ai = _mm256_broadcast_ss(a + i);     \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0); \
        c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1); \
    }
        REP6(STEP)
#undef STEP
        a += MR;
        b += NR;
    }
    float t[MR][NR];
#define ST(i) _mm256_storeu_ps(t[i], c##i##0), _mm256_storeu_ps(t[i] + 8, c##i##1);
    REP6(ST)
#undef ST
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[i * ldc + j] = add ? c[i * ldc + j] + t[i][j] : t[i][j];
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define GEMV_BODY(T, R)                                                                                  \
    static void gemv_##T(const float *x, int64_t ldx, const cpu_wmat *w, int64_t n0, int64_t n1, float *y, \
                         int64_t ldy) {                                                                  \
        const int64_t K = w->K;                                                                          \
        for (int64_t n = n0; n < n1; n += R) {                                                           \
            int rv = n1 - n < R ? (int)(n1 - n) : R;                                                     \
            __m256 acc[R][T];                                                                            \
            for (int r = 0; r < R; r++)                                                                  \
                for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();                             \
            for (int64_t k = 0; k < K; k += 8) {                                                         \
                int kv = K - k < 8 ? (int)(K - k) : 8;                                                   \
                __m256i km = tailmask(kv);                                                               \
                __m256 wv[R];                                                                            \
                for (int r = 0; r < R; r++) {                                                            \
                    int64_t nn = n + (r < rv ? r : 0);                                                   \
                    wv[r] = wload8(w, nn, k, kv, w->scale ? w->scale[(nn / CPU_QB) * w->scale_ld + k / CPU_QB] : 1.0f); \
                }                                                                                        \
                for (int t = 0; t < T; t++) {                                                            \
                    __m256 xv = _mm256_maskload_ps(x + t * ldx + k, km);                                 \
                    for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);       \
                }                                                                                        \
            }                                                                                            \
            for (int r = 0; r < rv; r++)                                                                 \
                for (int t = 0; t < T; t++) y[t * ldy + (n + r - n0)] = hsum8(acc[r][t]);                \
        }                                                                                                \
    }

GEMV_BODY(1, 4)
GEMV_BODY(2, 4)
GEMV_BODY(3, 2)
GEMV_BODY(4, 2)

static void gemv(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    while (T > 0) {
        int t = T >= 4 ? 4 : T;
        switch (t) {
        case 1: gemv_1(x, ldx, w, n0, n1, y, ldy); break;
        case 2: gemv_2(x, ldx, w, n0, n1, y, ldy); break;
        case 3: gemv_3(x, ldx, w, n0, n1, y, ldy); break;
        default: gemv_4(x, ldx, w, n0, n1, y, ldy); break;
        }
        x += t * ldx, y += t * ldy, T -= t;
    }
}

#define FMR 6
#define FNR 8

static void ukr_fp8(int kc, const double *a, const double *b, float *c, int64_t ldc, int mr, int nr, const float *as,
                    float ws) {
#define DECL(i) __m256d d##i##0 = _mm256_setzero_pd(), d##i##1 = _mm256_setzero_pd();
    REP6(DECL)
#undef DECL
    for (int k = 0; k < kc; k++) {
        __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
#define STEP(i)                                     \
    {                                               \
        __m256d ai = _mm256_broadcast_sd(a + i);    \
        d##i##0 = _mm256_fmadd_pd(ai, b0, d##i##0); \
        d##i##1 = _mm256_fmadd_pd(ai, b1, d##i##1); \
    }
        REP6(STEP)
#undef STEP
        a += FMR;
        b += FNR;
    }
    double t[FMR][FNR];
#define ST(i) _mm256_storeu_pd(t[i], d##i##0), _mm256_storeu_pd(t[i] + 4, d##i##1);
    REP6(ST)
#undef ST
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float part = (float)t[i][j] * as[i];
            part = part * ws;
            c[i * ldc + j] = c[i * ldc + j] + part;
        }
}

static float dot(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float r = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

const cpu_kern cpu_kern_avx2 = {
    .name = "avx2",
    .mr = MR,
    .nr = NR,
    .kc = 256,
    .mc = 96,
    .pack_a = cpu_pack_a_scalar,
    .pack_b = cpu_pack_b_scalar,
    .pack_b_kn = cpu_pack_b_kn_scalar,
    .ukr = ukr,
    .gemv = gemv,
    .fmr = FMR,
    .fnr = FNR,
    .ukr_fp8 = ukr_fp8,
    .gemv_fp8 = cpu_gemv_fp8_scalar,
    .bmr = 0,
    .bnr = 0,
    .pack_a_bf16 = NULL,
    .pack_b_bf16 = NULL,
    .ukr_bf16 = NULL,
    .dot = dot,
    .axpy = axpy,
    .rmsnorm_row = cpu_rmsnorm_row_scalar,
    .swiglu_row = cpu_swiglu_row_scalar,
    .add_row = cpu_add_row_scalar,
    .expsum = cpu_expsum_scalar,
    .scores = cpu_scores_scalar,
    .pv = cpu_pv_scalar,
    .axpy_w = cpu_axpy_w_scalar,
};
