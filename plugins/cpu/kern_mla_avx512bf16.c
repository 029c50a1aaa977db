/* kern_mla_avx512bf16.c - absorbed-MLA decode with vdpbf16ps (bf16-compute mode).
 *
 * The structure of kern_mla_avx512.c on blocks of 128 cache rows, each in bf16 once
 * and reused by every lane (head):
 *   Cb [rows][D/2]     pairs along the row (k, k+1): the scores' broadcast operand. A
 *                      bf16 cache of even row length is this already (read in place);
 *                      an f32 cache is converted (nearest even), odd rows copied.
 * P.V's vector operand, pairs across two rows (c[2r][j], c[2r+1][j]), is made in
 * registers from the block's rows by one in-lane unpack per row pair and 16 columns
 * (the columns of a group of 32 permuted; O follows, see col_of).
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

static inline int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }

size_t cpu_mla_dec_scratch_avx512bf16(const cpu_mla_dec *d) {
    size_t nl = (size_t)d->nqv * 16, D2 = (size_t)pad16((d->D + 1) / 2);
    return (D2 * nl + MLA_KB * D2 + MLA_KB * nl + MLA_KB / 2 * nl + nl + 64) * 4;
}

/* acc += pairs(b) . pairs(broadcast *p), the broadcast embedded in vdpbf16ps (the
 * intrinsics compile it to a separate vpbroadcastd: one more instruction per product) */
static inline __m512 dp_bcst(__m512 acc, __m512bh b, const uint32_t *p) {
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(b), "m"(*p));
    return acc;
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

/* Columns of a whole group of 32 after the unpacks: position p holds column
 * col_of(p) (unpacklo: 0-3 8-11 16-19 24-27, unpackhi: 4-7 12-15 20-23 28-31). O's
 * whole groups stay in that order, in and out of the kernel (a sum of such outputs
 * too): cpu_mla_o_row_avx512bf16 puts a row back in column order. */
static inline int col_of(int p) { return p < 16 ? (p / 4) * 8 + p % 4 : ((p - 16) / 4) * 8 + 4 + (p - 16) % 4; }

void cpu_mla_o_row_avx512bf16(const float *O, float a, int64_t C, float *o) {
    int32_t ix[32];
    for (int p = 0; p < 32; p++) ix[col_of(p)] = p;
    const __m512i i0 = _mm512_loadu_si512(ix), i1 = _mm512_loadu_si512(ix + 16);
    const __m512 va = _mm512_set1_ps(a);
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
        __m512 x = _mm512_loadu_ps(O + c), y = _mm512_loadu_ps(O + c + 16);
        _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_permutex2var_ps(x, i0, y), va));
        _mm512_storeu_ps(o + c + 16, _mm512_mul_ps(_mm512_permutex2var_ps(x, i1, y), va));
    }
    for (; c < C; c += 16)
        _mm512_mask_storeu_ps(o + c, m16((int)(C - c)), _mm512_mul_ps(_mm512_maskz_loadu_ps(m16((int)(C - c)), O + c), va));
}

/* Two rows' 32 values a, b -> pairs (a[j], b[j]) of one half: in a whole group of 32
 * columns the in-lane unpack of that half (columns in col_of order), in a partial one
 * the permute ix (columns in order). */
static inline __attribute__((always_inline)) __m512bh pair_rows(__m512i a, __m512i b, int whole, int hi, __m512i ix) {
    return (__m512bh)(whole ? (hi ? _mm512_unpackhi_epi16(a, b) : _mm512_unpacklo_epi16(a, b))
                            : _mm512_permutex2var_epi16(a, ix, b));
}

/* P.V for 16 columns from c (col_of order inside a whole group of 32, in order in a
 * partial one; cw = columns left in the row from c) of nh <= 16 lanes: O = O corr +
 * sum over row pairs r2 of (c[2r2][j], c[2r2+1][j]) . P pair of lane i, the pairs made
 * from the block's rows by one shuffle per row pair. Two streams are requested
 * meanwhile, a line from p2 and one from p3 a row pair, stepping ps2 and ps3 bytes.
 * Returns p2 advanced. */
static inline __attribute__((always_inline)) const char *pv_tile(const uint32_t *cb, int64_t ld, int kn,
                                                                const uint32_t *Pp, int nl, float *O, int64_t C,
                                                                int nh, const float *corr, int64_t c, int cw,
                                                                const char *p2, int64_t ps2, const char *p3, int64_t ps3) {
    __m512 acc[16];
    const int g0 = (int)(c & ~(int64_t)31), hi = (int)(c & 16), whole = cw + (c & 16) >= 32;
    const __mmask16 om = m16(cw);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(om, O + (int64_t)(i < nh ? i : 0) * C), _mm512_set1_ps(corr[i]));
    const uint32_t *r = cb + g0 / 2;
    const __mmask16 lm = m16((cw + hi + 1) / 2);
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37,
                                         5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ix = hi ? _mm512_add_epi16(ilo, _mm512_set1_epi16(16)) : ilo;
    int r2 = 0;
    for (; 2 * r2 + 1 < kn; r2++, r += 2 * ld, p2 += ps2, p3 += ps3) {
        _mm_prefetch(p2, _MM_HINT_T1);
        _mm_prefetch(p3, _MM_HINT_T1);
        __m512bh u = pair_rows(_mm512_maskz_loadu_epi32(lm, r), _mm512_maskz_loadu_epi32(lm, r + ld), whole, hi, ix);
        const uint32_t *pr = Pp + r2 * nl;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = dp_bcst(acc[i], u, pr + i);
    }
    if (r2 * 2 < kn) { /* the odd last row, paired with zeros */
        __m512bh u = pair_rows(_mm512_maskz_loadu_epi32(lm, r), _mm512_setzero_si512(), whole, hi, ix);
        const uint32_t *pr = Pp + r2 * nl;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = dp_bcst(acc[i], u, pr + i);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        if (i < nh) _mm512_mask_storeu_ps(O + (int64_t)i * C, om, acc[i]);
    return p2;
}

void cpu_mla_dec_avx512bf16(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O,
                            void *scratch, int prep, const cpu_mla_pf *pf) {
    const int nqv = d->nqv, nl = nqv * 16, nq = d->nq;
    const int64_t D = d->D, C = d->C, D2 = pad16((D + 1) / 2), D2u = (D + 1) / 2;
    uint32_t *Qp = scratch, *Cb = Qp + D2 * nl;
    float *S = (float *)(Cb + MLA_KB * D2);
    uint32_t *Pp = (uint32_t *)(S + MLA_KB * nl);
    float *corr = (float *)(Pp + MLA_KB / 2 * nl);
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
    /* a bf16 cache of even row length is read in place (rows of D / 2 pairs) */
    const int direct = d->cache16 && D % 2 == 0;
    const int64_t rowb = direct ? D * 2 : D * 4; /* bytes per cache row */
    const int64_t knext = pf ? pf->knext : -1;
    /* the side stream, spread over every P.V step of the call (p3 in pv_tile): span si,
     * offset so */
    int64_t si = 0, so = 0, ps3 = 0;
    if (pf && pf->side && pf->side_n > 0 && pf->side_bytes > 0) {
        int64_t steps = (int64_t)((nq + 15) / 16) * ((C + 15) / 16) * ((k1 - k0 + 1) / 2);
        ps3 = steps > 0 ? (pf->side_n * pf->side_bytes + steps - 1) / steps : 0;
    }
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
        /* scores: S[r][lanes]; full tiles of rows at the usual row length with the
         * rows' offsets as constants (one base register), the rest generic */
        int r0 = 0;
        if (ld == 288)
            for (; r0 + RT <= kn; r0 += RT)
                scores_tile(cbk + r0 * 288, 288, RT, Qp, nqv, D2u, S + (int64_t)r0 * nl, nx ? nx + r0 * rowb / 2 : NULL, rowb);
        for (; r0 < kn; r0 += RT)
            scores_tile(cbk + r0 * ld, ld, kn - r0 < RT ? kn - r0 : RT, Qp, nqv, D2u, S + (int64_t)r0 * nl,
                        nx ? nx + r0 * rowb / 2 : NULL, rowb);
        cpu_mla_softmax_avx512(S, kn, nqv, kb, d->lim, d->scale, m, l, corr, Pp);
        /* P.V: O[lane][c] = O corr + sum over row pairs, 16 columns of 16 lanes at a
         * time; the second half of the next block requested meanwhile */
        const int64_t pv_steps = (int64_t)((nq + 15) / 16) * ((C + 15) / 16) * kn2;
        const int64_t half = (int64_t)MLA_KB / 2 * rowb, ps2 = nx ? (half + pv_steps - 1) / pv_steps : 0;
        const char *p2 = nx ? nx + half : (const char *)cbk;
        for (int i0 = 0; i0 < nq; i0 += 16)
            for (int64_t c = 0; c < C; c += 16) {
                /* past the last span: a line of this block again (cached, no cost) */
                const char *p3 = ps3 ? pf->side + si * pf->side_pitch + so : (const char *)cbk;
                p2 = pv_tile(cbk, ld, kn, Pp + i0, nl, O + (int64_t)i0 * C + c, C, nq - i0 < 16 ? nq - i0 : 16,
                             corr + i0, c, (int)(C - c), p2, ps2, p3, ps3);
                for (so += kn2 * ps3; ps3 && so >= pf->side_bytes;)
                    if (so -= pf->side_bytes, ++si == pf->side_n) ps3 = 0;
            }
    }
}
