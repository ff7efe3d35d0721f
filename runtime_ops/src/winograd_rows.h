// The steps of Winograd F(4x4, 3x3) that every implementation here shares: CsrConv's path
// (winograd.cc) and the stand-alone measurement bench/winograd_probe.cc, which includes this
// file by its path. AVX-512F (the AVX2 steps in winograd.cc include winograd_transforms.inc
// themselves): the callers check the CPU has it.
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

// InputRow (r = B^T d) and OutputRow (r = A^T m) on 16 tiles at a time (winograd_transforms.inc;
// winograd.cc includes it again for 8 tiles in AVX2 vectors).
namespace avx512 {
using Vec = __m512;
ONNXPRUNE_WINO_TARGET inline Vec Set1(float a) { return _mm512_set1_ps(a); }
ONNXPRUNE_WINO_TARGET inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
ONNXPRUNE_WINO_TARGET inline Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
ONNXPRUNE_WINO_TARGET inline Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
ONNXPRUNE_WINO_TARGET inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#define ONNXPRUNE_WINO_ROW_TARGET ONNXPRUNE_WINO_TARGET
#include "winograd_transforms.inc"
#undef ONNXPRUNE_WINO_ROW_TARGET
}  // namespace avx512
using avx512::InputRow;
using avx512::OutputRow;

// Floats j, j + 4, j + 8, ... of the 64 floats a|b|c|d: one float of each of 16 tiles whose
// columns start 4 floats apart.
ONNXPRUNE_WINO_TARGET inline __m512 EveryFourth(__m512 a, __m512 b, __m512 c, __m512 d, int j) {
  const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
                                       _mm512_set1_epi32(j));
  return _mm512_shuffle_f32x4(_mm512_permutex2var_ps(a, idx, b), _mm512_permutex2var_ps(c, idx, d), 0x44);
}

}  // namespace winograd_rows
}  // namespace onnxprune
