/* bench_probe_avx2.c - the AVX2 f32 FMA loop (machines without AVX-512) and the
 * streaming read of the bandwidth probe (AVX2 loads saturate memory anyway). */
#include <immintrin.h>

#include "bench.h"

double bench_fma_loop_avx2(int64_t iters) {
    __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.001f);
#define D(i) __m256 a##i = _mm256_set1_ps((float)i * 0.001f);
    D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11)
#undef D
    for (int64_t i = 0; i < iters; i++) {
#define F(i) a##i = _mm256_fmadd_ps(a##i, x, y);
        F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#undef F
        __asm__ volatile("" : "+v"(a0), "+v"(a6));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float v[8];
    _mm256_storeu_ps(v, s);
    return (double)(v[0] + v[7]);
}

/* The four quarters of p[0, n) read at once, each requested 2 KiB ahead: one core
 * keeps more misses in flight that way than over one plain stream (7-10% more
 * bandwidth on the Zen 4 VM at 1 and 2 threads), as the CPU backend's one-row
 * kernel does, so the probe is the best streaming read known here, not a lower one. */
double bench_read_avx2(const float *p, size_t n) {
    const size_t q = n / 4 / 32 * 32;
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (size_t i = 0; i < q; i += 32)
        for (int t = 0; t < 4; t++) {
            const float *b = p + t * q + i;
            _mm_prefetch((const char *)b + 2048, _MM_HINT_T0);
            _mm_prefetch((const char *)b + 2048 + 64, _MM_HINT_T0);
            s[t] = _mm256_add_ps(s[t], _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(b), _mm256_load_ps(b + 8)),
                                                     _mm256_add_ps(_mm256_load_ps(b + 16), _mm256_load_ps(b + 24))));
        }
    for (size_t i = 4 * q; i < n; i++) s[0] = _mm256_add_ps(s[0], _mm256_set1_ps(p[i]));
    float v[8];
    _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
    return (double)(v[0] + v[5]);
}
