// CsrGemm's batch-1 pass over lanes of rows (sell.h).
#include "sell.h"

#include <immintrin.h>

#include <algorithm>

#define ONNXPRUNE_SELL_TARGET __attribute__((target("avx512f,fma,f16c")))

namespace onnxprune {
namespace {

ONNXPRUNE_SELL_TARGET inline __m512 Values16(const float* v) { return _mm512_loadu_ps(v); }
ONNXPRUNE_SELL_TARGET inline __m512 Values16(const uint16_t* v) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)));
}

// acc + v * x[64 b + i] in the lanes whose index byte i is not padding; x64 = x's block.
ONNXPRUNE_SELL_TARGET inline __m512 Step(const __m512 x64[4], const uint8_t* ix, __m512 v, __m512 acc) {
  const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ix)));
  const __mmask16 high = _mm512_test_epi32_mask(i, _mm512_set1_epi32(32));
  const __mmask16 live = _mm512_testn_epi32_mask(i, _mm512_set1_epi32(kSellPad));
  const __m512 xv = _mm512_mask_blend_ps(high, _mm512_permutex2var_ps(x64[0], i, x64[1]),
                                         _mm512_permutex2var_ps(x64[2], i, x64[3]));
  return _mm512_mask3_fmadd_ps(v, xv, acc, live);
}

template <class V>
ONNXPRUNE_SELL_TARGET void Rows(const SellPlan& p, const float* x, int64_t k, int64_t g0, int64_t g1, float* y) {
  const V* values = reinterpret_cast<const V*>(p.values.data());
  const uint8_t* index = p.index.data();
  for (int64_t g = g0; g < g1; ++g) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t s = p.group_step[static_cast<size_t>(g)];
    const uint8_t* steps = p.steps.data() + g * p.blocks;
    for (int64_t b = 0; b < p.blocks; ++b) {
      const int64_t n = steps[b];
      if (n == 0) continue;
      // x's block; past k (the last block of a narrower X) the lanes read as zeros and are
      // only ever selected for padding lanes.
      __m512 x64[4];
      for (int q = 0; q < 4; ++q) x64[q] = _mm512_maskz_loadu_ps(FirstLanes(k - 64 * b - 16 * q), x + 64 * b + 16 * q);
      const V* v = values + 16 * s;
      const uint8_t* ix = index + 16 * s;
      int64_t t = 0;
      for (; t + 2 <= n; t += 2) {
        // The steps stream from memory ahead of the loads: ~2 KB of values, 1 KB of indices.
        const char* ahead = reinterpret_cast<const char*>(v + 16 * t) + 2048;
        _mm_prefetch(ahead, _MM_HINT_T0);
        if (sizeof(V) == 4) _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(ix + 16 * t) + 1024, _MM_HINT_T0);
        a0 = Step(x64, ix + 16 * t, Values16(v + 16 * t), a0);
        a1 = Step(x64, ix + 16 * t + 16, Values16(v + 16 * t + 16), a1);
      }
      if (t < n) a0 = Step(x64, ix + 16 * t, Values16(v + 16 * t), a0);
      s += n;
    }
    const int64_t live = std::min<int64_t>(kSellRows, p.rows - kSellRows * g);
    _mm512_mask_storeu_ps(y + kSellRows * (g - g0), FirstLanes(live), _mm512_add_ps(a0, a1));
  }
}

}  // namespace

void SellRows(const SellPlan& p, const float* x, int64_t k, int64_t g0, int64_t g1, float* y) {
  if (p.value == kValueF16)
    Rows<uint16_t>(p, x, k, g0, g1, y);
  else
    Rows<float>(p, x, k, g0, g1, y);
}

}  // namespace onnxprune
