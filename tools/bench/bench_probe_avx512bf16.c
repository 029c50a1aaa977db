/* bench_probe_avx512bf16.c - register-only vdpbf16ps loop: 12 independent zmm
 * chains, 32 bf16 products (64 FLOP) per instruction. */
#include <immintrin.h>

#include "bench.h"

double bench_bf16_loop_avx512bf16(int64_t iters) {
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3a80);
#define D(i) __m512 a##i = _mm512_set1_ps((float)i * 0.001f);
    D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11)
#undef D
    for (int64_t i = 0; i < iters; i++) {
#define F(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
        F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#undef F
        __asm__ volatile("" : "+v"(a0), "+v"(a6));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return (double)_mm512_reduce_add_ps(s);
}
