/* kern_mla_avx512.c - absorbed-MLA decode, f32 FMA (AVX-512F).
 *
 * One thread, one range of cache rows, blocks of MLA_KB rows. Lanes (query rows:
 * token x head) sit in the vector lanes, so the online softmax is vertical:
 *   scores   S[r][lanes] = sum_k c[r][k] qT[k][lanes]: 16 cache rows x 16 lanes per
 *            tile, c[r][k] broadcast straight from the f32 cache, qT (q transposed
 *            once per call) one vector load per k;
 *   softmax  per lane vector: scale, causal mask, block max, running max / sum,
 *            p = exp(s - m) in place, corr = exp(m_old - m_new);
 *   P.V      O[lane][c] = O corr + sum_r p[r][lane] c[r][c]: 8 lanes x 48 columns
 *            per tile, p broadcast, cache rows read in place; O is rescaled as the
 *            tile is loaded (once per block).
 * Every product is an f32 FMA, so results agree with the reference at f32
 * rounding (the accumulation order differs). */
#include <math.h>

#include "kern_avx512_inl.h"

#define MLA_KB 64 /* cache rows per block */
#define RT 16     /* cache rows per scores tile */
#define LT 8      /* lanes per P.V tile */

/* nearest-even bf16 rounding of finite values, kept as f32 */
static inline __m512 round_bf16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}

void cpu_mla_softmax_avx512(float *S, int kn, int nqv, int64_t kb, const int32_t *lim, float scale, float *m, float *l,
                            float *corr, uint32_t *Pp) {
    const int nl = nqv * 16;
    const __m512 ninf = _mm512_set1_ps(-INFINITY), sc = _mm512_set1_ps(scale);
    for (int v = 0; v < nqv; v++) {
        __m512i lv = _mm512_loadu_si512(lim + v * 16);
        __m512 bm = ninf;
        for (int r = 0; r < kn; r++) {
            float *s = S + (int64_t)r * nl + v * 16;
            __mmask16 ok = _mm512_cmp_epi32_mask(_mm512_set1_epi32((int)(kb + r)), lv, _MM_CMPINT_LE);
            __m512 x = _mm512_mask_mul_ps(ninf, ok, _mm512_loadu_ps(s), sc);
            _mm512_storeu_ps(s, x);
            bm = _mm512_max_ps(bm, x);
        }
        __m512 m0 = _mm512_loadu_ps(m + v * 16), m1 = _mm512_max_ps(m0, bm);
        __mmask16 live = _mm512_cmp_ps_mask(m1, ninf, _CMP_NEQ_OQ);  /* lanes with a key so far */
        __mmask16 had = _mm512_cmp_ps_mask(m0, ninf, _CMP_NEQ_OQ);   /* ... before this block */
        __m512 cr = _mm512_mask_blend_ps(live, _mm512_set1_ps(1.0f),
                                         _mm512_maskz_mov_ps(had, exp16(_mm512_sub_ps(m0, m1))));
        __m512 sum = _mm512_setzero_ps();
        for (int r = 0; r < kn; r++) {
            float *s = S + (int64_t)r * nl + v * 16;
            __m512 x = _mm512_loadu_ps(s);
            __mmask16 ok = _mm512_mask_cmp_ps_mask(live, x, ninf, _CMP_NEQ_OQ);
            __m512 p = _mm512_maskz_mov_ps(ok, exp16(_mm512_sub_ps(x, m1)));
            if (!Pp) {
                _mm512_storeu_ps(s, p);
                sum = _mm512_add_ps(sum, p);
                continue;
            }
            /* bf16 P: rows 2r2, 2r2 + 1 as the pairs of row pair r2 (an odd last row paired
             * with zeros), each value's high half */
            p = round_bf16(p);
            sum = _mm512_add_ps(sum, p);
            __m512i u = _mm512_castps_si512(p), *dst = (__m512i *)(Pp + (int64_t)(r / 2) * nl + v * 16);
            if (r % 2 == 0) _mm512_storeu_si512(dst, _mm512_srli_epi32(u, 16));
            else _mm512_storeu_si512(dst, _mm512_or_si512(_mm512_loadu_si512(dst), u));
        }
        _mm512_storeu_ps(l + v * 16, _mm512_fmadd_ps(_mm512_loadu_ps(l + v * 16), cr, sum));
        _mm512_storeu_ps(m + v * 16, m1);
        _mm512_storeu_ps(corr + v * 16, cr);
    }
}

size_t cpu_mla_dec_scratch_avx512(const cpu_mla_dec *d) {
    size_t nl = (size_t)d->nqv * 16;
    return (nl * (size_t)d->D + MLA_KB * nl + nl + 64 + (d->cache16 ? MLA_KB * (size_t)d->D : 0)) * 4;
}

/* S[r][nl] for rows r < kn of cb (rows past kn computed on a repeated row, not stored);
 * nx: the next block (nxb bytes) to request meanwhile, its pages walked first, or NULL */
static void scores(const float *qT, int nqv, const float *cb, int64_t D, int kn, float *S, const char *nx, int64_t nxb) {
    const int nl = nqv * 16;
    const uintptr_t na = (uintptr_t)nx, npg = span_pages(nx, nxb);
    uintptr_t pg = 0;
    const int64_t step = nx ? (nxb * RT / kn + D - 1) / D : 0;
    for (int r0 = 0; r0 < kn; r0 += RT) {
        const int re = r0 + RT < kn ? r0 + RT : kn;
        walk_pages(na, &pg, npg * (uintptr_t)re / (uintptr_t)kn);
        const char *p = nx ? nx + nxb * r0 / kn : (const char *)cb;
        const float *cr[RT];
#pragma GCC unroll 16
        for (int i = 0; i < RT; i++) cr[i] = cb + (r0 + i < kn ? r0 + i : kn - 1) * D;
        for (int v = 0; v < nqv; v++) {
            __m512 acc[RT];
#pragma GCC unroll 16
            for (int i = 0; i < RT; i++) acc[i] = _mm512_setzero_ps();
            const float *qv = qT + v * 16;
            const int64_t st = v == 0 ? step : 0; /* the requests over the first lanes' steps */
            for (int64_t k = 0; k < D; k++, p += st) {
                _mm_prefetch(p, _MM_HINT_T1);
                __m512 b = _mm512_loadu_ps(qv + k * nl);
#pragma GCC unroll 16
                for (int i = 0; i < RT; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(cr[i][k]), b, acc[i]);
            }
#pragma GCC unroll 16
            for (int i = 0; i < RT; i++)
                if (r0 + i < kn) _mm512_storeu_ps(S + (int64_t)(r0 + i) * nl + v * 16, acc[i]);
        }
    }
}

/* O[lane][C] = O corr + sum_r P[r][lane] cb[r][:C], lanes < nq */
static void pv(const float *P, int nl, int nq, const float *cb, int64_t D, int kn, int64_t C, const float *corr,
               float *O) {
    for (int i0 = 0; i0 < nq; i0 += LT) {
        int ih = nq - i0 < LT ? nq - i0 : LT;
        for (int64_t c0 = 0; c0 < C; c0 += 48) {
            __mmask16 k0 = m16((int)(C - c0)), k1 = m16((int)(C - c0 - 16)), k2 = m16((int)(C - c0 - 32));
            __m512 x0[LT], x1[LT], x2[LT];
#pragma GCC unroll 8
            for (int i = 0; i < LT; i++) {
                const float *orow = O + (int64_t)(i0 + (i < ih ? i : 0)) * C + c0;
                __m512 cv = _mm512_set1_ps(corr[i0 + i]);
                x0[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k0, orow), cv);
                x1[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k1, orow + 16), cv);
                x2[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k2, orow + 32), cv);
            }
            for (int r = 0; r < kn; r++) {
                const float *crow = cb + r * D + c0, *pr = P + (int64_t)r * nl + i0;
                __m512 b0 = _mm512_maskz_loadu_ps(k0, crow), b1 = _mm512_maskz_loadu_ps(k1, crow + 16),
                       b2 = _mm512_maskz_loadu_ps(k2, crow + 32);
#pragma GCC unroll 8
                for (int i = 0; i < LT; i++) {
                    __m512 a = _mm512_set1_ps(pr[i]);
                    x0[i] = _mm512_fmadd_ps(a, b0, x0[i]);
                    x1[i] = _mm512_fmadd_ps(a, b1, x1[i]);
                    x2[i] = _mm512_fmadd_ps(a, b2, x2[i]);
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < LT; i++)
                if (i < ih) {
                    float *orow = O + (int64_t)(i0 + i) * C + c0;
                    _mm512_mask_storeu_ps(orow, k0, x0[i]);
                    _mm512_mask_storeu_ps(orow + 16, k1, x1[i]);
                    _mm512_mask_storeu_ps(orow + 32, k2, x2[i]);
                }
        }
    }
}

void cpu_mla_dec_avx512(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O, void *scratch,
                        int prep) {
    const int nqv = d->nqv, nl = nqv * 16, nq = d->nq;
    const int64_t D = d->D, C = d->C;
    float *qT = scratch, *S = qT + (int64_t)nl * D, *corr = S + MLA_KB * nl, *wide = corr + nl + 64;
    for (int64_t k = 0; k < D && prep; k++)
        for (int i = 0; i < nl; i++) qT[k * nl + i] = i < nq ? d->q[(int64_t)i * D + k] : 0.0f;
    for (int64_t kb = k0; kb < k1; kb += MLA_KB) {
        int kn = (int)(k1 - kb < MLA_KB ? k1 - kb : MLA_KB);
        const float *cb = d->cache16 ? wide : d->cache + kb * D;
        if (d->cache16) /* a bf16 cache: the block widened (exact) */
            for (int64_t i = 0; i < kn * D; i += 16)
                _mm512_storeu_ps(wide + i, bf16x16(_mm256_maskz_loadu_epi16(m16((int)(kn * D - i)), d->cache16 + kb * D + i)));
        /* the next block of this range, requested (its pages walked) during the scores: a
         * cold call's attention took 13-15% less, a cached one 6-8% (in-process A/B) */
        scores(qT, nqv, cb, D, kn, S, kb + 2 * MLA_KB <= k1 ? mla_dec_row(d, kb + MLA_KB) : NULL,
               MLA_KB * mla_dec_rowb(d));
        cpu_mla_softmax_avx512(S, kn, nqv, kb, d->lim, d->scale, m, l, corr, NULL);
        pv(S, nl, nq, cb, D, kn, C, corr, O);
    }
}

/* y[0:K) = sum_d q[d] w[r0 + d][0:K) (K = w->K): q_abs of one token and head, rows in
 * order (the same f32 operations as an axpy per row); rows are requested QA_PD ahead,
 * and over the last ones the first rows of rnext (the caller's next head).
 *   bf16: one pass, y kept in L1 (stored and reloaded each row), so the rows stream
 *         from memory as they lie while the FMAs run (cold, the bound: 2 MiB for 16
 *         heads; 256-column passes with y in registers took 30% longer from memory).
 *   fp8:  256 columns a pass in 16 accumulators (the decode makes fp8 compute-bound:
 *         one pass with y in L1 took 1.9x as long in cache, 1.5x from memory), each
 *         128-column block's scale folded into the broadcast query; the first pass
 *         requests whole rows, the later ones find them in cache.
 * Other dtypes: 256 columns at a time in 16 accumulators, scales per value. */
#define QA_PD 8
/* acc[i] += f (f0 for i < 8, f1 after) x the 16 e4m3 values at row + 16 i; raw: f
 * carries the decode's 2^120 (E4M3_FOLDS) */
static inline __attribute__((always_inline)) void qabs_fp8_row(__m512 acc[16], const char *row, const __mmask16 *km,
                                                              int whole, float f0, float f1, int raw) {
    const __m512 q0 = _mm512_set1_ps(f0), q1 = _mm512_set1_ps(f1);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        __m128i b = whole ? _mm_loadu_si128((const __m128i *)(row + 16 * i)) : _mm_maskz_loadu_epi8(km[i], row + 16 * i);
        acc[i] = _mm512_fmadd_ps(i < 8 ? q0 : q1, raw ? e4m3raw16(b) : e4m3x16(b), acc[i]);
    }
}

/* fp8, one pass: columns [c0, c0 + 256), all of them when whole */
static inline __attribute__((always_inline)) void qabs_fp8_pass(const float *q, int64_t nrows, const cpu_wmat *w,
                                                               int64_t r0, float *y, int64_t rnext, int64_t c0,
                                                               int whole) {
    const int64_t K = w->K;
    const char *base = w->data;
    const int first = c0 == 0, last = c0 + 256 >= K;
    __mmask16 km[16];
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps(), km[i] = whole ? 0xffff : m16((int)(K - c0 - 16 * i));
    for (int64_t d = 0; d < nrows; d++) {
        const char *pf = first && d + QA_PD < nrows ? base + (r0 + d + QA_PD) * K
                         : last && d + QA_PD >= nrows && rnext >= 0 ? base + (rnext + d + QA_PD - nrows) * K
                                                                    : NULL;
        if (pf)
            for (int64_t l = 0; l < K; l += 64) _mm_prefetch(pf + l, _MM_HINT_T0);
        const char *row = base + (r0 + d) * K + c0;
        const float *sr = w->scale + ((r0 + d) / CPU_QB) * w->scale_ld + c0 / CPU_QB;
        const float f0 = q[d] * sr[0], f1 = whole || c0 + 128 < K ? q[d] * sr[1] : 0.0f;
        if (E4M3_FOLDS(f0) && E4M3_FOLDS(f1)) /* the decode's x 2^120 in the broadcast */
            qabs_fp8_row(acc, row, km, whole, f0 * 0x1p120f, f1 * 0x1p120f, 1);
        else
            qabs_fp8_row(acc, row, km, whole, f0, f1, 0);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) _mm512_mask_storeu_ps(y + c0 + 16 * i, km[i], acc[i]);
}

void cpu_mla_qabs_avx512(const float *q, int64_t nrows, const cpu_wmat *w, int64_t r0, float *y, int64_t rnext) {
    const int64_t K = w->K;
    if (w->dtype == FM_F8_E4M3 && w->scale) {
        int64_t c0 = 0;
        for (; c0 + 256 <= K; c0 += 256) qabs_fp8_pass(q, nrows, w, r0, y, rnext, c0, 1);
        if (c0 < K) qabs_fp8_pass(q, nrows, w, r0, y, rnext, c0, 0);
        return;
    }
    if (w->dtype == FM_BF16 && K % 16 == 0) {
        const uint16_t *base = w->data;
        for (int64_t k = 0; k < K; k += 16) _mm512_storeu_ps(y + k, _mm512_setzero_ps());
        for (int64_t d = 0; d < nrows; d++) {
            int64_t pr = d + QA_PD < nrows ? r0 + d + QA_PD : rnext >= 0 ? rnext + d + QA_PD - nrows : r0 + d;
            const char *pf = (const char *)(base + pr * K);
            for (int64_t l = 0; l < K * 2; l += 64) _mm_prefetch(pf + l, _MM_HINT_T0);
            const __m512 qd = _mm512_set1_ps(q[d]);
            const uint16_t *wd = base + (r0 + d) * K;
            for (int64_t k = 0; k < K; k += 16)
                _mm512_storeu_ps(y + k, _mm512_fmadd_ps(qd, bf16x16(_mm256_loadu_si256((const __m256i *)(wd + k))),
                                                        _mm512_loadu_ps(y + k)));
        }
        return;
    }
    for (int64_t c0 = 0; c0 < K; c0 += 256) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t d = 0; d < nrows; d++) {
            __m512 qd = _mm512_set1_ps(q[d]);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                int64_t k = c0 + 16 * i;
                __m512 sc = _mm512_set1_ps(w->scale && k < K ? w->scale[((r0 + d) / CPU_QB) * w->scale_ld + k / CPU_QB] : 1.0f);
                acc[i] = _mm512_fmadd_ps(qd, wload16(w, r0 + d, k, m16((int)(K - k)), sc), acc[i]);
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) _mm512_mask_storeu_ps(y + c0 + 16 * i, m16((int)(K - c0 - 16 * i)), acc[i]);
    }
}
