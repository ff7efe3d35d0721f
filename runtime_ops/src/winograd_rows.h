// The steps of Winograd F(4x4, 3x3) that every implementation here shares: CsrConv's path
// (winograd.cc) and the stand-alone measurement bench/winograd_probe.cc, which includes this
// file by its path. AVX-512F: the callers check the CPU has it.
#pragma once

#include <immintrin.h>

#ifndef ONNXPRUNE_WINO_TARGET
#define ONNXPRUNE_WINO_TARGET __attribute__((target("avx512f,fma")))
#endif

namespace onnxprune {
namespace winograd_rows {

// G of F(4x4, 3x3) with points 0, +-1, +-2 (Lavin and Gray, 2016).
inline constexpr float kG[6][3] = {{1.f / 4, 0, 0},           {-1.f / 6, -1.f / 6, -1.f / 6}, {-1.f / 6, 1.f / 6, -1.f / 6},
                        {1.f / 24, 1.f / 12, 1.f / 6}, {1.f / 24, -1.f / 12, 1.f / 6}, {0, 0, 1}};

// r = B^T d for the six values d0..d5 (one column or row of a tile), 16 tiles at a time.
ONNXPRUNE_WINO_TARGET inline void InputRow(const __m512 d[6], __m512 r[6]) {
  const __m512 four = _mm512_set1_ps(4), m4 = _mm512_set1_ps(-4), m5 = _mm512_set1_ps(-5), two = _mm512_set1_ps(2);
  r[0] = _mm512_fmadd_ps(four, d[0], _mm512_fmadd_ps(m5, d[2], d[4]));
  const __m512 a = _mm512_fmadd_ps(m4, d[2], d[4]), b = _mm512_fmadd_ps(m4, d[1], d[3]);
  r[1] = _mm512_add_ps(a, b);
  r[2] = _mm512_sub_ps(a, b);
  const __m512 p = _mm512_sub_ps(d[4], d[2]), q = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
  r[3] = _mm512_add_ps(p, q);
  r[4] = _mm512_sub_ps(p, q);
  r[5] = _mm512_fmadd_ps(four, d[1], _mm512_fmadd_ps(m5, d[3], d[5]));
}

// r = A^T m for the six values m0..m5, four outputs.
ONNXPRUNE_WINO_TARGET inline void OutputRow(const __m512 m[6], __m512 r[4]) {
  const __m512 a = _mm512_add_ps(m[1], m[2]), b = _mm512_sub_ps(m[1], m[2]);
  const __m512 c = _mm512_add_ps(m[3], m[4]), d = _mm512_sub_ps(m[3], m[4]);
  r[0] = _mm512_add_ps(_mm512_add_ps(m[0], a), c);
  r[1] = _mm512_fmadd_ps(_mm512_set1_ps(2), d, b);
  r[2] = _mm512_fmadd_ps(_mm512_set1_ps(4), c, a);
  r[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8), d, b), m[5]);
}

// Floats j, j + 4, j + 8, ... of the 64 floats a|b|c|d: one float of each of 16 tiles whose
// columns start 4 floats apart.
ONNXPRUNE_WINO_TARGET inline __m512 EveryFourth(__m512 a, __m512 b, __m512 c, __m512 d, int j) {
  const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
                                       _mm512_set1_epi32(j));
  return _mm512_shuffle_f32x4(_mm512_permutex2var_ps(a, idx, b), _mm512_permutex2var_ps(c, idx, d), 0x44);
}

}  // namespace winograd_rows
}  // namespace onnxprune
