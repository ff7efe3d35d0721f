// Three builds of the same loops: AVX-512, AVX2+FMA and portable C++. The vector ones are
// compiled with per-function target attributes (never -march), so one binary runs everywhere
// and picks the widest path the CPU supports.
#include "kernels.h"

// GCC 12 intrinsic headers self-initialise placeholder vectors (`__m512 __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every gather/convert call site; the values are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
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
void Spmv(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t /*k*/, int64_t r0,
          int64_t r1, float* y) {
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

// Batch-1 rows are built from scalar loads rather than gathers: on the Zen 4 class cores this
// was tuned on, a 16-lane vgatherdps retires about one lane per cycle, while plain loads
// inserted into a vector sustain ~1.3 nonzeros per cycle once the column indices arrive four
// (int16) or two (int32) per 64-bit load and are split in integer registers, which keeps the
// load ports free for x. The AVX-512 table uses these loops too; wider vectors do not help a
// loop bound by loads of x.
OP_AVX2 static inline __m256 LoadX8(const float* x, const int16_t* c) {
  uint64_t a, b;
  std::memcpy(&a, c, 8);
  std::memcpy(&b, c + 4, 8);
  // Indices were validated non-negative, so the 16-bit fields can be taken zero-extended.
  const __m128 lo = _mm_set_ps(x[a >> 48], x[(a >> 32) & 0xffff], x[(a >> 16) & 0xffff], x[a & 0xffff]);
  const __m128 hi = _mm_set_ps(x[b >> 48], x[(b >> 32) & 0xffff], x[(b >> 16) & 0xffff], x[b & 0xffff]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
OP_AVX2 static inline __m256 LoadX8(const float* x, const int32_t* c) {
  uint64_t a, b, d, e;
  std::memcpy(&a, c, 8);
  std::memcpy(&b, c + 2, 8);
  std::memcpy(&d, c + 4, 8);
  std::memcpy(&e, c + 6, 8);
  const __m128 lo = _mm_set_ps(x[b >> 32], x[static_cast<uint32_t>(b)], x[a >> 32], x[static_cast<uint32_t>(a)]);
  const __m128 hi = _mm_set_ps(x[e >> 32], x[static_cast<uint32_t>(e)], x[d >> 32], x[static_cast<uint32_t>(d)]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// Rows in order, x small enough to stay in L1 next to the streamed CSR arrays.
template <class I>
OP_AVX2 void SpmvRows(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t r0,
                      int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; j + 32 <= e; j += 32) {
      // The x loads keep the load queue busy enough that the hardware prefetcher falls behind
      // on the two sequential streams. ~2 KB ahead covers DRAM latency; further ahead the
      // prefetched lines start evicting x from L1.
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048 + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(col + j) + 1024 * sizeof(I) / 2, _MM_HINT_T0);
      if (sizeof(I) == 4) _mm_prefetch(reinterpret_cast<const char*>(col + j) + 2048 + 64, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), LoadX8(x, col + j), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 8), LoadX8(x, col + j + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 16), LoadX8(x, col + j + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 24), LoadX8(x, col + j + 24), a3);
    }
    for (; j + 8 <= e; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), LoadX8(x, col + j), a0);
    float s = Hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < e; ++j) s += values[j] * x[col[j]];
    y[r - r0] = s;
  }
}

// Wide x (beyond L1): x is split into column blocks of at most kSpmvBlockCols, and a group of
// kSpmvGroupRows rows is swept block by block, each row resuming where the previous block
// stopped, so the gathered part of x stays in L1 and the group's CSR data (read once from
// memory, then from L2) is what moves. A row's pass over a block stops at the first nonzero
// whose column lies past the block. With ascending columns (what csr_from_dense writes) that is
// exactly the block's share; with any other order each nonzero is still consumed exactly once,
// because the cursor only moves forward and the last block takes everything left.
template <class I>
OP_AVX2 void SpmvBlocked(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t k,
                         int64_t r0, int64_t r1, float* y) {
  const int64_t blocks = (k + kSpmvBlockCols - 1) / kSpmvBlockCols;
  const int64_t width = (k + blocks - 1) / blocks;
  // Lane masks for the first n lanes: 8 - n floats into this table.
  alignas(32) static const int32_t kPrefix[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  const char* const v_end = reinterpret_cast<const char*>(values + row_ptr[r1]);
  const char* const c_end = reinterpret_cast<const char*>(col + row_ptr[r1]);
  for (int64_t g0 = r0; g0 < r1; g0 += kSpmvGroupRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kSpmvGroupRows, r1 - g0));
    int64_t cur[kSpmvGroupRows];
    __m256 acc[kSpmvGroupRows];
    float tail[kSpmvGroupRows];
    for (int g = 0; g < rows; ++g) {
      cur[g] = row_ptr[g0 + g];
      acc[g] = _mm256_setzero_ps();
      tail[g] = 0.f;
    }
    // The next group's arrays are pulled into cache at the pace this group consumes its own,
    // so they arrive from DRAM as two sequential streams while this group runs from L2.
    const int64_t next = row_ptr[std::min(g0 + kSpmvGroupRows, r1)];
    const char* pv = reinterpret_cast<const char*>(values + next);
    const char* pc = reinterpret_cast<const char*>(col + next);
    for (int64_t b = 0; b < blocks; ++b) {
      const bool last = b + 1 == blocks;
      const int64_t bend = last ? k : (b + 1) * width;
      const __m256i vbend = _mm256_set1_epi32(static_cast<int32_t>(bend));
      for (int g = 0; g < rows; ++g) {
        int64_t j = cur[g];
        const int64_t e = row_ptr[g0 + g + 1];
        __m256 a0 = acc[g], a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (; j + 32 <= e && (last || col[j + 31] < bend); j += 32) {
          if (pv < v_end) {
            _mm_prefetch(pv, _MM_HINT_T0);
            _mm_prefetch(pv + 64, _MM_HINT_T0);
          }
          if (pc < c_end) {
            _mm_prefetch(pc, _MM_HINT_T0);
            if (sizeof(I) == 4) _mm_prefetch(pc + 64, _MM_HINT_T0);
          }
          pv += 128;
          pc += 32 * sizeof(I);
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), LoadX8(x, col + j), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 8), LoadX8(x, col + j + 8), a1);
          a2 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 16), LoadX8(x, col + j + 16), a2);
          a3 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j + 24), LoadX8(x, col + j + 24), a3);
        }
        a0 = _mm256_add_ps(a0, a2);
        a1 = _mm256_add_ps(a1, a3);
        // Up to 31 nonzeros left in this block: whole 8-lane steps, then a masked step for
        // the leading lanes still inside the block; near the row end, scalar.
        while (j + 8 <= e) {
          const __m256i inside = _mm256_cmpgt_epi32(vbend, LoadIdx8(col + j));
          const unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(inside)));
          const int n = __builtin_ctz(~bits);  // leading lanes inside; 8 when all are
          if (n == 8) {
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(values + j), LoadX8(x, col + j), a1);
            j += 8;
            continue;
          }
          // Lanes past the block are multiplied too (their indices are valid) but masked out
          // after the product, so an inf or NaN there cannot leak into this row's sum.
          const __m256 keep = _mm256_loadu_ps(reinterpret_cast<const float*>(kPrefix + 8 - n));
          const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(values + j), LoadX8(x, col + j));
          a1 = _mm256_add_ps(a1, _mm256_and_ps(p, keep));
          j += n;
          break;
        }
        if (j + 8 > e) {
          float t = tail[g];
          for (; j < e && col[j] < bend; ++j) t += values[j] * x[col[j]];
          tail[g] = t;
        }
        acc[g] = _mm256_add_ps(a0, a1);
        cur[g] = j;
      }
    }
    for (int g = 0; g < rows; ++g) y[g0 + g - r0] = Hsum(acc[g]) + tail[g];
  }
}

template <class I>
OP_AVX2 void Spmv(const float* values, const I* col, const int32_t* row_ptr, const float* x, int64_t k, int64_t r0,
                  int64_t r1, float* y) {
  if (k > kSpmvBlockCols + kSpmvBlockCols / 2)
    SpmvBlocked(values, col, row_ptr, x, k, r0, r1, y);
  else
    SpmvRows(values, col, row_ptr, x, r0, r1, y);
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
    avx2::Spmv<int16_t>, avx2::Spmv<int32_t>, avx512::Spmm<int16_t>, avx512::Spmm<int32_t>, avx512::ConvTile,
};

const Kernels& KernelsFor(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return kAvx512Kernels;
    case Isa::kAvx2: return kAvx2Kernels;
    default: return kScalarKernels;
  }
}

}  // namespace onnxprune
