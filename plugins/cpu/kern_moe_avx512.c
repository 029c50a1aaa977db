/* kern_moe_avx512.c - AVX-512 kernels of the MoE decode path (cpu_moe.c).
 *
 * Two weight streams at once: one core keeps more misses in flight reading two
 * rows than one (about a third more bandwidth on Zen 4), which matters most
 * while a pool worker is still waking up and the caller streams alone. Each
 * row's dot product is summed exactly as the few-row kernel of kern_avx512.c
 * (T = 1: blocks of 128, four accumulators over steps of 64, a masked tail into
 * the first, then ((a0 + a1) + (a2 + a3)) reduced), so results are the same
 * bits as that kernel's. */
#include <immintrin.h>

#include "cpu.h"
#include "kern_avx512_inl.h"

static inline __m512 ld_bf16(const uint16_t *p, __mmask16 km) { return bf16x16(_mm256_maskz_loadu_epi16(km, p)); }

void cpu_moe_gemv2_bf16_avx512(const float *x, int64_t K, const uint16_t *r0, const uint16_t *r1, int64_t nrows,
                               float *y0, float *y1) {
    for (int64_t n = 0; n < nrows; n++, r0 += K, r1 += K) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t kb = 0; kb < K; kb += CPU_QB) {
            int64_t ke = kb + CPU_QB < K ? kb + CPU_QB : K, k = kb;
            for (; k + 64 <= ke; k += 64) {
                __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
                __m512 x2 = _mm512_loadu_ps(x + k + 32), x3 = _mm512_loadu_ps(x + k + 48);
                a0 = _mm512_fmadd_ps(ld_bf16(r0 + k, 0xffff), x0, a0);
                b0 = _mm512_fmadd_ps(ld_bf16(r1 + k, 0xffff), x0, b0);
                a1 = _mm512_fmadd_ps(ld_bf16(r0 + k + 16, 0xffff), x1, a1);
                b1 = _mm512_fmadd_ps(ld_bf16(r1 + k + 16, 0xffff), x1, b1);
                a2 = _mm512_fmadd_ps(ld_bf16(r0 + k + 32, 0xffff), x2, a2);
                b2 = _mm512_fmadd_ps(ld_bf16(r1 + k + 32, 0xffff), x2, b2);
                a3 = _mm512_fmadd_ps(ld_bf16(r0 + k + 48, 0xffff), x3, a3);
                b3 = _mm512_fmadd_ps(ld_bf16(r1 + k + 48, 0xffff), x3, b3);
            }
            for (; k < ke; k += 16) {
                __mmask16 km = m16((int)(ke - k));
                __m512 xv = _mm512_maskz_loadu_ps(km, x + k);
                a0 = _mm512_fmadd_ps(ld_bf16(r0 + k, km), xv, a0);
                b0 = _mm512_fmadd_ps(ld_bf16(r1 + k, km), xv, b0);
            }
        }
        y0[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        y1[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
    }
}
