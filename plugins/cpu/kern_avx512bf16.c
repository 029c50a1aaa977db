/* kern_avx512bf16.c - bf16-compute GEMM with vdpbf16ps (AVX512-BF16).
 *
 * Numerics: activations are rounded to bf16 (nearest even) and multiplied with
 * the bf16 weights; each vdpbf16ps adds two exact products into an f32
 * accumulator (the hardware flushes bf16/f32 denormals). This changes results at
 * bf16 precision (~3 significant digits), which is why the mode is opt-in.
 *
 * Packed A: [k/2][14] u32 pairs (x[2k], x[2k+1]); packed B: [k/2][32][2] u16.
 * The micro-kernel is the f32 one with vdpbf16ps: 28 zmm accumulators of 14x32. */
#include "kern_avx512_inl.h"

#define MR CPU_BF16_MR
#define NR CPU_BF16_NR

static inline __mmask32 m32(int n) { return n >= 32 ? (__mmask32)0xffffffffu : n <= 0 ? 0 : (__mmask32)((1u << n) - 1); }

void cpu_pack_a_bf16_avx512bf16(const float *x, int64_t ldx, int rows, int kc, int mr, uint32_t *dst) {
    if (mr != MR) {
        cpu_pack_a_bf16_scalar(x, ldx, rows, kc, mr, dst);
        return;
    }
    int kc2 = (kc + 1) / 2;
    for (int r0 = 0; r0 < rows; r0 += MR) {
        int h = rows - r0 < MR ? rows - r0 : MR;
        for (int k = 0; k < kc; k += 32) { /* 32 floats -> 16 pairs per row */
            int kn = kc - k < 32 ? kc - k : 32;
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (i >= h) {
                    r[i] = _mm512_setzero_ps();
                    continue;
                }
                const float *src = x + (int64_t)(r0 + i) * ldx + k;
                __m512 lo = _mm512_maskz_loadu_ps(m16(kn), src), hi = _mm512_maskz_loadu_ps(m16(kn - 16), src + 16);
                r[i] = _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
            tr16(r);
            int pn = (kn + 1) / 2;
            for (int kk = 0; kk < pn; kk++)
                _mm512_mask_storeu_ps((float *)dst + (int64_t)(k / 2 + kk) * MR, m16(MR), r[kk]);
        }
        dst += (int64_t)kc2 * MR;
    }
}

void cpu_pack_b_bf16_avx512bf16(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, uint16_t *dst) {
    if (w->dtype != FM_BF16 || nr % 16) {
        cpu_pack_b_bf16_scalar(w, n0, nn, k0, kc, nr, dst);
        return;
    }
    int kc2 = (kc + 1) / 2;
    const uint16_t *wd = w->data;
    for (int j0 = 0; j0 < nn; j0 += nr) {
        for (int h = 0; h < nr; h += 16) {
            int rows = nn - j0 - h, an;
            const char *ap = pack_ahead(w, 2, n0, nn, k0, kc, j0 + h, &an);
            for (int k = 0; k < kc; k += 32) {
                int kn = kc - k < 32 ? kc - k : 32;
                for (int i = 0; i < an; i++) _mm_prefetch(ap + (i * w->K + k) * 2, _MM_HINT_T0);
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                          m32(kn), wd + (n0 + j0 + h + i) * w->K + k0 + k))
                                    : _mm512_setzero_ps();
                tr16(r);
                int pn = (kn + 1) / 2;
                for (int kk = 0; kk < pn; kk++)
                    _mm512_storeu_ps((float *)dst + (int64_t)(k / 2 + kk) * nr + h, r[kk]);
            }
        }
        dst += (int64_t)kc2 * nr * 2;
    }
}


#define STEP(i)                                               \
    {                                                         \
        __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]); \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0);          \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1);          \
    }
#define KLOOP(REP)                                                                                         \
    for (int k = 0; k < kc2; k++) {                                                                        \
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);          \
        REP(STEP)                                                                                          \
        a += MR;                                                                                           \
        b += 2 * NR;                                                                                       \
    }

void cpu_ukr_bf16_avx512bf16(int kc2, const uint32_t *a, const uint16_t *b, float *c, int64_t ldc, int mr, int nr,
                             int add) {
    UKR_RUN(KLOOP, c, ldc, mr, nr, add);
}
#undef KLOOP
#undef STEP
