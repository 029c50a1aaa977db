/* kern_mla_avx512bf16.c - absorbed-MLA decode with vdpbf16ps (bf16-compute mode).
 *
 * The structure of kern_mla_avx512.c, with each block of cache rows converted to
 * bf16 once (nearest even) and reused by every lane (head):
 *   Cb [rows][D/2]     pairs along the row (k, k+1): the scores' broadcast operand;
 *   Cp [rows/2][C]     pairs across two rows (c[2r][j], c[2r+1][j]): P.V's vector operand.
 * q_abs | q_pe is rounded to bf16 once per call, as pairs [D/2][lanes]; P is rounded
 * to bf16 (the running sum adds the rounded values), as pairs of rows [rows/2][lanes].
 * Scores, the softmax and O accumulate in f32 (vdpbf16ps: two exact products added
 * per lane; the hardware flushes denormals). */
#include <math.h>

#include "kern_avx512_inl.h"

#define MLA_KB 64 /* cache rows per block (even) */
#define RT 16
#define LT 8

static inline int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }

size_t cpu_mla_dec_scratch_avx512bf16(const cpu_mla_dec *d) {
    size_t nl = (size_t)d->nqv * 16, D2 = (size_t)pad16((d->D + 1) / 2), C = (size_t)pad16(d->C);
    return (D2 * nl + MLA_KB * D2 + MLA_KB / 2 * C + MLA_KB * nl + MLA_KB / 2 * nl + nl + 64) * 4;
}

/* acc += pairs(b) . pairs(broadcast *p), the broadcast embedded in vdpbf16ps (the
 * intrinsics compile it to a separate vpbroadcastd: one more instruction per product) */
static inline __m512 dp_bcst(__m512 acc, __m512bh b, const uint32_t *p) {
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(b), "m"(*p));
    return acc;
}

/* 16-bit lanes [a0..a15 b0..b15] -> [a0 b0 a1 b1 ...] */
static inline __m512i interleave_idx(void) {
    return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                            19, 3, 18, 2, 17, 1, 16, 0);
}
static inline __m512i pairs16(__m512 a, __m512 b, __m512i idx) {
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

void cpu_mla_dec_avx512bf16(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O,
                            void *scratch) {
    const int nqv = d->nqv, nl = nqv * 16, nq = d->nq;
    const int64_t D = d->D, C = d->C, D2 = pad16((D + 1) / 2), D2u = (D + 1) / 2, ldp = pad16(C);
    uint32_t *Qp = scratch, *Cb = Qp + D2 * nl, *Cp = Cb + MLA_KB * D2;
    float *S = (float *)(Cp + MLA_KB / 2 * ldp);
    uint32_t *Pp = (uint32_t *)(S + MLA_KB * nl);
    float *corr = (float *)(Pp + MLA_KB / 2 * nl);
    const __m512i idx = interleave_idx();
    /* a, b: 32 bf16 of two rows -> pairs (a[j], b[j]) for j < 16 (ilo) and j >= 16 (ihi) */
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37,
                                         5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
    for (int64_t k2 = 0; k2 < D2; k2++)
        for (int i = 0; i < nl; i++) {
            const float *qi = d->q + (int64_t)i * D;
            uint32_t lo = i < nq && 2 * k2 < D ? cpu_bf16_from_f32(qi[2 * k2]) : 0;
            uint32_t hi = i < nq && 2 * k2 + 1 < D ? cpu_bf16_from_f32(qi[2 * k2 + 1]) : 0;
            Qp[k2 * nl + i] = lo | hi << 16;
        }
    for (int64_t kb = k0; kb < k1; kb += MLA_KB) {
        const int kn = (int)(k1 - kb < MLA_KB ? k1 - kb : MLA_KB), kn2 = (kn + 1) / 2;
        const float *cb = d->cache + kb * D;
        /* convert the block: Cb, then Cp (the rows are in L1/L2 by then) */
        /* the next block is requested while the scores run (two lines per step) */
        const float *nx = kb + 2 * MLA_KB <= k1 && D2u * 32 >= RT * D ? cb + MLA_KB * D : NULL;
        for (int r = 0; r < kn; r++) {
            const float *src = cb + r * D;
            uint32_t *dst = Cb + r * D2;
            if (D % 32 == 0) {
                for (int64_t k = 0; k < D; k += 32)
                    _mm512_storeu_si512(dst + k / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16),
                                                                                  _mm512_loadu_ps(src + k)));
                continue;
            }
            for (int64_t k = 0; k < D; k += 32) {
                __m512 lo = _mm512_maskz_loadu_ps(m16((int)(D - k)), src + k);
                __m512 hi = _mm512_maskz_loadu_ps(m16((int)(D - k - 16)), src + k + 16);
                _mm512_mask_storeu_epi32(dst + k / 2, m16((int)((D - k + 1) / 2)), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        }
        for (int r2 = 0; r2 < kn2 && C % 32 == 0; r2++) { /* from Cb: two rows' bf16 interleaved */
            const uint32_t *ra = Cb + 2 * r2 * D2, *rb = ra + D2;
            int hasb = 2 * r2 + 1 < kn;
            uint32_t *dst = Cp + r2 * ldp;
            for (int64_t c = 0; c < C; c += 32) {
                __m512i a = _mm512_loadu_si512(ra + c / 2), b = hasb ? _mm512_loadu_si512(rb + c / 2) : _mm512_setzero_si512();
                _mm512_storeu_si512(dst + c, _mm512_permutex2var_epi16(a, ilo, b));
                _mm512_storeu_si512(dst + c + 16, _mm512_permutex2var_epi16(a, ihi, b));
            }
        }
        for (int r2 = 0; r2 < kn2 && C % 32 != 0; r2++) {
            const float *ra = cb + 2 * r2 * D, *rb = ra + D;
            int hasb = 2 * r2 + 1 < kn;
            uint32_t *dst = Cp + r2 * ldp;
            for (int64_t c = 0; c < C; c += 16) {
                __mmask16 km = m16((int)(C - c));
                __m512 a = _mm512_maskz_loadu_ps(km, ra + c), b = _mm512_maskz_loadu_ps(hasb ? km : 0, rb + c);
                _mm512_mask_storeu_epi32(dst + c, km, pairs16(a, b, idx));
            }
        }
        /* scores: S[r][lanes] */
        for (int r0 = 0; r0 < kn; r0 += RT) {
            const uint32_t *cr[RT];
#pragma GCC unroll 16
            for (int i = 0; i < RT; i++) cr[i] = Cb + (r0 + i < kn ? r0 + i : kn - 1) * D2;
            for (int v = 0; v < nqv; v++) {
                __m512 acc[RT];
#pragma GCC unroll 16
                for (int i = 0; i < RT; i++) acc[i] = _mm512_setzero_ps();
                const uint32_t *qv = Qp + v * 16;
                const float *pf = nx && v == 0 ? nx + (int64_t)r0 * D : NULL, *pfe = pf ? pf + RT * D : NULL;
                for (int64_t k2 = 0; k2 < D2u; k2++) {
                    if (pf && pf < pfe) {
                        _mm_prefetch((const char *)pf, _MM_HINT_T1);
                        _mm_prefetch((const char *)(pf + 16), _MM_HINT_T1);
                        pf += 32;
                    }
                    __m512bh b = (__m512bh)_mm512_loadu_si512(qv + k2 * nl);
#pragma GCC unroll 16
                    for (int i = 0; i < RT; i++)
                        acc[i] = dp_bcst(acc[i], b, cr[i] + k2);
                }
#pragma GCC unroll 16
                for (int i = 0; i < RT; i++)
                    if (r0 + i < kn) _mm512_storeu_ps(S + (int64_t)(r0 + i) * nl + v * 16, acc[i]);
            }
        }
        cpu_mla_softmax_avx512(S, kn, nqv, kb, d->lim, d->scale, m, l, corr, 1);
        for (int r2 = 0; r2 < kn2; r2++)
            for (int v = 0; v < nqv; v++) {
                __m512 a = _mm512_loadu_ps(S + (int64_t)(2 * r2) * nl + v * 16);
                __m512 b = 2 * r2 + 1 < kn ? _mm512_loadu_ps(S + (int64_t)(2 * r2 + 1) * nl + v * 16) : _mm512_setzero_ps();
                _mm512_storeu_si512(Pp + r2 * nl + v * 16, pairs16(a, b, idx));
            }
        /* P.V: O[lane][c] = O corr + sum over row pairs */
        for (int i0 = 0; i0 < nq; i0 += LT) {
            int ih = nq - i0 < LT ? nq - i0 : LT;
            for (int64_t c0 = 0; c0 < C; c0 += 48) {
                __mmask16 q0 = m16((int)(C - c0)), q1 = m16((int)(C - c0 - 16)), q2 = m16((int)(C - c0 - 32));
                __m512 x0[LT], x1[LT], x2[LT];
#pragma GCC unroll 8
                for (int i = 0; i < LT; i++) {
                    const float *orow = O + (int64_t)(i0 + (i < ih ? i : 0)) * C + c0;
                    __m512 cv = _mm512_set1_ps(corr[i0 + i]);
                    x0[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(q0, orow), cv);
                    x1[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(q1, orow + 16), cv);
                    x2[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(q2, orow + 32), cv);
                }
                for (int r2 = 0; r2 < kn2; r2++) {
                    const uint32_t *crow = Cp + r2 * ldp + c0, *pr = Pp + r2 * nl + i0;
                    __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(q0, crow);
                    __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(q1, crow + 16);
                    __m512bh b2 = (__m512bh)_mm512_maskz_loadu_epi32(q2, crow + 32);
#pragma GCC unroll 8
                    for (int i = 0; i < LT; i++) {
                        x0[i] = dp_bcst(x0[i], b0, pr + i);
                        x1[i] = dp_bcst(x1[i], b1, pr + i);
                        x2[i] = dp_bcst(x2[i], b2, pr + i);
                    }
                }
#pragma GCC unroll 8
                for (int i = 0; i < LT; i++)
                    if (i < ih) {
                        float *orow = O + (int64_t)(i0 + i) * C + c0;
                        _mm512_mask_storeu_ps(orow, q0, x0[i]);
                        _mm512_mask_storeu_ps(orow + 16, q1, x1[i]);
                        _mm512_mask_storeu_ps(orow + 32, q2, x2[i]);
                    }
            }
        }
    }
}
