// Three builds of the same loops: AVX-512, AVX2+FMA and portable C++. The vector ones are
// compiled with per-function target attributes (never -march), so one binary runs everywhere
// and picks the widest path the CPU supports.
#include "kernels.h"

// GCC 12 intrinsic headers self-initialise placeholder vectors (`__m512 __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every gather/convert call site; the values are never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#define OP_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi2")))
#define OP_AVX2 __attribute__((target("avx2,fma,f16c,bmi")))

// The conv tiles' accumulators: up to fourteen named vector variables, those numbered V and up
// dead, instead of an array of V vectors. GCC 12 keeps such an array in memory: the AVX2 tile
// stored all its accumulators to the stack on every nonzero (the pointer argument of
// _mm256_broadcast_ss may alias the array), which cost 1.6-2x of its rate on a Zen 1 class
// core. The AVX-512 tile's array loop was clean, but passed the array through the stack on
// entry and exit and formed each address in the step that used it; with named accumulators
// and the address loaded a step ahead (as the AVX2 tile), an Intel core with two 512-bit FMA
// units ran one-node 3x3 and 1x1 layers 1.04-1.09x and ResNet-50 at 90% 1.075x faster.
#define ONNXPRUNE_CONV_ACCS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
static_assert(onnxprune::kConvVectors[onnxprune::kConvVectorChoices - 1] <= 14, "ONNXPRUNE_CONV_ACCS names 14");

namespace onnxprune {

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// F16C (float16 <-> float32 conversion), which the vector paths use for float16 values. Every
// AVX2 CPU made has it, but __builtin_cpu_supports has no name for it in older compilers:
// CPUID leaf 1, ECX bit 29.
static bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx >> 29) & 1u;
}

bool CpuHas(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
    case Isa::kAvx2:
      // BMI1 (bextr, in the batch-1 loops' index decoding) came with AVX2 on every core made.
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c() &&
             __builtin_cpu_supports("bmi");
    default:
      return true;
  }
}

// An Intel CPU (CPUID vendor "GenuineIntel"): TaskOrder's up-front pass over a task's entries
// is chosen by vendor (ops.cc ChooseTouch).
bool CpuIsIntel() {
  __builtin_cpu_init();
  return __builtin_cpu_is("intel");
}

// A core that runs each 512-bit FMA as two halves on 256-bit units (AMD family 0x19 with
// AVX-512, the Zen 4 class): 16-lane vectors there do no more multiply-adds a cycle than 8-lane
// ones, so a convolution whose 16-lane tiles compute more discarded positions runs faster on
// the AVX2 tiles (ops.cc, ChooseNarrowTiles and CsrConvKernel::Plan).
bool CpuSplitsWideFma() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!CpuHas(Isa::kAvx512) || !__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned base = (eax >> 8) & 0xfu;
  const unsigned family = base == 0xfu ? base + ((eax >> 20) & 0xffu) : base;
  return family == 0x19u;
}

Isa BestIsa() {
  if (CpuHas(Isa::kAvx512)) return Isa::kAvx512;
  if (CpuHas(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

// ---------------------------------------------------------------------------------------------
// Column indices. Absolute ones (int16, int32) are read as they are; uint8 deltas are summed
// into a running column that a Cursor carries along the row (reset to 0 at every row start).
// The same loops serve all three: Take(col, j, cur) is the column of entry j (cur then sits
// past it), Peek the same without moving. For absolute indices the cursor is unused and
// compiles away.
struct Cursor {
  int64_t col = 0;
};
static inline int64_t Peek(const int16_t* c, int64_t j, const Cursor&) { return c[j]; }
static inline int64_t Peek(const int32_t* c, int64_t j, const Cursor&) { return c[j]; }
static inline int64_t Peek(const uint8_t* d, int64_t j, const Cursor& cur) { return cur.col + d[j]; }
static inline int64_t Take(const int16_t* c, int64_t j, Cursor&) { return c[j]; }
static inline int64_t Take(const int32_t* c, int64_t j, Cursor&) { return c[j]; }
static inline int64_t Take(const uint8_t* d, int64_t j, Cursor& cur) { return cur.col += d[j]; }
// Moves the cursor past the n entries at c.
static inline void Skip(const int16_t*, int, Cursor&) {}
static inline void Skip(const int32_t*, int, Cursor&) {}
static inline void Skip(const uint8_t* d, int n, Cursor& cur) {
  for (int i = 0; i < n; ++i) cur.col += d[i];
}

// ---------------------------------------------------------------------------------------------
// Portable
// f(std::integral_constant<Act, K>()) for K = a.kind; nothing for Act::kNone. The per-ISA
// Activate functions dispatch through it to loops written for one activation each (the
// calls are not inlined into f, which has no target attribute: each loop keeps its own).
template <class F>
void ForActivation(const Activation& a, F f) {
  switch (a.kind) {
    case Act::kRelu: return f(std::integral_constant<Act, Act::kRelu>());
    case Act::kLeakyRelu: return f(std::integral_constant<Act, Act::kLeakyRelu>());
    case Act::kClip: return f(std::integral_constant<Act, Act::kClip>());
    case Act::kHardSigmoid: return f(std::integral_constant<Act, Act::kHardSigmoid>());
    case Act::kHardSwish: return f(std::integral_constant<Act, Act::kHardSwish>());
    case Act::kSigmoid: return f(std::integral_constant<Act, Act::kSigmoid>());
    case Act::kSilu: return f(std::integral_constant<Act, Act::kSilu>());
    case Act::kGelu: return f(std::integral_constant<Act, Act::kGelu>());
    default: return;
  }
}

namespace scalar {

static inline float Val(const float* v, int64_t j) { return v[j]; }
static inline float Val(const uint16_t* v, int64_t j) { return HalfToFloat(v[j]); }

template <class V, class I>
void Spmv(const void* vp, const void* cp, const int32_t* row_ptr, const float* x, int64_t /*k*/, int64_t r0,
          int64_t r1, float* y) {
  const V* values = static_cast<const V*>(vp);
  const I* col = static_cast<const I*>(cp);
  for (int64_t r = r0; r < r1; ++r) {
    // Four partial sums break the add dependency chain; the order differs from a dense dot
    // product only by rounding.
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    Cursor cur;
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    for (; j + 4 <= e; j += 4) {
      s0 += Val(values, j) * x[Take(col, j, cur)];
      s1 += Val(values, j + 1) * x[Take(col, j + 1, cur)];
      s2 += Val(values, j + 2) * x[Take(col, j + 2, cur)];
      s3 += Val(values, j + 3) * x[Take(col, j + 3, cur)];
    }
    for (; j < e; ++j) s0 += Val(values, j) * x[Take(col, j, cur)];
    y[r - r0] = (s0 + s1) + (s2 + s3);
  }
}

template <class V, class I>
void Spmm(const void* vp, const void* cp, const int32_t* row_ptr, const float* xt, int mb, int64_t r0,
          int64_t r1, float* out) {
  const V* values = static_cast<const V*>(vp);
  const I* col = static_cast<const I*>(cp);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * mb;
    for (int m = 0; m < mb; ++m) o[m] = 0.f;
    Cursor cur;
    for (int64_t j = row_ptr[r]; j < row_ptr[r + 1]; ++j) {
      const float w = Val(values, j);
      const float* xr = xt + Take(col, j, cur) * mb;
      for (int m = 0; m < mb; ++m) o[m] += w * xr[m];
    }
  }
}

void HalfToFloatN(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = HalfToFloat(in[i]);
}

// In 16 x 16 blocks, so both sides touch a few cache lines at a time.
void Transpose(const float* src, int64_t ss, float* dst, int64_t ds, int64_t rows, int64_t cols) {
  constexpr int64_t kB = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kB) {
    const int64_t i1 = std::min(rows, i0 + kB);
    for (int64_t j0 = 0; j0 < cols; j0 += kB) {
      const int64_t j1 = std::min(cols, j0 + kB);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * ds + i] = src[i * ss + j];
    }
  }
}

// ConvEnd's finish of one sum: the clamp as the vector paths' min(hi, max(lo, s)), NaN kept.
inline float Finish(float s, const ConvEnd& end, int64_t i) {
  if (end.z != nullptr && i < end.z_lanes) s += end.z[i];
  return s < end.lo ? end.lo : (s > end.hi ? end.hi : s);
}

// conv_run.inc's ConvRunAt one float at a time (8-float vectors): float i of the tile at
// out + i, or with kStrided in rows of 16 floats vs apart.
template <int V, bool kStrided>
void ConvRunAt(const float* w, const int32_t* off, int64_t nnz, const float* q, float* out, float init,
               bool accumulate, const ConvEnd* end, int64_t vs) {
  constexpr int kT = 8 * V;
  const auto at = [vs](int i) { return kStrided ? static_cast<int64_t>(i / 16) * vs + i % 16 : int64_t{i}; };
  float a[kT];
  for (int i = 0; i < kT; ++i) a[i] = accumulate ? out[at(i)] : init;
  for (int64_t j = 0; j < nnz; ++j) {
    const float wj = w[j];
    const float* src = q + off[j];
    for (int i = 0; i < kT; ++i) a[i] += wj * src[i];
  }
  for (int i = 0; i < kT; ++i) out[at(i)] = end ? Finish(a[i], *end, at(i)) : a[i];
}

template <int V>
void ConvRun(const float* w, const int32_t* off, int64_t nnz, const float* q, float* out, float init,
             bool accumulate, const ConvEnd* end) {
  ConvRunAt<V, false>(w, off, nnz, q, out, init, accumulate, end, 0);
}

#define ONNXPRUNE_TILE_TARGET
#include "conv_rows.inc"
#undef ONNXPRUNE_TILE_TARGET

static inline float Clamp01(float t) { return t < 0.f ? 0.f : (t > 1.f ? 1.f : t); }  // NaN stays NaN

float Activate1(float y, const Activation& a) {
  switch (a.kind) {
    case Act::kRelu: return y < 0.f ? 0.f : y;
    case Act::kLeakyRelu: return y < 0.f ? a.alpha * y : y;
    case Act::kClip: return y < a.alpha ? a.alpha : (y > a.beta ? a.beta : y);
    case Act::kHardSigmoid: return Clamp01(a.alpha * y + a.beta);
    case Act::kHardSwish: return y * Clamp01(y * (1.f / 6.f) + 0.5f);
    case Act::kSigmoid: return 1.f / (1.f + std::exp(-y));
    case Act::kSilu: return y / (1.f + std::exp(-y));
    // 1 + erf(y / sqrt 2) as erfc(-y / sqrt 2), which keeps its relative precision far into
    // the negative tail, where 1 + erf cancels; in double, rounded once.
    case Act::kGelu: return static_cast<float>(0.5 * y * std::erfc(-static_cast<double>(y) * 0.70710678118654752));
    default: return y;
  }
}

void Add(float* y, const float* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += z[i];
}

void Strided(const float* src, int64_t stride, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

static inline float Max1(float a, float b) { return a > b ? a : b; }

void MaxPool2x2(const float* x, int64_t w, int64_t rows, int64_t ow, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + 2 * r * w;
    const float* b = a + w;
    for (int64_t i = 0; i < ow; ++i)
      y[r * ow + i] = Max1(std::numeric_limits<float>::lowest(),
                           Max1(Max1(a[2 * i], b[2 * i]), Max1(a[2 * i + 1], b[2 * i + 1])));
  }
}

// pool_rows.inc's MaxPoolBlock, lanes of 8.
void MaxPoolBlock(const float* p, int64_t wp, const PoolShape& g, int64_t oh, float* out) {
  constexpr int64_t kL = 8;
  for (int64_t oy = 0; oy < oh; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox)
      for (int64_t l = 0; l < kL; ++l) {
        const float* const at = p + (oy * g.sh * wp + ox * g.sw) * kL + l;
        float v = std::numeric_limits<float>::lowest();
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) v = Max1(v, at[(i * g.dh * wp + j * g.dw) * kL]);
        out[(oy * g.ow + ox) * kL + l] = v;
      }
}

// The vector ISAs' MaxPoolRows (pool_rows.inc) one float at a time: each output the maximum of
// -FLT_MAX and its window's taps inside x, rows first (in the same order).
void MaxPoolRows(const float* x, const PoolShape& g, int64_t oy0, int64_t oy1, float*, float* y) {
  for (int64_t oy = oy0; oy < oy1; ++oy)
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      float m = std::numeric_limits<float>::lowest();
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ix = ox * g.sw - g.pad_l + j * g.dw;
        float c = std::numeric_limits<float>::lowest();
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t iy = oy * g.sh - g.pad_t + i * g.dh;
          if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) c = Max1(c, x[iy * g.w + ix]);
        }
        m = Max1(m, c);
      }
      y[(oy - oy0) * g.ow + ox] = m;
    }
}

void Gather(const float* src, const int32_t* at, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = at[i] >= 0 ? src[at[i]] : 0.f;
}

// x + i as an address where the element may lie outside the array (a masked-out lane, never
// read): formed as an integer, so no pointer leaves the array.
inline const float* At(const float* x, int64_t i) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(x) +
                                        static_cast<uintptr_t>(static_cast<intptr_t>(i) * 4));
}

// Kernels::copy_rows, one float at a time.
void CopyRows(const float* src, int64_t stride, int64_t w, int64_t rows, float* dst, int64_t pitch) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < w; ++i) dst[r * pitch + i] = src[r * stride + i];
}

// Kernels::dw_rows lane by lane, on conv_lanes = 8.
void DwRows(const float* x, int64_t stride, const int64_t* off, const float* w, const uint16_t* mask, int64_t n,
            int64_t /*full0*/, int64_t /*full1*/, int64_t oy0, int64_t oy1, int64_t ow, float init, float* y) {
  for (int64_t oy = oy0; oy < oy1; ++oy) {
    const int64_t row = oy * stride;  // x + row may lie outside the plane on an edge row
    float* yr = y + oy * ow;
    for (int64_t i = 0; i < ow; ++i) {
      float s = init;
      const uint16_t* m = mask + (i / 8) * n;
      for (int64_t k = 0; k < n; ++k)
        if ((m[k] >> (i % 8)) & 1u) s += w[k] * x[row + i + off[k]];
      yr[i] = s;
    }
  }
}

// The portable loop of dw_block.inc, lanes of 8.
void DwBlock(const float* p, int64_t wp, int64_t sh, int64_t sw, const int64_t* off, const float* wt,
             const uint16_t* mask, int64_t n, int64_t oh, int64_t ow, const float* init, float* out) {
  constexpr int64_t kL = 8;
  for (int64_t oy = 0; oy < oh; ++oy) {
    for (int64_t ox = 0; ox < ow; ++ox) {
      const float* s = p + (oy * sh * wp + ox * sw) * kL;
      float* o = out + (oy * ow + ox) * kL;
      for (int64_t l = 0; l < kL; ++l) {
        float a = init[l];
        for (int64_t k = 0; k < n; ++k)
          if ((mask[k] >> l) & 1u) a += wt[k * kL + l] * s[off[k] + l];
        o[l] = a;
      }
    }
  }
}

// The portable loops of dw_block.inc's DwBlockIn and DwBlockOut, lanes of 8.
void DwBlockIn(const float* x, int64_t plane, int64_t lv, int64_t h, int64_t w, int64_t pad_t, int64_t pad_l,
               int64_t hp, int64_t wp, float* p) {
  constexpr int64_t kL = 8;
  std::fill(p, p + hp * wp * kL, 0.f);
  for (int64_t l = 0; l < lv; ++l)
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) p[((pad_t + r) * wp + pad_l + c) * kL + l] = x[l * plane + r * w + c];
}

void DwBlockOut(const float* src, int64_t n, int64_t lv, float lo, float hi, float* y, int64_t stride) {
  constexpr int64_t kL = 8;
  for (int64_t l = 0; l < lv; ++l)
    for (int64_t i = 0; i < n; ++i) {
      // as the vector Max(lo, s) and Min(hi, m): s where it is NaN, or equal (a -0 kept)
      const float s = src[i * kL + l], m = s < lo ? lo : s;
      y[l * stride + i] = m > hi ? hi : m;
    }
}

void Deinterleave(const float* src, int64_t n, float* d0, float* d1) {
  for (int64_t i = 0; i < n; ++i) {
    d0[i] = src[2 * i];
    d1[i] = src[2 * i + 1];
  }
}

void Activate(float* y, int64_t n, const Activation& a) {
  for (int64_t i = 0; i < n; ++i) y[i] = Activate1(y[i], a);
}

}  // namespace scalar


// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C + BMI1
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

// Values: float32 as they are, float16 widened in registers (vcvtph2ps), so a float16 CSR
// streams half the value bytes and every product and sum is still float32.
OP_AVX2 static inline __m256 Val8(const float* v) { return _mm256_loadu_ps(v); }
OP_AVX2 static inline __m256 Val8(const uint16_t* v) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
}
OP_AVX2 static inline float Val(const float* v, int64_t j) { return v[j]; }
OP_AVX2 static inline float Val(const uint16_t* v, int64_t j) { return _cvtsh_ss(v[j]); }

// Batch-1 rows are built from scalar loads rather than gathers: on the Zen 4 class cores this
// was tuned on, a 16-lane vgatherdps retires about one lane per cycle, while plain loads
// inserted into a vector sustain ~1.3 nonzeros per cycle once the column indices arrive four
// (int16) or two (int32) per 64-bit load and are split in integer registers, which keeps the
// load ports free for x. The AVX-512 table uses these loops too; wider vectors do not help a
// loop bound by loads of x.
// The 16-bit field of v at bit `at`, zero-extended: one bextr (BMI1) where a shift and a movzx
// took two integer ops, and the field extraction is most of this loop's integer work. On a Zen
// 3 class core the batch-1 row loop ran 1.07-1.10x faster (docs/BENCHMARKS.md).
OP_AVX2 static inline uint64_t Field16(uint64_t v, unsigned at) { return _bextr_u64(v, at, 16); }
OP_AVX2 static inline __m128 Gather4(const float* x, uint64_t a) {
  return _mm_set_ps(x[a >> 48], x[Field16(a, 32)], x[Field16(a, 16)], x[a & 0xffff]);
}
OP_AVX2 static inline __m256 LoadX8(const float* x, const int16_t* c, Cursor&) {
  uint64_t a, b;
  std::memcpy(&a, c, 8);
  std::memcpy(&b, c + 4, 8);
  // Indices were validated non-negative, so the 16-bit fields can be taken zero-extended.
  return _mm256_insertf128_ps(_mm256_castps128_ps256(Gather4(x, a)), Gather4(x, b), 1);
}
OP_AVX2 static inline __m256 LoadX8(const float* x, const int32_t* c, Cursor&) {
  uint64_t a, b, d, e;
  std::memcpy(&a, c, 8);
  std::memcpy(&b, c + 2, 8);
  std::memcpy(&d, c + 4, 8);
  std::memcpy(&e, c + 6, 8);
  const __m128 lo = _mm_set_ps(x[b >> 32], x[static_cast<uint32_t>(b)], x[a >> 32], x[static_cast<uint32_t>(a)]);
  const __m128 hi = _mm_set_ps(x[e >> 32], x[static_cast<uint32_t>(e)], x[d >> 32], x[static_cast<uint32_t>(d)]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
// uint8 deltas, decoded in registers: the 8 deltas are widened to 16-bit lanes and
// prefix-summed there (three shift-adds; 8 x 255 fits 16 bits), so the 8 columns are the
// cursor's column plus independent 16-bit fields, and the only loop-carried dependency is one
// add per 8 nonzeros (a running add per nonzero would cap the loop at one nonzero per cycle).
OP_AVX2 static inline __m128i PrefixDeltas8(const uint8_t* d) {
  __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(d)));
  w = _mm_add_epi16(w, _mm_slli_si128(w, 2));
  w = _mm_add_epi16(w, _mm_slli_si128(w, 4));
  return _mm_add_epi16(w, _mm_slli_si128(w, 8));
}
// x at the 8 columns base + (prefix sums of d[0..7]); the last of them is returned in *last.
// `xb` = x + base, so each load is one base + index address, as for absolute indices.
OP_AVX2 static inline __m256 LoadX8From(const float* xb, const uint8_t* d, int64_t* last) {
  const __m128i w = PrefixDeltas8(d);
  const uint64_t a = static_cast<uint64_t>(_mm_cvtsi128_si64(w));
  const uint64_t b = static_cast<uint64_t>(_mm_extract_epi64(w, 1));
  *last = static_cast<int64_t>(b >> 48);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(Gather4(xb, a)), Gather4(xb, b), 1);
}
OP_AVX2 static inline __m256 LoadX8(const float* x, const uint8_t* d, Cursor& cur) {
  int64_t last = 0;
  const __m256 v = LoadX8From(x + cur.col, d, &last);
  cur.col += last;
  return v;
}
// The 32 x values of entries c[0..31], the cursor moved past them. For deltas the four
// 8-entry bases come from one vpsadbw (four sums of 8 bytes), so the 8-entry groups decode
// independently and the loop-carried chain is one add per 32 entries.
template <class I>
OP_AVX2 static inline void LoadX32(const float* x, const I* c, Cursor& cur, __m256 out[4]) {
  for (int i = 0; i < 4; ++i) out[i] = LoadX8(x, c + 8 * i, cur);
}
OP_AVX2 static inline void LoadX32(const float* x, const uint8_t* d, Cursor& cur, __m256 out[4]) {
  const __m256i s = _mm256_sad_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d)), _mm256_setzero_si256());
  const __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
  const int64_t s0 = _mm_cvtsi128_si64(lo), s1 = _mm_extract_epi64(lo, 1);
  const int64_t s2 = _mm_cvtsi128_si64(hi), s3 = _mm_extract_epi64(hi, 1);
  const float* xb = x + cur.col;
  int64_t unused = 0;
  out[0] = LoadX8From(xb, d, &unused);
  out[1] = LoadX8From(xb + s0, d + 8, &unused);
  out[2] = LoadX8From(xb + (s0 + s1), d + 16, &unused);
  out[3] = LoadX8From(xb + (s0 + s1 + s2), d + 24, &unused);
  cur.col += (s0 + s1) + (s2 + s3);
}
// The 8 columns at c as int32 lanes, the cursor unmoved (decoded columns are < 2^31: ops.cc).
OP_AVX2 static inline __m256i Cols8(const int16_t* c, const Cursor&) { return LoadIdx8(c); }
OP_AVX2 static inline __m256i Cols8(const int32_t* c, const Cursor&) { return LoadIdx8(c); }
OP_AVX2 static inline __m256i Cols8(const uint8_t* d, const Cursor& cur) {
  return _mm256_add_epi32(_mm256_cvtepu16_epi32(PrefixDeltas8(d)), _mm256_set1_epi32(static_cast<int32_t>(cur.col)));
}
// Column of entry 31 counted from c, the cursor unmoved.
OP_AVX2 static inline int64_t Last32(const int16_t* c, const Cursor&) { return c[31]; }
OP_AVX2 static inline int64_t Last32(const int32_t* c, const Cursor&) { return c[31]; }
OP_AVX2 static inline int64_t Last32(const uint8_t* d, const Cursor& cur) {
  // vpsadbw against zero: four sums of 8 bytes each.
  const __m256i s = _mm256_sad_epu8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d)), _mm256_setzero_si256());
  const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return cur.col + _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1);
}

// Rows in order, x small enough to stay in L1 next to the streamed CSR arrays.
template <class V, class I>
OP_AVX2 void SpmvRows(const V* values, const I* col, const int32_t* row_ptr, const float* x, int64_t r0,
                      int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    Cursor cur;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; j + 32 <= e; j += 32) {
      // The x loads keep the load queue busy enough that the hardware prefetcher falls behind
      // on the two sequential streams. ~2 KB ahead covers DRAM latency; further ahead the
      // prefetched lines start evicting x from L1.
      _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048, _MM_HINT_T0);
      if (sizeof(V) == 4) _mm_prefetch(reinterpret_cast<const char*>(values + j) + 2048 + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(col + j) + 1024 * sizeof(I) / 2, _MM_HINT_T0);
      if (sizeof(I) == 4) _mm_prefetch(reinterpret_cast<const char*>(col + j) + 2048 + 64, _MM_HINT_T0);
      __m256 xs[4];
      LoadX32(x, col + j, cur, xs);
      a0 = _mm256_fmadd_ps(Val8(values + j), xs[0], a0);
      a1 = _mm256_fmadd_ps(Val8(values + j + 8), xs[1], a1);
      a2 = _mm256_fmadd_ps(Val8(values + j + 16), xs[2], a2);
      a3 = _mm256_fmadd_ps(Val8(values + j + 24), xs[3], a3);
    }
    for (; j + 8 <= e; j += 8) a0 = _mm256_fmadd_ps(Val8(values + j), LoadX8(x, col + j, cur), a0);
    float s = Hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < e; ++j) s += Val(values, j) * x[Take(col, j, cur)];
    y[r - r0] = s;
  }
}

// The up to 31 nonzeros of one row left in a column block (after SpmvBlocked's 32-wide steps):
// whole 8-lane steps, then a masked step for the leading lanes still inside the block; near
// the row end, scalar into `tail`. Returns the row's new position; `cur` follows it.
template <class V, class I>
OP_AVX2 int64_t SpmvBlockRest(const V* values, const I* col, const float* x, int64_t j, int64_t e, int64_t bend,
                              Cursor& cur, __m256& a1, float& tail) {
  // Lane masks for the first n lanes: 8 - n floats into this table.
  alignas(32) static const int32_t kPrefix[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  const __m256i vbend = _mm256_set1_epi32(static_cast<int32_t>(bend));
  while (j + 8 <= e) {
    const __m256i inside = _mm256_cmpgt_epi32(vbend, Cols8(col + j, cur));
    const unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(inside)));
    const int n = __builtin_ctz(~bits);  // leading lanes inside; 8 when all are
    if (n == 8) {
      a1 = _mm256_fmadd_ps(Val8(values + j), LoadX8(x, col + j, cur), a1);
      j += 8;
      continue;
    }
    // Lanes past the block are multiplied too (their indices are valid) but masked out
    // after the product, so an inf or NaN there cannot leak into this row's sum.
    const __m256 keep = _mm256_loadu_ps(reinterpret_cast<const float*>(kPrefix + 8 - n));
    Cursor probe = cur;
    const __m256 p = _mm256_mul_ps(Val8(values + j), LoadX8(x, col + j, probe));
    a1 = _mm256_add_ps(a1, _mm256_and_ps(p, keep));
    Skip(col + j, n, cur);
    return j + n;
  }
  for (; j < e && Peek(col, j, cur) < bend; ++j) tail += Val(values, j) * x[Take(col, j, cur)];
  return j;
}

// Wide x (beyond L1): x is split into column blocks of at most kSpmvBlockCols, and a group of
// kSpmvGroupRows rows is swept block by block, each row resuming where the previous block
// stopped, so the gathered part of x stays in L1 and the group's CSR data (read once from
// memory, then from L2) is what moves. A row's pass over a block stops at the first nonzero
// whose column lies past the block. With ascending columns (what csr_from_dense writes, and
// always for deltas) that is exactly the block's share; with any other order each nonzero is
// still consumed exactly once, because the cursor only moves forward and the last block takes
// everything left.
template <class V, class I>
OP_AVX2 void SpmvBlocked(const V* values, const I* col, const int32_t* row_ptr, const float* x, int64_t k,
                         int64_t r0, int64_t r1, float* y) {
  const int64_t blocks = (k + kSpmvBlockCols - 1) / kSpmvBlockCols;
  const int64_t width = (k + blocks - 1) / blocks;
  const char* const v_end = reinterpret_cast<const char*>(values + row_ptr[r1]);
  const char* const c_end = reinterpret_cast<const char*>(col + row_ptr[r1]);
  for (int64_t g0 = r0; g0 < r1; g0 += kSpmvGroupRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kSpmvGroupRows, r1 - g0));
    int64_t pos[kSpmvGroupRows];
    Cursor curs[kSpmvGroupRows];
    __m256 acc[kSpmvGroupRows];
    float tail[kSpmvGroupRows];
    for (int g = 0; g < rows; ++g) {
      pos[g] = row_ptr[g0 + g];
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
      for (int g = 0; g < rows; ++g) {
        int64_t j = pos[g];
        const int64_t e = row_ptr[g0 + g + 1];
        Cursor& cur = curs[g];
        __m256 a0 = acc[g], a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (; j + 32 <= e && (last || Last32(col + j, cur) < bend); j += 32) {
          if (pv < v_end) {
            _mm_prefetch(pv, _MM_HINT_T0);
            if (sizeof(V) == 4) _mm_prefetch(pv + 64, _MM_HINT_T0);
          }
          if (pc < c_end) {
            _mm_prefetch(pc, _MM_HINT_T0);
            if (sizeof(I) == 4) _mm_prefetch(pc + 64, _MM_HINT_T0);
          }
          pv += 32 * sizeof(V);
          pc += 32 * sizeof(I);
          __m256 xs[4];
          LoadX32(x, col + j, cur, xs);
          a0 = _mm256_fmadd_ps(Val8(values + j), xs[0], a0);
          a1 = _mm256_fmadd_ps(Val8(values + j + 8), xs[1], a1);
          a2 = _mm256_fmadd_ps(Val8(values + j + 16), xs[2], a2);
          a3 = _mm256_fmadd_ps(Val8(values + j + 24), xs[3], a3);
        }
        a0 = _mm256_add_ps(a0, a2);
        a1 = _mm256_add_ps(a1, a3);
        pos[g] = SpmvBlockRest(values, col, x, j, e, bend, cur, a1, tail[g]);
        acc[g] = _mm256_add_ps(a0, a1);
      }
    }
    for (int g = 0; g < rows; ++g) y[g0 + g - r0] = Hsum(acc[g]) + tail[g];
  }
}

template <class V, class I>
OP_AVX2 void SpmvInOrder(const void* vp, const void* cp, const int32_t* row_ptr, const float* x, int64_t /*k*/,
                         int64_t r0, int64_t r1, float* y) {
  SpmvRows(static_cast<const V*>(vp), static_cast<const I*>(cp), row_ptr, x, r0, r1, y);
}

template <class V, class I>
OP_AVX2 void Spmv(const void* vp, const void* cp, const int32_t* row_ptr, const float* x, int64_t k, int64_t r0,
                  int64_t r1, float* y) {
  const V* values = static_cast<const V*>(vp);
  const I* col = static_cast<const I*>(cp);
  if (k > kSpmvBlockCols + kSpmvBlockCols / 2)
    SpmvBlocked(values, col, row_ptr, x, k, r0, r1, y);
  else
    SpmvRows(values, col, row_ptr, x, r0, r1, y);
}

// V ymm registers span the mb-wide panel row; P independent accumulator sets hide FMA latency
// when the panel is narrow.
template <class T, class I, int V, int P>
OP_AVX2 void SpmmFixed(const T* values, const I* col, const int32_t* row_ptr, const float* xt, int64_t r0,
                       int64_t r1, float* out) {
  constexpr int mb = V * 8;
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    Cursor cur;
    for (; j + P <= e; j += P) {
      for (int p = 0; p < P; ++p) {
        const __m256 w = _mm256_set1_ps(Val(values, j + p));
        const float* xr = xt + Take(col, j + p, cur) * mb;
        for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(w, _mm256_load_ps(xr + 8 * v), acc[p][v]);
      }
    }
    for (; j < e; ++j) {
      const __m256 w = _mm256_set1_ps(Val(values, j));
      const float* xr = xt + Take(col, j, cur) * mb;
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

template <class T, class I>
OP_AVX2 void Spmm(const void* vp, const void* cp, const int32_t* row_ptr, const float* xt, int mb, int64_t r0,
                  int64_t r1, float* out) {
  const T* values = static_cast<const T*>(vp);
  const I* col = static_cast<const I*>(cp);
  switch (mb) {
    case 16: return SpmmFixed<T, I, 2, 2>(values, col, row_ptr, xt, r0, r1, out);
    case 32: return SpmmFixed<T, I, 4, 1>(values, col, row_ptr, xt, r0, r1, out);
    case 48: return SpmmFixed<T, I, 6, 1>(values, col, row_ptr, xt, r0, r1, out);
    default: return SpmmFixed<T, I, 8, 1>(values, col, row_ptr, xt, r0, r1, out);
  }
}

// The conv tiles over 8-float vectors (conv_run.inc).
using Vec = __m256;
constexpr int kLanes = 8;
OP_AVX2 static inline Vec Set1(float v) { return _mm256_set1_ps(v); }
OP_AVX2 static inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
// p[0 .. n) and zeros, for 0 < n < 8: nothing past p + n is read.
OP_AVX2 static inline Vec LoadFirst(const float* p, int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
}
OP_AVX2 static inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
OP_AVX2 static inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
OP_AVX2 static inline Vec Sum(Vec a, Vec b) { return _mm256_add_ps(a, b); }
OP_AVX2 static inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }  // b where either is NaN
OP_AVX2 static inline Vec Min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
#define ONNXPRUNE_TILE_TARGET OP_AVX2
#include "conv_run.inc"
#include "conv_rows.inc"
#undef ONNXPRUNE_TILE_TARGET

// 8 x 8 blocks in registers (unpack, shuffle, 128-bit lane permute), edges through the
// portable loop.
//
// Column blocks outer, row blocks inner: the eight rows of dst that a column block fills are
// written whole, line after line, before the next eight. (Row blocks outer wrote every dst row
// 32 bytes at a time across the whole block; CsrGemm's dst rows are N floats apart, for N =
// 3072 12 KiB, all in the same four L1 sets, so each line was evicted between its two halves:
// BERT's 768 -> 3072 product at 128 rows spent ~15% of its time here on an Intel core.)
OP_AVX2 void Transpose(const float* src, int64_t ss, float* dst, int64_t ds, int64_t rows, int64_t cols) {
  const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
  for (int64_t j0 = 0; j0 < cols8; j0 += 8) {
    for (int64_t i0 = 0; i0 < rows8; i0 += 8) {
      __m256 r[8], t[8];
      for (int u = 0; u < 8; ++u) r[u] = _mm256_loadu_ps(src + (i0 + u) * ss + j0);
      for (int u = 0; u < 8; u += 2) {
        t[u] = _mm256_unpacklo_ps(r[u], r[u + 1]);
        t[u + 1] = _mm256_unpackhi_ps(r[u], r[u + 1]);
      }
      for (int u = 0; u < 8; u += 4) {
        r[u] = _mm256_shuffle_ps(t[u], t[u + 2], 0x44);
        r[u + 1] = _mm256_shuffle_ps(t[u], t[u + 2], 0xee);
        r[u + 2] = _mm256_shuffle_ps(t[u + 1], t[u + 3], 0x44);
        r[u + 3] = _mm256_shuffle_ps(t[u + 1], t[u + 3], 0xee);
      }
      for (int u = 0; u < 4; ++u) {
        t[u] = _mm256_permute2f128_ps(r[u], r[u + 4], 0x20);
        t[u + 4] = _mm256_permute2f128_ps(r[u], r[u + 4], 0x31);
      }
      for (int u = 0; u < 8; ++u) _mm256_storeu_ps(dst + (j0 + u) * ds + i0, t[u]);
    }
  }
  if (cols8 < cols) scalar::Transpose(src + cols8, ss, dst + cols8 * ds, ds, rows, cols - cols8);
  if (rows8 < rows) scalar::Transpose(src + rows8 * ss, ss, dst + rows8, ds, rows - rows8, cols8);
}

OP_AVX2 void HalfToFloatN(const uint16_t* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Val8(in + i));
  for (; i < n; ++i) out[i] = _cvtsh_ss(in[i]);
}

// The rational fits of runtime_ops/fit_rational.py, f(s) = s P(s^2) / Q(s^2) for |s| <= clamp
// (beyond, erf and tanh round to +-1 in float32), coefficients highest degree first, Q's
// constant 1 left out. Evaluated in float32 they are within 5e-7 (erf) and 4e-7 (tanh) of the
// functions.
struct ErfFit {
  static constexpr float clamp = 3.92f;
  static constexpr int np = 6, nq = 5;
  static constexpr float p[np] = {2.0487214e-06f, 0.00028588963f, 0.0037954603f, 0.052837424f, 0.19105746f, 1.1283791f};
  static constexpr float q[nq] = {3.813192e-05f, 0.0011705003f, 0.015026994f, 0.1143812f, 0.5026525f};
};
struct TanhFit {
  static constexpr float clamp = 9.01f;
  static constexpr int np = 5, nq = 5;
  static constexpr float p[np] = {5.3774517e-08f, 3.2455875e-05f, 0.004048545f, 0.13816811f, 1.0f};
  static constexpr float q[nq] = {7.975569e-10f, 1.6843841e-06f, 0.0004279684f, 0.027882364f, 0.47150144f};
};

// GELU, y/2 (1 + erf(y / sqrt 2)), erf by ErfFit: no exp. Absolute, like ONNX Runtime's own
// Gelu: where 1 + erf cancels (y below ~ -5) the result is within ~1e-6 |y| of GELU, not
// within a relative bound. +inf gives +inf and -inf gives NaN (-inf * 0, as the ONNX formula).
// Sigmoid as 1/2 + 1/2 tanh(y/2), tanh by TanhFit, and Swish as y Sigmoid(y): the exp-based
// form cost ~4 cycles per element on a Zen 1 class core, more than ONNX Runtime's own Sigmoid
// node. Absolute too: below y ~ -18 Sigmoid is exactly 0 (the exact value is < 2e-8);
// Sigmoid(+-inf) = 1 / 0, Swish(+inf) = +inf, Swish(-inf) is NaN (-inf * 0, as the portable
// loop and the ONNX ops give).
//
// U vectors at a time, each step written for all U before the next, so the U chains (two
// Horner chains and a reciprocal, ~50 cycles of latency on a Zen 1 class core, more than its
// scheduler holds of one vector's loop iteration) overlap (the exp-based GELU ran 4.1 ns per
// element one vector per iteration, 2.7 four at a time). 1 / Q
// by vrcpps and one Newton step (Q lies in [1, 600] on these ranges; within ~2 ulp; vdivps
// retires one vector per ~5 cycles there). f is kept within [-1, 1]: a fit may pass +-1 by an
// ulp near the clamp, which would flip the sign of 1 +- f where that should be 0. NaN lanes
// stay NaN (every max/min returns its second operand for them).
template <Act K, int U>
OP_AVX2 static inline void RationalActN(const float* in, float* out) {
  using Fit = typename std::conditional<K == Act::kGelu, ErfFit, TanhFit>::type;
  const float scale = K == Act::kGelu ? 0.70710678f : 0.5f;
  __m256 y[U], s[U], u[U], f[U], q[U];
  for (int i = 0; i < U; ++i) y[i] = _mm256_loadu_ps(in + 8 * i);
  for (int i = 0; i < U; ++i)
    s[i] = _mm256_min_ps(_mm256_set1_ps(Fit::clamp),
                         _mm256_max_ps(_mm256_set1_ps(-Fit::clamp), _mm256_mul_ps(y[i], _mm256_set1_ps(scale))));
  for (int i = 0; i < U; ++i) u[i] = _mm256_mul_ps(s[i], s[i]);
  for (int i = 0; i < U; ++i) f[i] = _mm256_fmadd_ps(_mm256_set1_ps(Fit::p[0]), u[i], _mm256_set1_ps(Fit::p[1]));
  for (int i = 0; i < U; ++i) q[i] = _mm256_fmadd_ps(_mm256_set1_ps(Fit::q[0]), u[i], _mm256_set1_ps(Fit::q[1]));
#pragma GCC unroll 6
  for (int k = 2; k < Fit::nq + 1; ++k) {  // Q's last step adds its constant 1
    if (k < Fit::np)
      for (int i = 0; i < U; ++i) f[i] = _mm256_fmadd_ps(f[i], u[i], _mm256_set1_ps(Fit::p[k]));
    for (int i = 0; i < U; ++i) q[i] = _mm256_fmadd_ps(q[i], u[i], _mm256_set1_ps(k < Fit::nq ? Fit::q[k] : 1.f));
  }
  for (int i = 0; i < U; ++i) {
    const __m256 r = _mm256_rcp_ps(q[i]);
    const __m256 inv = _mm256_mul_ps(r, _mm256_fnmadd_ps(q[i], r, _mm256_set1_ps(2.f)));
    f[i] = _mm256_mul_ps(s[i], _mm256_mul_ps(f[i], inv));
  }
  for (int i = 0; i < U; ++i) f[i] = _mm256_min_ps(_mm256_set1_ps(1.f), _mm256_max_ps(_mm256_set1_ps(-1.f), f[i]));
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int i = 0; i < U; ++i) {
    __m256 r;
    if (K == Act::kGelu) {
      r = _mm256_mul_ps(_mm256_mul_ps(half, y[i]), _mm256_add_ps(_mm256_set1_ps(1.f), f[i]));
    } else {
      r = _mm256_fmadd_ps(half, f[i], half);
      if (K == Act::kSilu) r = _mm256_mul_ps(y[i], r);
    }
    _mm256_storeu_ps(out + 8 * i, r);
  }
}

template <Act K>
OP_AVX2 static void RationalActRun(float* y, int64_t n, const Activation& a) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) RationalActN<K, 4>(y + i, y + i);
  for (; i + 8 <= n; i += 8) RationalActN<K, 1>(y + i, y + i);
  scalar::Activate(y + i, n - i, a);
}

// One activation over n floats, 8 at a time (one loop per function, chosen once), the rest
// through the portable function. The operand order of every max/min keeps NaN lanes NaN, as in
// the portable loop.
template <Act K>
OP_AVX2 static inline __m256 Act8(__m256 v, __m256 alpha, __m256 beta) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  switch (K) {
    case Act::kRelu: return _mm256_max_ps(zero, v);
    case Act::kLeakyRelu: return _mm256_blendv_ps(v, _mm256_mul_ps(alpha, v), _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    case Act::kClip: return _mm256_min_ps(beta, _mm256_max_ps(alpha, v));
    case Act::kHardSigmoid: return _mm256_min_ps(one, _mm256_max_ps(zero, _mm256_fmadd_ps(alpha, v, beta)));
    case Act::kHardSwish: {
      const __m256 t = _mm256_fmadd_ps(v, _mm256_set1_ps(1.f / 6.f), _mm256_set1_ps(0.5f));
      return _mm256_mul_ps(v, _mm256_min_ps(one, _mm256_max_ps(zero, t)));
    }
    default: return v;
  }
}

template <Act K>
OP_AVX2 static void ActivateAs(float* y, int64_t n, const Activation& a) {
  const __m256 alpha = _mm256_set1_ps(a.alpha), beta = _mm256_set1_ps(a.beta);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Act8<K>(_mm256_loadu_ps(y + i), alpha, beta));
  scalar::Activate(y + i, n - i, a);
}

OP_AVX2 void Add(float* y, const float* z, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(z + i)));
  for (; i < n; ++i) y[i] += z[i];
}

// The even and odd floats of a then b: a0 a2 b0 b2 | a4 a6 b4 b6 and a1 a3 b1 b3 | a5 a7 b5 b7
// (in-lane shuffles), then the 64-bit quarters in order (Deinterleave, MaxPool2x2, pool_rows.inc).
OP_AVX2 static inline void EvenOddOf(__m256 a, __m256 b, __m256* even, __m256* odd) {
  const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

// Eight outputs from 16 floats of each input row: the rows' maximum, then of its even and odd
// floats; the rest one by one.
OP_AVX2 void MaxPool2x2(const float* x, int64_t w, int64_t rows, int64_t ow, float* y) {
  const __m256 lowest = _mm256_set1_ps(std::numeric_limits<float>::lowest());
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + 2 * r * w;
    const float* b = a + w;
    float* o = y + r * ow;
    int64_t i = 0;
    for (; i + 8 <= ow; i += 8) {
      __m256 even, odd;
      EvenOddOf(_mm256_max_ps(_mm256_loadu_ps(a + 2 * i), _mm256_loadu_ps(b + 2 * i)),
                _mm256_max_ps(_mm256_loadu_ps(a + 2 * i + 8), _mm256_loadu_ps(b + 2 * i + 8)), &even, &odd);
      _mm256_storeu_ps(o + i, _mm256_max_ps(lowest, _mm256_max_ps(even, odd)));
    }
    scalar::MaxPool2x2(a + 2 * i, w, 1, ow - i, o + i);
  }
}

// Stride 2: 16 floats loaded for 8 kept. A vector's last float, src[2i + 15], is read only while
// it lies within the n * 2 - 1 floats the call may touch (i + 8 < n); the rest one by one.
OP_AVX2 void Strided(const float* src, int64_t stride, int64_t n, float* dst) {
  int64_t i = 0;
  if (stride == 2) {
    for (; i + 8 < n; i += 8) {
      const __m256 even = _mm256_shuffle_ps(_mm256_loadu_ps(src + 2 * i), _mm256_loadu_ps(src + 2 * i + 8),
                                            _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
      _mm256_storeu_ps(dst + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0))));
    }
  }
  scalar::Strided(src + i * stride, stride, n - i, dst + i);
}

OP_AVX2 void Deinterleave(const float* src, int64_t n, float* d0, float* d1) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 even, odd;
    EvenOddOf(_mm256_loadu_ps(src + 2 * i), _mm256_loadu_ps(src + 2 * i + 8), &even, &odd);
    _mm256_storeu_ps(d0 + i, even);
    _mm256_storeu_ps(d1 + i, odd);
  }
  scalar::Deinterleave(src + 2 * i, n - i, d0 + i, d1 + i);
}

void Activate(float* y, int64_t n, const Activation& a) {
  ForActivation(a, [&](auto k) {
    constexpr Act K = decltype(k)::value;
    if constexpr (K == Act::kSigmoid || K == Act::kSilu || K == Act::kGelu) {
      RationalActRun<K>(y, n, a);
    } else {
      ActivateAs<K>(y, n, a);
    }
  });
}

// The lanes of 8 whose bit is set in `bits`, as a maskload/maskstore mask.
OP_AVX2 static inline __m256i LaneMask(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
}

// The first min(8, left) lanes of v to p (left >= 1).
OP_AVX2 static inline void StoreLanes(float* p, int64_t left, __m256 v) {
  if (left >= 8) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, LaneMask((1u << left) - 1u), v);
  }
}

// The lanes whose bit is set in `bits` as a load mask, and those lanes of p, the others zero
// and never read (dw_rows.inc, dw_block.inc).
using Mask = __m256i;
OP_AVX2 static inline Mask MaskOf(unsigned bits) { return LaneMask(bits); }
OP_AVX2 static inline __m256 MaskLoad(Mask mask, const float* p) { return _mm256_maskload_ps(p, mask); }
OP_AVX2 static inline void MaskStore(Mask mask, float* p, __m256 v) { _mm256_maskstore_ps(p, mask, v); }

// The in-lane steps of TransposeLanes (transpose_lanes.inc).
OP_AVX2 static inline __m256 UnpackLo(__m256 a, __m256 b) { return _mm256_unpacklo_ps(a, b); }
OP_AVX2 static inline __m256 UnpackHi(__m256 a, __m256 b) { return _mm256_unpackhi_ps(a, b); }
OP_AVX2 static inline __m256 PairsLo(__m256 a, __m256 b) { return _mm256_shuffle_ps(a, b, 0x44); }
OP_AVX2 static inline __m256 PairsHi(__m256 a, __m256 b) { return _mm256_shuffle_ps(a, b, 0xee); }

#define ONNXPRUNE_TILE_TARGET OP_AVX2
#include "transpose_lanes.inc"
#undef ONNXPRUNE_TILE_TARGET

// v[u] lane l <- v[l] lane u (8 x 8: 4 x 4 in each 128-bit lane, then a 128-bit lane permute).
OP_AVX2 static inline void TransposeLanes(__m256* v) {
  __m256 t[8];
  Transpose4x4InLanes(v, t);
  for (int u = 0; u < 4; ++u) {
    t[u] = _mm256_permute2f128_ps(v[u], v[u + 4], 0x20);
    t[u + 4] = _mm256_permute2f128_ps(v[u], v[u + 4], 0x31);
  }
  for (int u = 0; u < 8; ++u) v[u] = t[u];
}

// pool_rows.inc's: p[0, n) and `fill` in the other lanes (0 < n < 8), nothing past p + n read.
OP_AVX2 static inline Vec LoadFirstOr(const float* p, int64_t n, Vec fill) {
  const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, live), _mm256_castsi256_ps(live));
}


#define ONNXPRUNE_TILE_TARGET OP_AVX2
#include "dw_rows.inc"
#include "dw_block.inc"
#include "pool_rows.inc"
#undef ONNXPRUNE_TILE_TARGET

}  // namespace avx2

// ---------------------------------------------------------------------------------------------
// AVX-512
namespace avx512 {

using avx2::Val;

template <class T, class I, int V, int P>
OP_AVX512 void SpmmFixed(const T* values, const I* col, const int32_t* row_ptr, const float* xt, int64_t r0,
                         int64_t r1, float* out) {
  constexpr int mb = V * 16;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_ps();
    int64_t j = row_ptr[r];
    const int64_t e = row_ptr[r + 1];
    Cursor cur;
    for (; j + P <= e; j += P) {
      for (int p = 0; p < P; ++p) {
        const __m512 w = _mm512_set1_ps(Val(values, j + p));
        const float* xr = xt + Take(col, j + p, cur) * mb;
        for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(w, _mm512_load_ps(xr + 16 * v), acc[p][v]);
      }
    }
    for (; j < e; ++j) {
      const __m512 w = _mm512_set1_ps(Val(values, j));
      const float* xr = xt + Take(col, j, cur) * mb;
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

template <class T, class I>
OP_AVX512 void Spmm(const void* vp, const void* cp, const int32_t* row_ptr, const float* xt, int mb, int64_t r0,
                    int64_t r1, float* out) {
  const T* values = static_cast<const T*>(vp);
  const I* col = static_cast<const I*>(cp);
  switch (mb) {
    case 16: return SpmmFixed<T, I, 1, 4>(values, col, row_ptr, xt, r0, r1, out);
    case 32: return SpmmFixed<T, I, 2, 2>(values, col, row_ptr, xt, r0, r1, out);
    case 48: return SpmmFixed<T, I, 3, 2>(values, col, row_ptr, xt, r0, r1, out);
    default: return SpmmFixed<T, I, 4, 1>(values, col, row_ptr, xt, r0, r1, out);
  }
}

// The conv tiles over 16-float vectors (conv_run.inc).
using Vec = __m512;
constexpr int kLanes = 16;
OP_AVX512 static inline Vec Set1(float v) { return _mm512_set1_ps(v); }
OP_AVX512 static inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
// p[0 .. n) and zeros, for 0 < n < 16: nothing past p + n is read.
OP_AVX512 static inline Vec LoadFirst(const float* p, int64_t n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}
OP_AVX512 static inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
OP_AVX512 static inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
OP_AVX512 static inline Vec Sum(Vec a, Vec b) { return _mm512_add_ps(a, b); }
OP_AVX512 static inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }  // b where either is NaN
OP_AVX512 static inline Vec Min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
#define ONNXPRUNE_TILE_TARGET OP_AVX512
#include "conv_run.inc"
#include "conv_rows.inc"
#undef ONNXPRUNE_TILE_TARGET

// Full 512-bit loads of y where the tile's own 512-bit stores wrote it (a narrower load of a
// wider store's bytes forwards slowly, or not at all, on some cores).
OP_AVX512 void Add(float* y, const float* z, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(z + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, z + i)));
  }
}

// The activations of avx2::Activate on 16 lanes, the last partial vector masked: the tiles
// store whole 512-bit vectors, which a 256-bit load reads back only after they retire. Same
// formulas, same NaN handling (every max/min returns its second operand for NaN lanes); the
// reciprocal of RationalAct16 starts from vrcp14ps, closer than vrcpps before the same Newton step.
template <Act K>
OP_AVX512 static inline __m512 RationalAct16(__m512 y) {
  using Fit = typename std::conditional<K == Act::kGelu, avx2::ErfFit, avx2::TanhFit>::type;
  const float scale = K == Act::kGelu ? 0.70710678f : 0.5f;
  const __m512 s = _mm512_min_ps(_mm512_set1_ps(Fit::clamp),
                                 _mm512_max_ps(_mm512_set1_ps(-Fit::clamp), _mm512_mul_ps(y, _mm512_set1_ps(scale))));
  const __m512 u = _mm512_mul_ps(s, s);
  __m512 f = _mm512_fmadd_ps(_mm512_set1_ps(Fit::p[0]), u, _mm512_set1_ps(Fit::p[1]));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(Fit::q[0]), u, _mm512_set1_ps(Fit::q[1]));
#pragma GCC unroll 6
  for (int k = 2; k < Fit::nq + 1; ++k) {  // Q's last step adds its constant 1
    if (k < Fit::np) f = _mm512_fmadd_ps(f, u, _mm512_set1_ps(Fit::p[k]));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(k < Fit::nq ? Fit::q[k] : 1.f));
  }
  const __m512 r = _mm512_rcp14_ps(q);
  const __m512 inv = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.f)));
  f = _mm512_mul_ps(s, _mm512_mul_ps(f, inv));
  f = _mm512_min_ps(_mm512_set1_ps(1.f), _mm512_max_ps(_mm512_set1_ps(-1.f), f));
  const __m512 half = _mm512_set1_ps(0.5f);
  if (K == Act::kGelu) return _mm512_mul_ps(_mm512_mul_ps(half, y), _mm512_add_ps(_mm512_set1_ps(1.f), f));
  const __m512 sig = _mm512_fmadd_ps(half, f, half);
  return K == Act::kSilu ? _mm512_mul_ps(y, sig) : sig;
}

template <Act K>
OP_AVX512 static inline __m512 Act16(__m512 v, __m512 alpha, __m512 beta) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
  switch (K) {
    case Act::kRelu: return _mm512_max_ps(zero, v);
    case Act::kLeakyRelu:
      return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, _mm512_mul_ps(alpha, v));
    case Act::kClip: return _mm512_min_ps(beta, _mm512_max_ps(alpha, v));
    case Act::kHardSigmoid: return _mm512_min_ps(one, _mm512_max_ps(zero, _mm512_fmadd_ps(alpha, v, beta)));
    case Act::kHardSwish: {
      const __m512 t = _mm512_fmadd_ps(v, _mm512_set1_ps(1.f / 6.f), _mm512_set1_ps(0.5f));
      return _mm512_mul_ps(v, _mm512_min_ps(one, _mm512_max_ps(zero, t)));
    }
    case Act::kSigmoid:
    case Act::kSilu:
    case Act::kGelu: return RationalAct16<K>(v);
    default: return v;
  }
}

// Four vectors a step (their latency chains overlap, as avx2::RationalActN's), then one at a
// time, the last one masked.
template <Act K>
OP_AVX512 static void ActivateAs(float* y, int64_t n, const Activation& a) {
  const __m512 alpha = _mm512_set1_ps(a.alpha), beta = _mm512_set1_ps(a.beta);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 v0 = Act16<K>(_mm512_loadu_ps(y + i), alpha, beta);
    const __m512 v1 = Act16<K>(_mm512_loadu_ps(y + i + 16), alpha, beta);
    const __m512 v2 = Act16<K>(_mm512_loadu_ps(y + i + 32), alpha, beta);
    const __m512 v3 = Act16<K>(_mm512_loadu_ps(y + i + 48), alpha, beta);
    _mm512_storeu_ps(y + i, v0);
    _mm512_storeu_ps(y + i + 16, v1);
    _mm512_storeu_ps(y + i + 32, v2);
    _mm512_storeu_ps(y + i + 48, v3);
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, Act16<K>(_mm512_loadu_ps(y + i), alpha, beta));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, m, Act16<K>(_mm512_maskz_loadu_ps(m, y + i), alpha, beta));
  }
}

void Activate(float* y, int64_t n, const Activation& a) {
  ForActivation(a, [&](auto k) { ActivateAs<decltype(k)::value>(y, n, a); });
}

// The even and odd floats of a then b (Deinterleave, MaxPool2x2, pool_rows.inc).
OP_AVX512 static inline void EvenOddOf(__m512 a, __m512 b, __m512* even, __m512* odd) {
  *even = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  *odd = _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
}

// Sixteen outputs from 32 floats of each input row; a short last step loads only the 2r floats
// of each row it owns.
OP_AVX512 void MaxPool2x2(const float* x, int64_t w, int64_t rows, int64_t ow, float* y) {
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest());
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + 2 * r * w;
    const float* b = a + w;
    float* o = y + r * ow;
    for (int64_t i = 0; i < ow; i += 16) {
      const uint32_t n = static_cast<uint32_t>(std::min<int64_t>(16, ow - i)), span = 2 * n;  // span <= 32
      const __mmask16 lo = static_cast<__mmask16>(span >= 16 ? 0xFFFFu : (1u << span) - 1u);
      const __mmask16 hi = static_cast<__mmask16>(span > 16 ? (1u << (span - 16)) - 1u : 0u);
      const __m512 m0 = _mm512_max_ps(_mm512_maskz_loadu_ps(lo, a + 2 * i), _mm512_maskz_loadu_ps(lo, b + 2 * i));
      const __m512 m1 = _mm512_max_ps(_mm512_maskz_loadu_ps(hi, a + 2 * i + 16), _mm512_maskz_loadu_ps(hi, b + 2 * i + 16));
      __m512 even, odd;
      EvenOddOf(m0, m1, &even, &odd);
      const __m512 v = _mm512_max_ps(lowest, _mm512_max_ps(even, odd));
      _mm512_mask_storeu_ps(o + i, static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u), v);
    }
  }
}

// Stride 2: 16 floats kept from each 31 read; masked loads read exactly the floats from
// src[2i] to src[2i + 2r - 2] for the r <= 16 outputs of a step (no read past the last one).
OP_AVX512 void Strided(const float* src, int64_t stride, int64_t n, float* dst) {
  if (stride != 2) return scalar::Strided(src, stride, n, dst);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t i = 0; i < n; i += 16) {
    const uint32_t r = static_cast<uint32_t>(std::min<int64_t>(16, n - i)), span = 2 * r - 1;  // span <= 31
    const __mmask16 lo = static_cast<__mmask16>(span >= 16 ? 0xFFFFu : (1u << span) - 1u);
    const __mmask16 hi = static_cast<__mmask16>(span > 16 ? (1u << (span - 16)) - 1u : 0u);
    const __m512 v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lo, src + 2 * i), even,
                                            _mm512_maskz_loadu_ps(hi, src + 2 * i + 16));
    _mm512_mask_storeu_ps(dst + i, static_cast<__mmask16>((1u << r) - 1u), v);
  }
}

// Sixteen lanes at a time; lanes with a negative offset, and a short last step's lanes past
// n, masked off (never read; the first set to 0, the second not stored).
OP_AVX512 void Gather(const float* src, const int32_t* at, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; i += 16) {
    const uint32_t r = static_cast<uint32_t>(std::min<int64_t>(16, n - i));
    const __mmask16 live = static_cast<__mmask16>(r == 16 ? 0xFFFFu : (1u << r) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(live, at + i);
    const __mmask16 keep = _mm512_mask_cmpge_epi32_mask(live, idx, _mm512_setzero_si512());
    _mm512_mask_storeu_ps(dst + i, live, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), keep, idx, src, 4));
  }
}

// 32 floats loaded for 16 of each copy; a short last step loads only the 2r floats it owns.
OP_AVX512 void Deinterleave(const float* src, int64_t n, float* d0, float* d1) {
  __m512 even, odd;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    EvenOddOf(_mm512_loadu_ps(src + 2 * i), _mm512_loadu_ps(src + 2 * i + 16), &even, &odd);
    _mm512_storeu_ps(d0 + i, even);
    _mm512_storeu_ps(d1 + i, odd);
  }
  if (i < n) {
    const uint32_t r = static_cast<uint32_t>(n - i), span = 2 * r;  // 1 <= r <= 15: span <= 30
    const __mmask16 lo = static_cast<__mmask16>(span >= 16 ? 0xFFFFu : (1u << span) - 1u);
    const __mmask16 hi = static_cast<__mmask16>(span > 16 ? (1u << (span - 16)) - 1u : 0u);
    const __m512 a = _mm512_maskz_loadu_ps(lo, src + 2 * i), b = _mm512_maskz_loadu_ps(hi, src + 2 * i + 16);
    const __mmask16 keep = static_cast<__mmask16>((1u << r) - 1u);
    EvenOddOf(a, b, &even, &odd);
    _mm512_mask_storeu_ps(d0 + i, keep, even);
    _mm512_mask_storeu_ps(d1 + i, keep, odd);
  }
}

// The first min(16, left) lanes of v to p (left >= 1); a whole vector by a plain store.
OP_AVX512 static inline void StoreLanes(float* p, int64_t left, __m512 v) {
  if (left >= 16) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << left) - 1u), v);
  }
}

// The lanes whose bit is set in `bits` as a load mask, and those lanes of p, the others zero
// and never read (dw_rows.inc, dw_block.inc).
using Mask = __mmask16;
OP_AVX512 static inline Mask MaskOf(unsigned bits) { return static_cast<__mmask16>(bits); }
OP_AVX512 static inline __m512 MaskLoad(Mask mask, const float* p) { return _mm512_maskz_loadu_ps(mask, p); }
OP_AVX512 static inline void MaskStore(Mask mask, float* p, __m512 v) { _mm512_mask_storeu_ps(p, mask, v); }

// The in-lane steps of TransposeLanes (transpose_lanes.inc).
OP_AVX512 static inline __m512 UnpackLo(__m512 a, __m512 b) { return _mm512_unpacklo_ps(a, b); }
OP_AVX512 static inline __m512 UnpackHi(__m512 a, __m512 b) { return _mm512_unpackhi_ps(a, b); }
OP_AVX512 static inline __m512 PairsLo(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0x44); }
OP_AVX512 static inline __m512 PairsHi(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0xee); }

#define ONNXPRUNE_TILE_TARGET OP_AVX512
#include "transpose_lanes.inc"
#undef ONNXPRUNE_TILE_TARGET

// v[u] lane l <- v[l] lane u (16 x 16): 4 x 4 in each 128-bit lane, then two rounds of 128-bit
// lane shuffles across pairs of registers.
OP_AVX512 static inline void TransposeLanes(__m512* v) {
  __m512 t[16];
  Transpose4x4InLanes(v, t);
  for (int h = 0; h < 16; h += 8)
    for (int u = 0; u < 4; ++u) {
      t[h + u] = _mm512_shuffle_f32x4(v[h + u], v[h + u + 4], 0x88);
      t[h + u + 4] = _mm512_shuffle_f32x4(v[h + u], v[h + u + 4], 0xdd);
    }
  for (int u = 0; u < 8; ++u) {
    v[u] = _mm512_shuffle_f32x4(t[u], t[u + 8], 0x88);
    v[u + 8] = _mm512_shuffle_f32x4(t[u], t[u + 8], 0xdd);
  }
}

// pool_rows.inc's: p[0, n) and `fill` in the other lanes (0 < n < 16), nothing past p + n
// read.
OP_AVX512 static inline Vec LoadFirstOr(const float* p, int64_t n, Vec fill) {
  return _mm512_mask_loadu_ps(fill, static_cast<__mmask16>((1u << n) - 1u), p);
}


#define ONNXPRUNE_TILE_TARGET OP_AVX512
#include "dw_rows.inc"
#include "dw_block.inc"
#include "pool_rows.inc"
#undef ONNXPRUNE_TILE_TARGET
#include "dw_grid.inc"

}  // namespace avx512

// ---------------------------------------------------------------------------------------------

// Kernel tables indexed [ValueKind][IndexKind]: float32 / float16 values, int16 / int32 / uint8
// delta columns.
#define ONNXPRUNE_BY_TYPE(fn)                                                    \
  {                                                                              \
    {fn<float, int16_t>, fn<float, int32_t>, fn<float, uint8_t>}, {              \
      fn<uint16_t, int16_t>, fn<uint16_t, int32_t>, fn<uint16_t, uint8_t>        \
    }                                                                            \
  }

static const Kernels kScalarKernels = {
    ONNXPRUNE_BY_TYPE(scalar::Spmv), ONNXPRUNE_BY_TYPE(scalar::Spmm), 8,
    {scalar::ConvRun<1>, scalar::ConvRun<4>, scalar::ConvRun<8>, scalar::ConvRun<12>, scalar::ConvRun<13>,
     scalar::ConvRun<14>},
    {scalar::ConvRows<1>, scalar::ConvRows<4>, scalar::ConvRows<8>, scalar::ConvRows<12>, scalar::ConvRows<13>,
     scalar::ConvRows<14>}, scalar::Transpose, scalar::HalfToFloatN,
    scalar::Activate, scalar::Add, scalar::Strided, scalar::Gather, scalar::Deinterleave, scalar::DwRows, scalar::DwBlock, scalar::DwBlockIn, scalar::DwBlockOut,
    {{nullptr, nullptr}, {nullptr, nullptr}}, scalar::CopyRows,
    {scalar::ConvStripRows<1>, scalar::ConvStripRows<4>, scalar::ConvStripRows<8>, scalar::ConvStripRows<12>, scalar::ConvStripRows<13>, scalar::ConvStripRows<14>},
    scalar::MaxPoolRows, scalar::MaxPool2x2, scalar::MaxPoolBlock, ONNXPRUNE_BY_TYPE(scalar::Spmv),
};
static const Kernels kAvx2Kernels = {
    ONNXPRUNE_BY_TYPE(avx2::Spmv), ONNXPRUNE_BY_TYPE(avx2::Spmm), 8,
    {avx2::ConvRun<1>, avx2::ConvRun<4>, avx2::ConvRun<8>, avx2::ConvRun<12>, avx2::ConvRun<13>,
     avx2::ConvRun<14>},
    {avx2::ConvRows<1>, avx2::ConvRows<4>, avx2::ConvRows<8>, avx2::ConvRows<12>, avx2::ConvRows<13>,
     avx2::ConvRows<14>}, avx2::Transpose, avx2::HalfToFloatN,
    avx2::Activate, avx2::Add, avx2::Strided, scalar::Gather, avx2::Deinterleave, avx2::DwRows, avx2::DwBlock, avx2::DwBlockIn, avx2::DwBlockOut,
    {{nullptr, nullptr}, {nullptr, nullptr}}, avx2::CopyRows,
    {avx2::ConvStripRows<1>, avx2::ConvStripRows<4>, avx2::ConvStripRows<8>, avx2::ConvStripRows<12>, avx2::ConvStripRows<13>, avx2::ConvStripRows<14>},
    avx2::MaxPoolRows, avx2::MaxPool2x2, avx2::MaxPoolBlock, ONNXPRUNE_BY_TYPE(avx2::SpmvInOrder),
};
static const Kernels kAvx512Kernels = {
    ONNXPRUNE_BY_TYPE(avx2::Spmv), ONNXPRUNE_BY_TYPE(avx512::Spmm), 16,
    {avx512::ConvRun<1>, avx512::ConvRun<4>, avx512::ConvRun<8>, avx512::ConvRun<12>, avx512::ConvRun<13>,
     avx512::ConvRun<14>},
    {avx512::ConvRows<1>, avx512::ConvRows<4>, avx512::ConvRows<8>, avx512::ConvRows<12>, avx512::ConvRows<13>,
     avx512::ConvRows<14>}, avx2::Transpose, avx2::HalfToFloatN,
    avx512::Activate, avx512::Add, avx512::Strided, avx512::Gather, avx512::Deinterleave, avx512::DwRows, avx512::DwBlock, avx512::DwBlockIn, avx512::DwBlockOut,
    {{avx512::DwGrid<3, 1>, avx512::DwGrid<5, 1>}, {avx512::DwGrid<3, 2>, avx512::DwGrid<5, 2>}}, avx512::CopyRows,
    {avx512::ConvStripRows<1>, avx512::ConvStripRows<4>, avx512::ConvStripRows<8>, avx512::ConvStripRows<12>, avx512::ConvStripRows<13>, avx512::ConvStripRows<14>},
    avx512::MaxPoolRows, avx512::MaxPool2x2, avx512::MaxPoolBlock, ONNXPRUNE_BY_TYPE(avx2::SpmvInOrder),
};

#undef ONNXPRUNE_BY_TYPE

const Kernels& KernelsFor(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return kAvx512Kernels;
    case Isa::kAvx2: return kAvx2Kernels;
    default: return kScalarKernels;
  }
}

}  // namespace onnxprune
