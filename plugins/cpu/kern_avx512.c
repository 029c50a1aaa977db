/* kern_avx512.c - AVX-512 kernels: a 14x32 f32 GEMM micro-kernel (28 zmm
 * accumulators, A broadcast from memory, two B vectors per k), packing with the
 * weight decode fused into a 16x16 transpose, few-row products that stream
 * weight rows once, and the exact fp8 block-sum kernel in double. */
#include <math.h>

#include "kern_avx512_inl.h"

#define MR 14
#define NR 32

/* ---- packing ---- */

static void pack_a(const float *x, int64_t ldx, int rows, int kc, int mr, float *dst) {
    if (mr != MR) {
        cpu_pack_a_scalar(x, ldx, rows, kc, mr, dst);
        return;
    }
    for (int r0 = 0; r0 < rows; r0 += MR) {
        int h = rows - r0 < MR ? rows - r0 : MR;
        for (int k = 0; k < kc; k += 16) {
            int kn = kc - k < 16 ? kc - k : 16;
            __mmask16 km = m16(kn);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < h ? _mm512_maskz_loadu_ps(km, x + (int64_t)(r0 + i) * ldx + k) : _mm512_setzero_ps();
            tr16(r);
            for (int kk = 0; kk < kn; kk++) _mm512_mask_storeu_ps(dst + (int64_t)(k + kk) * MR, m16(MR), r[kk]);
        }
        dst += (int64_t)kc * MR;
    }
}

static void pack_b(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst) {
    if (nr % 16 || k0 % 16) {
        cpu_pack_b_scalar(w, n0, nn, k0, kc, nr, dst);
        return;
    }
    const int64_t es = w->dtype == FM_F32 ? 4 : w->dtype == FM_F8_E4M3 ? 1 : 2;
    for (int j0 = 0; j0 < nn; j0 += nr) {
        for (int h = 0; h < nr; h += 16) {
            int rows = nn - j0 - h, an;
            const char *ap = pack_ahead(w, es, n0, nn, k0, kc, j0 + h, &an);
            for (int k = 0; k < kc; k += 16) {
                for (int i = 0; i < an; i++) _mm_prefetch(ap + (i * w->K + k) * es, _MM_HINT_T0);
                int kn = kc - k < 16 ? kc - k : 16;
                __mmask16 km = m16(kn);
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    if (i >= rows) {
                        r[i] = _mm512_setzero_ps();
                        continue;
                    }
                    int64_t n = n0 + j0 + h + i;
                    __m512 sc = _mm512_set1_ps(w->scale ? w->scale[(n / CPU_QB) * w->scale_ld + (k0 + k) / CPU_QB] : 1.0f);
                    r[i] = wload16(w, n, k0 + k, km, sc);
                }
                tr16(r);
                for (int kk = 0; kk < kn; kk++) _mm512_storeu_ps(dst + (int64_t)(k + kk) * nr + h, r[kk]);
            }
        }
        dst += (int64_t)kc * nr;
    }
}

static void pack_b_kn(const float *b, int64_t ldb, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst) {
    if (nr % 16) {
        cpu_pack_b_kn_scalar(b, ldb, n0, nn, k0, kc, nr, dst);
        return;
    }
    for (int j0 = 0; j0 < nn; j0 += nr) {
        for (int k = 0; k < kc; k++) {
            const float *src = b + (k0 + k) * ldb + n0 + j0;
            for (int h = 0; h < nr; h += 16)
                _mm512_storeu_ps(dst + (int64_t)k * nr + h, _mm512_maskz_loadu_ps(m16(nn - j0 - h), src + h));
        }
        dst += (int64_t)kc * nr;
    }
}

/* ---- f32 micro-kernel ---- */


/* The k loop over rows REP of the packed A panel (MR a k): accumulators c<i>0, c<i>1. */
#define STEP(i)                                     \
    {                                               \
        __m512 ai = _mm512_set1_ps(a[i]);           \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0); \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1); \
    }
#define KLOOP(REP)                                                        \
    for (int k = 0; k < kc; k++) {                                        \
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);     \
        REP(STEP)                                                         \
        a += MR;                                                          \
        b += NR;                                                          \
    }

static void ukr(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr, int add) {
    /* C is touched once per KC slice and is usually far away: fetch it now, use it at the end */
    for (int i = 0; i < mr; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + nr - 1), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
    UKR_RUN(KLOOP, c, ldc, mr, nr, add);
}
#undef KLOOP
#undef STEP

/* ---- few rows: y[t, n] = x[t] . w[n], R weight rows at a time ---- */
/* One function per (dtype, T): the decode is a compile-time constant, the fp8
 * block scale is read once per row and 128-block, and the row streams are
 * prefetched ahead (decode is bound by memory bandwidth). */

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_F8 3

static inline __m512 dec16(int dt, const void *row, int64_t k, __mmask16 km) {
    switch (dt) {
    case DT_F32: return _mm512_maskz_loadu_ps(km, (const float *)row + k);
    case DT_BF16: return bf16x16(_mm256_maskz_loadu_epi16(km, (const uint16_t *)row + k));
    case DT_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, (const uint16_t *)row + k));
    default: return e4m3x16(_mm_maskz_loadu_epi8(km, (const uint8_t *)row + k));
    }
}

/* dec16, fp8 codes as their raw values (times 2^-120: see fp8_sc) */
static inline __m512 dec16r(int dt, const void *row, int64_t k, __mmask16 km) {
    if (dt != DT_F8) return dec16(dt, row, k, km);
    return e4m3raw16(__builtin_constant_p(km) && km == 0xffff ? _mm_loadu_si128((const __m128i *)((const uint8_t *)row + k))
                                                                : _mm_maskz_loadu_epi8(km, (const uint8_t *)row + k));
}

/* fp8 rows' block scale s as the factors of their raw values (e4m3raw16): s 2^120 when
 * it folds (E4M3_FOLDS), else 2^120 and s (*two set: a second multiply) */
static inline __m512 fp8_sc(float s, __m512 *s2, int *two) {
    *two = !E4M3_FOLDS(s);
    *s2 = _mm512_set1_ps(s);
    return _mm512_set1_ps(*two ? 0x1p120f : s * 0x1p120f);
}

#define GEMV_BODY(NM, DT, T, R)                                                                                      \
    static void gemv_##NM##_##T(const float *x, int64_t ldx, const cpu_wmat *w, int64_t n0, int64_t n1, float *y, \
                                int64_t ldy) {                                                                   \
        const int64_t K = w->K, es = DT == DT_F32 ? 4 : DT == DT_F8 ? 1 : 2;                                     \
        for (int64_t n = n0; n < n1; n += R) {                                                                   \
            int rv = n1 - n < R ? (int)(n1 - n) : R;                                                             \
            const char *row[R];                                                                                  \
            _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) row[r] = (const char *)w->data + (n + (r < rv ? r : 0)) * K * es;        \
            __m512 acc[R][T];                                                                                    \
            _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                                    \
                _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();                                     \
            for (int64_t kb = 0; kb < K; kb += CPU_QB) {                                                         \
                int64_t ke = kb + CPU_QB < K ? kb + CPU_QB : K;                                                  \
                __m512 sc[R];                                                                                    \
                _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                                              \
                    /* rows are short (one page each): fetch the same rows of the next group */             \
                    const char *pf = row[r] + R * K * es + kb * es;                                           \
                    for (int64_t l = 0; l < 2 * es; l++) _mm_prefetch(pf + 64 * l, _MM_HINT_T1);               \
                    sc[r] = DT == DT_F8 ? _mm512_set1_ps(w->scale[((n + (r < rv ? r : 0)) / CPU_QB) * w->scale_ld + \
                                                                  kb / CPU_QB])                                  \
                                        : _mm512_set1_ps(1.0f);                                                  \
                }                                                                                                \
                for (int64_t k = kb; k < ke; k += 16) {                                                          \
                    __mmask16 km = m16((int)(ke - k));                                                           \
                    __m512 wv[R];                                                                                \
                    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                                          \
                        wv[r] = dec16(DT, row[r], k, km);                                                        \
                        if (DT == DT_F8) wv[r] = _mm512_mul_ps(wv[r], sc[r]);                                    \
                    }                                                                                            \
                    _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) {                                          \
                        __m512 xv = _mm512_maskz_loadu_ps(km, x + t * ldx + k);                                  \
                        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);           \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                                \
                _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) if (r < rv) y[t * ldy + (n + r - n0)] = hsum(acc[r][t]); \
        }                                                                                                        \
    }

/* a[i] += the row's 16 values from k + 16 i (decoded; fp8 times sc, and s2 if two) x
 * the same of x, i < 4 */
static inline __attribute__((always_inline)) void gemv1_64(int dt, const char *row, const float *x, int64_t k, __m512 sc,
                                                          __m512 s2, int two, __m512 a[4]) {
    __m512 w[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        w[i] = dec16r(dt, row, k + 16 * i, 0xffff);
        if (dt == DT_F8) w[i] = _mm512_mul_ps(w[i], sc);
        if (dt == DT_F8 && two) w[i] = _mm512_mul_ps(w[i], s2);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) a[i] = _mm512_fmadd_ps(w[i], _mm512_loadu_ps(x + k + 16 * i), a[i]);
}

/* a += row n's 128-block [kb, ke) . x: the steps of 64 (for whole fp8 blocks both
 * unrolled for either form of the scale: the generic loop, with the step count
 * unknown, ran 1.3-1.4x as long on L2-resident rows), then a masked tail into a[0] */
static inline __attribute__((always_inline)) void gemv1_blk(int dt, int whole, const cpu_wmat *w, int64_t n,
                                                           const char *row, const float *x, int64_t kb, int64_t ke,
                                                           __m512 a[4]) {
    __m512 s2 = _mm512_set1_ps(1.0f);
    int two = 0;
    __m512 sc = dt == DT_F8 ? fp8_sc(w->scale[(n / CPU_QB) * w->scale_ld + kb / CPU_QB], &s2, &two) : s2;
    if (dt == DT_F8 && whole) {
        if (!two) gemv1_64(DT_F8, row, x, kb, sc, sc, 0, a), gemv1_64(DT_F8, row, x, kb + 64, sc, sc, 0, a);
        else gemv1_64(DT_F8, row, x, kb, sc, s2, 1, a), gemv1_64(DT_F8, row, x, kb + 64, sc, s2, 1, a);
        return;
    }
    int64_t k = kb;
    for (; k + 64 <= ke; k += 64) gemv1_64(dt, row, x, k, sc, s2, two, a);
    for (; k < ke; k += 16) {
        __mmask16 km = m16((int)(ke - k));
        __m512 w0 = dec16r(dt, row, k, km);
        if (dt == DT_F8) w0 = _mm512_mul_ps(w0, sc);
        if (dt == DT_F8 && two) w0 = _mm512_mul_ps(w0, s2);
        a[0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(km, x + k), a[0]);
    }
}

/* T = 1: each row with four accumulators, reduced ((a0 + a1) + (a2 + a3)), the same
 * operations in the same order for any n0, n1. The rows are read as GEMV_S streams,
 * the quarters of [n0, n1), one row of each at a time, each stream requested GEMV_PF
 * bytes ahead (the last rows, fewer than GEMV_S, alone): one core keeps more misses in
 * flight over four streams than over one or two, and needs the requests to do so. In
 * the moe_experts decode this took 8-12% less time than two streams with no requests
 * (bf16), 20% less than one stream (f32): docs/cpu.md. */
#define GEMV_S 4
#define GEMV_PF 2048
static inline __attribute__((always_inline)) void gemv1_rows(int dt, int whole, const float *x, const cpu_wmat *w,
                                                            int64_t n0, int64_t n1, float *y) {
    const int64_t K = w->K, es = dt == DT_F32 ? 4 : dt == DT_F8 ? 1 : 2, q = (n1 - n0) / GEMV_S;
    const int plain = dt != DT_F8 && K % 64 == 0; /* no scales, no tails: one loop over the steps of 64 */
    for (int64_t i = 0; i < q; i++) {
        const char *row[GEMV_S];
        __m512 a[GEMV_S][4];
#pragma GCC unroll 4
        for (int s = 0; s < GEMV_S; s++) {
            row[s] = (const char *)w->data + (n0 + s * q + i) * K * es;
            a[s][0] = a[s][1] = a[s][2] = a[s][3] = _mm512_setzero_ps();
        }
        if (plain) {
            for (int64_t k = 0; k < K; k += 64)
#pragma GCC unroll 4
                for (int s = 0; s < GEMV_S; s++) {
                    for (int64_t l = 0; l < es; l++) _mm_prefetch(row[s] + k * es + GEMV_PF + 64 * l, _MM_HINT_T0);
                    gemv1_64(dt, row[s], x, k, _mm512_set1_ps(1.0f), _mm512_set1_ps(1.0f), 0, a[s]);
                }
        } else {
            for (int64_t kb = 0; kb < K; kb += CPU_QB)
#pragma GCC unroll 4
                for (int s = 0; s < GEMV_S; s++) {
                    for (int64_t l = 0; l < 2 * es; l++) _mm_prefetch(row[s] + kb * es + GEMV_PF + 64 * l, _MM_HINT_T0);
                    gemv1_blk(dt, whole, w, n0 + s * q + i, row[s], x, kb, kb + CPU_QB < K ? kb + CPU_QB : K, a[s]);
                }
        }
#pragma GCC unroll 4
        for (int s = 0; s < GEMV_S; s++)
            y[s * q + i] = hsum(_mm512_add_ps(_mm512_add_ps(a[s][0], a[s][1]), _mm512_add_ps(a[s][2], a[s][3])));
    }
    for (int64_t n = n0 + GEMV_S * q; n < n1; n++) {
        const char *row = (const char *)w->data + n * K * es;
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t kb = 0; kb < K; kb += CPU_QB) {
            for (int64_t l = 0; l < 2 * es; l++) _mm_prefetch(row + kb * es + GEMV_PF + 64 * l, _MM_HINT_T0);
            gemv1_blk(dt, whole, w, n, row, x, kb, kb + CPU_QB < K ? kb + CPU_QB : K, a);
        }
        y[n - n0] = hsum(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    }
}

#define GEMV1_BODY(NM, DT)                                                                          \
    static void gemv1_##NM(const float *x, const cpu_wmat *w, int64_t n0, int64_t n1, float *y) {   \
        if (DT == DT_F8 && w->K % CPU_QB == 0) gemv1_rows(DT, 1, x, w, n0, n1, y);                  \
        else gemv1_rows(DT, 0, x, w, n0, n1, y);                                                    \
    }

#define GEMV_DT(NM, DT)                                                                                                \
    GEMV1_BODY(NM, DT)                                                                                               \
    GEMV_BODY(NM, DT, 2, 6)                                                                                          \
    GEMV_BODY(NM, DT, 3, 4)                                                                                          \
    GEMV_BODY(NM, DT, 4, 4)                                                                                          \
    static void gemv_##NM(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1, float *y, \
                          int64_t ldy) {                                                                             \
        while (T > 0) {                                                                                              \
            int t = T >= 4 ? 4 : T;                                                                                  \
            switch (t) {                                                                                             \
            case 1: gemv1_##NM(x, w, n0, n1, y); break;                                                               \
            case 2: gemv_##NM##_2(x, ldx, w, n0, n1, y, ldy); break;                                                 \
            case 3: gemv_##NM##_3(x, ldx, w, n0, n1, y, ldy); break;                                                 \
            default: gemv_##NM##_4(x, ldx, w, n0, n1, y, ldy); break;                                                \
            }                                                                                                        \
            x += t * ldx, y += t * ldy, T -= t;                                                                      \
        }                                                                                                            \
    }

GEMV_DT(f32, DT_F32)
GEMV_DT(bf16, DT_BF16)
GEMV_DT(f16, DT_F16)
GEMV_DT(f8, DT_F8)

static void gemv(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    switch (w->dtype) {
    case FM_F32: gemv_f32(x, ldx, T, w, n0, n1, y, ldy); break;
    case FM_BF16: gemv_bf16(x, ldx, T, w, n0, n1, y, ldy); break;
    case FM_F16: gemv_f16(x, ldx, T, w, n0, n1, y, ldy); break;
    default: gemv_f8(x, ldx, T, w, n0, n1, y, ldy); break;
    }
}

/* ---- fp8 act_quant: exact block sums in double ---- */

#define FMR 12
#define FNR 16
#define REP12(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)

static void ukr_fp8(int kc, const double *a, const double *b, float *c, int64_t ldc, int mr, int nr, const float *as,
                    float ws) {
#define DECL(i) __m512d d##i##0 = _mm512_setzero_pd(), d##i##1 = _mm512_setzero_pd();
    REP12(DECL)
#undef DECL
    for (int k = 0; k < kc; k++) {
        __m512d b0 = _mm512_loadu_pd(b), b1 = _mm512_loadu_pd(b + 8);
#define STEP(i)                                     \
    {                                               \
        __m512d ai = _mm512_set1_pd(a[i]);          \
        d##i##0 = _mm512_fmadd_pd(ai, b0, d##i##0); \
        d##i##1 = _mm512_fmadd_pd(ai, b1, d##i##1); \
    }
        REP12(STEP)
#undef STEP
        a += FMR;
        b += FNR;
    }
    __m512 t[FMR];
#define CV(i) t[i] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(d##i##0)), _mm512_cvtpd_ps(d##i##1), 1);
    REP12(CV)
#undef CV
    __mmask16 km = m16(nr);
    __m512 wsv = _mm512_set1_ps(ws);
    for (int i = 0; i < mr; i++) {
        __m512 part = _mm512_mul_ps(_mm512_mul_ps(t[i], _mm512_set1_ps(as[i])), wsv);
        float *ci = c + i * ldc;
        _mm512_mask_storeu_ps(ci, km, _mm512_add_ps(_mm512_maskz_loadu_ps(km, ci), part));
    }
}

/* Few rows, exact: per weight row and 128-block the products of two e4m3 values
 * summed in double (each product and every partial sum exact, so the sum does not
 * depend on the order), then the f32 scaling chain. The weight codes are decoded
 * straight to double, raw (e4m3rawd8: the value times 2^-1016), the 2^1016 applied
 * to the block's sum: no f32 arithmetic on decoded values (with f32 products of the
 * decoded values, random codes - one in 16 an e4m3 denormal - ran the loop 2.3x as
 * long as codes without denormals). Raw f32 codes widened to double, the earlier
 * form, took 7-11% longer than raw doubles (a microbenchmark of four rows' blocks in
 * cache), the same bits. x (act_quant values) is widened once per call into xd (one
 * token, K <= XD_MAX), else per block. */
#define XD_MAX 4096

/* 8 e4m3 codes as doubles of their value times 2^-1016: the 7 magnitude bits placed at
 * bits 49..55 read as a double of exponent e - 1023 (a denormal for e = 0), the sign
 * from the sign-extended byte. Exact, as are their products with x (multiples of
 * 2^-1034) and the block's sums of them (below 2^-991). */
static inline __m512d e4m3rawd8(__m128i c) {
    __m512i v = _mm512_cvtepi8_epi64(c);
    return _mm512_castsi512_pd(_mm512_and_si512(_mm512_slli_epi64(v, 49), _mm512_set1_epi64((long long)0x80FE000000000000ull)));
}

/* sum over the block's l <= 128 columns of x . w (x from xd, or widened from xf) */
static inline double fp8_block(const double *xd, const float *xf, const uint8_t *wc, int l) {
    __m512d d[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++) {
        const __mmask16 m = m16(l - 16 * q);
        __m128i c = l == CPU_QB ? _mm_loadu_si128((const __m128i *)(wc + 16 * q)) : _mm_maskz_loadu_epi8(m, wc + 16 * q);
        __m512d x0, x1;
        if (xd) {
            x0 = _mm512_loadu_pd(xd + 16 * q), x1 = _mm512_loadu_pd(xd + 16 * q + 8);
        } else {
            __m512 x = _mm512_maskz_loadu_ps(m, xf + 16 * q);
            x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(x)), x1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
        }
        d[2 * (q & 1)] = _mm512_fmadd_pd(x0, e4m3rawd8(c), d[2 * (q & 1)]);
        d[2 * (q & 1) + 1] = _mm512_fmadd_pd(x1, e4m3rawd8(_mm_srli_si128(c, 8)), d[2 * (q & 1) + 1]);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(d[0], d[1]), _mm512_add_pd(d[2], d[3]))) * 0x1p1016;
}

/* d[0:n) = x[0:n) in double, n a multiple of 16 */
static inline void widen_pd(const float *x, int64_t n, double *d) {
    for (int64_t k = 0; k < n; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        _mm512_storeu_pd(d + k, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        _mm512_storeu_pd(d + k + 8, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    }
}

static void gemv_fp8(const float *xv, const float *xs, int T, int64_t K, const cpu_wmat *w, int64_t n0, int64_t n1,
                     float *y, int64_t ldy) {
    int64_t nb = (K + CPU_QB - 1) / CPU_QB;
    const int wide = T == 1 && K % CPU_QB == 0 && K <= XD_MAX; /* one token: x widened once (whole blocks read it) */
    double xb[wide ? K : 1];
    const double *xd = NULL;
    if (wide) widen_pd(xv, K, xb), xd = xb;
    /* one token, whole blocks: four streams, as the one-row kernel (gemv1_rows), the
     * same operations per row; x widened per block for them when not once (xb) */
    const int64_t q = T == 1 && K % CPU_QB == 0 ? (n1 - n0) / GEMV_S : 0;
    double xk[CPU_QB];
    for (int64_t r = 0; r < q; r++) {
        const uint8_t *wc[GEMV_S];
        const float *wsr[GEMV_S];
        float acc[GEMV_S] = {0};
#pragma GCC unroll 4
        for (int s = 0; s < GEMV_S; s++) {
            int64_t n = n0 + s * q + r;
            wc[s] = (const uint8_t *)w->data + n * K, wsr[s] = w->scale + (n / CPU_QB) * w->scale_ld;
        }
        for (int64_t i = 0; i < nb; i++) {
            int64_t k0 = i * CPU_QB;
            if (!xd) widen_pd(xv + k0, CPU_QB, xk);
#pragma GCC unroll 4
            for (int s = 0; s < GEMV_S; s++) {
                _mm_prefetch((const char *)(wc[s] + k0) + GEMV_PF, _MM_HINT_T0);
                _mm_prefetch((const char *)(wc[s] + k0) + GEMV_PF + 64, _MM_HINT_T0);
                double d = fp8_block(xd ? xd + k0 : xk, NULL, wc[s] + k0, CPU_QB);
                float part = (float)d * xs[i];
                part = part * wsr[s][i];
                acc[s] = acc[s] + part;
            }
        }
#pragma GCC unroll 4
        for (int s = 0; s < GEMV_S; s++) y[s * q + r] = acc[s];
    }
    for (int64_t n = n0 + GEMV_S * q; n < n1; n++) {
        const uint8_t *wc = (const uint8_t *)w->data + n * K;
        const float *wsr = w->scale + (n / CPU_QB) * w->scale_ld;
        float acc[8] = {0};
        for (int64_t i = 0; i < nb; i++) {
            int64_t k0 = i * CPU_QB;
            int l = K - k0 < CPU_QB ? (int)(K - k0) : CPU_QB;
            _mm_prefetch((const char *)(wc + k0) + 4096, _MM_HINT_T0); /* the stream, ahead */
            _mm_prefetch((const char *)(wc + k0) + 4096 + 64, _MM_HINT_T0);
            for (int t = 0; t < T && t < 8; t++) {
                double d = fp8_block(xd ? xd + k0 : NULL, xv + t * K + k0, wc + k0, l);
                float part = (float)d * xs[t * nb + i];
                part = part * wsr[i];
                acc[t] = acc[t] + part;
            }
        }
        for (int t = 0; t < T && t < 8; t++) y[t * ldy + (n - n0)] = acc[t];
    }
    if (T > 8) gemv_fp8(xv + 8 * K, xs + 8 * nb, T - 8, K, w, n0, n1, y + 8 * ldy, ldy);
}

/* ---- row helpers ---- */

static float dot(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = m16((int)(n - i));
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = m16((int)(n - i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static void add_row(const float *a, const float *b, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = m16((int)(n - i));
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
    }
}

static float expsum(float *x, float sub, int64_t n) {
    __m512 acc = _mm512_setzero_ps(), sv = _mm512_set1_ps(sub), ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = m16((int)(n - i));
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __mmask16 live = _mm512_mask_cmp_ps_mask(m, v, ninf, _CMP_NEQ_OQ);
        __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(v, sv)));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* silu(g) u = g / (1 + exp(-g)) u */
static void swiglu_row(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = m16((int)(n - i));
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv)));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_div_ps(gv, d), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* ---- attention decode kernels (no packing: the cache rows are read in place) ---- */

/* 16 vectors -> one vector of their 16 sums (lane i = sum of v[i]). */
static inline __m512 sum16(__m512 v[16]) {
    tr16(v);
    __m512 a = _mm512_add_ps(_mm512_add_ps(v[0], v[1]), _mm512_add_ps(v[2], v[3]));
    __m512 b = _mm512_add_ps(_mm512_add_ps(v[4], v[5]), _mm512_add_ps(v[6], v[7]));
    __m512 c = _mm512_add_ps(_mm512_add_ps(v[8], v[9]), _mm512_add_ps(v[10], v[11]));
    __m512 d = _mm512_add_ps(_mm512_add_ps(v[12], v[13]), _mm512_add_ps(v[14], v[15]));
    return _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d));
}

/* 4 query rows x 4 cache rows per tile: 16 accumulators, 8 loads per 16 FMAs. */
#define R4(M, u) M(u, 0) M(u, 1) M(u, 2) M(u, 3)
#define R44(M) R4(M, 0) R4(M, 1) R4(M, 2) R4(M, 3)
static void scores(const float *q, int64_t ldq, int nq, const float *c, int64_t ldc, int nk, int K, float *s,
                   int64_t lds) {
    for (int i0 = 0; i0 < nq; i0 += 4)
        for (int j0 = 0; j0 < nk; j0 += 4) {
            const float *qr[4], *cr[4];
            for (int u = 0; u < 4; u++)
                qr[u] = q + (i0 + u < nq ? i0 + u : i0) * ldq, cr[u] = c + (j0 + u < nk ? j0 + u : j0) * ldc;
#define DECL(u, v) __m512 a##u##v = _mm512_setzero_ps();
            R44(DECL)
#undef DECL
            int k = 0;
            for (; k + 16 <= K; k += 16) {
                __m512 c0 = _mm512_loadu_ps(cr[0] + k), c1 = _mm512_loadu_ps(cr[1] + k);
                __m512 c2 = _mm512_loadu_ps(cr[2] + k), c3 = _mm512_loadu_ps(cr[3] + k);
#define FMA(u, v) a##u##v = _mm512_fmadd_ps(q##u, c##v, a##u##v);
                __m512 q0 = _mm512_loadu_ps(qr[0] + k), q1 = _mm512_loadu_ps(qr[1] + k);
                __m512 q2 = _mm512_loadu_ps(qr[2] + k), q3 = _mm512_loadu_ps(qr[3] + k);
                R44(FMA)
            }
            if (k < K) {
                __mmask16 km = m16(K - k);
                __m512 c0 = _mm512_maskz_loadu_ps(km, cr[0] + k), c1 = _mm512_maskz_loadu_ps(km, cr[1] + k);
                __m512 c2 = _mm512_maskz_loadu_ps(km, cr[2] + k), c3 = _mm512_maskz_loadu_ps(km, cr[3] + k);
                __m512 q0 = _mm512_maskz_loadu_ps(km, qr[0] + k), q1 = _mm512_maskz_loadu_ps(km, qr[1] + k);
                __m512 q2 = _mm512_maskz_loadu_ps(km, qr[2] + k), q3 = _mm512_maskz_loadu_ps(km, qr[3] + k);
                R44(FMA)
            }
#undef FMA
            __m512 v[16] = {a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33};
            float out[16];
            _mm512_storeu_ps(out, sum16(v));
            for (int u = 0; u < 4 && i0 + u < nq; u++)
                for (int w = 0; w < 4 && j0 + w < nk; w++) s[(i0 + u) * lds + j0 + w] = out[4 * u + w];
        }
}

/* 8 rows x 48 columns of o per tile in 24 accumulators; p broadcast, c rows in place. */
#define R8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
static void pv(const float *p, int64_t ldp, int nq, const float *c, int64_t ldc, int nk, int n, float *o, int64_t ldo) {
    for (int i0 = 0; i0 < nq; i0 += 8) {
        int ih = nq - i0 < 8 ? nq - i0 : 8;
        const float *pr[8];
        for (int i = 0; i < 8; i++) pr[i] = p + (i0 + (i < ih ? i : 0)) * ldp;
        for (int c0 = 0; c0 < n; c0 += 48) {
            __mmask16 k0 = m16(n - c0), k1 = m16(n - c0 - 16), k2 = m16(n - c0 - 32);
#define DECL(i) __m512 x##i##0 = _mm512_setzero_ps(), x##i##1 = _mm512_setzero_ps(), x##i##2 = _mm512_setzero_ps();
            R8(DECL)
#undef DECL
            for (int j = 0; j < nk; j++) {
                const float *cr = c + j * ldc + c0;
                __m512 b0 = _mm512_maskz_loadu_ps(k0, cr), b1 = _mm512_maskz_loadu_ps(k1, cr + 16),
                       b2 = _mm512_maskz_loadu_ps(k2, cr + 32);
#define PROW(i)                                          \
    {                                                    \
        __m512 a = _mm512_set1_ps(pr[i][j]);             \
        x##i##0 = _mm512_fmadd_ps(a, b0, x##i##0);       \
        x##i##1 = _mm512_fmadd_ps(a, b1, x##i##1);       \
        x##i##2 = _mm512_fmadd_ps(a, b2, x##i##2);       \
    }
                R8(PROW)
#undef PROW
            }
#define ST(i)                                                                                            \
    if (i < ih) {                                                                                        \
        float *orow = o + (i0 + i) * ldo + c0;                                                           \
        _mm512_mask_storeu_ps(orow, k0, _mm512_add_ps(_mm512_maskz_loadu_ps(k0, orow), x##i##0));         \
        _mm512_mask_storeu_ps(orow + 16, k1, _mm512_add_ps(_mm512_maskz_loadu_ps(k1, orow + 16), x##i##1)); \
        _mm512_mask_storeu_ps(orow + 32, k2, _mm512_add_ps(_mm512_maskz_loadu_ps(k2, orow + 32), x##i##2)); \
    }
            R8(ST)
#undef ST
        }
    }
}

static void axpy_w(float a, const cpu_wmat *w, int64_t r, float *y) {
    const int64_t K = w->K;
    __m512 av = _mm512_set1_ps(a);
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 km = m16((int)(K - k));
        __m512 sc = _mm512_set1_ps(w->scale ? w->scale[(r / CPU_QB) * w->scale_ld + k / CPU_QB] : 1.0f);
        __m512 wv = wload16(w, r, k, km, sc);
        _mm512_mask_storeu_ps(y + k, km, _mm512_fmadd_ps(av, wv, _mm512_maskz_loadu_ps(km, y + k)));
    }
}

const cpu_kern cpu_kern_avx512 = {
    .name = "avx512",
    .mr = MR,
    .nr = NR,
    .kc = 256,
    .mc = 168,
    .pack_a = pack_a,
    .pack_b = pack_b,
    .pack_b_kn = pack_b_kn,
    .ukr = ukr,
    .gemv = gemv,
    .fmr = FMR,
    .fnr = FNR,
    .ukr_fp8 = ukr_fp8,
    .gemv_fp8 = gemv_fp8,
    .bmr = 0,
    .bnr = 0,
    .pack_a_bf16 = NULL,
    .pack_b_bf16 = NULL,
    .ukr_bf16 = NULL,
    .dot = dot,
    .axpy = axpy,
    .rmsnorm_row = cpu_rmsnorm_row_scalar,
    .swiglu_row = swiglu_row,
    .add_row = add_row,
    .expsum = expsum,
    .scores = scores,
    .pv = pv,
    .axpy_w = axpy_w,
};

/* The same kernels plus vdpbf16ps for bf16 weights (kern_avx512bf16.c). */
const cpu_kern cpu_kern_avx512bf16 = {
    .name = "avx512bf16",
    .mr = MR,
    .nr = NR,
    .kc = 256,
    .mc = 168,
    .pack_a = pack_a,
    .pack_b = pack_b,
    .pack_b_kn = pack_b_kn,
    .ukr = ukr,
    .gemv = gemv,
    .fmr = FMR,
    .fnr = FNR,
    .ukr_fp8 = ukr_fp8,
    .gemv_fp8 = gemv_fp8,
    .bmr = CPU_BF16_MR,
    .bnr = CPU_BF16_NR,
    .pack_a_bf16 = cpu_pack_a_bf16_avx512bf16,
    .pack_b_bf16 = cpu_pack_b_bf16_avx512bf16,
    .ukr_bf16 = cpu_ukr_bf16_avx512bf16,
    .dot = dot,
    .axpy = axpy,
    .rmsnorm_row = cpu_rmsnorm_row_scalar,
    .swiglu_row = swiglu_row,
    .add_row = add_row,
    .expsum = expsum,
    .scores = scores,
    .pv = pv,
    .axpy_w = axpy_w,
};
