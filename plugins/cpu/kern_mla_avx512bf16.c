/* kern_mla_avx512bf16.c - absorbed-MLA decode with vdpbf16ps (bf16-compute mode).
 *
 * The structure of kern_mla_avx512.c on blocks of 128 cache rows, each in bf16 once
 * and reused by every lane (head):
 *   Cb [rows][D/2]     pairs along the row (k, k+1): the scores' broadcast operand. A
 *                      bf16 cache of even row length is this already (read in place);
 *                      an f32 cache is converted (nearest even), odd rows copied.
 *   Cp [rows/2][C]     pairs across two rows (c[2r][j], c[2r+1][j]): P.V's vector
 *                      operand, interleaved with in-lane unpacks (columns of a group
 *                      of 32 permuted; O follows, see col_of).
 * q_abs | q_pe is rounded to bf16 once per thread, as pairs [D/2][lanes]; P is rounded
 * to bf16 (the running sum adds the rounded values), as pairs of rows [rows/2][lanes].
 * Scores, the softmax and O accumulate in f32 (vdpbf16ps: two exact products added
 * per lane; the hardware flushes denormals). The next block's rows are requested
 * while a block runs. */
#include <math.h>
#include <string.h>

#include "kern_avx512_inl.h"

#define MLA_KB 128 /* cache rows per block (even) */
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

/* S[i][lanes] = q . row i, rows i < nr of ld uint32 pairs each from cb (rows past nr
 * computed on the last row, not stored); pf: this tile's share of the next block's
 * rows (rowb bytes each) to request, or NULL. */
static inline __attribute__((always_inline)) void scores_tile(const uint32_t *cb, int64_t ld, int nr, const uint32_t *Qp,
                                                             int nqv, int64_t D2u, float *S, const char *pf, int64_t rowb) {
    const int nl = nqv * 16;
    const uint32_t *cr[RT];
#pragma GCC unroll 16
    for (int i = 0; i < RT; i++) cr[i] = cb + (i < nr ? i : nr - 1) * ld;
    for (int v = 0; v < nqv; v++) {
        __m512 acc[RT];
#pragma GCC unroll 16
        for (int i = 0; i < RT; i++) acc[i] = _mm512_setzero_ps();
        const uint32_t *qv = Qp + v * 16;
        /* this tile's share of the first half of the next block, spread over the steps
         * (no test: without a next block, lines of this tile, cached already) */
        const char *p = pf && v == 0 ? pf : (const char *)cb;
        const int64_t step = (RT * rowb / 2 + D2u - 1) / D2u;
        for (int64_t k2 = 0; k2 < D2u; k2++, p += step) {
            _mm_prefetch(p, _MM_HINT_T1);
            __m512bh b = (__m512bh)_mm512_loadu_si512(qv + k2 * nl);
#pragma GCC unroll 16
            for (int i = 0; i < RT; i++) acc[i] = dp_bcst(acc[i], b, cr[i] + k2);
        }
#pragma GCC unroll 16
        for (int i = 0; i < RT; i++)
            if (i < nr) _mm512_storeu_ps(S + (int64_t)i * nl + v * 16, acc[i]);
    }
}

/* Columns of a whole group of 32 in Cp after the unpacks: position p holds column
 * col_of(p) (unpacklo: 0-3 8-11 16-19 24-27, unpackhi: 4-7 12-15 20-23 28-31). O's
 * whole groups are kept in that order inside the kernel: perm_o(.., 1) puts them in
 * it on entry, perm_o(.., 0) back in column order on exit. */
static inline int col_of(int p) { return p < 16 ? (p / 4) * 8 + p % 4 : ((p - 16) / 4) * 8 + 4 + (p - 16) % 4; }
static void perm_o(float *O, int nq, int64_t C, int to_unpacked) {
    int32_t ix[32];
    for (int p = 0; p < 32; p++) {
        if (to_unpacked) ix[p] = col_of(p);
        else ix[col_of(p)] = p;
    }
    const __m512i i0 = _mm512_loadu_si512(ix), i1 = _mm512_loadu_si512(ix + 16);
    for (int i = 0; i < nq; i++)
        for (int64_t c = 0; c + 32 <= C; c += 32) {
            float *o = O + (int64_t)i * C + c;
            __m512 a = _mm512_loadu_ps(o), b = _mm512_loadu_ps(o + 16);
            _mm512_storeu_ps(o, _mm512_permutex2var_ps(a, i0, b));
            _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(a, i1, b));
        }
}

void cpu_mla_dec_avx512bf16(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O,
                            void *scratch, int prep, int64_t knext) {
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
    /* Qp[k2][lane]: each lane's row rounded in vectors (into the Cb scratch), then spread */
    for (int i = 0; i < nl && prep; i++) {
        uint32_t *row = Cb;
        for (int64_t k = 0; k < 2 * D2; k += 32) {
            __mmask16 lo = i < nq ? m16((int)(D - k)) : 0, hi = i < nq ? m16((int)(D - k - 16)) : 0;
            const float *qi = d->q + (int64_t)i * D + k;
            _mm512_storeu_si512(row + k / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, qi + 16),
                                                                          _mm512_maskz_loadu_ps(lo, qi)));
        }
        for (int64_t k2 = 0; k2 < D2; k2++) Qp[k2 * nl + i] = row[k2];
    }
    perm_o(O, nq, C, 1);
    /* a bf16 cache of even row length is read in place (rows of D / 2 pairs) */
    const int direct = d->cache16 && D % 2 == 0;
    const int64_t rowb = direct ? D * 2 : D * 4; /* bytes per cache row */
    for (int64_t kb = k0; kb < k1; kb += MLA_KB) {
        const int kn = (int)(k1 - kb < MLA_KB ? k1 - kb : MLA_KB), kn2 = (kn + 1) / 2;
        /* the block requested while this one runs (scores_tile and P.V below): this
         * range's next, or after its last the first of the caller's next range */
        int64_t nb = kb + 2 * MLA_KB <= k1 ? kb + MLA_KB : kb + MLA_KB >= k1 && knext >= 0 ? knext : -1;
        const char *nx = nb >= 0 && D2u * 128 >= RT * rowb
                             ? (direct ? (const char *)(d->cache16 + nb * D) : (const char *)(d->cache + nb * D))
                             : NULL;
        const uint32_t *cbk = Cb; /* the block's rows as bf16 pairs, ld pairs apart */
        int64_t ld = D2;
        if (direct) {
            cbk = (const uint32_t *)(d->cache16 + kb * D), ld = D / 2;
        } else if (d->cache16) { /* odd row length: copied, a zero pad after the last */
            for (int r = 0; r < kn; r++) {
                const uint16_t *src = d->cache16 + (kb + r) * D;
                uint16_t *dst = (uint16_t *)(Cb + r * D2);
                memcpy(dst, src, (size_t)D * 2);
                dst[D] = 0;
            }
        } else { /* f32 cache: converted (nearest even) */
            const float *cb = d->cache + kb * D;
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
        }
        /* Cp: two rows' latent parts interleaved. Whole groups of 32 columns with the
         * in-lane unpacks (cheap), which leave the columns of a group in the order
         * of col_of (O is kept in that order, see perm_o); a partial group in order */
        for (int r2 = 0; r2 < kn2; r2++) {
            const uint32_t *ra = cbk + 2 * r2 * ld, *rb = ra + ld;
            int hasb = 2 * r2 + 1 < kn;
            uint32_t *dst = Cp + r2 * ldp;
            int64_t c = 0;
            for (; c + 32 <= C; c += 32) {
                __m512i va = _mm512_loadu_si512(ra + c / 2), vb = hasb ? _mm512_loadu_si512(rb + c / 2) : _mm512_setzero_si512();
                _mm512_storeu_si512(dst + c, _mm512_unpacklo_epi16(va, vb));
                _mm512_storeu_si512(dst + c + 16, _mm512_unpackhi_epi16(va, vb));
            }
            for (; c < C; c += 32) {
                __mmask16 km = m16((int)((C - c + 1) / 2));
                __m512i va = _mm512_maskz_loadu_epi32(km, ra + c / 2);
                __m512i vb = _mm512_maskz_loadu_epi32(hasb ? km : 0, rb + c / 2);
                _mm512_mask_storeu_epi32(dst + c, m16((int)(C - c)), _mm512_permutex2var_epi16(va, ilo, vb));
                _mm512_mask_storeu_epi32(dst + c + 16, m16((int)(C - c - 16)), _mm512_permutex2var_epi16(va, ihi, vb));
            }
        }
        /* scores: S[r][lanes]; full tiles of rows at the usual row length with the
         * rows' offsets as constants (one base register), the rest generic */
        int r0 = 0;
        if (ld == 288)
            for (; r0 + RT <= kn; r0 += RT)
                scores_tile(cbk + r0 * 288, 288, RT, Qp, nqv, D2u, S + (int64_t)r0 * nl, nx ? nx + r0 * rowb / 2 : NULL, rowb);
        for (; r0 < kn; r0 += RT)
            scores_tile(cbk + r0 * ld, ld, kn - r0 < RT ? kn - r0 : RT, Qp, nqv, D2u, S + (int64_t)r0 * nl,
                        nx ? nx + r0 * rowb / 2 : NULL, rowb);
        cpu_mla_softmax_avx512(S, kn, nqv, kb, d->lim, d->scale, m, l, corr, 1);
        for (int r2 = 0; r2 < kn2; r2++)
            for (int v = 0; v < nqv; v++) {
                __m512 a = _mm512_loadu_ps(S + (int64_t)(2 * r2) * nl + v * 16);
                __m512 b = 2 * r2 + 1 < kn ? _mm512_loadu_ps(S + (int64_t)(2 * r2 + 1) * nl + v * 16) : _mm512_setzero_ps();
                _mm512_storeu_si512(Pp + r2 * nl + v * 16, pairs16(a, b, idx));
            }
        /* P.V: O[lane][c] = O corr + sum over row pairs; the second half of the next
         * block requested meanwhile, a line or so per row pair */
        const int64_t pv_steps = (int64_t)((nq + LT - 1) / LT) * ((C + 47) / 48) * kn2;
        const int64_t half = (int64_t)MLA_KB / 2 * rowb, ps2 = nx ? (half + pv_steps - 1) / pv_steps : 0;
        const char *p2 = nx ? nx + half : (const char *)Cp;
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
                for (int r2 = 0; r2 < kn2; r2++, p2 += ps2) {
                    _mm_prefetch(p2, _MM_HINT_T1);
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
    perm_o(O, nq, C, 0);
}
