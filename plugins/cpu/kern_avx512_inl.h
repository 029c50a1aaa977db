/* kern_avx512_inl.h - AVX-512 helpers shared by kern_avx512.c and
 * kern_avx512bf16.c (both compiled with AVX-512 F/BW/VL/DQ). Static inline only. */
#ifndef FM_KERN_AVX512_INL_H
#define FM_KERN_AVX512_INL_H

#include <immintrin.h>
#include <string.h>

#include "cpu.h"

static inline __mmask16 m16(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* 16 e4m3 codes -> their exact f32 values. The 7 magnitude bits placed at bits
 * 20..26 read as an f32 of exponent e-127 (a denormal for e = 0); x 2^120 makes it
 * exactly (1 + m/8) 2^(e-7) or m 2^-9. Sign from the sign-extended byte. */
static inline __m512 e4m3x16(__m128i c) {
    __m512i v = _mm512_cvtepi8_epi32(c);
    v = _mm512_and_si512(_mm512_slli_epi32(v, 20), _mm512_set1_epi32((int)0x87f00000u));
    return _mm512_mul_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(0x1p120f));
}

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

#endif
