/* kern_avx512_inl.h - AVX-512 helpers shared by kern_avx512.c and
 * kern_avx512bf16.c (both compiled with AVX-512 F/BW/VL/DQ). Static inline only. */
#ifndef FM_KERN_AVX512_INL_H
#define FM_KERN_AVX512_INL_H

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu.h"

static inline __mmask16 m16(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* 16 e4m3 codes -> their exact f32 values times 2^-120 (raw) and their values
 * (e4m3x16). The 7 magnitude bits placed at bits 20..26 read as an f32 of exponent
 * e-127 (a denormal for e = 0); x 2^120 makes it exactly (1 + m/8) 2^(e-7) or m 2^-9.
 * Sign from the sign-extended byte. */
static inline __m512 e4m3raw16(__m128i c) {
    __m512i v = _mm512_cvtepi8_epi32(c);
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(v, 20), _mm512_set1_epi32((int)0x87f00000u)));
}
static inline __m512 e4m3x16(__m128i c) { return _mm512_mul_ps(e4m3raw16(c), _mm512_set1_ps(0x1p120f)); }

/* The x 2^120 folded into the other factor f of a product (a block scale, a query
 * value): raw (f 2^120) is the same exact real as (raw 2^120) f, rounded once, so the
 * same bits - as long as f 2^120 is finite, which |f| < 2^7 keeps. One multiply fewer
 * per 16 weights, a third of an fp8 GEMV's FMA-port work. */
#define E4M3_FOLDS(f) (fabsf(f) < 0x1p7f)

static inline __m512 bf16x16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

/* Row n, 16 columns from k (masked by km), decoded to f32; fp8 values times scale sc. */
static inline __m512 wload16(const cpu_wmat *w, int64_t n, int64_t k, __mmask16 km, __m512 sc) {
    int64_t i = n * w->K + k;
    switch (w->dtype) {
    case FM_F32: return _mm512_maskz_loadu_ps(km, (const float *)w->data + i);
    case FM_BF16: return bf16x16(_mm256_maskz_loadu_epi16(km, (const uint16_t *)w->data + i));
    case FM_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, (const uint16_t *)w->data + i));
    default: return _mm512_mul_ps(e4m3x16(_mm_maskz_loadu_epi8(km, (const uint8_t *)w->data + i)), sc);
    }
}

/* Packing B reads short runs (one step of columns) from 16 rows at a time, which the
 * hardware does not fetch far enough ahead: each step of a 16-row group j requests the
 * same columns of the rows PACK_AHEAD further (past the slice's last rows: the first
 * rows of the next slice of kc columns). Returns the first of those rows at the step's
 * columns k0 (es bytes an element; add (i K + k) es for row i, column k0 + k) and sets
 * *an to how many there are (0: none, the caller requests nothing). */
#define PACK_AHEAD 32
static inline const char *pack_ahead(const cpu_wmat *w, int64_t es, int64_t n0, int nn, int64_t k0, int kc, int j, int *an) {
    int64_t r = j + PACK_AHEAD, k = k0;
    if (r >= nn) r -= nn, k += kc;
    *an = k < w->K && r < nn ? (int)(nn - r < 16 ? nn - r : 16) : 0;
    return *an ? (const char *)w->data + ((n0 + r) * w->K + k) * es : NULL;
}

/* One load in each of the 4 KiB pages [*pg, e) of the span from a: at a, then at each
 * page's start. The MLA decode kernels walk their next block's pages so, spread over
 * the current block's work: under nested paging a line request into a page not yet
 * walked hides nothing (docs/cpu.md). */
static inline void walk_pages(uintptr_t a, uintptr_t *pg, uintptr_t e) {
    for (; *pg < e; ++*pg) (void)*(const volatile char *)(*pg ? ((a >> 12) + *pg) << 12 : a);
}
/* The 4 KiB pages that n bytes from p touch (0 for NULL). */
static inline uintptr_t span_pages(const char *p, int64_t n) {
    return p ? (((uintptr_t)p + (uintptr_t)n - 1) >> 12) - ((uintptr_t)p >> 12) + 1 : 0;
}
/* The MLA decode kernels' cache as it lies in memory: row r's address, bytes a row. */
static inline const char *mla_dec_row(const cpu_mla_dec *d, int64_t r) {
    return d->cache16 ? (const char *)(d->cache16 + r * d->D) : (const char *)(d->cache + r * d->D);
}
static inline int64_t mla_dec_rowb(const cpu_mla_dec *d) { return d->cache16 ? d->D * 2 : d->D * 4; }

/* In-register transpose of 16 vectors of 16 32-bit lanes. */
static inline void tr16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
        __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* now r[4q + j] holds, per 128-bit lane L, row (4q + lane-element) of column 4L + j */
    for (int i = 0; i < 4; i++) {
        __m512 a = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88), b = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
        __m512 c = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88), d = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
        t[i] = _mm512_shuffle_f32x4(a, c, 0x88);
        t[8 + i] = _mm512_shuffle_f32x4(a, c, 0xdd);
        t[4 + i] = _mm512_shuffle_f32x4(b, d, 0x88);
        t[12 + i] = _mm512_shuffle_f32x4(b, d, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* exp(x) for 16 lanes: n = round(x log2 e), r = x - n ln2 (two parts), a degree-6
 * polynomial (Cephes expf, ~1 ulp), times 2^n by vscalefps (underflows to 0). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* The micro-kernels' epilogue: accumulators c<i>0, c<i>1 (i < R, REP listing 0..R-1)
 * stored to c[mr x nr] (ldc floats a row), added to what is there when add. */
#define REP7(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6)
#define REP14(M) REP7(M) M(7) M(8) M(9) M(10) M(11) M(12) M(13)
#define ST_ADD(i)                                                                          \
    _mm512_storeu_ps(c + i * ldc, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc), c##i##0));   \
    _mm512_storeu_ps(c + i * ldc + 16, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc + 16), c##i##1));
#define ST_SET(i)                           \
    _mm512_storeu_ps(c + i * ldc, c##i##0); \
    _mm512_storeu_ps(c + i * ldc + 16, c##i##1);
#define ST_TMP(i) t[i][0] = c##i##0, t[i][1] = c##i##1;
#define STORE_TILE_R(REP, R, c, ldc, mr, nr, add)                                   \
    do {                                                                            \
        if ((mr) == (R) && (nr) == 32) {                                            \
            if (add) {                                                              \
                REP(ST_ADD)                                                         \
            } else {                                                                \
                REP(ST_SET)                                                         \
            }                                                                       \
            break;                                                                  \
        }                                                                           \
        __m512 t[R][2];                                                             \
        REP(ST_TMP)                                                                 \
        __mmask16 k0 = m16(nr), k1 = m16((nr) - 16);                                \
        for (int i_ = 0; i_ < (mr); i_++) {                                         \
            float *ci = (c) + i_ * (ldc);                                           \
            __m512 v0 = t[i_][0], v1 = t[i_][1];                                    \
            if (add) {                                                              \
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, ci));              \
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, ci + 16));         \
            }                                                                       \
            _mm512_mask_storeu_ps(ci, k0, v0);                                      \
            _mm512_mask_storeu_ps(ci + 16, k1, v1);                                 \
        }                                                                           \
    } while (0)
#define STORE_TILE_14x32(c, ldc, mr, nr, add) STORE_TILE_R(REP14, 14, c, ldc, mr, nr, add)

/* A 14 x 32 micro-kernel's body around its k loop KLOOP(REP) (which updates the
 * accumulators c<i>0, c<i>1 of the rows REP lists): a last strip of 7 rows or fewer
 * runs the 7-row form, half the products and the same operations per row. */
#define UKR_ACC(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define UKR_RUN(KLOOP, c, ldc, mr, nr, add)                 \
    do {                                                    \
        if ((mr) <= 7) {                                    \
            REP7(UKR_ACC)                                   \
            KLOOP(REP7)                                     \
            STORE_TILE_R(REP7, 7, c, ldc, mr, nr, add);     \
        } else {                                            \
            REP14(UKR_ACC)                                  \
            KLOOP(REP14)                                    \
            STORE_TILE_14x32(c, ldc, mr, nr, add);          \
        }                                                   \
    } while (0)

#endif
