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
 * while a block runs. With fp8 kv_b, q_abs and the output projection run here too
 * (the codes decoded to bf16, below). */
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
    const int64_t rowb = mla_dec_rowb(d);
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
        int64_t nb = -1, nbr = 0; /* and its rows */
        if (kb + 2 * MLA_KB <= k1) nb = kb + MLA_KB, nbr = MLA_KB;
        else if (kb + MLA_KB >= k1 && knext >= 0) nb = knext, nbr = pf->knext_n < MLA_KB ? pf->knext_n : MLA_KB;
        const char *nx = nb >= 0 && D2u * 128 >= RT * rowb ? mla_dec_row(d, nb) : NULL;
        /* ... and its pages walked: one load in each, spread over the score tiles (the
         * requests alone left a cold call's attention 8-26 us slower; docs/cpu.md) */
        const uintptr_t na = (uintptr_t)nx, npg = span_pages(nx, nbr * rowb);
        uintptr_t pg = 0;
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
            for (; r0 + RT <= kn; r0 += RT) {
                walk_pages(na, &pg, npg * (uintptr_t)(r0 + RT) / (uintptr_t)kn);
                scores_tile(cbk + r0 * 288, 288, RT, Qp, nqv, D2u, S + (int64_t)r0 * nl, nx ? nx + r0 * rowb / 2 : NULL, rowb);
            }
        for (; r0 < kn; r0 += RT) {
            walk_pages(na, &pg, npg * (uintptr_t)(r0 + RT < kn ? r0 + RT : kn) / (uintptr_t)kn);
            scores_tile(cbk + r0 * ld, ld, kn - r0 < RT ? kn - r0 : RT, Qp, nqv, D2u, S + (int64_t)r0 * nl,
                        nx ? nx + r0 * rowb / 2 : NULL, rowb);
        }
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

/* ---- fp8 kv_b in bf16 (W_UK for q_abs, W_UV for the output) ----
 * Every e4m3 value is a bf16 value (3 mantissa bits in 7, exponents -9 .. 8 in
 * bf16's range, subnormals included), so the codes decode exactly to bf16: the high
 * and the low byte of the magnitude's bf16 from two 128-entry tables (vpermi2b,
 * AVX512-VBMI), the sign or-ed into the high byte, the bytes interleaved into words
 * in-lane (vpunpck[lh]bw). The block scales multiply the f32 sums of each 128-column
 * block (the products stay exact). The output projection rounds o to bf16, as
 * DeepSeek's bf16 absorbed path does; q_abs multiplies q as the sum of two bf16 (q
 * rounded, then the rest rounded: 16 bits of it), since one rounding of q tripled the
 * call's difference from f32 weights in `fathom bench mla` (6e-3 against 2e-3). */
#define E4_SUB(m) ((m) == 1 ? 118 << 7 : (m) == 2 ? 119 << 7 : (m) == 3 ? 119 << 7 | 0x40 : (m) == 4 ? 120 << 7 \
                   : (m) == 5 ? 120 << 7 | 0x20 : (m) == 6 ? 120 << 7 | 0x40 : 120 << 7 | 0x60)
#define E4_BF(i) ((i) == 0 ? 0 : (i) == 127 ? 0x7fc0 : ((i) >> 3) ? (((i) >> 3) + 120) << 7 | ((i) & 7) << 4 : E4_SUB(i))
#define E4_H8(M, b) M(b), M(b + 1), M(b + 2), M(b + 3), M(b + 4), M(b + 5), M(b + 6), M(b + 7)
#define E4_H128(M) E4_H8(M, 0), E4_H8(M, 8), E4_H8(M, 16), E4_H8(M, 24), E4_H8(M, 32), E4_H8(M, 40), E4_H8(M, 48), \
                   E4_H8(M, 56), E4_H8(M, 64), E4_H8(M, 72), E4_H8(M, 80), E4_H8(M, 88), E4_H8(M, 96),            \
                   E4_H8(M, 104), E4_H8(M, 112), E4_H8(M, 120)
#define E4_HI(i) (uint8_t)(E4_BF(i) >> 8)
#define E4_LO(i) (uint8_t)(E4_BF(i) & 0xff)
static const uint8_t e4_hi[128] __attribute__((aligned(64))) = {E4_H128(E4_HI)};
static const uint8_t e4_lo[128] __attribute__((aligned(64))) = {E4_H128(E4_LO)};

typedef struct e4tab { __m512i h0, h1, l0, l1, sign; } e4tab;

static inline __attribute__((always_inline)) e4tab e4tab_load(void) {
    return (e4tab){_mm512_load_si512(e4_hi), _mm512_load_si512(e4_hi + 64), _mm512_load_si512(e4_lo),
                   _mm512_load_si512(e4_lo + 64), _mm512_set1_epi8((char)0x80)};
}

/* 64 codes -> their bf16 as a (codes 0-7 of each 16-byte lane) and b (codes 8-15) */
static inline __attribute__((always_inline, target("avx512vbmi"))) void e4_bf16x64(const e4tab *t, __m512i c,
                                                                                   __m512i *a, __m512i *b) {
    __m512i hi = _mm512_permutex2var_epi8(t->h0, c, t->h1), lo = _mm512_permutex2var_epi8(t->l0, c, t->l1);
    hi = _mm512_ternarylogic_epi32(hi, c, t->sign, 0xf8); /* hi | (c & 0x80) */
    *a = _mm512_unpacklo_epi8(lo, hi);
    *b = _mm512_unpackhi_epi8(lo, hi);
}

void cpu_mla_o16_avx512bf16(const float *o, int64_t C, uint16_t *o16) {
    for (int64_t c = 0; c < C; c += 64) {
        __m512i x01 = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(o + c + 16), _mm512_loadu_ps(o + c));
        __m512i x23 = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(o + c + 48), _mm512_loadu_ps(o + c + 32));
        _mm512_storeu_si512(o16 + c, _mm512_shuffle_i32x4(x01, x23, 0x88));
        _mm512_storeu_si512(o16 + c + 32, _mm512_shuffle_i32x4(x01, x23, 0xdd));
    }
}

/* R rows from n: y[r] = sum over 128-column blocks of scale x (the block's codes as
 * bf16 . o16), each block's lines of the row WUV_PD further requested meanwhile (the
 * attention requested the rows into L2 or L3 beforehand, but a cold call's projection
 * took 24-28 us without these requests, 19-20 us with them; 4 and 16 rows ahead did
 * no better) */
#define WUV_PD 8
static inline __attribute__((always_inline, target("avx512vbmi"))) void wuv_rows(int R, const e4tab *t,
                                                                                 const uint16_t *o16,
                                                                                 const cpu_wmat *w, int64_t n,
                                                                                 float *y) {
    const int64_t K = w->K;
    const uint8_t *row[4];
    __m512 tot[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) row[r] = (const uint8_t *)w->data + (n + r) * K, tot[r] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < K; kb += CPU_QB) {
        __m512 s0[4], s1[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            s0[r] = s1[r] = _mm512_setzero_ps();
            _mm_prefetch((const char *)row[r] + WUV_PD * K + kb, _MM_HINT_T0);
            _mm_prefetch((const char *)row[r] + WUV_PD * K + kb + 64, _MM_HINT_T0);
        }
        for (int64_t k = kb; k < kb + CPU_QB && k < K; k += 64) {
            const __m512bh oa = (__m512bh)_mm512_loadu_si512(o16 + k), ob = (__m512bh)_mm512_loadu_si512(o16 + k + 32);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512i a, b;
                e4_bf16x64(t, _mm512_loadu_si512(row[r] + k), &a, &b);
                s0[r] = _mm512_dpbf16_ps(s0[r], (__m512bh)a, oa);
                s1[r] = _mm512_dpbf16_ps(s1[r], (__m512bh)b, ob);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float s = w->scale ? w->scale[((n + r) / CPU_QB) * w->scale_ld + kb / CPU_QB] : 1.0f;
            tot[r] = _mm512_fmadd_ps(_mm512_add_ps(s0[r], s1[r]), _mm512_set1_ps(s), tot[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) y[r] = _mm512_reduce_add_ps(tot[r]);
}

__attribute__((target("avx512vbmi"))) void cpu_mla_wuv_fp8_avx512bf16(const uint16_t *o16, const cpu_wmat *w,
                                                                      int64_t n0, int64_t n, float *y) {
    const e4tab t = e4tab_load();
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) wuv_rows(4, &t, o16, w, n0 + r, y + r);
    for (; r < n; r++) wuv_rows(1, &t, o16, w, n0 + r, y + r);
}

/* q_abs: pairs of rows (d, d + 1) of one 128-row block of scales, their codes
 * interleaved by byte and decoded together into (w[d][c], w[d + 1][c]) pairs
 * against the broadcast (q[d], q[d + 1]), once for its bf16 rounding and once for the
 * rest (rounded): per 64 columns of two rows 12 shuffles and 8 vdpbf16ps, against 24
 * decode instructions and 8 FMAs in the f32 kernel's fp8 path. A column pass of up to 256 in 16
 * accumulators, acc[4 x g + i] holding, in 16-byte lane L, columns 64 g + 16 L + 4 i
 * + 0..3, put back in order per 64 columns by a 4 x 4 transpose of 16-byte lanes. */
#define QA8_PD 8 /* rows requested ahead in the first pass */

__attribute__((target("avx512vbmi"))) void cpu_mla_qabs_fp8_avx512bf16(const float *q, int64_t nrows,
                                                                       const cpu_wmat *w, int64_t r0, float *y,
                                                                       int64_t rnext) {
    const int64_t K = w->K;
    const uint8_t *base = w->data;
    const e4tab t = e4tab_load();
    for (int64_t c = 0; c < K; c += 16) _mm512_storeu_ps(y + c, _mm512_setzero_ps());
    for (int64_t c0 = 0; c0 < K; c0 += 256) {
        const int ng = (int)((K - c0 < 256 ? K - c0 : 256) / 64);
        const int first = c0 == 0, last = c0 + 256 >= K;
        for (int64_t d0 = 0; d0 < nrows;) {
            int64_t d1 = ((r0 + d0) / CPU_QB + 1) * CPU_QB - r0; /* the end of this block of scales */
            if (d1 > nrows) d1 = nrows;
            __m512 acc[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
            for (int64_t d = d0; d < d1; d += 2) {
                const int two = d + 1 < d1;
                for (int e = 0; e < 2; e++) {
                    int64_t pd = d + e + QA8_PD;
                    const uint8_t *pf = first && pd < nrows ? base + (r0 + pd) * K
                                        : last && pd >= nrows && rnext >= 0 ? base + (rnext + pd - nrows) * K
                                                                            : NULL;
                    if (pf)
                        for (int64_t l = 0; l < K; l += 64) _mm_prefetch((const char *)pf + l, _MM_HINT_T0);
                }
                const float qa = q[d], qb = two ? q[d + 1] : 0.0f;
                const uint32_t ha = cpu_bf16_from_f32(qa), hb = cpu_bf16_from_f32(qb);
                const __m512bh qq = (__m512bh)_mm512_set1_epi32((int)(ha | hb << 16));
                const __m512bh ql = (__m512bh)_mm512_set1_epi32(
                    (int)(cpu_bf16_from_f32(qa - cpu_bf16_value((uint16_t)ha)) |
                          (uint32_t)cpu_bf16_from_f32(qb - cpu_bf16_value((uint16_t)hb)) << 16));
                const uint8_t *ra = base + (r0 + d) * K + c0;
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) {
                    if (g >= ng) break;
                    __m512i ca = _mm512_loadu_si512(ra + 64 * g);
                    __m512i cb = two ? _mm512_loadu_si512(ra + K + 64 * g) : _mm512_setzero_si512();
                    __m512i p0, p1, p2, p3;
                    e4_bf16x64(&t, _mm512_unpacklo_epi8(ca, cb), &p0, &p1);
                    e4_bf16x64(&t, _mm512_unpackhi_epi8(ca, cb), &p2, &p3);
                    acc[4 * g] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[4 * g], (__m512bh)p0, qq), (__m512bh)p0, ql);
                    acc[4 * g + 1] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[4 * g + 1], (__m512bh)p1, qq), (__m512bh)p1, ql);
                    acc[4 * g + 2] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[4 * g + 2], (__m512bh)p2, qq), (__m512bh)p2, ql);
                    acc[4 * g + 3] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[4 * g + 3], (__m512bh)p3, qq), (__m512bh)p3, ql);
                }
            }
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                if (g >= ng) break;
                int64_t c = c0 + 64 * g;
                const __m512 s = _mm512_set1_ps(w->scale ? w->scale[((r0 + d0) / CPU_QB) * w->scale_ld + c / CPU_QB] : 1.0f);
                __m512 t0 = _mm512_shuffle_f32x4(acc[4 * g], acc[4 * g + 1], 0x44);
                __m512 t1 = _mm512_shuffle_f32x4(acc[4 * g], acc[4 * g + 1], 0xee);
                __m512 t2 = _mm512_shuffle_f32x4(acc[4 * g + 2], acc[4 * g + 3], 0x44);
                __m512 t3 = _mm512_shuffle_f32x4(acc[4 * g + 2], acc[4 * g + 3], 0xee);
                __m512 z[4] = {_mm512_shuffle_f32x4(t0, t2, 0x88), _mm512_shuffle_f32x4(t0, t2, 0xdd),
                               _mm512_shuffle_f32x4(t1, t3, 0x88), _mm512_shuffle_f32x4(t1, t3, 0xdd)};
                for (int l = 0; l < 4; l++)
                    _mm512_storeu_ps(y + c + 16 * l, _mm512_fmadd_ps(z[l], s, _mm512_loadu_ps(y + c + 16 * l)));
            }
            d0 = d1;
        }
    }
}
