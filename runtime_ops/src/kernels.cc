// Three builds of the same loops: AVX-512, AVX2+FMA and portable C++. The vector ones are
// compiled with per-function target attributes (never -march), so one binary runs everywhere
// and picks the widest path the CPU supports.
#include "kernels.h"

// GCC 12 intrinsic headers self-initialise placeholder vectors (`__m512 __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every gather/convert call site; the values are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstring>

#define OP_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")))
#define OP_AVX2 __attribute__((target("avx2,fma")))

namespace onnxprune {

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool CpuHas(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
}

Isa BestIsa() {
  if (CpuHas(Isa::kAvx512)) return Isa::kAvx512;
  if (CpuHas(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

// ---------------------------------------------------------------------------------------------
// Portable
namespace scalar {

template <class I>
void Spmv(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t r0, int64_t r1,
          float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    // Four partial sums break the add dependency chain; the order differs from a dense dot
    // product only by rounding.
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    for (; j + 4 <= e; j += 4) {
      s0 += values[j] * x[col[j]];
      s1 += values[j + 1] * x[col[j + 1]];
      s2 += values[j + 2] * x[col[j + 2]];
      s3 += values[j + 3] * x[col[j + 3]];
    }
    for (; j < e; ++j) s0 += values[j] * x[col[j]];
    y[r - r0] = (s0 + s1) + (s2 + s3);
  }
}

template <class I>
void Spmm(const float* values, const I* col, const int32_t* row_ptr, const float* xt, int mb, int64_t r0,
          int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * mb;
    for (int m = 0; m < mb; ++m) o[m] = 0.f;
    for (int64_t j = row_ptr[r]; j < row_ptr[r + 1]; ++j) {
      const float w = values[j];
      const float* xr = xt + static_cast<int64_t>(col[j]) * mb;
      for (int m = 0; m < mb; ++m) o[m] += w * xr[m];
    }
  }
}

void ConvTile(const float* w, const int32_t* off, int64_t nnz, const float* q, int64_t row_stride, float* out) {
  for (int i = 0; i < kConvTileRows * kConvTileCols; ++i) out[i] = 0.f;
  for (int64_t j = 0; j < nnz; ++j) {
    const float wj = w[j];
    for (int u = 0; u < kConvTileRows; ++u) {
      const float* src = q + off[j] + u * row_stride;
      float* o = out + u * kConvTileCols;
      for (int i = 0; i < kConvTileCols; ++i) o[i] += wj * src[i];
    }
  }
}

}  // namespace scalar

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA
namespace avx2 {

OP_AVX2 static inline __m256i LoadIdx8(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
OP_AVX2 static inline __m256i LoadIdx8(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
OP_AVX2 static inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <class I>
OP_AVX2 void Spmv(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t r0,
                  int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= e; j += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(col + j) + 1024 * sizeof(I) / 2, _MM_HINT_T0);
      const __m256 g0 = _mm256_i32gather_ps(x, LoadIdx8(col + j), 4);
      const __m256 g1 = _mm256_i32gather_ps(x, LoadIdx8(col + j + 8), 4);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), g0, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 8), g1, a1);
    }
    if (j + 8 <= e) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), _mm256_i32gather_ps(x, LoadIdx8(col + j), 4), a0);
      j += 8;
    }
    float s = Hsum(_mm256_add_ps(a0, a1));
    for (; j < e; ++j) s += values[j] * x[col[j]];
    y[r - r0] = s;
  }
}

// V ymm registers span the mb-wide panel row; P independent accumulator sets hide FMA latency
// when the panel is narrow.
template <class I, int V, int P>
OP_AVX2 void SpmmFixed(const float* values, const I* col, const int32_t* row_ptr, const float* xt, int64_t r0,
                       int64_t r1, float* out) {
  constexpr int mb = V * 8;
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    for (; j + P <= e; j += P) {
      for (int p = 0; p < P; ++p) {
        const __m256 w = _mm256_broadcast_ss(values + j + p);
        const float* xr = xt + static_cast<int64_t>(col[j + p]) * mb;
        for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(w, _mm256_load_ps(xr + 8 * v), acc[p][v]);
      }
    }
    for (; j < e; ++j) {
      const __m256 w = _mm256_broadcast_ss(values + j);
      const float* xr = xt + static_cast<int64_t>(col[j]) * mb;
      for (int v = 0; v < V; ++v) acc[0][v] = _mm256_fmadd_ps(w, _mm256_load_ps(xr + 8 * v), acc[0][v]);
    }
    float* o = out + (r - r0) * mb;
    for (int v = 0; v < V; ++v) {
      __m256 s = acc[0][v];
      for (int p = 1; p < P; ++p) s = _mm256_add_ps(s, acc[p][v]);
      _mm256_storeu_ps(o + 8 * v, s);
    }
  }
}

template <class I>
OP_AVX2 void Spmm(const float* values, const I* col, const int32_t* row_ptr, const float* xt, int mb, int64_t r0,
                  int64_t r1, float* out) {
  switch (mb) {
    case 16: return SpmmFixed<I, 2, 2>(values, col, row_ptr, xt, r0, r1, out);
    case 32: return SpmmFixed<I, 4, 1>(values, col, row_ptr, xt, r0, r1, out);
    case 48: return SpmmFixed<I, 6, 1>(values, col, row_ptr, xt, r0, r1, out);
    default: return SpmmFixed<I, 8, 1>(values, col, row_ptr, xt, r0, r1, out);
  }
}

OP_AVX2 void ConvTile(const float* w, const int32_t* off, int64_t nnz, const float* q, int64_t row_stride,
                      float* out) {
  __m256 a[kConvTileRows][2];
  for (int u = 0; u < kConvTileRows; ++u) a[u][0] = a[u][1] = _mm256_setzero_ps();
  for (int64_t j = 0; j < nnz; ++j) {
    const __m256 wj = _mm256_broadcast_ss(w + j);
    const float* src = q + off[j];
    for (int u = 0; u < kConvTileRows; ++u) {
      a[u][0] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(src + u * row_stride), a[u][0]);
      a[u][1] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(src + u * row_stride + 8), a[u][1]);
    }
  }
  for (int u = 0; u < kConvTileRows; ++u) {
    _mm256_storeu_ps(out + u * kConvTileCols, a[u][0]);
    _mm256_storeu_ps(out + u * kConvTileCols + 8, a[u][1]);
  }
}

}  // namespace avx2

// ---------------------------------------------------------------------------------------------
// AVX-512
namespace avx512 {

OP_AVX512 static inline __m512i LoadIdx16(const int16_t* p) {
  return _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
OP_AVX512 static inline __m512i LoadIdx16(const int32_t* p) { return _mm512_loadu_si512(p); }
OP_AVX512 static inline __m512i LoadIdx16(const int16_t* p, __mmask16 m) {
  return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
OP_AVX512 static inline __m512i LoadIdx16(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }

template <class I>
OP_AVX512 void Spmv(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t r0,
                    int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; j + 32 <= e; j += 32) {
      // The gathers keep the load queue busy enough that the hardware prefetcher falls behind
      // on the two sequential streams; fetching ~2 KB ahead keeps them at DRAM bandwidth.
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048 + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(col + j) + 1024 * sizeof(I) / 2, _MM_HINT_T0);
      if (sizeof(I) == 4) _mm_prefetch(reinterpret_cast<const char*>(col + j) + 2048 + 64, _MM_HINT_T0);
      const __m512 g0 = _mm512_i32gather_ps(LoadIdx16(col + j), x, 4);
      const __m512 g1 = _mm512_i32gather_ps(LoadIdx16(col + j + 16), x, 4);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j), g0, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j + 16), g1, a1);
    }
    if (j + 16 <= e) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(values + j), _mm512_i32gather_ps(LoadIdx16(col + j), x, 4), a0);
      j += 16;
    }
    if (j < e) {
      const __mmask16 m = static_cast<__mmask16>((1u << (e - j)) - 1u);
      const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, LoadIdx16(col + j, m), x, 4);
      a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, values + j), g, a1);
    }
    y[r - r0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
}

template <class I, int V, int P>
OP_AVX512 void SpmmFixed(const float* values, const I* col, const int32_t* row_ptr, const float* xt, int64_t r0,
                         int64_t r1, float* out) {
  constexpr int mb = V * 16;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_ps();
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    for (; j + P <= e; j += P) {
      for (int p = 0; p < P; ++p) {
        const __m512 w = _mm512_set1_ps(values[j + p]);
        const float* xr = xt + static_cast<int64_t>(col[j + p]) * mb;
        for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(w, _mm512_load_ps(xr + 16 * v), acc[p][v]);
      }
    }
    for (; j < e; ++j) {
      const __m512 w = _mm512_set1_ps(values[j]);
      const float* xr = xt + static_cast<int64_t>(col[j]) * mb;
      for (int v = 0; v < V; ++v) acc[0][v] = _mm512_fmadd_ps(w, _mm512_load_ps(xr + 16 * v), acc[0][v]);
    }
    float* o = out + (r - r0) * mb;
    for (int v = 0; v < V; ++v) {
      __m512 s = acc[0][v];
      for (int p = 1; p < P; ++p) s = _mm512_add_ps(s, acc[p][v]);
      _mm512_storeu_ps(o + 16 * v, s);
    }
  }
}

template <class I>
OP_AVX512 void Spmm(const float* values, const I* col, const int32_t* row_ptr, const float* xt, int mb,
                    int64_t r0, int64_t r1, float* out) {
  switch (mb) {
    case 16: return SpmmFixed<I, 1, 4>(values, col, row_ptr, xt, r0, r1, out);
    case 32: return SpmmFixed<I, 2, 2>(values, col, row_ptr, xt, r0, r1, out);
    case 48: return SpmmFixed<I, 3, 2>(values, col, row_ptr, xt, r0, r1, out);
    default: return SpmmFixed<I, 4, 1>(values, col, row_ptr, xt, r0, r1, out);
  }
}

OP_AVX512 void ConvTile(const float* w, const int32_t* off, int64_t nnz, const float* q, int64_t row_stride,
                        float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  const float* q1 = q + row_stride;
  const float* q2 = q + 2 * row_stride;
  const float* q3 = q + 3 * row_stride;
  for (int64_t j = 0; j < nnz; ++j) {
    const __m512 wj = _mm512_set1_ps(w[j]);
    const int64_t o = off[j];
    a0 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(q + o), a0);
    a1 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(q1 + o), a1);
    a2 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(q2 + o), a2);
    a3 = _mm512_fmadd_ps(wj, _mm512_loadu_ps(q3 + o), a3);
  }
  _mm512_storeu_ps(out, a0);
  _mm512_storeu_ps(out + 16, a1);
  _mm512_storeu_ps(out + 32, a2);
  _mm512_storeu_ps(out + 48, a3);
}

}  // namespace avx512

// ---------------------------------------------------------------------------------------------

static const Kernels kScalarKernels = {
    scalar::Spmv<int16_t>, scalar::Spmv<int32_t>, scalar::Spmm<int16_t>, scalar::Spmm<int32_t>, scalar::ConvTile,
};
static const Kernels kAvx2Kernels = {
    avx2::Spmv<int16_t>, avx2::Spmv<int32_t>, avx2::Spmm<int16_t>, avx2::Spmm<int32_t>, avx2::ConvTile,
};
static const Kernels kAvx512Kernels = {
    avx512::Spmv<int16_t>, avx512::Spmv<int32_t>, avx512::Spmm<int16_t>, avx512::Spmm<int32_t>, avx512::ConvTile,
};

const Kernels& KernelsFor(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return kAvx512Kernels;
    case Isa::kAvx2: return kAvx2Kernels;
    default: return kScalarKernels;
  }
}

}  // namespace onnxprune
